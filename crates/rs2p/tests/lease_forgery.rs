//! Writes that try to take a leased key, sent by a raw socket speaking
//! py2p's wire format to a live rs2p network (issue #13's lease hole): a
//! rival's store, delta or delete under its own id, with and without rs2p's
//! `[ts_ms]` field, changes nothing on any rs2p replica, is counted, and the
//! network keeps working. A write of the same rival on a free key goes
//! through, so the attack frames are known to be read and relayed.

mod common;

use std::time::Duration;

use common::{now_ms, raw_handshake, wait_for};
use rs2p::proto::id::PeerId;
use rs2p::proto::wire::message::SyncMessage;
use rs2p::proto::wire::Compression;
use rs2p::{SyncSocket, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn sync_node() -> SyncSocket {
    SyncSocket::builder().anti_entropy_interval(Duration::from_millis(300)).spawn().await.expect("spawn")
}

/// A connection to `victim` that completed py2p's handshake as `me`.
async fn rival_link(victim: &SyncSocket, me: &PeerId) -> TcpStream {
    let mut s = TcpStream::connect(victim.out_addr().to_string()).await.unwrap();
    let methods = [u64::from(Compression::Zlib.code())];
    let shake = raw_handshake(me, victim.protocol().id().as_bytes(), &methods);
    s.write_all(shake.wire_bytes()).await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await.unwrap().unwrap();
    s
}

async fn refused(n: &SyncSocket) -> u64 {
    n.status().await.unwrap().sync.unwrap().stats.lease_refused
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rival_cannot_take_a_leased_key_with_or_without_the_version_field() {
    let a = sync_node().await;
    let b = sync_node().await;
    b.connect(a.out_addr().clone()).await.unwrap();
    a.set("k", "owner's").await.unwrap();
    wait_for(5, "b has k", || async { b.get("k").await.unwrap().is_some() }).await;

    // py2p's writes carry whole seconds: one made in the owner's second
    // would count from that second's start, before the owner's write. The
    // rival backdating its writes is the limit documented in `lease.rs`
    // (the mesh's 60 s window on header times bounds it); these attacks do
    // not backdate.
    let owned_at = a.get_with_meta("k").await.unwrap().unwrap().2;
    while now_ms() / 1000 <= owned_at {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rival = PeerId::random(b"rival");
    let mut link = rival_link(&b, &rival).await;
    let t = now_ms();
    let key = b"k".as_slice();
    let attacks = [
        ("store with [ts_ms]", SyncMessage::encode_store(&rival, t / 1000, key, &Value::from("stolen"), Some(t), &[])),
        ("store without it", SyncMessage::encode_store(&rival, t / 1000, key, &Value::from("stolen"), None, &[])),
        ("delete with [ts_ms]", SyncMessage::encode_store(&rival, t / 1000, key, &Value::Nil, Some(t + 1), &[])),
        ("delete without it", SyncMessage::encode_store(&rival, t / 1000 + 1, key, &Value::Nil, None, &[])),
        (
            "delta with [ts_ms]",
            SyncMessage::encode_delta(&rival, t / 1000, key, &[(Value::from("f"), Value::from(1))], Some(t + 2), &[]),
        ),
    ];
    for (_, frame) in &attacks {
        link.write_all(frame.wire_bytes()).await.unwrap();
    }
    // A version made up to claim the key long ago: dropped as such.
    let backdated = SyncMessage::encode_store(&rival, t / 1000, key, &Value::from("stolen"), Some(1), &[]);
    link.write_all(backdated.wire_bytes()).await.unwrap();
    // The control: the rival's write on a free key goes through, to both.
    let free = SyncMessage::encode_store(&rival, t / 1000, b"free", &Value::from("rival's"), Some(t + 3), &[]);
    link.write_all(free.wire_bytes()).await.unwrap();
    for n in [&a, &b] {
        wait_for(5, "the rival's free key everywhere", || async {
            n.get("free").await.unwrap() == Some(Value::from("rival's"))
        })
        .await;
        wait_for(5, "every attack counted", || async { refused(n).await >= attacks.len() as u64 }).await;
        wait_for(5, "the made-up version counted", || async {
            n.status().await.unwrap().sync.unwrap().stats.bad_versions >= 1
        })
        .await;
        assert_eq!(n.get("k").await.unwrap(), Some(Value::from("owner's")), "after {:?}", attacks.map(|a| a.0));
        assert_eq!(n.get_with_meta("k").await.unwrap().unwrap().1, *a.id(), "the owner is still a");
    }
    // The owner still writes, and the network still carries it.
    a.set("k", "owner's, again").await.unwrap();
    wait_for(5, "b follows the owner", || async { b.get("k").await.unwrap() == Some(Value::from("owner's, again")) })
        .await;
    // And b, honest, is refused locally with the holder named.
    match b.set("k", "mine").await {
        Err(rs2p::Error::Leased { owner, .. }) => assert_eq!(owner, *a.id()),
        other => panic!("expected a lease refusal, got {other:?}"),
    }
}
