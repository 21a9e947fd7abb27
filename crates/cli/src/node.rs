//! `rs2p node`: one node, driven by JSON lines (for programs, see
//! [`crate::json_mode`]) or by a console (for people, see
//! [`crate::console`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use rs2p::{MeshSocket, PeerAddr, PeerId, SyncSocket};
use serde_json::{json, Value as Json};

use crate::peer_book::PeerBook;

/// A `--connect` target: an address, and the id that must be there.
#[derive(Debug, Clone)]
pub struct ConnectTo {
    /// Where.
    pub addr: PeerAddr,
    /// Who must be there (proven), if given.
    pub id: Option<PeerId>,
}

impl std::str::FromStr for ConnectTo {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, id) = match s.rsplit_once('@') {
            Some((a, id)) => (a, Some(id.parse::<PeerId>().map_err(|e| format!("bad id after @: {e}"))?)),
            None => (s, None),
        };
        Ok(ConnectTo { addr: addr.parse().map_err(|e| format!("{e}"))?, id })
    }
}

/// The ids of `--allow` and `--allow-file`, if either is given.
fn allowed(args: &NodeArgs) -> Result<Option<Vec<PeerId>>> {
    let mut ids = args.allow.clone();
    if let Some(path) = &args.allow_file {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            ids.push(line.parse().with_context(|| format!("{}:{}: not a node id", path.display(), n + 1))?);
        }
    }
    Ok((args.allow_file.is_some() || !ids.is_empty()).then_some(ids))
}

/// Options of `rs2p node`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct NodeArgs {
    /// Speak JSON lines on stdin/stdout (the scripting contract).
    #[arg(long)]
    pub json: bool,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "HOST:PORT")]
    pub bind: String,
    /// Node to connect to at start (repeatable). With @ID, the node there
    /// must be ID and prove it (sign a challenge with ID's key): anything
    /// else, an impostor included, is refused with the reason.
    #[arg(long, value_name = "HOST:PORT[@ID]")]
    pub connect: Vec<ConnectTo>,
    /// A private network: only ID may link with this node (repeatable; with
    /// --allow-file, the union). Each peer must prove the id it claims, so
    /// py2p peers (which cannot) are refused; only listed ids' broadcasts
    /// are delivered.
    #[arg(long, value_name = "ID")]
    pub allow: Vec<PeerId>,
    /// --allow for every id in FILE (one per line; blank lines and lines
    /// starting with # are skipped).
    #[arg(long, value_name = "FILE")]
    pub allow_file: Option<std::path::PathBuf>,
    /// Deliver only broadcasts signed by their sender, and link only with
    /// peers that sign (py2p peers, which cannot, are refused with the
    /// reason). Without it, a py2p node's broadcasts are delivered, marked
    /// "verified": false.
    #[arg(long)]
    pub require_signed: bool,
    /// Do not sign this node's broadcasts (to measure what signing costs).
    /// Conflicts with --require-signed.
    #[arg(long, conflicts_with = "require_signed")]
    pub no_sign: bool,
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
    /// Links this node opens by itself to peers it learns of, on top of
    /// those it is told to connect to (py2p's `max_outgoing`). 0 keeps only
    /// the links you ask for: a fixed topology, such as a chain.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub max_outgoing: usize,
    /// Keep the node's key (Ed25519, PKCS#8 PEM) in FILE, so it keeps its
    /// id across restarts: created with owner-only permissions when
    /// missing. Without it, each run has a fresh key and id.
    #[arg(long, value_name = "FILE")]
    pub key: Option<std::path::PathBuf>,
    /// With --sync: keep the dictionary (and the node's key, unless --key
    /// says otherwise) in DIR, so that a restarted node still has it and
    /// keeps its id.
    #[arg(long, value_name = "DIR", requires = "sync")]
    pub data_dir: Option<std::path::PathBuf>,
    /// With --data-dir: when a write is acknowledged. `batch` (default):
    /// once on disk, with group commit; `always`: each round of changes
    /// fsynced on its own; `never`: at once, fsynced every second.
    #[arg(long, value_name = "POLICY", default_value = "batch", requires = "data_dir")]
    pub fsync: rs2p::Fsync,
    /// With --data-dir: what to do with a damaged store. `fail` (default):
    /// refuse to start; `resync`: set it aside and take the dictionary
    /// from peers.
    #[arg(long, value_name = "WHAT", default_value = "fail", requires = "data_dir")]
    pub on_corrupt: OnCorruptArg,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics: Option<SocketAddr>,
}

const AFTER_HELP: &str = "\
Console commands (without --json): connect, broadcast, whisper, reply, disconnect,
peers, status, set, get, del, delta, dump, help, quit. Type 'help' in the console.

JSON commands (with --json), one object per line, each may carry \"req\":
  {\"cmd\":\"broadcast\",\"packets\":[...]}   {\"cmd\":\"whisper\",\"to\":ID,\"packets\":[...]}
  {\"cmd\":\"reply\",\"to\":ID,\"packets\":[...]} {\"cmd\":\"connect\",\"addr\":\"HOST:PORT\",\"id\":ID?}
  {\"cmd\":\"disconnect\",\"id\":ID}  {\"cmd\":\"peers\"}  {\"cmd\":\"status\"}  {\"cmd\":\"quit\"}
  with --sync: set (key, value), get (key), delete (key), delta (key, delta), dump
ID may be a unique prefix of a peer id. See the README's JSON contract table.";

/// `--on-corrupt`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OnCorruptArg {
    /// Refuse to start.
    Fail,
    /// Set the store aside and resync from peers.
    Resync,
}

/// A running node and what the front ends share about it.
pub struct Session {
    /// The mesh node.
    pub node: MeshSocket,
    /// Its synced dictionary, with --sync.
    pub sync: Option<SyncSocket>,
    /// Connected peers and recent senders, for id prefixes.
    pub book: Arc<PeerBook>,
    /// When the node started.
    pub started: Instant,
    /// The node's peer events, subscribed to as soon as it runs: a peer
    /// can link in before the front end starts printing (as soon as `ready`
    /// shows the address), and a later subscription would miss its
    /// `peer_up`. Taken once, by the front end's forwarder.
    events: std::sync::Mutex<Option<rs2p::EventStream>>,
}

impl Session {
    /// Starts the node `args` describe.
    pub async fn start(args: &NodeArgs) -> Result<Arc<Session>> {
        let allow = allowed(args)?;
        let (node, sync) = if args.sync {
            let mut b = SyncSocket::builder()
                .subnet(args.subnet.clone().unwrap_or_else(|| "sync".into()))
                .leasing(!args.no_leasing)
                .bind(args.bind.clone());
            if args.tls {
                b = b.tls(rs2p::TlsConfig::new());
            }
            let max_outgoing = args.max_outgoing;
            b = b.mesh(|m| m.max_outgoing(max_outgoing));
            if let Some(dir) = args.data_dir.clone() {
                let on_corrupt = match args.on_corrupt {
                    OnCorruptArg::Fail => rs2p::OnCorrupt::Fail,
                    OnCorruptArg::Resync => rs2p::OnCorrupt::Resync,
                };
                b = b.data_dir(dir).fsync(args.fsync).on_corrupt(on_corrupt);
            }
            if let Some(path) = args.key.clone() {
                b = b.mesh(|m| m.key_file(path));
            }
            if let Some(a) = args.out_addr.clone() {
                b = b.mesh(|m| m.out_addr(a));
            }
            if let Some(ids) = allow.clone() {
                b = b.mesh(|m| m.allow(ids));
            }
            let (sign, require) = (!args.no_sign, args.require_signed);
            b = b.mesh(|m| m.sign_broadcasts(sign).require_signed(require));
            let s = b.spawn().await.with_context(|| format!("cannot start a node on {}", args.bind))?;
            (s.mesh().clone(), Some(s))
        } else {
            let mut b = MeshSocket::builder()
                .bind(args.bind.clone())
                .protocol(rs2p::Protocol::new(
                    args.subnet.clone().unwrap_or_else(|| "mesh".into()),
                    rs2p::Encryption::Plaintext,
                ))
                .max_outgoing(args.max_outgoing);
            if let Some(path) = args.key.clone() {
                b = b.key_file(path);
            }
            if let Some(a) = args.out_addr.clone() {
                b = b.out_addr(a);
            }
            if let Some(ids) = allow {
                b = b.allow(ids);
            }
            b = b.sign_broadcasts(!args.no_sign).require_signed(args.require_signed);
            if args.tls {
                b = b.tls(rs2p::TlsConfig::new());
            }
            (b.spawn().await.with_context(|| format!("cannot start a node on {}", args.bind))?, None)
        };
        tracing::info!(id = %node.id(), listen = %node.local_addr(), subnet = %node.protocol().subnet, "node started");
        let events = std::sync::Mutex::new(Some(node.peer_events()));
        Ok(Arc::new(Session { node, sync, book: Arc::default(), started: Instant::now(), events }))
    }

    /// The peer events since the node started (once; `None` after).
    pub fn take_events(&self) -> Option<rs2p::EventStream> {
        self.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }

    /// Dials `addr` for a user's `connect`, telling the peer book, so the
    /// failure is reported once (by the command's answer, not again as an
    /// event). A `'static` future, to be spawned.
    pub fn dial(
        &self,
        addr: PeerAddr,
        id: Option<PeerId>,
    ) -> impl std::future::Future<Output = Result<PeerId, rs2p::Error>> + Send + 'static {
        let (node, book, key) = (self.node.clone(), self.book.clone(), addr.to_string());
        book.dialing(&key);
        async move {
            let result = match id {
                Some(id) => node.connect_expecting(addr, id).await,
                None => node.connect(addr).await,
            };
            if result.is_ok() {
                book.dialed(&key);
            }
            result
        }
    }

    /// The node's id.
    pub fn id(&self) -> &PeerId {
        self.node.id()
    }

    /// The node's public key in hex (its id is base58 of the key's SHA-384).
    pub fn public_key_hex(&self) -> String {
        self.node.public_key().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The `ready` event: who and where the node is.
    pub fn ready_json(&self) -> Json {
        json!({
            "event": "ready",
            "id": self.id().to_string(),
            "public_key": self.public_key_hex(),
            "addr": self.node.out_addr().to_string(),
            "listen": self.node.local_addr().to_string(),
            "subnet": self.node.protocol().subnet,
            "tls": self.node.tls_fingerprint().is_some(),
            "sync": self.sync.is_some(),
            "version": env!("CARGO_PKG_VERSION"),
        })
    }

    /// The connected peers, as JSON.
    pub async fn peers_json(&self) -> Result<Json, rs2p::Error> {
        let mut peers = self.node.routing_table().await?;
        peers.sort_by(|a, b| a.id.as_bytes().cmp(b.id.as_bytes()));
        Ok(Json::Array(
            peers
                .iter()
                .map(|p| {
                    json!({
                        "id": p.id.to_string(),
                        "addr": p.addr.as_ref().map(ToString::to_string),
                        "outgoing": p.outgoing,
                        "rs2p": p.rs2p,
                        "tree": p.tree,
                    })
                })
                .collect(),
        ))
    }

    /// The `status` event: identity, address, health and counters.
    pub async fn status_json(&self) -> Result<Json, rs2p::Error> {
        let s = self.node.status().await?;
        let keys = match &self.sync {
            Some(sync) => Some(sync.len().await?),
            None => None,
        };
        let lease_refused = s.sync.as_ref().map(|sync| sync.stats.lease_refused);
        let bad_versions = s.sync.as_ref().map(|sync| sync.stats.bad_versions);
        let forged_writes = s.sync.as_ref().map(|sync| sync.stats.forged_writes);
        let tree = s.tree.map(|t| {
            json!({"prunes": t.prunes, "grafts": t.grafts, "announced": t.announced, "served": t.served,
                   "postponed": t.postponed})
        });
        Ok(json!({
            "event": "status",
            "id": self.id().to_string(),
            "public_key": self.public_key_hex(),
            "addr": self.node.out_addr().to_string(),
            "listen": self.node.local_addr().to_string(),
            "subnet": self.node.protocol().subnet,
            "uptime_s": self.started.elapsed().as_secs(),
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
            "refused_ids": s.stats.refused_ids,
            // Broadcasts and sync writes dropped for the identity they claim.
            "rejected": s.stats.rejected + forged_writes.unwrap_or(0),
            "unsigned": s.stats.unsigned,
            "bad_signatures": s.stats.bad_signatures,
            "stale": s.stats.stale,
            "keys": keys,
            "lease_refused": lease_refused,
            "bad_versions": bad_versions,
            "forged_writes": forged_writes,
            "tree": tree,
            "recent_errors": s.recent_errors,
        }))
    }
}

/// Resolves on SIGINT or SIGTERM (Ctrl-C on other systems) with its name.
pub async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

/// Runs `rs2p node`.
pub async fn run(args: NodeArgs) -> Result<()> {
    let session = Session::start(&args).await?;
    if let Some(addr) = args.metrics {
        crate::metrics::serve(addr, session.clone()).await?;
    }
    if args.json {
        crate::json_mode::run(session, args.connect, shutdown_signal()).await
    } else {
        crate::console::run(session, args.connect, shutdown_signal()).await
    }
}
