//! Errors of the public API.

use rs2p_proto::id::PeerId;
use rs2p_proto::mesh::{CloseReason, PeerAddr};
use thiserror::Error;

/// Errors returned by [`crate::MeshSocket`] and its builder.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// Binding the listening socket failed (address in use, bad address).
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A connection attempt failed; the reason says why (refused, foreign
    /// subnet, timeout, ...).
    #[error("connecting to {addr} failed: {reason}")]
    Connect {
        /// Where we tried to connect.
        addr: PeerAddr,
        /// Why it failed.
        reason: CloseReason,
    },
    /// Connecting to our own address.
    #[error("refusing to connect to our own address {0}")]
    OwnAddress(PeerAddr),
    /// The peer is not directly connected.
    #[error("not connected to peer {0}")]
    NotConnected(PeerId),
    /// Too many routed replies are waiting for routes.
    #[error("too many replies waiting for a route")]
    TooManyPending,
    /// The message would exceed the frame limit ([`crate::Limits::max_frame_len`]);
    /// nothing was sent (peers close links that send them oversized frames).
    #[error("message of {len} bytes exceeds the frame limit of {max}")]
    MessageTooLarge {
        /// The frame body's size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Another node holds this key's lease (py2p's one-hour lease).
    #[error("key is leased to {owner} until UNIX time {until}")]
    Leased {
        /// The lease holder.
        owner: PeerId,
        /// When the lease ends, in UNIX seconds.
        until: u64,
    },
    /// The key holds no value.
    #[error("no such key")]
    KeyNotFound,
    /// A delta was applied to a key whose value is not a map.
    #[error("cannot apply a delta to a value that is not a map")]
    NotAMap,
    /// A message's packets could not be decoded.
    #[error(transparent)]
    Decode(#[from] rs2p_proto::wire::DecodeError),
    /// A frame given to [`crate::MeshSocket::publish`] that this node
    /// cannot publish (not a broadcast, or not from this node).
    #[error("cannot publish this frame: {0}")]
    BadFrame(&'static str),
    /// The node holds no replica of the dictionary (a dictionary command on
    /// a plain mesh node).
    #[error("this node holds no replica of the dictionary")]
    NoReplica,
    /// The node's key file could not be read, created or understood.
    #[error("key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The durable dictionary's store could not be opened, read or written
    /// (see [`crate::Fsync`]); a write whose commit failed is not
    /// acknowledged.
    #[error("dictionary store {path}: {reason}")]
    Store {
        /// The store's file or directory.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The socket was shut down (or its last handle dropped).
    #[error("the socket is closed")]
    Closed,
    /// A bug in rs2p: the named invariant did not hold.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl From<rs2p_proto::mesh::CommandError> for Error {
    fn from(e: rs2p_proto::mesh::CommandError) -> Self {
        use rs2p_proto::mesh::CommandError as C;
        match e {
            C::NotConnected(p) => Error::NotConnected(p),
            C::OwnAddress(a) => Error::OwnAddress(a),
            C::TooManyPending => Error::TooManyPending,
            C::TooLarge { len, max } => Error::MessageTooLarge { len, max },
            C::Connect { addr, reason } => Error::Connect { addr, reason },
            C::ShuttingDown => Error::Closed,
            C::BadFrame(why) => Error::BadFrame(why),
            C::NoIdentity => Error::Internal("every rs2p node has a key"),
        }
    }
}

impl From<rs2p_proto::sync::WriteError> for Error {
    fn from(e: rs2p_proto::sync::WriteError) -> Self {
        use rs2p_proto::sync::WriteError as W;
        match e {
            W::Leased { owner, until } => Error::Leased { owner, until },
            W::NotFound => Error::KeyNotFound,
            W::NotAMap => Error::NotAMap,
            W::TooLarge { len, max } => Error::MessageTooLarge { len, max },
        }
    }
}

impl From<rs2p_proto::node::CommandError> for Error {
    fn from(e: rs2p_proto::node::CommandError) -> Self {
        use rs2p_proto::node::CommandError as N;
        match e {
            N::Mesh(e) => e.into(),
            N::Sync(e) => e.into(),
            N::NoReplica => Error::NoReplica,
        }
    }
}

impl<T> From<tokio::sync::mpsc::error::SendError<T>> for Error {
    fn from(_: tokio::sync::mpsc::error::SendError<T>) -> Self {
        Error::Closed
    }
}

impl From<tokio::sync::oneshot::error::RecvError> for Error {
    fn from(_: tokio::sync::oneshot::error::RecvError) -> Self {
        Error::Closed
    }
}
