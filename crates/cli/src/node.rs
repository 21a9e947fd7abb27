//! `rs2p node`: one node, driven by JSON lines (for programs) or by a
//! readable line interface (for people).

use anyhow::{Context, Result};
use rs2p::{Event, MeshSocket, Message, PeerAddr, PeerId, Value};
use serde_json::{json, Value as Json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use rs2p::json::{from_json, to_json};

/// Options of `rs2p node`.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// Speak JSON lines on stdin/stdout (the scripting contract).
    #[arg(long)]
    pub json: bool,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "HOST:PORT")]
    pub bind: String,
    /// Node to connect to at start (repeatable).
    #[arg(long, value_name = "HOST:PORT")]
    pub connect: Vec<PeerAddr>,
    /// Subnet name; nodes on other subnets are refused.
    #[arg(long, default_value = "mesh")]
    pub subnet: String,
    /// Address other nodes should dial to reach this one.
    #[arg(long, value_name = "HOST:PORT")]
    pub out_addr: Option<PeerAddr>,
}

/// Capacity of the stdout line queue; a reader that stops reading stdout
/// eventually stalls the node's event printing, never its relaying.
const STDOUT_QUEUE_CAP: usize = 4096;

pub async fn run(args: NodeArgs) -> Result<()> {
    let mut b = MeshSocket::builder()
        .bind(args.bind.clone())
        .protocol(rs2p::Protocol::new(args.subnet.clone(), rs2p::Encryption::Plaintext));
    if let Some(a) = args.out_addr.clone() {
        b = b.out_addr(a);
    }
    let node = b.spawn().await.with_context(|| format!("starting node on {}", args.bind))?;
    if args.json {
        run_json(node, args.connect).await
    } else {
        run_human(node, args.connect).await
    }
}

fn spawn_stdout() -> mpsc::Sender<String> {
    let (tx, mut rx) = mpsc::channel::<String>(STDOUT_QUEUE_CAP);
    tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        while let Some(line) = rx.recv().await {
            let mut buf = line.into_bytes();
            buf.push(b'\n');
            // Gather what is already queued into one write.
            while let Ok(more) = rx.try_recv() {
                buf.extend_from_slice(more.as_bytes());
                buf.push(b'\n');
            }
            if out.write_all(&buf).await.is_err() || out.flush().await.is_err() {
                return;
            }
        }
    });
    tx
}

fn message_json(m: &Message) -> Json {
    let packets = match m.packets() {
        Ok(p) => p.iter().map(to_json).collect(),
        Err(_) => Vec::new(),
    };
    json!({
        "event": "message",
        "kind": m.kind().as_str(),
        "sender": m.sender().to_string(),
        "time": m.time(),
        "packets": packets,
    })
}

fn peers_json(peers: &[rs2p::PeerInfo]) -> Json {
    Json::Array(
        peers
            .iter()
            .map(|p| {
                json!({
                    "id": p.id.to_string(),
                    "addr": p.addr.as_ref().map(ToString::to_string),
                    "outgoing": p.outgoing,
                })
            })
            .collect(),
    )
}

fn error_json(cmd: &str, message: impl std::fmt::Display) -> String {
    json!({"event": "error", "cmd": cmd, "message": message.to_string()}).to_string()
}

/// Forwards messages and peer events to `out` until the node stops.
fn spawn_forwarders(node: &MeshSocket, out: mpsc::Sender<String>, json: bool) {
    let n = node.clone();
    let o = out.clone();
    tokio::spawn(async move {
        while let Some(m) = n.next_message().await {
            let line = if json {
                message_json(&m).to_string()
            } else {
                let packets: Vec<String> =
                    m.packets().unwrap_or_default().iter().map(|v| to_json(v).to_string()).collect();
                format!("[{} from {}] {}", m.kind().as_str(), short(m.sender()), packets.join(" "))
            };
            if o.send(line).await.is_err() {
                return;
            }
        }
    });
    let mut events = node.events();
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            let line = match (e, json) {
                (Event::PeerUp { peer, addr, outgoing }, true) => json!({
                    "event": "peer_up", "id": peer.to_string(),
                    "addr": addr.map(|a| a.to_string()), "outgoing": outgoing,
                })
                .to_string(),
                (Event::PeerDown { peer, reason }, true) => {
                    json!({"event": "peer_down", "id": peer.to_string(), "reason": reason}).to_string()
                }
                (Event::PeerUp { peer, addr, outgoing }, false) => format!(
                    "* peer up: {} at {} ({})",
                    short(&peer),
                    addr.map(|a| a.to_string()).unwrap_or_else(|| "?".into()),
                    if outgoing { "we dialed" } else { "they dialed" }
                ),
                (Event::PeerDown { peer, reason }, false) => {
                    format!("* peer down: {} ({reason})", short(&peer))
                }
                (Event::ConnectFailed { addr, reason }, false) => {
                    format!("* connection {}failed: {reason}", addr.map(|a| format!("to {a} ")).unwrap_or_default())
                }
                (Event::Lagged(n), false) => format!("* missed {n} events"),
                _ => continue,
            };
            if out.send(line).await.is_err() {
                return;
            }
        }
    });
}

fn short(id: &PeerId) -> String {
    id.to_string().chars().take(12).collect()
}

async fn run_json(node: MeshSocket, connect: Vec<PeerAddr>) -> Result<()> {
    let out = spawn_stdout();
    out.send(json!({"event": "ready", "id": node.id().to_string(), "addr": node.out_addr().to_string()}).to_string())
        .await?;
    spawn_forwarders(&node, out.clone(), true);
    for addr in connect {
        spawn_connect(&node, addr, out.clone());
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let cmd: Json = match serde_json::from_str(&line) {
            Ok(j @ Json::Object(_)) => j,
            Ok(_) => {
                out.send(error_json("", "a command is a JSON object")).await?;
                continue;
            }
            Err(e) => {
                out.send(error_json("", format!("invalid JSON: {e}"))).await?;
                continue;
            }
        };
        let name = cmd.get("cmd").and_then(Json::as_str).unwrap_or("").to_string();
        match handle_json(&node, &cmd, &name, &out).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => out.send(error_json(&name, e)).await?,
        }
    }
    node.close().await.ok();
    // Let the stdout task flush the last lines.
    drop(out);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    Ok(())
}

fn spawn_connect(node: &MeshSocket, addr: PeerAddr, out: mpsc::Sender<String>) {
    let node = node.clone();
    tokio::spawn(async move {
        if let Err(e) = node.connect(addr).await {
            let _ = out.send(error_json("connect", e)).await;
        }
    });
}

fn packets_of(cmd: &Json) -> Result<Vec<Value>, String> {
    match cmd.get("packets") {
        None => Ok(Vec::new()),
        Some(Json::Array(a)) => a.iter().map(from_json).collect(),
        Some(_) => Err("\"packets\" must be an array".into()),
    }
}

/// Runs one JSON command; `Ok(true)` means quit.
async fn handle_json(node: &MeshSocket, cmd: &Json, name: &str, out: &mpsc::Sender<String>) -> Result<bool, String> {
    match name {
        "connect" => {
            let addr = cmd.get("addr").and_then(Json::as_str).ok_or("\"addr\" (HOST:PORT) is required")?;
            let addr: PeerAddr = addr.parse().map_err(|e| format!("{e}"))?;
            spawn_connect(node, addr, out.clone());
        }
        "broadcast" => {
            node.broadcast(packets_of(cmd)?).await.map_err(|e| e.to_string())?;
        }
        "whisper" => {
            let to = cmd.get("to").and_then(Json::as_str).ok_or("\"to\" (node id) is required")?;
            let to = PeerId::from_bytes(to.as_bytes().to_vec());
            node.whisper(&to, packets_of(cmd)?).await.map_err(|e| e.to_string())?;
        }
        "peers" => {
            let peers = node.routing_table().await.map_err(|e| e.to_string())?;
            let _ = out.send(json!({"event": "peers", "peers": peers_json(&peers)}).to_string()).await;
        }
        "quit" => return Ok(true),
        "" => return Err("missing \"cmd\"".into()),
        other => return Err(format!("unknown command {other:?}")),
    }
    Ok(false)
}

const HELP: &str = "commands:
  connect HOST:PORT       connect to a node
  broadcast TEXT...       send TEXT to the whole network
  whisper ID TEXT...      send TEXT to one connected peer (ID prefix is enough)
  peers                   list connected peers
  status                  health and counters
  quit                    leave the network";

async fn run_human(node: MeshSocket, connect: Vec<PeerAddr>) -> Result<()> {
    let out = spawn_stdout();
    out.send(format!(
        "rs2p node {}\nlistening on {} (subnet {}); type 'help' for commands",
        node.id(),
        node.out_addr(),
        node.protocol().subnet
    ))
    .await?;
    spawn_forwarders(&node, out.clone(), false);
    for addr in connect {
        spawn_connect_human(&node, addr, out.clone());
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let line = line.trim();
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let reply = match word {
            "" => continue,
            "help" | "?" => HELP.to_string(),
            "quit" | "exit" => break,
            "connect" => match rest.trim().parse::<PeerAddr>() {
                Ok(a) => {
                    spawn_connect_human(&node, a, out.clone());
                    continue;
                }
                Err(e) => format!("! {e}"),
            },
            "broadcast" | "send" => match node.broadcast(vec![Value::from(rest)]).await {
                Ok(_) => continue,
                Err(e) => format!("! {e}"),
            },
            "whisper" => {
                let (prefix, text) = rest.split_once(' ').unwrap_or((rest, ""));
                let peers = node.routing_table().await.unwrap_or_default();
                match peers.iter().find(|p| p.id.to_string().starts_with(prefix) && !prefix.is_empty()) {
                    Some(p) => match node.whisper(&p.id, vec![Value::from(text)]).await {
                        Ok(_) => continue,
                        Err(e) => format!("! {e}"),
                    },
                    None => format!("! no connected peer with id starting {prefix:?}"),
                }
            }
            "peers" => {
                let peers = node.routing_table().await.unwrap_or_default();
                if peers.is_empty() {
                    "no peers".to_string()
                } else {
                    peers
                        .iter()
                        .map(|p| {
                            format!(
                                "  {}  {}  {}",
                                p.id,
                                p.addr.as_ref().map(ToString::to_string).unwrap_or_else(|| "?".into()),
                                if p.outgoing { "outgoing" } else { "incoming" }
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                }
            }
            "status" => match node.status().await {
                Ok(s) => format!(
                    "{} | peers {} | delivered {} | relayed {} | duplicates suppressed {}{}",
                    if s.nominal { "nominal" } else { "errors seen" },
                    s.peers,
                    s.stats.delivered,
                    s.stats.relayed,
                    s.stats.duplicates,
                    s.recent_errors.iter().map(|e| format!("\n  {e}")).collect::<String>()
                ),
                Err(e) => format!("! {e}"),
            },
            other => format!("! unknown command {other:?}; type 'help'"),
        };
        out.send(reply).await?;
    }
    node.close().await.ok();
    drop(out);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    Ok(())
}

fn spawn_connect_human(node: &MeshSocket, addr: PeerAddr, out: mpsc::Sender<String>) {
    let node = node.clone();
    tokio::spawn(async move {
        let line = match node.connect(addr.clone()).await {
            Ok(id) => format!("* connected to {} at {addr}", short(&id)),
            Err(e) => format!("! {e}"),
        };
        let _ = out.send(line).await;
    });
}
