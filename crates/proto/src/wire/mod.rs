//! py2p 0.7's wire format: frames, msgpack payloads, compression.
//!
//! A frame on a TCP stream is `[4-byte big-endian length N][N bytes]`; the N
//! bytes are, before optional compression, `[sha256(payload)][payload]`, and
//! the payload is one msgpack array `[msg_type, sender, time, subflag,
//! packets...]`. The sha256 is the message id; relays forward the payload
//! bytes untouched so the id never changes.
//!
//! Everything here is pure: [`FrameDecoder`] turns bytes into [`Packet`]s,
//! [`Frame::build`] turns values into bytes, and [`message`] gives every
//! protocol message its typed form (`decode(&Packet)` / `encode(..) ->
//! Frame`). Every check on remote input is a [`DecodeError`] or a
//! [`Malformed`], never a panic.

mod compress;
mod frame;
pub mod message;
pub mod msgpack;

pub use compress::{compress, decompress, detect, Compression};
pub use frame::{Frame, FrameBuilder, FrameDecoder, Header, Packet};
pub use message::Malformed;

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

    /// The value on the wire.
    pub fn code(self) -> u64 {
        self as u64
    }
}

/// Sub-flags (`packets[3]`): what a message means. py2p's flags module,
/// plus rs2p's own (`0x20` and up, below [`SubFlag::RESERVED_BELOW`]).
///
/// Headers keep the sub-flag as a plain `u64`, because applications layered
/// on the mesh use their own values from [`SubFlag::RESERVED_BELOW`] up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SubFlag {
    /// User broadcast (also a message type).
    Broadcast = 0x00,
    /// Compression renegotiation.
    Compression = 0x01,
    /// User whisper (also a message type).
    Whisper = 0x02,
    /// Reserved by py2p.
    Ping = 0x03,
    /// Reserved by py2p.
    Pong = 0x04,
    /// Handshake, sent by both ends of a new connection.
    Handshake = 0x05,
    /// Reserved by py2p (unused by mesh).
    Notify = 0x06,
    /// A peer list.
    Peers = 0x07,
    /// A request for peers (`'*'`) or for a route to a node.
    Request = 0x08,
    /// A request to resend the last user message.
    Resend = 0x09,
    /// The answer to a route request.
    Response = 0x0A,
    /// Sync: store a value.
    Store = 0x0B,
    /// Reserved by py2p (chord).
    Retrieve = 0x0C,
    /// Reserved by py2p (chord).
    Retrieved = 0x0D,
    /// Reserved by py2p (chord).
    Forward = 0x0E,
    /// Reserved by py2p (chord).
    NewPaths = 0x0F,
    /// Reserved by py2p (chord).
    RevokePaths = 0x10,
    /// Sync: merge a map into the map at a key.
    Delta = 0x11,
    /// rs2p: anti-entropy digest (whisper, rs2p peers only).
    Digest = 0x20,
    /// rs2p: anti-entropy entries (whisper, rs2p peers only).
    Entries = 0x21,
    /// rs2p: lazy announcement of broadcast ids (broadcast tree, rs2p
    /// peers that advertise [`capability::TREE`] only).
    IHave = 0x22,
    /// rs2p: "send me these broadcasts, and from now on push to me"
    /// (broadcast tree).
    Graft = 0x23,
    /// rs2p: "stop pushing broadcasts to me, announce them" (broadcast tree).
    Prune = 0x24,
    /// rs2p: "send me these broadcasts" (broadcast tree), leaving the tree
    /// as it is.
    Want = 0x25,
    /// rs2p: "I am closing this link on purpose" (rs2p peers only), so the
    /// other end reports why the peer went away.
    Goodbye = 0x26,
    /// rs2p: proving the id on a link (a challenge, then a signed answer;
    /// peers that advertise [`capability::AUTH`] only).
    Auth = 0x27,
    /// rs2p: a node's signature over the ids of its broadcasts (a
    /// broadcast itself, relayed only to peers that advertise
    /// [`capability::CHECKS`]).
    Signatures = 0x28,
}

impl SubFlag {
    /// Sub-flags below this value are reserved for the protocol.
    pub const RESERVED_BELOW: u64 = 0x30;

    /// The sub-flag for a wire value, if the protocol defines it.
    pub fn from_u64(v: u64) -> Option<Self> {
        use SubFlag::*;
        Some(match v {
            0x00 => Broadcast,
            0x01 => Compression,
            0x02 => Whisper,
            0x03 => Ping,
            0x04 => Pong,
            0x05 => Handshake,
            0x06 => Notify,
            0x07 => Peers,
            0x08 => Request,
            0x09 => Resend,
            0x0A => Response,
            0x0B => Store,
            0x0C => Retrieve,
            0x0D => Retrieved,
            0x0E => Forward,
            0x0F => NewPaths,
            0x10 => RevokePaths,
            0x11 => Delta,
            0x20 => Digest,
            0x21 => Entries,
            0x22 => IHave,
            0x23 => Graft,
            0x24 => Prune,
            0x25 => Want,
            0x26 => Goodbye,
            0x27 => Auth,
            0x28 => Signatures,
            _ => return None,
        })
    }

    /// The value on the wire.
    pub fn code(self) -> u64 {
        self as u64
    }

    /// Whether messages with this sub-flag are the application's own: user
    /// broadcasts and whispers (not protocol traffic).
    pub fn is_user(code: u64) -> bool {
        code == SubFlag::Broadcast.code() || code == SubFlag::Whisper.code()
    }
}

/// Codes rs2p adds to the handshake's list of compression methods to say
/// what else it speaks. py2p only uses the codes it knows, so it ignores
/// these; two rs2p nodes that both advertise a code use the feature on
/// their link.
pub mod capability {
    /// rs2p itself (also the "identity" compression: uncompressed frames
    /// that may share a write).
    pub const RS2P: u64 = 0x2F;
    /// The broadcast tree (sub-flags `0x22`-`0x24`) and keepalives (message
    /// types ping `0x03` and pong `0x04`).
    pub const TREE: u64 = 0x2E;
    /// The node has a key and proves its id on the link (sub-flag `0x27`).
    pub const AUTH: u64 = 0x2D;
    /// The node signs the broadcasts it originates (sub-flag `0x28`): once
    /// it proved its id, its unsigned broadcasts are forgeries.
    pub const SIGNED: u64 = 0x2C;
    /// The node checks and relays signature messages (sub-flag `0x28`):
    /// such peers are sent them, whether or not they sign their own.
    pub const CHECKS: u64 = 0x2B;
}

impl From<SubFlag> for u64 {
    fn from(f: SubFlag) -> u64 {
        f.code()
    }
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
