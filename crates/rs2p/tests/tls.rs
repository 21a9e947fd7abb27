//! TLS (py2p's "SSL" mode): rs2p with rs2p, with real py2p SSL nodes, a
//! plaintext/TLS mismatch refused with a clear reason, and the verification
//! options beyond py2p.

mod common;

use std::time::Duration;

use common::{next_msg, wait_for, Py2p};
use rs2p::proto::wire::DecodeError;
use rs2p::{CloseReason, Encryption, Error, Event, MeshSocket, TlsConfig, TlsFailure, Value};
use serde_json::json;

async fn tls_node() -> MeshSocket {
    MeshSocket::builder().tls(TlsConfig::new()).spawn().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs2p_nodes_talk_over_tls() {
    let a = tls_node().await;
    let b = tls_node().await;
    assert_eq!(a.protocol().encryption, Encryption::Ssl);
    assert!(a.tls_fingerprint().is_some());
    b.connect(a.out_addr().clone()).await.unwrap();
    // `connect` returns once b has a's handshake; a may still be reading
    // b's, and a broadcast before that reaches nobody.
    wait_for(10, "a sees b", || async { a.routing_table().await.unwrap().len() == 1 }).await;
    a.broadcast(vec![Value::from("over tls"), Value::Binary(vec![0; 20_000])]).await.unwrap();
    let m = next_msg(&b).await;
    assert_eq!(m.packets().unwrap()[0], Value::from("over tls"));
    b.whisper(a.id(), vec![Value::from("back")]).await.unwrap();
    assert_eq!(next_msg(&a).await.packets().unwrap(), vec![Value::from("back")]);
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_with_py2p_ssl_nodes_both_ways() {
    let mut py = Py2p::spawn(&["--ssl"]).await;
    // rs2p dials py2p.
    let rs = tls_node().await;
    rs.connect(py.addr.clone()).await.expect("TLS to py2p");
    py.wait_peers(10, "py2p sees rs2p", |p| p.len() == 1).await;
    py.run(json!({"cmd": "broadcast", "packets": ["from py over ssl", {"$bytes": "AQI="}]})).await;
    let m = next_msg(&rs).await;
    assert_eq!(m.packets().unwrap(), vec![Value::from("from py over ssl"), Value::Binary(vec![1, 2])]);
    rs.broadcast(vec![Value::from("from rs over tls")]).await.unwrap();
    let got = py.expect(10, |j| j["event"] == "message").await;
    assert_eq!(got["packets"], json!(["from rs over tls"]));

    // py2p dials rs2p.
    let rs2 = tls_node().await;
    py.run(json!({"cmd": "connect", "addr": rs2.out_addr().to_string()})).await;
    // rs2 may also link to rs, which it learns of from py2p's peer list:
    // wait for py2p itself.
    let py_id = py.id.clone();
    wait_for(10, "rs2 sees py2p", || async {
        rs2.routing_table().await.unwrap().iter().any(|p| p.id.to_string() == py_id)
    })
    .await;
    py.wait_peers(10, "py2p sees rs2", |p| p.len() == 2).await;
    py.run(json!({"cmd": "broadcast", "packets": ["to both"]})).await;
    assert_eq!(next_msg(&rs2).await.packets().unwrap(), vec![Value::from("to both")]);
    rs2.broadcast(vec![Value::from("from rs2")]).await.unwrap();
    let got = py.expect(10, |j| j["event"] == "message" && j["packets"] == json!(["from rs2"])).await;
    assert_eq!(got["sender"], json!(rs2.id().to_string()));
    assert_eq!(py.status().await, json!("Nominal"));
    for n in [rs, rs2] {
        n.close().await.unwrap();
    }
    py.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_tls_refuse_each_other_with_a_reason() {
    let plain = MeshSocket::builder().spawn().await.unwrap();
    let tls = tls_node().await;
    let mut plain_events = plain.events();
    let mut tls_events = tls.events();

    // Plaintext dials TLS.
    let err = plain.connect(tls.out_addr().clone()).await.unwrap_err().to_string();
    assert!(err.contains("TLS") || err.contains("SSL"), "plaintext side: {err}");
    let reason = next_failure(&mut tls_events).await;
    assert_eq!(reason, CloseReason::Tls(TlsFailure::NotTls), "TLS side");

    // TLS dials plaintext.
    let err = tls.connect(plain.out_addr().clone()).await.unwrap_err().to_string();
    assert!(err.contains("TLS"), "TLS side: {err}");
    let reason = next_failure(&mut plain_events).await;
    assert_eq!(reason, CloseReason::Decode(DecodeError::LooksLikeTls), "plaintext side");

    assert!(plain.routing_table().await.unwrap().is_empty());
    assert!(tls.routing_table().await.unwrap().is_empty());

    // And a py2p SSL node refuses a plaintext rs2p node too.
    let py = Py2p::spawn(&["--ssl"]).await;
    assert!(plain.connect(py.addr.clone()).await.is_err());
    py.quit().await;
    plain.close().await.unwrap();
    tls.close().await.unwrap();
}

async fn next_failure(events: &mut rs2p::EventStream) -> CloseReason {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(Event::ConnectFailed { reason, .. }) = events.recv().await {
                return reason;
            }
        }
    })
    .await
    .expect("a failure event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_certificates() {
    // Two nodes with certificates of their own, each pinning the other.
    let ck_a = rcgen::generate_simple_self_signed(vec!["a".into()]).unwrap();
    let ck_b = rcgen::generate_simple_self_signed(vec!["b".into()]).unwrap();
    let id = |ck: &rcgen::CertifiedKey<rcgen::KeyPair>| {
        (vec![ck.cert.der().clone()], rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into()))
    };
    let fp_a = rs2p::tls::fingerprint(ck_a.cert.der());
    let fp_b = rs2p::tls::fingerprint(ck_b.cert.der());
    let (ca, ka) = id(&ck_a);
    let (cb, kb) = id(&ck_b);
    let a = MeshSocket::builder().tls(TlsConfig::new().identity(ca, ka).pin(vec![fp_b])).spawn().await.unwrap();
    let b = MeshSocket::builder().tls(TlsConfig::new().identity(cb, kb).pin(vec![fp_a])).spawn().await.unwrap();
    assert_eq!(a.tls_fingerprint(), Some(fp_a));
    b.connect(a.out_addr().clone()).await.expect("pinned peers connect");
    // `connect` returns once b has a's handshake; a may still be reading
    // b's, and a broadcast before that reaches nobody.
    wait_for(10, "a sees b", || async { a.routing_table().await.unwrap().len() == 1 }).await;
    a.broadcast(vec![Value::from("pinned")]).await.unwrap();
    assert_eq!(next_msg(&b).await.packets().unwrap(), vec![Value::from("pinned")]);

    // A stranger with an unpinned certificate is refused both ways.
    let stranger = MeshSocket::builder().tls(TlsConfig::new().pin(vec![fp_a])).spawn().await.unwrap();
    let err = stranger.connect(a.out_addr().clone()).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    let err = a.connect(stranger.out_addr().clone()).await.unwrap_err().to_string();
    assert!(err.contains("not pinned") || err.contains("TLS"), "{err}");
    for n in [a, b, stranger] {
        n.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_verification() {
    // A CA issues certificates for 127.0.0.1 to two nodes.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let issue = || {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        (vec![cert.der().clone()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
    };
    let roots = vec![ca_cert.der().clone()];
    let (c1, k1) = issue();
    let (c2, k2) = issue();
    let a =
        MeshSocket::builder().tls(TlsConfig::new().identity(c1, k1).verify_ca(roots.clone())).spawn().await.unwrap();
    let b =
        MeshSocket::builder().tls(TlsConfig::new().identity(c2, k2).verify_ca(roots.clone())).spawn().await.unwrap();
    b.connect(a.out_addr().clone()).await.expect("CA-verified peers connect");
    // `connect` returns once b has a's handshake; a may still be reading
    // b's, and a broadcast before that reaches nobody.
    wait_for(10, "a sees b", || async { a.routing_table().await.unwrap().len() == 1 }).await;
    // A self-signed node is refused.
    let rogue = MeshSocket::builder().tls(TlsConfig::new().verify_ca(roots)).spawn().await.unwrap();
    assert!(rogue.connect(a.out_addr().clone()).await.is_err());
    assert!(a.connect(rogue.out_addr().clone()).await.is_err());
    for n in [a, b, rogue] {
        n.close().await.unwrap();
    }
}
