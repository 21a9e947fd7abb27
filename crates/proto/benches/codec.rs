//! Codec micro-benchmarks: the per-frame cost of encoding, decoding, and
//! the relay path (decode + dedup + hand the same bytes on).
//!
//! `cargo bench -p rs2p-proto --bench codec`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rs2p_proto::id::PeerId;
use rs2p_proto::mesh::dissemination::SeenCache;
use rs2p_proto::wire::{Compression, Frame, FrameDecoder, Limits, MsgType};
use rs2p_proto::Value;

fn frames(c: &mut Criterion) {
    let id = PeerId::random(b"bench");
    for size in [100usize, 10 * 1024] {
        let payload = Value::Binary(vec![0xAB; size]);
        let frame = Frame::build(MsgType::Broadcast, &id, 1_700_000_000, 0u64, std::slice::from_ref(&payload));
        let wire = frame.wire_bytes().clone();
        let mut g = c.benchmark_group(format!("frame_{size}B"));
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("encode", size), |b| {
            b.iter(|| Frame::build(MsgType::Broadcast, &id, 1_700_000_000, 0u64, std::slice::from_ref(&payload)))
        });
        g.bench_function(BenchmarkId::new("decode", size), |b| {
            let mut dec = FrameDecoder::new(Limits::default(), &Compression::DEFAULT_PREFERENCE);
            b.iter(|| {
                dec.buffer().extend_from_slice(&wire);
                dec.next_packet().unwrap().unwrap()
            })
        });
        g.bench_function(BenchmarkId::new("decode_values", size), |b| {
            let mut dec = FrameDecoder::new(Limits::default(), &Compression::DEFAULT_PREFERENCE);
            dec.buffer().extend_from_slice(&wire);
            let p = dec.next_packet().unwrap().unwrap();
            b.iter(|| p.values().unwrap())
        });
        g.bench_function(BenchmarkId::new("relay_path", size), |b| {
            // What a relaying node does per frame: split and check the frame,
            // parse the header, dedup, and hand the original bytes to an
            // uncompressed (rs2p) link.
            let mut dec = FrameDecoder::new(Limits::default(), &Compression::DEFAULT_PREFERENCE);
            let mut seen = SeenCache::new(60_000, 1 << 18, 7);
            let mut n: u64 = 0;
            b.iter(|| {
                dec.buffer().extend_from_slice(&wire);
                let p = dec.next_packet().unwrap().unwrap();
                n += 1;
                // Distinct ids, as a stream of new messages would have.
                let mut id = p.frame.id();
                id.0[..8].copy_from_slice(&n.to_le_bytes());
                let fresh = seen.insert(&id, n / 1000);
                (fresh, p.frame.encode_for(None))
            })
        });
        g.bench_function(BenchmarkId::new("encode_zlib_for_py2p", size), |b| {
            b.iter(|| frame.encode_for(Some(Compression::Zlib)))
        });
        g.finish();
    }
}

criterion_group!(benches, frames);
criterion_main!(benches);
