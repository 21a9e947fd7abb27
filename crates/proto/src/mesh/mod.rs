//! The py2p mesh protocol as a state machine.
//!
//! # The protocol
//! Every TCP connection starts with both ends sending a *handshake* (a
//! whisper, sub-flag 5): node id, protocol id, outward address and the
//! compression methods the sender accepts. A node refuses a peer whose
//! protocol id differs (py2p does so silently; we report the reason), then
//! records the peer and answers with its *peer list*. A node receiving a peer
//! list dials listed nodes while it has fewer than
//! [`Config::max_outgoing`] outgoing connections.
//!
//! *Broadcasts* (message type 0) are flooded: a node delivers a broadcast the
//! first time it sees its id, relays the unchanged frame to every other peer,
//! and ignores copies and broadcasts older than the 60 s window. *Whispers*
//! (type 2) go to one directly connected peer. Replying to a node one is not
//! connected to floods a route *request*; a node connected to the target
//! answers with a *response* naming its address, and the asker dials it and
//! delivers the reply.
//!
//! When two nodes dial each other at the same moment, both keep the
//! connection dialed by the node with the greater id
//! ([`resolve_conflict`]), py2p's rule.
//!
//! Beyond py2p, the machine keeps its outgoing target after losses: it
//! redials known peers (with backoff) and asks its peers for their lists
//! while it is short.
//!
//! # Where each rule lives
//! | file | rule |
//! |---|---|
//! | `config.rs` | settings and their defaults |
//! | `event.rs` | outputs, events, close reasons, command results |
//! | `conn.rs` | connection ids and per-connection state |
//! | `handshake.rs` | opening a connection, the handshake, the routing table |
//! | `conflict.rs` | the connection-conflict rule |
//! | `link.rs` | link codecs, compression renegotiation, resend |
//! | `peers.rs` | peer exchange, known peers, redial and backoff |
//! | `route.rs` | routed replies (route request and response) |
//! | `dissemination/` | which broadcasts are new and where they go (flooding) |
//!
//! Message layouts are in [`crate::wire::message`].
//!
//! # Driving it
//! One door in: [`Mesh::handle`] takes an [`Input`] (a network event, the
//! timer, or a local [`Command`] tagged with a [`RequestId`]); then drain
//! [`Mesh::poll_output`] until it returns `None`, and wake the machine with
//! [`Input::Timeout`] at [`Mesh::poll_timeout`]. Every command is answered
//! by exactly one [`Output::Reply`]. Time is always an argument.

mod auth;
mod config;
mod conflict;
mod conn;
pub mod dissemination;
mod event;
mod handshake;
mod keepalive;
mod link;
mod peers;
mod route;
mod signed;

use std::collections::{HashMap, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rmpv::Value;

pub use crate::addr::{AddrParseError, PeerAddr};
pub use auth::{auth_context, AuthFailure, MAX_HELD};
pub use config::{Broadcast, Config};
pub use conflict::{resolve_conflict, Keep};
pub use conn::{ConnId, ConnMap, DialId, Direction};
pub use event::{
    CloseReason, CommandError, Delivery, Event, Lane, Output, PeerInfo, Reply, ReplyRoute, Stats, TlsFailure,
};
pub use link::LinkCodec;
pub use signed::{signatures_context, MAX_HELD_UNSIGNED, MAX_KEYED, MAX_SIGNED_WAITING};

use conn::{Conn, ConnState};
use dissemination::{Dissemination, Flood, Push, TreeControl, Verdict};
use peers::KnownPeer;
use route::PendingReply;

use crate::id::{MsgId, PeerId, ProtocolId};
use crate::wire::message::{Farewell, MeshMessage};
use crate::wire::{Frame, MsgType, Packet, SubFlag};
use crate::{Now, RequestId};
use link::is_rs2p;

/// Something that happens to a node: the one door into the machines
/// ([`Mesh::handle`], and [`crate::node::Node::handle`] with the node's own
/// command type `C`).
#[derive(Debug, Clone, PartialEq)]
pub enum Input<C = Command> {
    /// An incoming connection was accepted as `conn`.
    Incoming {
        /// The new connection.
        conn: ConnId,
    },
    /// The dial `dial` succeeded as connection `conn`.
    Dialed {
        /// The dial.
        dial: DialId,
        /// The new connection.
        conn: ConnId,
    },
    /// The dial `dial` failed.
    DialFailed {
        /// The dial.
        dial: DialId,
        /// Why.
        reason: CloseReason,
    },
    /// A checked packet arrived on `conn`.
    Packet {
        /// The connection.
        conn: ConnId,
        /// The packet.
        packet: Packet,
    },
    /// The driver closed `conn` (remote close, I/O error, decode error).
    Closed {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// The driver is not taking input from its connections at the moment
    /// (backpressure: a send queue is full), so a link's silence is not its
    /// peer's doing: no peer is counted silent for that time. Fed before
    /// each [`Input::Timeout`] while it lasts (the driver's grace bounds it).
    NotReading,
    /// The time [`Mesh::poll_timeout`] asked for has come (early or repeated
    /// timeouts are harmless).
    Timeout,
    /// A local command; answered by one [`Output::Reply`] for `request`.
    Command {
        /// Echoed in the reply.
        request: RequestId,
        /// What to do.
        command: C,
    },
}

/// What the local application asks of the mesh.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Dial `addr` (expecting `expected` there, if given); answered with
    /// [`Reply::Connected`] once the handshake completes.
    Connect {
        /// Where.
        addr: PeerAddr,
        /// The id expected there.
        expected: Option<PeerId>,
    },
    /// Dial `addr`, where `id` must be, and have the peer prove it holds
    /// the key behind `id` (rs2p peers with a key only: anything else is
    /// refused, [`AuthFailure`]); answered as [`Command::Connect`].
    ConnectProven {
        /// Where.
        addr: PeerAddr,
        /// The id that must be there.
        id: PeerId,
    },
    /// Flood `packets` with `subflag` to the whole network; answered with
    /// [`Reply::Sent`]. User broadcasts use [`SubFlag::Broadcast`].
    Broadcast {
        /// The sub-flag.
        subflag: u64,
        /// The packets after it.
        packets: Vec<Value>,
    },
    /// Flood several user broadcasts; answered with [`Reply::SentMany`]
    /// (stops at the first refused message: the ones before it are sent).
    BroadcastMany {
        /// Each message's packets.
        messages: Vec<Vec<Value>>,
    },
    /// Whisper `packets` with `subflag` to a directly connected peer;
    /// answered with [`Reply::Sent`]. User whispers use
    /// [`SubFlag::Whisper`].
    Whisper {
        /// The peer.
        peer: PeerId,
        /// The sub-flag.
        subflag: u64,
        /// The packets.
        packets: Vec<Value>,
    },
    /// Flood a broadcast frame the application built itself (so it can
    /// encode on its own thread and check the size before it hands the
    /// frame over); answered with [`Reply::Sent`]. The frame must be a
    /// broadcast whose sender is this node, within the frame limit.
    Publish {
        /// The frame.
        frame: Frame,
    },
    /// Whisper `packets` to `to`, directly if connected, otherwise by
    /// flooding a route request, dialing the node that answers and sending
    /// once the handshake completes (py2p's `Message.reply`, which is broken
    /// on Python 3 for the unconnected case); answered with
    /// [`Reply::Routed`].
    Reply {
        /// The recipient.
        to: PeerId,
        /// The packets.
        packets: Vec<Value>,
    },
    /// Ask every peer for its peer list (py2p's `request_peers`).
    RequestPeers,
    /// Peers to know of, as if a peer list had named them: dialed while
    /// short of outgoing links, and redialed with back-off (a node
    /// restarted from its data directory remembers its peers this way).
    Remember {
        /// Each peer's address and id.
        peers: Vec<(PeerAddr, PeerId)>,
    },
    /// Close the connection to `peer` and forget it as a redial candidate.
    Disconnect {
        /// The peer.
        peer: PeerId,
    },
    /// Close every connection (py2p's `close`).
    Shutdown,
}

/// The mesh protocol state of one node. See the [module docs](self).
#[derive(Debug)]
pub struct Mesh {
    cfg: Config,
    protocol_id: ProtocolId,
    rng: StdRng,
    conns: ConnMap<Conn>,
    routing: HashMap<PeerId, ConnId>,
    dials: HashMap<DialId, peers::PendingDial>,
    next_dial: u64,
    known: HashMap<PeerId, KnownPeer>,
    dissemination: Box<dyn Dissemination>,
    /// Route requests we sent, by request id.
    requests: HashMap<Vec<u8>, PendingReply>,
    /// Replies whose route was found, waiting for the handshake.
    deferred: HashMap<PeerId, Vec<PendingReply>>,
    /// Peers whose link the other end closed because the conflict rule kept
    /// another one (it said [`Farewell::Replaced`]): their `PeerDown` waits
    /// until the handshake deadline for the link that replaces it, and is
    /// never told if that link comes up.
    replacing: HashMap<PeerId, (u64, ConnId, CloseReason)>,
    /// Deadlines of route requests, in the order they were made (so
    /// monotonic); entries of answered requests linger harmlessly.
    reply_deadlines: VecDeque<u64>,
    /// Handshake deadlines, in the order connections opened (monotonic).
    handshake_deadlines: VecDeque<(u64, ConnId)>,
    next_peer_request_ms: u64,
    next_maintain_ms: u64,
    next_liveness_ms: u64,
    /// Established links that speak the tree (and keepalives).
    tree_links: usize,
    /// The latest time an input brought; used where an action has no `now`.
    clock: Now,
    /// Reused buffer for what the dissemination strategy sends.
    pushes: Vec<Push>,
    out: VecDeque<Output>,
    stats: Stats,
    /// Signing our broadcasts and checking others' (`signed.rs`).
    signing: signed::Signing,
}

impl Mesh {
    /// A node with `cfg`; `seed` seeds all of its randomness.
    pub fn new(cfg: Config, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let seen_keep_ms = (cfg.broadcast_window_secs + cfg.max_clock_skew_secs) * 1000;
        let key = rng.random();
        let dissemination: Box<dyn Dissemination> = match cfg.broadcast {
            Broadcast::Flood => Box::new(Flood::new(seen_keep_ms, cfg.seen_capacity, key)),
            Broadcast::Tree => Box::new(dissemination::Tree::new(cfg.tree, seen_keep_ms, cfg.seen_capacity, key)),
        };
        let mut signing = signed::Signing::default();
        if cfg.sign_broadcasts && cfg.identity.is_some() {
            // A message claiming our id without our signature is a forgery.
            signing.learn(&cfg.id);
        }
        Mesh {
            protocol_id: cfg.protocol.id(),
            cfg,
            rng,
            conns: ConnMap::default(),
            routing: HashMap::new(),
            dials: HashMap::new(),
            next_dial: 0,
            known: HashMap::new(),
            dissemination,
            requests: HashMap::new(),
            deferred: HashMap::new(),
            replacing: HashMap::new(),
            reply_deadlines: VecDeque::new(),
            handshake_deadlines: VecDeque::new(),
            next_peer_request_ms: 0,
            next_maintain_ms: 0,
            next_liveness_ms: 0,
            tree_links: 0,
            clock: Now::default(),
            pushes: Vec::new(),
            out: VecDeque::new(),
            stats: Stats::default(),
            signing,
        }
    }

    // ----- the door ---------------------------------------------------------

    /// Feeds one input. Drain [`Mesh::poll_output`] afterwards.
    pub fn handle(&mut self, now: Now, input: Input) {
        self.clock = self.clock.max(now);
        match input {
            Input::Incoming { conn } => self.open(now, conn, Conn::new(Direction::Incoming, None)),
            Input::Dialed { dial, conn } => match self.dials.remove(&dial) {
                Some(d) => {
                    let mut c = Conn::new(Direction::Outgoing, Some((d.request, d.addr)));
                    c.must_prove = if d.prove { d.expected } else { None };
                    self.open(now, conn, c)
                }
                // A dial we no longer care about (shutdown): drop the connection.
                None => self.out.push_back(Output::Close { conn, reason: CloseReason::Shutdown }),
            },
            Input::DialFailed { dial, reason } => self.on_dial_failed(now, dial, reason),
            Input::Packet { conn, packet } => self.on_packet(now, conn, packet),
            Input::Closed { conn, reason } => {
                if reason.is_misbehaviour() {
                    self.stats.protocol_errors += 1;
                }
                if let Some(c) = self.conns.remove(&conn) {
                    // A peer that said goodbye closed on purpose: say so.
                    let reason = match (c.farewell, &reason) {
                        (Some(why), CloseReason::ClosedByPeer | CloseReason::Io(_)) => CloseReason::PeerLeft(why),
                        _ => reason,
                    };
                    self.forget(now, conn, c, reason);
                }
            }
            Input::NotReading => {
                for c in self.conns.values_mut() {
                    c.last_rx_ms = c.last_rx_ms.max(now.mono_ms);
                }
            }
            Input::Timeout => self.on_timeout(now),
            Input::Command { request, command } => self.on_command(now, request, command),
        }
        // Our broadcasts of this input, behind their signature.
        self.flush_signed(now);
        // What the strategy batched during this input (announcements).
        let mut pushes = std::mem::take(&mut self.pushes);
        self.dissemination.flush(now, &mut pushes);
        self.apply_pushes(now, &mut pushes, false, false);
        self.pushes = pushes;
    }

    /// The next action for the driver. Drain it after every input.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When the machine next needs an [`Input::Timeout`] (monotonic ms), if
    /// ever: handshake deadlines, route-request expiry, redials while short
    /// of outgoing connections, and the dissemination strategy's upkeep.
    pub fn poll_timeout(&self) -> Option<u64> {
        let maintain = (self.cfg.maintain_outgoing && self.outgoing_count() < self.cfg.max_outgoing)
            .then_some(self.next_maintain_ms);
        let liveness = (self.tree_links > 0 && self.cfg.keepalive_interval_ms > 0).then_some(self.next_liveness_ms);
        [
            self.handshake_deadlines.front().map(|&(t, _)| t),
            self.reply_deadlines.front().copied(),
            self.replacing.values().map(|&(t, _, _)| t).min(),
            maintain,
            liveness,
            self.dissemination.poll_timeout(),
            self.signing.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ----- reads ------------------------------------------------------------

    /// This node's id.
    pub fn id(&self) -> &PeerId {
        &self.cfg.id
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// This node's protocol id.
    pub fn protocol_id(&self) -> &ProtocolId {
        &self.protocol_id
    }

    /// The latest time an input brought.
    pub fn clock(&self) -> Now {
        self.clock
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The routing table: every handshaken peer.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let mut v: Vec<PeerInfo> = self
            .routing
            .iter()
            .filter_map(|(id, c)| {
                let conn = self.conns.get(c)?;
                Some(PeerInfo {
                    id: id.clone(),
                    addr: conn.addr.clone(),
                    outgoing: conn.dir == Direction::Outgoing,
                    conn: *c,
                    rs2p: link::is_rs2p(&conn.peer_methods),
                    tree: conn.tree,
                })
            })
            .collect();
        v.sort_by_key(|a| a.conn);
        v
    }

    /// Number of handshaken peers.
    pub fn peer_count(&self) -> usize {
        self.routing.len()
    }

    /// The connection to `peer`, if handshaken.
    pub fn conn_of(&self, peer: &PeerId) -> Option<ConnId> {
        self.routing.get(peer).copied()
    }

    /// Number of outgoing connections, counting dials and handshakes in
    /// progress (so peer exchange never overshoots the target).
    pub fn outgoing_count(&self) -> usize {
        self.dials.len() + self.conns.values().filter(|c| c.dir == Direction::Outgoing).count()
    }

    /// Number of connections that have not completed their handshake.
    pub fn handshaking_count(&self) -> usize {
        self.conns.values().filter(|c| matches!(c.state, ConnState::Handshaking)).count()
    }

    /// Number of open connections, handshaken or not.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Number of dials under way.
    pub fn dial_count(&self) -> usize {
        self.dials.len()
    }

    // ----- for the layers above (crate::node) -------------------------------

    /// Floods an already built broadcast frame of ours (a sync write): at
    /// the end of the input, behind its signature, if this node signs (a
    /// caller outside [`Mesh::handle`] calls [`Mesh::flush_signed`]).
    pub(crate) fn broadcast_frame(&mut self, now: Now, frame: Frame) -> MsgId {
        self.clock = self.clock.max(now);
        let id = frame.id();
        self.publish_own(now, frame);
        id
    }

    /// Floods `frame` now (`signatures_only`: a signature message, which
    /// goes only to peers that check them).
    fn publish_now(&mut self, now: Now, frame: &Frame, signatures_only: bool) {
        let mut pushes = std::mem::take(&mut self.pushes);
        self.dissemination.publish(now, &self.cfg.id, frame, &mut pushes);
        self.apply_pushes(now, &mut pushes, false, signatures_only);
        self.pushes = pushes;
    }

    /// Sends what the dissemination strategy asked for (`relay`: counted as
    /// relayed payload; `signatures_only`: payload goes only to peers that
    /// take signature messages).
    fn apply_pushes(&mut self, now: Now, pushes: &mut Vec<Push>, relay: bool, signatures_only: bool) {
        for p in pushes.drain(..) {
            match p {
                Push::Payload(conn, _) if signatures_only && !self.takes_signatures(conn) => {}
                Push::Payload(conn, frame) => {
                    if relay {
                        self.stats.relayed += 1;
                    }
                    self.send_user(conn, frame);
                }
                Push::Repair(conn, frame) => self.send_control(conn, frame),
                Push::Control(conn, control) => {
                    let msg = match control {
                        TreeControl::IHave(groups) => MeshMessage::IHave(groups),
                        TreeControl::Graft(groups) => MeshMessage::Graft(groups),
                        TreeControl::Prune(origins) => MeshMessage::Prune(origins),
                        TreeControl::Want(groups) => MeshMessage::Want(groups),
                    };
                    // Announcements follow the broadcasts queued before them
                    // (see `TreeConfig::announce_ahead`).
                    if matches!(msg, MeshMessage::IHave(_)) && !self.cfg.tree.announce_ahead {
                        self.stats.sent += 1;
                        self.stats.control_sent += 1;
                        let frame = msg.encode(&self.cfg.id, now.unix());
                        self.out.push_back(Output::Send { conn, frame, lane: Lane::Announce });
                    } else {
                        self.send_control(conn, msg.encode(&self.cfg.id, now.unix()));
                    }
                }
            }
        }
    }

    /// The broadcast tree's counters, if the node runs it.
    pub fn tree_stats(&self) -> Option<dissemination::TreeStats> {
        self.dissemination.tree_stats()
    }

    /// Sends an already built frame on a handshaken connection (for layers
    /// above the mesh); ignored if the connection is gone.
    pub(crate) fn send_frame(&mut self, conn: ConnId, frame: Frame) {
        if self.conns.get(&conn).is_some_and(|c| c.peer().is_some()) {
            self.send(conn, frame);
        }
    }

    // ----- commands ---------------------------------------------------------

    fn on_command(&mut self, now: Now, request: RequestId, command: Command) {
        let result = match command {
            Command::Connect { addr, expected } => {
                if addr == self.cfg.out_addr {
                    Err(CommandError::OwnAddress(addr))
                } else {
                    // Answered when the handshake completes or fails.
                    self.dial(addr, expected, Some(request));
                    return;
                }
            }
            Command::ConnectProven { addr, id } => {
                if addr == self.cfg.out_addr {
                    Err(CommandError::OwnAddress(addr))
                } else if !self.proves() {
                    Err(CommandError::NoIdentity)
                } else {
                    let dial = self.dial(addr, Some(id), Some(request));
                    if let Some(d) = self.dials.get_mut(&dial) {
                        d.prove = true;
                    }
                    return;
                }
            }
            Command::Broadcast { subflag, packets } => self.broadcast(now, subflag, &packets).map(Reply::Sent),
            Command::BroadcastMany { messages } => messages
                .iter()
                .map(|p| self.broadcast(now, SubFlag::Broadcast.code(), p))
                .collect::<Result<Vec<MsgId>, _>>()
                .map(Reply::SentMany),
            Command::Whisper { peer, subflag, packets } => self.whisper(now, &peer, subflag, &packets).map(Reply::Sent),
            Command::Publish { frame } => self.publish(now, frame).map(Reply::Sent),
            Command::Reply { to, packets } => self.reply(now, &to, &packets).map(Reply::Routed),
            Command::RequestPeers => {
                self.request_peers(now);
                Ok(Reply::Done)
            }
            Command::Remember { peers } => {
                self.on_peers(peers);
                Ok(Reply::Done)
            }
            Command::Disconnect { peer } => self.disconnect(&peer).map(|()| Reply::Done),
            Command::Shutdown => {
                self.shutdown();
                Ok(Reply::Done)
            }
        };
        self.out.push_back(Output::Reply { request, result });
    }

    fn broadcast(&mut self, now: Now, subflag: u64, packets: &[Value]) -> Result<MsgId, CommandError> {
        let frame = Frame::build(MsgType::Broadcast, &self.cfg.id, now.unix(), subflag, packets);
        self.check_size(&frame)?;
        Ok(self.broadcast_frame(now, frame))
    }

    fn publish(&mut self, now: Now, frame: Frame) -> Result<MsgId, CommandError> {
        self.check_size(&frame)?;
        let limits = crate::wire::Limits { max_frame_len: self.cfg.max_frame_len, ..Default::default() };
        let packet = Packet::parse(frame, &limits).map_err(|_| CommandError::BadFrame("not a well-formed frame"))?;
        if packet.header.kind() != Some(MsgType::Broadcast) {
            return Err(CommandError::BadFrame("not a broadcast"));
        }
        if &packet.header.sender != self.id() {
            return Err(CommandError::BadFrame("its sender is not this node"));
        }
        Ok(self.broadcast_frame(now, packet.frame))
    }

    fn whisper(&mut self, now: Now, peer: &PeerId, subflag: u64, packets: &[Value]) -> Result<MsgId, CommandError> {
        let conn = *self.routing.get(peer).ok_or_else(|| CommandError::NotConnected(peer.clone()))?;
        let frame = Frame::build(MsgType::Whisper, &self.cfg.id, now.unix(), subflag, packets);
        self.check_size(&frame)?;
        let id = frame.id();
        self.send_user(conn, frame);
        Ok(id)
    }

    fn check_size(&self, frame: &Frame) -> Result<(), CommandError> {
        let len = frame.body().len();
        if len > self.cfg.max_frame_len {
            return Err(CommandError::TooLarge { len, max: self.cfg.max_frame_len });
        }
        Ok(())
    }

    fn disconnect(&mut self, peer: &PeerId) -> Result<(), CommandError> {
        let conn = *self.routing.get(peer).ok_or_else(|| CommandError::NotConnected(peer.clone()))?;
        // Forget it as a redial candidate too: the user wants it gone.
        self.known.remove(peer);
        self.close(conn, CloseReason::Requested);
        Ok(())
    }

    fn shutdown(&mut self) {
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for c in conns {
            self.close(c, CloseReason::Shutdown);
        }
        for (_, d) in self.dials.drain() {
            if let Some(request) = d.request {
                self.out.push_back(Output::Reply { request, result: Err(CommandError::ShuttingDown) });
            }
        }
    }

    // ----- inputs -----------------------------------------------------------

    fn on_timeout(&mut self, now: Now) {
        let mut pushes = std::mem::take(&mut self.pushes);
        self.dissemination.handle_timeout(now, &mut pushes);
        self.apply_pushes(now, &mut pushes, false, false);
        self.pushes = pushes;
        self.expire_signed(now);
        self.check_liveness(now);
        while let Some(&(deadline, conn)) = self.handshake_deadlines.front() {
            if deadline > now.mono_ms {
                break;
            }
            self.handshake_deadlines.pop_front();
            if self.conns.get(&conn).is_some_and(|c| c.peer().is_none()) {
                self.close(conn, CloseReason::HandshakeTimeout);
            }
        }
        self.expire_replies(now);
        self.expire_replacements(now);
        if self.cfg.maintain_outgoing && now.mono_ms >= self.next_maintain_ms {
            self.next_maintain_ms = now.mono_ms + self.cfg.maintain_interval_ms;
            self.maintain(now);
        }
    }

    fn on_packet(&mut self, now: Now, conn: ConnId, packet: Packet) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return; // closed meanwhile
        };
        // Any frame is a sign of life.
        c.last_rx_ms = now.mono_ms;
        c.pinged = false;
        let tree = c.tree;
        if matches!(c.state, conn::ConnState::Authenticating(_)) {
            return self.on_proving(now, conn, packet);
        }
        if c.peer().is_none() {
            if packet.header.is(MsgType::Whisper, SubFlag::Handshake) {
                match MeshMessage::decode(&packet) {
                    Ok(Some(MeshMessage::Handshake(hs))) => self.on_handshake(now, conn, hs),
                    Err(e) => self.violation(conn, e.0),
                    Ok(_) => self.violation(conn, "undecodable handshake"),
                }
            } else {
                self.violation(conn, "message before handshake");
            }
            return;
        }
        match packet.header.kind() {
            Some(MsgType::Broadcast) => self.on_broadcast(now, conn, packet),
            Some(MsgType::Whisper) => match MeshMessage::decode(&packet) {
                Ok(None) => {
                    // A whisper is its sender's if it came on the link the
                    // sender proved.
                    let verified = self.conns.get(&conn).is_some_and(|c| c.proven)
                        && self.routing.get(&packet.header.sender) == Some(&conn);
                    self.deliver(conn, packet, verified)
                }
                Ok(Some(MeshMessage::Peers(list))) => self.on_peers(list),
                Ok(Some(MeshMessage::PeerRequest)) => self.send_peers(now, conn),
                Ok(Some(MeshMessage::IHave(groups))) if tree => {
                    self.tree_control(now, conn, TreeControl::IHave(groups))
                }
                Ok(Some(MeshMessage::Graft(groups))) if tree => {
                    self.tree_control(now, conn, TreeControl::Graft(groups))
                }
                Ok(Some(MeshMessage::Prune(origins))) if tree => {
                    self.tree_control(now, conn, TreeControl::Prune(origins))
                }
                Ok(Some(MeshMessage::Want(groups))) if tree => self.tree_control(now, conn, TreeControl::Want(groups)),
                Ok(Some(MeshMessage::Goodbye(why))) => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.farewell = Some(why);
                    }
                }
                Ok(Some(MeshMessage::AuthOk)) => self.on_peer_ok(conn),
                // A repeated handshake, tree messages on a link that did
                // not negotiate the tree, or junk: nothing to act on (py2p
                // ignores such messages too).
                Ok(Some(_)) | Err(_) => {}
            },
            Some(MsgType::Renegotiate) => match MeshMessage::decode(&packet) {
                Ok(Some(MeshMessage::Compression(methods))) => self.on_compression(now, conn, methods),
                Ok(Some(MeshMessage::Resend)) => self.on_resend(conn),
                Err(_) if packet.header.subflag == SubFlag::Compression.code() => {
                    self.violation(conn, "compression renegotiation")
                }
                _ => {}
            },
            // Keepalives, on tree links; py2p reserves these types and
            // never sends them.
            Some(MsgType::Ping) if tree => self.send_control(conn, MeshMessage::Pong.encode(&self.cfg.id, now.unix())),
            Some(MsgType::Ping | MsgType::Pong) | None => {}
        }
    }

    fn tree_control(&mut self, now: Now, conn: ConnId, control: TreeControl) {
        let mut pushes = std::mem::take(&mut self.pushes);
        self.dissemination.on_control(now, conn, control, &mut pushes);
        self.apply_pushes(now, &mut pushes, false, false);
        self.pushes = pushes;
    }

    fn on_broadcast(&mut self, now: Now, conn: ConnId, packet: Packet) {
        let h = &packet.header;
        if h.time.saturating_add(self.cfg.broadcast_window_secs) < now.unix()
            || h.time > now.unix().saturating_add(self.cfg.max_clock_skew_secs)
        {
            self.stats.stale += 1;
            return;
        }
        if self.cfg.allow.is_some() && !self.sender_allowed(&h.sender) {
            return;
        }
        if h.subflag == SubFlag::Signatures.code() {
            return self.on_signatures(now, conn, packet);
        }
        // The original sender's own link gets no copy back (the lookup only
        // matters with other peers).
        let origin = if self.routing.len() > 1 { self.routing.get(&h.sender).copied() } else { None };
        let mut pushes = std::mem::take(&mut self.pushes);
        let verdict = self.dissemination.receive(now, conn, origin, &h.sender, &packet.frame, &mut pushes);
        self.apply_pushes(now, &mut pushes, true, false);
        self.pushes = pushes;
        if verdict == Verdict::Duplicate {
            self.stats.duplicates += 1;
            return;
        }
        self.check_signed(now, conn, packet);
    }

    /// A fresh broadcast whose signature was settled (`signed.rs`): to the
    /// mesh's own handlers or to the layers above.
    fn dispatch_broadcast(&mut self, now: Now, conn: ConnId, packet: Packet, verified: bool) {
        match MeshMessage::decode(&packet) {
            Ok(None) => self.deliver(conn, packet, verified),
            Ok(Some(MeshMessage::RouteRequest { request_id, wanted })) => {
                self.on_route_request(now, conn, request_id, &wanted)
            }
            Ok(Some(MeshMessage::RouteResponse { request_id, addr, id })) => {
                self.on_route_response(request_id, addr, id)
            }
            Ok(Some(_)) | Err(_) => {}
        }
    }

    // ----- helpers ----------------------------------------------------------

    fn send(&mut self, conn: ConnId, frame: Frame) {
        self.stats.sent += 1;
        self.out.push_back(Output::Send { conn, frame, lane: Lane::Payload });
    }

    /// Sends a control frame (tree, keepalive) ahead of queued payload.
    fn send_control(&mut self, conn: ConnId, frame: Frame) {
        self.stats.sent += 1;
        self.stats.control_sent += 1;
        self.out.push_back(Output::Send { conn, frame, lane: Lane::Control });
    }

    fn send_user(&mut self, conn: ConnId, frame: Frame) {
        // Kept for py2p's resend request; rs2p peers never ask, so their
        // links skip the copy.
        if let Some(c) = self.conns.get_mut(&conn) {
            if !c.codec.coalesce {
                c.last_user = Some(frame.clone());
            }
        }
        self.send(conn, frame);
    }

    fn deliver(&mut self, conn: ConnId, packet: Packet, verified: bool) {
        self.stats.delivered += 1;
        let for_application = SubFlag::is_user(packet.header.subflag);
        self.event(Event::Message(Delivery { conn, packet, for_application, verified }));
    }

    fn event(&mut self, e: Event) {
        self.out.push_back(Output::Event(e));
    }

    fn violation(&mut self, conn: ConnId, what: &'static str) {
        self.stats.protocol_errors += 1;
        tracing::debug!(?conn, what, "closing connection: protocol violation");
        self.close(conn, CloseReason::ProtocolViolation(what));
    }

    /// Closes `conn` now: the machine forgets it and tells the driver.
    fn close(&mut self, conn: ConnId, reason: CloseReason) {
        if let Some(c) = self.conns.remove(&conn) {
            // rs2p peers hear why we leave on purpose (py2p would not
            // understand, so it only sees the close).
            let farewell = match reason {
                CloseReason::Shutdown => Some(Farewell::Quit),
                CloseReason::Requested => Some(Farewell::Disconnect),
                CloseReason::Duplicate => Some(Farewell::Replaced),
                _ => None,
            };
            if let (Some(why), Some(_), true) = (farewell, c.peer(), is_rs2p(&c.peer_methods)) {
                let frame = MeshMessage::Goodbye(why).encode(&self.cfg.id, self.clock.unix());
                self.send_control(conn, frame);
            }
            self.out.push_back(Output::Close { conn, reason: reason.clone() });
            self.forget(self.clock, conn, c, reason);
        }
    }
}

#[cfg(test)]
mod tests;
