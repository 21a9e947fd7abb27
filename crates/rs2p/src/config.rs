//! Every capacity and default of the driver, in one place, and the node's
//! configuration as the [`crate::Builder`] resolves it once.

use std::time::Duration;

use rs2p_proto::mesh;
use rs2p_proto::wire::Limits;

/// Capacity of the command channel from handles to the actor. A full
/// channel makes API calls wait (backpressure on the caller).
pub(crate) const COMMAND_CHANNEL_CAP: usize = 1024;
/// Frames travel from readers to the actor, and from the actor to writers,
/// in batches of at most this many frames (one channel operation per batch
/// instead of one per frame).
pub(crate) const MAX_BATCH_FRAMES: usize = 256;
/// A batch also closes once it holds this many bytes (a larger frame
/// travels alone), so that queues counted in batches stay bounded in bytes
/// when frames are large.
pub(crate) const MAX_BATCH_BYTES: usize = 32 * 1024;
/// Capacity of the channel from connection readers to the actor, in
/// batches (at most 8,192 frames or about 1 MiB of large ones). A full
/// channel stops the readers, and TCP slows the senders.
pub(crate) const INBOUND_CHANNEL_CAP: usize = 32;
/// Capacity of the event channel, created on the first
/// [`crate::MeshSocket::events`] call (a node nobody listens to pays
/// nothing). A subscriber that falls further behind gets
/// [`crate::Event::Lagged`]; messages themselves wait in the
/// [`crate::MeshSocket::recv`] queue, not here.
pub(crate) const EVENT_CHANNEL_CAP: usize = 1024;
/// Protocol errors remembered for [`crate::Status::recent_errors`].
pub(crate) const RECENT_ERRORS: usize = 32;
/// How long the listener rests after a failed `accept` (typically out of
/// file descriptors), instead of spinning.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How long [`crate::MeshSocket::close`] waits for writers to flush.
pub(crate) const SHUTDOWN_FLUSH: Duration = Duration::from_secs(1);

/// Default capacity of each connection's send queue, in frames (see also
/// [`DEFAULT_SEND_QUEUE_BYTES`]: the queue is full at whichever bound it
/// reaches first).
pub const DEFAULT_SEND_QUEUE_CAP: usize = 4096;
/// Default capacity of each connection's send queue, in bytes. A single
/// frame larger than this still goes out, alone.
pub const DEFAULT_SEND_QUEUE_BYTES: usize = 512 * 1024;
/// Default capacity of the [`crate::MeshSocket::recv`] queue, in messages.
/// When it is full, new messages are dropped and counted in
/// [`crate::Status::dropped_messages`] (the mesh keeps relaying them).
pub const DEFAULT_RECV_QUEUE_CAP: usize = 65_536;
/// Default most connections, handshaken or not.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Default most connections that have not completed their handshake.
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 64;
/// Default time a partial frame may stall before its connection closes
/// (py2p's rule).
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time a peer's send queue may stay full, without the peer taking
/// anything from it, before the peer is disconnected as too slow.
pub const DEFAULT_SLOW_PEER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a full send queue may hold the node back (inbound reading
/// paused, senders' calls not yet answered) before the node stops waiting
/// for that peer and drops what does not fit its queue.
pub const DEFAULT_BACKPRESSURE_GRACE: Duration = Duration::from_secs(1);
/// Default time allowed for a TCP connect (and, with TLS, for its
/// handshake).
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time a new connection may take to handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the driver itself needs (the state machines have their own
/// configs, inside [`NodeConfig`]).
#[derive(Debug, Clone)]
pub(crate) struct DriverConfig {
    pub(crate) limits: Limits,
    pub(crate) max_connections: usize,
    pub(crate) max_pending: usize,
    pub(crate) tls: Option<crate::tls::Tls>,
    pub(crate) send_queue_cap: usize,
    pub(crate) send_queue_bytes: usize,
    pub(crate) stall_timeout: Duration,
    pub(crate) slow_peer_timeout: Duration,
    pub(crate) backpressure_grace: Duration,
    pub(crate) dial_timeout: Duration,
    pub(crate) recv_queue_cap: usize,
    pub(crate) queue_all_subflags: bool,
}

/// A node's whole configuration, built once by the builder: each setting
/// lives in exactly one place (the driver reads the mesh's compression list
/// and handshake deadline from the mesh config; the node hands the mesh's
/// frame limit to the replica).
#[derive(Debug, Clone)]
pub(crate) struct NodeConfig {
    pub(crate) mesh: mesh::Config,
    pub(crate) sync: Option<rs2p_proto::sync::Config>,
    pub(crate) driver: DriverConfig,
    pub(crate) seed: u64,
    /// The node's key pair; `mesh.id` is its id.
    pub(crate) identity: rs2p_proto::identity::Identity,
}

impl NodeConfig {
    /// The handshake deadline, for the TLS handshake that precedes it.
    pub(crate) fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.mesh.handshake_timeout_ms)
    }

    /// Batches a connection's send queue channel holds: as many as frames
    /// (a batch holds at least one), so the channel never fills before the
    /// frame and byte bounds, which the actor keeps.
    pub(crate) fn send_queue_batches(&self) -> usize {
        self.driver.send_queue_cap.max(1)
    }
}
