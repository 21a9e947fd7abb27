//! The pure core of rs2p: py2p 0.7's wire format and the mesh protocol as a
//! state machine.
//!
//! Nothing in this crate does I/O, reads a clock or draws OS randomness:
//! time comes in as [`Now`], randomness from a seeded RNG owned by the state
//! machine, bytes come in as [`wire::Packet`]s and go out as
//! [`node::Output`]s. The tokio driver in the `rs2p` crate is a thin loop
//! around [`node::Node`]; tests drive it directly, without sockets.
//!
//! # Layout
//! Dependencies point one way, down this list's reverse: `wire` knows
//! nothing of the machines, the machines nothing of sockets.
//! - [`wire`]: frames, msgpack values, compression, checksums (bytes ↔
//!   packets), and [`wire::message`], every protocol message's typed form.
//! - [`id`] and [`addr`]: node ids, protocol ids, message ids (base58 as
//!   py2p writes it), node addresses.
//! - [`mesh`]: the mesh protocol: handshake, peer exchange, routed replies,
//!   the connection-conflict rule, one file per rule; broadcast relaying in
//!   [`mesh::dissemination`] (flooding with deduplication).
//! - [`sync`]: the replicated dictionary (py2p's `SyncSocket`) with a total
//!   write order, tombstones and anti-entropy.
//! - [`node`]: a mesh with an optional replica on top, as one machine with
//!   one door: [`node::Node::handle`], [`node::Node::poll_output`],
//!   [`node::Node::poll_timeout`].
#![forbid(unsafe_code)]
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]
#![warn(missing_debug_implementations, rust_2018_idioms)]

pub mod addr;
pub mod id;
pub mod identity;
pub mod mesh;
pub mod node;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
#[cfg(any(test, feature = "sim"))]
pub mod sim_broadcast;
pub mod sync;
pub mod wire;

pub use rmpv::{Value, ValueRef};

/// Identifies a local command, so that its answer
/// ([`node::Output::Reply`]) can be matched to it. Chosen by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// The time, as supplied by the driver.
///
/// py2p stamps messages with wall-clock UNIX seconds, so the state machine
/// needs both that and a monotonic clock for its own deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Now {
    /// Monotonic milliseconds since an arbitrary origin (used for deadlines).
    pub mono_ms: u64,
    /// Wall-clock UNIX time (UTC) in milliseconds.
    pub unix_ms: u64,
}

impl Now {
    /// Wall-clock UNIX seconds, as written into messages.
    pub fn unix(&self) -> u64 {
        self.unix_ms / 1000
    }

    /// A time `ms` milliseconds later on both clocks.
    pub fn plus_ms(self, ms: u64) -> Now {
        Now { mono_ms: self.mono_ms + ms, unix_ms: self.unix_ms + ms }
    }
}
