//! `rs2p node`: one node, driven by JSON lines (for programs) or by a
//! readable line interface (for people).

use anyhow::{Context, Result};
use rs2p::{Event, MeshSocket, Message, PeerAddr, PeerId, SyncSocket, Value};
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
    /// Subnet name; nodes on other subnets are refused. Default `mesh`, or
    /// `sync` with --sync (the network's subnet is then NAME + "1", or
    /// NAME + "0" with --no-leasing, as in py2p).
    #[arg(long)]
    pub subnet: Option<String>,
    /// Hold a replica of the network's synced dictionary (py2p SyncSocket).
    #[arg(long)]
    pub sync: bool,
    /// TLS on every connection (py2p's "SSL" mode): a fresh self-signed
    /// certificate, peers not verified (as py2p). Only SSL nodes can join.
    #[arg(long)]
    pub tls: bool,
    /// Sync without py2p's one-hour leases (only with --sync).
    #[arg(long, requires = "sync")]
    pub no_leasing: bool,
    /// Address other nodes should dial to reach this one.
    #[arg(long, value_name = "HOST:PORT")]
    pub out_addr: Option<PeerAddr>,
}

/// Capacity of the stdout line queue; a reader that stops reading stdout
/// eventually stalls the node's event printing, never its relaying.
const STDOUT_QUEUE_CAP: usize = 4096;

pub async fn run(args: NodeArgs) -> Result<()> {
    let (node, sync) = if args.sync {
        let mut b = SyncSocket::builder()
            .subnet(args.subnet.clone().unwrap_or_else(|| "sync".into()))
            .leasing(!args.no_leasing)
            .bind(args.bind.clone());
        if args.tls {
            b = b.tls(rs2p::TlsConfig::new());
        }
        if let Some(a) = args.out_addr.clone() {
            b = b.mesh(|m| m.out_addr(a));
        }
        let s = b.spawn().await.with_context(|| format!("starting node on {}", args.bind))?;
        (s.mesh().clone(), Some(s))
    } else {
        let mut b = MeshSocket::builder().bind(args.bind.clone()).protocol(rs2p::Protocol::new(
            args.subnet.clone().unwrap_or_else(|| "mesh".into()),
            rs2p::Encryption::Plaintext,
        ));
        if let Some(a) = args.out_addr.clone() {
            b = b.out_addr(a);
        }
        if args.tls {
            b = b.tls(rs2p::TlsConfig::new());
        }
        (b.spawn().await.with_context(|| format!("starting node on {}", args.bind))?, None)
    };
    if args.json {
        run_json(node, sync, args.connect).await
    } else {
        run_human(node, sync, args.connect).await
    }
}

/// A key as JSON: a string when it is UTF-8, `{"$bytes": ...}` otherwise.
fn key_json(k: &[u8]) -> Json {
    match std::str::from_utf8(k) {
        Ok(s) => Json::String(s.to_string()),
        Err(_) => to_json(&Value::Binary(k.to_vec())),
    }
}

/// A key from JSON: a string (its UTF-8 bytes) or `{"$bytes": ...}`.
fn key_from_json(j: Option<&Json>) -> Result<Vec<u8>, String> {
    match j {
        Some(Json::String(s)) => Ok(s.as_bytes().to_vec()),
        Some(j @ Json::Object(_)) => match from_json(j)? {
            Value::Binary(b) => Ok(b),
            _ => Err("a key is a string or {\"$bytes\": ...}".into()),
        },
        _ => Err("\"key\" (a string or {\"$bytes\": ...}) is required".into()),
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

/// The `status` event: the node's identity, health and counters.
fn status_json(id: &PeerId, s: &rs2p::Status) -> Json {
    let tree = s.tree.map(|t| {
        json!({"prunes": t.prunes, "grafts": t.grafts, "announced": t.announced, "served": t.served,
               "postponed": t.postponed})
    });
    json!({
        "event": "status",
        "id": id.to_string(),
        "nominal": s.nominal,
        "peers": s.peers,
        "connections": s.connections,
        "delivered": s.delivered,
        "duplicates": s.duplicates,
        "relayed": s.stats.relayed,
        "frames_in": s.frames_in,
        "frames_out": s.frames_out,
        "bytes_in": s.bytes_in,
        "bytes_out": s.bytes_out,
        "dropped_messages": s.dropped_messages,
        "dropped_frames": s.dropped_frames,
        "dropped_control": s.dropped_control,
        "slow_peers": s.slow_peers,
        "refused_connections": s.refused_connections,
        "tree": tree,
        "recent_errors": s.recent_errors,
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
                    json!({"event": "peer_down", "id": peer.to_string(), "reason": reason.to_string()}).to_string()
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
                (Event::Update { key, value, owner, timestamp }, true) => json!({
                    "event": "update", "key": key_json(&key), "value": to_json(&value),
                    "owner": owner.to_string(), "timestamp": timestamp,
                })
                .to_string(),
                (Event::Delete { key }, true) => json!({"event": "delete", "key": key_json(&key)}).to_string(),
                (Event::Update { key, value, owner, .. }, false) => {
                    format!("* {} = {} (by {})", key_json(&key), to_json(&value), short(&owner))
                }
                (Event::Delete { key }, false) => format!("* {} deleted", key_json(&key)),
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

async fn run_json(node: MeshSocket, sync: Option<SyncSocket>, connect: Vec<PeerAddr>) -> Result<()> {
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
        match handle_json(&node, sync.as_ref(), &cmd, &name, &out).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                let mut ev = json!({"event": "error", "cmd": name, "message": e});
                if let Some(k) = cmd.get("key").filter(|_| matches!(name.as_str(), "set" | "delete" | "delta" | "get"))
                {
                    ev["key"] = k.clone();
                }
                out.send(ev.to_string()).await?
            }
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
async fn handle_json(
    node: &MeshSocket,
    sync: Option<&SyncSocket>,
    cmd: &Json,
    name: &str,
    out: &mpsc::Sender<String>,
) -> Result<bool, String> {
    if matches!(name, "set" | "get" | "delete" | "delta" | "dump") {
        let s = sync.ok_or_else(|| format!("{name:?} needs a node started with --sync"))?;
        return handle_sync(s, cmd, name, out).await.map(|()| false);
    }
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
        "status" => {
            let status = node.status().await.map_err(|e| e.to_string())?;
            let _ = out.send(status_json(node.id(), &status).to_string()).await;
        }
        "quit" => return Ok(true),
        "" => return Err("missing \"cmd\"".into()),
        other => return Err(format!("unknown command {other:?}")),
    }
    Ok(false)
}

async fn handle_sync(s: &SyncSocket, cmd: &Json, name: &str, out: &mpsc::Sender<String>) -> Result<(), String> {
    let err = |e: rs2p::Error| e.to_string();
    if name == "dump" {
        let entries: Vec<Json> = s
            .entries()
            .await
            .map_err(err)?
            .into_iter()
            .map(|(k, v, owner, ts)| {
                json!({"key": key_json(&k), "value": to_json(&v), "owner": owner.to_string(), "timestamp": ts})
            })
            .collect();
        let _ = out.send(json!({"event": "dump", "entries": entries}).to_string()).await;
        return Ok(());
    }
    let key = key_from_json(cmd.get("key"))?;
    match name {
        "set" => {
            let value = from_json(cmd.get("value").ok_or("\"value\" is required")?)?;
            s.set(&key, value).await.map_err(err)?;
        }
        "get" => {
            let v = s.get(&key).await.map_err(err)?;
            let ev = json!({
                "event": "value", "key": cmd["key"], "found": v.is_some(),
                "value": v.as_ref().map(to_json).unwrap_or(Json::Null),
            });
            let _ = out.send(ev.to_string()).await;
        }
        "delete" => s.delete(&key).await.map_err(err)?,
        "delta" => match from_json(cmd.get("delta").ok_or("\"delta\" (an object) is required")?)? {
            Value::Map(m) => s.apply_delta(&key, m).await.map_err(err)?,
            _ => return Err("\"delta\" must be an object".into()),
        },
        _ => unreachable!("dispatched above"),
    }
    Ok(())
}

const HELP: &str = "commands:
  connect HOST:PORT       connect to a node
  broadcast TEXT...       send TEXT to the whole network
  whisper ID TEXT...      send TEXT to one connected peer (ID prefix is enough)
  peers                   list connected peers
  status                  health and counters
  set KEY VALUE           (--sync) set a key; VALUE is JSON if it parses, else text
  get KEY                 (--sync) read a key
  del KEY                 (--sync) delete a key
  dump                    (--sync) list every key
  quit                    leave the network";

async fn run_human(node: MeshSocket, sync: Option<SyncSocket>, connect: Vec<PeerAddr>) -> Result<()> {
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
                    "{} | peers {} | delivered {} | relayed {} | duplicates suppressed {} | frames in {} out {} | bytes in {} out {}{}{}",
                    if s.nominal { "nominal" } else { "errors seen" },
                    s.peers,
                    s.delivered,
                    s.stats.relayed,
                    s.duplicates,
                    s.frames_in,
                    s.frames_out,
                    s.bytes_in,
                    s.bytes_out,
                    s.tree
                        .map(|t| format!(
                            "\n  tree: {} prunes, {} grafts ({} put off while busy), {} announced, {} served",
                            t.prunes, t.grafts, t.postponed, t.announced, t.served
                        ))
                        .unwrap_or_default(),
                    s.recent_errors.iter().map(|e| format!("\n  {e}")).collect::<String>()
                ),
                Err(e) => format!("! {e}"),
            },
            "set" | "get" | "del" | "dump" => match &sync {
                None => "! dictionary commands need --sync".to_string(),
                Some(s) => human_sync(s, word, rest.trim()).await,
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

async fn human_sync(s: &SyncSocket, word: &str, rest: &str) -> String {
    let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
    let r = match word {
        "set" => {
            let v = serde_json::from_str::<Json>(value)
                .ok()
                .and_then(|j| from_json(&j).ok())
                .unwrap_or_else(|| Value::from(value));
            s.set(key, v).await.map(|()| "ok".to_string())
        }
        "get" => s.get(key).await.map(|v| match v {
            Some(v) => to_json(&v).to_string(),
            None => "(no such key)".to_string(),
        }),
        "del" => s.delete(key).await.map(|()| "ok".to_string()),
        _ => s.entries().await.map(|e| {
            if e.is_empty() {
                "(empty)".to_string()
            } else {
                e.iter()
                    .map(|(k, v, o, _)| format!("  {} = {}  (by {})", key_json(k), to_json(v), short(o)))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }),
    };
    r.unwrap_or_else(|e| format!("! {e}"))
}
