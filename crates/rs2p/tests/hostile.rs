//! Hostile input against a live node that relays between two good peers.
//! After every attack: the attacker's connection is closed with a logged
//! reason, the node is alive, its memory stays bounded, and the good peers
//! still exchange broadcasts through it.

use std::time::Duration;

use rs2p::proto::id::PeerId;
use rs2p::proto::wire::{Compression, Frame, MsgType, SubFlag};
use rs2p::{Limits, MeshSocket, Protocol, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_FRAME: usize = 2 << 20;
const MAX_DECOMPRESSED: usize = 4 << 20;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

struct Bench {
    victim: MeshSocket,
    g1: MeshSocket,
    g2: MeshSocket,
    round: u64,
}

impl Bench {
    async fn new() -> Bench {
        let victim = MeshSocket::builder()
            .limits(Limits { max_frame_len: MAX_FRAME, max_decompressed_len: MAX_DECOMPRESSED, max_depth: 64 })
            .stall_timeout(Duration::from_secs(2))
            .handshake_timeout(Duration::from_secs(2))
            .max_pending_handshakes(64)
            .max_connections(512)
            .spawn()
            .await
            .unwrap();
        let good = || MeshSocket::builder().max_outgoing(0).maintain_outgoing(false).spawn();
        let g1 = good().await.unwrap();
        let g2 = good().await.unwrap();
        g1.connect(victim.out_addr().clone()).await.unwrap();
        g2.connect(victim.out_addr().clone()).await.unwrap();
        let mut b = Bench { victim, g1, g2, round: 0 };
        b.good_peers_still_talk("setup").await;
        b
    }

    fn addr(&self) -> String {
        self.victim.out_addr().to_string()
    }

    /// g1 broadcasts; g2 must receive it through the victim.
    async fn good_peers_still_talk(&mut self, after: &str) {
        self.round += 1;
        let text = format!("alive after {after} #{}", self.round);
        self.g1.broadcast(vec![Value::from(text.as_str())]).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let m = tokio::time::timeout_at(deadline, self.g2.next_message())
                .await
                .unwrap_or_else(|_| panic!("good peers no longer talk after {after}"))
                .unwrap();
            if m.packets().unwrap() == vec![Value::from(text.as_str())] {
                break;
            }
        }
        assert!(self.victim.status().await.is_ok(), "victim alive after {after}");
    }

    async fn recent_errors(&self) -> String {
        self.victim.status().await.unwrap().recent_errors.join("\n")
    }

    /// The newest logged error. The attacker sees its connection close only
    /// after the node has recorded why (the socket closes when the actor
    /// drops it).
    async fn last_error(&self) -> String {
        self.victim.status().await.unwrap().recent_errors.last().cloned().unwrap_or_default()
    }
}

/// Reads until the peer closes; panics if it stays open past `secs`.
async fn expect_closed(s: &mut TcpStream, secs: u64, what: &str) {
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => panic!("{what}: connection still open after {secs} s"),
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
        }
    }
}

fn attacker_id() -> PeerId {
    PeerId::random(b"attacker")
}

fn handshake(methods: &[u8]) -> Frame {
    let id = attacker_id();
    Frame::build(
        MsgType::Whisper,
        &id,
        now(),
        SubFlag::Handshake,
        &[
            Value::Binary(id.as_bytes().to_vec()),
            Value::Binary(Protocol::default().id().as_bytes().to_vec()),
            Value::Array(vec![Value::from("127.0.0.1"), Value::from(1)]),
            Value::Array(methods.iter().map(|&m| Value::from(m)).collect()),
        ],
    )
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Opens a connection; with `shake`, completes a proper handshake first.
async fn connect(addr: &str, shake: bool) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    if shake {
        s.write_all(handshake(&[Compression::Zlib.code()]).wire_bytes()).await.unwrap();
        // Wait for the victim's handshake so ours is processed first.
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await.unwrap().unwrap();
    }
    s
}

/// A frame with a valid checksum around an arbitrary payload.
fn raw_frame(payload: &[u8]) -> Vec<u8> {
    Frame::from_payload(payload).wire_bytes().to_vec()
}

async fn attack(b: &mut Bench, name: &str, shake: bool, bytes: Vec<u8>, reason: &str) {
    let mut s = connect(&b.addr(), shake).await;
    let _ = s.write_all(&bytes).await;
    expect_closed(&mut s, 10, name).await;
    let error = b.last_error().await;
    assert!(error.contains(reason), "{name}: expected a logged reason containing {reason:?}, got: {error}");
    eprintln!("{name}: closed: {error}");
    b.good_peers_still_talk(name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_suite() {
    let mut b = Bench::new().await;
    let baseline = rss_kib();

    // A length prefix announcing 4 GiB: refused before any buffering.
    attack(&mut b, "oversized length prefix", false, vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3], "exceeds the maximum")
        .await;
    attack(
        &mut b,
        "oversized length prefix after handshake",
        true,
        vec![0x7f, 0xff, 0xff, 0xff],
        "exceeds the maximum",
    )
    .await;

    // Random garbage.
    let mut seed = 0x1234_5678_9abc_def0_u64;
    let garbage: Vec<u8> = (0..65_536)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .map(|b| if b == 0 { 1 } else { b })
        .collect();
    let mut g = vec![0, 0, 0x10, 0];
    g.extend_from_slice(&garbage[..4096]);
    attack(&mut b, "random garbage", true, g, "undecodable frame").await;

    // A valid frame with a flipped checksum bit.
    let mut bad =
        Frame::build(MsgType::Broadcast, &attacker_id(), now(), 0u64, &[Value::from("x")]).wire_bytes().to_vec();
    bad[8] ^= 0x40;
    attack(&mut b, "bad checksum", true, bad, "checksum").await;

    // Truncated msgpack (checksum valid over the truncated payload).
    let full = Frame::build(MsgType::Broadcast, &attacker_id(), now(), 0u64, &[Value::from("truncate me please")]);
    let payload = full.payload();
    attack(&mut b, "truncated msgpack", true, raw_frame(&payload[..payload.len() - 5]), "truncated").await;

    // 100,000 levels of nesting.
    let mut deep = vec![0x95, 0x00, 0xc4, 0x01, b'x', 0x00, 0x00];
    deep.extend(std::iter::repeat_n(0x91, 100_000));
    deep.push(0xc0);
    attack(&mut b, "100k-deep nesting", true, raw_frame(&deep), "nesting deeper").await;

    // Containers that claim billions of items.
    let huge = [0x95, 0x00, 0xc4, 0x01, b'x', 0x00, 0x00, 0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0];
    attack(&mut b, "array claiming 4 billion items", true, raw_frame(&huge), "container larger").await;
    let huge_map = [0x95, 0x00, 0xc4, 0x01, b'x', 0x00, 0x00, 0xdf, 0x7f, 0xff, 0xff, 0xff];
    attack(&mut b, "map claiming 2 billion pairs", true, raw_frame(&huge_map), "container larger").await;
    let huge_bin = [0x95, 0x00, 0xc4, 0x01, b'x', 0x00, 0x00, 0xc6, 0xff, 0xff, 0xff, 0xf0, 0x00];
    attack(&mut b, "bin claiming 4 GiB", true, raw_frame(&huge_bin), "truncated").await;

    // Handshakes with wrong field types.
    for (name, fields) in [
        ("int node id", vec![Value::from(5), Value::Binary(b"p".to_vec()), Value::Nil, Value::Array(vec![])]),
        (
            "array protocol id",
            vec![Value::Binary(b"id".to_vec()), Value::Array(vec![]), Value::Nil, Value::Array(vec![])],
        ),
        ("missing fields", vec![Value::Binary(b"id".to_vec())]),
        ("map compression list", {
            let id = attacker_id();
            vec![
                Value::Binary(id.as_bytes().to_vec()),
                Value::Binary(Protocol::default().id().as_bytes().to_vec()),
                Value::Nil,
                Value::Map(vec![]),
            ]
        }),
    ] {
        let f = Frame::build(MsgType::Whisper, &attacker_id(), now(), SubFlag::Handshake, &fields);
        attack(&mut b, &format!("handshake with {name}"), false, f.wire_bytes().to_vec(), "protocol violation").await;
    }

    // A message before any handshake.
    let early = Frame::build(MsgType::Broadcast, &attacker_id(), now(), 0u64, &[Value::from("too early")]);
    attack(&mut b, "broadcast before handshake", false, early.wire_bytes().to_vec(), "before handshake").await;

    // A zlib bomb after negotiating zlib: 256 MiB of zeros in ~250 KB.
    let bomb_body = {
        use std::io::Write;
        let mut w = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..256 {
            w.write_all(&zeros).unwrap();
        }
        w.finish().unwrap()
    };
    assert!(bomb_body.len() < MAX_FRAME);
    let mut bomb = (bomb_body.len() as u32).to_be_bytes().to_vec();
    bomb.extend_from_slice(&bomb_body);
    attack(&mut b, "zlib bomb", true, bomb, "decompressed body exceeds").await;

    // A 1 MiB sender id.
    let big_id = PeerId::from_bytes(vec![b'A'; 1 << 20]);
    let f = Frame::build(MsgType::Broadcast, &big_id, now(), 0u64, &[Value::from("x")]);
    attack(&mut b, "1 MiB sender id", true, f.wire_bytes().to_vec(), "sender id length").await;

    // Hundreds of silent connections: the handshake cap turns the excess
    // away at once, the handshake deadline closes the rest.
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(TcpStream::connect(b.addr()).await.unwrap());
    }
    b.good_peers_still_talk("300 silent connections").await;
    for (i, s) in silent.iter_mut().enumerate() {
        expect_closed(s, 10, &format!("silent connection {i}")).await;
    }
    let st = b.victim.status().await.unwrap();
    assert!(st.refused_connections > 0, "the handshake cap refused some");
    assert!(st.connections <= 2 + 1, "only the good peers remain: {}", st.connections);
    b.good_peers_still_talk("silent connections closed").await;

    // Slow senders: a handshake dripped a byte at a time misses the
    // handshake deadline; after a handshake, a frame dripped a byte at a
    // time misses the stalled-frame deadline, however steady the drip.
    let hs = handshake(&[]).wire_bytes().to_vec();
    let mut s = TcpStream::connect(b.addr()).await.unwrap();
    let drip = async {
        for byte in &hs {
            if s.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(4), drip).await;
    expect_closed(&mut s, 10, "slow handshake").await;
    b.good_peers_still_talk("slow handshake").await;
    let mut s = connect(&b.addr(), true).await;
    let frame = Frame::build(MsgType::Broadcast, &attacker_id(), now(), 0u64, &[Value::from("x".repeat(200))])
        .wire_bytes()
        .to_vec();
    let drip = async {
        for byte in &frame {
            if s.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(4), drip).await;
    expect_closed(&mut s, 10, "slow frame").await;
    assert!(b.last_error().await.contains("stalled"), "{}", b.recent_errors().await);
    b.good_peers_still_talk("slow frame").await;

    // Memory stayed bounded through all of it.
    let grown = rss_kib().saturating_sub(baseline);
    assert!(grown < 96 * 1024, "RSS grew by {grown} KiB");
    eprintln!("hostile suite: all attacks closed their connection; RSS grew {grown} KiB");
    for n in [&b.victim, &b.g1, &b.g2] {
        n.close().await.unwrap();
    }
}
