//! Driver tests: a real node, scripted peers over in-memory pipes
//! ([`MeshSocket::attach`]), and tokio's paused clock. Nothing here sleeps
//! for real: time moves only when every task waits, so a deadline fires at
//! its exact virtual time, and an actor that waited on a peer would let a
//! short query timeout fire (it would fail the test, not slow it).

use std::time::Duration;

use rs2p::proto::addr::PeerAddr;
use rs2p::proto::wire::message::{Handshake, MeshMessage};
use rs2p::proto::wire::{Compression, Frame, FrameDecoder, Limits, MsgType, Packet, SubFlag};
use rs2p::{CloseReason, Event, MeshSocket, PeerId, Protocol, SyncSocket, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// A query must be answered within this much virtual time.
const PROMPT: Duration = Duration::from_millis(5);

/// A peer whose every byte the test writes and reads itself.
struct Scripted {
    io: DuplexStream,
    dec: FrameDecoder,
    id: PeerId,
}

impl Scripted {
    /// Attaches a pipe holding at most `buffer` bytes in each direction to
    /// `node` and completes the handshake as an rs2p peer on `protocol`.
    async fn join(node: &MeshSocket, protocol: &Protocol, name: &str, buffer: usize) -> Scripted {
        let (ours, theirs) = tokio::io::duplex(buffer);
        node.attach(theirs).await.unwrap();
        let mut s = Scripted {
            io: ours,
            dec: FrameDecoder::new(Limits::default(), &Compression::DEFAULT_PREFERENCE),
            id: PeerId::random(name.as_bytes()),
        };
        let hs = s.expect().await;
        assert!(hs.header.is(MsgType::Whisper, SubFlag::Handshake), "{hs:?}");
        let Ok(Some(MeshMessage::Handshake(theirs))) = MeshMessage::decode(&hs) else { panic!("{hs:?}") };
        assert_eq!(&theirs.id, node.id());
        let ours = MeshMessage::Handshake(Handshake {
            id: s.id.clone(),
            protocol: protocol.id().as_bytes().to_vec(),
            addr: Some(PeerAddr::new("127.0.0.1", 1)),
            methods: vec![u64::from(Compression::Identity.code())],
        });
        s.send(&ours.encode(&s.id, now())).await;
        // The node answers a handshake with its peer list.
        let peers = s.expect().await;
        assert!(peers.header.is(MsgType::Whisper, SubFlag::Peers), "{peers:?}");
        s
    }

    async fn send(&mut self, f: &Frame) {
        self.io.write_all(f.wire_bytes()).await.unwrap();
    }

    /// The next frame from the node (within a virtual minute).
    async fn expect(&mut self) -> Packet {
        tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                if let Some(p) = self.dec.next_packet().unwrap() {
                    return p;
                }
                let n = self.io.read_buf(self.dec.buffer()).await.unwrap();
                assert!(n > 0, "the node closed the pipe");
            }
        })
        .await
        .expect("a frame from the node")
    }

    /// Whether the node closed the pipe (after what it sent before).
    async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            match self.io.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn text(sender: &PeerId, s: &str) -> Frame {
    Frame::build(MsgType::Broadcast, sender, now(), SubFlag::Broadcast, &[Value::from(s)])
}

async fn next_event(events: &mut rs2p::EventStream, pick: impl Fn(&Event) -> bool) -> Event {
    tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let e = events.recv().await.expect("node running");
            if pick(&e) {
                return e;
            }
        }
    })
    .await
    .expect("the event")
}

#[tokio::test(start_paused = true)]
async fn scripted_peer_exchanges_broadcasts() {
    let node = MeshSocket::builder().spawn().await.unwrap();
    let mut peer = Scripted::join(&node, &Protocol::default(), "peer", 64 * 1024).await;
    let id = node.broadcast(vec![Value::from("from the node")]).await.unwrap();
    let got = peer.expect().await;
    assert_eq!(got.frame.id(), id);
    assert_eq!(got.values().unwrap(), vec![Value::from("from the node")]);
    peer.send(&text(&peer.id.clone(), "from the peer")).await;
    let msg = tokio::time::timeout(Duration::from_secs(1), node.next_message()).await.unwrap().unwrap();
    assert_eq!(msg.sender(), &peer.id);
    assert_eq!(msg.packets().unwrap(), vec![Value::from("from the peer")]);
    node.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_closed_at_its_handshake_deadline() {
    let node = MeshSocket::builder().handshake_timeout(Duration::from_secs(10)).spawn().await.unwrap();
    let mut events = node.events();
    let (mut ours, theirs) = tokio::io::duplex(4096);
    let start = tokio::time::Instant::now();
    node.attach(theirs).await.unwrap();
    let e = next_event(&mut events, |e| matches!(e, Event::ConnectFailed { .. })).await;
    assert!(matches!(e, Event::ConnectFailed { reason: CloseReason::HandshakeTimeout, .. }), "{e:?}");
    assert_eq!(start.elapsed().as_secs(), 10, "closed at the deadline, in virtual time");
    let mut buf = Vec::new();
    ours.read_to_end(&mut buf).await.unwrap();
    assert!(!buf.is_empty(), "the node's handshake came first");
    node.close().await.unwrap();
}

/// The scenario: a peer whose bytes stop moving (its queue fills and
/// stays full). The node must keep answering local commands at once, hold
/// senders back only for the grace, keep relaying to its healthy peers,
/// and close the silent peer at the slow-peer timeout.
#[tokio::test(start_paused = true)]
async fn a_peer_that_takes_nothing_never_stalls_the_node() {
    let grace = Duration::from_secs(1);
    let node = MeshSocket::builder()
        .send_queue_capacity(256)
        .backpressure_grace(grace)
        .slow_peer_timeout(Duration::from_secs(10))
        .maintain_outgoing(false)
        .spawn()
        .await
        .unwrap();
    let mut events = node.events();
    let protocol = Protocol::default();
    let silent = Scripted::join(&node, &protocol, "silent", 1024).await;
    let mut healthy = Scripted::join(&node, &protocol, "healthy", 1 << 20).await;
    let reader = tokio::spawn(async move {
        // The healthy peer reads everything until the node closes the pipe
        // (and counts the broadcasts: at the end the node says goodbye).
        let mut n = 0usize;
        while let Ok(Some(p)) = tokio::time::timeout(Duration::from_secs(30), healthy.expect_opt()).await {
            n += usize::from(p.header.kind() == Some(MsgType::Broadcast));
        }
        n
    });
    // Enough traffic to fill the silent peer's queue many times over.
    let payload = Value::Binary(vec![7; 1000]);
    let mut sent = 0;
    let start = tokio::time::Instant::now();
    for round in 0..40 {
        let batch: Vec<Vec<Value>> = (0..50).map(|i| vec![Value::from(round * 50 + i), payload.clone()]).collect();
        // A send may be held back, at most for the grace...
        let t = tokio::time::Instant::now();
        let sender = node.clone();
        let send = tokio::spawn(async move { sender.broadcast_many(batch).await });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        // ... while queries, asked meanwhile, never wait.
        let st = tokio::time::timeout(PROMPT, node.status()).await.expect("status answered at once").unwrap();
        assert_eq!(st.peers, 2);
        tokio::time::timeout(PROMPT, node.routing_table()).await.expect("peers answered at once").unwrap();
        send.await.unwrap().unwrap();
        assert!(t.elapsed() <= grace + PROMPT, "a send was held {:?}", t.elapsed());
        sent += 50;
    }
    let e = next_event(&mut events, |e| matches!(e, Event::PeerLagging { .. })).await;
    let Event::PeerLagging { peer, dropped_frames } = e else { unreachable!() };
    assert_eq!(peer, silent.id);
    assert!(dropped_frames > 0);
    let e = next_event(&mut events, |e| matches!(e, Event::PeerDown { .. })).await;
    assert!(matches!(&e, Event::PeerDown { peer, reason: CloseReason::SlowPeer } if *peer == silent.id), "{e:?}");
    assert!(start.elapsed() >= Duration::from_secs(10), "closed at the slow-peer timeout, not before");
    let st = tokio::time::timeout(PROMPT, node.status()).await.unwrap().unwrap();
    assert_eq!((st.peers, st.slow_peers), (1, 1));
    assert!(st.dropped_frames > 0);
    node.close().await.unwrap();
    let got = reader.await.unwrap();
    assert_eq!(got, sent, "the healthy peer got every broadcast");
    drop(silent);
}

/// The same with the dictionary: local reads and writes stay prompt while a
/// peer takes nothing.
#[tokio::test(start_paused = true)]
async fn the_dictionary_answers_while_a_peer_takes_nothing() {
    let grace = Duration::from_millis(500);
    let node = SyncSocket::builder()
        .mesh(|m| m.send_queue_capacity(256).backpressure_grace(grace).maintain_outgoing(false))
        .spawn()
        .await
        .unwrap();
    let protocol = node.protocol().clone();
    let mut silent = Scripted::join(&node, &protocol, "silent", 1024).await;
    // An rs2p peer gets the node's anti-entropy digest first.
    let digest = silent.expect().await;
    assert_eq!(digest.header.subflag, SubFlag::Digest.code());
    for i in 0..2000u32 {
        let t = tokio::time::Instant::now();
        node.set(format!("k{i}"), Value::from(vec![Value::from(i); 50])).await.unwrap();
        assert!(t.elapsed() <= grace + PROMPT, "set {i} held {:?}", t.elapsed());
        let v = tokio::time::timeout(PROMPT, node.get(format!("k{i}"))).await.expect("get answered at once").unwrap();
        assert!(v.is_some());
    }
    assert_eq!(tokio::time::timeout(PROMPT, node.len()).await.unwrap().unwrap(), 2000);
    node.close().await.unwrap();
}

impl Scripted {
    /// The next frame, or `None` once the node closed the pipe.
    async fn expect_opt(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = self.dec.next_packet().unwrap() {
                return Some(p);
            }
            match self.io.read_buf(self.dec.buffer()).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_closed_node_closes_its_pipes() {
    let node = MeshSocket::builder().spawn().await.unwrap();
    let mut peer = Scripted::join(&node, &Protocol::default(), "peer", 4096).await;
    node.close().await.unwrap();
    assert!(peer.closed().await);
    assert!(matches!(node.status().await, Err(rs2p::Error::Closed)));
}
