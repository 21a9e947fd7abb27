//! Property tests of the codec: round trips of arbitrary values and frames,
//! arbitrary bytes never panic the decoder, chunking does not matter.

use proptest::prelude::*;
use rs2p_proto::id::PeerId;
use rs2p_proto::wire::{msgpack, Compression, Frame, FrameDecoder, Limits, MsgType, Packet};
use rs2p_proto::Value;

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::Boolean),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f32>().prop_map(Value::F32),
        any::<f64>().prop_map(Value::F64),
        ".{0,40}".prop_map(Value::from),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Value::Binary),
        (any::<i8>(), proptest::collection::vec(any::<u8>(), 0..20)).prop_map(|(t, d)| Value::Ext(t, d)),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::vec((inner.clone(), inner), 0..6).prop_map(Value::Map),
        ]
    })
}

/// Equality that treats NaN as equal to NaN (round trips keep the bits).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::F32(x), Value::F32(y)) => x.to_bits() == y.to_bits(),
        (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b)),
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|((k1, v1), (k2, v2))| same(k1, k2) && same(v1, v2))
        }
        _ => a == b,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn values_round_trip(v in value()) {
        let mut bytes = Vec::new();
        msgpack::write_value(&mut bytes, &v);
        msgpack::validate(&bytes, 64).unwrap();
        let back = msgpack::decode_values(&bytes, 0, 1).unwrap();
        prop_assert!(same(&back[0], &v));
    }

    #[test]
    fn frames_round_trip_through_every_compression(
        packets in proptest::collection::vec(value(), 0..6),
        time in any::<u32>(),
        msg_type in 0u64..3,
        sub in 0u64..0x40,
        method in 0usize..6,
        split in any::<prop::sample::Index>(),
    ) {
        let id = PeerId::random(b"prop");
        let msg_type = MsgType::from_u64(msg_type).expect("0..3");
        let f = Frame::build(msg_type, &id, u64::from(time), sub, &packets);
        let wire = f.encode_for(Some(Compression::DEFAULT_PREFERENCE[method]));
        let mut d = FrameDecoder::new(Limits::default(), &Compression::DEFAULT_PREFERENCE);
        let at = split.index(wire.len() + 1);
        d.buffer().extend_from_slice(&wire[..at]);
        let first = d.next_packet().unwrap();
        d.buffer().extend_from_slice(&wire[at..]);
        let p = match first { Some(p) => p, None => d.next_packet().unwrap().unwrap() };
        prop_assert_eq!(&p.frame, &f);
        prop_assert_eq!(p.header.time, u64::from(time));
        prop_assert_eq!(p.header.subflag, sub);
        let back = p.values().unwrap();
        prop_assert_eq!(back.len(), packets.len());
        for (a, b) in back.iter().zip(&packets) {
            prop_assert!(same(a, b));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut d = FrameDecoder::new(Limits { max_frame_len: 4096, ..Limits::default() }, &Compression::DEFAULT_PREFERENCE);
        d.buffer().extend_from_slice(&bytes);
        for _ in 0..8 {
            match d.next_packet() {
                Ok(Some(p)) => { let _ = p.values(); }
                Ok(None) | Err(_) => break,
            }
        }
        let _ = msgpack::validate(&bytes, 16);
    }

    #[test]
    fn arbitrary_payloads_with_valid_checksums_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
        // Past the checksum, the payload parser meets the garbage.
        let f = Frame::from_payload(&payload);
        if let Ok(p) = Packet::parse(f, &Limits::default()) {
            let _ = p.values();
        }
    }
}
