//! Arbitrary sequences of inputs to a sync node's state machine (mesh and
//! replica): connections opening and closing, frames (well-formed headers
//! around arbitrary values, or raw bytes), ticks, local commands. It must
//! never panic, and its invariants must hold.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rs2p_proto::id::{PeerId, Protocol};
use rs2p_proto::mesh::{CloseReason, Config, ConnId, DialId, Mesh, PeerAddr};
use rs2p_proto::node::Node;
use rs2p_proto::sync::{self, Replica};
use rs2p_proto::wire::{Frame, FrameDecoder, Limits, Compression};
use rs2p_proto::{Now, Value};

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
}

fuzz_target!(|inputs: Vec<Input>| {
    let me = PeerId::random(b"fuzz");
    let cfg = Config::new(Protocol::new("sync1", rs2p_proto::id::Encryption::Plaintext), me.clone(), PeerAddr::new("127.0.0.1", 9));
    let mut node = Node::new(Mesh::new(cfg, 7), Some(Replica::new(me.clone(), sync::Config::default(), 8)));
    let mut now = Now { mono_ms: 0, unix_ms: 1_700_000_000_000 };
    let mut decoders: std::collections::HashMap<u8, FrameDecoder> = Default::default();
    let peers: Vec<PeerId> = (0..4u8).map(|i| PeerId::random(&[i])).collect();
    for input in inputs.into_iter().take(256) {
        match input {
            Input::Incoming(c) => node.handle_incoming(now, ConnId(u64::from(c))),
            Input::Dialed(d, c) => node.handle_dialed(now, DialId(u64::from(d)), ConnId(u64::from(c))),
            Input::DialFailed(d) => node.handle_dial_failed(now, DialId(u64::from(d)), "refused".into()),
            Input::Closed(c) => node.handle_closed(now, ConnId(u64::from(c)), CloseReason::Io("eof".into())),
            Input::Frame { conn, msg_type, sender, time, subflag, packets } => {
                let sender = &peers[usize::from(sender % 4)];
                let t = now.unix().saturating_add_signed(i64::from(time));
                let values: Vec<Value> = packets.iter().map(|v| v.to_value(0)).collect();
                let f = Frame::build(msg_type % 5, sender, t, u64::from(subflag % 0x30), &values);
                if let Ok(p) = rs2p_proto::wire::Packet::parse(f, &Limits::default()) {
                    node.handle_packet(now, ConnId(u64::from(conn)), p);
                }
            }
            Input::Bytes { conn, bytes } => {
                let dec = decoders.entry(conn).or_insert_with(|| FrameDecoder::new(Limits::default(), &Compression::DEFAULT_PREFERENCE));
                dec.buffer().extend_from_slice(&bytes);
                while let Ok(Some(p)) = dec.next_packet() {
                    node.handle_packet(now, ConnId(u64::from(conn)), p);
                }
            }
            Input::Tick(ms) => {
                now = now.plus_ms(u64::from(ms));
                node.handle_tick(now);
            }
            Input::Broadcast(p) => {
                let values: Vec<Value> = p.iter().map(|v| v.to_value(0)).collect();
                let _ = node.mesh.broadcast(now, 0, &values);
            }
            Input::Connect(port) => {
                let _ = node.mesh.connect(PeerAddr::new("127.0.0.1", port), None);
            }
            Input::Set(k, v) => {
                let _ = node.with_replica(now, |r, now| r.set(now, k.into(), v.to_value(0)));
            }
            Input::Delete(k) => {
                let _ = node.with_replica(now, |r, now| r.delete(now, k.into()));
            }
            Input::Delta(k, d) => {
                let d = d.iter().map(|(a, b)| (a.to_value(0), b.to_value(0))).collect();
                let _ = node.with_replica(now, |r, now| r.apply_delta(now, k.into(), d));
            }
            Input::RequestPeers => node.mesh.request_peers(now),
        }
        while node.poll_output().is_some() {}
        // Invariants.
        assert!(node.mesh.outgoing_count() <= node.mesh.connection_count() + 1024);
        let replica = node.sync.as_ref().unwrap();
        assert_eq!(replica.len(), replica.items().count());
        for p in node.mesh.peers() {
            assert_ne!(p.id, me, "never routes to itself");
        }
    }
});
