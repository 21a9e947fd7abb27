//! py2p 0.7's wire format: frames, msgpack payloads, compression.
//!
//! A frame on a TCP stream is `[4-byte big-endian length N][N bytes]`; the N
//! bytes are, before optional compression, `[sha256(payload)][payload]`, and
//! the payload is one msgpack array `[msg_type, sender, time, subflag,
//! packets...]`. The sha256 is the message id; relays forward the payload
//! bytes untouched so the id never changes.
//!
//! Everything here is pure: [`FrameDecoder`] turns bytes into [`Packet`]s,
//! [`Frame::build`] turns values into bytes. Every check on remote input is a
//! [`DecodeError`], never a panic.

mod compress;
mod frame;
pub mod msgpack;

pub use compress::{compress, decompress, detect, Compression};
pub use frame::{Frame, FrameDecoder, Header, Packet};

use thiserror::Error;

/// Message types (`packets[0]`): how a frame travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MsgType {
    /// Flooded to the whole network and deduplicated.
    Broadcast = 0x00,
    /// Link maintenance (compression renegotiation, resend requests).
    Renegotiate = 0x01,
    /// Point to point, not relayed.
    Whisper = 0x02,
    /// Reserved by py2p, unused.
    Ping = 0x03,
    /// Reserved by py2p, unused.
    Pong = 0x04,
}

impl MsgType {
    /// The message type for a wire value, if it is one py2p defines.
    pub fn from_u64(v: u64) -> Option<Self> {
        Some(match v {
            0 => MsgType::Broadcast,
            1 => MsgType::Renegotiate,
            2 => MsgType::Whisper,
            3 => MsgType::Ping,
            4 => MsgType::Pong,
            _ => return None,
        })
    }
}

/// Sub-flags (`packets[3]`): what a message means. Values below
/// [`subflag::RESERVED_BELOW`] belong to the protocol.
pub mod subflag {
    /// User broadcast (also a message type).
    pub const BROADCAST: u64 = 0x00;
    /// Compression renegotiation.
    pub const COMPRESSION: u64 = 0x01;
    /// User whisper (also a message type).
    pub const WHISPER: u64 = 0x02;
    /// Reserved by py2p.
    pub const PING: u64 = 0x03;
    /// Reserved by py2p.
    pub const PONG: u64 = 0x04;
    /// Handshake, sent by both ends of a new connection.
    pub const HANDSHAKE: u64 = 0x05;
    /// Reserved by py2p (unused by mesh).
    pub const NOTIFY: u64 = 0x06;
    /// A peer list.
    pub const PEERS: u64 = 0x07;
    /// A request for peers (`'*'`) or for a route to a node.
    pub const REQUEST: u64 = 0x08;
    /// A request to resend the last user message.
    pub const RESEND: u64 = 0x09;
    /// The answer to a route request.
    pub const RESPONSE: u64 = 0x0A;
    /// Sync: store a value.
    pub const STORE: u64 = 0x0B;
    /// Reserved by py2p (chord).
    pub const RETRIEVE: u64 = 0x0C;
    /// Reserved by py2p (chord).
    pub const RETRIEVED: u64 = 0x0D;
    /// Reserved by py2p (chord).
    pub const FORWARD: u64 = 0x0E;
    /// Reserved by py2p (chord).
    pub const NEW_PATHS: u64 = 0x0F;
    /// Reserved by py2p (chord).
    pub const REVOKE_PATHS: u64 = 0x10;
    /// Sync: merge a map into the map at a key.
    pub const DELTA: u64 = 0x11;
    /// Sub-flags below this value are reserved for the protocol.
    pub const RESERVED_BELOW: u64 = 0x30;
}

/// Limits applied to everything that arrives from the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame accepted, as announced by the 4-byte length prefix
    /// (compressed size). Checked before any of the body is buffered.
    pub max_frame_len: usize,
    /// Largest body accepted after decompression. Decompression stops at
    /// this cap, so a decompression bomb costs at most this much memory.
    pub max_decompressed_len: usize,
    /// Deepest nesting of msgpack arrays and maps accepted in a payload.
    pub max_depth: usize,
}

/// Default [`Limits::max_frame_len`]: 16 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 << 20;
/// Default [`Limits::max_decompressed_len`]: 32 MiB.
pub const DEFAULT_MAX_DECOMPRESSED_LEN: usize = 32 << 20;
/// Default [`Limits::max_depth`]: 64 levels.
pub const DEFAULT_MAX_DEPTH: usize = 64;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            max_decompressed_len: DEFAULT_MAX_DECOMPRESSED_LEN,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

/// Why bytes from the network were rejected. Any of these closes the
/// connection they came from.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The length prefix announced more than [`Limits::max_frame_len`].
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// Announced length.
        len: u64,
        /// Configured maximum.
        max: usize,
    },
    /// Decompression produced more than [`Limits::max_decompressed_len`].
    #[error("decompressed body exceeds the maximum of {max} bytes")]
    DecompressedTooLarge {
        /// Configured maximum.
        max: usize,
    },
    /// The body is shorter than the 32-byte checksum.
    #[error("frame body of {0} bytes is shorter than its 32-byte checksum")]
    TooShort(usize),
    /// Neither the raw body nor any enabled decompression of it matches its
    /// sha256 checksum.
    #[error("checksum mismatch (or undecodable compression)")]
    BadChecksum,
    /// The payload is not well-formed msgpack.
    #[error("malformed msgpack: {0}")]
    Msgpack(&'static str),
    /// The payload nests deeper than [`Limits::max_depth`].
    #[error("msgpack nesting deeper than {0}")]
    TooDeep(usize),
    /// The first bytes on a plaintext connection are a TLS record: the peer
    /// is on an SSL network.
    #[error("the peer speaks TLS: it is on an SSL network, this node is plaintext")]
    LooksLikeTls,
    /// The payload is msgpack but not a py2p message.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
}
