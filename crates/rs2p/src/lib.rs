//! rs2p: a peer-to-peer mesh network that speaks py2p 0.7's wire protocol.
//!
//! A [`MeshSocket`] is a node of a self-organising mesh of TCP peers: it
//! floods broadcasts to every node, whispers to direct peers, routes replies
//! to nodes it is not connected to, and keeps itself connected as nodes come
//! and go. It interoperates with Python py2p 0.7.878 nodes on the same
//! subnet.
//!
//! ```no_run
//! use rs2p::{MeshSocket, Value};
//!
//! # async fn demo() -> Result<(), rs2p::Error> {
//! let a = MeshSocket::builder().bind("127.0.0.1:0").spawn().await?;
//! let b = MeshSocket::builder().bind("127.0.0.1:0").spawn().await?;
//! b.connect(a.out_addr().clone()).await?;
//!
//! a.broadcast(vec![Value::from("hello"), Value::Binary(b"bytes".to_vec())]).await?;
//! let msg = b.next_message().await.expect("node running");
//! println!("{} says {:?}", msg.sender(), msg.packets()?);
//! msg.reply(vec![Value::from("hi back")]).await?;
//! # Ok(()) }
//! ```
//!
//! # The synced dictionary
//! A [`SyncSocket`] (py2p's `SyncSocket`) holds a replica of a dictionary
//! shared by every node of its network: `set`, `get`, `delete`, `update`,
//! `pop`, `apply_delta`, ... apply locally at once and flood to the others;
//! [`Event::Update`] and [`Event::Delete`] report changes. It speaks py2p's
//! sync messages, so py2p `SyncSocket`s share the same dictionary.
//!
//! **Consistency model.** Between rs2p nodes the dictionary is *strongly
//! eventually consistent*: every write carries a version (millisecond
//! hybrid clock, then owner id, then value bytes: a total order), deletes
//! are kept as tombstones (24 h by default), deltas keep per-field
//! versions, and anti-entropy (digest comparison on every new rs2p link and
//! every 2 s with a random rs2p peer) repairs whatever a node missed. So:
//! replicas that have exchanged the same writes are identical, whatever the
//! order they arrived in; after a partition heals every rs2p replica
//! converges; and a write acknowledged by `set` is never lost while any
//! node holding it stays in the network, unless a lease takes it back.
//! Reads are local and may lag. Leases bind every write, local or received,
//! by one rule every replica applies alike whatever the order of arrival:
//! during a partition two sides may both take a free key, and after the
//! heal the side that took it first keeps it everywhere (the other side's
//! writes to it are withdrawn). A node cut off for longer than the
//! tombstone lifetime may bring back a key deleted meanwhile.
//!
//! py2p nodes in the network keep py2p's weaker rules: they see our writes
//! as ordinary second-resolution stores, apply py2p's lease check, forget
//! deletes, and are repaired only by py2p's per-key state transfer when a
//! connection opens (rs2p sends it to py2p peers). They can disagree with
//! the rs2p replicas after concurrent writes or a partition. rs2p judges
//! the writes of py2p nodes by its own lease rule (by py2p's lease check
//! without leases). The full protocol is described in [`proto::sync`].
//!
//! # Layout
//! - `rs2p-proto` (re-exported as [`proto`]): the pure core: the wire
//!   format, the mesh and sync state machines, one door in
//!   ([`proto::node::Node::handle`]), no I/O, no clock.
//! - this crate: the tokio driver and the public handles, one concept a
//!   file. `actor.rs`: the one task that owns a node's state; it feeds inputs
//!   to the core and dispatches its outputs, and never awaits a peer.
//!   `conn.rs`: a reader and a writer task per connection. `transport.rs`:
//!   dials and TLS accepts, tracked tasks. `command.rs`: what handles ask of
//!   the actor. `config.rs`: every capacity and default, and the
//!   configuration built once. `clock.rs`: the one place time is read.
//!   `socket.rs`, `builder.rs`, `sync_socket.rs`, `message.rs`, `event.rs`:
//!   the public API.
//!
//! # Queues and limits
//! Every queue is bounded; the capacities are documented in `config.rs` and
//! tuned through the [`Builder`]. A peer whose send queue is full holds the
//! node back for at most [`Builder::backpressure_grace`] (inbound reading
//! paused, local sends answered once there is room, queries answered at
//! once), then what does not fit is dropped and counted
//! ([`Status::dropped_frames`], [`Event::PeerLagging`]); a peer that takes
//! nothing for the slow-peer timeout is disconnected. A full
//! [`MeshSocket::recv`] queue drops new messages and counts them in
//! [`Status::dropped_messages`].
#![forbid(unsafe_code)]
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]
#![warn(missing_debug_implementations, rust_2018_idioms)]

mod actor;
mod builder;
mod clock;
mod command;
mod config;
mod conn;
mod error;
mod event;
mod inbox;
#[cfg(feature = "json")]
pub mod json;
mod key_file;
mod message;
mod socket;
mod store;
mod sync_socket;
pub mod tls;
mod transport;

pub use builder::Builder;
pub use config::{
    DEFAULT_BACKPRESSURE_GRACE, DEFAULT_DIAL_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PENDING_HANDSHAKES, DEFAULT_RECV_QUEUE_CAP, DEFAULT_SEND_QUEUE_BYTES, DEFAULT_SEND_QUEUE_CAP,
    DEFAULT_SLOW_PEER_TIMEOUT, DEFAULT_STALL_TIMEOUT,
};
pub use error::Error;
pub use event::{Event, EventStream, Status, SyncStatus};
pub use message::{Handler, Message, MessageKind};
pub use rs2p_proto as proto;
pub use rs2p_proto::id::{Encryption, MsgId, PeerId, Protocol};
pub use rs2p_proto::mesh::dissemination::{TreeConfig, TreeStats};
pub use rs2p_proto::mesh::{AddrParseError, Broadcast, CloseReason, PeerAddr, PeerInfo, ReplyRoute, Stats, TlsFailure};
pub use rs2p_proto::wire::{Compression, Limits};
pub use rs2p_proto::Value;
pub use socket::{MeshSocket, Pending};
pub use store::{Fsync, OnCorrupt};
pub use sync_socket::{SyncBuilder, SyncSocket};
pub use tls::TlsConfig;
