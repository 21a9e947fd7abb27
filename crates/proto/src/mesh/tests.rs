//! State machine tests without sockets.

use super::*;
use crate::id::Encryption;
use crate::sim::{addr_of, config_for, Sim};
use crate::wire::Limits;

fn pid(n: u128) -> PeerId {
    PeerId::from_bytes(crate::id::b58encode_int(&n.to_be_bytes()))
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
    let _ = sim.nodes[0].mesh.connect(addr_of(1), None);
    let _ = sim.nodes[1].mesh.connect(addr_of(0), None);
    sim.drain(0);
    sim.drain(1);
    sim.run();
    let p0 = sim.nodes[0].mesh.peers();
    let p1 = sim.nodes[1].mesh.peers();
    assert_eq!(p0.len(), 1);
    assert_eq!(p1.len(), 1);
    // Both kept the same TCP connection: one side outgoing, the other not.
    assert_ne!(p0[0].outgoing, p1[0].outgoing);
    assert_eq!(sim.nodes[0].mesh.connection_count(), 1);
    assert_eq!(sim.nodes[1].mesh.connection_count(), 1);
    let greater = if sim.nodes[0].mesh.id().numeric_cmp(sim.nodes[1].mesh.id()).is_gt() { 0 } else { 1 };
    assert!(sim.nodes[greater].mesh.peers()[0].outgoing, "kept the link dialed by the greater id");
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
    assert_eq!(sim.nodes[0].mesh.peers()[0].id, *sim.nodes[1].mesh.id());
    assert!(sim.nodes[0].mesh.peers()[0].rs2p);
    assert_eq!(sim.nodes[1].mesh.peers()[0].addr, Some(addr_of(0)));
}

#[test]
fn foreign_subnet_is_refused_with_a_reason() {
    let other = Protocol::new("other", Encryption::Plaintext);
    let cfgs = vec![config_for(0, &Protocol::default()), config_for(1, &other)];
    let mut sim = Sim::with_configs(cfgs);
    sim.connect(0, 1);
    sim.run();
    for i in 0..2 {
        assert!(sim.nodes[i].mesh.peers().is_empty());
        let refused = sim.events[i].iter().any(|e| {
            matches!(e, Event::ConnectFailed { reason: CloseReason::ProtocolMismatch { .. }, .. })
                || matches!(e, Event::ConnectFailed { reason: CloseReason::Io(_), .. })
        });
        assert!(refused, "node {i}: {:?}", sim.events[i]);
    }
    assert!(sim.events[0]
        .iter()
        .chain(sim.events[1].iter())
        .any(|e| matches!(e, Event::ConnectFailed { reason: CloseReason::ProtocolMismatch { .. }, .. })));
}

#[test]
fn message_before_handshake_closes() {
    let cfg = config_for(0, &Protocol::default());
    let mut m = Mesh::new(cfg, 1);
    let now = Now { mono_ms: 0, unix_ms: 100_000 };
    m.handle_incoming(now, ConnId(1));
    while m.poll_output().is_some() {}
    let f = Frame::build(0, &pid(5), 100, 0, &[Value::from("x")]);
    m.handle_packet(now, ConnId(1), Packet::parse(f, &Limits::default()).unwrap());
    let outs: Vec<Output> = std::iter::from_fn(|| m.poll_output()).collect();
    assert!(outs.iter().any(|o| matches!(o, Output::Close { reason: CloseReason::ProtocolViolation(_), .. })));
    assert_eq!(m.stats().protocol_errors, 1);
}

#[test]
fn handshake_timeout_closes() {
    let mut m = Mesh::new(config_for(0, &Protocol::default()), 1);
    let now = Now { mono_ms: 0, unix_ms: 100_000 };
    m.handle_incoming(now, ConnId(1));
    while m.poll_output().is_some() {}
    m.handle_tick(now.plus_ms(9_999));
    assert!(std::iter::from_fn(|| m.poll_output()).all(|o| !matches!(o, Output::Close { .. })));
    m.handle_tick(now.plus_ms(10_000));
    assert!(std::iter::from_fn(|| m.poll_output())
        .any(|o| matches!(o, Output::Close { reason: CloseReason::HandshakeTimeout, .. })));
}

#[test]
fn dedup_window_and_stale_broadcasts() {
    let mut sim = Sim::new(3);
    sim.connect(0, 1);
    sim.connect(1, 2);
    sim.run();
    let now = sim.now;
    let f = crate::sim::text_frame(&sim.nodes[0].mesh, now, "hello");
    sim.nodes[0].mesh.broadcast_frame(now, f.clone());
    sim.drain(0);
    sim.run();
    assert_eq!(sim.received(1, "hello"), 1);
    assert_eq!(sim.received(2, "hello"), 1);
    // The same frame again: suppressed everywhere.
    let conn = sim.nodes[1].mesh.conn_of(sim.nodes[0].mesh.id()).unwrap();
    let p = Packet::parse(f.clone(), &Limits::default()).unwrap();
    let dups = sim.nodes[1].mesh.stats().duplicates;
    sim.nodes[1].mesh.handle_packet(now, conn, p.clone());
    assert_eq!(sim.nodes[1].mesh.stats().duplicates, dups + 1);
    sim.drain(1);
    sim.run();
    assert_eq!(sim.received(1, "hello"), 1);
    assert_eq!(sim.received(2, "hello"), 1);
    // A broadcast 61 s old is ignored.
    let old = Frame::build(0, sim.nodes[0].mesh.id(), now.unix() - 61, 0, &[Value::from("old")]);
    sim.nodes[1].mesh.handle_packet(now, conn, Packet::parse(old, &Limits::default()).unwrap());
    sim.drain(1);
    sim.run();
    assert_eq!(sim.received(1, "old"), 0);
    assert_eq!(sim.nodes[1].mesh.stats().stale, 1);
    // Exactly 60 s old is still inside the window.
    let edge = Frame::build(0, sim.nodes[0].mesh.id(), now.unix() - 60, 0, &[Value::from("edge")]);
    sim.nodes[1].mesh.handle_packet(now, conn, Packet::parse(edge, &Limits::default()).unwrap());
    sim.drain(1);
    sim.run();
    assert_eq!(sim.received(1, "edge"), 1);
    assert_eq!(sim.received(2, "edge"), 1);
    // After the cache forgets (window + skew), an old copy is still refused
    // by the window check.
    sim.advance(400_000);
    sim.nodes[1].mesh.handle_packet(sim.now, conn, p);
    assert_eq!(sim.received(1, "hello"), 1);
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
        let peers = sim.nodes[i].mesh.peers();
        let out = peers.iter().filter(|p| p.outgoing).count();
        // The target is met, or the node already knows everyone.
        assert!(out == 4 || peers.len() == n - 1, "node {i}: {out} outgoing of {}", peers.len());
        assert!(sim.nodes[i].mesh.outgoing_count() <= 4);
    }
    // Peer exchange, not the initial star, made most links.
    let links: usize = (0..n).map(|i| sim.nodes[i].mesh.peers().len()).sum::<usize>() / 2;
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
        let now = sim.now;
        let text = format!("msg-{k}");
        let f = crate::sim::text_frame(&sim.nodes[src].mesh, now, &text);
        sim.nodes[src].mesh.broadcast_frame(now, f);
        sim.drain(src);
        sim.run();
        for i in 0..n {
            let expect = usize::from(i != src);
            assert_eq!(sim.received(i, &text), expect, "node {i} msg {k}");
        }
    }
    let dups: u64 = sim.nodes.iter().map(|m| m.mesh.stats().duplicates).sum();
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
        let out = sim.nodes[i].mesh.peers().iter().filter(|p| p.outgoing).count();
        assert!(out >= 3 || sim.nodes[i].mesh.peers().len() >= 4, "node {i} has {out} outgoing");
    }
    let now = sim.now;
    let f = crate::sim::text_frame(&sim.nodes[0].mesh, now, "after");
    sim.nodes[0].mesh.broadcast_frame(now, f);
    sim.drain(0);
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
    let to = sim.nodes[2].mesh.id().clone();
    assert!(sim.nodes[0].mesh.conn_of(&to).is_none());
    let now = sim.now;
    let r = sim.nodes[0].mesh.reply(now, &to, &[Value::from("routed")]).unwrap();
    assert_eq!(r, ReplyRoute::Routing);
    sim.drain(0);
    sim.run();
    assert_eq!(sim.received(2, "routed"), 1);
    assert!(sim.nodes[0].mesh.conn_of(&to).is_some());
}

#[test]
fn renegotiation_is_answered_once_and_resend_resends() {
    let mut sim = Sim::new(2);
    sim.connect(0, 1);
    sim.run();
    let now = sim.now;
    let peer1 = sim.nodes[1].mesh.id().clone();
    let conn = sim.nodes[0].mesh.conn_of(&peer1).unwrap();
    // Node 1 asks node 0 to stop compressing, as py2p does after a decode
    // failure: node 0 answers once, with the intersection (empty).
    let reneg = Frame::build(1, &peer1, now.unix(), subflag::COMPRESSION, &[Value::Array(vec![])]);
    sim.nodes[0].mesh.handle_packet(now, conn, Packet::parse(reneg.clone(), &Limits::default()).unwrap());
    let outs: Vec<Output> = std::iter::from_fn(|| sim.nodes[0].mesh.poll_output()).collect();
    assert_eq!(outs.iter().filter(|o| matches!(o, Output::Send { .. })).count(), 1, "one answer");
    assert!(outs
        .iter()
        .any(|o| matches!(o, Output::Configure { codec: LinkCodec { compression: None, coalesce: false }, .. })));
    // The same (unchanged) list again gets no answer: no loop.
    sim.nodes[0].mesh.handle_packet(now, conn, Packet::parse(reneg, &Limits::default()).unwrap());
    assert!(std::iter::from_fn(|| sim.nodes[0].mesh.poll_output()).all(|o| !matches!(o, Output::Send { .. })));
    // On such a (py2p-like) link the last user message is kept, and a
    // resend request resends exactly it, once.
    let id = sim.nodes[0].mesh.whisper(now, &peer1, subflag::WHISPER, &[Value::from("w")]).unwrap();
    while sim.nodes[0].mesh.poll_output().is_some() {}
    let resend = Frame::build(1, &peer1, now.unix(), subflag::RESEND, &[]);
    sim.nodes[0].mesh.handle_packet(now, conn, Packet::parse(resend, &Limits::default()).unwrap());
    let sends: Vec<Frame> = std::iter::from_fn(|| sim.nodes[0].mesh.poll_output())
        .filter_map(|o| match o {
            Output::Send { frame, .. } => Some(frame),
            _ => None,
        })
        .collect();
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].id(), id);
}

#[test]
fn peers_request_answers_str_and_bin_star() {
    let mut sim = Sim::new(2);
    sim.connect(0, 1);
    sim.run();
    let now = sim.now;
    let peer1 = sim.nodes[1].mesh.id().clone();
    let conn = sim.nodes[0].mesh.conn_of(&peer1).unwrap();
    for star in [Value::from("*"), Value::Binary(b"*".to_vec())] {
        let f = Frame::build(2, &peer1, now.unix(), subflag::REQUEST, &[star]);
        sim.nodes[0].mesh.handle_packet(now, conn, Packet::parse(f, &Limits::default()).unwrap());
        let outs: Vec<Output> = std::iter::from_fn(|| sim.nodes[0].mesh.poll_output()).collect();
        let peers_sent = outs.iter().any(|o| match o {
            Output::Send { frame, .. } => {
                Packet::parse(frame.clone(), &Limits::default()).unwrap().header.subflag == subflag::PEERS
            }
            _ => false,
        });
        assert!(peers_sent);
    }
}

#[test]
fn disconnect_and_shutdown() {
    let mut sim = Sim::new(3);
    sim.connect(0, 1);
    sim.connect(0, 2);
    sim.run();
    let p1 = sim.nodes[1].mesh.id().clone();
    sim.nodes[0].mesh.disconnect(&p1).unwrap();
    sim.drain(0);
    sim.run();
    assert!(sim.nodes[0].mesh.conn_of(&p1).is_none());
    assert!(sim.nodes[1].mesh.peers().iter().all(|p| &p.id != sim.nodes[0].mesh.id()));
    assert!(matches!(sim.nodes[0].mesh.disconnect(&p1), Err(CommandError::NotConnected(_))));
    sim.nodes[0].mesh.shutdown();
    sim.drain(0);
    sim.run();
    assert!(sim.nodes[0].mesh.peers().is_empty());
    assert_eq!(sim.nodes[0].mesh.connection_count(), 0);
}
