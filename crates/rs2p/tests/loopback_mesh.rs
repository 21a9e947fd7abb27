//! Real nodes on 127.0.0.1 with OS-assigned ports, rs2p only. Every wait is
//! bounded; nodes are closed at the end of each test.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{next_msg, wait_for};
use rs2p::{CloseReason, Encryption, Error, Event, MeshSocket, MessageKind, PeerId, Protocol, ReplyRoute, Value};

async fn node() -> MeshSocket {
    MeshSocket::builder().bind("127.0.0.1:0").spawn().await.expect("bind")
}

#[tokio::test]
async fn broadcast_whisper_and_reply_between_two_nodes() {
    let a = node().await;
    let b = node().await;
    let peer = b.connect(a.out_addr().clone()).await.unwrap();
    assert_eq!(&peer, a.id());
    wait_for(5, "a sees b", || async { a.routing_table().await.unwrap().len() == 1 }).await;

    let packets = vec![
        Value::from("str"),
        Value::Binary(vec![0, 1, 2]),
        Value::from(-7),
        Value::F64(2.5),
        Value::Array(vec![Value::Nil, Value::Boolean(true)]),
        Value::Map(vec![(Value::from("k"), Value::from(1))]),
    ];
    a.broadcast(packets.clone()).await.unwrap();
    let m = next_msg(&b).await;
    assert_eq!(m.kind(), MessageKind::Broadcast);
    assert_eq!(m.sender(), a.id());
    assert_eq!(m.packets().unwrap(), packets);

    m.reply(vec![Value::from("pong")]).await.unwrap();
    let r = next_msg(&a).await;
    assert_eq!(r.kind(), MessageKind::Whisper);
    assert_eq!(r.packets().unwrap(), vec![Value::from("pong")]);

    a.whisper(b.id(), vec![Value::from("direct")]).await.unwrap();
    assert_eq!(next_msg(&b).await.packets().unwrap(), vec![Value::from("direct")]);

    let stranger = PeerId::random(b"nobody");
    assert!(matches!(a.whisper(&stranger, vec![]).await, Err(Error::NotConnected(_))));
    assert_eq!(a.outgoing().await.unwrap(), Vec::<PeerId>::new());
    assert_eq!(a.incoming().await.unwrap(), vec![b.id().clone()]);
    assert_eq!(b.outgoing().await.unwrap(), vec![a.id().clone()]);
    assert!(a.status().await.unwrap().nominal);
    a.close().await.unwrap();
    b.close().await.unwrap();
    assert!(matches!(a.broadcast(vec![]).await, Err(Error::Closed)));
}

async fn build_net(n: usize) -> Vec<MeshSocket> {
    let mut nodes = Vec::new();
    for i in 0..n {
        let s = node().await;
        if i > 0 {
            // Each node knows one earlier node; peer exchange does the rest.
            let target: &MeshSocket = &nodes[(i * 7) % i];
            s.connect(target.out_addr().clone()).await.unwrap();
        }
        nodes.push(s);
    }
    nodes
}

async fn collect_for(n: &MeshSocket, ms: u64) -> Vec<rs2p::Message> {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    n.recv(usize::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_nodes_each_broadcast_arrives_exactly_once() {
    let nodes = build_net(12).await;
    for n in &nodes {
        wait_for(10, "outgoing target", || async {
            let peers = n.routing_table().await.unwrap();
            peers.iter().filter(|p| p.outgoing).count() >= 2 || peers.len() >= 4
        })
        .await;
    }
    let senders = [0usize, 5, 11];
    for (k, &s) in senders.iter().enumerate() {
        for j in 0..10 {
            nodes[s].broadcast(vec![Value::from(format!("m{k}-{j}"))]).await.unwrap();
        }
    }
    let mut dups_total = 0;
    for (i, n) in nodes.iter().enumerate() {
        let mut got: HashMap<String, usize> = HashMap::new();
        wait_for(10, "all broadcasts", || {
            for m in n.recv(usize::MAX) {
                let text = m.packets().unwrap()[0].as_str().unwrap().to_string();
                *got.entry(text).or_default() += 1;
            }
            let expected = senders.iter().filter(|&&s| s != i).count() * 10;
            let done = got.len() == expected;
            async move { done }
        })
        .await;
        // Nothing more trickles in: each message exactly once.
        for m in collect_for(n, 200).await {
            let text = m.packets().unwrap()[0].as_str().unwrap().to_string();
            *got.entry(text).or_default() += 1;
        }
        assert!(got.values().all(|&c| c == 1), "node {i}: {got:?}");
        dups_total += n.status().await.unwrap().stats.duplicates;
    }
    assert!(dups_total > 0, "redundant paths exist and were suppressed");
    for n in nodes {
        n.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_heals_when_a_node_leaves() {
    let nodes = build_net(10).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Take out the node with the most connections.
    let mut best = 0;
    let mut best_degree = 0;
    for (i, n) in nodes.iter().enumerate() {
        let d = n.routing_table().await.unwrap().len();
        if d > best_degree {
            best = i;
            best_degree = d;
        }
    }
    let gone = nodes[best].id().clone();
    nodes[best].close().await.unwrap();
    let rest: Vec<&MeshSocket> = nodes.iter().enumerate().filter(|(i, _)| *i != best).map(|(_, n)| n).collect();
    for n in &rest {
        wait_for(10, "dead peer removed", || async { n.routing_table().await.unwrap().iter().all(|p| p.id != gone) })
            .await;
    }
    // Everyone is reachable again and back at its target (or knows everyone).
    for n in &rest {
        wait_for(15, "outgoing target regained", || async {
            let peers = n.routing_table().await.unwrap();
            peers.iter().filter(|p| p.outgoing).count() >= 4 || peers.len() >= rest.len() - 1
        })
        .await;
    }
    rest[0].broadcast(vec![Value::from("after")]).await.unwrap();
    for n in &rest[1..] {
        let m = next_msg(n).await;
        assert_eq!(m.packets().unwrap(), vec![Value::from("after")]);
    }
    for n in rest {
        n.close().await.unwrap();
    }
}

#[tokio::test]
async fn foreign_subnet_is_refused_with_a_reason() {
    let a = node().await;
    let b = MeshSocket::builder().protocol(Protocol::new("elsewhere", Encryption::Plaintext)).spawn().await.unwrap();
    let mut events = a.events();
    let err = b.connect(a.out_addr().clone()).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(r#"refused: wrong subnet "mesh" (ours "elsewhere")"#) || text.contains("closed by peer"),
        "{text}"
    );
    let ev = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(Event::ConnectFailed { reason, .. }) = events.recv().await {
                return reason;
            }
        }
    })
    .await
    .unwrap();
    assert!(matches!(ev, CloseReason::ProtocolMismatch { .. }), "{ev}");
    assert!(a.routing_table().await.unwrap().is_empty());
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test]
async fn handler_chain_stops_at_first_true() {
    let a = node().await;
    let b = node().await;
    b.connect(a.out_addr().clone()).await.unwrap();
    let first = Arc::new(AtomicUsize::new(0));
    let second = Arc::new(AtomicUsize::new(0));
    let (f, s) = (first.clone(), second.clone());
    b.register_handler(move |m| {
        f.fetch_add(1, Ordering::SeqCst);
        m.packets().unwrap()[0].as_str() == Some("eat")
    })
    .await
    .unwrap();
    b.register_handler(move |_| {
        s.fetch_add(1, Ordering::SeqCst);
        false
    })
    .await
    .unwrap();
    wait_for(5, "handshake", || async { a.routing_table().await.unwrap().len() == 1 }).await;
    a.broadcast(vec![Value::from("eat")]).await.unwrap();
    a.broadcast(vec![Value::from("keep")]).await.unwrap();
    let m = next_msg(&b).await;
    assert_eq!(m.packets().unwrap(), vec![Value::from("keep")]);
    assert_eq!(first.load(Ordering::SeqCst), 2);
    assert_eq!(second.load(Ordering::SeqCst), 1);
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test]
async fn reply_reaches_a_node_we_are_not_connected_to() {
    // a - b - c, with no peer exchange dials beyond: max_outgoing 1.
    let mk = || MeshSocket::builder().max_outgoing(1).maintain_outgoing(false).spawn();
    let a = mk().await.unwrap();
    let b = mk().await.unwrap();
    let c = mk().await.unwrap();
    a.connect(b.out_addr().clone()).await.unwrap();
    c.connect(b.out_addr().clone()).await.unwrap();
    wait_for(5, "b has two peers", || async { b.routing_table().await.unwrap().len() == 2 }).await;
    assert!(a.routing_table().await.unwrap().iter().all(|p| &p.id != c.id()));
    c.broadcast(vec![Value::from("from c")]).await.unwrap();
    let m = next_msg(&a).await;
    assert_eq!(m.sender(), c.id());
    assert_eq!(m.reply(vec![Value::from("routed reply")]).await.unwrap(), ReplyRoute::Routing);
    // b also got c's broadcast; drain it.
    let _ = next_msg(&b).await;
    let r = next_msg(&c).await;
    assert_eq!(r.sender(), a.id());
    assert_eq!(r.packets().unwrap(), vec![Value::from("routed reply")]);
    for n in [a, b, c] {
        n.close().await.unwrap();
    }
}

#[tokio::test]
async fn oversized_messages_are_refused_locally() {
    let limits = rs2p::Limits { max_frame_len: 64 * 1024, ..rs2p::Limits::default() };
    let a = MeshSocket::builder().limits(limits).spawn().await.unwrap();
    let b = node().await;
    b.connect(a.out_addr().clone()).await.unwrap();
    wait_for(5, "linked", || async { a.routing_table().await.unwrap().len() == 1 }).await;
    let big = vec![Value::Binary(vec![0; 100_000])];
    match a.broadcast(big.clone()).await {
        Err(Error::MessageTooLarge { len, max }) => {
            assert!(len > 100_000);
            assert_eq!(max, 64 * 1024);
        }
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
    assert!(matches!(a.whisper(b.id(), big.clone()).await, Err(Error::MessageTooLarge { .. })));
    assert!(matches!(a.broadcast_many(vec![vec![Value::from("ok")], big]).await, Err(Error::MessageTooLarge { .. })));
    // The link is intact and the small message before the refused one went out.
    assert_eq!(next_msg(&b).await.packets().unwrap(), vec![Value::from("ok")]);
    a.broadcast(vec![Value::Binary(vec![1; 60_000])]).await.unwrap();
    assert_eq!(next_msg(&b).await.packets().unwrap()[0].as_slice().map(<[u8]>::len), Some(60_000));
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test]
async fn a_panicking_handler_does_not_stop_the_node() {
    let a = node().await;
    let b = node().await;
    b.connect(a.out_addr().clone()).await.unwrap();
    b.register_handler(|m| {
        if m.packets().unwrap()[0].as_str() == Some("boom") {
            panic!("handler bug");
        }
        false
    })
    .await
    .unwrap();
    wait_for(5, "linked", || async { a.routing_table().await.unwrap().len() == 1 }).await;
    a.broadcast(vec![Value::from("boom")]).await.unwrap();
    a.broadcast(vec![Value::from("after")]).await.unwrap();
    // The panic is contained: both messages still reach the queue, in order.
    assert_eq!(next_msg(&b).await.packets().unwrap(), vec![Value::from("boom")]);
    assert_eq!(next_msg(&b).await.packets().unwrap(), vec![Value::from("after")]);
    assert!(b.status().await.is_ok());
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// A full `recv` queue drops new messages and counts them, the node keeps
/// relaying them, and after `close` the queued ones are still handed out
/// before `next_message` reports the end.
#[tokio::test]
async fn full_recv_queue_drops_and_counts_but_keeps_relaying() {
    // A strict chain: no node dials peers it learns of, so c can only hear
    // a through b.
    let chain_node = || MeshSocket::builder().bind("127.0.0.1:0").max_outgoing(0).maintain_outgoing(false);
    let a = chain_node().spawn().await.unwrap();
    let b = chain_node().recv_queue_capacity(5).spawn().await.unwrap();
    let c = chain_node().spawn().await.unwrap();
    b.connect(a.out_addr().clone()).await.unwrap();
    c.connect(b.out_addr().clone()).await.unwrap();
    wait_for(5, "chain a-b-c", || async {
        b.routing_table().await.unwrap().len() == 2 && c.routing_table().await.unwrap().len() == 1
    })
    .await;
    let sent: Vec<Vec<Value>> = (0..20u64).map(|i| vec![Value::from(i)]).collect();
    a.broadcast_many(sent).await.unwrap();

    // c, behind b, gets all 20 although b keeps only 5.
    let mut at_c = Vec::new();
    while at_c.len() < 20 {
        at_c.push(next_msg(&c).await.packets().unwrap()[0].as_u64().unwrap());
    }
    at_c.sort_unstable();
    assert_eq!(at_c, (0..20).collect::<Vec<u64>>());
    wait_for(5, "b counts 15 dropped", || async { b.status().await.unwrap().dropped_messages == 15 }).await;

    // The five kept are the first five, in order; two via recv, the rest
    // after close through next_message, then the end.
    let first: Vec<u64> = b.recv(2).iter().map(|m| m.packets().unwrap()[0].as_u64().unwrap()).collect();
    assert_eq!(first, vec![0, 1]);
    b.close().await.unwrap();
    let mut rest = Vec::new();
    while let Some(m) = tokio::time::timeout(Duration::from_secs(5), b.next_message()).await.expect("next_message") {
        rest.push(m.packets().unwrap()[0].as_u64().unwrap());
    }
    assert_eq!(rest, vec![2, 3, 4]);
    assert!(b.recv(10).is_empty());
    a.close().await.unwrap();
    c.close().await.unwrap();
}

/// A real TCP peer that handshakes, then never reads again (as a peer whose
/// packets silently vanish looks to the sender once the kernel's buffers are
/// full). The node must keep answering at once, keep relaying to its healthy
/// peer, and drop the silent one at the slow-peer timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tcp_peer_never_stalls_the_node() {
    use rs2p::proto::wire::message::{Handshake, MeshMessage};
    use rs2p::proto::wire::{Compression, FrameDecoder, Limits};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let a =
        MeshSocket::builder().slow_peer_timeout(Duration::from_secs(3)).maintain_outgoing(false).spawn().await.unwrap();
    let b = MeshSocket::builder().maintain_outgoing(false).spawn().await.unwrap();
    b.connect(a.out_addr().clone()).await.unwrap();
    let mut events = a.events();
    // The silent peer: a raw socket speaking py2p's handshake as an rs2p node.
    let mut raw = tokio::net::TcpStream::connect(a.local_addr()).await.unwrap();
    let silent = PeerId::random(b"silent tcp peer");
    let hs = MeshMessage::Handshake(Handshake {
        id: silent.clone(),
        protocol: Protocol::default().id().as_bytes().to_vec(),
        addr: Some(rs2p::PeerAddr::new("127.0.0.1", 1)),
        methods: vec![u64::from(Compression::Identity.code())],
    })
    .encode(&silent, std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs());
    raw.write_all(hs.wire_bytes()).await.unwrap();
    let mut dec = FrameDecoder::new(Limits::default(), &Compression::DEFAULT_PREFERENCE);
    while dec.next_packet().unwrap().is_none() {
        raw.read_buf(dec.buffer()).await.unwrap();
    }
    wait_for(5, "a sees both", || async { a.routing_table().await.unwrap().len() == 2 }).await;
    // From now on the raw socket reads nothing: tens of MB go its way.
    let payload = Value::Binary(vec![3; 4096]);
    let mut slowest = Duration::ZERO;
    let mut sent = 0usize;
    let mut got = 0;
    for round in 0..100 {
        let batch: Vec<Vec<Value>> = (0..100).map(|i| vec![Value::from(round * 100 + i), payload.clone()]).collect();
        a.broadcast_many(batch).await.unwrap();
        sent += 100;
        let t = std::time::Instant::now();
        a.status().await.unwrap();
        slowest = slowest.max(t.elapsed());
        // b takes its share meanwhile.
        got += b.recv(usize::MAX).len();
    }
    // A generous functional bound (a stalled actor took 10 s per peer): the
    // speed itself is the benchmarks' business.
    assert!(slowest < Duration::from_secs(1), "a status query waited {slowest:?}");
    let down = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some(Event::PeerDown { peer, reason }) = events.recv().await {
                if peer == silent {
                    return reason;
                }
            }
        }
    })
    .await
    .expect("the silent peer is dropped");
    assert_eq!(down, CloseReason::SlowPeer);
    let st = a.status().await.unwrap();
    assert_eq!(st.slow_peers, 1);
    assert!(st.dropped_frames > 0, "frames for the silent peer were dropped, not queued without bound");
    // b received every broadcast.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got < sent {
        got += b.recv(10_000).len();
        if got < sent {
            assert!(tokio::time::Instant::now() < deadline, "b got {got} of {sent}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert_eq!(got, sent);
    drop(raw);
    a.close().await.unwrap();
    b.close().await.unwrap();
}
