//! Ids that must be proven, on live nodes: private networks keep strangers,
//! impostors and py2p peers out; `connect_expecting` refuses a peer that
//! is not the one asked for or cannot prove it, over plaintext and TLS.
//! Impostors are raw sockets speaking py2p's wire format.

mod common;

use std::time::Duration;

use common::{wait_for, Py2p};
use rs2p::proto::id::PeerId;
use rs2p::proto::identity::Identity;
use rs2p::proto::mesh::AuthFailure;
use rs2p::proto::wire::message::MeshMessage;
use rs2p::proto::wire::{capability, Compression, Frame, MsgType, SubFlag};
use rs2p::{CloseReason, Error, MeshSocket, TlsConfig, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A handshake claiming `id` on `protocol_id`'s network, advertising AUTH
/// if `auth`.
fn handshake(id: &PeerId, protocol_id: &[u8], auth: bool) -> Frame {
    let mut methods = vec![Value::from(Compression::Zlib.code()), Value::from(capability::RS2P)];
    if auth {
        methods.push(Value::from(capability::AUTH));
    }
    Frame::build(
        MsgType::Whisper,
        id,
        now(),
        SubFlag::Handshake,
        &[
            Value::Binary(id.as_bytes().to_vec()),
            Value::Binary(protocol_id.to_vec()),
            Value::Array(vec![Value::from("127.0.0.1"), Value::from(1)]),
            Value::Array(methods),
        ],
    )
}

/// A proof that proves nothing: a made-up key and signature.
fn garbage_proof(id: &PeerId) -> Frame {
    MeshMessage::AuthProof { key: [7; 32], signature: [9; 64] }.encode(id, now())
}

/// An intruder dialing `victim` and claiming `id`: with `auth` it
/// advertises AUTH and answers the challenge with a made-up proof.
/// Returns once the victim closed the connection.
async fn intrude(victim: &MeshSocket, id: &PeerId, auth: bool) {
    let mut s = TcpStream::connect(victim.out_addr().to_string()).await.unwrap();
    s.write_all(handshake(id, victim.protocol().id().as_bytes(), auth).wire_bytes()).await.unwrap();
    if auth {
        s.write_all(garbage_proof(id).wire_bytes()).await.unwrap();
    }
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => panic!("the victim kept the intruder claiming {id} connected"),
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
        }
    }
}

/// A listener that answers every connection as `id` would, without its key.
async fn impostor(id: PeerId, protocol_id: Vec<u8>, auth: bool) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.write_all(handshake(&id, &protocol_id, auth).wire_bytes()).await;
            if auth {
                let _ = s.write_all(garbage_proof(&id).wire_bytes()).await;
            }
            // Keep the socket open, reading, until the dialer gives up.
            let mut buf = vec![0u8; 4096];
            while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
        }
    });
    addr
}

async fn refused_ids(n: &MeshSocket) -> u64 {
    n.status().await.unwrap().stats.refused_ids
}

async fn talks(from: &MeshSocket, to: &MeshSocket, text: &str) {
    from.broadcast(vec![Value::from(text)]).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = tokio::time::timeout_at(deadline, to.next_message()).await.expect("message in time").unwrap();
        if m.packets().unwrap() == vec![Value::from(text)] {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_network_keeps_strangers_impostors_and_py2p_out() {
    let (ka, kb) = (Identity::from_secret([11; 32]), Identity::from_secret([12; 32]));
    let members = [ka.id(), kb.id()];
    let member = |k: &Identity| MeshSocket::builder().identity(k.clone()).allow(members.clone()).spawn();
    let a = member(&ka).await.unwrap();
    let b = member(&kb).await.unwrap();
    assert_eq!(b.connect(a.out_addr().clone()).await.unwrap(), ka.id());
    talks(&a, &b, "members talk").await;

    // A stranger with a key of its own: refused.
    let stranger = MeshSocket::builder().spawn().await.unwrap();
    let _ = stranger.connect(a.out_addr().clone()).await;
    wait_for(5, "the stranger refused", || async { refused_ids(&a).await >= 1 }).await;
    assert!(stranger.routing_table().await.unwrap().is_empty());

    // An intruder claiming b's id, with a made-up proof, and without one.
    intrude(&a, &kb.id(), true).await;
    intrude(&a, &kb.id(), false).await;
    wait_for(5, "both intruders refused", || async { refused_ids(&a).await >= 3 }).await;
    let errors = a.status().await.unwrap().recent_errors.join("\n");
    assert!(errors.contains("failed to prove"), "the impostor is logged: {errors}");

    // A real py2p peer cannot prove an id: refused too.
    let mut p = Py2p::spawn(&[]).await;
    p.cmd(serde_json::json!({"cmd": "connect", "addr": a.out_addr().to_string()})).await;
    wait_for(10, "the py2p peer refused", || async { refused_ids(&a).await >= 4 }).await;
    assert_eq!(a.routing_table().await.unwrap().len(), 1, "only b is linked");

    // The members still talk, both ways.
    talks(&b, &a, "still talking").await;
    p.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_expecting_refuses_the_wrong_peer_and_impostors() {
    for tls in [false, true] {
        let node = || async {
            let b = MeshSocket::builder();
            if tls { b.tls(TlsConfig::new()) } else { b }.spawn().await.unwrap()
        };
        let (a, b, c) = (node().await, node().await, node().await);
        // The right peer, proven.
        assert_eq!(c.connect_expecting(a.out_addr().clone(), a.id().clone()).await.unwrap(), *a.id());
        // Another node where a was expected.
        match c.connect_expecting(b.out_addr().clone(), a.id().clone()).await {
            Err(Error::Connect { reason: CloseReason::Auth(AuthFailure::WrongPeer { expected, claimed }), .. }) => {
                assert_eq!((expected, claimed), (a.id().clone(), b.id().clone()));
            }
            other => panic!("tls {tls}: expected a wrong-peer refusal, got {other:?}"),
        }
        if !tls {
            // Listeners claiming a's id: without a proof, and with a made-up
            // one.
            let pid = c.protocol().id().as_bytes().to_vec();
            for (auth, what) in [(false, "unproven"), (true, "bad proof")] {
                let addr = impostor(a.id().clone(), pid.clone(), auth).await;
                let result = c.connect_expecting(addr.parse().unwrap(), a.id().clone()).await;
                let ok = match &result {
                    Err(Error::Connect { reason: CloseReason::Auth(AuthFailure::Unproven { claimed }), .. }) => {
                        !auth && claimed == a.id()
                    }
                    Err(Error::Connect {
                        reason: CloseReason::Auth(AuthFailure::BadProof { claimed, .. }), ..
                    }) => auth && claimed == a.id(),
                    _ => false,
                };
                assert!(ok, "{what}: got {result:?}");
            }
        }
        // A plain connect still links whoever is there.
        b.connect(a.out_addr().clone()).await.unwrap();
    }
}
