//! [`Builder`]: a [`MeshSocket`]'s settings, resolved once into the node's
//! configuration.

use std::time::Duration;

use rs2p_proto::id::{Encryption, PeerId, Protocol};
use rs2p_proto::identity::Identity;
use rs2p_proto::mesh::dissemination::TreeConfig;
use rs2p_proto::mesh::{self, PeerAddr};
use rs2p_proto::wire::{Compression, Limits};
use tokio::net::TcpListener;

use crate::config::{DriverConfig, NodeConfig};
use crate::config::{
    DEFAULT_BACKPRESSURE_GRACE, DEFAULT_DIAL_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PENDING_HANDSHAKES, DEFAULT_RECV_QUEUE_CAP, DEFAULT_SEND_QUEUE_BYTES, DEFAULT_SEND_QUEUE_CAP,
    DEFAULT_SLOW_PEER_TIMEOUT, DEFAULT_STALL_TIMEOUT,
};
use crate::{Error, MeshSocket};

/// Where and how a sync node keeps its dictionary (see
/// [`crate::SyncBuilder::data_dir`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct Durability {
    pub(crate) dir: Option<std::path::PathBuf>,
    pub(crate) fsync: crate::Fsync,
    pub(crate) on_corrupt: crate::OnCorrupt,
}

/// Builds a [`MeshSocket`]. Every setting has a default; see each method.
#[derive(Debug, Clone)]
pub struct Builder {
    bind: String,
    out_addr: Option<PeerAddr>,
    protocol: Protocol,
    max_outgoing: usize,
    compression: Vec<Compression>,
    limits: Limits,
    max_connections: usize,
    max_pending: usize,
    send_queue_cap: usize,
    send_queue_bytes: usize,
    recv_queue_cap: usize,
    stall_timeout: Duration,
    slow_peer_timeout: Duration,
    backpressure_grace: Duration,
    dial_timeout: Duration,
    handshake_timeout: Duration,
    maintain_outgoing: bool,
    broadcast: mesh::Broadcast,
    tree: TreeConfig,
    keepalive: (Duration, Duration),
    queue_all_subflags: bool,
    seed: Option<u64>,
    identity: Option<Identity>,
    allow: Option<std::collections::HashSet<PeerId>>,
    sign_broadcasts: bool,
    require_signed: bool,
    key_file: Option<std::path::PathBuf>,
    pub(crate) durability: Durability,
    tls: Option<crate::TlsConfig>,
    pub(crate) sync: Option<rs2p_proto::sync::Config>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            bind: "127.0.0.1:0".into(),
            out_addr: None,
            protocol: Protocol::default(),
            max_outgoing: 4,
            compression: Compression::DEFAULT_PREFERENCE.to_vec(),
            limits: Limits::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_pending: DEFAULT_MAX_PENDING_HANDSHAKES,
            send_queue_cap: DEFAULT_SEND_QUEUE_CAP,
            send_queue_bytes: DEFAULT_SEND_QUEUE_BYTES,
            recv_queue_cap: DEFAULT_RECV_QUEUE_CAP,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            slow_peer_timeout: DEFAULT_SLOW_PEER_TIMEOUT,
            backpressure_grace: DEFAULT_BACKPRESSURE_GRACE,
            dial_timeout: DEFAULT_DIAL_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            maintain_outgoing: true,
            broadcast: mesh::Broadcast::Tree,
            tree: TreeConfig::default(),
            keepalive: (Duration::from_secs(3), Duration::from_secs(9)),
            queue_all_subflags: false,
            seed: None,
            identity: None,
            allow: None,
            sign_broadcasts: true,
            require_signed: false,
            key_file: None,
            durability: Durability::default(),
            tls: None,
            sync: None,
        }
    }
}

impl Builder {
    /// Address to listen on, `HOST:PORT` (port 0 picks a free port).
    /// Default `127.0.0.1:0`.
    pub fn bind(mut self, addr: impl Into<String>) -> Self {
        self.bind = addr.into();
        self
    }

    /// The address other nodes should dial to reach this one (py2p's
    /// `out_addr`). Default: the bound address (with `127.0.0.1` when bound
    /// to an unspecified address).
    pub fn out_addr(mut self, addr: PeerAddr) -> Self {
        self.out_addr = Some(addr);
        self
    }

    /// The network's protocol: subnet and encryption. Default
    /// `Protocol("mesh", Plaintext)`.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Outgoing connections to keep. Default 4 (py2p's `max_outgoing`).
    pub fn max_outgoing(mut self, n: usize) -> Self {
        self.max_outgoing = n;
        self
    }

    /// Compression methods to accept, in preference order. Default
    /// [`Compression::DEFAULT_PREFERENCE`]. Drop
    /// [`Compression::Identity`] to compress between rs2p nodes too.
    pub fn compression(mut self, methods: Vec<Compression>) -> Self {
        self.compression = methods;
        self
    }

    /// Limits on frames from the network (frame size, decompressed size,
    /// nesting). Default [`Limits::default`].
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Most connections at once; further incoming ones are closed at accept.
    /// Default [`crate::DEFAULT_MAX_CONNECTIONS`].
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Most connections still in their handshake; further incoming ones are
    /// closed at accept (so silent connections cannot crowd out real
    /// peers). Default [`crate::DEFAULT_MAX_PENDING_HANDSHAKES`].
    pub fn max_pending_handshakes(mut self, n: usize) -> Self {
        self.max_pending = n;
        self
    }

    /// Frames queued per connection. Default
    /// [`crate::DEFAULT_SEND_QUEUE_CAP`].
    pub fn send_queue_capacity(mut self, n: usize) -> Self {
        self.send_queue_cap = n;
        self
    }

    /// Bytes queued per connection (a single larger frame still goes out,
    /// alone). Default [`crate::DEFAULT_SEND_QUEUE_BYTES`].
    pub fn send_queue_bytes(mut self, n: usize) -> Self {
        self.send_queue_bytes = n;
        self
    }

    /// Messages held for [`MeshSocket::recv`]. Default
    /// [`crate::DEFAULT_RECV_QUEUE_CAP`].
    pub fn recv_queue_capacity(mut self, n: usize) -> Self {
        self.recv_queue_cap = n;
        self
    }

    /// How long a frame may take from its first byte to its last (py2p
    /// closes a connection whose frame stays unfinished for 60 s). Default
    /// [`crate::DEFAULT_STALL_TIMEOUT`].
    pub fn stall_timeout(mut self, d: Duration) -> Self {
        self.stall_timeout = d;
        self
    }

    /// How long a peer's full send queue may go without the peer taking
    /// anything from it before the peer is disconnected. Default
    /// [`crate::DEFAULT_SLOW_PEER_TIMEOUT`].
    pub fn slow_peer_timeout(mut self, d: Duration) -> Self {
        self.slow_peer_timeout = d;
        self
    }

    /// How long a full send queue may hold the node back. While a peer's
    /// queue is full the node keeps its frames aside, stops reading from
    /// its connections (TCP then slows the senders down) and answers local
    /// sends only once the queue has room: a burst is slowed, not lost.
    /// Queries (peers, status, reads of the dictionary) are always answered
    /// at once. A peer still full after this long no longer holds anything
    /// back: what does not fit its queue is dropped and counted
    /// ([`crate::Status::dropped_frames`], [`crate::Event::PeerLagging`]).
    /// Default [`crate::DEFAULT_BACKPRESSURE_GRACE`].
    pub fn backpressure_grace(mut self, d: Duration) -> Self {
        self.backpressure_grace = d;
        self
    }

    /// How long a TCP connect (and a TLS handshake after it) may take.
    /// Default [`crate::DEFAULT_DIAL_TIMEOUT`].
    pub fn dial_timeout(mut self, d: Duration) -> Self {
        self.dial_timeout = d;
        self
    }

    /// How long a new connection may take to handshake. Default
    /// [`crate::DEFAULT_HANDSHAKE_TIMEOUT`].
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = d;
        self
    }

    /// A private network: only these ids may link with this node, and each
    /// must prove it holds the key behind its id (a signed challenge after
    /// the handshake, on plaintext links too), so an intruder that merely
    /// claims a listed id is refused, as is every py2p peer (py2p has no
    /// key). Only broadcasts from listed ids are delivered and relayed.
    /// Repeated calls add to the list. Include this node's own id when the
    /// same list is shared by every member; it does no harm. Default: no
    /// list (anyone on the subnet links, as in py2p).
    pub fn allow(mut self, ids: impl IntoIterator<Item = PeerId>) -> Self {
        self.allow.get_or_insert_with(Default::default).extend(ids);
        self
    }

    /// Whether the node signs the broadcasts (and sync writes) it
    /// originates, so that rs2p nodes can tell them from forgeries (see
    /// [`Message::verified`](crate::Message::verified)). Default on: the
    /// signature covers a batch of messages, a few percent of throughput
    /// (BENCHMARKS.md). Off only to measure that cost, or to talk to rs2p
    /// nodes that do not expect signatures. py2p peers never see them.
    pub fn sign_broadcasts(mut self, on: bool) -> Self {
        self.sign_broadcasts = on;
        self
    }

    /// Deliver only messages proven to come from their sender: broadcasts
    /// covered by their sender's signature, and links only with peers that
    /// sign (so py2p peers, which cannot, are refused with
    /// [`AuthFailure::Unsigned`](crate::proto::mesh::AuthFailure::Unsigned)).
    /// Unsigned broadcasts are dropped and counted (`rejected` in
    /// [`Status`](crate::Status)), and a sync node stores only writes that
    /// carry their writer's proof (the others count in `forged_writes`).
    /// Default off: a py2p node's broadcasts are delivered, marked
    /// unverified, and its writes stored.
    pub fn require_signed(mut self, on: bool) -> Self {
        self.require_signed = on;
        self
    }

    /// The node's key pair, which determines its id (see
    /// [`crate::proto::identity`]). Default: a fresh key (a new id each
    /// run), unless [`Builder::key_file`] is set.
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Keep the node's key in `path` (PKCS#8 PEM, as `openssl genpkey
    /// -algorithm ed25519` writes it), so that the node keeps its id across
    /// restarts: loaded when the file exists, otherwise created with a
    /// fresh key and owner-only permissions. Wins over
    /// [`Builder::identity`].
    pub fn key_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.key_file = Some(path.into());
        self
    }

    /// Whether to redial and ask for peers to keep `max_outgoing`
    /// connections after losses. Default on.
    pub fn maintain_outgoing(mut self, on: bool) -> Self {
        self.maintain_outgoing = on;
        self
    }

    /// How broadcasts travel between rs2p peers: an epidemic broadcast tree
    /// (default, [`mesh::Broadcast::Tree`]) or py2p's flood. py2p peers are
    /// always flooded, so either works in a mixed network.
    pub fn broadcast(mut self, strategy: mesh::Broadcast) -> Self {
        self.broadcast = strategy;
        self
    }

    /// The broadcast tree's timings and bounds (see [`TreeConfig`]).
    pub fn tree(mut self, tree: TreeConfig) -> Self {
        self.tree = tree;
        self
    }

    /// Keepalives on tree links (rs2p peers): a link silent for `interval`
    /// is pinged; one silent for `dead_after` is closed as
    /// [`rs2p_proto::mesh::CloseReason::Unresponsive`]. Default 3 s and 9 s;
    /// a zero `interval` turns them off.
    pub fn keepalive(mut self, interval: Duration, dead_after: Duration) -> Self {
        self.keepalive = (interval, dead_after);
        self
    }

    /// Whether messages with sub-flags other than user broadcasts and
    /// whispers (applications' own, from `0x30` up, and protocol ones the
    /// node does not handle) go to the [`MeshSocket::recv`] queue too, not
    /// only to handlers. For bindings whose handlers run on their own
    /// thread, fed from the queue. Default off.
    pub fn queue_all_subflags(mut self, on: bool) -> Self {
        self.queue_all_subflags = on;
        self
    }

    /// TLS on every connection (py2p's "SSL" mode): switches the protocol's
    /// encryption to SSL, so the node only talks to SSL nodes. A protocol
    /// set to [`Encryption::Ssl`] without this gets
    /// [`crate::TlsConfig::new`] (self-signed, unverified, like py2p).
    pub fn tls(mut self, tls: crate::TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Seed for the node's randomness (peer choice); default from the OS.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Binds the listener and starts the node.
    ///
    /// Must be called within a tokio runtime.
    ///
    /// # Errors
    /// [`Error::Bind`] if the address cannot be bound, [`Error::Config`] for
    /// invalid settings.
    pub async fn spawn(self) -> Result<MeshSocket, Error> {
        if self.send_queue_cap == 0
            || self.send_queue_bytes == 0
            || self.recv_queue_cap == 0
            || self.max_connections == 0
            || self.max_pending == 0
        {
            return Err(Error::Config("capacities must be at least 1".into()));
        }
        if self.compression.is_empty() {
            return Err(Error::Config("at least one compression method (Identity means none)".into()));
        }
        let mut protocol = self.protocol.clone();
        let tls = match (&self.tls, protocol.encryption) {
            (Some(t), _) => Some(t.clone()),
            (None, Encryption::Ssl) => Some(crate::TlsConfig::new()),
            (None, _) => None,
        };
        if tls.is_some() {
            protocol.encryption = Encryption::Ssl;
        }
        let tls = tls.map(|t| crate::tls::Tls::build(&t)).transpose()?;
        let listener =
            TcpListener::bind(&self.bind).await.map_err(|source| Error::Bind { addr: self.bind.clone(), source })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind { addr: self.bind.clone(), source })?;
        let out_addr = self.out_addr.clone().unwrap_or_else(|| {
            let ip =
                if local_addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { local_addr.ip().to_string() };
            PeerAddr::new(ip, local_addr.port())
        });
        // A durable node keeps its key with its data, so it keeps its id.
        let dir = self.durability.dir.clone().filter(|_| self.sync.is_some());
        let key_file = self
            .key_file
            .clone()
            .or_else(|| dir.as_ref().filter(|_| self.identity.is_none()).map(|d| d.join("node.key")));
        let store = match &dir {
            Some(d) => {
                let opened = crate::store::open(d, self.durability.on_corrupt)?;
                Some(crate::store::Init { opened, fsync: self.durability.fsync, dir: d.clone() })
            }
            None => None,
        };
        let identity = match &key_file {
            Some(path) => crate::key_file::load_or_create(path)?,
            None => self.identity.clone().unwrap_or_else(|| Identity::from_secret(rand::random())),
        };
        let mut mesh = mesh::Config::new(protocol, identity.id(), out_addr);
        mesh.identity = Some(identity.clone());
        mesh.allow = self.allow.clone().map(std::sync::Arc::new);
        mesh.sign_broadcasts = self.sign_broadcasts || self.require_signed;
        mesh.require_signed = self.require_signed;
        mesh.max_outgoing = self.max_outgoing;
        mesh.max_frame_len = self.limits.max_frame_len;
        mesh.compression = self.compression;
        mesh.handshake_timeout_ms = self.handshake_timeout.as_millis() as u64;
        mesh.maintain_outgoing = self.maintain_outgoing;
        mesh.broadcast = self.broadcast;
        mesh.tree = self.tree;
        mesh.keepalive_interval_ms = self.keepalive.0.as_millis() as u64;
        mesh.dead_after_ms = self.keepalive.1.as_millis().max(1) as u64;
        let cfg = NodeConfig {
            mesh,
            sync: self.sync,
            driver: DriverConfig {
                limits: self.limits,
                max_connections: self.max_connections,
                max_pending: self.max_pending,
                tls,
                send_queue_cap: self.send_queue_cap,
                send_queue_bytes: self.send_queue_bytes,
                stall_timeout: self.stall_timeout,
                slow_peer_timeout: self.slow_peer_timeout,
                backpressure_grace: self.backpressure_grace,
                dial_timeout: self.dial_timeout,
                recv_queue_cap: self.recv_queue_cap,
                queue_all_subflags: self.queue_all_subflags,
            },
            seed: self.seed.unwrap_or_else(rand::random),
            identity,
        };
        Ok(MeshSocket::start(cfg, listener, local_addr, store))
    }
}
