//! Arbitrary sequences of inputs to a sync node's state machine (mesh and
//! replica): connections opening and closing, frames (well-formed headers
//! around arbitrary values, or raw bytes), ticks, local commands. It must
//! never panic, and its invariants must hold.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::collections::{HashMap, HashSet};
use std::io::ErrorKind;

use rs2p_proto::id::{PeerId, Protocol};
use rs2p_proto::mesh::{self, CloseReason, Config, ConnId, DialId, Mesh, PeerAddr};
use rs2p_proto::node::{self, Input as NodeInput, Node};
use rs2p_proto::sync::{self, Replica};
use rs2p_proto::wire::{Compression, Frame, FrameDecoder, Limits, MsgType};
use rs2p_proto::{Now, RequestId, Value};

#[derive(Arbitrary, Debug)]
enum V {
    Nil,
    Bool(bool),
    Int(i64),
    UInt(u64),
    F(f64),
    Str(String),
    Bin(Vec<u8>),
    Arr(Vec<V>),
    Map(Vec<(V, V)>),
}

impl V {
    fn to_value(&self, depth: u32) -> Value {
        if depth > 8 {
            return Value::Nil;
        }
        match self {
            V::Nil => Value::Nil,
            V::Bool(b) => Value::Boolean(*b),
            V::Int(i) => Value::from(*i),
            V::UInt(u) => Value::from(*u),
            V::F(f) => Value::F64(*f),
            V::Str(s) => Value::from(s.as_str()),
            V::Bin(b) => Value::Binary(b.clone()),
            V::Arr(a) => Value::Array(a.iter().map(|v| v.to_value(depth + 1)).collect()),
            V::Map(m) => Value::Map(m.iter().map(|(k, v)| (k.to_value(depth + 1), v.to_value(depth + 1))).collect()),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Input {
    Incoming(u8),
    Dialed(u8, u8),
    DialFailed(u8),
    Closed(u8),
    /// A frame with a well-formed header: msg type, sender, time offset,
    /// sub-flag, packets.
    Frame { conn: u8, msg_type: u8, sender: u8, time: i16, subflag: u8, packets: Vec<V> },
    /// Raw bytes through a decoder.
    Bytes { conn: u8, bytes: Vec<u8> },
    Tick(u16),
    Broadcast(Vec<V>),
    Connect(u16),
    Set(Vec<u8>, V),
    Delete(Vec<u8>),
    Delta(Vec<u8>, Vec<(V, V)>),
    RequestPeers,
    /// The driver stopped reading (backpressure), before a timeout.
    NotReading,
}

/// Most inputs taken from one fuzz case.
const MAX_INPUTS: usize = 256;

fuzz_target!(|inputs: Vec<Input>| {
    let me = PeerId::random(b"fuzz");
    let cfg = Config::new(Protocol::new("sync1", rs2p_proto::id::Encryption::Plaintext), me.clone(), PeerAddr::new("127.0.0.1", 9));
    let mut node = Node::new(Mesh::new(cfg, 7), Some(Replica::new(me.clone(), sync::Config::default(), 8)));
    let mut now = Now { mono_ms: 0, unix_ms: 1_700_000_000_000 };
    let mut decoders: std::collections::HashMap<u8, FrameDecoder> = Default::default();
    let peers: Vec<PeerId> = (0..4u8).map(|i| PeerId::random(&[i])).collect();
    let mut next_request = 0u64;
    // Replies seen per request, and the requests answered only later
    // (Connect); every other command must be answered during its own input.
    let mut replies: HashMap<RequestId, usize> = HashMap::new();
    let mut later: HashSet<RequestId> = HashSet::new();
    for input in inputs.into_iter().take(MAX_INPUTS) {
        let mut command = |c: node::Command, deferred: bool| {
            next_request += 1;
            let request = RequestId(next_request);
            if deferred {
                later.insert(request);
            }
            (request, NodeInput::Command { request, command: c })
        };
        let (asked, input) = match input {
            Input::Incoming(c) => (None, NodeInput::Incoming { conn: ConnId(u64::from(c)) }),
            Input::Dialed(d, c) => (None, NodeInput::Dialed { dial: DialId(u64::from(d)), conn: ConnId(u64::from(c)) }),
            Input::DialFailed(d) => {
                (None, NodeInput::DialFailed { dial: DialId(u64::from(d)), reason: CloseReason::Io(ErrorKind::ConnectionRefused) })
            }
            Input::Closed(c) => (None, NodeInput::Closed { conn: ConnId(u64::from(c)), reason: CloseReason::ClosedByPeer }),
            Input::Frame { conn, msg_type, sender, time, subflag, packets } => {
                let sender = &peers[usize::from(sender % 4)];
                let t = now.unix().saturating_add_signed(i64::from(time));
                let values: Vec<Value> = packets.iter().map(|v| v.to_value(0)).collect();
                let kind = MsgType::from_u64(u64::from(msg_type % 5)).expect("0..5 are message types");
                let f = Frame::build(kind, sender, t, u64::from(subflag % 0x30), &values);
                match rs2p_proto::wire::Packet::parse(f, &Limits::default()) {
                    Ok(packet) => (None, NodeInput::Packet { conn: ConnId(u64::from(conn)), packet }),
                    Err(_) => continue,
                }
            }
            Input::Bytes { conn, bytes } => {
                let dec = decoders.entry(conn).or_insert_with(|| FrameDecoder::new(Limits::default(), &Compression::DEFAULT_PREFERENCE));
                dec.buffer().extend_from_slice(&bytes);
                while let Ok(Some(packet)) = dec.next_packet() {
                    node.handle(now, NodeInput::Packet { conn: ConnId(u64::from(conn)), packet });
                }
                (None, NodeInput::Timeout)
            }
            Input::Tick(ms) => {
                now = now.plus_ms(u64::from(ms));
                (None, NodeInput::Timeout)
            }
            Input::Broadcast(p) => {
                let packets: Vec<Value> = p.iter().map(|v| v.to_value(0)).collect();
                let (r, i) = command(mesh::Command::Broadcast { subflag: 0, packets }.into(), false);
                (Some(r), i)
            }
            Input::Connect(port) => {
                let addr = PeerAddr::new("127.0.0.1", port);
                let (r, i) = command(mesh::Command::Connect { addr, expected: None }.into(), true);
                (Some(r), i)
            }
            Input::Set(k, v) => {
                let (r, i) = command(sync::Command::Set { key: k.into(), value: v.to_value(0) }.into(), false);
                (Some(r), i)
            }
            Input::Delete(k) => {
                let (r, i) = command(sync::Command::Delete { key: k.into() }.into(), false);
                (Some(r), i)
            }
            Input::Delta(k, d) => {
                let delta = d.iter().map(|(a, b)| (a.to_value(0), b.to_value(0))).collect();
                let (r, i) = command(sync::Command::Delta { key: k.into(), delta }.into(), false);
                (Some(r), i)
            }
            Input::RequestPeers => {
                let (r, i) = command(mesh::Command::RequestPeers.into(), false);
                (Some(r), i)
            }
            Input::NotReading => (None, NodeInput::NotReading),
        };
        let timeout = matches!(input, NodeInput::Timeout);
        node.handle(now, input);
        while let Some(o) = node.poll_output() {
            if let node::Output::Reply { request, .. } = o {
                *replies.entry(request).or_default() += 1;
            }
        }
        // Invariants.
        // Every command is answered, exactly once; at once unless it waits
        // for a handshake.
        assert!(replies.values().all(|&n| n == 1), "a command answered twice: {replies:?}");
        if let Some(r) = asked {
            assert!(later.contains(&r) || replies.contains_key(&r), "command {r:?} not answered");
        }
        // A machine woken for its deadline never asks to be woken again at
        // once (a driver would spin).
        if timeout {
            if let Some(t) = node.poll_timeout() {
                assert!(t > now.mono_ms, "asked to wake at {t} right after a timeout at {}", now.mono_ms);
            }
        }
        let mesh = node.mesh();
        assert!(mesh.peer_count() <= mesh.connection_count(), "routing entries without connections");
        assert!(mesh.handshaking_count() <= mesh.connection_count());
        let replica = node.replica().unwrap();
        assert_eq!(replica.len(), replica.items().count());
        for p in mesh.peers() {
            assert_ne!(p.id, me, "never routes to itself");
        }
    }
});
