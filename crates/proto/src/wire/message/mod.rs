//! Every protocol message in its typed form: the one place where the
//! layout of a message's fields is written down.
//!
//! A [`Packet`](super::Packet) is a checked frame with a parsed header;
//! [`MeshMessage::decode`] and [`SyncMessage::decode`] read the fields after
//! the sub-flag into a typed value, and each message's `encode` writes them
//! back into a [`Frame`](super::Frame). User payloads are not decoded here:
//! they stay [`Packet`](super::Packet)s, so a relay forwards the original
//! bytes and the message id never changes.
//!
//! Decoding is strict about shape and lenient where py2p is: a handler may
//! choose to ignore a [`Malformed`] message (py2p does for most) or to close
//! the link (a malformed handshake).

mod mesh;
mod sync;

pub(crate) use mesh::ids_bytes;
pub use mesh::{Farewell, Handshake, MeshMessage, MAX_IDS_PER_MESSAGE};
pub use sync::{
    BatchNodes, Digest, EntryRecord, FieldRecord, HoldingRecord, PathNodes, Proof, ProofPath, SignedRoot, SyncMessage,
    TreeNode, WriteProof, DIGEST_BUCKETS, MAX_PROOF_PATH,
};

use bytes::Bytes;
use rmpv::Value;

use crate::id::PeerId;

/// A message whose header names a known kind but whose fields do not have
/// that kind's shape. The text names the rule that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed message: {0}")]
pub struct Malformed(pub &'static str);

/// The bytes of a str or bin value (py2p mixes the two for ids and keys).
pub(crate) fn bytes_of(v: &Value) -> Option<&[u8]> {
    match v {
        Value::Binary(b) => Some(b),
        Value::String(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// A node id field: str or bin, of an acceptable length.
pub(crate) fn peer_id_of(v: &Value) -> Option<PeerId> {
    bytes_of(v).and_then(PeerId::from_wire)
}

/// A sync key field (str or bin; py2p sends bin, accepts str).
pub(crate) fn key_of(v: &Value) -> Option<Bytes> {
    bytes_of(v).map(Bytes::copy_from_slice)
}

/// A list of integers (compression method codes); other items are skipped,
/// as py2p's membership tests skip them.
pub(crate) fn uint_list(v: &Value) -> Option<Vec<u64>> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_u64).collect())
}
