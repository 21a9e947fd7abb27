//! A node: the mesh state machine, with the sync replica layered on top.
//!
//! Inputs go to the mesh; the mesh's deliveries with sync sub-flags and its
//! peer events go to the replica; the replica's writes go back into the
//! mesh. The driver sees one stream of [`Output`]s.

use std::collections::VecDeque;

use crate::mesh::{self, CloseReason, ConnId, DialId, Mesh};
use crate::sync::{self, Replica};
use crate::wire::{subflag, Packet};
use crate::Now;

/// What the node asks of its driver.
#[derive(Debug, Clone)]
pub enum Output {
    /// A mesh action or event.
    Mesh(mesh::Output),
    /// A change to the replicated dictionary.
    Sync(sync::Event),
}

/// The protocol state of one node. See the [module docs](self).
#[derive(Debug)]
pub struct Node {
    /// The mesh.
    pub mesh: Mesh,
    /// The replica, for sync nodes.
    pub sync: Option<Replica>,
    out: VecDeque<Output>,
}

fn is_sync_message(p: &Packet) -> bool {
    matches!(p.header.subflag, subflag::STORE | subflag::DELTA | sync::SUBFLAG_DIGEST | sync::SUBFLAG_ENTRIES)
}

impl Node {
    /// A node of `mesh`, with a replica if `sync` is given.
    pub fn new(mesh: Mesh, sync: Option<Replica>) -> Self {
        Node { mesh, sync, out: VecDeque::new() }
    }

    /// The next output. Drain after every input.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        if self.sync.is_none() {
            // Nothing to route: the mesh's queue is the node's (one move
            // less per output on the relay path).
            return self.mesh.poll_output().map(Output::Mesh);
        }
        if self.out.is_empty() {
            self.pump(None);
        }
        self.out.pop_front()
    }

    /// Moves mesh outputs to the node's queue, routing what the replica
    /// needs through it. `now` is needed for replica work; without it
    /// deliveries are still routed but with the mesh's last known time.
    fn pump(&mut self, now: Option<Now>) {
        if self.sync.is_none() {
            return; // see poll_output
        }
        let now = now.unwrap_or_else(|| self.mesh.clock());
        while let Some(o) = self.mesh.poll_output() {
            let Some(replica) = self.sync.as_mut() else { return };
            match o {
                mesh::Output::Event(mesh::Event::Message(d)) if is_sync_message(&d.packet) => {
                    replica.handle(now, d.conn, &d.packet);
                }
                mesh::Output::Event(mesh::Event::PeerUp { conn, rs2p, .. }) => {
                    replica.on_peer_up(now, conn, rs2p);
                    self.out.push_back(Output::Mesh(o));
                }
                mesh::Output::Event(mesh::Event::PeerDown { conn, .. }) => {
                    replica.on_peer_down(conn);
                    self.out.push_back(Output::Mesh(o));
                }
                other => self.out.push_back(Output::Mesh(other)),
            }
            self.drain_replica(now);
        }
    }

    fn drain_replica(&mut self, now: Now) {
        let Some(replica) = self.sync.as_mut() else { return };
        while let Some(a) = replica.poll_action() {
            match a {
                sync::Action::Broadcast(f) => {
                    self.mesh.broadcast_frame(now, f);
                }
                sync::Action::Send(conn, f) => self.mesh.send_frame(conn, f),
                sync::Action::Event(e) => self.out.push_back(Output::Sync(e)),
            }
        }
    }

    /// Runs a local replica command (set, delete, delta) and floods its
    /// result.
    ///
    /// # Errors
    /// What the command returns; [`sync::WriteError::NotFound`] if this
    /// node has no replica.
    pub fn with_replica<T>(
        &mut self,
        now: Now,
        f: impl FnOnce(&mut Replica, Now) -> Result<T, sync::WriteError>,
    ) -> Result<T, sync::WriteError> {
        let replica = self.sync.as_mut().ok_or(sync::WriteError::NotFound)?;
        let r = f(replica, now);
        self.drain_replica(now);
        self.pump(Some(now));
        r
    }

    /// See [`Mesh::handle_incoming`].
    pub fn handle_incoming(&mut self, now: Now, conn: ConnId) {
        self.mesh.handle_incoming(now, conn);
        self.pump(Some(now));
    }

    /// See [`Mesh::handle_dialed`].
    pub fn handle_dialed(&mut self, now: Now, dial: DialId, conn: ConnId) {
        self.mesh.handle_dialed(now, dial, conn);
        self.pump(Some(now));
    }

    /// See [`Mesh::handle_dial_failed`].
    pub fn handle_dial_failed(&mut self, now: Now, dial: DialId, error: String) {
        self.mesh.handle_dial_failed(now, dial, error);
        self.pump(Some(now));
    }

    /// See [`Mesh::handle_closed`].
    pub fn handle_closed(&mut self, now: Now, conn: ConnId, reason: CloseReason) {
        self.mesh.handle_closed(now, conn, reason);
        self.pump(Some(now));
    }

    /// See [`Mesh::handle_packet`].
    pub fn handle_packet(&mut self, now: Now, conn: ConnId, packet: Packet) {
        self.mesh.handle_packet(now, conn, packet);
        self.pump(Some(now));
    }

    /// See [`Mesh::handle_tick`]; also ticks the replica.
    pub fn handle_tick(&mut self, now: Now) {
        self.mesh.handle_tick(now);
        self.pump(Some(now));
        if let Some(r) = self.sync.as_mut() {
            r.handle_tick(now);
        }
        self.drain_replica(now);
        self.pump(Some(now));
    }
}
