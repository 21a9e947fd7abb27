//! What handles ask of the actor: the API's side of the actor protocol.
//!
//! Commands that change the node go to the state machine as a
//! [`node::Command`] and come back as one reply each, matched by request id;
//! the [`Responder`] turns that reply into the API's result type. Queries
//! are answered by the actor from the machines' state at once.

use bytes::Bytes;
use rs2p_proto::id::{MsgId, PeerId};
use rs2p_proto::mesh::{self, PeerInfo, ReplyRoute};
use rs2p_proto::node;
use rs2p_proto::{sync, Value};
use tokio::sync::oneshot;

use crate::message::Handler;
use crate::transport::Stream;
use crate::{Error, Status};

/// A request from a handle to the actor; each carries its reply channel.
pub(crate) enum Command {
    /// A command for the state machine.
    Node { command: node::Command, reply: Responder },
    /// A read of the node's state.
    Query(Query),
    /// Adopts a connected stream as an incoming connection.
    Attach { stream: Box<dyn Stream>, reply: oneshot::Sender<()> },
    /// Adds a message handler (py2p's `register_handler`).
    RegisterHandler { handler: Handler, reply: oneshot::Sender<()> },
    /// Closes every connection, flushes, stops the actor.
    Shutdown { reply: oneshot::Sender<()> },
}

/// Reads of the node's state, answered at once.
pub(crate) enum Query {
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    Status(oneshot::Sender<Status>),
    Get { key: Bytes, reply: oneshot::Sender<Option<(Value, PeerId, u64)>> },
    Items(oneshot::Sender<Vec<(Bytes, Value, PeerId, u64)>>),
    Len(oneshot::Sender<usize>),
}

/// Where a state-machine command's answer goes, in the API's types.
pub(crate) enum Responder {
    Connected(oneshot::Sender<Result<PeerId, Error>>),
    Sent(oneshot::Sender<Result<MsgId, Error>>),
    SentMany(oneshot::Sender<Result<Vec<MsgId>, Error>>),
    Routed(oneshot::Sender<Result<ReplyRoute, Error>>),
    Done(oneshot::Sender<Result<(), Error>>),
    Popped(oneshot::Sender<Result<(Bytes, Value), Error>>),
}

impl Responder {
    /// Whether the command sends frames, so that its caller is held back
    /// while a peer's send queue is full (see
    /// [`crate::Builder::backpressure_grace`]).
    pub(crate) fn is_send(&self) -> bool {
        !matches!(self, Responder::Connected(_))
    }

    /// Fails the command with `err`, whatever it was.
    pub(crate) fn fail(self, err: Error) {
        match self {
            Responder::Connected(tx) => drop(tx.send(Err(err))),
            Responder::Sent(tx) => drop(tx.send(Err(err))),
            Responder::SentMany(tx) => drop(tx.send(Err(err))),
            Responder::Routed(tx) => drop(tx.send(Err(err))),
            Responder::Done(tx) => drop(tx.send(Err(err))),
            Responder::Popped(tx) => drop(tx.send(Err(err))),
        }
    }

    /// Answers the caller (who may have stopped waiting: that is fine).
    pub(crate) fn answer(self, result: Result<node::Reply, node::CommandError>) {
        use node::Reply as R;
        let result = result.map_err(Error::from);
        let mismatch = || Error::Internal("reply of another kind");
        match self {
            Responder::Connected(tx) => {
                let _ = tx.send(result.and_then(|r| match r {
                    R::Mesh(mesh::Reply::Connected(p)) => Ok(p),
                    _ => Err(mismatch()),
                }));
            }
            Responder::Sent(tx) => {
                let _ = tx.send(result.and_then(|r| match r {
                    R::Mesh(mesh::Reply::Sent(id)) => Ok(id),
                    _ => Err(mismatch()),
                }));
            }
            Responder::SentMany(tx) => {
                let _ = tx.send(result.and_then(|r| match r {
                    R::Mesh(mesh::Reply::SentMany(ids)) => Ok(ids),
                    _ => Err(mismatch()),
                }));
            }
            Responder::Routed(tx) => {
                let _ = tx.send(result.and_then(|r| match r {
                    R::Mesh(mesh::Reply::Routed(route)) => Ok(route),
                    _ => Err(mismatch()),
                }));
            }
            Responder::Done(tx) => {
                let _ = tx.send(result.map(|_| ()));
            }
            Responder::Popped(tx) => {
                let _ = tx.send(result.and_then(|r| match r {
                    R::Sync(sync::Reply::Popped(k, v)) => Ok((k, v)),
                    _ => Err(mismatch()),
                }));
            }
        }
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Node { command, .. } => write!(f, "Node({command:?})"),
            Command::Query(_) => f.write_str("Query"),
            Command::Attach { .. } => f.write_str("Attach"),
            Command::RegisterHandler { .. } => f.write_str("RegisterHandler"),
            Command::Shutdown { .. } => f.write_str("Shutdown"),
        }
    }
}
