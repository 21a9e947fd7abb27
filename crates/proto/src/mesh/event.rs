//! What the mesh machine tells its driver: outputs, events, close reasons,
//! command results and errors, counters.

use std::fmt;

use super::{ConnId, DialId, LinkCodec};
use crate::addr::PeerAddr;
use crate::id::{MsgId, PeerId, Protocol};
use crate::wire::message::Farewell;
use crate::wire::{DecodeError, Frame, Packet};
use crate::RequestId;

/// Why a TLS handshake failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsFailure {
    /// The peer answered with something that is not TLS (a plaintext node).
    NotTls,
    /// The handshake did not finish within the handshake deadline.
    Timeout,
    /// The handshake failed; the TLS library's words.
    Rejected(String),
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsFailure::NotTls => f.write_str("the peer is not speaking TLS (a plaintext node?)"),
            TlsFailure::Timeout => f.write_str("not done in time"),
            TlsFailure::Rejected(why) => f.write_str(why),
        }
    }
}

/// Why a connection was closed (or never opened).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer is on another network (protocol id mismatch).
    ProtocolMismatch {
        /// Our protocol id.
        ours: String,
        /// Theirs.
        theirs: String,
        /// Our network's subnet and encryption.
        our_network: Box<Protocol>,
        /// Theirs, when it is one of the well-known or nearby names (the
        /// handshake carries only a hash of it).
        their_network: Option<Box<Protocol>>,
    },
    /// Whatever answered does not speak py2p's protocol (its first bytes
    /// are no handshake): some other service listens at that address.
    NotANode(Box<CloseReason>),
    /// An rs2p peer said goodbye before closing: it quit, or its
    /// application dropped us.
    PeerLeft(Farewell),
    /// We dialed ourselves.
    SelfConnection,
    /// A second connection to the same peer lost the conflict rule.
    Duplicate,
    /// No handshake within [`super::Config::handshake_timeout_ms`].
    HandshakeTimeout,
    /// The peer broke the protocol (message before handshake, bad fields).
    ProtocolViolation(&'static str),
    /// The peer sent bytes that do not decode.
    Decode(DecodeError),
    /// The peer closed the connection.
    ClosedByPeer,
    /// The socket failed (or a dial did: refused, unreachable, ...).
    Io(std::io::ErrorKind),
    /// A dial got no answer in time.
    DialTimeout,
    /// The TLS handshake failed.
    Tls(TlsFailure),
    /// The node's connection limit was reached.
    ConnectionLimit,
    /// A partial frame stalled for too long.
    Stalled,
    /// The peer did not drain its send queue in time.
    SlowPeer,
    /// An rs2p peer sent nothing, not even a pong, for this long: it
    /// vanished without closing (power loss, a cut cable, a forgotten NAT
    /// flow).
    Unresponsive {
        /// How long it had been silent, in milliseconds.
        silent_ms: u64,
    },
    /// The peer's id was not accepted: not proven where a proof is needed,
    /// not on the private network's list, not the one dialed for, or a
    /// failed proof (an impostor). See [`super::AuthFailure`].
    Auth(super::AuthFailure),
    /// Closed on request ([`super::Command::Disconnect`]).
    Requested,
    /// The node is shutting down.
    Shutdown,
}

impl CloseReason {
    /// Whether the peer misbehaved (broke the protocol, sent undecodable
    /// bytes, or failed to prove the id it claimed), as opposed to ordinary
    /// churn or a refusal by policy. Such closes are py2p's
    /// "unexpected" errors: they make a node's status not nominal.
    pub fn is_misbehaviour(&self) -> bool {
        matches!(
            self,
            CloseReason::ProtocolViolation(_)
                | CloseReason::Decode(_)
                | CloseReason::Stalled
                | CloseReason::Auth(super::AuthFailure::BadProof { .. })
        )
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::ProtocolMismatch { our_network, their_network: Some(theirs), .. }
                if theirs.subnet == our_network.subnet =>
            {
                write!(
                    f,
                    "refused: the peer uses {} and we use {} (subnet {:?})",
                    theirs.encryption.as_str(),
                    our_network.encryption.as_str(),
                    our_network.subnet
                )
            }
            CloseReason::ProtocolMismatch { our_network, their_network: Some(theirs), .. } => {
                write!(f, "refused: wrong subnet {:?} (ours {:?})", theirs.subnet, our_network.subnet)
            }
            CloseReason::ProtocolMismatch { our_network, theirs, .. } => write!(
                f,
                "refused: wrong subnet (ours {:?}, {}; theirs is unknown, protocol id {theirs})",
                our_network.subnet,
                our_network.encryption.as_str()
            ),
            CloseReason::NotANode(why) => write!(f, "not a py2p/rs2p node ({why})"),
            CloseReason::PeerLeft(Farewell::Quit) => f.write_str("peer quit"),
            CloseReason::PeerLeft(Farewell::Disconnect) => f.write_str("peer disconnected us"),
            CloseReason::PeerLeft(Farewell::Replaced) => f.write_str("replaced by another link to the same peer"),
            CloseReason::SelfConnection => f.write_str("connected to ourselves"),
            CloseReason::Duplicate => f.write_str("duplicate connection to the same peer"),
            CloseReason::HandshakeTimeout => f.write_str("no handshake in time"),
            CloseReason::ProtocolViolation(what) => write!(f, "protocol violation: {what}"),
            CloseReason::Decode(e) => write!(f, "undecodable frame: {e}"),
            CloseReason::ClosedByPeer => f.write_str("closed by peer"),
            CloseReason::Io(std::io::ErrorKind::ConnectionRefused) => f.write_str("refused: nothing listens there"),
            CloseReason::Io(kind) => write!(f, "connection lost: {kind}"),
            CloseReason::DialTimeout => f.write_str("no answer in time"),
            CloseReason::Tls(t) => write!(f, "TLS handshake failed: {t}"),
            CloseReason::ConnectionLimit => f.write_str("connection limit reached"),
            CloseReason::Stalled => f.write_str("partial frame stalled"),
            CloseReason::SlowPeer => f.write_str("peer too slow to receive"),
            CloseReason::Unresponsive { silent_ms } => {
                write!(f, "timeout: no sign of life for {:.1} s", *silent_ms as f64 / 1000.0)
            }
            CloseReason::Auth(why) => write!(f, "refused: {why}"),
            CloseReason::Requested => f.write_str("disconnected on request"),
            CloseReason::Shutdown => f.write_str("node shutting down"),
        }
    }
}

/// A message handed to the layers above the mesh: user broadcasts and
/// whispers, and every sub-flag the mesh itself does not handle (sync's
/// store and delta, applications' own sub-flags).
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The connection it arrived on.
    pub conn: ConnId,
    /// The packet.
    pub packet: Packet,
    /// Whether it is a user broadcast or whisper, for the application's
    /// receive queue; other sub-flags go only to registered handlers.
    pub for_application: bool,
    /// Whether it is proven to come from its header's sender: a broadcast
    /// covered by its sender's signature, or a whisper on the link its
    /// sender proved (see `signed.rs`).
    pub verified: bool,
}

/// Something the application may want to know.
#[derive(Debug, Clone, PartialEq)]
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
        /// Whether this is our first peer (py2p's `connect` event).
        first: bool,
        /// Whether the peer advertised rs2p's identity method (it is rs2p).
        rs2p: bool,
        /// Whether this link replaces another one to the same peer (the
        /// conflict rule kept the new one): the peer never went down.
        replaces: bool,
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
    /// A dial or a connection failed before its handshake completed. (A
    /// connection closed as a [`CloseReason::Duplicate`] is not reported:
    /// its peer stays connected through its other link.)
    ConnectFailed {
        /// The connection, if one was opened.
        conn: Option<ConnId>,
        /// The id the peer claimed, if its handshake arrived.
        peer: Option<PeerId>,
        /// The dialed address, if we dialed.
        addr: Option<PeerAddr>,
        /// Why.
        reason: CloseReason,
    },
    /// A message for the layers above.
    Message(Delivery),
}

/// What a successful command gives back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Done; nothing to report.
    Done,
    /// [`super::Command::Connect`]: the handshake completed with this peer.
    Connected(PeerId),
    /// A message went out with this id.
    Sent(MsgId),
    /// [`super::Command::BroadcastMany`]: one id per message.
    SentMany(Vec<MsgId>),
    /// [`super::Command::Reply`]: how the reply travels.
    Routed(ReplyRoute),
}

/// Which queue a frame waits in on its way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Payload and everything in the link's order (handshakes, peer lists,
    /// broadcasts, whispers).
    Payload,
    /// The broadcast tree's control messages and keepalives (rs2p tree
    /// links only): they go ahead of queued payload.
    Control,
    /// The broadcast tree's announcements: in the payload's order (after the
    /// broadcasts queued before them), but never dropped with it: when the
    /// driver drops payload for a lagging peer, they go in the control lane
    /// instead, so the peer still learns what it missed and can ask for it.
    Announce,
}

/// An action for the driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Write `frame` to `conn`, encoded with the link's codec.
    Send {
        /// The link to write to.
        conn: ConnId,
        /// The frame to write.
        frame: Frame,
        /// The queue it waits in.
        lane: Lane,
    },
    /// From now on, encode frames to `conn` with `codec`.
    Configure {
        /// The link to reconfigure.
        conn: ConnId,
        /// Its codec from now on.
        codec: LinkCodec,
    },
    /// Open a TCP connection to `addr`, then feed
    /// [`super::Input::Dialed`] or [`super::Input::DialFailed`].
    Dial {
        /// Identifies the attempt.
        dial: DialId,
        /// The address to dial.
        addr: PeerAddr,
    },
    /// Close `conn` (after flushing what was queued before). The machine has
    /// already forgotten it.
    Close {
        /// The link to close.
        conn: ConnId,
        /// Why it closes.
        reason: CloseReason,
    },
    /// Tell the application.
    Event(Event),
    /// The answer to a command: every command gets exactly one, at once or
    /// (for [`super::Command::Connect`]) when the handshake completes or fails.
    Reply {
        /// The command answered.
        request: RequestId,
        /// Its result.
        result: Result<Reply, CommandError>,
    },
}

/// Why a command was refused or failed.
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
        /// The limit ([`super::Config::max_frame_len`]).
        max: usize,
    },
    /// A connection attempt failed.
    #[error("connecting to {addr} failed: {reason}")]
    Connect {
        /// The address dialed.
        addr: PeerAddr,
        /// Why it failed.
        reason: CloseReason,
    },
    /// A frame handed to [`super::Command::Publish`] that this node cannot
    /// publish.
    #[error("cannot publish this frame: {0}")]
    BadFrame(&'static str),
    /// The node shut down before the command completed.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// A proven connection was asked of a node without a key.
    #[error("this node has no key, so it cannot ask a peer to prove its id")]
    NoIdentity,
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
    /// Broadcast-tree and keepalive control messages sent.
    pub control_sent: u64,
    /// Tree links closed for silence (peers that vanished).
    pub unresponsive: u64,
    /// Links refused because the peer's id was not accepted
    /// ([`CloseReason::Auth`]).
    pub refused_ids: u64,
    /// Messages dropped for their sender's identity (on a private network,
    /// a broadcast from an id not on the list; a broadcast without a valid
    /// signature from a sender known to sign; a forged signature message).
    pub rejected: u64,
    /// Of `rejected`: broadcasts whose sender is known to sign (or, with
    /// [`super::Config::require_signed`], any sender) that came with no
    /// valid signature.
    pub unsigned: u64,
    /// Of `rejected`: signature messages that were malformed, or whose key
    /// or signature did not check.
    pub bad_signatures: u64,
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
    /// Whether the link runs the broadcast tree and keepalives (both ends
    /// advertised them; never with py2p).
    pub tree: bool,
}

/// How a reply travels ([`super::Command::Reply`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyRoute {
    /// Sent on the direct connection.
    Direct,
    /// Not connected: a route request was flooded and the reply will follow
    /// when the route is found (within [`super::Config::reply_timeout_ms`]).
    Routing,
}
