//! The public handle: [`MeshSocket`], its [`Builder`], [`Message`]s and
//! [`Event`]s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rs2p_proto::id::{MsgId, PeerId, Protocol};
use rs2p_proto::mesh::{Config, PeerAddr, PeerInfo, ReplyRoute, Stats};
use rs2p_proto::wire::{subflag, Compression, DecodeError, Limits, Packet};
use rs2p_proto::Value;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::actor::{Actor, Command};
use crate::Error;

/// Capacity of the command channel from handles to the actor. A full
/// channel makes API calls wait (backpressure on the caller).
pub const COMMAND_CHANNEL_CAP: usize = 1024;
/// Frames travel from readers to the actor, and from the actor to writers,
/// in batches of at most this many frames (one channel operation per batch
/// instead of one per frame).
pub const MAX_BATCH_FRAMES: usize = 256;
/// A batch also closes once it holds this many bytes (a larger frame
/// travels alone), so that queues counted in batches stay bounded in bytes
/// when frames are large.
pub const MAX_BATCH_BYTES: usize = 32 * 1024;
/// Capacity of the channel from connection readers to the actor, in
/// batches (at most 8,192 frames or about 1 MiB of large ones). A full
/// channel stops the readers, and TCP slows the senders.
pub const INBOUND_CHANNEL_CAP: usize = 32;
/// Default capacity of each connection's send queue, in frames. The queue
/// holds `capacity / MAX_BATCH_FRAMES` batches (at least 4), so the default
/// keeps about 4,096 small frames or 512 KiB of large ones, whichever is
/// reached first.
pub const DEFAULT_SEND_QUEUE_CAP: usize = 4096;
/// Default capacity of the [`MeshSocket::recv`] queue, in messages. When it
/// is full, new messages are dropped and counted in
/// [`Status::dropped_messages`] (the mesh keeps relaying them).
pub const DEFAULT_RECV_QUEUE_CAP: usize = 65_536;
/// Capacity of the event channel, created on the first
/// [`MeshSocket::events`] call (a node nobody listens to pays nothing). A
/// subscriber that falls further behind gets [`Event::Lagged`]; messages
/// themselves wait in the [`MeshSocket::recv`] queue, not here.
pub const EVENT_CHANNEL_CAP: usize = 1024;

/// The event channel, created when first subscribed to.
pub(crate) type EventHub = std::sync::Arc<std::sync::OnceLock<broadcast::Sender<Event>>>;
/// Default most connections, handshaken or not.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Default most connections that have not completed their handshake.
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 64;
/// Default time a partial frame may stall before its connection closes
/// (py2p's rule).
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time a full send queue may stay full before its peer is
/// disconnected as too slow.
pub const DEFAULT_SLOW_PEER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time allowed for a TCP connect.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// A user message handler: return `true` to stop the chain (the message is
/// then not queued for [`MeshSocket::recv`]).
pub type Handler = Arc<dyn Fn(&Message) -> bool + Send + Sync>;

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
    recv_queue_cap: usize,
    stall_timeout: Duration,
    slow_peer_timeout: Duration,
    dial_timeout: Duration,
    handshake_timeout: Duration,
    maintain_outgoing: bool,
    seed: Option<u64>,
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
            recv_queue_cap: DEFAULT_RECV_QUEUE_CAP,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            slow_peer_timeout: DEFAULT_SLOW_PEER_TIMEOUT,
            dial_timeout: DEFAULT_DIAL_TIMEOUT,
            handshake_timeout: Duration::from_secs(10),
            maintain_outgoing: true,
            seed: None,
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
    /// Default [`DEFAULT_MAX_CONNECTIONS`].
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Most connections still in their handshake; further incoming ones are
    /// closed at accept (so silent connections cannot crowd out real
    /// peers). Default [`DEFAULT_MAX_PENDING_HANDSHAKES`].
    pub fn max_pending_handshakes(mut self, n: usize) -> Self {
        self.max_pending = n;
        self
    }

    /// Frames queued per connection before the node waits for it (held in
    /// batches bounded by [`MAX_BATCH_FRAMES`] and [`MAX_BATCH_BYTES`], so
    /// large frames reach the bound sooner). Default
    /// [`DEFAULT_SEND_QUEUE_CAP`].
    pub fn send_queue_capacity(mut self, n: usize) -> Self {
        self.send_queue_cap = n;
        self
    }

    /// Messages held for [`MeshSocket::recv`]. Default
    /// [`DEFAULT_RECV_QUEUE_CAP`].
    pub fn recv_queue_capacity(mut self, n: usize) -> Self {
        self.recv_queue_cap = n;
        self
    }

    /// How long a frame may take from its first byte to its last (py2p
    /// closes a connection whose frame stays unfinished for 60 s). Default
    /// [`DEFAULT_STALL_TIMEOUT`].
    pub fn stall_timeout(mut self, d: Duration) -> Self {
        self.stall_timeout = d;
        self
    }

    /// How long a peer's full send queue may block before the peer is
    /// disconnected. Default [`DEFAULT_SLOW_PEER_TIMEOUT`].
    pub fn slow_peer_timeout(mut self, d: Duration) -> Self {
        self.slow_peer_timeout = d;
        self
    }

    /// How long a TCP connect may take. Default [`DEFAULT_DIAL_TIMEOUT`].
    pub fn dial_timeout(mut self, d: Duration) -> Self {
        self.dial_timeout = d;
        self
    }

    /// How long a new connection may take to handshake. Default 10 s.
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = d;
        self
    }

    /// Whether to redial and ask for peers to keep `max_outgoing`
    /// connections after losses. Default on.
    pub fn maintain_outgoing(mut self, on: bool) -> Self {
        self.maintain_outgoing = on;
        self
    }

    /// TLS on every connection (py2p's "SSL" mode): switches the protocol's
    /// encryption to SSL, so the node only talks to SSL nodes. A protocol
    /// set to [`rs2p_proto::id::Encryption::Ssl`] without this gets
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
        if self.send_queue_cap == 0 || self.recv_queue_cap == 0 || self.max_connections == 0 || self.max_pending == 0 {
            return Err(Error::Config("capacities must be at least 1".into()));
        }
        if self.compression.is_empty() {
            return Err(Error::Config("at least one compression method (Identity means none)".into()));
        }
        let mut protocol = self.protocol.clone();
        let tls = match (&self.tls, protocol.encryption) {
            (Some(t), _) => Some(t.clone()),
            (None, rs2p_proto::id::Encryption::Ssl) => Some(crate::TlsConfig::new()),
            (None, _) => None,
        };
        if tls.is_some() {
            protocol.encryption = rs2p_proto::id::Encryption::Ssl;
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
        let salt: [u8; 16] = rand::random();
        let id = PeerId::derive(&out_addr.host, out_addr.port, &protocol.id(), &salt);
        let mut cfg = Config::new(protocol.clone(), id.clone(), out_addr.clone());
        cfg.max_outgoing = self.max_outgoing;
        cfg.max_frame_len = self.limits.max_frame_len;
        cfg.compression = self.compression.clone();
        cfg.handshake_timeout_ms = self.handshake_timeout.as_millis() as u64;
        cfg.maintain_outgoing = self.maintain_outgoing;
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_CHANNEL_CAP);
        let events: EventHub = Default::default();
        let inbox = crate::inbox::Inbox::new(self.recv_queue_cap);
        let sync = self.sync.map(|mut c| {
            c.max_frame_len = self.limits.max_frame_len;
            c
        });
        let actor = Actor::new(
            cfg,
            sync,
            self.seed.unwrap_or_else(rand::random),
            listener,
            crate::actor::Settings {
                limits: self.limits,
                compression: self.compression,
                max_connections: self.max_connections,
                max_pending: self.max_pending,
                handshake_timeout: self.handshake_timeout,
                tls: tls.clone(),
                send_queue_cap: self.send_queue_cap,
                stall_timeout: self.stall_timeout,
                slow_peer_timeout: self.slow_peer_timeout,
                dial_timeout: self.dial_timeout,
            },
            cmd_rx,
            cmd_tx.downgrade(),
            events.clone(),
            crate::inbox::InboxSender(inbox.clone()),
        );
        let task = tokio::spawn(actor.run());
        Ok(MeshSocket {
            inner: Arc::new(Inner {
                cmd: cmd_tx,
                events,
                inbox,
                id,
                protocol,
                tls_fingerprint: tls.map(|t| t.fingerprint),
                local_addr,
                out_addr,
                task: AbortOnDrop(task),
            }),
        })
    }
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug)]
struct Inner {
    cmd: mpsc::Sender<Command>,
    events: EventHub,
    inbox: Arc<crate::inbox::Inbox>,
    id: PeerId,
    protocol: Protocol,
    tls_fingerprint: Option<[u8; 32]>,
    local_addr: SocketAddr,
    out_addr: PeerAddr,
    #[allow(dead_code)] // held for its Drop
    task: AbortOnDrop,
}

/// A node of a py2p-compatible mesh network (py2p's `MeshSocket`).
///
/// A cheap, cloneable handle to a node running in the background: one
/// actor task owns the protocol state, each connection has a reader and a
/// writer task. Dropping the last handle stops the node.
///
/// ```no_run
/// # async fn demo() -> Result<(), rs2p::Error> {
/// use rs2p::{MeshSocket, Value};
/// let a = MeshSocket::builder().spawn().await?;
/// let b = MeshSocket::builder().spawn().await?;
/// b.connect(a.out_addr().clone()).await?;
/// a.broadcast(vec![Value::from("hello")]).await?;
/// let msg = b.next_message().await.expect("a message");
/// assert_eq!(msg.packets()?, vec![Value::from("hello")]);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MeshSocket {
    inner: Arc<Inner>,
}

impl MeshSocket {
    /// A builder with default settings.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// This node's id.
    pub fn id(&self) -> &PeerId {
        &self.inner.id
    }

    /// The network's protocol.
    pub fn protocol(&self) -> &Protocol {
        &self.inner.protocol
    }

    /// The sha256 fingerprint of this node's TLS certificate (for peers to
    /// pin), if TLS is on.
    pub fn tls_fingerprint(&self) -> Option<[u8; 32]> {
        self.inner.tls_fingerprint
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The address other nodes are told to dial.
    pub fn out_addr(&self) -> &PeerAddr {
        &self.inner.out_addr
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.inner.cmd.send(make(tx)).await?;
        Ok(rx.await?)
    }

    /// Connects to the node at `addr` and resolves once its handshake is
    /// done, with its id. py2p's `connect(addr, port)`; peer exchange then
    /// connects this node to the rest of the network.
    ///
    /// # Errors
    /// [`Error::Connect`] with the reason (refused, timeout, foreign subnet:
    /// py2p fails silently there), [`Error::OwnAddress`], [`Error::Closed`].
    ///
    /// # Cancel safety
    /// Cancelling stops the wait, not the connection attempt.
    pub async fn connect(&self, addr: PeerAddr) -> Result<PeerId, Error> {
        self.connect_expecting(addr, None).await
    }

    /// [`MeshSocket::connect`], naming the id expected at `addr` (py2p's `id`
    /// argument).
    ///
    /// # Errors
    /// As [`MeshSocket::connect`].
    pub async fn connect_expecting(&self, addr: PeerAddr, expected: Option<PeerId>) -> Result<PeerId, Error> {
        self.call(|reply| Command::Connect { addr, expected, reply }).await?
    }

    /// Floods `packets` to every node of the network (py2p's `send`).
    /// Returns the message id.
    ///
    /// # Errors
    /// [`Error::MessageTooLarge`] above the frame limit, [`Error::Closed`] if
    /// the node has stopped.
    pub async fn broadcast(&self, packets: Vec<Value>) -> Result<MsgId, Error> {
        self.send_flagged(subflag::BROADCAST, packets).await
    }

    /// Floods several messages with one round trip to the node (each is
    /// still its own message, with its own id). For producers with many
    /// messages at once.
    ///
    /// # Errors
    /// [`Error::MessageTooLarge`] for the first message above the frame
    /// limit (the ones before it are sent), [`Error::Closed`].
    pub async fn broadcast_many(&self, messages: Vec<Vec<Value>>) -> Result<Vec<MsgId>, Error> {
        self.call(|reply| Command::BroadcastMany { messages, reply }).await?
    }

    /// Floods a message with a custom sub-flag (for protocols layered on the
    /// mesh). Sub-flags below `0x30` are reserved for the protocol.
    ///
    /// # Errors
    /// [`Error::Closed`] if the node has stopped.
    pub async fn send_flagged(&self, subflag: u64, packets: Vec<Value>) -> Result<MsgId, Error> {
        self.call(|reply| Command::Broadcast { subflag, packets, reply }).await?
    }

    /// Sends `packets` to a directly connected peer only.
    ///
    /// # Errors
    /// [`Error::NotConnected`] if `peer` is not directly connected.
    pub async fn whisper(&self, peer: &PeerId, packets: Vec<Value>) -> Result<MsgId, Error> {
        let peer = peer.clone();
        self.call(|reply| Command::Whisper { peer, packets, reply }).await?
    }

    /// Whispers `packets` to `peer`, routing through the network when not
    /// directly connected (what [`Message::reply`] uses).
    ///
    /// # Errors
    /// [`Error::TooManyPending`], [`Error::Closed`].
    pub async fn send_to(&self, peer: &PeerId, packets: Vec<Value>) -> Result<ReplyRoute, Error> {
        let to = peer.clone();
        self.call(|reply| Command::Reply { to, packets, reply }).await?
    }

    /// Asks every peer for its peer list (py2p's `request_peers`).
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn request_peers(&self) -> Result<(), Error> {
        self.call(|reply| Command::RequestPeers { reply }).await
    }

    /// Closes the connection to `peer` (py2p's `disconnect`).
    ///
    /// # Errors
    /// [`Error::NotConnected`], [`Error::Closed`].
    pub async fn disconnect(&self, peer: &PeerId) -> Result<(), Error> {
        let peer = peer.clone();
        self.call(|reply| Command::Disconnect { peer, reply }).await?
    }

    /// The routing table: every connected peer (py2p's `routing_table`).
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn routing_table(&self) -> Result<Vec<PeerInfo>, Error> {
        self.call(|reply| Command::Peers { reply }).await
    }

    /// Ids of the peers we dialed (py2p's `outgoing`).
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn outgoing(&self) -> Result<Vec<PeerId>, Error> {
        Ok(self.routing_table().await?.into_iter().filter(|p| p.outgoing).map(|p| p.id).collect())
    }

    /// Ids of the peers that dialed us (py2p's `incoming`).
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn incoming(&self) -> Result<Vec<PeerId>, Error> {
        Ok(self.routing_table().await?.into_iter().filter(|p| !p.outgoing).map(|p| p.id).collect())
    }

    /// Health and counters (py2p's `status`).
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn status(&self) -> Result<Status, Error> {
        self.call(|reply| Command::Status { reply }).await
    }

    /// Adds a handler to the chain run on every incoming user message
    /// (py2p's `register_handler`). Handlers run in registration order on the
    /// node's actor task; the first that returns `true` stops the chain and
    /// the message is not queued for [`MeshSocket::recv`]. Keep them short:
    /// the node waits for them.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn register_handler<F>(&self, handler: F) -> Result<(), Error>
    where
        F: Fn(&Message) -> bool + Send + Sync + 'static,
    {
        let handler: Handler = Arc::new(handler);
        self.call(|reply| Command::RegisterHandler { handler, reply }).await
    }

    /// Takes up to `quantity` queued messages without waiting (py2p's
    /// `recv(quantity)`); empty when none is queued.
    pub fn recv(&self, quantity: usize) -> Vec<Message> {
        self.inner.inbox.take(quantity)
    }

    /// Waits for the next queued message; `None` once the node has stopped
    /// and every queued message was taken.
    ///
    /// # Cancel safety
    /// Cancel safe: a message is only taken when this returns it.
    pub async fn next_message(&self) -> Option<Message> {
        self.inner.inbox.next().await
    }

    /// A stream of [`Event`]s from now on.
    pub fn events(&self) -> EventStream {
        EventStream(self.inner.events.get_or_init(|| broadcast::channel(EVENT_CHANNEL_CAP).0).subscribe())
    }

    /// Closes every connection and stops the node (py2p's `close`). Other
    /// handles then get [`Error::Closed`].
    ///
    /// # Errors
    /// [`Error::Closed`] if it was already stopped.
    pub async fn close(&self) -> Result<(), Error> {
        self.call(|reply| Command::Shutdown { reply }).await
    }
}

/// Whether a message was flooded or whispered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// Flooded to the network.
    Broadcast,
    /// Sent to this node only.
    Whisper,
}

impl MessageKind {
    /// `"broadcast"` or `"whisper"`.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Broadcast => "broadcast",
            MessageKind::Whisper => "whisper",
        }
    }
}

/// A message received from the network (py2p's `Message`).
///
/// Its packets are decoded on demand, so a node that only relays never pays
/// for decoding.
#[derive(Clone)]
pub struct Message {
    pub(crate) packet: Packet,
    pub(crate) socket: mpsc::WeakSender<Command>,
}

impl MeshSocket {
    /// Sends a command and awaits its reply (for the sync handle).
    pub(crate) async fn request<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Error> {
        self.call(make).await
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("sender", &self.sender())
            .field("time", &self.time())
            .field("subflag", &self.subflag())
            .finish()
    }
}

impl Message {
    /// Broadcast or whisper (by message type).
    pub fn kind(&self) -> MessageKind {
        if self.packet.header.msg_type == 0 {
            MessageKind::Broadcast
        } else {
            MessageKind::Whisper
        }
    }

    /// The original sender's id.
    pub fn sender(&self) -> &PeerId {
        &self.packet.header.sender
    }

    /// The sender's UNIX time in seconds.
    pub fn time(&self) -> u64 {
        self.packet.header.time
    }

    /// The message id (sha256 of the payload).
    pub fn id(&self) -> MsgId {
        self.packet.frame.id()
    }

    /// The sub-flag (0 for broadcasts, 2 for whispers, others for protocols
    /// layered on the mesh).
    pub fn subflag(&self) -> u64 {
        self.packet.header.subflag
    }

    /// The user's packets (after the sub-flag), decoded.
    ///
    /// # Errors
    /// Only on an internal bug: payloads are validated on arrival.
    pub fn packets(&self) -> Result<Vec<Value>, DecodeError> {
        self.packet.values()
    }

    /// The checked packet, with the original frame bytes.
    pub fn raw(&self) -> &Packet {
        &self.packet
    }

    /// Whispers `packets` back to the sender, through the network if we are
    /// not directly connected (py2p's `Message.reply`, which works here in
    /// that case too).
    ///
    /// # Errors
    /// [`Error::Closed`] if the node has stopped, [`Error::TooManyPending`].
    pub async fn reply(&self, packets: Vec<Value>) -> Result<ReplyRoute, Error> {
        let cmd = self.socket.upgrade().ok_or(Error::Closed)?;
        let (tx, rx) = oneshot::channel();
        cmd.send(Command::Reply { to: self.sender().clone(), packets, reply: tx }).await?;
        rx.await?
    }
}

/// Something that happened on the node.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// The first peer joined the routing table (py2p's `connect` event).
    Connected {
        /// That peer.
        peer: PeerId,
    },
    /// A peer completed its handshake.
    PeerUp {
        /// Its id.
        peer: PeerId,
        /// Its advertised address.
        addr: Option<PeerAddr>,
        /// Whether we dialed.
        outgoing: bool,
    },
    /// A peer left the routing table.
    PeerDown {
        /// Its id.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// A connection failed before its handshake (refused, timed out, foreign
    /// subnet, ...).
    ConnectFailed {
        /// The address we dialed, if we dialed.
        addr: Option<PeerAddr>,
        /// Why.
        reason: String,
    },
    /// A user message was queued for [`MeshSocket::recv`] (py2p's `message`
    /// event).
    Message(Message),
    /// This subscriber fell behind and missed this many events.
    Lagged(u64),
    /// A key of the synced dictionary changed ([`crate::SyncSocket`] only;
    /// py2p's `update` event).
    Update {
        /// The key.
        key: bytes::Bytes,
        /// Its new value.
        value: Value,
        /// The node that wrote (the newest part of) it.
        owner: PeerId,
        /// When, in UNIX seconds.
        timestamp: u64,
    },
    /// A key of the synced dictionary was deleted (py2p's `delete` event).
    Delete {
        /// The key.
        key: bytes::Bytes,
    },
}

/// A subscription to a node's [`Event`]s.
#[derive(Debug)]
pub struct EventStream(broadcast::Receiver<Event>);

impl EventStream {
    /// The next event; `None` once the node has stopped.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn recv(&mut self) -> Option<Event> {
        match self.0.recv().await {
            Ok(e) => Some(e),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(Event::Lagged(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The next event if one is ready.
    pub fn try_recv(&mut self) -> Option<Event> {
        match self.0.try_recv() {
            Ok(e) => Some(e),
            Err(broadcast::error::TryRecvError::Lagged(n)) => Some(Event::Lagged(n)),
            Err(_) => None,
        }
    }
}

/// A node's health (py2p's `status`) and counters.
#[derive(Debug, Clone)]
pub struct Status {
    /// `true` when no connection was closed for misbehaviour recently
    /// (py2p's `"Nominal"`).
    pub nominal: bool,
    /// The latest protocol errors, newest last (at most 32).
    pub recent_errors: Vec<String>,
    /// Protocol counters.
    pub stats: Stats,
    /// Handshaken peers.
    pub peers: usize,
    /// Open connections, handshaken or not.
    pub connections: usize,
    /// Messages dropped because the [`MeshSocket::recv`] queue was full.
    pub dropped_messages: u64,
    /// Peers disconnected for not draining their send queue.
    pub slow_peers: u64,
    /// Incoming connections closed at accept (connection or handshake caps).
    pub refused_connections: u64,
}

impl Message {
    pub(crate) fn new(packet: Packet, socket: &mpsc::WeakSender<Command>) -> Self {
        Message { packet, socket: socket.clone() }
    }
}
