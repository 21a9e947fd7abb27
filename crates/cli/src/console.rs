//! `rs2p node` without `--json`: a console for people.
//!
//! On a terminal it is a line editor (`rustyline`): a prompt, history, arrow
//! keys, Tab completion of commands and peer ids, and events printed above
//! the line being typed. When stdin is not a terminal (a pipe, a file) it
//! reads plain lines, through the same bounded reader as the JSON mode.

use std::future::Future;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rs2p::json::{from_json, to_json};
use rs2p::{PeerAddr, PeerId, ReplyRoute, SyncSocket, Value};
use rustyline::completion::Completer;
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{ExternalPrinter, Helper};
use serde_json::Value as Json;
use tokio::sync::mpsc;

use crate::events::{key_json, short, spawn_forwarders, Style};
use crate::input::{Line, LineReader};
use crate::node::Session;
use crate::peer_book::PeerBook;

/// The commands, for `help` and completion.
const COMMANDS: &[&str] = &[
    "broadcast",
    "connect",
    "del",
    "delta",
    "disconnect",
    "dump",
    "get",
    "help",
    "peers",
    "quit",
    "reply",
    "set",
    "status",
    "whisper",
];

const HELP: &str = "commands:
  connect HOST:PORT[@ID]  connect to a node (@ID: it must prove it is ID)
  broadcast TEXT...       send TEXT to the whole network
  whisper ID TEXT...      send TEXT to one connected peer
  reply ID TEXT...        send TEXT to a message's sender, routed if not a peer
  disconnect ID           drop a connected peer
  peers                   list connected peers
  status                  who this node is, health and counters
  set KEY VALUE           (--sync) set a key; VALUE is JSON if it parses, else text
  get KEY                 (--sync) read a key
  del KEY                 (--sync) delete a key
  delta KEY {JSON}        (--sync) merge a JSON object into the map at KEY
  dump                    (--sync) list every key, sorted
  help                    this list
  quit                    leave the network (also Ctrl-D, Ctrl-C)
ID is a peer id or any unique prefix of one (Tab completes it). A KEY with
spaces is written in double quotes, as a JSON string.";

/// How many lines of history the console keeps.
const HISTORY_CAP: usize = 1000;

/// Runs the console until `quit`, end of input, or `shutdown` resolves.
pub async fn run(
    session: Arc<Session>,
    connect: Vec<crate::node::ConnectTo>,
    shutdown: impl Future<Output = &'static str>,
) -> anyhow::Result<()> {
    let tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let (out, mut lines, writer) = if tty { terminal(session.book.clone())? } else { piped() };
    out.send(banner(&session)).await?;
    let events = session.take_events().unwrap_or_else(|| session.node.peer_events());
    spawn_forwarders(&session.node, events, session.book.clone(), out.clone(), Style::Human);
    for to in connect {
        spawn_connect(&session, to.addr, to.id, out.clone());
    }
    tokio::pin!(shutdown);
    let why = loop {
        let line = tokio::select! {
            l = lines.recv() => l,
            signal = &mut shutdown => break signal,
        };
        let Some(line) = line else { break "end of input" };
        let text = match line {
            Line::Text(t) => t,
            other => {
                out.send(format!("! {}", other.problem().unwrap_or_default())).await?;
                continue;
            }
        };
        match execute(&session, text.trim(), &out).await {
            Reply::Quiet => {}
            Reply::Say(s) => out.send(s).await?,
            Reply::Quit => break "quit",
        }
    };
    tracing::info!(why, "shutting down");
    out.send(format!("* leaving ({why})")).await.ok();
    session.node.close().await.ok();
    drop(out);
    drop(lines);
    let _ = tokio::time::timeout(std::time::Duration::from_millis(200), writer).await;
    Ok(())
}

fn banner(s: &Session) -> String {
    let n = &s.node;
    format!(
        "rs2p node {}\nlistening on {} (subnet {}{}); others join with: rs2p node --connect {}\ntype 'help' for commands",
        n.id(),
        n.local_addr(),
        n.protocol().subnet,
        if n.tls_fingerprint().is_some() { ", TLS" } else { "" },
        n.out_addr()
    )
}

/// Plain lines from a pipe; output straight to stdout.
fn piped() -> (mpsc::Sender<String>, mpsc::Receiver<Line>, tokio::task::JoinHandle<()>) {
    let (out, writer) = crate::json_mode::spawn_stdout();
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut reader = LineReader::new(tokio::io::stdin());
        while let Ok(Some(l)) = reader.next_line().await {
            if tx.send(l).await.is_err() {
                return;
            }
        }
    });
    (out, rx, writer)
}

/// A line editor on the terminal, in its own thread; output goes above the
/// line being typed.
#[allow(clippy::type_complexity)]
fn terminal(
    book: Arc<PeerBook>,
) -> anyhow::Result<(mpsc::Sender<String>, mpsc::Receiver<Line>, tokio::task::JoinHandle<()>)> {
    let config = rustyline::Config::builder()
        .max_history_size(HISTORY_CAP)?
        .auto_add_history(true)
        .completion_type(rustyline::CompletionType::List)
        .build();
    let mut editor: rustyline::Editor<ConsoleHelper, rustyline::history::DefaultHistory> =
        rustyline::Editor::with_config(config)?;
    editor.set_helper(Some(ConsoleHelper { book }));
    let mut printer = editor.create_external_printer()?;
    let (out, mut out_rx) = mpsc::channel::<String>(1024);
    let writer = tokio::task::spawn_blocking(move || {
        while let Some(line) = out_rx.blocking_recv() {
            if printer.print(line).is_err() {
                return;
            }
        }
    });
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || loop {
        let line = match editor.readline("rs2p> ") {
            Ok(l) => Line::Text(l),
            Err(ReadlineError::Eof | ReadlineError::Interrupted) => Line::Text("quit".into()),
            Err(ReadlineError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => Line::NotUtf8 { at: 0 },
            Err(ReadlineError::Signal(_)) => continue,
            Err(_) => return,
        };
        let quit = line == Line::Text("quit".into());
        if tx.blocking_send(line).is_err() || quit {
            return;
        }
    });
    Ok((out, rx, writer))
}

/// Completes command names, then peer ids after commands that take one.
struct ConsoleHelper {
    book: Arc<PeerBook>,
}

impl Completer for ConsoleHelper {
    type Candidate = String;

    fn complete(&self, line: &str, pos: usize, _: &rustyline::Context<'_>) -> rustyline::Result<(usize, Vec<String>)> {
        Ok(complete(&self.book, &line[..pos]))
    }
}

/// Where the word being completed starts, and its candidates.
fn complete(book: &PeerBook, before: &str) -> (usize, Vec<String>) {
    let start = before.rfind(' ').map_or(0, |i| i + 1);
    let word = &before[start..];
    let words: Vec<&str> = before[..start].split_whitespace().collect();
    let candidates: Vec<String> = match words[..] {
        [] => COMMANDS.iter().filter(|c| c.starts_with(word)).map(|c| format!("{c} ")).collect(),
        ["whisper" | "reply" | "disconnect"] => {
            book.ids().into_iter().filter(|id| id.starts_with(word)).map(|id| format!("{id} ")).collect()
        }
        _ => Vec::new(),
    };
    (start, candidates)
}

impl Hinter for ConsoleHelper {
    type Hint = String;
}
impl Highlighter for ConsoleHelper {}
impl Validator for ConsoleHelper {}
impl Helper for ConsoleHelper {}

/// What a console command answers.
enum Reply {
    Quiet,
    Say(String),
    Quit,
}

/// Splits off the first argument: a word, or a JSON string in double quotes.
fn first_arg(rest: &str) -> Result<(String, &str), String> {
    let rest = rest.trim_start();
    if rest.starts_with('"') {
        let mut escaped = false;
        for (i, ch) in rest.char_indices().skip(1) {
            match ch {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    let word = serde_json::from_str::<String>(&rest[..=i]).map_err(|e| format!("bad quoting: {e}"))?;
                    return Ok((word, rest[i + 1..].strip_prefix(' ').unwrap_or(&rest[i + 1..])));
                }
                _ => escaped = false,
            }
        }
        return Err("unterminated quote".into());
    }
    let (word, tail) = rest.split_once(' ').unwrap_or((rest, ""));
    Ok((word.to_string(), tail))
}

/// A library error as a person wants to read it.
fn human_error(e: &rs2p::Error) -> String {
    match e {
        rs2p::Error::Leased { owner, until } => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            let left = until.saturating_sub(now);
            format!(
                "key is leased to {} until {:02}:{:02} UTC ({} min from now)",
                short(owner),
                until / 3600 % 24,
                until / 60 % 60,
                left.div_ceil(60)
            )
        }
        other => other.to_string(),
    }
}

fn spawn_connect(session: &Session, addr: PeerAddr, id: Option<PeerId>, out: mpsc::Sender<String>) {
    let dial = session.dial(addr.clone(), id);
    tokio::spawn(async move {
        let result = dial.await;
        let line = match result {
            Ok(id) => format!("-> connected to {} at {addr}", short(&id)),
            Err(e) => format!("! {e}"),
        };
        let _ = out.send(line).await;
    });
}

async fn execute(session: &Session, line: &str, out: &mpsc::Sender<String>) -> Reply {
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    let say = |r: Result<String, String>| Reply::Say(r.unwrap_or_else(|e| format!("! {e}")));
    let node = &session.node;
    match word {
        "" => Reply::Quiet,
        "help" | "?" => Reply::Say(HELP.into()),
        "quit" | "exit" => Reply::Quit,
        "connect" => match rest.trim().parse::<crate::node::ConnectTo>() {
            Ok(to) => {
                spawn_connect(session, to.addr, to.id, out.clone());
                Reply::Quiet
            }
            Err(e) => say(Err(format!("{e}; usage: connect HOST:PORT[@ID]"))),
        },
        "broadcast" | "send" => {
            if rest.is_empty() {
                return say(Err("usage: broadcast TEXT".into()));
            }
            let peers = session.book.count();
            say(match node.broadcast(vec![Value::from(rest)]).await {
                Ok(_) if peers == 0 => Ok("-> broadcast to 0 peers (none connected yet)".into()),
                Ok(_) => Ok(format!("-> broadcast to {peers} peer{}", if peers == 1 { "" } else { "s" })),
                Err(e) => Err(human_error(&e)),
            })
        }
        "whisper" | "reply" => {
            let (prefix, text) = rest.split_once(' ').unwrap_or((rest, ""));
            if prefix.is_empty() || text.is_empty() {
                return say(Err(format!("usage: {word} ID TEXT")));
            }
            let packets = vec![Value::from(text)];
            say(if word == "whisper" {
                match session.book.connected(prefix) {
                    Ok(to) => match node.whisper(&to, packets).await {
                        Ok(_) => Ok(format!("-> whisper to {}", short(&to))),
                        Err(e) => Err(human_error(&e)),
                    },
                    Err(e) => Err(e.to_string()),
                }
            } else {
                match session.book.anyone(prefix) {
                    Ok(to) => match node.send_to(&to, packets).await {
                        Ok(ReplyRoute::Direct) => Ok(format!("-> reply to {}", short(&to))),
                        Ok(ReplyRoute::Routing) => {
                            Ok(format!("-> reply to {} (routed: not a direct peer)", short(&to)))
                        }
                        Err(e) => Err(human_error(&e)),
                    },
                    Err(e) => Err(e.to_string()),
                }
            })
        }
        "disconnect" => say(match session.book.connected(rest.trim()) {
            Ok(peer) => node
                .disconnect(&peer)
                .await
                .map(|()| format!("-> disconnected {}", short(&peer)))
                .map_err(|e| human_error(&e)),
            Err(e) => Err(format!("{e}; usage: disconnect ID")),
        }),
        "peers" => say(peers_text(session).await),
        "status" => say(status_text(session).await),
        "set" | "get" | "del" | "delete" | "delta" | "dump" => match &session.sync {
            None => say(Err("dictionary commands need a node started with --sync".into())),
            Some(s) => say(sync_command(s, word, rest).await),
        },
        other => say(Err(format!("unknown command {other:?}; type 'help'"))),
    }
}

async fn peers_text(session: &Session) -> Result<String, String> {
    let mut peers = session.node.routing_table().await.map_err(|e| e.to_string())?;
    if peers.is_empty() {
        return Ok("no peers".into());
    }
    peers.sort_by(|a, b| a.id.as_bytes().cmp(b.id.as_bytes()));
    Ok(peers
        .iter()
        .map(|p| {
            format!(
                "  {}  {}  {}{}",
                p.id,
                p.addr.as_ref().map(ToString::to_string).unwrap_or_else(|| "?".into()),
                if p.outgoing { "outgoing" } else { "incoming" },
                if p.rs2p { "  rs2p" } else { "  py2p" }
            )
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

async fn status_text(session: &Session) -> Result<String, String> {
    let n = &session.node;
    let s = n.status().await.map_err(|e| e.to_string())?;
    let up = session.started.elapsed().as_secs();
    let mut text = format!(
        "node {}\n  listening on {} (advertised {}), subnet {}, up {}h{:02}m{:02}s\n  {} | peers {} | delivered {} | relayed {} | duplicates suppressed {}\n  frames in {} out {} | bytes in {} out {}",
        n.id(),
        n.local_addr(),
        n.out_addr(),
        n.protocol().subnet,
        up / 3600,
        up / 60 % 60,
        up % 60,
        if s.nominal { "nominal" } else { "errors seen" },
        s.peers,
        s.delivered,
        s.stats.relayed,
        s.duplicates,
        s.frames_in,
        s.frames_out,
        s.bytes_in,
        s.bytes_out,
    );
    if let Some(t) = s.tree {
        text += &format!(
            "\n  tree: {} prunes, {} grafts ({} put off while busy), {} announced, {} served",
            t.prunes, t.grafts, t.postponed, t.announced, t.served
        );
    }
    if let Some(sync) = &session.sync {
        text += &format!("\n  dictionary: {} keys", sync.len().await.map_err(|e| e.to_string())?);
    }
    for e in &s.recent_errors {
        text += &format!("\n  {e}");
    }
    Ok(text)
}

async fn sync_command(s: &SyncSocket, word: &str, rest: &str) -> Result<String, String> {
    let e = |e: rs2p::Error| human_error(&e);
    if word == "dump" {
        let mut entries = s.entries().await.map_err(e)?;
        if entries.is_empty() {
            return Ok("(empty)".into());
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        return Ok(entries
            .iter()
            .map(|(k, v, o, _)| format!("  {} = {}  (by {})", key_json(k), to_json(v), short(o)))
            .collect::<Vec<_>>()
            .join("\n"));
    }
    let (key, value) = first_arg(rest)?;
    if key.is_empty() {
        return Err(format!("usage: {word} KEY{}", if matches!(word, "set" | "delta") { " VALUE" } else { "" }));
    }
    match word {
        "set" => {
            if value.is_empty() {
                return Err("usage: set KEY VALUE (VALUE is JSON if it parses, else text)".into());
            }
            let v = serde_json::from_str::<Json>(value)
                .ok()
                .and_then(|j| from_json(&j).ok())
                .unwrap_or_else(|| Value::from(value));
            s.set(&key, v).await.map(|()| "ok".into()).map_err(e)
        }
        "get" => s.get(&key).await.map_err(e).map(|v| match v {
            Some(v) => to_json(&v).to_string(),
            None => "(no such key)".into(),
        }),
        "del" | "delete" => s.delete(&key).await.map(|()| "ok".into()).map_err(e),
        _ => match serde_json::from_str::<Json>(value).map_err(|e| e.to_string()).and_then(|j| from_json(&j)) {
            Ok(Value::Map(m)) => s.apply_delta(&key, m).await.map(|()| "ok".into()).map_err(e),
            _ => Err("usage: delta KEY {JSON object}".into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_offers_commands_then_peer_ids() {
        let book = PeerBook::default();
        for id in ["2DdFPuCk", "2TymoojJ", "3EGKUdcV"] {
            book.up(&rs2p::PeerId::from_bytes(id.as_bytes().to_vec()));
        }
        assert_eq!(complete(&book, "wh"), (0, vec!["whisper ".to_string()]));
        assert_eq!(
            complete(&book, "d"),
            (0, vec!["del ".into(), "delta ".into(), "disconnect ".into(), "dump ".into()])
        );
        assert_eq!(complete(&book, "whisper 2"), (8, vec!["2DdFPuCk ".into(), "2TymoojJ ".into()]));
        assert_eq!(complete(&book, "reply 3"), (6, vec!["3EGKUdcV ".into()]));
        assert_eq!(complete(&book, "whisper 3EGKUdcV hel"), (17, vec![]));
    }

    #[test]
    fn keys_may_be_quoted() {
        assert_eq!(first_arg("\"quoted key\" v w"), Ok(("quoted key".to_string(), "v w")));
        assert_eq!(first_arg("plain rest of it"), Ok(("plain".to_string(), "rest of it")));
        assert_eq!(first_arg(r#""a \" quote" 1"#), Ok(("a \" quote".to_string(), "1")));
        assert!(first_arg("\"open").is_err());
    }
}
