//! A deterministic in-memory network of [`Mesh`] nodes, for tests.
//!
//! Frames travel through real encoding and [`FrameDecoder`]s (so the codec
//! is exercised), in FIFO order per link, one step at a time on a virtual
//! clock. Node `i` listens on `127.0.0.1:(10000 + i)`.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::id::{PeerId, Protocol};
use crate::mesh::{CloseReason, Config, ConnId, Event, LinkCodec, Mesh, Output, PeerAddr};
use crate::wire::{Compression, Frame, FrameDecoder, Limits};
use crate::Now;

/// Port of node 0; node `i` listens on `BASE_PORT + i`.
pub const BASE_PORT: u16 = 10_000;

#[derive(Debug)]
struct Link {
    node: usize,
    peer_node: usize,
    peer_conn: ConnId,
    codec: LinkCodec,
}

/// The in-memory network.
#[derive(Debug)]
pub struct Sim {
    /// The nodes.
    pub nodes: Vec<Mesh>,
    /// Events each node emitted, in order.
    pub events: Vec<Vec<Event>>,
    links: BTreeMap<ConnId, Link>,
    decoders: HashMap<ConnId, FrameDecoder>,
    in_flight: VecDeque<(ConnId, bytes::Bytes)>,
    next_conn: u64,
    /// The virtual clock.
    pub now: Now,
    /// Nodes that are down (their dials fail).
    pub down: Vec<bool>,
}

/// The address of node `i`.
pub fn addr_of(i: usize) -> PeerAddr {
    PeerAddr::new("127.0.0.1", BASE_PORT + i as u16)
}

/// A config for node `i` of a network on `protocol`.
pub fn config_for(i: usize, protocol: &Protocol) -> Config {
    let id = PeerId::random(format!("sim-node-{i}").as_bytes());
    Config::new(protocol.clone(), id, addr_of(i))
}

impl Sim {
    /// `n` nodes with default configs on the default protocol.
    pub fn new(n: usize) -> Self {
        let p = Protocol::default();
        Sim::with_configs((0..n).map(|i| config_for(i, &p)).collect())
    }

    /// Nodes with the given configs (node `i` must use [`addr_of`]`(i)`).
    pub fn with_configs(cfgs: Vec<Config>) -> Self {
        let n = cfgs.len();
        Sim {
            nodes: cfgs.into_iter().enumerate().map(|(i, c)| Mesh::new(c, i as u64 + 1)).collect(),
            events: vec![Vec::new(); n],
            links: BTreeMap::new(),
            decoders: HashMap::new(),
            in_flight: VecDeque::new(),
            next_conn: 0,
            now: Now { mono_ms: 1_000, unix: 1_700_000_000 },
            down: vec![false; n],
        }
    }

    /// Node `i` dials node `j`.
    pub fn connect(&mut self, i: usize, j: usize) {
        let _ = self.nodes[i].connect(addr_of(j), None);
        self.drain(i);
    }

    fn node_at(&self, addr: &PeerAddr) -> Option<usize> {
        if addr.host != "127.0.0.1" || addr.port < BASE_PORT {
            return None;
        }
        let i = usize::from(addr.port - BASE_PORT);
        (i < self.nodes.len() && !self.down[i]).then_some(i)
    }

    /// Drains node `i`'s outputs into the network.
    pub fn drain(&mut self, i: usize) {
        while let Some(o) = self.nodes[i].poll_output() {
            match o {
                Output::Send { conn, frame } => {
                    if let Some(l) = self.links.get(&conn) {
                        let bytes = frame.encode_for(l.codec.compression);
                        self.in_flight.push_back((l.peer_conn, bytes));
                    }
                }
                Output::Configure { conn, codec } => {
                    if let Some(l) = self.links.get_mut(&conn) {
                        l.codec = codec;
                    }
                }
                Output::Dial { dial, addr } => match self.node_at(&addr) {
                    Some(j) => {
                        self.next_conn += 1;
                        let a = ConnId(self.next_conn);
                        self.next_conn += 1;
                        let b = ConnId(self.next_conn);
                        self.links.insert(a, Link { node: i, peer_node: j, peer_conn: b, codec: LinkCodec::HANDSHAKE });
                        self.links.insert(b, Link { node: j, peer_node: i, peer_conn: a, codec: LinkCodec::HANDSHAKE });
                        let now = self.now;
                        self.nodes[j].handle_incoming(now, b);
                        self.drain(j);
                        self.nodes[i].handle_dialed(now, dial, a);
                    }
                    None => {
                        let now = self.now;
                        self.nodes[i].handle_dial_failed(now, dial, "connection refused".into());
                    }
                },
                Output::Close { conn, .. } => {
                    if let Some(l) = self.links.remove(&conn) {
                        self.decoders.remove(&conn);
                        if self.links.remove(&l.peer_conn).is_some() {
                            self.decoders.remove(&l.peer_conn);
                            let now = self.now;
                            self.nodes[l.peer_node].handle_closed(
                                now,
                                l.peer_conn,
                                CloseReason::Io("closed by peer".into()),
                            );
                            self.drain(l.peer_node);
                        }
                    }
                }
                Output::Event(e) => self.events[i].push(e),
            }
        }
    }

    /// Delivers one frame in flight; returns `false` when none is left.
    pub fn step(&mut self) -> bool {
        let Some((conn, bytes)) = self.in_flight.pop_front() else {
            return false;
        };
        let Some(node) = self.links.get(&conn).map(|l| l.node) else {
            return true; // link closed meanwhile
        };
        let dec = self
            .decoders
            .entry(conn)
            .or_insert_with(|| FrameDecoder::new(Limits::default(), &Compression::DEFAULT_PREFERENCE));
        dec.buffer().extend_from_slice(&bytes);
        let mut packets = Vec::new();
        while let Ok(Some(p)) = dec.next_packet() {
            packets.push(p);
        }
        let now = self.now;
        for p in packets {
            self.nodes[node].handle_packet(now, conn, p);
        }
        self.drain(node);
        true
    }

    /// Runs until no frame is in flight (bounded).
    pub fn run(&mut self) {
        for _ in 0..10_000_000 {
            if !self.step() {
                return;
            }
        }
        panic!("simulation did not settle");
    }

    /// Advances the clock by `ms`, ticking every node each simulated second,
    /// and settles the network after each tick.
    pub fn advance(&mut self, ms: u64) {
        let mut left = ms;
        while left > 0 {
            let d = left.min(1000);
            self.now = self.now.plus_ms(d);
            left -= d;
            for i in 0..self.nodes.len() {
                if self.down[i] {
                    continue;
                }
                let now = self.now;
                self.nodes[i].handle_tick(now);
                self.drain(i);
            }
            self.run();
        }
    }

    /// Takes node `i` down: all its connections drop, its dials fail.
    pub fn kill(&mut self, i: usize) {
        self.down[i] = true;
        let conns: Vec<ConnId> = self.links.iter().filter(|(_, l)| l.node == i).map(|(c, _)| *c).collect();
        for c in conns {
            if let Some(l) = self.links.remove(&c) {
                self.links.remove(&l.peer_conn);
                let now = self.now;
                self.nodes[l.peer_node].handle_closed(now, l.peer_conn, CloseReason::Io("reset".into()));
                self.drain(l.peer_node);
            }
        }
        self.nodes[i].shutdown();
        while self.nodes[i].poll_output().is_some() {}
    }

    /// Whether the live nodes' routing tables form one connected graph.
    pub fn connected(&self) -> bool {
        let live: Vec<usize> = (0..self.nodes.len()).filter(|&i| !self.down[i]).collect();
        let Some(&start) = live.first() else {
            return true;
        };
        let index: HashMap<PeerId, usize> = self.nodes.iter().enumerate().map(|(i, n)| (n.id().clone(), i)).collect();
        let mut seen = vec![false; self.nodes.len()];
        let mut stack = vec![start];
        seen[start] = true;
        while let Some(i) = stack.pop() {
            for p in self.nodes[i].peers() {
                if let Some(&j) = index.get(&p.id) {
                    if !seen[j] && !self.down[j] {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        live.iter().all(|&i| seen[i])
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

/// The frame every test broadcast uses.
pub fn text_frame(mesh: &Mesh, now: Now, text: &str) -> Frame {
    Frame::build(0, mesh.id(), now.unix, 0, &[rmpv::Value::from(text)])
}
