//! Forgeries against a live rs2p network (issue #13), sent by a raw socket
//! speaking py2p's wire format: a broadcast, a sync store and a delete in
//! another rs2p node's name; signature messages made with the wrong key; a
//! store under the attacker's own, validly signed, id on a leased key; a
//! captured signed broadcast replayed after the 60 s window; anti-entropy
//! records claiming another node's writes, without its proof or with one
//! the attacker signed. Every one is
//! refused and counted; the network keeps working; what an honest rs2p node
//! sends arrives marked verified, what the attacker sends in its own name
//! arrives marked unverified.

mod common;

use std::time::Duration;

use common::{now_ms, raw_handshake, wait_for};
use rs2p::proto::identity::Identity;
use rs2p::proto::mesh::signatures_context;
use rs2p::proto::sync::proof;
use rs2p::proto::wire::capability;
use rs2p::proto::wire::message::{EntryRecord, MeshMessage, SyncMessage};
use rs2p::proto::wire::{Compression, Frame, FrameDecoder, Limits, MsgType, Packet, SubFlag};
use rs2p::{MeshSocket, MsgId, PeerId, SyncSocket, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw connection to `addr` that completed the handshake as `me` with
/// `methods` (py2p's zlib: a py2p peer; with `CHECKS`: a peer that is sent
/// signature messages).
struct Raw {
    s: TcpStream,
    decoder: FrameDecoder,
}

impl Raw {
    async fn link(addr: &str, protocol_id: &[u8], me: &PeerId, methods: &[u64]) -> Raw {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(raw_handshake(me, protocol_id, methods).wire_bytes()).await.unwrap();
        let mut raw = Raw { s, decoder: FrameDecoder::new(Limits::default(), &[Compression::Zlib]) };
        raw.next(|p| p.header.is(MsgType::Whisper, SubFlag::Handshake)).await;
        raw
    }

    async fn send(&mut self, f: &Frame) {
        self.s.write_all(f.wire_bytes()).await.unwrap();
    }

    /// The next frame matching `pred` (others are skipped), within 10 s.
    async fn next(&mut self, pred: impl Fn(&Packet) -> bool) -> Packet {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            while let Some(p) = self.decoder.next_packet().unwrap() {
                if pred(&p) {
                    return p;
                }
            }
            let mut buf = [0u8; 65536];
            let n = tokio::time::timeout_at(deadline, self.s.read(&mut buf)).await.expect("a frame in time").unwrap();
            assert!(n > 0, "closed by the node");
            self.decoder.buffer().extend_from_slice(&buf[..n]);
        }
    }
}

fn first_text(m: &rs2p::Message) -> Option<String> {
    m.packets().ok()?.first()?.as_str().map(str::to_owned)
}

/// What `n` received within `ms`, as (first packet, verified).
async fn received(n: &MeshSocket, ms: u64) -> Vec<(String, bool)> {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    n.recv(10_000).iter().map(|m| (first_text(m).unwrap_or_default(), m.verified())).collect()
}

fn signatures(signer: &Identity, claimed: &PeerId, protocol_id: &[u8], ids: Vec<MsgId>) -> Frame {
    let signature = signer.sign(&signatures_context(protocol_id, &ids));
    MeshMessage::Signatures { key: signer.public_key(), signature, ids }.encode(claimed, now_ms() / 1000)
}

/// A sync node with quick anti-entropy rounds.
async fn synced() -> SyncSocket {
    SyncSocket::builder().anti_entropy_interval(Duration::from_millis(300)).spawn().await.unwrap()
}

/// a, which owns "k" ("owner's"), and its peer b.
async fn owner_and_peer() -> (SyncSocket, SyncSocket) {
    let (a, b) = (synced().await, synced().await);
    b.connect(a.out_addr().clone()).await.unwrap();
    a.set("k", "owner's").await.unwrap();
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_broadcasts_and_writes_in_a_keyed_nodes_name_are_refused() {
    let (a, b) = owner_and_peer().await;
    wait_for(5, "b has k", || async { b.get("k").await.unwrap().is_some() }).await;
    // a's broadcast reaches b, verified.
    a.mesh().broadcast(vec![Value::from("from a")]).await.unwrap();
    assert_eq!(received(b.mesh(), 500).await, vec![("from a".to_string(), true)]);
    let owned_at = a.get_with_meta("k").await.unwrap().unwrap().2;
    while now_ms() / 1000 <= owned_at {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The attacker: a py2p-style peer of b, with a key of its own.
    let attacker = Identity::from_secret([66; 32]);
    let protocol_id = b.protocol().id().as_bytes().to_vec();
    let mut raw = Raw::link(&b.out_addr().to_string(), &protocol_id, &attacker.id(), &[0x13]).await;
    let (t, key) = (now_ms(), b"k".as_slice());
    let victim = a.id().clone();
    let forged_broadcast = Frame::build(MsgType::Broadcast, &victim, t / 1000, 0u64, &[Value::from("forged")]);
    let forged_store = SyncMessage::encode_store(&victim, t / 1000, key, &Value::from("stolen"), Some(t), &[]);
    let forged_store_py2p = SyncMessage::encode_store(&victim, t / 1000, key, &Value::from("stolen 2"), None, &[]);
    let forged_delete = SyncMessage::encode_store(&victim, t / 1000, key, &Value::Nil, Some(t + 1), &[]);
    // The attacker's own store on a's leased key, signed with its own
    // (valid) key, with and without the version field.
    let own = attacker.id();
    let own_stores = [
        SyncMessage::encode_store(&own, t / 1000, key, &Value::from("mine"), Some(t + 2), &[]),
        SyncMessage::encode_store(&own, t / 1000, key, &Value::from("mine 2"), None, &[]),
    ];
    let own_signed = signatures(&attacker, &own, &protocol_id, own_stores.iter().map(Frame::id).collect());
    // A signature in a's name made with the attacker's key, over the
    // forged broadcast.
    let wrong_key = signatures(&attacker, &victim, &protocol_id, vec![forged_broadcast.id()]);
    for f in [&forged_broadcast, &forged_store, &forged_store_py2p, &forged_delete, &wrong_key, &own_signed] {
        raw.send(f).await;
    }
    for f in &own_stores {
        raw.send(f).await;
    }
    // The control: the attacker's own signed broadcast goes through,
    // marked verified (it is the attacker's, and says so).
    let control = Frame::build(MsgType::Broadcast, &own, t / 1000, 0u64, &[Value::from("attacker's own")]);
    raw.send(&signatures(&attacker, &own, &protocol_id, vec![control.id()])).await;
    raw.send(&control).await;

    // b, which the attacker is linked to, holds the four forgeries in a's
    // name 5 s for a signature that never comes, then drops them. (a
    // drops broadcasts in its own name on sight.)
    wait_for(10, "the four forgeries in a's name counted", || async { b.status().await.unwrap().stats.unsigned >= 4 })
        .await;
    for n in [&a, &b] {
        wait_for(5, "the attacker's own stores refused by the lease", || async {
            n.status().await.unwrap().sync.unwrap().stats.lease_refused >= 2
        })
        .await;
        assert_eq!(n.get("k").await.unwrap(), Some(Value::from("owner's")));
        assert_eq!(n.get_with_meta("k").await.unwrap().unwrap().1, victim, "the owner is still a");
    }
    let st = b.status().await.unwrap().stats;
    assert_eq!(st.bad_signatures, 1, "the signature made with the wrong key");
    assert!(st.rejected >= 5, "{st:?}");
    let got = received(b.mesh(), 0).await;
    assert_eq!(got, vec![("attacker's own".to_string(), true)], "no forgery delivered");
    assert_eq!(received(a.mesh(), 0).await, vec![("attacker's own".to_string(), true)]);

    // The network still works.
    a.set("k", "owner's, again").await.unwrap();
    wait_for(5, "b follows the owner", || async { b.get("k").await.unwrap() == Some(Value::from("owner's, again")) })
        .await;
    a.mesh().broadcast(vec![Value::from("still here")]).await.unwrap();
    assert_eq!(received(b.mesh(), 500).await, vec![("still here".to_string(), true)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_signed_broadcast_replayed_after_61_s_is_refused() {
    let mk = || MeshSocket::builder().max_outgoing(0).spawn();
    let (a, b) = (mk().await.unwrap(), mk().await.unwrap());
    b.connect(a.out_addr().clone()).await.unwrap();
    let protocol_id = a.protocol().id().as_bytes().to_vec();
    // The eavesdropper: a peer of a that says it checks signatures, so it
    // is sent them.
    let spy = PeerId::random(b"spy");
    let mut raw = Raw::link(&a.out_addr().to_string(), &protocol_id, &spy, &[0x2f, capability::CHECKS]).await;
    wait_for(5, "a counts the spy", || async { a.routing_table().await.unwrap().len() == 2 }).await;
    a.broadcast(vec![Value::from("once")]).await.unwrap();
    let sig = raw.next(|p| p.header.subflag == SubFlag::Signatures.code()).await;
    let msg = raw.next(|p| p.header.subflag == 0).await;
    assert_eq!(received(&b, 300).await, vec![("once".to_string(), true)]);
    // Inside the window, a replay is a duplicate: nothing new.
    raw.send(&sig.frame).await;
    raw.send(&msg.frame).await;
    assert!(received(&b, 500).await.is_empty());
    // 61 s after the message's second, the same bytes again, to a and
    // through a to b.
    let stale_before = b.status().await.unwrap().stats.stale;
    let at = (msg.header.time + 61) * 1000;
    tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()) + 100)).await;
    raw.send(&sig.frame).await;
    raw.send(&msg.frame).await;
    // The control: the spy's own fresh broadcast is delivered (unsigned:
    // the spy was never seen signing), so the replay was read.
    let probe = Frame::build(MsgType::Broadcast, &spy, now_ms() / 1000, 0u64, &[Value::from("probe")]);
    raw.send(&probe).await;
    assert_eq!(received(&a, 500).await, vec![("probe".to_string(), false)]);
    assert_eq!(received(&b, 0).await, vec![("probe".to_string(), false)]);
    let st = a.status().await.unwrap().stats;
    assert_eq!(st.stale, 2, "the replayed signature and message, counted: {st:?}");
    assert_eq!(b.status().await.unwrap().stats.stale, stale_before, "not relayed");
    // And a still talks to b.
    a.broadcast(vec![Value::from("after")]).await.unwrap();
    assert_eq!(received(&b, 500).await, vec![("after".to_string(), true)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_anti_entropy_records_are_refused_and_proven_ones_repair_anyone() {
    let (a, b) = owner_and_peer().await;
    a.update((0..300).map(|i| (format!("bulk{i}"), Value::from(i)))).await.unwrap();
    wait_for(5, "b has a's keys", || async { b.len().await.unwrap() == 301 }).await;

    // The attacker whispers anti-entropy records to b (any peer may offer
    // repairs) claiming writes of a: without a proof, with a proof it
    // signed itself, and a delete the same way.
    let attacker = Identity::from_secret([67; 32]);
    let protocol_id = b.protocol().id().as_bytes().to_vec();
    let mut raw = Raw::link(&b.out_addr().to_string(), &protocol_id, &attacker.id(), &[0x13]).await;
    let (t, victim) = (now_ms() + 1_000, a.id().clone());
    let record = |value: Value, proof| EntryRecord {
        key: bytes::Bytes::from_static(b"k"),
        base_ts_ms: t,
        base_owner: bytes::Bytes::copy_from_slice(victim.as_bytes()),
        base_proof: proof,
        base: value,
        fields: Vec::new(),
        holdings: Vec::new(),
    };
    let self_signed = |value: Value| {
        let c = proof::content_hash(proof::Content::Set(&value));
        let leaf = proof::leaf(b"k", &victim, t, &c);
        record(value, proof::sign_batch(&attacker, &[(leaf, c)]).pop())
    };
    let forged =
        vec![record(Value::from("stolen"), None), self_signed(Value::from("stolen, signed")), self_signed(Value::Nil)];
    raw.send(&SyncMessage::Entries(forged).encode(&attacker.id(), t / 1000)).await;
    wait_for(5, "the three forged records counted", || async {
        b.status().await.unwrap().sync.unwrap().stats.forged_writes >= 3
    })
    .await;
    assert_eq!(b.get("k").await.unwrap(), Some(Value::from("owner's")));
    assert_eq!(b.get_with_meta("k").await.unwrap().unwrap().1, victim, "the owner is still a");

    // c joins through b only: a's writes reach it in b's records, checked
    // against a's proofs, none refused.
    let c = synced().await;
    c.connect(b.out_addr().clone()).await.unwrap();
    wait_for(10, "c repaired by b", || async { c.len().await.unwrap() == 301 }).await;
    assert_eq!(c.get("k").await.unwrap(), Some(Value::from("owner's")));
    assert_eq!(c.status().await.unwrap().sync.unwrap().stats.forged_writes, 0);
    // The network still works.
    a.set("k", "owner's, again").await.unwrap();
    wait_for(5, "c follows the owner", || async { c.get("k").await.unwrap() == Some(Value::from("owner's, again")) })
        .await;
}
