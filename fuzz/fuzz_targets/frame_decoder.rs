//! Arbitrary bytes, in arbitrary chunks, into the frame decoder: it must
//! never panic, never buffer past its limit, and every packet it yields
//! must decode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rs2p_proto::wire::{msgpack, Compression, FrameDecoder, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_frame_len: 1 << 16, max_decompressed_len: 1 << 18, max_depth: 32 };
    let mut dec = FrameDecoder::new(limits, &Compression::DEFAULT_PREFERENCE);
    // The first byte picks a chunk size, so frames split at every position.
    let (chunk, rest) = match data.split_first() {
        Some((c, r)) => (usize::from(*c).max(1), r),
        None => return,
    };
    for piece in rest.chunks(chunk) {
        dec.buffer().extend_from_slice(piece);
        loop {
            match dec.next_packet() {
                Ok(Some(p)) => {
                    assert!(p.frame.body().len() <= limits.max_decompressed_len);
                    p.values().expect("a checked packet decodes");
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(dec.buffer().len() <= limits.max_frame_len + 4 + piece.len());
    }
    let _ = msgpack::validate(rest, 32);
});
