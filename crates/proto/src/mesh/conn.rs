//! Connections as the machine sees them: ids, direction, handshake state.

use std::collections::HashMap;

use super::dissemination::MixHasher;
use super::LinkCodec;
use crate::addr::PeerAddr;
use crate::id::PeerId;
use crate::wire::message::Farewell;
use crate::wire::Frame;
use crate::RequestId;

/// Identifies one TCP connection, handshaken or not. Assigned by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// A map keyed by [`ConnId`]: the driver's sequential ids are not remote
/// input, so the keyed SipHash of `HashMap` buys nothing on this hot path.
pub type ConnMap<V> = HashMap<ConnId, V, std::hash::BuildHasherDefault<MixHasher>>;

/// Identifies one dial attempt, so its outcome can be matched to its cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DialId(pub u64);

/// Which end opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// We dialed.
    Outgoing,
    /// They dialed.
    Incoming,
}

#[derive(Debug)]
pub(super) enum ConnState {
    Handshaking,
    /// The peer's handshake arrived; it is proving its id (`auth.rs`).
    Authenticating(Box<super::auth::Proving>),
    Established(PeerId),
}

/// One connection's state.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) dir: Direction,
    /// The `Connect` command waiting for its handshake, if any.
    pub(super) request: Option<RequestId>,
    /// The address we dialed, if we dialed.
    pub(super) target: Option<PeerAddr>,
    pub(super) state: ConnState,
    /// The peer's advertised address (or the one we dialed).
    pub(super) addr: Option<PeerAddr>,
    pub(super) peer_methods: Vec<u64>,
    pub(super) codec: LinkCodec,
    /// The last user frame sent, for py2p's resend request.
    pub(super) last_user: Option<Frame>,
    /// The id from the handshake, once it arrived.
    pub(super) claimed: Option<PeerId>,
    /// Whether both ends speak the broadcast tree (and keepalives).
    pub(super) tree: bool,
    /// When the link last brought a frame (monotonic ms).
    pub(super) last_rx_ms: u64,
    /// Whether a ping went out since then.
    pub(super) pinged: bool,
    /// When the next heartbeat goes out (monotonic ms).
    pub(super) next_heartbeat_ms: u64,
    /// Why the peer said it closes the link, if it said goodbye.
    pub(super) farewell: Option<Farewell>,
    /// The id the peer must prove it holds the key of
    /// ([`super::Command::ConnectProven`]).
    pub(super) must_prove: Option<PeerId>,
    /// A proven link whose `Connect` reply waits for the peer's `AuthOk`
    /// (the peer counting the link too).
    pub(super) awaits_peer_ok: bool,
    /// Whether the peer proved its id on this link.
    pub(super) proven: bool,
}

impl Conn {
    /// A new connection; `dialed` is the `Connect` command waiting for it
    /// (if any) and the address dialed, for an outgoing one.
    pub(super) fn new(dir: Direction, dialed: Option<(Option<RequestId>, PeerAddr)>) -> Self {
        let (request, target) = match dialed {
            Some((r, a)) => (r, Some(a)),
            None => (None, None),
        };
        Conn {
            dir,
            request,
            target,
            state: ConnState::Handshaking,
            addr: None,
            peer_methods: Vec::new(),
            codec: LinkCodec::HANDSHAKE,
            last_user: None,
            claimed: None,
            tree: false,
            last_rx_ms: 0,
            pinged: false,
            next_heartbeat_ms: 0,
            farewell: None,
            must_prove: None,
            awaits_peer_ok: false,
            proven: false,
        }
    }

    pub(super) fn peer(&self) -> Option<&PeerId> {
        match &self.state {
            ConnState::Established(p) => Some(p),
            ConnState::Handshaking | ConnState::Authenticating(_) => None,
        }
    }
}
