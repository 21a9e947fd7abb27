//! State machine tests without sockets: exact output sequences of one
//! machine, then small simulated networks.

use super::*;
use crate::id::{Encryption, Protocol};
use crate::node;
use crate::sim::{addr_of, config_for, text_frame, Sim};
use crate::wire::message::{Farewell, Handshake, MAX_IDS_PER_MESSAGE};
use crate::wire::{Compression, Limits};

fn pid(n: u128) -> PeerId {
    PeerId::from_bytes(crate::id::b58encode_int(&n.to_be_bytes()))
}

const T0: Now = Now { mono_ms: 5_000, unix_ms: 1_700_000_000_000 };

fn drain(m: &mut Mesh) -> Vec<Output> {
    std::iter::from_fn(|| m.poll_output()).collect()
}

fn packet(f: Frame) -> Packet {
    Packet::parse(f, &Limits::default()).unwrap()
}

/// One machine under test, and the peer it talks to.
struct One {
    m: Mesh,
    peer: PeerId,
    peer_addr: PeerAddr,
}

impl One {
    fn new() -> Self {
        One { m: Mesh::new(config_for(0, &Protocol::default()), 1), peer: pid(7), peer_addr: addr_of(1) }
    }

    /// A machine that does no upkeep of its own (no redials, no peer
    /// requests): only what the test provokes.
    fn quiet() -> Self {
        let mut cfg = config_for(0, &Protocol::default());
        cfg.maintain_outgoing = false;
        One { m: Mesh::new(cfg, 1), peer: pid(7), peer_addr: addr_of(1) }
    }

    /// A quiet node with one handshaken rs2p link (`ConnId(1)`) that runs
    /// the broadcast tree and keepalives; its outputs so far drained.
    fn with_tree_link() -> Self {
        let mut one = One::quiet();
        one.m.handle(T0, Input::Incoming { conn: ConnId(1) });
        let hello = one.hello_from(&one.peer.clone(), vec![0x2f, crate::wire::capability::TREE]);
        one.m.handle(T0, Input::Packet { conn: ConnId(1), packet: hello });
        drain(&mut one.m);
        one
    }

    fn hello_from(&self, peer: &PeerId, methods: Vec<u64>) -> Packet {
        let hs = Handshake {
            id: peer.clone(),
            protocol: Protocol::default().id().as_bytes().to_vec(),
            addr: Some(self.peer_addr.clone()),
            methods,
        };
        packet(MeshMessage::Handshake(hs).encode(peer, T0.unix()))
    }

    fn our_handshake(&self) -> Frame {
        MeshMessage::Handshake(Handshake {
            id: self.m.id().clone(),
            protocol: self.m.protocol_id().as_bytes().to_vec(),
            addr: Some(addr_of(0)),
            methods: Compression::DEFAULT_PREFERENCE
                .iter()
                .map(|c| u64::from(c.code()))
                .chain([crate::wire::capability::TREE, crate::wire::capability::CHECKS])
                .collect(),
        })
        .encode(self.m.id(), T0.unix())
    }

    fn peers_frame(&self, list: Vec<(PeerAddr, PeerId)>) -> Frame {
        MeshMessage::Peers(list).encode(self.m.id(), T0.unix())
    }

    /// An rs2p peer handshaken on `conn`, outputs drained (a quiet node).
    fn established(conn: u64) -> Self {
        let mut one = One::quiet();
        one.m.handle(T0, Input::Incoming { conn: ConnId(conn) });
        let hello = one.hello_from(&one.peer.clone(), vec![0x2f]);
        one.m.handle(T0, Input::Packet { conn: ConnId(conn), packet: hello });
        drain(&mut one.m);
        one
    }
}

const RS2P_CODEC: LinkCodec = LinkCodec { compression: None, coalesce: true };

#[test]
fn incoming_connection_sends_our_handshake_and_arms_its_deadline() {
    let mut one = One::new();
    one.m.handle(T0, Input::Incoming { conn: ConnId(1) });
    assert_eq!(
        drain(&mut one.m),
        vec![
            Output::Configure { conn: ConnId(1), codec: LinkCodec::HANDSHAKE },
            Output::Send { conn: ConnId(1), frame: one.our_handshake(), lane: Lane::Payload },
        ]
    );
    assert_eq!(one.m.poll_timeout(), Some(0), "short of outgoing links: upkeep is due at once");
}

#[test]
fn a_handshake_makes_a_peer_with_exact_outputs() {
    let mut one = One::new();
    one.m.handle(T0, Input::Incoming { conn: ConnId(1) });
    drain(&mut one.m);
    let hello = one.hello_from(&one.peer.clone(), vec![0x2f, 0x13]);
    one.m.handle(T0, Input::Packet { conn: ConnId(1), packet: hello });
    let expected = vec![
        Output::Configure { conn: ConnId(1), codec: RS2P_CODEC },
        Output::Event(Event::PeerUp {
            conn: ConnId(1),
            peer: one.peer.clone(),
            addr: Some(one.peer_addr.clone()),
            outgoing: false,
            first: true,
            rs2p: true,
            replaces: false,
        }),
        Output::Send {
            conn: ConnId(1),
            frame: one.peers_frame(vec![(one.peer_addr.clone(), one.peer.clone())]),
            lane: Lane::Payload,
        },
    ];
    assert_eq!(drain(&mut one.m), expected);
    assert_eq!(one.m.peer_count(), 1);
}

#[test]
fn connect_is_answered_when_the_handshake_completes() {
    let mut one = One::new();
    let addr = one.peer_addr.clone();
    one.m.handle(
        T0,
        Input::Command { request: RequestId(9), command: Command::Connect { addr: addr.clone(), expected: None } },
    );
    assert_eq!(drain(&mut one.m), vec![Output::Dial { dial: DialId(1), addr: addr.clone() }]);
    one.m.handle(T0, Input::Dialed { dial: DialId(1), conn: ConnId(3) });
    assert_eq!(
        drain(&mut one.m),
        vec![
            Output::Configure { conn: ConnId(3), codec: LinkCodec::HANDSHAKE },
            Output::Send { conn: ConnId(3), frame: one.our_handshake(), lane: Lane::Payload },
        ]
    );
    // A py2p peer (no identity method): zlib, one frame per write.
    let hello = one.hello_from(&one.peer.clone(), vec![0x13, 0x11]);
    one.m.handle(T0, Input::Packet { conn: ConnId(3), packet: hello });
    let py2p = LinkCodec { compression: Some(Compression::Zlib), coalesce: false };
    assert_eq!(
        drain(&mut one.m),
        vec![
            Output::Configure { conn: ConnId(3), codec: py2p },
            Output::Event(Event::PeerUp {
                conn: ConnId(3),
                peer: one.peer.clone(),
                addr: Some(addr.clone()),
                outgoing: true,
                first: true,
                rs2p: false,
                replaces: false,
            }),
            Output::Reply { request: RequestId(9), result: Ok(Reply::Connected(one.peer.clone())) },
            Output::Send {
                conn: ConnId(3),
                frame: one.peers_frame(vec![(addr, one.peer.clone())]),
                lane: Lane::Payload
            },
        ]
    );
}

#[test]
fn a_failed_dial_answers_its_connect() {
    let mut one = One::new();
    let addr = one.peer_addr.clone();
    one.m.handle(
        T0,
        Input::Command { request: RequestId(4), command: Command::Connect { addr: addr.clone(), expected: None } },
    );
    drain(&mut one.m);
    let reason = CloseReason::Io(std::io::ErrorKind::ConnectionRefused);
    one.m.handle(T0, Input::DialFailed { dial: DialId(1), reason: reason.clone() });
    assert_eq!(
        drain(&mut one.m),
        vec![
            Output::Reply {
                request: RequestId(4),
                result: Err(CommandError::Connect { addr: addr.clone(), reason: reason.clone() }),
            },
            Output::Event(Event::ConnectFailed { conn: None, peer: None, addr: Some(addr), reason }),
        ]
    );
    // Our own address is refused at once.
    one.m.handle(
        T0,
        Input::Command { request: RequestId(5), command: Command::Connect { addr: addr_of(0), expected: None } },
    );
    assert_eq!(
        drain(&mut one.m),
        vec![Output::Reply { request: RequestId(5), result: Err(CommandError::OwnAddress(addr_of(0))) }]
    );
}

#[test]
fn a_connect_that_loses_the_conflict_rule_still_succeeds() {
    // We (node 0) are connected to the peer through its dial; our own dial to
    // it then completes. If our id is the smaller, the rule keeps their dial:
    // our new link closes as a duplicate, and connect() succeeds anyway.
    let mut one = One::established(1);
    let me = one.m.id().clone();
    let big = PeerId::from_bytes(vec![b'z'; 70]); // greater than any sim id
    assert_eq!(me.numeric_cmp(&big), std::cmp::Ordering::Less);
    one.m.handle(T0, Input::Closed { conn: ConnId(1), reason: CloseReason::ClosedByPeer });
    one.m.handle(T0, Input::Incoming { conn: ConnId(1) });
    let hello = one.hello_from(&big, vec![0x2f]);
    one.m.handle(T0, Input::Packet { conn: ConnId(1), packet: hello.clone() });
    let addr = one.peer_addr.clone();
    one.m.handle(T0, Input::Command { request: RequestId(2), command: Command::Connect { addr, expected: None } });
    one.m.handle(T0, Input::Dialed { dial: DialId(1), conn: ConnId(2) });
    drain(&mut one.m);
    one.m.handle(T0, Input::Packet { conn: ConnId(2), packet: hello });
    // The rs2p peer is told the link is replaced, then it closes.
    let bye = MeshMessage::Goodbye(Farewell::Replaced).encode(&me, T0.unix());
    assert_eq!(
        drain(&mut one.m),
        vec![
            Output::Send { conn: ConnId(2), frame: bye, lane: Lane::Control },
            Output::Close { conn: ConnId(2), reason: CloseReason::Duplicate },
            Output::Reply { request: RequestId(2), result: Ok(Reply::Connected(big)) },
        ]
    );
    assert_eq!(one.m.connection_count(), 1);
}

#[test]
fn broadcasts_are_relayed_delivered_and_deduplicated_exactly() {
    let mut one = One::established(1);
    let other = pid(8);
    one.m.handle(T0, Input::Incoming { conn: ConnId(2) });
    let hello = one.hello_from(&other, vec![0x2f]);
    one.m.handle(T0, Input::Packet { conn: ConnId(2), packet: hello });
    drain(&mut one.m);
    // From the peer on link 1: relayed to link 2, then delivered.
    let f = text_frame(&one.peer, T0, "hi");
    one.m.handle(T0, Input::Packet { conn: ConnId(1), packet: packet(f.clone()) });
    assert_eq!(
        drain(&mut one.m),
        vec![
            Output::Send { conn: ConnId(2), frame: f.clone(), lane: Lane::Payload },
            Output::Event(Event::Message(Delivery {
                conn: ConnId(1),
                packet: packet(f.clone()),
                for_application: true,
                verified: false
            })),
        ]
    );
    // A copy through the other link: nothing at all.
    one.m.handle(T0, Input::Packet { conn: ConnId(2), packet: packet(f) });
    assert_eq!(drain(&mut one.m), vec![]);
    assert_eq!(one.m.stats().duplicates, 1);
    // An application sub-flag is delivered, but not for the receive queue.
    let custom = Frame::build(MsgType::Broadcast, &one.peer, T0.unix(), 0x40u64, &[Value::from(1)]);
    one.m.handle(T0, Input::Packet { conn: ConnId(1), packet: packet(custom.clone()) });
    assert_eq!(
        drain(&mut one.m),
        vec![
            Output::Send { conn: ConnId(2), frame: custom.clone(), lane: Lane::Payload },
            Output::Event(Event::Message(Delivery {
                conn: ConnId(1),
                packet: packet(custom),
                for_application: false,
                verified: false
            })),
        ]
    );
}

#[test]
fn commands_are_answered_exactly_once() {
    let mut one = One::established(1);
    let peer = one.peer.clone();
    one.m.handle(
        T0,
        Input::Command {
            request: RequestId(1),
            command: Command::Whisper { peer: peer.clone(), subflag: 2, packets: vec![Value::from("w")] },
        },
    );
    let w = Frame::build(MsgType::Whisper, one.m.id(), T0.unix(), SubFlag::Whisper, &[Value::from("w")]);
    assert_eq!(
        drain(&mut one.m),
        vec![
            Output::Send { conn: ConnId(1), frame: w.clone(), lane: Lane::Payload },
            Output::Reply { request: RequestId(1), result: Ok(Reply::Sent(w.id())) },
        ]
    );
    one.m.handle(
        T0,
        Input::Command {
            request: RequestId(2),
            command: Command::Whisper { peer: pid(99), subflag: 2, packets: vec![] },
        },
    );
    assert_eq!(
        drain(&mut one.m),
        vec![Output::Reply { request: RequestId(2), result: Err(CommandError::NotConnected(pid(99))) }]
    );
    let mut small = config_for(0, &Protocol::default());
    small.max_frame_len = 100;
    let mut m = Mesh::new(small, 1);
    m.handle(
        T0,
        Input::Command {
            request: RequestId(3),
            command: Command::Broadcast { subflag: 0, packets: vec![Value::Binary(vec![0; 200])] },
        },
    );
    assert!(matches!(
        &drain(&mut m)[..],
        [Output::Reply { request: RequestId(3), result: Err(CommandError::TooLarge { max: 100, .. }) }]
    ));
    one.m.handle(T0, Input::Command { request: RequestId(4), command: Command::Disconnect { peer: peer.clone() } });
    // An rs2p peer hears why, ahead of anything queued, before the close.
    let goodbye = MeshMessage::Goodbye(Farewell::Disconnect).encode(one.m.id(), T0.unix());
    assert_eq!(
        drain(&mut one.m),
        vec![
            Output::Send { conn: ConnId(1), frame: goodbye, lane: Lane::Control },
            Output::Close { conn: ConnId(1), reason: CloseReason::Requested },
            Output::Event(Event::PeerDown { conn: ConnId(1), peer, reason: CloseReason::Requested }),
            Output::Reply { request: RequestId(4), result: Ok(Reply::Done) },
        ]
    );
}

#[test]
fn timeouts_are_exact_and_harmless_when_early() {
    let mut one = One::new();
    one.m.handle(T0, Input::Incoming { conn: ConnId(1) });
    drain(&mut one.m);
    // Short of outgoing links: it asks to be woken for upkeep soon; the
    // handshake deadline is 10 s out.
    assert_eq!(one.m.poll_timeout(), Some(0));
    one.m.handle(T0, Input::Timeout);
    assert_eq!(drain(&mut one.m), vec![], "nothing known to dial, nobody to ask");
    assert_eq!(one.m.poll_timeout(), Some(T0.mono_ms + one.m.config().maintain_interval_ms));
    let mut quiet = config_for(0, &Protocol::default());
    quiet.maintain_outgoing = false;
    let mut m = Mesh::new(quiet, 1);
    assert_eq!(m.poll_timeout(), None, "an idle node sleeps");
    m.handle(T0, Input::Incoming { conn: ConnId(1) });
    drain(&mut m);
    assert_eq!(m.poll_timeout(), Some(T0.mono_ms + 10_000));
    m.handle(T0.plus_ms(9_999), Input::Timeout);
    assert_eq!(drain(&mut m), vec![]);
    m.handle(T0.plus_ms(10_000), Input::Timeout);
    assert_eq!(
        drain(&mut m),
        vec![
            Output::Close { conn: ConnId(1), reason: CloseReason::HandshakeTimeout },
            Output::Event(Event::ConnectFailed {
                conn: Some(ConnId(1)),
                peer: None,
                addr: None,
                reason: CloseReason::HandshakeTimeout
            }),
        ]
    );
    assert_eq!(m.poll_timeout(), None);
}

#[test]
fn conflict_rule_exhaustive() {
    // Two nodes a < b each dial the other: connection X dialed by a,
    // connection Y dialed by b. Whatever order the handshakes arrive in,
    // both must keep Y (dialed by the greater id).
    let (a, b) = (pid(1000), pid(2000));
    for a_existing_is_x in [true, false] {
        for b_existing_is_x in [true, false] {
            // At a: X is outgoing, Y incoming.
            let a_new_is_x = !a_existing_is_x;
            let a_keep_x = match resolve_conflict(&a, &b, a_new_is_x) {
                Keep::Existing => a_existing_is_x,
                Keep::New => a_new_is_x,
            };
            // At b: Y is outgoing, X incoming.
            let b_new_is_x = !b_existing_is_x;
            let b_keep_x = match resolve_conflict(&b, &a, !b_new_is_x) {
                Keep::Existing => b_existing_is_x,
                Keep::New => b_new_is_x,
            };
            assert!(!a_keep_x && !b_keep_x, "{a_existing_is_x} {b_existing_is_x}");
        }
    }
    // The table itself, every branch.
    assert_eq!(resolve_conflict(&b, &a, true), Keep::New);
    assert_eq!(resolve_conflict(&b, &a, false), Keep::Existing);
    assert_eq!(resolve_conflict(&a, &b, true), Keep::Existing);
    assert_eq!(resolve_conflict(&a, &b, false), Keep::New);
}

#[test]
fn simultaneous_dials_leave_one_connection_on_both_sides() {
    let mut sim = Sim::new(2);
    let dial = |i: usize, j: usize| node::Input::Command {
        request: RequestId(i as u64 + 1),
        command: Command::Connect { addr: addr_of(j), expected: None }.into(),
    };
    let now = sim.now;
    sim.nodes[0].handle(now, dial(0, 1));
    sim.nodes[1].handle(now, dial(1, 0));
    sim.drain(0);
    sim.drain(1);
    sim.run();
    let p0 = sim.nodes[0].mesh().peers();
    let p1 = sim.nodes[1].mesh().peers();
    assert_eq!(p0.len(), 1);
    assert_eq!(p1.len(), 1);
    // Both kept the same TCP connection: one side outgoing, the other not.
    assert_ne!(p0[0].outgoing, p1[0].outgoing);
    // Each side's application saw its peer come up once and never go down,
    // whichever link the conflict rule kept (no PeerUp for a replacement).
    for i in 0..2 {
        let seen: Vec<bool> = sim.events[i]
            .iter()
            .filter_map(|e| match e {
                Event::PeerUp { replaces, .. } => Some(!replaces),
                Event::PeerDown { .. } => Some(false),
                _ => None,
            })
            .filter(|shown| *shown)
            .collect();
        assert_eq!(seen, vec![true], "node {i}: {:?}", sim.events[i]);
        assert!(!sim.events[i].iter().any(|e| matches!(e, Event::PeerDown { .. })), "node {i}");
    }
    assert_eq!(sim.nodes[0].mesh().connection_count(), 1);
    assert_eq!(sim.nodes[1].mesh().connection_count(), 1);
    let greater = if sim.nodes[0].mesh().id().numeric_cmp(sim.nodes[1].mesh().id()).is_gt() { 0 } else { 1 };
    assert!(sim.nodes[greater].mesh().peers()[0].outgoing, "kept the link dialed by the greater id");
    // Both connect() calls succeeded, the loser's through the other link.
    for i in 0..2 {
        assert!(
            matches!(sim.replies[i][..], [(_, Ok(node::Reply::Mesh(Reply::Connected(_))))]),
            "{:?}",
            sim.replies[i]
        );
    }
}

#[test]
fn handshake_from_both_ends_emits_peer_up_and_connect() {
    let mut sim = Sim::new(2);
    sim.connect(0, 1);
    sim.run();
    for i in 0..2 {
        let ups: Vec<_> = sim.events[i]
            .iter()
            .filter_map(|e| match e {
                Event::PeerUp { first, outgoing, .. } => Some((*first, *outgoing)),
                _ => None,
            })
            .collect();
        assert_eq!(ups, vec![(true, i == 0)]);
    }
    assert_eq!(sim.nodes[0].mesh().peers()[0].id, *sim.nodes[1].mesh().id());
    assert!(sim.nodes[0].mesh().peers()[0].rs2p);
    assert_eq!(sim.nodes[1].mesh().peers()[0].addr, Some(addr_of(0)));
}

#[test]
fn foreign_subnet_is_refused_with_a_reason() {
    let other = Protocol::new("sync1", Encryption::Plaintext);
    let cfgs = vec![config_for(0, &Protocol::default()), config_for(1, &other)];
    let mut sim = Sim::with_configs(cfgs);
    sim.connect(0, 1);
    sim.run();
    for i in 0..2 {
        assert!(sim.nodes[i].mesh().peers().is_empty());
        let refused = sim.events[i].iter().any(|e| {
            matches!(e, Event::ConnectFailed { reason: CloseReason::ProtocolMismatch { .. }, .. })
                || matches!(e, Event::ConnectFailed { reason: CloseReason::ClosedByPeer, .. })
        });
        assert!(refused, "node {i}: {:?}", sim.events[i]);
    }
    let mismatch = sim.events[0]
        .iter()
        .chain(sim.events[1].iter())
        .find_map(|e| match e {
            Event::ConnectFailed { reason: r @ CloseReason::ProtocolMismatch { .. }, .. } => Some(r.to_string()),
            _ => None,
        })
        .expect("a protocol mismatch");
    // Named, not hashed: both names are guessable here.
    assert!(
        mismatch == r#"refused: wrong subnet "sync1" (ours "mesh")"#
            || mismatch == r#"refused: wrong subnet "mesh" (ours "sync1")"#,
        "{mismatch}"
    );
    assert!(matches!(
        sim.replies[0][..],
        [(
            _,
            Err(node::CommandError::Mesh(CommandError::Connect {
                reason: CloseReason::ProtocolMismatch { .. } | CloseReason::ClosedByPeer,
                ..
            }))
        )]
    ));
}

#[test]
fn a_subnet_that_cannot_be_guessed_is_reported_by_its_hash() {
    let ours = Protocol::default();
    let theirs = Protocol::new("a-private-name", Encryption::Plaintext);
    let mut m = Mesh::new(config_for(0, &ours), 1);
    m.handle(T0, Input::Incoming { conn: ConnId(1) });
    drain(&mut m);
    let hs = Handshake { id: pid(7), protocol: theirs.id().as_bytes().to_vec(), addr: None, methods: vec![] };
    let f = MeshMessage::Handshake(hs).encode(&pid(7), T0.unix());
    m.handle(T0, Input::Packet { conn: ConnId(1), packet: packet(f) });
    let failed = drain(&mut m)
        .into_iter()
        .find_map(|o| match o {
            Output::Event(Event::ConnectFailed { reason, .. }) => Some(reason.to_string()),
            _ => None,
        })
        .expect("refused");
    assert_eq!(
        failed,
        format!(r#"refused: wrong subnet (ours "mesh", Plaintext; theirs is unknown, protocol id {})"#, theirs.id())
    );
}

#[test]
fn a_peer_that_says_goodbye_is_reported_as_quitting() {
    let mut one = One::established(1);
    let peer = one.peer.clone();
    let bye = MeshMessage::Goodbye(Farewell::Quit).encode(&peer, T0.unix());
    one.m.handle(T0, Input::Packet { conn: ConnId(1), packet: packet(bye) });
    assert_eq!(drain(&mut one.m), vec![]);
    one.m.handle(T0, Input::Closed { conn: ConnId(1), reason: CloseReason::ClosedByPeer });
    let reason = CloseReason::PeerLeft(Farewell::Quit);
    assert_eq!(reason.to_string(), "peer quit");
    assert_eq!(drain(&mut one.m), vec![Output::Event(Event::PeerDown { conn: ConnId(1), peer, reason })]);
    // Without a goodbye, the same close is only "closed by peer".
    let mut two = One::established(1);
    two.m.handle(T0, Input::Closed { conn: ConnId(1), reason: CloseReason::ClosedByPeer });
    assert!(matches!(
        &drain(&mut two.m)[..],
        [Output::Event(Event::PeerDown { reason: CloseReason::ClosedByPeer, .. })]
    ));
}

#[test]
fn a_link_replaced_by_the_conflict_rule_does_not_take_its_peer_down() {
    let mut one = One::established(1);
    let peer = one.peer.clone();
    let bye = MeshMessage::Goodbye(Farewell::Replaced).encode(&peer, T0.unix());
    one.m.handle(T0, Input::Packet { conn: ConnId(1), packet: packet(bye.clone()) });
    one.m.handle(T0, Input::Closed { conn: ConnId(1), reason: CloseReason::ClosedByPeer });
    assert_eq!(drain(&mut one.m), vec![], "no PeerDown while the other link is on its way");
    // The link the other end kept completes its handshake: a replacement.
    one.m.handle(T0.plus_ms(5), Input::Incoming { conn: ConnId(2) });
    let hello = one.hello_from(&peer, vec![0x2f]);
    one.m.handle(T0.plus_ms(5), Input::Packet { conn: ConnId(2), packet: hello });
    let ups: Vec<bool> = drain(&mut one.m)
        .iter()
        .filter_map(|o| match o {
            Output::Event(Event::PeerUp { replaces, .. }) => Some(*replaces),
            Output::Event(Event::PeerDown { .. }) => panic!("went down"),
            _ => None,
        })
        .collect();
    assert_eq!(ups, vec![true]);
    assert_eq!(one.m.peer_count(), 1);
    // Nothing is left to report later.
    one.m.handle(T0.plus_ms(60_000), Input::Timeout);
    assert!(!drain(&mut one.m).iter().any(|o| matches!(o, Output::Event(Event::PeerDown { .. }))));

    // When no replacement comes, the peer is down at the handshake deadline.
    let mut two = One::established(1);
    two.m.handle(T0, Input::Packet { conn: ConnId(1), packet: packet(bye) });
    two.m.handle(T0, Input::Closed { conn: ConnId(1), reason: CloseReason::ClosedByPeer });
    assert_eq!(drain(&mut two.m), vec![]);
    let deadline = two.m.poll_timeout().expect("a deadline");
    two.m.handle(T0.plus_ms(deadline - T0.mono_ms - 1), Input::Timeout);
    assert!(!drain(&mut two.m).iter().any(|o| matches!(o, Output::Event(Event::PeerDown { .. }))));
    two.m.handle(T0.plus_ms(deadline - T0.mono_ms), Input::Timeout);
    let reason = CloseReason::PeerLeft(Farewell::Replaced);
    assert!(drain(&mut two.m).contains(&Output::Event(Event::PeerDown { conn: ConnId(1), peer, reason })));
}

#[test]
fn a_duplicate_link_closed_before_its_handshake_is_said_goodbye_to() {
    // An rs2p peer up on an incoming link; a second link to it arrives in
    // the direction the conflict rule drops.
    let mut one = One::established(1);
    let peer = one.peer.clone();
    let drop_incoming = resolve_conflict(one.m.id(), &peer, false) == Keep::Existing;
    if drop_incoming {
        one.m.handle(T0, Input::Incoming { conn: ConnId(2) });
    } else {
        let addr = one.peer_addr.clone();
        let connect = Command::Connect { addr, expected: None };
        one.m.handle(T0, Input::Command { request: RequestId(1), command: connect });
        one.m.handle(T0, Input::Dialed { dial: DialId(1), conn: ConnId(2) });
    }
    drain(&mut one.m);
    let hello = one.hello_from(&peer, vec![0x2f]);
    one.m.handle(T0, Input::Packet { conn: ConnId(2), packet: hello });
    let out = drain(&mut one.m);
    let bye = MeshMessage::Goodbye(Farewell::Replaced).encode(one.m.id(), T0.unix());
    let said = out.iter().position(|o| *o == Output::Send { conn: ConnId(2), frame: bye.clone(), lane: Lane::Control });
    let closed =
        out.iter().position(|o| matches!(o, Output::Close { conn: ConnId(2), reason: CloseReason::Duplicate }));
    assert!(said.is_some() && closed.is_some() && said < closed, "{out:?}");
    assert_eq!(one.m.peer_count(), 1);
}

#[test]
fn a_failing_redial_is_reported_with_back_off() {
    let mut one = One::new();
    one.m.handle(T0, Input::Incoming { conn: ConnId(1) });
    let hello = one.hello_from(&one.peer.clone(), vec![0x2f]);
    one.m.handle(T0, Input::Packet { conn: ConnId(1), packet: hello });
    drain(&mut one.m);
    let addr = one.peer_addr.clone();
    one.m.handle(T0, Input::Closed { conn: ConnId(1), reason: CloseReason::ClosedByPeer });
    drain(&mut one.m);
    // Redial for an hour of failures; count the reports.
    let mut now = T0;
    let (mut dials, mut reported) = (0, 0);
    for _ in 0..2_000 {
        now = now.plus_ms(1_000);
        one.m.handle(now, Input::Timeout);
        for o in drain(&mut one.m) {
            match o {
                Output::Dial { dial, .. } => {
                    dials += 1;
                    let refused = CloseReason::Io(std::io::ErrorKind::ConnectionRefused);
                    one.m.handle(now, Input::DialFailed { dial, reason: refused });
                    for o in drain(&mut one.m) {
                        if let Output::Event(Event::ConnectFailed { addr: a, .. }) = o {
                            assert_eq!(a.as_ref(), Some(&addr));
                            reported += 1;
                        }
                    }
                }
                Output::Event(Event::ConnectFailed { .. }) => reported += 1,
                _ => {}
            }
        }
    }
    assert!(dials > 20, "it keeps redialing: {dials}");
    // The 1st, 2nd, 4th, 8th, 16th... failure.
    assert_eq!(reported, (dials as f64).log2().floor() as usize + 1, "{dials} dials");
}

#[test]
fn message_before_handshake_closes() {
    let mut m = Mesh::new(config_for(0, &Protocol::default()), 1);
    m.handle(T0, Input::Incoming { conn: ConnId(1) });
    drain(&mut m);
    let f = Frame::build(MsgType::Broadcast, &pid(5), T0.unix(), 0u64, &[Value::from("x")]);
    m.handle(T0, Input::Packet { conn: ConnId(1), packet: packet(f) });
    let reason = CloseReason::ProtocolViolation("message before handshake");
    let not_a_node = CloseReason::NotANode(Box::new(reason.clone()));
    assert_eq!(not_a_node.to_string(), "not a py2p/rs2p node (protocol violation: message before handshake)");
    assert_eq!(
        drain(&mut m),
        vec![
            Output::Close { conn: ConnId(1), reason },
            Output::Event(Event::ConnectFailed { conn: Some(ConnId(1)), peer: None, addr: None, reason: not_a_node }),
        ]
    );
    assert_eq!(m.stats().protocol_errors, 1);
}

#[test]
fn dedup_window_and_stale_broadcasts() {
    let mut sim = Sim::new(3);
    sim.connect(0, 1);
    sim.connect(1, 2);
    sim.run();
    let now = sim.now;
    let sender = sim.nodes[0].mesh().id().clone();
    let f = text_frame(&sender, now, "hello");
    sim.broadcast_text(0, "hello");
    sim.run();
    assert_eq!(sim.received(1, "hello"), 1);
    assert_eq!(sim.received(2, "hello"), 1);
    // The same frame again: suppressed everywhere.
    let conn = sim.nodes[1].mesh().conn_of(&sender).unwrap();
    let dups = sim.nodes[1].mesh().stats().duplicates;
    sim.input(1, node::Input::Packet { conn, packet: packet(f.clone()) });
    assert_eq!(sim.nodes[1].mesh().stats().duplicates, dups + 1);
    sim.run();
    assert_eq!(sim.received(1, "hello"), 1);
    assert_eq!(sim.received(2, "hello"), 1);
    // A broadcast 61 s old is ignored.
    let old = Frame::build(MsgType::Broadcast, &sender, now.unix() - 61, 0u64, &[Value::from("old")]);
    sim.input(1, node::Input::Packet { conn, packet: packet(old) });
    sim.run();
    assert_eq!(sim.received(1, "old"), 0);
    assert_eq!(sim.nodes[1].mesh().stats().stale, 1);
    // Exactly 60 s old is still inside the window.
    let edge = Frame::build(MsgType::Broadcast, &sender, now.unix() - 60, 0u64, &[Value::from("edge")]);
    sim.input(1, node::Input::Packet { conn, packet: packet(edge) });
    // Node 2 only has it announced (the tree made its link to node 1 lazy
    // for this origin). Its origin's messages arrived recently, so it waits
    // out the busy patience, then grafts: the answer comes more than a
    // second later, 61 s after the message was sent, and is refused as
    // stale, as py2p refuses it.
    let stale_2 = sim.nodes[2].mesh().stats().stale;
    sim.advance(2_000);
    assert_eq!(sim.received(1, "edge"), 1);
    assert_eq!(sim.received(2, "edge"), 0);
    assert_eq!(sim.nodes[2].mesh().stats().stale, stale_2 + 1);
    assert_eq!(sim.nodes[2].mesh().tree_stats().map(|t| t.grafts), Some(1));
    // After the cache forgets (window + skew), an old copy is still refused
    // by the window check.
    sim.advance(400_000);
    let conn = sim.nodes[1].mesh().conn_of(&sender).unwrap();
    let stale = sim.nodes[1].mesh().stats().stale;
    sim.input(1, node::Input::Packet { conn, packet: packet(f) });
    assert_eq!(sim.received(1, "hello"), 1);
    assert_eq!(sim.nodes[1].mesh().stats().stale, stale + 1);
}

#[test]
fn peer_exchange_fills_outgoing_target() {
    // A star: everyone dials node 0 only; peer lists must do the rest.
    let n = 16;
    let mut sim = Sim::new(n);
    for i in 1..n {
        sim.connect(i, 0);
        sim.run();
    }
    sim.advance(10_000);
    assert!(sim.connected());
    for i in 0..n {
        let peers = sim.nodes[i].mesh().peers();
        let out = peers.iter().filter(|p| p.outgoing).count();
        // The target is met, or the node already knows everyone.
        assert!(out == 4 || peers.len() == n - 1, "node {i}: {out} outgoing of {}", peers.len());
        assert!(sim.nodes[i].mesh().outgoing_count() <= 4);
    }
    // Peer exchange, not the initial star, made most links.
    let links: usize = (0..n).map(|i| sim.nodes[i].mesh().peers().len()).sum::<usize>() / 2;
    assert!(links >= 4 * (n - 1) - n, "only {links} links");
}

#[test]
fn flood_reaches_every_node_exactly_once() {
    let n = 12;
    let mut sim = Sim::new(n);
    for i in 1..n {
        sim.connect(i, i / 2);
        sim.run();
    }
    sim.advance(5_000);
    for (k, src) in [0usize, 5, 11].into_iter().enumerate() {
        let text = format!("msg-{k}");
        sim.broadcast_text(src, &text);
        sim.run();
        for i in 0..n {
            let expect = usize::from(i != src);
            assert_eq!(sim.received(i, &text), expect, "node {i} msg {k}");
        }
    }
    let dups: u64 = sim.nodes.iter().map(|m| m.mesh().stats().duplicates).sum();
    assert!(dups > 0, "a meshed graph has redundant paths");
}

#[test]
fn routes_around_a_node_that_leaves() {
    let n = 10;
    let mut sim = Sim::new(n);
    for i in 1..n {
        sim.connect(i, i - 1);
        sim.run();
    }
    sim.advance(10_000);
    sim.kill(4);
    sim.advance(20_000);
    assert!(sim.connected(), "mesh healed");
    for i in (0..n).filter(|&i| i != 4) {
        let out = sim.nodes[i].mesh().peers().iter().filter(|p| p.outgoing).count();
        assert!(out >= 3 || sim.nodes[i].mesh().peers().len() >= 4, "node {i} has {out} outgoing");
    }
    sim.broadcast_text(0, "after");
    sim.run();
    for i in 1..n {
        assert_eq!(sim.received(i, "after"), usize::from(i != 4), "node {i}");
    }
}

#[test]
fn reply_routes_to_an_unconnected_node() {
    // 0 - 1 - 2 in a line, with maintenance off so 0 and 2 stay apart.
    let p = Protocol::default();
    let cfgs: Vec<Config> = (0..3)
        .map(|i| {
            let mut c = config_for(i, &p);
            c.maintain_outgoing = false;
            c.max_outgoing = 1;
            c
        })
        .collect();
    let mut sim = Sim::with_configs(cfgs);
    sim.connect(0, 1);
    sim.connect(2, 1);
    sim.run();
    let to = sim.nodes[2].mesh().id().clone();
    assert!(sim.nodes[0].mesh().conn_of(&to).is_none());
    let r = sim.command(0, Command::Reply { to: to.clone(), packets: vec![Value::from("routed")] });
    assert_eq!(r, Some(Ok(node::Reply::Mesh(Reply::Routed(ReplyRoute::Routing)))));
    sim.run();
    assert_eq!(sim.received(2, "routed"), 1);
    assert!(sim.nodes[0].mesh().conn_of(&to).is_some());
}

#[test]
fn renegotiation_is_answered_once_and_resend_resends() {
    let mut one = One::established(1);
    let peer = one.peer.clone();
    // The peer asks us to stop compressing, as py2p does after a decode
    // failure: we answer once, with the intersection (empty).
    let reneg = packet(MeshMessage::Compression(vec![]).encode(&peer, T0.unix()));
    one.m.handle(T0, Input::Packet { conn: ConnId(1), packet: reneg.clone() });
    let answer = MeshMessage::Compression(vec![]).encode(one.m.id(), T0.unix());
    assert_eq!(
        drain(&mut one.m),
        vec![
            Output::Configure { conn: ConnId(1), codec: LinkCodec::HANDSHAKE },
            Output::Send { conn: ConnId(1), frame: answer, lane: Lane::Payload },
        ]
    );
    // The same (unchanged) list again gets no answer: no loop.
    one.m.handle(T0, Input::Packet { conn: ConnId(1), packet: reneg });
    assert_eq!(drain(&mut one.m), vec![Output::Configure { conn: ConnId(1), codec: LinkCodec::HANDSHAKE }]);
    // On such a (py2p-like) link the last user message is kept, and a
    // resend request resends exactly it, once.
    one.m.handle(
        T0,
        Input::Command {
            request: RequestId(1),
            command: Command::Whisper { peer: peer.clone(), subflag: 2, packets: vec![Value::from("w")] },
        },
    );
    let sent = drain(&mut one.m);
    let Output::Send { frame: w, .. } = &sent[0] else { panic!("{sent:?}") };
    let resend = packet(MeshMessage::Resend.encode(&peer, T0.unix()));
    one.m.handle(T0, Input::Packet { conn: ConnId(1), packet: resend });
    assert_eq!(drain(&mut one.m), vec![Output::Send { conn: ConnId(1), frame: w.clone(), lane: Lane::Payload }]);
    // A malformed compression list breaks the protocol.
    let bad = Frame::build(MsgType::Renegotiate, &peer, T0.unix(), SubFlag::Compression, &[Value::from(1)]);
    one.m.handle(T0, Input::Packet { conn: ConnId(1), packet: packet(bad) });
    assert!(matches!(
        &drain(&mut one.m)[..],
        [
            Output::Close { reason: CloseReason::ProtocolViolation("compression renegotiation"), .. },
            Output::Event(Event::PeerDown { .. })
        ]
    ));
}

#[test]
fn peers_request_answers_str_and_bin_star() {
    for star in [Value::from("*"), Value::Binary(b"*".to_vec())] {
        let mut one = One::established(1);
        let f = Frame::build(MsgType::Whisper, &one.peer, T0.unix(), SubFlag::Request, &[star]);
        one.m.handle(T0, Input::Packet { conn: ConnId(1), packet: packet(f) });
        let list = one.peers_frame(vec![(one.peer_addr.clone(), one.peer.clone())]);
        assert_eq!(drain(&mut one.m), vec![Output::Send { conn: ConnId(1), frame: list, lane: Lane::Payload }]);
    }
    // Anything else is ignored.
    let mut one = One::established(1);
    let f = Frame::build(MsgType::Whisper, &one.peer, T0.unix(), SubFlag::Request, &[Value::from("?")]);
    one.m.handle(T0, Input::Packet { conn: ConnId(1), packet: packet(f) });
    assert_eq!(drain(&mut one.m), vec![]);
}

#[test]
fn disconnect_and_shutdown() {
    let mut sim = Sim::new(3);
    sim.connect(0, 1);
    sim.connect(0, 2);
    sim.run();
    let p1 = sim.nodes[1].mesh().id().clone();
    assert_eq!(sim.command(0, Command::Disconnect { peer: p1.clone() }), Some(Ok(node::Reply::Mesh(Reply::Done))));
    sim.run();
    assert!(sim.nodes[0].mesh().conn_of(&p1).is_none());
    assert!(sim.nodes[1].mesh().peers().iter().all(|p| &p.id != sim.nodes[0].mesh().id()));
    assert!(matches!(
        sim.command(0, Command::Disconnect { peer: p1 }),
        Some(Err(node::CommandError::Mesh(CommandError::NotConnected(_))))
    ));
    sim.command(0, Command::Shutdown);
    sim.run();
    assert!(sim.nodes[0].mesh().peers().is_empty());
    assert_eq!(sim.nodes[0].mesh().connection_count(), 0);
}

#[test]
fn a_silent_tree_link_is_pinged_then_declared_dead() {
    let mut one = One::with_tree_link();
    let ping = MeshMessage::Ping.encode(one.m.id(), T0.plus_ms(3_499).unix());
    // Nothing before the keepalive interval. (Links are checked every
    // 500 ms: the next check after this one is at 3,499.)
    one.m.handle(T0.plus_ms(2_999), Input::Timeout);
    assert_eq!(drain(&mut one.m), vec![]);
    assert_eq!(one.m.poll_timeout(), Some(T0.mono_ms + 3_499));
    one.m.handle(T0.plus_ms(3_499), Input::Timeout);
    assert_eq!(drain(&mut one.m), vec![Output::Send { conn: ConnId(1), frame: ping, lane: Lane::Control }]);
    // One ping per silence.
    one.m.handle(T0.plus_ms(3_999), Input::Timeout);
    assert_eq!(drain(&mut one.m), vec![]);
    // Any frame is a sign of life: a pong resets the clock.
    let pong = MeshMessage::Pong.encode(&one.peer, T0.unix());
    one.m.handle(T0.plus_ms(4_000), Input::Packet { conn: ConnId(1), packet: packet(pong) });
    one.m.handle(T0.plus_ms(12_999), Input::Timeout);
    let outs = drain(&mut one.m);
    assert!(outs.iter().all(|o| !matches!(o, Output::Close { .. })), "alive 9.0 s after the pong: {outs:?}");
    one.m.handle(T0.plus_ms(13_499), Input::Timeout);
    let reason = CloseReason::Unresponsive { silent_ms: 9_499 };
    assert_eq!(
        drain(&mut one.m),
        vec![
            Output::Close { conn: ConnId(1), reason: reason.clone() },
            Output::Event(Event::PeerDown { conn: ConnId(1), peer: one.peer.clone(), reason }),
        ]
    );
    assert_eq!(one.m.stats().unresponsive, 1);
}

#[test]
fn a_tree_link_that_keeps_talking_still_gets_our_heartbeats() {
    // The peer sends all the time (it is never pinged), but we send it
    // nothing: a heartbeat goes out every keepalive interval, so that a peer
    // busy reading our backlog still hears from us ahead of it.
    let mut one = One::with_tree_link();
    let peer = one.peer.clone();
    let me = one.m.id().clone();
    let theirs = || packet(MeshMessage::Pong.encode(&peer, T0.unix()));
    let heartbeat = |at: u64| Output::Send {
        conn: ConnId(1),
        frame: MeshMessage::Pong.encode(&me, T0.plus_ms(at).unix()),
        lane: Lane::Control,
    };
    one.m.handle(T0.plus_ms(3_400), Input::Packet { conn: ConnId(1), packet: theirs() });
    one.m.handle(T0.plus_ms(3_499), Input::Timeout);
    assert_eq!(drain(&mut one.m), vec![heartbeat(3_499)]);
    one.m.handle(T0.plus_ms(3_999), Input::Timeout);
    assert_eq!(drain(&mut one.m), vec![]);
    one.m.handle(T0.plus_ms(6_400), Input::Packet { conn: ConnId(1), packet: theirs() });
    one.m.handle(T0.plus_ms(6_499), Input::Timeout);
    assert_eq!(drain(&mut one.m), vec![heartbeat(6_499)]);
}

#[test]
fn silence_does_not_count_while_the_driver_is_not_reading() {
    let mut one = One::with_tree_link();
    // Ten seconds of backpressure: the peer is not blamed.
    for at in (499..10_000).step_by(500) {
        one.m.handle(T0.plus_ms(at), Input::NotReading);
        one.m.handle(T0.plus_ms(at), Input::Timeout);
    }
    let outs = drain(&mut one.m);
    assert!(outs.iter().all(|o| !matches!(o, Output::Close { .. })), "{outs:?}");
    // Reading again: dead 9 s after the last NotReading (at 9,999).
    one.m.handle(T0.plus_ms(18_998), Input::Timeout);
    assert!(drain(&mut one.m).iter().all(|o| !matches!(o, Output::Close { .. })));
    one.m.handle(T0.plus_ms(19_498), Input::Timeout);
    let reason = CloseReason::Unresponsive { silent_ms: 9_499 };
    assert!(drain(&mut one.m).contains(&Output::Close { conn: ConnId(1), reason }));
}

#[test]
fn pings_are_answered_on_tree_links_only() {
    // A tree link answers a ping with a pong, ahead of payload.
    let mut one = One::with_tree_link();
    let ping = MeshMessage::Ping.encode(&one.peer, T0.unix());
    one.m.handle(T0, Input::Packet { conn: ConnId(1), packet: packet(ping.clone()) });
    let pong = MeshMessage::Pong.encode(one.m.id(), T0.unix());
    assert_eq!(drain(&mut one.m), vec![Output::Send { conn: ConnId(1), frame: pong, lane: Lane::Control }]);
    // A link without the tree (py2p, older rs2p) gets no keepalive traffic.
    let mut plain = One::established(1);
    plain.m.handle(T0, Input::Packet { conn: ConnId(1), packet: packet(ping) });
    plain.m.handle(T0.plus_ms(60_000), Input::Timeout);
    assert!(drain(&mut plain.m).iter().all(|o| !matches!(o, Output::Send { .. } | Output::Close { .. })));
}

// ----- proving ids on links (auth.rs) ----------------------------------------

/// A quiet machine with the key made from `seed`; `claim` overrides the id
/// it claims (an impostor's).
fn keyed(seed: u8, claim: Option<PeerId>) -> Mesh {
    let me = crate::identity::Identity::from_secret([seed; 32]);
    let mut cfg = config_for(usize::from(seed), &Protocol::default());
    cfg.id = claim.unwrap_or_else(|| me.id());
    cfg.identity = Some(me);
    cfg.maintain_outgoing = false;
    Mesh::new(cfg, u64::from(seed))
}

/// Opens a link between `a` (conn 1, incoming) and `b` (conn 2, incoming)
/// and carries every frame across until both are quiet. Returns what else
/// each machine output (events, closes), and every frame sent.
fn link(a: &mut Mesh, b: &mut Mesh) -> (Vec<Output>, Vec<Output>, Vec<Frame>) {
    a.handle(T0, Input::Incoming { conn: ConnId(1) });
    b.handle(T0, Input::Incoming { conn: ConnId(2) });
    let (mut rest_a, mut rest_b, mut sent) = (Vec::new(), Vec::new(), Vec::new());
    fn carry(from: &mut Mesh, to: &mut Mesh, to_conn: u64, rest: &mut Vec<Output>, sent: &mut Vec<Frame>) -> bool {
        let mut moved = false;
        for o in drain(from) {
            match o {
                Output::Send { frame, .. } => {
                    moved = true;
                    sent.push(frame.clone());
                    to.handle(T0, Input::Packet { conn: ConnId(to_conn), packet: packet(frame) });
                }
                other => rest.push(other),
            }
        }
        moved
    }
    for _ in 0..20 {
        let moved_ab = carry(a, b, 2, &mut rest_a, &mut sent);
        let moved_ba = carry(b, a, 1, &mut rest_b, &mut sent);
        if !moved_ab && !moved_ba {
            break;
        }
    }
    (rest_a, rest_b, sent)
}

fn up(out: &[Output]) -> bool {
    out.iter().any(|o| matches!(o, Output::Event(Event::PeerUp { .. })))
}

fn auth_close(out: &[Output]) -> Option<AuthFailure> {
    out.iter().find_map(|o| match o {
        Output::Close { reason: CloseReason::Auth(why), .. } => Some(why.clone()),
        _ => None,
    })
}

#[test]
fn two_keyed_nodes_prove_their_ids_before_the_link_is_up() {
    let (mut a, mut b) = (keyed(1, None), keyed(2, None));
    let (out_a, out_b, sent) = link(&mut a, &mut b);
    assert!(up(&out_a) && up(&out_b), "{out_a:?} {out_b:?}");
    let proofs = sent
        .iter()
        .filter(|f| matches!(MeshMessage::decode(&packet((*f).clone())), Ok(Some(MeshMessage::AuthProof { .. }))))
        .count();
    assert_eq!(proofs, 2, "each side proved its id once");
    assert_eq!(a.stats().refused_ids + b.stats().refused_ids, 0);
}

#[test]
fn an_impostor_claiming_an_id_without_its_key_is_refused() {
    let victim = crate::identity::Identity::from_secret([1; 32]).id();
    let (mut b, mut impostor) = (keyed(2, None), keyed(3, Some(victim.clone())));
    let (out_b, _, _) = link(&mut b, &mut impostor);
    assert!(!up(&out_b));
    assert_eq!(
        auth_close(&out_b),
        Some(AuthFailure::BadProof { claimed: victim, why: crate::identity::VerifyError::WrongKey })
    );
    assert_eq!(b.stats().refused_ids, 1);
}

#[test]
fn a_private_network_refuses_strangers_and_unproven_peers() {
    let a = crate::identity::Identity::from_secret([1; 32]);
    let allow = |m: &mut Mesh| m.cfg.allow = Some(std::sync::Arc::new([a.id()].into_iter().collect()));
    // A listed, proven peer links.
    let (mut b, mut a_node) = (keyed(2, None), keyed(1, None));
    allow(&mut b);
    let (out_b, _, _) = link(&mut b, &mut a_node);
    assert!(up(&out_b), "{out_b:?}");
    // A stranger with its own key does not.
    let (mut b, mut stranger) = (keyed(2, None), keyed(4, None));
    allow(&mut b);
    let (out_b, _, _) = link(&mut b, &mut stranger);
    assert!(matches!(auth_close(&out_b), Some(AuthFailure::NotAllowed { .. })), "{out_b:?}");
    // Nor does a peer that claims the listed id but offers no proof (py2p,
    // or an intruder that leaves AUTH out of its handshake).
    let mut one = One::quiet();
    allow(&mut one.m);
    one.m.cfg.identity = Some(crate::identity::Identity::from_secret([2; 32]));
    one.m.handle(T0, Input::Incoming { conn: ConnId(1) });
    let hello = one.hello_from(&a.id(), vec![0x2f]);
    one.m.handle(T0, Input::Packet { conn: ConnId(1), packet: hello });
    assert_eq!(auth_close(&drain(&mut one.m)), Some(AuthFailure::Unproven { claimed: a.id() }));
}

#[test]
fn without_a_key_or_with_a_py2p_peer_links_come_up_at_the_handshake() {
    // The keyed node meets a peer that does not advertise AUTH (py2p): up
    // at once, as in py2p.
    let mut one = One::quiet();
    one.m.cfg.identity = Some(crate::identity::Identity::from_secret([2; 32]));
    one.m.handle(T0, Input::Incoming { conn: ConnId(1) });
    let hello = one.hello_from(&one.peer.clone(), vec![0x2f]);
    one.m.handle(T0, Input::Packet { conn: ConnId(1), packet: hello });
    assert!(up(&drain(&mut one.m)));
}

#[test]
fn a_proven_connect_returns_only_once_the_peer_counts_the_link() {
    let (mut a, mut b) = (keyed(1, None), keyed(2, None));
    a.handle(
        T0,
        Input::Command { request: RequestId(9), command: Command::Connect { addr: addr_of(2), expected: None } },
    );
    let dial = drain(&mut a)
        .into_iter()
        .find_map(|o| match o {
            Output::Dial { dial, .. } => Some(dial),
            _ => None,
        })
        .expect("a dials");
    a.handle(T0, Input::Dialed { dial, conn: ConnId(1) });
    b.handle(T0, Input::Incoming { conn: ConnId(2) });
    // Carry frames both ways, holding back b's AuthOk.
    let is_ok = |f: &Frame| matches!(MeshMessage::decode(&packet(f.clone())), Ok(Some(MeshMessage::AuthOk)));
    let (mut held, mut out_a, mut out_b) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..20 {
        let mut moved = false;
        for o in drain(&mut a) {
            match o {
                Output::Send { frame, .. } => {
                    moved = true;
                    b.handle(T0, Input::Packet { conn: ConnId(2), packet: packet(frame) });
                }
                other => out_a.push(other),
            }
        }
        for o in drain(&mut b) {
            match o {
                Output::Send { frame, .. } if is_ok(&frame) => held.push(frame),
                Output::Send { frame, .. } => {
                    moved = true;
                    a.handle(T0, Input::Packet { conn: ConnId(1), packet: packet(frame) });
                }
                other => out_b.push(other),
            }
        }
        if !moved {
            break;
        }
    }
    let replied =
        |out: &[Output]| out.iter().any(|o| matches!(o, Output::Reply { request: RequestId(9), result: Ok(_) }));
    assert!(up(&out_a) && up(&out_b), "both ends count the link");
    assert!(!replied(&out_a), "the connect waits for b's AuthOk");
    assert_eq!(held.len(), 1);
    a.handle(T0, Input::Packet { conn: ConnId(1), packet: packet(held.remove(0)) });
    assert!(replied(&drain(&mut a)), "b's AuthOk answers the connect");
}

// ----- signed broadcasts (signed.rs) -----------------------------------------

/// The broadcasts a machine delivered, with whether each was verified.
fn deliveries(out: &[Output]) -> Vec<(Frame, bool)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(Event::Message(d)) => Some((d.packet.frame.clone(), d.verified)),
            _ => None,
        })
        .collect()
}

/// Links `a` and `b`, has `a` broadcast `messages` in one command, and
/// returns what `a` sent `b` (the signature message, then the broadcasts).
fn a_sends_to_b(a: &mut Mesh, b: &mut Mesh, messages: Vec<Vec<Value>>) -> Vec<Frame> {
    link(a, b);
    a.handle(T0, Input::Command { request: RequestId(1), command: Command::BroadcastMany { messages } });
    sent_on(&drain(a), 1)
}

fn is_signatures(f: &Frame) -> bool {
    matches!(MeshMessage::decode(&packet(f.clone())), Ok(Some(MeshMessage::Signatures { .. })))
}

/// `a`'s frames after a broadcast command, in order, per connection.
fn sent_on(out: &[Output], conn: u64) -> Vec<Frame> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { conn: c, frame, .. } if *c == ConnId(conn) => Some(frame.clone()),
            _ => None,
        })
        .collect()
}

/// A signature message claiming `sender`, made with `signer`'s key.
fn signatures_frame(signer: &crate::identity::Identity, sender: &PeerId, now: Now, ids: Vec<MsgId>) -> Frame {
    let context = signatures_context(Protocol::default().id().as_bytes(), &ids);
    MeshMessage::Signatures { key: signer.public_key(), signature: signer.sign(&context), ids }
        .encode(sender, now.unix())
}

#[test]
fn a_keyed_node_signs_its_broadcasts_and_py2p_peers_never_see_the_signatures() {
    let (mut a, mut b) = (keyed(1, None), keyed(2, None));
    link(&mut a, &mut b);
    // A py2p peer on a's conn 5 (zlib, no capabilities).
    a.handle(T0, Input::Incoming { conn: ConnId(5) });
    let py2p = pid(99);
    let hs = Handshake {
        id: py2p.clone(),
        protocol: Protocol::default().id().as_bytes().to_vec(),
        addr: Some(addr_of(9)),
        methods: vec![0x13],
    };
    a.handle(
        T0,
        Input::Packet { conn: ConnId(5), packet: packet(MeshMessage::Handshake(hs).encode(&py2p, T0.unix())) },
    );
    drain(&mut a);
    let messages: Vec<Vec<Value>> = (0..3).map(|i| vec![Value::from(i)]).collect();
    a.handle(T0, Input::Command { request: RequestId(1), command: Command::BroadcastMany { messages } });
    let out = drain(&mut a);
    let to_b = sent_on(&out, 1);
    assert_eq!(to_b.len(), 4, "a signature, then the three broadcasts: {to_b:?}");
    assert!(is_signatures(&to_b[0]) && !to_b[1..].iter().any(is_signatures));
    let to_py2p = sent_on(&out, 5);
    assert_eq!(to_py2p, to_b[1..].to_vec(), "py2p gets the broadcasts, and nothing else");
    for f in &to_b {
        b.handle(T0, Input::Packet { conn: ConnId(2), packet: packet(f.clone()) });
    }
    let got = deliveries(&drain(&mut b));
    assert_eq!(got, to_b[1..].iter().map(|f| (f.clone(), true)).collect::<Vec<_>>());
    assert_eq!(b.stats().rejected, 0);
}

#[test]
fn a_large_burst_is_signed_in_bounded_batches_each_ahead_of_its_messages() {
    let (mut a, mut b) = (keyed(1, None), keyed(2, None));
    let to_b = a_sends_to_b(&mut a, &mut b, (0..2_500).map(|i| vec![Value::from(i)]).collect());
    let batches: Vec<usize> = to_b.iter().enumerate().filter(|(_, f)| is_signatures(f)).map(|(i, _)| i).collect();
    assert_eq!(batches, vec![0, 1 + MAX_IDS_PER_MESSAGE, 2 + 2 * MAX_IDS_PER_MESSAGE]);
    for f in &to_b {
        b.handle(T0, Input::Packet { conn: ConnId(2), packet: packet(f.clone()) });
    }
    let got = deliveries(&drain(&mut b));
    assert_eq!(got.len(), 2_500);
    assert!(got.iter().all(|(_, v)| *v));
}

#[test]
fn forged_broadcasts_and_signatures_claiming_a_keyed_node_are_dropped_and_counted() {
    let (mut a, mut b) = (keyed(1, None), keyed(2, None));
    link(&mut a, &mut b);
    let a_key = crate::identity::Identity::from_secret([1; 32]);
    let attacker = crate::identity::Identity::from_secret([66; 32]);
    // The attacker is a py2p-style peer of b (conn 3).
    b.handle(T0, Input::Incoming { conn: ConnId(3) });
    let hs = Handshake {
        id: attacker.id(),
        protocol: Protocol::default().id().as_bytes().to_vec(),
        addr: Some(addr_of(9)),
        methods: vec![0x2f],
    };
    b.handle(
        T0,
        Input::Packet { conn: ConnId(3), packet: packet(MeshMessage::Handshake(hs).encode(&attacker.id(), T0.unix())) },
    );
    drain(&mut b);
    let forged = text_frame(&a_key.id(), T0, "I am a");
    let inject = |b: &mut Mesh, f: &Frame| b.handle(T0, Input::Packet { conn: ConnId(3), packet: packet(f.clone()) });
    // 1. No signature: held, then dropped when none comes.
    inject(&mut b, &forged);
    // 2. A signature message in a's name made with the attacker's key.
    inject(&mut b, &signatures_frame(&attacker, &a_key.id(), T0, vec![forged.id()]));
    // 3. a's real key, but a signature over something else.
    let mut wrong = signatures_frame(&a_key, &a_key.id(), T0, vec![MsgId([7; 32])]);
    if let Ok(Some(MeshMessage::Signatures { key, signature, .. })) = MeshMessage::decode(&packet(wrong.clone())) {
        wrong = MeshMessage::Signatures { key, signature, ids: vec![forged.id()] }.encode(&a_key.id(), T0.unix());
    }
    inject(&mut b, &wrong);
    // 4. The attacker's own valid signature listing the forged id: it is
    //    not the attacker's message to vouch for.
    inject(&mut b, &signatures_frame(&attacker, &attacker.id(), T0, vec![forged.id()]));
    let out = drain(&mut b);
    assert!(deliveries(&out).is_empty(), "{out:?}");
    assert_eq!(b.stats().bad_signatures, 2);
    b.handle(T0.plus_ms(b.config().signature_wait_ms), Input::Timeout);
    assert!(deliveries(&drain(&mut b)).is_empty());
    assert_eq!(b.stats().unsigned, 1);
    assert_eq!(b.stats().rejected, 3);
    // The attacker's own unsigned broadcast: a sender b does not know as
    // keyed is delivered, marked unverified.
    let own = text_frame(&pid(12345), T0, "plain");
    inject(&mut b, &own);
    assert_eq!(deliveries(&drain(&mut b)), vec![(own, false)]);
}

#[test]
fn a_message_ahead_of_its_signature_waits_for_it() {
    let (mut a, mut b) = (keyed(1, None), keyed(2, None));
    let mut to_b = a_sends_to_b(&mut a, &mut b, vec![vec![Value::from("x")]]);
    to_b.reverse();
    b.handle(T0, Input::Packet { conn: ConnId(2), packet: packet(to_b[0].clone()) });
    assert!(deliveries(&drain(&mut b)).is_empty(), "held for its signature");
    b.handle(T0.plus_ms(10), Input::Packet { conn: ConnId(2), packet: packet(to_b[1].clone()) });
    assert_eq!(deliveries(&drain(&mut b)), vec![(to_b[0].clone(), true)]);
    b.handle(T0.plus_ms(60_000), Input::Timeout);
    assert_eq!(b.stats().rejected, 0);
}

#[test]
fn a_signed_broadcast_replayed_after_the_window_is_refused() {
    let (mut a, mut b) = (keyed(1, None), keyed(2, None));
    let captured = a_sends_to_b(&mut a, &mut b, vec![vec![Value::from("x")]]);
    // A node that never saw it gets the captured pair 61 s later.
    let (mut c, mut a2) = (keyed(3, None), keyed(1, None));
    link(&mut c, &mut a2);
    let later = T0.plus_ms(61_000);
    for f in &captured {
        c.handle(later, Input::Packet { conn: ConnId(1), packet: packet(f.clone()) });
    }
    assert!(deliveries(&drain(&mut c)).is_empty());
    assert_eq!(c.stats().stale, 2);
    // Inside the window, a replay is a duplicate.
    for f in captured.iter().chain(&captured) {
        b.handle(T0.plus_ms(10_000), Input::Packet { conn: ConnId(2), packet: packet(f.clone()) });
    }
    assert_eq!(deliveries(&drain(&mut b)).len(), 1);
    assert_eq!(b.stats().duplicates, 2);
}

#[test]
fn requiring_signatures_refuses_py2p_peers_and_unsigned_messages() {
    let mut one = One::quiet();
    one.m.cfg.identity = Some(crate::identity::Identity::from_secret([2; 32]));
    one.m.cfg.require_signed = true;
    one.m.handle(T0, Input::Incoming { conn: ConnId(1) });
    let hello = one.hello_from(&one.peer.clone(), vec![0x13]);
    one.m.handle(T0, Input::Packet { conn: ConnId(1), packet: hello });
    assert_eq!(auth_close(&drain(&mut one.m)), Some(AuthFailure::Unsigned { claimed: one.peer.clone() }));
    // A keyed peer links; its unsigned broadcast (a sender b never saw
    // sign) is still dropped.
    let (mut a, mut b) = (keyed(1, None), keyed(2, None));
    b.cfg.require_signed = true;
    link(&mut a, &mut b);
    let stranger = text_frame(&pid(4242), T0, "unsigned");
    b.handle(T0, Input::Packet { conn: ConnId(2), packet: packet(stranger) });
    b.handle(T0.plus_ms(b.config().signature_wait_ms), Input::Timeout);
    assert!(deliveries(&drain(&mut b)).is_empty());
    assert_eq!(b.stats().unsigned, 1);
}

proptest::proptest! {
    /// Whatever order a burst and its signature arrive in, each message is
    /// delivered once, verified, and nothing is rejected; a burst whose
    /// signature never comes is delivered to nobody.
    #[test]
    fn signed_bursts_are_delivered_once_whatever_the_order(
        n in 1usize..20,
        order in proptest::collection::vec(proptest::num::usize::ANY, 21),
        drop_signature in proptest::bool::ANY,
    ) {
        let (mut a, mut b) = (keyed(1, None), keyed(2, None));
        link(&mut a, &mut b);
        let messages: Vec<Vec<Value>> = (0..n).map(|i| vec![Value::from(i)]).collect();
        a.handle(T0, Input::Command { request: RequestId(1), command: Command::BroadcastMany { messages } });
        let mut frames = sent_on(&drain(&mut a), 1);
        if drop_signature {
            frames.remove(0);
        }
        // A permutation from the random keys.
        let mut keyed_frames: Vec<(usize, Frame)> = frames.into_iter().enumerate().map(|(i, f)| (order[i], f)).collect();
        keyed_frames.sort_by_key(|(k, _)| *k);
        let mut got = Vec::new();
        for (i, (_, f)) in keyed_frames.iter().enumerate() {
            b.handle(T0.plus_ms(i as u64), Input::Packet { conn: ConnId(2), packet: packet(f.clone()) });
            got.extend(deliveries(&drain(&mut b)));
        }
        b.handle(T0.plus_ms(60_000), Input::Timeout);
        got.extend(deliveries(&drain(&mut b)));
        if drop_signature {
            proptest::prop_assert!(got.is_empty());
            proptest::prop_assert_eq!(b.stats().unsigned, n as u64);
        } else {
            proptest::prop_assert_eq!(got.len(), n);
            proptest::prop_assert!(got.iter().all(|(_, v)| *v));
            let ids: std::collections::HashSet<MsgId> = got.iter().map(|(f, _)| f.id()).collect();
            proptest::prop_assert_eq!(ids.len(), n);
            proptest::prop_assert_eq!(b.stats().rejected, 0);
        }
    }
}

/// Configs for `n` simulated nodes, each with a key of its own.
fn keyed_configs(n: usize) -> Vec<Config> {
    (0..n)
        .map(|i| {
            let key = crate::identity::Identity::from_secret([i as u8 + 1; 32]);
            let mut c = config_for(i, &Protocol::default());
            c.id = key.id();
            c.identity = Some(key);
            c
        })
        .collect()
}

#[test]
fn in_a_network_of_keyed_nodes_every_broadcast_arrives_once_and_verified() {
    let mut sim = Sim::with_configs(keyed_configs(8));
    // A ring with two chords: several paths to every node.
    for i in 0..8 {
        sim.connect(i, (i + 1) % 8);
    }
    sim.connect(0, 4);
    sim.connect(2, 6);
    sim.run();
    sim.advance(2_000);
    for (i, text) in [(0, "from 0"), (3, "from 3"), (5, "from 5")] {
        sim.broadcast_text(i, text);
    }
    sim.run();
    sim.advance(10);
    sim.run();
    for node in 0..8 {
        let got: Vec<(String, bool)> = sim.events[node]
            .iter()
            .filter_map(|e| match e {
                Event::Message(d) => {
                    let text = d.packet.values().ok()?.first()?.as_str()?.to_owned();
                    text.starts_with("from ").then_some((text, d.verified))
                }
                _ => None,
            })
            .collect();
        let expected: Vec<&str> =
            ["from 0", "from 3", "from 5"].into_iter().filter(|t| *t != format!("from {node}")).collect();
        assert_eq!(got.len(), expected.len(), "node {node}: {got:?}");
        for t in expected {
            assert_eq!(got.iter().filter(|(g, v)| g == t && *v).count(), 1, "node {node} got {t} once, verified");
        }
        assert_eq!(sim.nodes[node].mesh().stats().rejected, 0);
    }
}

#[test]
fn a_peer_that_checks_signatures_and_relays_a_forged_one_is_closed() {
    let (mut a, mut b) = (keyed(1, None), keyed(2, None));
    link(&mut a, &mut b);
    // b's link to a (conn 2): a advertises CHECKS, so it relays only good
    // signatures. A forged one from it closes the link.
    let mallory = crate::identity::Identity::from_secret([66; 32]);
    let victim = pid(4242);
    let forged = signatures_frame(&mallory, &victim, T0, vec![MsgId([1; 32])]);
    b.handle(T0, Input::Packet { conn: ConnId(2), packet: packet(forged) });
    let out = drain(&mut b);
    assert!(
        out.iter().any(|o| matches!(o, Output::Close { conn: ConnId(2), reason: CloseReason::ProtocolViolation(_) })),
        "{out:?}"
    );
    assert_eq!(b.stats().bad_signatures, 1);
    assert!(sent_on(&out, 2).iter().all(|f| !is_signatures(f)), "not relayed");
}

#[test]
fn a_node_that_does_not_sign_still_relays_signatures() {
    // 0 - 1 - 2, all keyed; 1 does not sign its own broadcasts.
    let mut cfgs = keyed_configs(3);
    for c in &mut cfgs {
        c.max_outgoing = 0;
    }
    cfgs[1].sign_broadcasts = false;
    let mut sim = Sim::with_configs(cfgs);
    sim.connect(0, 1);
    sim.connect(1, 2);
    sim.run();
    sim.advance(2_000);
    sim.broadcast_text(0, "from 0");
    sim.broadcast_text(1, "from 1");
    sim.run();
    sim.advance(10);
    let got = |sim: &Sim, node: usize| -> Vec<(String, bool)> {
        sim.events[node]
            .iter()
            .filter_map(|e| match e {
                Event::Message(d) => Some((d.packet.values().ok()?.first()?.as_str()?.to_owned(), d.verified)),
                _ => None,
            })
            .collect()
    };
    // 0's signature crossed 1: verified at 2. 1's own broadcasts are
    // delivered, unverified (1 never claimed to sign).
    let mut at_2 = got(&sim, 2);
    at_2.sort();
    assert_eq!(at_2, vec![("from 0".to_string(), true), ("from 1".to_string(), false)]);
    assert_eq!(got(&sim, 0), vec![("from 1".to_string(), false)]);
    for node in 0..3 {
        assert_eq!(sim.nodes[node].mesh().stats().rejected, 0, "node {node}");
    }
}
