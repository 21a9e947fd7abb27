//! A node: the mesh state machine, with the sync replica layered on top,
//! behind one door.
//!
//! [`Node::handle`] takes every [`Input`]: network events go to the mesh;
//! the mesh's deliveries with sync sub-flags and its peer events go to the
//! replica; the replica's writes go back into the mesh; local commands go
//! to whichever machine they are for. The driver drains one stream of
//! [`Output`]s and wakes the node at [`Node::poll_timeout`].

use std::collections::VecDeque;

use crate::mesh::{self, Mesh};
use crate::sync::{self, Replica};
use crate::wire::{Packet, SubFlag};
use crate::{Now, RequestId};

/// Something that happens to a node (see [`mesh::Input`]), its commands
/// being [`Command`]s.
pub type Input = mesh::Input<Command>;

/// A local command, for the mesh or for the dictionary.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// A mesh command.
    Mesh(mesh::Command),
    /// A write to the dictionary (sync nodes only).
    Sync(sync::Command),
}

impl From<mesh::Command> for Command {
    fn from(c: mesh::Command) -> Self {
        Command::Mesh(c)
    }
}

impl From<sync::Command> for Command {
    fn from(c: sync::Command) -> Self {
        Command::Sync(c)
    }
}

/// What a successful command gives back.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A mesh command's result.
    Mesh(mesh::Reply),
    /// A dictionary write's result.
    Sync(sync::Reply),
}

/// Why a command failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The mesh refused or failed it.
    #[error(transparent)]
    Mesh(#[from] mesh::CommandError),
    /// The dictionary refused it.
    #[error(transparent)]
    Sync(#[from] sync::WriteError),
    /// A dictionary command to a node without a replica.
    #[error("this node holds no replica of the dictionary")]
    NoReplica,
}

/// What the node asks of its driver, and tells its application.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A mesh action or event (never [`mesh::Output::Reply`]: those come as
    /// [`Output::Reply`]).
    Mesh(mesh::Output),
    /// A change to the replicated dictionary.
    Sync(sync::Event),
    /// The answer to a command.
    Reply {
        /// The command answered.
        request: RequestId,
        /// Its result.
        result: Result<Reply, CommandError>,
    },
}

impl From<mesh::Output> for Output {
    fn from(o: mesh::Output) -> Self {
        match o {
            mesh::Output::Reply { request, result } => {
                Output::Reply { request, result: result.map(Reply::Mesh).map_err(CommandError::Mesh) }
            }
            other => Output::Mesh(other),
        }
    }
}

/// The protocol state of one node. See the [module docs](self).
#[derive(Debug)]
pub struct Node {
    mesh: Mesh,
    sync: Option<Replica>,
    out: VecDeque<Output>,
}

fn is_sync_message(p: &Packet) -> bool {
    matches!(
        SubFlag::from_u64(p.header.subflag),
        Some(SubFlag::Store | SubFlag::Delta | SubFlag::Digest | SubFlag::Entries)
    )
}

impl Node {
    /// A node of `mesh`, with a replica if `sync` is given. The replica
    /// takes the mesh's frame limit for its writes.
    pub fn new(mut mesh: Mesh, mut sync: Option<Replica>) -> Self {
        if let Some(r) = sync.as_mut() {
            r.cfg.max_frame_len = mesh.config().max_frame_len;
            r.cfg.require_proofs |= mesh.config().require_signed;
            // A node that signs its broadcasts proves its writes too.
            let signs = mesh.config().sign_broadcasts;
            let key = mesh.config().identity.clone().filter(|k| signs && k.id() == r.me);
            if let Some(k) = key {
                r.learn_keyed(&k.id());
                r.cfg.identity = Some(k);
            }
            // Writers a restored dictionary knows as keyed sign their
            // broadcasts too: the mesh knows them from the start.
            for id in r.keyed() {
                mesh.learn_keyed(id);
            }
        }
        Node { mesh, sync, out: VecDeque::new() }
    }

    /// The mesh, to read its state.
    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// The replica, to read the dictionary (sync nodes only).
    pub fn replica(&self) -> Option<&Replica> {
        self.sync.as_ref()
    }

    /// The replica, for a driver that stores it ([`Replica::take_changes`]).
    pub fn replica_mut(&mut self) -> Option<&mut Replica> {
        self.sync.as_mut()
    }

    /// Whether dictionary changes produce [`Output::Sync`] events (on by
    /// default; a driver nobody listens to turns them off to spare a copy of
    /// every changed value).
    pub fn report_changes(&mut self, on: bool) {
        if let Some(r) = self.sync.as_mut() {
            r.set_report_changes(on);
        }
    }

    /// Feeds one input. Drain [`Node::poll_output`] afterwards.
    pub fn handle(&mut self, now: Now, input: Input) {
        let input = match input {
            mesh::Input::Command { request, command: Command::Sync(command) } => {
                match self.sync.as_mut() {
                    Some(r) => r.handle(now, sync::Input::Command { request, command }),
                    None => self.out.push_back(Output::Reply { request, result: Err(CommandError::NoReplica) }),
                }
                self.pump(now);
                return;
            }
            mesh::Input::Command { request, command: Command::Mesh(command) } => {
                mesh::Input::Command { request, command }
            }
            mesh::Input::Incoming { conn } => mesh::Input::Incoming { conn },
            mesh::Input::Dialed { dial, conn } => mesh::Input::Dialed { dial, conn },
            mesh::Input::DialFailed { dial, reason } => mesh::Input::DialFailed { dial, reason },
            mesh::Input::Packet { conn, packet } => mesh::Input::Packet { conn, packet },
            mesh::Input::Closed { conn, reason } => mesh::Input::Closed { conn, reason },
            mesh::Input::NotReading => mesh::Input::NotReading,
            mesh::Input::Timeout => {
                self.mesh.handle(now, mesh::Input::Timeout);
                if let Some(r) = self.sync.as_mut() {
                    r.handle(now, sync::Input::Timeout);
                }
                self.pump(now);
                return;
            }
        };
        self.mesh.handle(now, input);
        self.pump(now);
    }

    /// The next output. Drain after every input.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        if self.sync.is_none() {
            // Nothing to route: the mesh's queue is the node's (one move
            // less per output on the relay path).
            return self.mesh.poll_output().map(Output::from);
        }
        self.out.pop_front()
    }

    /// When the node next needs an [`mesh::Input::Timeout`] (monotonic
    /// ms), if ever.
    pub fn poll_timeout(&self) -> Option<u64> {
        let replica = self.sync.as_ref().and_then(Replica::poll_timeout);
        self.mesh.poll_timeout().into_iter().chain(replica).min()
    }

    /// Moves mesh outputs to the node's queue, routing what the replica
    /// needs through it, until both machines are quiet.
    fn pump(&mut self, now: Now) {
        let Some(replica) = self.sync.as_mut() else {
            return; // see poll_output
        };
        loop {
            let mut moved = false;
            // Before the replica reads the messages that taught them.
            for id in self.mesh.take_newly_keyed() {
                replica.learn_keyed(&id);
            }
            while let Some(o) = self.mesh.poll_output() {
                moved = true;
                match o {
                    mesh::Output::Event(mesh::Event::Message(d)) if is_sync_message(&d.packet) => {
                        replica.handle(now, sync::Input::Message { conn: d.conn, packet: d.packet });
                    }
                    mesh::Output::Event(mesh::Event::PeerUp { conn, rs2p, .. }) => {
                        replica.handle(now, sync::Input::PeerUp { conn, rs2p });
                        self.out.push_back(o.into());
                    }
                    mesh::Output::Event(mesh::Event::PeerDown { conn, .. }) => {
                        replica.handle(now, sync::Input::PeerDown { conn });
                        self.out.push_back(o.into());
                    }
                    other => self.out.push_back(other.into()),
                }
            }
            while let Some(a) = replica.poll_output() {
                moved = true;
                match a {
                    sync::Output::Broadcast(f) => {
                        self.mesh.broadcast_frame(now, f);
                    }
                    sync::Output::Send { conn, frame } => self.mesh.send_frame(conn, frame),
                    sync::Output::Event(e) => self.out.push_back(Output::Sync(e)),
                    sync::Output::Reply { request, result } => self.out.push_back(Output::Reply {
                        request,
                        result: result.map(Reply::Sync).map_err(CommandError::Sync),
                    }),
                }
            }
            // The replica's writes of this round, behind their signature.
            self.mesh.flush_signed(now);
            if !moved {
                return;
            }
        }
    }
}
