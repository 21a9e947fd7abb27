//! Interop with real py2p 0.7.878 nodes (Python subprocesses from the pinned
//! virtualenv). Everything on 127.0.0.1 with OS-assigned ports; sends toward
//! py2p are paced because of py2p's receive bug (see PROTOCOL.md).

mod common;

use std::time::Duration;

use common::{next_connect_failed, next_msg, wait_for, Py2p};
use rs2p::json::from_json;
use rs2p::{Encryption, MeshSocket, MessageKind, PeerId, Protocol, Value};
use serde_json::{json, Value as Json};

async fn rs_node() -> MeshSocket {
    MeshSocket::builder().spawn().await.expect("spawn rs2p node")
}

/// Values of every msgpack kind py2p produces, as JSON (the driver's
/// mapping) and as msgpack.
fn fidelity_packets() -> Json {
    json!([
        "plain str",
        "ünïcødé ✓ 字",
        {"$bytes": "AAEC/w=="},
        0, 1, 127, 128, 255, 256, 65535, 65536, 4294967296u64, 18446744073709551615u64,
        -1, -32, -33, -128, -129, -32768, -2147483648i64, -9223372036854775808i64,
        1.5, -0.25, 1e300,
        null, true, false,
        [1, "two", {"$bytes": "Mw=="}, [null]],
        {"a": 1, "b": [true, {"$bytes": ""}]},
        {"$map": [[1, "int key"], [{"$bytes": "aw=="}, "bytes key"]]}
    ])
}

fn msgpack_of(j: &Json) -> Vec<Value> {
    j.as_array().unwrap().iter().map(|v| from_json(v).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_and_whisper_both_ways_with_full_fidelity() {
    let mut py = Py2p::spawn(&[]).await;
    let rs = rs_node().await;
    let py_id = rs.connect(py.addr.clone()).await.expect("rs2p connects to py2p");
    assert_eq!(py_id.to_string(), py.id);
    py.wait_peers(10, "py2p sees rs2p", |p| p.len() == 1).await;

    // py2p -> rs2p broadcast.
    let packets = fidelity_packets();
    py.run(json!({"cmd": "broadcast", "packets": packets})).await;
    let m = next_msg(&rs).await;
    assert_eq!(m.kind(), MessageKind::Broadcast);
    assert_eq!(m.sender().to_string(), py.id);
    assert_eq!(m.packets().unwrap(), msgpack_of(&packets));

    // rs2p -> py2p broadcast: py2p must see the same values, str and bytes
    // kept apart.
    rs.broadcast(msgpack_of(&packets)).await.unwrap();
    let got = py.expect(10, |j| j["event"] == "message").await;
    assert_eq!(got["kind"], "broadcast");
    assert_eq!(got["sender"], rs.id().to_string());
    assert_eq!(got["packets"], packets);

    // Whispers both ways.
    tokio::time::sleep(Duration::from_millis(30)).await;
    rs.whisper(&py_id, vec![Value::from("to py"), Value::Binary(b"raw".to_vec())]).await.unwrap();
    let got = py.expect(10, |j| j["event"] == "message").await;
    assert_eq!(got["kind"], "whisper");
    assert_eq!(got["packets"], json!(["to py", {"$bytes": "cmF3"}]));
    py.run(json!({"cmd": "whisper", "to": rs.id().to_string(), "packets": ["to rs", 42]})).await;
    let m = next_msg(&rs).await;
    assert_eq!(m.kind(), MessageKind::Whisper);
    assert_eq!(m.packets().unwrap(), vec![Value::from("to rs"), Value::from(42)]);

    // Replies both ways (direct connection).
    m.reply(vec![Value::from("reply from rs")]).await.unwrap();
    let got = py.expect(10, |j| j["event"] == "message").await;
    assert_eq!(got["packets"], json!(["reply from rs"]));
    py.run(json!({"cmd": "reply_last", "packets": ["reply from py"]})).await;
    assert_eq!(next_msg(&rs).await.packets().unwrap(), vec![Value::from("reply from py")]);

    assert_eq!(py.status().await, json!("Nominal"));
    assert!(rs.status().await.unwrap().nominal);
    rs.close().await.unwrap();
    py.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py2p_dials_rs2p_and_a_compressed_20kb_message_crosses_both_ways() {
    let mut py = Py2p::spawn(&[]).await;
    let rs = rs_node().await;
    py.run(json!({"cmd": "connect", "addr": rs.out_addr().to_string()})).await;
    wait_for(10, "rs2p sees py2p", || async { rs.routing_table().await.unwrap().len() == 1 }).await;
    let peer = &rs.routing_table().await.unwrap()[0];
    assert_eq!(peer.id.to_string(), py.id);
    assert!(!peer.outgoing);
    assert!(!peer.rs2p, "py2p does not advertise rs2p's identity method");
    py.wait_peers(10, "py2p sees rs2p", |p| p.len() == 1).await;

    let big: String = (0..20_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    py.run(json!({"cmd": "broadcast", "packets": [big.clone()]})).await;
    assert_eq!(next_msg(&rs).await.packets().unwrap(), vec![Value::from(big.as_str())]);
    let big_bytes: Vec<u8> = (0..20_000u32).map(|i| (i % 7) as u8).collect();
    rs.broadcast(vec![Value::Binary(big_bytes.clone()), Value::from(big.as_str())]).await.unwrap();
    let got = py.expect(10, |j| j["event"] == "message").await;
    assert_eq!(from_json(&got["packets"][0]).unwrap(), Value::Binary(big_bytes));
    assert_eq!(got["packets"][1], json!(big));
    assert_eq!(py.status().await, json!("Nominal"));
    rs.close().await.unwrap();
    py.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs2p_relays_between_py2p_nodes() {
    // p1 - rs - p2; the py2p nodes dial nobody on their own.
    let mut p1 = Py2p::spawn(&["--max-outgoing", "0"]).await;
    let mut p2 = Py2p::spawn(&["--max-outgoing", "0"]).await;
    let rs = rs_node().await;
    p1.run(json!({"cmd": "connect", "addr": rs.out_addr().to_string()})).await;
    p2.run(json!({"cmd": "connect", "addr": rs.out_addr().to_string()})).await;
    wait_for(10, "rs2p sees both", || async { rs.routing_table().await.unwrap().len() == 2 }).await;
    p1.wait_peers(5, "p1 only knows rs", |p| p.len() == 1).await;
    p2.wait_peers(5, "p2 only knows rs", |p| p.len() == 1).await;

    for i in 0..5 {
        p1.run(json!({"cmd": "broadcast", "packets": ["via rs2p", i]})).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..5 {
        let got = p2.expect(10, |j| j["event"] == "message").await;
        assert_eq!(got["sender"], json!(p1.id), "original sender kept");
        assert_eq!(got["packets"], json!(["via rs2p", i]));
        // rs2p delivered it too, once, marked unverified (py2p signs
        // nothing).
        let m = next_msg(&rs).await;
        assert_eq!(m.packets().unwrap(), vec![Value::from("via rs2p"), Value::from(i)]);
        assert!(!m.verified());
    }
    // No copy comes back to p1.
    assert!(p1.messages(300).await.is_empty());
    assert_eq!(p1.status().await, json!("Nominal"));
    assert_eq!(p2.status().await, json!("Nominal"));
    rs.close().await.unwrap();
    p1.quit().await;
    p2.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py2p_relays_between_rs2p_nodes() {
    // r1 - py - r2; the rs2p nodes keep no outgoing target of their own.
    let mk = || MeshSocket::builder().max_outgoing(0).spawn();
    let r1 = mk().await.unwrap();
    let r2 = mk().await.unwrap();
    let mut py = Py2p::spawn(&["--max-outgoing", "0"]).await;
    r1.connect(py.addr.clone()).await.unwrap();
    r2.connect(py.addr.clone()).await.unwrap();
    py.wait_peers(10, "py2p sees both", |p| p.len() == 2).await;
    assert_eq!(r1.routing_table().await.unwrap().len(), 1);
    assert_eq!(r2.routing_table().await.unwrap().len(), 1);

    for i in 0..5 {
        r1.broadcast(vec![Value::from("via py2p"), Value::from(i)]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..5 {
        let m = next_msg(&r2).await;
        assert_eq!(m.sender(), r1.id(), "original sender kept");
        assert_eq!(m.packets().unwrap(), vec![Value::from("via py2p"), Value::from(i)]);
        // Signatures do not cross py2p; r2 has not seen r1 sign yet.
        assert!(!m.verified());
    }
    let relayed = py.messages(300).await;
    assert_eq!(relayed.len(), 5, "py2p delivered each once too");
    assert!(r1.recv(100).is_empty(), "nothing came back to the sender");
    assert_eq!(py.status().await, json!("Nominal"));
    // Once r2 has seen r1 prove its key (a direct link, then gone), an
    // unsigned broadcast in r1's name is a forgery to r2: what crosses py2p
    // alone is dropped and counted, while py2p still gets it.
    r2.connect(r1.out_addr().clone()).await.unwrap();
    r1.broadcast(vec![Value::from("direct")]).await.unwrap();
    let m = next_msg(&r2).await;
    assert_eq!(m.packets().unwrap(), vec![Value::from("direct")]);
    assert!(m.verified(), "signed, on the direct link");
    r2.disconnect(r1.id()).await.unwrap();
    wait_for(5, "r1 and r2 apart", || async { r1.routing_table().await.unwrap().len() == 1 }).await;
    let before = r2.status().await.unwrap().stats.unsigned;
    r1.broadcast(vec![Value::from("through py2p, known keyed")]).await.unwrap();
    wait_for(10, "r2 drops it", || async { r2.status().await.unwrap().stats.unsigned > before }).await;
    assert!(r2.recv(100).iter().all(|m| m.packets().unwrap()[0] != Value::from("through py2p, known keyed")));
    assert!(py.messages(300).await.iter().any(|j| j["packets"][0] == "through py2p, known keyed"));
    r1.close().await.unwrap();
    r2.close().await.unwrap();
    py.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_requires_signatures_refuses_py2p_with_the_reason() {
    let strict = MeshSocket::builder().require_signed(true).spawn().await.unwrap();
    let mut py = Py2p::spawn(&[]).await;
    // rs2p dials py2p: refused, saying why.
    let err = strict.connect(py.addr.clone()).await.unwrap_err().to_string();
    assert!(err.contains("does not sign its messages, and this node requires signed ones"), "{err}");
    // py2p dials rs2p: refused, and the rs2p node says why.
    let mut events = strict.events();
    py.run(json!({"cmd": "connect", "addr": strict.out_addr().to_string()})).await;
    let reason = next_connect_failed(&mut events).await;
    assert!(reason.to_string().contains("does not sign its messages"), "{reason}");
    // The event seen may be the first refusal's (the connect's answer can
    // come before its event): wait for the second to be counted.
    wait_for(10, "both refusals counted", || async { strict.status().await.unwrap().stats.refused_ids == 2 }).await;
    assert!(strict.routing_table().await.unwrap().is_empty());
    strict.close().await.unwrap();
    py.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_subnet_is_refused_both_ways() {
    let mut py = Py2p::spawn(&["--subnet", "elsewhere"]).await;
    let rs = rs_node().await;
    // rs2p dials py2p: refused with a visible reason.
    let err = rs.connect(py.addr.clone()).await.unwrap_err().to_string();
    assert!(err.contains("refused: wrong subnet (ours \"mesh\", Plaintext; theirs is unknown"), "{err}");
    assert!(py.peers().await.is_empty());

    // py2p dials rs2p: py2p is silent, rs2p reports why it closed.
    let mut events = rs.events();
    py.run(json!({"cmd": "connect", "addr": rs.out_addr().to_string()})).await;
    let reason = next_connect_failed(&mut events).await;
    assert!(matches!(reason, rs2p::CloseReason::ProtocolMismatch { .. }), "{reason}");
    assert!(rs.routing_table().await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(200)).await;
    py.wait_peers(5, "py2p dropped the refused link", |p| p.is_empty()).await;
    // Same subnet name but a py2p node on it works (control).
    let py_ok = Protocol::new("elsewhere", Encryption::Plaintext);
    let rs2 = MeshSocket::builder().protocol(py_ok).spawn().await.unwrap();
    rs2.connect(py.addr.clone()).await.expect("same subnet connects");
    rs.close().await.unwrap();
    rs2.close().await.unwrap();
    py.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_exchange_across_implementations() {
    // p1 <- rs: then p2 joins through rs only and must learn p1 from rs's
    // peer list; r2 joins through p1 only and must learn rs from p1's.
    let mut p1 = Py2p::spawn(&[]).await;
    let rs = rs_node().await;
    rs.connect(p1.addr.clone()).await.unwrap();

    let mut p2 = Py2p::spawn(&[]).await;
    p2.run(json!({"cmd": "connect", "addr": rs.out_addr().to_string()})).await;
    let p1_id = p1.id.clone();
    p2.wait_peers(10, "p2 learned p1 from rs2p", |p| p.iter().any(|x| x["id"] == json!(p1_id))).await;

    let r2 = rs_node().await;
    r2.connect(p1.addr.clone()).await.unwrap();
    let rs_id = rs.id().clone();
    wait_for(10, "r2 learned rs from py2p", || async {
        r2.routing_table().await.unwrap().iter().any(|p| p.id == rs_id)
    })
    .await;
    let p2_id = PeerId::from_bytes(p2.id.clone().into_bytes());
    wait_for(10, "r2 learned p2 too", || async { r2.routing_table().await.unwrap().iter().any(|p| p.id == p2_id) })
        .await;

    // And the four of them flood as one network.
    r2.broadcast(vec![Value::from("all of us")]).await.unwrap();
    for p in [&mut p1, &mut p2] {
        let got = p.expect(10, |j| j["event"] == "message").await;
        assert_eq!(got["packets"], json!(["all of us"]));
    }
    assert_eq!(next_msg(&rs).await.packets().unwrap(), vec![Value::from("all of us")]);
    for p in [&mut p1, &mut p2] {
        assert!(p.messages(200).await.is_empty(), "delivered once");
        assert_eq!(p.status().await, json!("Nominal"));
    }
    rs.close().await.unwrap();
    r2.close().await.unwrap();
    p1.quit().await;
    p2.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_requests_are_answered_both_ways() {
    // py2p's request_peers sends '*' as a str, which py2p itself cannot
    // answer; rs2p answers it. rs2p's own request sends bin '*', which py2p
    // answers; neither breaks the link.
    let mut py = Py2p::spawn(&["--max-outgoing", "0"]).await;
    let rs = rs_node().await;
    py.run(json!({"cmd": "connect", "addr": rs.out_addr().to_string()})).await;
    py.wait_peers(10, "py2p sees rs2p", |p| p.len() == 1).await;
    let r2 = MeshSocket::builder().max_outgoing(0).spawn().await.unwrap();
    r2.connect(rs.out_addr().clone()).await.unwrap();
    wait_for(10, "rs has both", || async { rs.routing_table().await.unwrap().len() == 2 }).await;
    let r2_id = r2.id().to_string();
    assert!(py.peers().await.iter().all(|p| p["id"] != json!(r2_id)));
    // py2p can only learn r2 from rs2p's answer to its str '*' request.
    py.run(json!({"cmd": "set_max_outgoing", "n": 4})).await;
    py.run(json!({"cmd": "request_peers"})).await;
    py.wait_peers(10, "py2p dialed the peer rs2p told it about", |p| p.iter().any(|x| x["id"] == json!(r2_id))).await;

    rs.request_peers().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    rs.broadcast(vec![Value::from("still linked")]).await.unwrap();
    let got = py.expect(10, |j| j["event"] == "message").await;
    assert_eq!(got["packets"], json!(["still linked"]));
    assert_eq!(py.status().await, json!("Nominal"));
    for n in [rs, r2] {
        n.close().await.unwrap();
    }
    py.quit().await;
}
