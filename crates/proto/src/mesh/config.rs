//! The mesh machine's settings.

use super::dissemination::TreeConfig;
use crate::addr::PeerAddr;
use crate::id::{PeerId, Protocol};
use crate::identity::Identity;
use crate::wire::Compression;

/// How broadcasts travel between rs2p peers (py2p peers are always
/// flooded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broadcast {
    /// py2p's flood on every link.
    Flood,
    /// An epidemic broadcast tree between rs2p peers that both advertise
    /// it (see [`super::dissemination::Tree`]), with keepalives on those
    /// links; flood toward everyone else.
    Tree,
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
    /// How often a node short of outgoing connections looks for peers to
    /// redial. Default 250 ms. (100 ms formed 100 joiners in ~105 ms instead
    /// of ~260, but a node cut off on purpose was then redialed in a loop:
    /// BENCHMARKS.md, #11.)
    pub maintain_interval_ms: u64,
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
    /// How broadcasts travel between rs2p peers. Default
    /// [`Broadcast::Tree`].
    pub broadcast: Broadcast,
    /// Settings of the broadcast tree.
    pub tree: TreeConfig,
    /// A tree link that brought nothing for this long is sent a ping (rs2p
    /// peers only; py2p peers get no traffic they do not understand).
    /// Default 3 s; 0 turns keepalives off.
    pub keepalive_interval_ms: u64,
    /// A tree link that brought nothing (not even a pong) for this long is
    /// declared dead and closed ([`super::CloseReason::Unresponsive`]), so a
    /// peer that vanished without closing its socket is routed around.
    /// Default 9 s (so it is noticed within 10 s).
    pub dead_after_ms: u64,
    /// Largest frame body this node sends (checksum + payload). Peers close
    /// a connection that sends them more than their own limit, so local
    /// messages above it are refused. Default
    /// [`crate::wire::DEFAULT_MAX_FRAME_LEN`].
    pub max_frame_len: usize,
    /// This node's key: it proves its id to rs2p peers that ask
    /// (capability `AUTH`) and asks them to prove theirs. `None`: links are
    /// not authenticated (and [`Config::allow`] cannot be used).
    pub identity: Option<Identity>,
    /// A private network: only these ids may link with this node, each
    /// proving it holds the key behind its id (so py2p peers, which cannot,
    /// are refused), and only broadcasts from them are delivered.
    pub allow: Option<std::sync::Arc<std::collections::HashSet<PeerId>>>,
    /// Sign the broadcasts this node originates (needs
    /// [`Config::identity`]; see `signed.rs`). Default on; off only to
    /// measure what signing costs.
    pub sign_broadcasts: bool,
    /// Deliver only broadcasts covered by their sender's signature, and
    /// refuse links with peers that do not sign (py2p peers, by design).
    /// Needs [`Config::identity`]. Default off.
    pub require_signed: bool,
    /// How long a broadcast from a sender known to sign waits for its
    /// signature before it is dropped. Default 5 s.
    pub signature_wait_ms: u64,
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
            maintain_interval_ms: 250,
            peer_request_interval_ms: 2_000,
            redial_backoff_ms: 2_000,
            reply_timeout_ms: 30_000,
            max_pending_replies: 1024,
            max_known_peers: 1024,
            max_peer_list: 256,
            broadcast: Broadcast::Tree,
            tree: TreeConfig::default(),
            keepalive_interval_ms: 3_000,
            dead_after_ms: 9_000,
            max_frame_len: crate::wire::DEFAULT_MAX_FRAME_LEN,
            identity: None,
            allow: None,
            sign_broadcasts: true,
            require_signed: false,
            signature_wait_ms: 5_000,
        }
    }
}
