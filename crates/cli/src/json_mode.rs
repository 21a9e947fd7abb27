//! `rs2p node --json`: the JSON-lines contract for programs.
//!
//! One command per stdin line, one event per stdout line. A command may
//! carry `"req"` (any JSON value): it is then answered by exactly one event
//! carrying the same `"req"`: the answer itself for queries (`status`,
//! `peers`, `get`, `dump`), `{"event":"ok",...}` for the rest, or
//! `{"event":"error",...}`. Without `"req"`, queries are still answered and
//! errors still reported, but successes are silent (the fast path).
//!
//! For speed, every complete line already read is handled as one batch,
//! and a run of broadcasts in it goes to the node as one command.

use std::future::Future;
use std::io::{IoSlice, Write};
use std::sync::Arc;

use rs2p::json::{from_json, to_json};
use rs2p::{PeerAddr, PeerId, ReplyRoute, Value};
use serde_json::{json, Map, Value as Json};
use tokio::sync::mpsc;

use crate::events::{key_json, spawn_forwarders, Style};
use crate::input::{Line, LineReader};
use crate::node::Session;

/// Capacity of the stdout queue, in entries (an entry is one line, or a
/// batch of up to 64 message lines: at most a few MiB in all). A reader
/// that stops reading stdout soon stalls the node's event printing (its
/// messages then wait in the node's receive queue, bounded, and the node
/// does no formatting work for nobody), never its relaying.
const STDOUT_QUEUE_CAP: usize = 32;

/// At most this many queue entries go out in one gathering write (two
/// slices each, the entry and its newline: well within the system's
/// limit of 1,024 slices per write).
const STDOUT_GATHER: usize = 256;

/// At most this many buffered lines are handled as one batch.
const LINE_BATCH: usize = 1024;

/// The commands, for the "unknown command" answer.
pub const COMMANDS: &str =
    "connect, broadcast, whisper, reply, disconnect, peers, status, set, get, delete, delta, dump, quit";

/// Writes lines to stdout, gathering what is queued into one write.
///
/// The writes are plain blocking writes on a thread of their own: tokio's
/// `Stdout` hands every write to its blocking pool (a copy of the buffer
/// and a thread hand-off each), measured at about a tenth of a relaying
/// node's CPU in the JSON chain.
pub fn spawn_stdout() -> (mpsc::Sender<String>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<String>(STDOUT_QUEUE_CAP);
    let task = tokio::task::spawn_blocking(move || {
        let mut batch: Vec<String> = Vec::with_capacity(STDOUT_GATHER);
        while let Some(first) = rx.blocking_recv() {
            batch.clear();
            batch.push(first);
            while batch.len() < STDOUT_GATHER {
                match rx.try_recv() {
                    Ok(more) => batch.push(more),
                    Err(_) => break,
                }
            }
            // One gathering write of everything queued: no copy into a
            // buffer of our own.
            let mut slices: Vec<IoSlice<'_>> =
                batch.iter().flat_map(|l| [IoSlice::new(l.as_bytes()), IoSlice::new(b"\n")]).collect();
            // Locked per batch, not for good: the fatal-error path prints
            // with `println!` after this thread has given up.
            let mut out = std::io::stdout().lock();
            if write_all_vectored(&mut out, &mut slices).is_err() || out.flush().is_err() {
                return;
            }
        }
    });
    (tx, task)
}

/// `Write::write_all` for gathered buffers (the std one is unstable).
fn write_all_vectored(w: &mut impl Write, mut bufs: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One parsed command line.
struct Command {
    name: String,
    req: Option<Json>,
    body: Map<String, Json>,
    /// `"packets"`, already read as msgpack values by the fast path (taken
    /// once, by the command that sends them).
    packets: std::sync::Mutex<Option<Vec<Value>>>,
}

/// A command line as the fast path reads it: `"packets"` straight into
/// msgpack values, the other fields as JSON. Anything unusual (a wrong
/// type, a bad value) fails it, and the line is read again the slow way,
/// which words the error.
struct FastLine {
    cmd: Option<Json>,
    req: Option<Json>,
    packets: Option<Vec<Value>>,
    body: Map<String, Json>,
}

impl<'de> serde::Deserialize<'de> for FastLine {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = FastLine;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a command object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<FastLine, A::Error> {
                let mut line = FastLine { cmd: None, req: None, packets: None, body: Map::new() };
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "cmd" => line.cmd = Some(map.next_value()?),
                        "req" => line.req = Some(map.next_value()?),
                        "packets" => match map.next_value::<rs2p::json::JsonValue>()?.0 {
                            Value::Array(items) => line.packets = Some(items),
                            _ => return Err(serde::de::Error::custom("not an array")),
                        },
                        _ => {
                            let v = map.next_value()?;
                            line.body.insert(key, v);
                        }
                    }
                }
                Ok(line)
            }
        }
        d.deserialize_map(V)
    }
}

/// What a command leads to.
enum Outcome {
    /// This event answers it (`req` is added when the command had one).
    Answer(Json),
    /// Nothing to say unless asked: `{"event":"ok"}` when it had a `req`.
    Ok(Json),
    /// It answers itself later (a connect waits for its handshake).
    Later,
    /// Leave.
    Quit,
}

/// Runs the JSON contract until EOF, `quit`, or `shutdown` resolves.
pub async fn run(
    session: Arc<Session>,
    connect: Vec<crate::node::ConnectTo>,
    shutdown: impl Future<Output = &'static str>,
) -> anyhow::Result<()> {
    let (out, writer) = spawn_stdout();
    out.send(session.ready_json().to_string()).await?;
    let events = session.take_events().unwrap_or_else(|| session.node.peer_events());
    spawn_forwarders(&session.node, events, session.book.clone(), out.clone(), Style::Json);
    for to in connect {
        spawn_connect(&session, to.addr, to.id, None, out.clone());
    }
    let mut lines = LineReader::new(tokio::io::stdin());
    tokio::pin!(shutdown);
    let mut why = "end of input";
    'input: loop {
        let first = tokio::select! {
            l = lines.next_line() => l?,
            signal = &mut shutdown => { why = signal; break }
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        while batch.len() < LINE_BATCH && lines.has_buffered_line() {
            match lines.next_line().await? {
                Some(l) => batch.push(l),
                None => break,
            }
        }
        let mut commands = Vec::with_capacity(batch.len());
        for line in batch {
            match parse(line) {
                Ok(Some(c)) => commands.push(c),
                Ok(None) => {}
                Err((req, message)) => out.send(error_event("", req, message).to_string()).await?,
            }
        }
        let mut i = 0;
        while i < commands.len() {
            // A run of broadcasts goes to the node as one command.
            let run = commands[i..].iter().take_while(|c| c.name == "broadcast").count();
            if run > 1 {
                broadcast_run(&session, &commands[i..i + run], &out).await?;
                i += run;
                continue;
            }
            let c = &commands[i];
            i += 1;
            let outcome = execute(&session, c, &out).await;
            let quit = matches!(outcome, Ok(Outcome::Quit));
            if let Some(event) = answer(c, outcome) {
                out.send(event.to_string()).await?;
            }
            if quit {
                why = "quit";
                break 'input;
            }
        }
    }
    tracing::info!(why, "shutting down");
    session.node.close().await.ok();
    out.send(json!({"event": "shutdown", "reason": why}).to_string()).await.ok();
    drop(out);
    // The forwarders hold the queue until the node's streams end; give the
    // writer a moment to flush the last lines.
    let _ = tokio::time::timeout(std::time::Duration::from_millis(200), writer).await;
    Ok(())
}

/// A line as a command; `Ok(None)` for a blank line.
fn parse(line: Line) -> Result<Option<Command>, (Option<Json>, String)> {
    let text = match line {
        Line::Text(t) => t,
        other => return Err((None, other.problem().unwrap_or_default())),
    };
    if text.trim().is_empty() {
        return Ok(None);
    }
    if let Ok(FastLine { cmd: Some(Json::String(name)), req, packets, body }) = serde_json::from_str(&text) {
        return Ok(Some(Command { name, req, body, packets: std::sync::Mutex::new(packets) }));
    }
    let mut body = match serde_json::from_str::<Json>(&text) {
        Ok(Json::Object(m)) => m,
        Ok(_) => return Err((None, "a command is a JSON object".into())),
        Err(e) => return Err((None, format!("invalid JSON: {e}"))),
    };
    let req = body.remove("req");
    match body.remove("cmd") {
        Some(Json::String(name)) => Ok(Some(Command { name, req, body, packets: std::sync::Mutex::new(None) })),
        Some(_) => Err((req, "\"cmd\" must be a string".into())),
        None => Err((req, format!("missing \"cmd\" (one of: {COMMANDS})"))),
    }
}

fn error_event(cmd: &str, req: Option<Json>, message: impl std::fmt::Display) -> Json {
    let mut e = json!({"event": "error", "cmd": cmd, "message": message.to_string()});
    if let Some(r) = req {
        e["req"] = r;
    }
    e
}

/// The one event that answers `c`, if any.
fn answer(c: &Command, outcome: Result<Outcome, String>) -> Option<Json> {
    let mut event = match outcome {
        Ok(Outcome::Answer(e)) => e,
        Ok(Outcome::Ok(mut e)) => {
            c.req.as_ref()?;
            e["event"] = "ok".into();
            e["cmd"] = c.name.clone().into();
            e
        }
        Ok(Outcome::Quit) => {
            c.req.as_ref()?;
            json!({"event": "ok", "cmd": "quit"})
        }
        Ok(Outcome::Later) => return None,
        Err(message) => {
            let mut e = error_event(&c.name, c.req.clone(), message);
            if let Some(k) = c.body.get("key").filter(|_| matches!(c.name.as_str(), "set" | "delete" | "delta" | "get"))
            {
                e["key"] = k.clone();
            }
            return Some(e);
        }
    };
    if let Some(r) = &c.req {
        event["req"] = r.clone();
    }
    Some(event)
}

fn packets_of(c: &Command) -> Result<Vec<Value>, String> {
    if let Some(p) = c.packets.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
        return Ok(p);
    }
    match c.body.get("packets") {
        Some(Json::Array(a)) => a.iter().map(from_json).collect(),
        Some(_) => Err("\"packets\" must be an array".into()),
        None => Err("\"packets\" (an array of values) is required".into()),
    }
}

fn str_field<'a>(c: &'a Command, field: &str, what: &str) -> Result<&'a str, String> {
    match c.body.get(field) {
        Some(Json::String(s)) => Ok(s),
        Some(_) => Err(format!("\"{field}\" must be a string ({what})")),
        None => Err(format!("\"{field}\" ({what}) is required")),
    }
}

/// Broadcasts a run of broadcast commands as one node command.
async fn broadcast_run(session: &Session, run: &[Command], out: &mpsc::Sender<String>) -> anyhow::Result<()> {
    let mut messages = Vec::with_capacity(run.len());
    let mut sendable = Vec::with_capacity(run.len());
    for c in run {
        match packets_of(c) {
            Ok(p) => {
                messages.push(p);
                sendable.push(c);
            }
            Err(e) => out.send(answer(c, Err(e)).unwrap_or_default().to_string()).await?,
        }
    }
    let peers = session.book.count();
    match session.node.broadcast_many(messages).await {
        Ok(ids) => {
            // Answers only where asked for (building them costs).
            for (c, id) in sendable.iter().zip(ids).filter(|(c, _)| c.req.is_some()) {
                if let Some(e) = answer(c, Ok(Outcome::Ok(json!({"id": id.to_string(), "peers": peers})))) {
                    out.send(e.to_string()).await?;
                }
            }
        }
        Err(err) => {
            for c in sendable {
                if let Some(e) = answer(c, Err(err.to_string())) {
                    out.send(e.to_string()).await?;
                }
            }
        }
    }
    Ok(())
}

/// Dials `addr` (where `id` must be, proven, if given); with a `req`,
/// answers when the handshake completes or fails.
fn spawn_connect(session: &Session, addr: PeerAddr, id: Option<PeerId>, req: Option<Json>, out: mpsc::Sender<String>) {
    let dial = session.dial(addr.clone(), id);
    tokio::spawn(async move {
        let result = dial.await;
        let event = match result {
            Ok(id) if req.is_some() => {
                json!({"event": "ok", "cmd": "connect", "addr": addr.to_string(), "id": id.to_string()})
            }
            Ok(_) => return,
            Err(e) => error_event("connect", None, e),
        };
        let mut event = event;
        if let Some(r) = req {
            event["req"] = r;
        }
        let _ = out.send(event.to_string()).await;
    });
}

/// Runs one command.
async fn execute(session: &Session, c: &Command, out: &mpsc::Sender<String>) -> Result<Outcome, String> {
    let node = &session.node;
    let err = |e: rs2p::Error| e.to_string();
    if matches!(c.name.as_str(), "set" | "get" | "delete" | "delta" | "dump") {
        return execute_sync(session, c).await;
    }
    Ok(match c.name.as_str() {
        "connect" => {
            let addr: PeerAddr = str_field(c, "addr", "HOST:PORT")?.parse().map_err(|e| format!("{e}"))?;
            let id = match c.body.get("id") {
                None | Some(Json::Null) => None,
                Some(_) => Some(str_field(c, "id", "a node id")?.parse::<PeerId>().map_err(|e| e.to_string())?),
            };
            spawn_connect(session, addr, id, c.req.clone(), out.clone());
            Outcome::Later
        }
        "broadcast" => {
            let peers = session.book.count();
            let id = node.broadcast(packets_of(c)?).await.map_err(err)?;
            Outcome::Ok(json!({"id": id.to_string(), "peers": peers}))
        }
        "whisper" => {
            let to = session
                .book
                .connected(str_field(c, "to", "a peer id or a unique prefix")?)
                .map_err(|e| e.to_string())?;
            let id = node.whisper(&to, packets_of(c)?).await.map_err(err)?;
            Outcome::Ok(json!({"id": id.to_string(), "to": to.to_string(), "peers": 1}))
        }
        "reply" => {
            let to = session
                .book
                .anyone(str_field(c, "to", "the sender's id or a unique prefix")?)
                .map_err(|e| e.to_string())?;
            let route = node.send_to(&to, packets_of(c)?).await.map_err(err)?;
            let route = match route {
                ReplyRoute::Direct => "direct",
                ReplyRoute::Routing => "routing",
            };
            Outcome::Ok(json!({"to": to.to_string(), "route": route, "peers": 1}))
        }
        "disconnect" => {
            let peer = session
                .book
                .connected(str_field(c, "id", "a peer id or a unique prefix")?)
                .map_err(|e| e.to_string())?;
            node.disconnect(&peer).await.map_err(err)?;
            Outcome::Ok(json!({"id": peer.to_string()}))
        }
        "peers" => Outcome::Answer(json!({"event": "peers", "peers": session.peers_json().await.map_err(err)?})),
        "status" => Outcome::Answer(session.status_json().await.map_err(err)?),
        "quit" => Outcome::Quit,
        other => return Err(format!("unknown command {other:?} (one of: {COMMANDS})")),
    })
}

/// A key from JSON: a string (its UTF-8 bytes) or `{"$bytes": ...}`.
fn key_from_json(j: Option<&Json>) -> Result<Vec<u8>, String> {
    match j {
        Some(Json::String(s)) => Ok(s.as_bytes().to_vec()),
        Some(j @ Json::Object(_)) => match from_json(j)? {
            Value::Binary(b) => Ok(b),
            _ => Err("a key is a string or {\"$bytes\": ...}".into()),
        },
        Some(_) => Err("\"key\" must be a string or {\"$bytes\": ...}".into()),
        None => Err("\"key\" (a string or {\"$bytes\": ...}) is required".into()),
    }
}

async fn execute_sync(session: &Session, c: &Command) -> Result<Outcome, String> {
    let s = session.sync.as_ref().ok_or_else(|| format!("{:?} needs a node started with --sync", c.name))?;
    let err = |e: rs2p::Error| e.to_string();
    if c.name == "dump" {
        let mut entries = s.entries().await.map_err(err)?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let entries: Vec<Json> = entries
            .into_iter()
            .map(|(k, v, owner, ts)| json!({"key": key_json(&k), "value": to_json(&v), "owner": owner.to_string(), "timestamp": ts}))
            .collect();
        return Ok(Outcome::Answer(json!({"event": "dump", "entries": entries})));
    }
    let key = key_from_json(c.body.get("key"))?;
    let key_json = c.body.get("key").cloned().unwrap_or(Json::Null);
    Ok(match c.name.as_str() {
        "set" => {
            let value = from_json(c.body.get("value").ok_or("\"value\" is required")?)?;
            s.set(&key, value).await.map_err(err)?;
            Outcome::Ok(json!({"key": key_json}))
        }
        "get" => {
            let v = s.get(&key).await.map_err(err)?;
            Outcome::Answer(json!({
                "event": "value", "key": key_json, "found": v.is_some(),
                "value": v.as_ref().map(to_json).unwrap_or(Json::Null),
            }))
        }
        "delete" => {
            s.delete(&key).await.map_err(err)?;
            Outcome::Ok(json!({"key": key_json}))
        }
        "delta" => match from_json(c.body.get("delta").ok_or("\"delta\" (an object) is required")?)? {
            Value::Map(m) => {
                s.apply_delta(&key, m).await.map_err(err)?;
                Outcome::Ok(json!({"key": key_json}))
            }
            _ => return Err("\"delta\" must be an object".into()),
        },
        _ => unreachable!("dispatched above"),
    })
}
