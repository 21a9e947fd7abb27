//! The py2p mesh protocol as a state machine.
//!
//! # The protocol
//! Every TCP connection starts with both ends sending a *handshake* (a
//! whisper, sub-flag 5): node id, protocol id, outward address and the
//! compression methods the sender accepts. A node refuses a peer whose
//! protocol id differs (py2p does so silently; we report the reason), then
//! records the peer and answers with its *peer list*. A node receiving a peer
//! list dials listed nodes while it has fewer than
//! [`Config::max_outgoing`] outgoing connections.
//!
//! *Broadcasts* (message type 0) are flooded: a node delivers a broadcast the
//! first time it sees its id, relays the unchanged frame to every other peer,
//! and ignores copies and broadcasts older than the 60 s window. *Whispers*
//! (type 2) go to one directly connected peer. Replying to a node one is not
//! connected to floods a route *request*; a node connected to the target
//! answers with a *response* naming its address, and the asker dials it and
//! delivers the reply.
//!
//! When two nodes dial each other at the same moment, both keep the
//! connection dialed by the node with the greater id
//! ([`resolve_conflict`]), py2p's rule.
//!
//! Beyond py2p, the machine keeps its outgoing target after losses: on every
//! [`Mesh::handle_tick`] it redials known peers (with backoff) and asks its
//! peers for their lists while it is short.
//!
//! # Driving it
//! Feed inputs with the `handle_*` methods and commands with the methods
//! named after them ([`Mesh::broadcast`], [`Mesh::whisper`], ...), then drain
//! [`Mesh::poll_output`] until it returns `None`. Time is always an argument.

mod seen;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rmpv::Value;

pub use seen::{MixHasher, SeenCache};

use crate::id::{MsgId, PeerId, Protocol, ProtocolId, MAX_ID_LEN};
use crate::wire::{subflag, Compression, DecodeError, Frame, MsgType, Packet};
use crate::Now;

/// Identifies one TCP connection, handshaken or not. Assigned by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// A map keyed by [`ConnId`]: the driver's sequential ids are not remote
/// input, so the keyed SipHash of `HashMap` buys nothing on this hot path.
pub type ConnMap<V> = HashMap<ConnId, V, std::hash::BuildHasherDefault<MixHasher>>;

/// Identifies one dial attempt, so its outcome can be matched to its cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DialId(pub u64);

/// A node's address as py2p exchanges it: a host string and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerAddr {
    /// Host name or IP address, as text.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl PeerAddr {
    /// An address from a host and a port.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        PeerAddr { host: host.into(), port }
    }

    fn to_value(&self) -> Value {
        Value::Array(vec![Value::from(self.host.as_str()), Value::from(self.port)])
    }

    fn from_value(v: &Value) -> Option<Self> {
        let a = v.as_array()?;
        if a.len() != 2 {
            return None;
        }
        let host = match &a[0] {
            Value::String(s) => s.as_str()?.to_owned(),
            Value::Binary(b) => std::str::from_utf8(b).ok()?.to_owned(),
            _ => return None,
        };
        if host.is_empty() || host.len() > 255 {
            return None;
        }
        let port = u16::try_from(a[1].as_u64()?).ok()?;
        Some(PeerAddr { host, port })
    }
}

/// The text was not `HOST:PORT` (or `[V6]:PORT`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad address {0:?}: expected HOST:PORT")]
pub struct AddrParseError(pub String);

impl std::str::FromStr for PeerAddr {
    type Err = AddrParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || AddrParseError(s.to_string());
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if host.is_empty() || (host.contains(':') && !s.starts_with('[')) {
            return Err(bad());
        }
        let port: u16 = port.parse().map_err(|_| bad())?;
        Ok(PeerAddr::new(host, port))
    }
}

impl From<std::net::SocketAddr> for PeerAddr {
    fn from(a: std::net::SocketAddr) -> Self {
        PeerAddr::new(a.ip().to_string(), a.port())
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Which end opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// We dialed.
    Outgoing,
    /// They dialed.
    Incoming,
}

/// Settings of the mesh state machine. Every field has a documented default
/// ([`Config::new`]).
#[derive(Debug, Clone)]
pub struct Config {
    /// The network's protocol (subnet and encryption).
    pub protocol: Protocol,
    /// This node's id.
    pub id: PeerId,
    /// The address other nodes should dial to reach this node.
    pub out_addr: PeerAddr,
    /// Outgoing connections to aim for (py2p: `max_outgoing = 4`).
    pub max_outgoing: usize,
    /// Compression methods accepted and preferred, in order. Default:
    /// [`Compression::DEFAULT_PREFERENCE`].
    pub compression: Vec<Compression>,
    /// Broadcasts older than this are ignored (py2p: 60 s).
    pub broadcast_window_secs: u64,
    /// Broadcasts stamped further than this in the future are ignored.
    /// Default 300 s. (py2p has no such check.)
    pub max_clock_skew_secs: u64,
    /// Most broadcast ids remembered for deduplication. Default 262,144.
    pub seen_capacity: usize,
    /// A connection that has not completed its handshake after this long is
    /// closed. Default 10 s.
    pub handshake_timeout_ms: u64,
    /// Keep dialing known peers while below `max_outgoing`. Default on.
    pub maintain_outgoing: bool,
    /// Least time between two peer-list requests while short of outgoing
    /// connections. Default 2 s.
    pub peer_request_interval_ms: u64,
    /// Least time before redialing a peer whose dial failed. Default 2 s,
    /// doubling on each failure up to 60 s.
    pub redial_backoff_ms: u64,
    /// How long a routed reply waits for its route. Default 30 s.
    pub reply_timeout_ms: u64,
    /// Most replies waiting for a route at once. Default 1,024.
    pub max_pending_replies: usize,
    /// Most addresses remembered from peer lists. Default 1,024.
    pub max_known_peers: usize,
    /// Most entries accepted from one peer list. Default 256.
    pub max_peer_list: usize,
    /// Largest frame body this node sends (checksum + payload). Peers close
    /// a connection that sends them more than their own limit, so local
    /// messages above it are refused. Default
    /// [`crate::wire::DEFAULT_MAX_FRAME_LEN`].
    pub max_frame_len: usize,
}

impl Config {
    /// A configuration with py2p's behaviour and rs2p's defaults.
    pub fn new(protocol: Protocol, id: PeerId, out_addr: PeerAddr) -> Self {
        Config {
            protocol,
            id,
            out_addr,
            max_outgoing: 4,
            compression: Compression::DEFAULT_PREFERENCE.to_vec(),
            broadcast_window_secs: 60,
            max_clock_skew_secs: 300,
            seen_capacity: 1 << 18,
            handshake_timeout_ms: 10_000,
            maintain_outgoing: true,
            peer_request_interval_ms: 2_000,
            redial_backoff_ms: 2_000,
            reply_timeout_ms: 30_000,
            max_pending_replies: 1024,
            max_known_peers: 1024,
            max_peer_list: 256,
            max_frame_len: crate::wire::DEFAULT_MAX_FRAME_LEN,
        }
    }
}

/// How a link encodes outgoing frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkCodec {
    /// Compression applied to each frame body (`None`: uncompressed).
    pub compression: Option<Compression>,
    /// Whether several frames may share one write. Only for peers known to
    /// be rs2p: py2p's reader mishandles a read that ends exactly after a
    /// length prefix, so toward py2p each frame is written on its own.
    pub coalesce: bool,
}

impl LinkCodec {
    /// The codec of a link before its handshake: uncompressed, one frame per
    /// write.
    pub const HANDSHAKE: LinkCodec = LinkCodec { compression: None, coalesce: false };
}

/// Why a connection was closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer is on another network (protocol id mismatch).
    ProtocolMismatch {
        /// Our protocol id.
        ours: String,
        /// Theirs.
        theirs: String,
    },
    /// We dialed ourselves.
    SelfConnection,
    /// A second connection to the same peer lost the conflict rule.
    Duplicate,
    /// No handshake within [`Config::handshake_timeout_ms`].
    HandshakeTimeout,
    /// The peer broke the protocol (message before handshake, bad fields).
    ProtocolViolation(&'static str),
    /// The peer sent bytes that do not decode.
    Decode(DecodeError),
    /// The peer closed the connection, or the socket failed.
    Io(String),
    /// A partial frame stalled for too long.
    Stalled,
    /// The peer did not drain its send queue in time.
    SlowPeer,
    /// Closed on request ([`Mesh::disconnect`]).
    Requested,
    /// The node is shutting down.
    Shutdown,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::ProtocolMismatch { ours, theirs } => write!(
                f,
                "peer is on another network: its protocol id {theirs} differs from ours {ours} (different subnet or encryption)"
            ),
            CloseReason::SelfConnection => f.write_str("connected to ourselves"),
            CloseReason::Duplicate => f.write_str("duplicate connection to the same peer"),
            CloseReason::HandshakeTimeout => f.write_str("no handshake in time"),
            CloseReason::ProtocolViolation(what) => write!(f, "protocol violation: {what}"),
            CloseReason::Decode(e) => write!(f, "undecodable frame: {e}"),
            CloseReason::Io(e) => write!(f, "connection lost: {e}"),
            CloseReason::Stalled => f.write_str("partial frame stalled"),
            CloseReason::SlowPeer => f.write_str("peer too slow to receive"),
            CloseReason::Requested => f.write_str("disconnected on request"),
            CloseReason::Shutdown => f.write_str("node shutting down"),
        }
    }
}

/// A message handed to the layers above the mesh: user broadcasts and
/// whispers, and every sub-flag the mesh itself does not handle (sync's
/// store and delta, for instance).
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The connection it arrived on.
    pub conn: ConnId,
    /// The packet.
    pub packet: Packet,
}

/// Something the application may want to know.
#[derive(Debug, Clone)]
pub enum Event {
    /// A handshake completed: `peer` is in the routing table.
    PeerUp {
        /// The connection.
        conn: ConnId,
        /// The peer's id.
        peer: PeerId,
        /// The peer's advertised outward address.
        addr: Option<PeerAddr>,
        /// Whether we dialed.
        outgoing: bool,
        /// The dial that opened the connection, if we dialed.
        dial: Option<DialId>,
        /// Whether this is our first peer (py2p's `connect` event).
        first: bool,
        /// Whether the peer advertised rs2p's identity method (it is rs2p).
        rs2p: bool,
    },
    /// A peer left the routing table.
    PeerDown {
        /// The connection that closed.
        conn: ConnId,
        /// The peer's id.
        peer: PeerId,
        /// Why.
        reason: CloseReason,
    },
    /// A dial or a connection failed before its handshake completed.
    ConnectFailed {
        /// The connection, if one was opened.
        conn: Option<ConnId>,
        /// The id the peer claimed, if its handshake arrived (a connection
        /// closed as a [`CloseReason::Duplicate`] leaves this peer connected
        /// through its other link).
        peer: Option<PeerId>,
        /// The dial, if we dialed.
        dial: Option<DialId>,
        /// The dialed address, if we dialed.
        addr: Option<PeerAddr>,
        /// Why.
        reason: CloseReason,
    },
    /// A message for the layers above.
    Message(Delivery),
}

/// An action for the driver.
#[derive(Debug, Clone)]
pub enum Output {
    /// Write `frame` to `conn`, encoded with the link's codec.
    Send {
        /// Where.
        conn: ConnId,
        /// What.
        frame: Frame,
    },
    /// From now on, encode frames to `conn` with `codec`.
    Configure {
        /// Which link.
        conn: ConnId,
        /// Its codec.
        codec: LinkCodec,
    },
    /// Open a TCP connection to `addr`, then call [`Mesh::handle_dialed`] or
    /// [`Mesh::handle_dial_failed`].
    Dial {
        /// Identifies the attempt.
        dial: DialId,
        /// Where.
        addr: PeerAddr,
    },
    /// Close `conn` (after flushing what was queued before). The machine has
    /// already forgotten it.
    Close {
        /// Which.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// Tell the application.
    Event(Event),
}

/// Errors of commands given to the state machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The peer is not directly connected.
    #[error("not connected to peer {0}")]
    NotConnected(PeerId),
    /// The address is our own.
    #[error("refusing to connect to our own address {0}")]
    OwnAddress(PeerAddr),
    /// Too many replies already wait for a route.
    #[error("too many replies waiting for a route")]
    TooManyPending,
    /// The message would make a frame larger than the frame limit.
    #[error("message of {len} bytes exceeds the frame limit of {max}")]
    TooLarge {
        /// The frame body's size.
        len: usize,
        /// The limit ([`Config::max_frame_len`]).
        max: usize,
    },
}

/// Counters, for status reports and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// User and upper-layer messages delivered.
    pub delivered: u64,
    /// Broadcast copies dropped as already seen.
    pub duplicates: u64,
    /// Broadcasts dropped as too old or too far in the future.
    pub stale: u64,
    /// Frames relayed to other peers.
    pub relayed: u64,
    /// Frames handed to the driver to send.
    pub sent: u64,
    /// Connections closed for misbehaviour or decode errors.
    pub protocol_errors: u64,
}

/// What a connection looks like from the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's id.
    pub id: PeerId,
    /// Its advertised outward address.
    pub addr: Option<PeerAddr>,
    /// Whether we dialed.
    pub outgoing: bool,
    /// The connection.
    pub conn: ConnId,
    /// Whether the peer advertised rs2p's identity method (it is rs2p).
    pub rs2p: bool,
}

/// The outcome of [`Mesh::reply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyRoute {
    /// Sent on the direct connection.
    Direct,
    /// Not connected: a route request was flooded and the reply will follow
    /// when the route is found (within [`Config::reply_timeout_ms`]).
    Routing,
}

/// The pure outcome of py2p's connection-conflict rule: which of two
/// connections to the same peer survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Keep the connection already in the routing table.
    Existing,
    /// Keep the connection whose handshake just arrived.
    New,
}

/// py2p's connection-conflict rule (`__resolve_connection_conflict`): keep
/// the existing connection iff `(our id > their id) XOR (the new connection
/// is outgoing)`. When the two connections were dialed from opposite ends,
/// both nodes thereby keep the one dialed by the node with the greater id.
pub fn resolve_conflict(me: &PeerId, peer: &PeerId, new_is_outgoing: bool) -> Keep {
    let me_greater = me.numeric_cmp(peer) == std::cmp::Ordering::Greater;
    if me_greater ^ new_is_outgoing {
        Keep::Existing
    } else {
        Keep::New
    }
}

#[derive(Debug)]
enum ConnState {
    Handshaking,
    Established(PeerId),
}

#[derive(Debug)]
struct Conn {
    dir: Direction,
    dial: Option<DialId>,
    target: Option<PeerAddr>,
    opened_ms: u64,
    state: ConnState,
    addr: Option<PeerAddr>,
    peer_methods: Vec<u64>,
    codec: LinkCodec,
    last_user: Option<Frame>,
    /// The id from the handshake, once it arrived.
    claimed: Option<PeerId>,
}

#[derive(Debug)]
struct PendingDial {
    addr: PeerAddr,
    expected: Option<PeerId>,
}

#[derive(Debug)]
struct KnownPeer {
    addr: PeerAddr,
    next_try_ms: u64,
    failures: u32,
}

#[derive(Debug)]
struct PendingReply {
    to: PeerId,
    frame: Frame,
    deadline_ms: u64,
}

/// The mesh protocol state of one node. See the [module docs](self).
#[derive(Debug)]
pub struct Mesh {
    cfg: Config,
    protocol_id: ProtocolId,
    rng: StdRng,
    conns: ConnMap<Conn>,
    routing: HashMap<PeerId, ConnId>,
    dials: HashMap<DialId, PendingDial>,
    next_dial: u64,
    known: HashMap<PeerId, KnownPeer>,
    seen: SeenCache,
    /// Route requests we sent, by request id.
    requests: HashMap<Vec<u8>, PendingReply>,
    /// Replies whose route was found, waiting for the handshake.
    deferred: HashMap<PeerId, Vec<PendingReply>>,
    next_peer_request_ms: u64,
    /// The latest time an input brought; used where an action has no `now`.
    clock: Now,
    /// Reused buffer for relay targets.
    scratch: Vec<ConnId>,
    out: VecDeque<Output>,
    stats: Stats,
}

impl Mesh {
    /// A node with `cfg`; `seed` seeds all of its randomness.
    pub fn new(cfg: Config, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let seen_keep_ms = (cfg.broadcast_window_secs + cfg.max_clock_skew_secs) * 1000;
        let seen = SeenCache::new(seen_keep_ms, cfg.seen_capacity, rng.random());
        Mesh {
            protocol_id: cfg.protocol.id(),
            cfg,
            rng,
            conns: ConnMap::default(),
            routing: HashMap::new(),
            dials: HashMap::new(),
            next_dial: 0,
            known: HashMap::new(),
            seen,
            requests: HashMap::new(),
            deferred: HashMap::new(),
            next_peer_request_ms: 0,
            clock: Now::default(),
            scratch: Vec::new(),
            out: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// This node's id.
    pub fn id(&self) -> &PeerId {
        &self.cfg.id
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// This node's protocol id.
    pub fn protocol_id(&self) -> &ProtocolId {
        &self.protocol_id
    }

    /// The latest time an input brought.
    pub fn clock(&self) -> Now {
        self.clock
    }

    /// Sends an already built frame on a handshaken connection (for layers
    /// above the mesh); ignored if the connection is gone.
    pub fn send_frame(&mut self, conn: ConnId, frame: Frame) {
        if matches!(self.conns.get(&conn), Some(Conn { state: ConnState::Established(_), .. })) {
            self.send(conn, frame);
        }
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The next action for the driver. Drain it after every input.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The routing table: every handshaken peer.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let mut v: Vec<PeerInfo> = self
            .routing
            .iter()
            .filter_map(|(id, c)| {
                let conn = self.conns.get(c)?;
                Some(PeerInfo {
                    id: id.clone(),
                    addr: conn.addr.clone(),
                    outgoing: conn.dir == Direction::Outgoing,
                    conn: *c,
                    rs2p: conn.peer_methods.contains(&u64::from(Compression::Identity.code())),
                })
            })
            .collect();
        v.sort_by_key(|a| a.conn);
        v
    }

    /// The connection to `peer`, if handshaken.
    pub fn conn_of(&self, peer: &PeerId) -> Option<ConnId> {
        self.routing.get(peer).copied()
    }

    /// Number of outgoing connections, counting dials and handshakes in
    /// progress (so peer exchange never overshoots the target).
    pub fn outgoing_count(&self) -> usize {
        self.dials.len() + self.conns.values().filter(|c| c.dir == Direction::Outgoing).count()
    }

    /// Number of connections that have not completed their handshake.
    pub fn handshaking_count(&self) -> usize {
        self.conns.values().filter(|c| matches!(c.state, ConnState::Handshaking)).count()
    }

    /// Number of open connections, handshaken or not.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    // ----- commands -------------------------------------------------------

    /// Dials `addr`; `expected` is the id we expect there, if known.
    ///
    /// # Errors
    /// [`CommandError::OwnAddress`] when `addr` is our own outward address.
    pub fn connect(&mut self, addr: PeerAddr, expected: Option<PeerId>) -> Result<DialId, CommandError> {
        if addr == self.cfg.out_addr {
            return Err(CommandError::OwnAddress(addr));
        }
        Ok(self.dial(addr, expected))
    }

    fn dial(&mut self, addr: PeerAddr, expected: Option<PeerId>) -> DialId {
        self.next_dial += 1;
        let dial = DialId(self.next_dial);
        self.dials.insert(dial, PendingDial { addr: addr.clone(), expected });
        self.out.push_back(Output::Dial { dial, addr });
        dial
    }

    /// Floods a message with `subflag` and `packets` to the whole network and
    /// returns its id. User broadcasts use [`subflag::BROADCAST`].
    ///
    /// # Errors
    /// [`CommandError::TooLarge`] above [`Config::max_frame_len`].
    pub fn broadcast(&mut self, now: Now, subflag: u64, packets: &[Value]) -> Result<MsgId, CommandError> {
        let frame = Frame::build(MsgType::Broadcast as u8, &self.cfg.id, now.unix(), subflag, packets);
        self.check_size(&frame)?;
        Ok(self.broadcast_frame(now, frame))
    }

    fn check_size(&self, frame: &Frame) -> Result<(), CommandError> {
        let len = frame.body().len();
        if len > self.cfg.max_frame_len {
            return Err(CommandError::TooLarge { len, max: self.cfg.max_frame_len });
        }
        Ok(())
    }

    /// Floods an already built broadcast frame.
    pub fn broadcast_frame(&mut self, now: Now, frame: Frame) -> MsgId {
        self.clock = self.clock.max(now);
        let id = frame.id();
        self.seen.insert(&id, now.mono_ms);
        let conns: Vec<ConnId> = self.routing.values().copied().collect();
        for conn in conns {
            self.send_user(conn, frame.clone());
        }
        id
    }

    /// Sends a whisper with `subflag` and `packets` to a directly connected
    /// peer. User whispers use [`subflag::WHISPER`].
    ///
    /// # Errors
    /// [`CommandError::NotConnected`] if `peer` is not in the routing table,
    /// [`CommandError::TooLarge`].
    pub fn whisper(&mut self, now: Now, peer: &PeerId, subflag: u64, packets: &[Value]) -> Result<MsgId, CommandError> {
        let conn = *self.routing.get(peer).ok_or_else(|| CommandError::NotConnected(peer.clone()))?;
        let frame = Frame::build(MsgType::Whisper as u8, &self.cfg.id, now.unix(), subflag, packets);
        self.check_size(&frame)?;
        let id = frame.id();
        self.send_user(conn, frame);
        Ok(id)
    }

    /// Whispers `packets` to `to`, directly if connected, otherwise by
    /// flooding a route request, dialing the node that answers and sending
    /// once the handshake completes. (py2p's `Message.reply`, which is broken
    /// on Python 3 for the unconnected case.)
    ///
    /// # Errors
    /// [`CommandError::TooManyPending`] when [`Config::max_pending_replies`]
    /// replies already wait for routes, [`CommandError::TooLarge`].
    pub fn reply(&mut self, now: Now, to: &PeerId, packets: &[Value]) -> Result<ReplyRoute, CommandError> {
        if self.routing.contains_key(to) {
            self.whisper(now, to, subflag::WHISPER, packets)?;
            return Ok(ReplyRoute::Direct);
        }
        if self.requests.len() >= self.cfg.max_pending_replies {
            return Err(CommandError::TooManyPending);
        }
        let frame = Frame::build(MsgType::Whisper as u8, &self.cfg.id, now.unix(), subflag::WHISPER, packets);
        self.check_size(&frame)?;
        let mut raw = [0u8; 24];
        self.rng.fill(&mut raw[..]);
        let request_id = crate::id::b58encode_int(&raw);
        self.requests.insert(
            request_id.clone().into_bytes(),
            PendingReply { to: to.clone(), frame, deadline_ms: now.mono_ms + self.cfg.reply_timeout_ms },
        );
        self.broadcast(now, subflag::REQUEST, &[Value::from(request_id), Value::Binary(to.as_bytes().to_vec())])?;
        Ok(ReplyRoute::Routing)
    }

    /// Asks every peer for its peer list (py2p's `request_peers`).
    ///
    /// The `'*'` goes as msgpack bin: py2p compares it with `b'*'` and only
    /// answers that form.
    pub fn request_peers(&mut self, now: Now) {
        self.clock = self.clock.max(now);
        let frame = Frame::build(
            MsgType::Whisper as u8,
            &self.cfg.id,
            now.unix(),
            subflag::REQUEST,
            &[Value::Binary(b"*".to_vec())],
        );
        let conns: Vec<ConnId> = self.routing.values().copied().collect();
        for conn in conns {
            self.send(conn, frame.clone());
        }
        self.next_peer_request_ms = now.mono_ms + self.cfg.peer_request_interval_ms;
    }

    /// Closes the connection to `peer`.
    ///
    /// # Errors
    /// [`CommandError::NotConnected`] if `peer` is not in the routing table.
    pub fn disconnect(&mut self, peer: &PeerId) -> Result<(), CommandError> {
        let conn = *self.routing.get(peer).ok_or_else(|| CommandError::NotConnected(peer.clone()))?;
        // Forget it as a redial candidate too: the user wants it gone.
        self.known.remove(peer);
        self.close(conn, CloseReason::Requested);
        Ok(())
    }

    /// Closes every connection (py2p's `close`).
    pub fn shutdown(&mut self) {
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for c in conns {
            self.close(c, CloseReason::Shutdown);
        }
        self.dials.clear();
    }

    // ----- inputs ---------------------------------------------------------

    /// An accepted incoming connection.
    pub fn handle_incoming(&mut self, now: Now, conn: ConnId) {
        self.clock = self.clock.max(now);
        self.open(now, conn, Direction::Incoming, None, None);
    }

    /// The dial `dial` succeeded as connection `conn`.
    pub fn handle_dialed(&mut self, now: Now, dial: DialId, conn: ConnId) {
        self.clock = self.clock.max(now);
        match self.dials.remove(&dial) {
            Some(d) => self.open(now, conn, Direction::Outgoing, Some(dial), Some(d.addr)),
            // A dial we no longer care about (shutdown): drop the connection.
            None => self.out.push_back(Output::Close { conn, reason: CloseReason::Shutdown }),
        }
    }

    /// The dial `dial` failed.
    pub fn handle_dial_failed(&mut self, now: Now, dial: DialId, error: String) {
        self.clock = self.clock.max(now);
        if let Some(d) = self.dials.remove(&dial) {
            if let Some(expected) = &d.expected {
                self.backoff(expected, now);
            }
            self.event(Event::ConnectFailed {
                conn: None,
                peer: None,
                dial: Some(dial),
                addr: Some(d.addr),
                reason: CloseReason::Io(error),
            });
        }
    }

    /// The driver closed `conn` (remote close, I/O error, decode error).
    pub fn handle_closed(&mut self, now: Now, conn: ConnId, reason: CloseReason) {
        self.clock = self.clock.max(now);
        if matches!(reason, CloseReason::Decode(_) | CloseReason::Stalled) {
            self.stats.protocol_errors += 1;
        }
        if let Some(c) = self.conns.remove(&conn) {
            self.forget(now, conn, c, reason);
        }
    }

    /// Periodic work: expiry, handshake deadlines, keeping the outgoing
    /// target. Call about once a second.
    pub fn handle_tick(&mut self, now: Now) {
        self.clock = self.clock.max(now);
        self.seen.expire(now.mono_ms);
        let late: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                matches!(c.state, ConnState::Handshaking) && c.opened_ms + self.cfg.handshake_timeout_ms <= now.mono_ms
            })
            .map(|(id, _)| *id)
            .collect();
        for c in late {
            self.close(c, CloseReason::HandshakeTimeout);
        }
        self.requests.retain(|_, r| r.deadline_ms > now.mono_ms);
        self.deferred.retain(|_, v| {
            v.retain(|r| r.deadline_ms > now.mono_ms);
            !v.is_empty()
        });
        if self.cfg.maintain_outgoing {
            self.maintain(now);
        }
    }

    fn maintain(&mut self, now: Now) {
        let mut deficit = self.cfg.max_outgoing.saturating_sub(self.outgoing_count());
        if deficit == 0 {
            return;
        }
        let dialing: HashSet<PeerId> = self.dials.values().filter_map(|d| d.expected.clone()).collect();
        let mut candidates: Vec<PeerId> = self
            .known
            .iter()
            .filter(|(id, k)| k.next_try_ms <= now.mono_ms && !self.routing.contains_key(*id) && !dialing.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        candidates.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        candidates.shuffle(&mut self.rng);
        for id in candidates {
            if deficit == 0 {
                break;
            }
            let Some(k) = self.known.get_mut(&id) else {
                continue;
            };
            // Pessimistically schedule the next try; success removes the entry.
            k.next_try_ms = now.mono_ms + self.cfg.redial_backoff_ms;
            let addr = k.addr.clone();
            self.dial(addr, Some(id));
            deficit -= 1;
        }
        if deficit > 0 && !self.routing.is_empty() && now.mono_ms >= self.next_peer_request_ms {
            self.request_peers(now);
        }
    }

    /// A checked packet arrived on `conn`.
    pub fn handle_packet(&mut self, now: Now, conn: ConnId, packet: Packet) {
        self.clock = self.clock.max(now);
        let Some(c) = self.conns.get(&conn) else {
            return; // closed meanwhile
        };
        let h = &packet.header;
        if matches!(c.state, ConnState::Handshaking) {
            if h.msg_type == MsgType::Whisper as u64 && h.subflag == subflag::HANDSHAKE {
                self.on_handshake(now, conn, &packet);
            } else {
                self.violation(conn, "message before handshake");
            }
            return;
        }
        match MsgType::from_u64(h.msg_type) {
            Some(MsgType::Broadcast) => self.on_broadcast(now, conn, packet),
            Some(MsgType::Whisper) => self.on_whisper(now, conn, packet),
            Some(MsgType::Renegotiate) => self.on_renegotiate(now, conn, &packet),
            // Reserved and unused by py2p: ignore, as py2p does.
            Some(MsgType::Ping | MsgType::Pong) | None => {}
        }
    }

    // ----- message handlers -----------------------------------------------

    fn on_handshake(&mut self, now: Now, conn: ConnId, packet: &Packet) {
        let Ok(v) = packet.values() else {
            return self.violation(conn, "undecodable handshake");
        };
        if v.len() != 4 {
            return self.violation(conn, "handshake field count");
        }
        let (Some(id), Some(proto)) = (bytes_of(&v[0]), bytes_of(&v[1])) else {
            return self.violation(conn, "handshake id fields must be bytes");
        };
        if id.is_empty() || id.len() > MAX_ID_LEN {
            return self.violation(conn, "handshake id length");
        }
        if proto != self.protocol_id.as_bytes() {
            let reason = CloseReason::ProtocolMismatch {
                ours: self.protocol_id.to_string(),
                theirs: String::from_utf8_lossy(proto).into_owned(),
            };
            tracing::info!(%reason, "refusing connection");
            return self.close(conn, reason);
        }
        let peer = PeerId::from_bytes(Bytes::copy_from_slice(id));
        if peer == self.cfg.id {
            return self.close(conn, CloseReason::SelfConnection);
        }
        let addr = PeerAddr::from_value(&v[2]);
        let Some(methods) = v[3].as_array().map(|a| a.iter().filter_map(Value::as_u64).collect::<Vec<u64>>()) else {
            return self.violation(conn, "handshake compression list");
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.claimed = Some(peer.clone());
        let new_outgoing = c.dir == Direction::Outgoing;
        if let Some(&existing) = self.routing.get(&peer) {
            match resolve_conflict(&self.cfg.id, &peer, new_outgoing) {
                Keep::Existing => return self.close(conn, CloseReason::Duplicate),
                Keep::New => {
                    // Move the routing entry first so closing the old link
                    // does not report the peer as gone.
                    self.routing.insert(peer.clone(), conn);
                    self.close(existing, CloseReason::Duplicate);
                }
            }
        }
        let first = self.routing.is_empty();
        let codec = self.codec_for(&methods);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.state = ConnState::Established(peer.clone());
        c.addr = addr.clone().or_else(|| c.target.clone());
        c.peer_methods = methods;
        c.codec = codec;
        let dial = c.dial;
        let outgoing = c.dir == Direction::Outgoing;
        let rs2p = c.peer_methods.contains(&u64::from(Compression::Identity.code()));
        self.routing.insert(peer.clone(), conn);
        self.known.remove(&peer);
        self.out.push_back(Output::Configure { conn, codec });
        self.event(Event::PeerUp {
            conn,
            peer: peer.clone(),
            addr,
            outgoing,
            dial,
            first: first && !self.routing.is_empty(),
            rs2p,
        });
        self.send_peers(now, conn);
        if let Some(replies) = self.deferred.remove(&peer) {
            for r in replies {
                self.send_user(conn, r.frame);
            }
        }
    }

    fn on_broadcast(&mut self, now: Now, conn: ConnId, packet: Packet) {
        let h = &packet.header;
        if h.time.saturating_add(self.cfg.broadcast_window_secs) < now.unix()
            || h.time > now.unix().saturating_add(self.cfg.max_clock_skew_secs)
        {
            self.stats.stale += 1;
            return;
        }
        if !self.seen.insert(&packet.frame.id(), now.mono_ms) {
            self.stats.duplicates += 1;
            return;
        }
        // Relay the original frame to every peer but the one it came from and
        // its original sender. (A scratch vector, reused: no allocation per
        // message; the sender lookup only matters with other peers.)
        let sender_conn = if self.routing.len() > 1 { self.routing.get(&h.sender).copied() } else { None };
        let mut targets = std::mem::take(&mut self.scratch);
        targets.extend(self.routing.values().copied().filter(|&c| c != conn && Some(c) != sender_conn));
        for &c in &targets {
            self.stats.relayed += 1;
            self.send_user(c, packet.frame.clone());
        }
        targets.clear();
        self.scratch = targets;
        match h.subflag {
            subflag::REQUEST => self.on_route_request(now, conn, &packet),
            subflag::RESPONSE => self.on_route_response(now, &packet),
            _ => self.deliver(conn, packet),
        }
    }

    fn on_whisper(&mut self, now: Now, conn: ConnId, packet: Packet) {
        match packet.header.subflag {
            subflag::HANDSHAKE => {} // repeated handshake: nothing new to learn
            subflag::PEERS => self.on_peers(now, &packet),
            subflag::REQUEST => {
                // py2p's own request sends a str '*', which py2p itself fails
                // to match; answer both forms.
                let is_star =
                    packet.values().ok().and_then(|v| v.first().and_then(bytes_of).map(|b| b == b"*")).unwrap_or(false);
                if is_star {
                    self.send_peers(now, conn);
                }
            }
            _ => self.deliver(conn, packet),
        }
    }

    fn on_renegotiate(&mut self, now: Now, conn: ConnId, packet: &Packet) {
        match packet.header.subflag {
            subflag::COMPRESSION => {
                let Some(methods) = packet
                    .values()
                    .ok()
                    .and_then(|v| v.first().and_then(|m| m.as_array().cloned()))
                    .map(|a| a.iter().filter_map(Value::as_u64).collect::<Vec<u64>>())
                else {
                    return self.violation(conn, "compression renegotiation");
                };
                let codec = self.codec_for(&methods);
                let ours: Vec<Value> = self
                    .cfg
                    .compression
                    .iter()
                    .filter(|m| methods.contains(&u64::from(m.code())))
                    .map(|m| Value::from(m.code()))
                    .collect();
                let Some(c) = self.conns.get_mut(&conn) else {
                    return;
                };
                // py2p answers only when the list changed; an unchanged list
                // ends the exchange, so two nodes never ping-pong.
                let respond = c.peer_methods != methods;
                c.peer_methods = methods;
                c.codec = codec;
                self.out.push_back(Output::Configure { conn, codec });
                if respond {
                    let frame = Frame::build(
                        MsgType::Renegotiate as u8,
                        &self.cfg.id,
                        now.unix(),
                        subflag::COMPRESSION,
                        &[Value::Array(ours)],
                    );
                    self.send(conn, frame);
                }
            }
            subflag::RESEND => {
                // Resend the last user frame once; never ask back.
                if let Some(f) = self.conns.get(&conn).and_then(|c| c.last_user.clone()) {
                    self.send(conn, f);
                }
            }
            _ => {}
        }
    }

    fn on_peers(&mut self, _now: Now, packet: &Packet) {
        let Ok(v) = packet.values() else { return };
        let Some(list) = v.first().and_then(Value::as_array) else {
            return;
        };
        let mut entries: Vec<(PeerAddr, PeerId)> = Vec::new();
        for e in list.iter().take(self.cfg.max_peer_list) {
            let Some(pair) = e.as_array() else { continue };
            if pair.len() != 2 {
                continue;
            }
            let (Some(addr), Some(id)) = (PeerAddr::from_value(&pair[0]), bytes_of(&pair[1])) else {
                continue;
            };
            if id.is_empty() || id.len() > MAX_ID_LEN {
                continue;
            }
            entries.push((addr, PeerId::from_bytes(Bytes::copy_from_slice(id))));
        }
        for (addr, id) in entries {
            if id == self.cfg.id || addr == self.cfg.out_addr || self.routing.contains_key(&id) {
                continue;
            }
            let dialing = self.dials.values().any(|d| d.expected.as_ref() == Some(&id) || d.addr == addr)
                || self.conns.values().any(|c| c.target.as_ref() == Some(&addr));
            if dialing {
                continue;
            }
            if !self.known.contains_key(&id) && self.known.len() >= self.cfg.max_known_peers {
                // Full: replace a random entry so fresh addresses still get in.
                if let Some(victim) = self.known.keys().next().cloned() {
                    self.known.remove(&victim);
                }
            }
            let k =
                self.known.entry(id.clone()).or_insert(KnownPeer { addr: addr.clone(), next_try_ms: 0, failures: 0 });
            k.addr = addr.clone();
            if self.outgoing_count() < self.cfg.max_outgoing {
                self.dial(addr, Some(id));
            }
        }
    }

    fn on_route_request(&mut self, now: Now, conn: ConnId, packet: &Packet) {
        let Ok(v) = packet.values() else { return };
        if v.len() < 2 {
            return;
        }
        let Some(wanted) = bytes_of(&v[1]) else {
            return;
        };
        let wanted = PeerId::from_bytes(Bytes::copy_from_slice(wanted));
        let Some(addr) = self.routing.get(&wanted).and_then(|c| self.conns.get(c)).and_then(|c| c.addr.clone()) else {
            return;
        };
        // A response is a broadcast: it floods back to the asker.
        let frame = Frame::build(
            MsgType::Broadcast as u8,
            &self.cfg.id,
            now.unix(),
            subflag::RESPONSE,
            &[v[0].clone(), Value::Array(vec![addr.to_value(), Value::Binary(wanted.as_bytes().to_vec())])],
        );
        self.seen.insert(&frame.id(), now.mono_ms);
        self.send(conn, frame);
    }

    fn on_route_response(&mut self, _now: Now, packet: &Packet) {
        let Ok(v) = packet.values() else { return };
        if v.len() < 2 {
            return;
        }
        let Some(request_id) = bytes_of(&v[0]) else {
            return;
        };
        let Some(pending) = self.requests.remove(request_id) else {
            return;
        };
        let route = v[1].as_array().filter(|a| a.len() == 2);
        let Some((addr, id)) = route.and_then(|a| Some((PeerAddr::from_value(&a[0])?, bytes_of(&a[1])?))) else {
            return;
        };
        if id != pending.to.as_bytes() {
            return;
        }
        if let Some(&conn) = self.routing.get(&pending.to) {
            self.send_user(conn, pending.frame);
            return;
        }
        let to = pending.to.clone();
        let queue = self.deferred.entry(to.clone()).or_default();
        queue.push(pending);
        let already = self.dials.values().any(|d| d.expected.as_ref() == Some(&to));
        if !already && addr != self.cfg.out_addr {
            self.dial(addr, Some(to));
        }
    }

    // ----- helpers --------------------------------------------------------

    fn open(&mut self, now: Now, conn: ConnId, dir: Direction, dial: Option<DialId>, target: Option<PeerAddr>) {
        self.conns.insert(
            conn,
            Conn {
                dir,
                dial,
                target,
                opened_ms: now.mono_ms,
                state: ConnState::Handshaking,
                addr: None,
                peer_methods: Vec::new(),
                codec: LinkCodec::HANDSHAKE,
                last_user: None,
                claimed: None,
            },
        );
        let methods: Vec<Value> = self.cfg.compression.iter().map(|m| Value::from(m.code())).collect();
        let frame = Frame::build(
            MsgType::Whisper as u8,
            &self.cfg.id,
            now.unix(),
            subflag::HANDSHAKE,
            &[
                Value::Binary(self.cfg.id.as_bytes().to_vec()),
                Value::Binary(self.protocol_id.as_bytes().to_vec()),
                self.cfg.out_addr.to_value(),
                Value::Array(methods),
            ],
        );
        self.out.push_back(Output::Configure { conn, codec: LinkCodec::HANDSHAKE });
        self.send(conn, frame);
    }

    fn codec_for(&self, peer_methods: &[u64]) -> LinkCodec {
        let compression = self.cfg.compression.iter().copied().find(|m| peer_methods.contains(&u64::from(m.code())));
        LinkCodec {
            compression: compression.filter(|m| *m != Compression::Identity),
            coalesce: peer_methods.contains(&u64::from(Compression::Identity.code())),
        }
    }

    fn send_peers(&mut self, now: Now, conn: ConnId) {
        let mut list: Vec<Value> = self
            .routing
            .iter()
            .filter_map(|(id, c)| {
                let addr = self.conns.get(c)?.addr.as_ref()?;
                Some(Value::Array(vec![addr.to_value(), Value::Binary(id.as_bytes().to_vec())]))
            })
            .collect();
        list.sort_by(|a, b| format!("{a}").cmp(&format!("{b}")));
        list.shuffle(&mut self.rng);
        list.truncate(self.cfg.max_peer_list);
        let frame =
            Frame::build(MsgType::Whisper as u8, &self.cfg.id, now.unix(), subflag::PEERS, &[Value::Array(list)]);
        self.send(conn, frame);
    }

    fn send(&mut self, conn: ConnId, frame: Frame) {
        self.stats.sent += 1;
        self.out.push_back(Output::Send { conn, frame });
    }

    fn send_user(&mut self, conn: ConnId, frame: Frame) {
        // Kept for py2p's resend request; rs2p peers never ask, so their
        // links skip the copy.
        if let Some(c) = self.conns.get_mut(&conn) {
            if !c.codec.coalesce {
                c.last_user = Some(frame.clone());
            }
        }
        self.send(conn, frame);
    }

    fn deliver(&mut self, conn: ConnId, packet: Packet) {
        self.stats.delivered += 1;
        self.event(Event::Message(Delivery { conn, packet }));
    }

    fn event(&mut self, e: Event) {
        self.out.push_back(Output::Event(e));
    }

    fn violation(&mut self, conn: ConnId, what: &'static str) {
        self.stats.protocol_errors += 1;
        tracing::debug!(?conn, what, "closing connection: protocol violation");
        self.close(conn, CloseReason::ProtocolViolation(what));
    }

    fn backoff(&mut self, id: &PeerId, now: Now) {
        if let Some(k) = self.known.get_mut(id) {
            k.failures = k.failures.saturating_add(1);
            let exp = self.cfg.redial_backoff_ms.saturating_mul(1 << k.failures.min(5));
            k.next_try_ms = now.mono_ms + exp.min(60_000);
        }
    }

    /// Closes `conn` now: the machine forgets it and tells the driver.
    fn close(&mut self, conn: ConnId, reason: CloseReason) {
        if let Some(c) = self.conns.remove(&conn) {
            self.out.push_back(Output::Close { conn, reason: reason.clone() });
            self.forget(self.clock, conn, c, reason);
        }
    }

    fn forget(&mut self, now: Now, conn: ConnId, c: Conn, reason: CloseReason) {
        match c.state {
            ConnState::Established(peer) => {
                if self.routing.get(&peer) == Some(&conn) {
                    self.routing.remove(&peer);
                    // Remember it as a redial candidate unless we chose to drop it.
                    if let (Some(addr), false) =
                        (c.addr.clone(), matches!(reason, CloseReason::Requested | CloseReason::Shutdown))
                    {
                        if self.known.len() < self.cfg.max_known_peers {
                            self.known.insert(
                                peer.clone(),
                                KnownPeer { addr, next_try_ms: now.mono_ms + self.cfg.redial_backoff_ms, failures: 0 },
                            );
                        }
                    }
                    let lost = !matches!(reason, CloseReason::Shutdown | CloseReason::Duplicate);
                    self.event(Event::PeerDown { conn, peer, reason });
                    // py2p asks its peers for theirs whenever a link drops.
                    if lost && !self.routing.is_empty() && self.cfg.maintain_outgoing {
                        self.next_peer_request_ms = 0;
                    }
                }
            }
            ConnState::Handshaking => {
                if let Some(target) = &c.target {
                    if let Some((id, _)) = self.known.iter().find(|(_, k)| &k.addr == target) {
                        let id = id.clone();
                        self.backoff(&id, now);
                    }
                }
                self.event(Event::ConnectFailed {
                    conn: Some(conn),
                    peer: c.claimed,
                    dial: c.dial,
                    addr: c.target,
                    reason,
                });
            }
        }
    }
}

fn bytes_of(v: &Value) -> Option<&[u8]> {
    match v {
        Value::Binary(b) => Some(b),
        Value::String(s) => Some(s.as_bytes()),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
