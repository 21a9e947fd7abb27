//! The pure core of rs2p: py2p 0.7's wire format and the mesh protocol as a
//! state machine.
//!
//! Nothing in this crate does I/O, reads a clock or draws OS randomness:
//! time comes in as [`Now`], randomness from a seeded RNG owned by the state
//! machine, bytes come in as [`wire::Packet`]s and go out as
//! [`mesh::Output`]s. The tokio driver in the `rs2p` crate is a thin loop
//! around [`mesh::Mesh`]; tests drive it directly, without sockets.
//!
//! # Layout
//! - [`wire`]: frames, msgpack values, compression, checksums (bytes ↔ packets).
//! - [`id`]: node ids, protocol ids and message ids, base58 as py2p writes it.
//! - [`mesh`]: the mesh protocol: handshake, peer exchange, flood broadcast
//!   with deduplication, whispers, routed replies, the connection-conflict rule.
//! - [`sync`]: the replicated dictionary (py2p's `SyncSocket`) with a total
//!   write order, tombstones and anti-entropy.
//! - [`node`]: a mesh with an optional replica on top, as one machine.
#![forbid(unsafe_code)]
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]
#![warn(missing_debug_implementations, rust_2018_idioms)]

pub mod id;
pub mod mesh;
pub mod node;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod sync;
pub mod wire;

pub use rmpv::Value;

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
