//! A deterministic in-memory network of [`Node`]s, for tests.
//!
//! Frames travel through real encoding and [`FrameDecoder`]s (so the codec
//! is exercised), in order on each link (as TCP guarantees), on a virtual
//! clock that jumps from one node's [`Node::poll_timeout`] to the next. With
//! a seeded RNG ([`Sim::shuffle`]) frames of different links are
//! interleaved randomly. Links can be broken (dropping what is in flight,
//! as a connection loss does) and the network partitioned and healed. Node
//! `i` listens on `127.0.0.1:(10000 + i)`.
//!
//! Every node is honest, so a frame that fails to decode is a bug in the
//! encoder or the decoder: the simulation panics on it.
//!
//! # Latency
//! By default a frame arrives the moment [`Sim::run`] gets to it. With
//! [`Sim::set_latency`] every link gets a one-way delay (drawn once per
//! link, seeded), frames keep their order on a link, and only
//! [`Sim::advance`] moves them: the clock jumps from event to event (the
//! next frame due, the next node timer), so thousands of nodes run in
//! seconds. [`crate::sim_broadcast`] measures the broadcast tree with it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rmpv::Value;

use crate::addr::PeerAddr;
use crate::id::{PeerId, Protocol};
use crate::mesh::{self, CloseReason, Config, ConnId, Event, LinkCodec, Mesh};
use crate::node::{self, Command, CommandError, Input, Node, Reply};
use crate::sync::{self, Replica};
use crate::wire::{Compression, Frame, FrameDecoder, Limits, MsgType};
use crate::{Now, RequestId};

/// Port of node 0; node `i` listens on `BASE_PORT + i`.
pub const BASE_PORT: u16 = 10_000;

/// Most timer firings one [`Sim::advance`] may process (a guard against a
/// machine that keeps asking to be woken at once).
const MAX_WAKEUPS: usize = 10_000_000;

#[derive(Debug)]
struct Link {
    node: usize,
    peer_node: usize,
    peer_conn: ConnId,
    codec: LinkCodec,
    /// One-way delay toward the peer (timed mode).
    delay_ms: u64,
    /// When the last frame sent on it arrives (frames keep their order).
    last_arrival_ms: u64,
}

/// The timed mode's state (see the module docs).
#[derive(Debug)]
struct Timed {
    min_ms: u64,
    max_ms: u64,
    rng: StdRng,
    /// Frames in flight: (arrival, sequence, receiving end).
    frames: BinaryHeap<Reverse<(u64, u64, ConnId)>>,
    seq: u64,
    /// Node wake-ups: (deadline, node); stale entries are skipped.
    timers: BinaryHeap<Reverse<(u64, usize)>>,
    /// The deadline each node was last scheduled for.
    scheduled: Vec<Option<u64>>,
}

/// The in-memory network.
#[derive(Debug)]
pub struct Sim {
    /// The simulated nodes, by index.
    pub nodes: Vec<Node>,
    /// Mesh events each node emitted, in order.
    pub events: Vec<Vec<Event>>,
    /// When each of those events happened (monotonic ms), in step.
    pub event_ms: Vec<Vec<u64>>,
    /// The node at the far end of every connection ever made (kept after
    /// the link is gone).
    pub conn_peer: HashMap<ConnId, usize>,
    /// Sync events each node emitted, in order.
    pub sync_events: Vec<Vec<sync::Event>>,
    /// Command replies each node emitted, in order.
    pub replies: Vec<Vec<(RequestId, Result<Reply, CommandError>)>>,
    links: BTreeMap<ConnId, Link>,
    decoders: HashMap<ConnId, FrameDecoder>,
    queues: HashMap<ConnId, VecDeque<Bytes>>,
    order: VecDeque<ConnId>,
    next_conn: u64,
    next_request: u64,
    /// The virtual clock.
    pub now: Now,
    /// Nodes that are down (their dials fail).
    pub down: Vec<bool>,
    /// Which side of a partition each node is on (equal = can talk).
    pub side: Vec<u8>,
    rng: Option<StdRng>,
    timed: Option<Timed>,
}

/// The address of node `i`.
pub fn addr_of(i: usize) -> PeerAddr {
    PeerAddr::new("127.0.0.1", BASE_PORT + i as u16)
}

/// A config for node `i` of a network on `protocol`. Upkeep runs once a
/// simulated second (a real node's default is more eager; the simulation
/// trades that for speed).
pub fn config_for(i: usize, protocol: &Protocol) -> Config {
    let id = PeerId::random(format!("sim-node-{i}").as_bytes());
    let mut cfg = Config::new(protocol.clone(), id, addr_of(i));
    cfg.maintain_interval_ms = 1_000;
    cfg
}

impl Sim {
    /// `n` mesh nodes with default configs on the default protocol.
    pub fn new(n: usize) -> Self {
        let p = Protocol::default();
        Sim::with_configs((0..n).map(|i| config_for(i, &p)).collect())
    }

    /// Mesh nodes with the given configs (node `i` must use [`addr_of`]`(i)`).
    pub fn with_configs(cfgs: Vec<Config>) -> Self {
        let nodes = cfgs.into_iter().enumerate().map(|(i, c)| Node::new(Mesh::new(c, i as u64 + 1), None)).collect();
        Sim::with_nodes(nodes)
    }

    /// `n` sync nodes (subnet `sync1`/`sync0` by `cfg.leasing`).
    pub fn with_sync(n: usize, cfg: sync::Config) -> Self {
        let p = Protocol::new(if cfg.leasing { "sync1" } else { "sync0" }, crate::id::Encryption::Plaintext);
        let nodes = (0..n)
            .map(|i| {
                let c = config_for(i, &p);
                let id = c.id.clone();
                Node::new(Mesh::new(c, i as u64 + 1), Some(Replica::new(id, cfg.clone(), i as u64 + 101)))
            })
            .collect();
        Sim::with_nodes(nodes)
    }

    /// `n` sync nodes as [`Sim::with_sync`] makes them, each with a key
    /// (its id the key's): they sign their broadcasts and prove their
    /// writes.
    pub fn with_keyed_sync(n: usize, cfg: sync::Config) -> Self {
        let p = Protocol::new(if cfg.leasing { "sync1" } else { "sync0" }, crate::id::Encryption::Plaintext);
        let nodes = (0..n)
            .map(|i| {
                let mut c = config_for(i, &p);
                let key = crate::identity::Identity::from_secret([i as u8 + 1; 32]);
                c.id = key.id();
                c.identity = Some(key);
                let id = c.id.clone();
                Node::new(Mesh::new(c, i as u64 + 1), Some(Replica::new(id, cfg.clone(), i as u64 + 101)))
            })
            .collect();
        Sim::with_nodes(nodes)
    }

    fn with_nodes(nodes: Vec<Node>) -> Self {
        let n = nodes.len();
        Sim {
            nodes,
            events: vec![Vec::new(); n],
            event_ms: vec![Vec::new(); n],
            conn_peer: HashMap::new(),
            sync_events: vec![Vec::new(); n],
            replies: vec![Vec::new(); n],
            links: BTreeMap::new(),
            decoders: HashMap::new(),
            queues: HashMap::new(),
            order: VecDeque::new(),
            next_conn: 0,
            next_request: 0,
            now: Now { mono_ms: 1_000, unix_ms: 1_700_000_000_000 },
            down: vec![false; n],
            side: vec![0; n],
            rng: None,
            timed: None,
        }
    }

    /// Gives every link a one-way delay drawn uniformly from
    /// `min_ms..=max_ms` (seeded), from now on (see the module docs).
    pub fn set_latency(&mut self, min_ms: u64, max_ms: u64, seed: u64) {
        let n = self.nodes.len();
        let mut t = Timed {
            min_ms,
            max_ms: max_ms.max(min_ms),
            rng: StdRng::seed_from_u64(seed),
            frames: BinaryHeap::new(),
            seq: 0,
            timers: BinaryHeap::new(),
            scheduled: vec![None; n],
        };
        for i in 0..n {
            if let Some(d) = self.nodes[i].poll_timeout() {
                t.timers.push(Reverse((d, i)));
                t.scheduled[i] = Some(d);
            }
        }
        self.timed = Some(t);
    }

    /// Notes node `i`'s next wake-up (timed mode).
    fn reschedule(&mut self, i: usize) {
        let Some(t) = self.timed.as_mut() else { return };
        let next = self.nodes[i].poll_timeout();
        if next != t.scheduled[i] {
            t.scheduled[i] = next;
            if let Some(d) = next {
                t.timers.push(Reverse((d, i)));
            }
        }
    }

    /// Interleaves frames of different links at random, from `seed`.
    pub fn shuffle(&mut self, seed: u64) {
        self.rng = Some(StdRng::seed_from_u64(seed));
    }

    /// Gives node `i` a local command and delivers its immediate outputs;
    /// returns its answer if it came at once (a `Connect` answers later, in
    /// [`Sim::replies`]).
    pub fn command(&mut self, i: usize, command: impl Into<Command>) -> Option<Result<Reply, CommandError>> {
        self.next_request += 1;
        let request = RequestId(self.next_request);
        let now = self.now;
        self.nodes[i].handle(now, Input::Command { request, command: command.into() });
        self.drain(i);
        self.replies[i].iter().rev().find(|(r, _)| *r == request).map(|(_, res)| res.clone())
    }

    /// Node `i` floods a user broadcast of one text packet.
    pub fn broadcast_text(&mut self, i: usize, text: &str) {
        let packets = vec![Value::from(text)];
        let r = self.command(i, mesh::Command::Broadcast { subflag: 0, packets });
        assert!(matches!(r, Some(Ok(_))), "broadcast refused: {r:?}");
    }

    /// Node `i` dials node `j`.
    pub fn connect(&mut self, i: usize, j: usize) {
        self.command(i, mesh::Command::Connect { addr: addr_of(j), expected: None });
    }

    /// Feeds node `i` one input and delivers what it outputs.
    pub fn input(&mut self, i: usize, input: Input) {
        let now = self.now;
        self.nodes[i].handle(now, input);
        self.drain(i);
    }

    fn node_at(&self, addr: &PeerAddr, from: usize) -> Option<usize> {
        if addr.host != "127.0.0.1" || addr.port < BASE_PORT {
            return None;
        }
        let i = usize::from(addr.port - BASE_PORT);
        (i < self.nodes.len() && !self.down[i] && self.side[i] == self.side[from]).then_some(i)
    }

    /// Drains node `i`'s outputs into the network.
    pub fn drain(&mut self, i: usize) {
        while let Some(o) = self.nodes[i].poll_output() {
            let o = match o {
                node::Output::Sync(e) => {
                    self.sync_events[i].push(e);
                    continue;
                }
                node::Output::Reply { request, result } => {
                    self.replies[i].push((request, result));
                    continue;
                }
                node::Output::Mesh(o) => o,
            };
            match o {
                mesh::Output::Send { conn, frame, .. } => {
                    if let Some(l) = self.links.get_mut(&conn) {
                        let bytes = frame.encode_for(l.codec.compression);
                        self.queues.entry(l.peer_conn).or_default().push_back(bytes);
                        match self.timed.as_mut() {
                            Some(t) => {
                                let at = (self.now.mono_ms + l.delay_ms).max(l.last_arrival_ms);
                                l.last_arrival_ms = at;
                                t.seq += 1;
                                t.frames.push(Reverse((at, t.seq, l.peer_conn)));
                            }
                            None => self.order.push_back(l.peer_conn),
                        }
                    }
                }
                mesh::Output::Configure { conn, codec } => {
                    if let Some(l) = self.links.get_mut(&conn) {
                        l.codec = codec;
                    }
                }
                mesh::Output::Dial { dial, addr } => match self.node_at(&addr, i) {
                    Some(j) => {
                        self.next_conn += 1;
                        let a = ConnId(self.next_conn);
                        self.next_conn += 1;
                        let b = ConnId(self.next_conn);
                        let delay_ms = match self.timed.as_mut() {
                            Some(t) => t.rng.random_range(t.min_ms..=t.max_ms),
                            None => 0,
                        };
                        let link = |node, peer_node, peer_conn| Link {
                            node,
                            peer_node,
                            peer_conn,
                            codec: LinkCodec::HANDSHAKE,
                            delay_ms,
                            last_arrival_ms: 0,
                        };
                        self.links.insert(a, link(i, j, b));
                        self.links.insert(b, link(j, i, a));
                        self.conn_peer.insert(a, j);
                        self.conn_peer.insert(b, i);
                        self.input(j, Input::Incoming { conn: b });
                        let now = self.now;
                        self.nodes[i].handle(now, Input::Dialed { dial, conn: a });
                    }
                    None => {
                        let now = self.now;
                        let reason = CloseReason::Io(std::io::ErrorKind::ConnectionRefused);
                        self.nodes[i].handle(now, Input::DialFailed { dial, reason });
                    }
                },
                mesh::Output::Close { conn, .. } => self.cut(conn, false),
                mesh::Output::Event(e) => {
                    self.events[i].push(e);
                    self.event_ms[i].push(self.now.mono_ms);
                }
                mesh::Output::Reply { .. } => unreachable!("nodes lift replies into node::Output::Reply"),
            }
        }
        self.reschedule(i);
    }

    /// Removes a link; the far end (and with `both`, the near end too) is
    /// told the connection broke. Frames in flight on it are lost.
    fn cut(&mut self, conn: ConnId, both: bool) {
        let Some(l) = self.links.remove(&conn) else { return };
        self.decoders.remove(&conn);
        self.queues.remove(&conn);
        if both {
            self.input(l.node, Input::Closed { conn, reason: CloseReason::Io(std::io::ErrorKind::ConnectionReset) });
        }
        if self.links.remove(&l.peer_conn).is_some() {
            self.decoders.remove(&l.peer_conn);
            self.queues.remove(&l.peer_conn);
            self.input(l.peer_node, Input::Closed { conn: l.peer_conn, reason: CloseReason::ClosedByPeer });
        }
    }

    /// Breaks the connection `conn` (both ends see a reset).
    pub fn break_link(&mut self, conn: ConnId) {
        self.cut(conn, true);
    }

    /// All live connection ids (one per end).
    pub fn link_ids(&self) -> Vec<ConnId> {
        self.links.keys().copied().collect()
    }

    /// The connection node `i` uses toward node `j`, if linked.
    pub fn link_between(&self, i: usize, j: usize) -> Option<ConnId> {
        self.links.iter().find(|(_, l)| l.node == i && l.peer_node == j).map(|(c, _)| *c)
    }

    /// Splits the network: nodes get the given sides; links across sides
    /// break and dials across fail until [`Sim::heal`].
    pub fn partition(&mut self, side: Vec<u8>) {
        self.side = side;
        let crossing: Vec<ConnId> =
            self.links.iter().filter(|(_, l)| self.side[l.node] != self.side[l.peer_node]).map(|(c, _)| *c).collect();
        for c in crossing {
            self.cut(c, true);
        }
    }

    /// Ends a partition.
    pub fn heal(&mut self) {
        self.side = vec![0; self.nodes.len()];
    }

    /// Delivers one frame in flight; returns `false` when none is left.
    ///
    /// # Panics
    /// If the frame does not decode: every simulated node is honest.
    pub fn step(&mut self) -> bool {
        if let Some(t) = self.timed.as_mut() {
            // Timed: only frames already due.
            let conn = loop {
                match t.frames.peek() {
                    Some(Reverse((at, _, _))) if *at <= self.now.mono_ms => {
                        let Some(Reverse((_, _, c))) = t.frames.pop() else { return false };
                        if self.links.contains_key(&c) {
                            break c;
                        }
                    }
                    _ => return false,
                }
            };
            self.deliver_one(conn);
            return true;
        }
        let conn = loop {
            let pick = match &mut self.rng {
                Some(rng) if !self.order.is_empty() => {
                    let i = rng.random_range(0..self.order.len());
                    self.order.remove(i)
                }
                _ => self.order.pop_front(),
            };
            match pick {
                None => return false,
                Some(c) if self.links.contains_key(&c) => break c,
                Some(_) => continue, // link gone; its frames were dropped
            }
        };
        self.deliver_one(conn);
        true
    }

    /// Delivers the oldest frame queued toward `conn`.
    fn deliver_one(&mut self, conn: ConnId) {
        let Some(bytes) = self.queues.get_mut(&conn).and_then(VecDeque::pop_front) else { return };
        let node = self.links[&conn].node;
        let dec = self
            .decoders
            .entry(conn)
            .or_insert_with(|| FrameDecoder::new(Limits::default(), &Compression::DEFAULT_PREFERENCE));
        dec.buffer().extend_from_slice(&bytes);
        let mut packets = Vec::new();
        loop {
            match dec.next_packet() {
                Ok(Some(p)) => packets.push(p),
                Ok(None) => break,
                Err(e) => panic!("simulated frame failed to decode on {conn:?}: {e}"),
            }
        }
        let now = self.now;
        for packet in packets {
            self.nodes[node].handle(now, Input::Packet { conn, packet });
        }
        self.drain(node);
    }

    /// Runs until no frame is in flight (bounded).
    pub fn run(&mut self) {
        for _ in 0..50_000_000 {
            if !self.step() {
                return;
            }
        }
        panic!("simulation did not settle");
    }

    /// Delivers up to `n` frames.
    pub fn run_steps(&mut self, n: usize) {
        for _ in 0..n {
            if !self.step() {
                return;
            }
        }
    }

    /// Advances the clock by `ms`, waking each live node whenever its
    /// [`Node::poll_timeout`] comes and settling the network after each
    /// wake-up.
    pub fn advance(&mut self, ms: u64) {
        let end = self.now.plus_ms(ms);
        if self.timed.is_some() {
            self.advance_timed(end);
            return;
        }
        for _ in 0..MAX_WAKEUPS {
            let next = (0..self.nodes.len())
                .filter(|&i| !self.down[i])
                .filter_map(|i| self.nodes[i].poll_timeout())
                .min()
                .filter(|&t| t <= end.mono_ms);
            let Some(t) = next else {
                self.now = end;
                return;
            };
            let step = t.saturating_sub(self.now.mono_ms);
            self.now = self.now.plus_ms(step);
            for i in 0..self.nodes.len() {
                if !self.down[i] && self.nodes[i].poll_timeout().is_some_and(|d| d <= self.now.mono_ms) {
                    self.input(i, Input::Timeout);
                }
            }
            self.run();
        }
        panic!("a node asked to be woken more than {MAX_WAKEUPS} times in {ms} ms");
    }

    /// [`Sim::advance`] in timed mode: event by event until `end`.
    fn advance_timed(&mut self, end: Now) {
        for _ in 0..MAX_WAKEUPS.saturating_mul(100) {
            let Some(t) = self.timed.as_mut() else { return };
            let frame_at = t.frames.peek().map(|Reverse((at, _, _))| *at);
            let timer_at = loop {
                match t.timers.peek() {
                    Some(&Reverse((d, i))) if t.scheduled[i] != Some(d) || self.down[i] => {
                        t.timers.pop();
                        if self.down[i] && t.scheduled[i] == Some(d) {
                            // Rescheduled when it is next touched.
                            t.scheduled[i] = None;
                        }
                    }
                    Some(&Reverse((d, _))) => break Some(d),
                    None => break None,
                }
            };
            let next = match (frame_at, timer_at) {
                (Some(f), Some(d)) => f.min(d),
                (a, b) => match a.or(b) {
                    Some(x) => x,
                    None => break,
                },
            };
            if next > end.mono_ms {
                break;
            }
            if next > self.now.mono_ms {
                self.now = self.now.plus_ms(next - self.now.mono_ms);
            }
            if frame_at == Some(next) {
                self.step();
            } else if let Some(Reverse((_, i))) = t.timers.pop() {
                t.scheduled[i] = None;
                self.input(i, Input::Timeout);
            }
        }
        if end.mono_ms > self.now.mono_ms {
            self.now = self.now.plus_ms(end.mono_ms - self.now.mono_ms);
        }
    }

    /// Wakes every live node once (without settling); a node with nothing
    /// due does nothing.
    pub fn tick_all(&mut self) {
        for i in 0..self.nodes.len() {
            if !self.down[i] {
                self.input(i, Input::Timeout);
            }
        }
    }

    /// Takes node `i` down: all its connections drop, its dials fail.
    pub fn kill(&mut self, i: usize) {
        self.down[i] = true;
        let conns: Vec<ConnId> = self.links.iter().filter(|(_, l)| l.node == i).map(|(c, _)| *c).collect();
        for c in conns {
            self.cut(c, false);
        }
        let now = self.now;
        self.nodes[i].handle(now, Input::Command { request: RequestId(0), command: mesh::Command::Shutdown.into() });
        while self.nodes[i].poll_output().is_some() {}
    }

    /// Whether the live nodes' routing tables form one connected graph.
    pub fn connected(&self) -> bool {
        let live: Vec<usize> = (0..self.nodes.len()).filter(|&i| !self.down[i]).collect();
        let Some(&start) = live.first() else { return true };
        let index: HashMap<PeerId, usize> =
            self.nodes.iter().enumerate().map(|(i, n)| (n.mesh().id().clone(), i)).collect();
        let mut seen = BTreeSet::new();
        let mut stack = vec![start];
        seen.insert(start);
        while let Some(i) = stack.pop() {
            for p in self.nodes[i].mesh().peers() {
                if let Some(&j) = index.get(&p.id) {
                    if !self.down[j] && seen.insert(j) {
                        stack.push(j);
                    }
                }
            }
        }
        live.iter().all(|i| seen.contains(i))
    }

    /// Number of user broadcasts node `i` received with `payload` as first
    /// packet.
    pub fn received(&self, i: usize, payload: &str) -> usize {
        self.events[i]
            .iter()
            .filter(|e| match e {
                Event::Message(d) => d
                    .packet
                    .values()
                    .ok()
                    .and_then(|v| v.first().and_then(|x| x.as_str().map(|s| s == payload)))
                    .unwrap_or(false),
                _ => false,
            })
            .count()
    }
}

/// A user broadcast frame with one text packet, as node `sender` would send
/// it at `now`.
pub fn text_frame(sender: &PeerId, now: Now, text: &str) -> Frame {
    Frame::build(MsgType::Broadcast, sender, now.unix(), 0u64, &[Value::from(text)])
}
