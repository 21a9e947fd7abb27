//! Golden vectors: frames captured from a live py2p 0.7.878 node
//! (`tests/vectors/*.hex`, from `shared/py2p-frames`). Each must decode to
//! the fields py2p sent, and our encoder must reproduce its msgpack payload
//! byte for byte.

use rs2p_proto::wire::{subflag, Compression, Frame, FrameDecoder, Limits, Packet};
use rs2p_proto::Value;

const PY2P_ID: &[u8] = b"4m7iSUJVN1yVcdVziYECsfcHMKvfx2dE6SGq9gP87UPnr8FsJBoJaNBuphV4f2N1ob";

fn load(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/vectors/{name}.hex", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let text = text.trim();
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex")).collect()
}

fn decode(name: &str) -> Packet {
    let bytes = load(name);
    let mut d = FrameDecoder::new(Limits::default(), &Compression::DEFAULT_PREFERENCE);
    d.buffer().extend_from_slice(&bytes);
    let p = d.next_packet().expect("valid frame").expect("complete frame");
    assert!(d.next_packet().unwrap().is_none(), "{name}: one frame per file");
    p
}

/// Re-encodes a packet from its decoded fields and checks the bytes match.
fn reencodes_identically(name: &str, p: &Packet) {
    let h = &p.header;
    let rebuilt = Frame::build(h.msg_type as u8, &h.sender, h.time, h.subflag, &p.values().unwrap());
    assert_eq!(rebuilt.payload(), p.frame.payload(), "{name}: payload bytes differ");
    assert_eq!(rebuilt.id(), p.frame.id(), "{name}: message id differs");
}

const ALL: [&str; 13] = [
    "broadcast_uncompressed",
    "broadcast_zlib",
    "handshake_on_accept",
    "handshake_outgoing",
    "peers_uncompressed",
    "peers_zlib",
    "renegotiate_compression",
    "renegotiate_resend",
    "request_peers",
    "sync_delete_broadcast",
    "sync_delta_broadcast",
    "sync_store_broadcast",
    "sync_store_state_transfer",
];

#[test]
fn every_captured_frame_decodes_and_reencodes() {
    for name in ALL {
        let p = decode(name);
        reencodes_identically(name, &p);
        // Uncompressed captures are reproduced byte for byte, prefix included.
        if !name.ends_with("zlib") {
            let bytes = load(name);
            assert_eq!(p.frame.wire_bytes().as_ref(), &bytes[..], "{name}");
        }
    }
}

#[test]
fn handshake_fields() {
    let p = decode("handshake_outgoing");
    assert_eq!(p.header.msg_type, 2);
    assert_eq!(p.header.sender.as_bytes(), PY2P_ID);
    assert_eq!(p.header.time, 1_795_279_776);
    assert_eq!(p.header.subflag, subflag::HANDSHAKE);
    let v = p.values().unwrap();
    assert_eq!(v[0], Value::Binary(PY2P_ID.to_vec()));
    assert_eq!(v[1], Value::Binary(b"EpAmyZWv9rZUKmjQgU3FTUD4GrJHvVEXizmghVBc8eGD".to_vec()));
    assert_eq!(v[2], Value::Array(vec![Value::from("127.0.0.1"), Value::from(27000)]));
    assert_eq!(v[3], Value::Array(vec![19.into(), 17.into(), 16.into(), 18.into()]));
}

#[test]
fn zlib_broadcast_and_peers() {
    let p = decode("broadcast_zlib");
    assert_eq!(p.header.msg_type, 0);
    assert_eq!(p.values().unwrap(), vec![Value::from("hello-zlib")]);
    let p = decode("peers_zlib");
    assert_eq!(p.header.subflag, subflag::PEERS);
    let v = p.values().unwrap();
    let list = v[0].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].as_array().unwrap()[0], Value::Array(vec!["127.0.0.1".into(), 27005.into()]));
}

#[test]
fn request_and_renegotiation_shapes() {
    let p = decode("request_peers");
    assert_eq!(p.header.subflag, subflag::REQUEST);
    // py2p's own request sends '*' as a str (the quirk PROTOCOL.md describes).
    assert_eq!(p.values().unwrap(), vec![Value::from("*")]);
    let p = decode("renegotiate_compression");
    assert_eq!((p.header.msg_type, p.header.subflag), (1, subflag::COMPRESSION));
    assert_eq!(p.values().unwrap(), vec![Value::Array(vec![])]);
    let p = decode("renegotiate_resend");
    assert_eq!((p.header.msg_type, p.header.subflag), (1, subflag::RESEND));
    assert!(p.is_empty());
}

#[test]
fn sync_frames() {
    let p = decode("sync_store_state_transfer");
    assert_eq!((p.header.msg_type, p.header.subflag), (2, subflag::STORE));
    let v = p.values().unwrap();
    assert_eq!(v[0], Value::Binary(b"preset".to_vec()));
    assert_eq!(v[1], Value::from("value0"));
    assert_eq!(v[3], Value::from(1_795_279_777u64));
    let p = decode("sync_delete_broadcast");
    assert_eq!(p.values().unwrap(), vec![Value::Binary(b"delme".to_vec()), Value::Nil]);
    let p = decode("sync_delta_broadcast");
    assert_eq!(p.header.subflag, subflag::DELTA);
    assert_eq!(p.values().unwrap()[1], Value::Map(vec![(Value::from("a"), Value::from(1))]));
}

#[test]
fn our_zlib_frames_decode_like_py2ps() {
    // A frame we compress with zlib decodes to the same payload.
    let p = decode("broadcast_uncompressed");
    let wire = p.frame.encode_for(Some(Compression::Zlib));
    assert_eq!(&wire[4..6], &[0x78, 0x9c], "zlib header as Python writes it");
    let mut d = FrameDecoder::new(Limits::default(), &[Compression::Zlib]);
    d.buffer().extend_from_slice(&wire);
    assert_eq!(d.next_packet().unwrap().unwrap().frame, p.frame);
}
