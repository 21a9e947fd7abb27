//! What a node tells its application: [`Event`]s, their stream, and the
//! node's [`Status`].

use rs2p_proto::id::PeerId;
use rs2p_proto::mesh::{CloseReason, PeerAddr, Stats};
use rs2p_proto::Value;
use tokio::sync::broadcast;

use crate::Message;

/// The event channel, created when first subscribed to.
pub(crate) type EventHub = std::sync::Arc<Hub>;

/// The node's event channels, each made on first subscription.
#[derive(Debug, Default)]
pub(crate) struct Hub {
    /// Every event ([`crate::MeshSocket::events`]).
    pub(crate) all: std::sync::OnceLock<broadcast::Sender<Event>>,
    /// Every event but messages ([`crate::MeshSocket::peer_events`]).
    pub(crate) without_messages: std::sync::OnceLock<broadcast::Sender<Event>>,
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
        reason: CloseReason,
    },
    /// A connection failed before its handshake (refused, timed out, foreign
    /// subnet, ...).
    ConnectFailed {
        /// The address we dialed, if we dialed.
        addr: Option<PeerAddr>,
        /// Why.
        reason: CloseReason,
    },
    /// A peer's send queue stayed full longer than the backpressure grace:
    /// the node stopped waiting for it, and drops what does not fit its
    /// queue until it takes some (it is disconnected if it takes nothing for
    /// the slow-peer timeout).
    PeerLagging {
        /// The peer.
        peer: PeerId,
        /// Frames dropped so far for it.
        dropped_frames: u64,
    },
    /// A user message was queued for [`crate::MeshSocket::recv`] (py2p's
    /// `message` event).
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
pub struct EventStream(pub(crate) broadcast::Receiver<Event>);

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
#[non_exhaustive]
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
    /// Messages dropped because the [`crate::MeshSocket::recv`] queue was
    /// full.
    pub dropped_messages: u64,
    /// Frames dropped because a lagging peer's send queue was full.
    pub dropped_frames: u64,
    /// Control frames (broadcast tree, keepalives) dropped because a peer's
    /// control lane was full.
    pub dropped_control: u64,
    /// Peers disconnected for not draining their send queue.
    pub slow_peers: u64,
    /// Incoming connections closed at accept (connection or handshake caps).
    pub refused_connections: u64,
    /// User broadcasts handed to the application (by a handler or the
    /// receive queue); a node's own broadcasts are not delivered to it.
    pub delivered: u64,
    /// Broadcast copies received and suppressed as already seen.
    pub duplicates: u64,
    /// Frames received, on every connection.
    pub frames_in: u64,
    /// Bytes received, on every connection (as on the wire).
    pub bytes_in: u64,
    /// Frames sent, on every connection.
    pub frames_out: u64,
    /// Bytes sent, on every connection (as on the wire).
    pub bytes_out: u64,
    /// The broadcast tree's counters (prunes, grafts, announcements), if
    /// the node runs it.
    pub tree: Option<rs2p_proto::mesh::dissemination::TreeStats>,
    /// Messages waiting in the [`crate::MeshSocket::recv`] queue.
    pub queued_messages: usize,
    /// Frames waiting in the peers' send queues (payload lane, plus those
    /// kept aside while a queue was full).
    pub queued_frames: usize,
    /// Bytes in the peers' send queues (payload lane).
    pub queued_bytes: usize,
    /// The synced dictionary's counters, on a [`crate::SyncSocket`].
    pub sync: Option<SyncStatus>,
}

/// A [`crate::SyncSocket`]'s dictionary, in [`Status::sync`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncStatus {
    /// Keys holding a value.
    pub keys: usize,
    /// Anti-entropy counters.
    pub stats: rs2p_proto::sync::SyncStats,
}
