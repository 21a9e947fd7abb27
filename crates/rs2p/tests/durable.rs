//! The durable dictionary: a node restarted from its data directory keeps
//! its entries (versions, owners, tombstones), its id, and repairs from its
//! peers what changed while it was away.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::wait_for;
use rs2p::{Fsync, SyncSocket, Value};

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rs2p-durable-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn durable(dir: &PathBuf, fsync: Fsync) -> SyncSocket {
    SyncSocket::builder()
        .leasing(false)
        .anti_entropy_interval(Duration::from_millis(200))
        .data_dir(dir)
        .fsync(fsync)
        .spawn()
        .await
        .expect("spawn")
}

/// A memory-only node on the same network as `durable`'s.
async fn plain() -> SyncSocket {
    SyncSocket::builder().leasing(false).anti_entropy_interval(Duration::from_millis(200)).spawn().await.expect("spawn")
}

async fn dump(n: &SyncSocket) -> Vec<(bytes::Bytes, Value, String, u64)> {
    let mut v: Vec<_> = n.entries().await.unwrap().into_iter().map(|(k, v, o, t)| (k, v, o.to_string(), t)).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_its_dictionary_and_its_id() {
    for fsync in [Fsync::Always, Fsync::Batch, Fsync::Never] {
        let dir = data_dir(&format!("{fsync:?}"));
        let a = durable(&dir, fsync).await;
        let id = a.id().clone();
        for i in 0..200 {
            a.set(format!("k{i}"), Value::from(i)).await.unwrap();
        }
        a.delete("k7").await.unwrap();
        a.apply_delta("map", vec![(Value::from("x"), Value::from(1))]).await.unwrap();
        a.apply_delta("map", vec![(Value::from("y"), Value::from(2))]).await.unwrap();
        let before = dump(&a).await;
        assert_eq!(before.len(), 200, "{fsync:?}: 199 keys and the map");
        a.close().await.unwrap();

        let b = durable(&dir, fsync).await;
        assert_eq!(b.id(), &id, "{fsync:?}: the id comes back with the key file");
        assert_eq!(dump(&b).await, before, "{fsync:?}: every entry, owner and time");
        assert_eq!(b.get("k7").await.unwrap(), None, "{fsync:?}: the delete too");
        let map = b.get("map").await.unwrap().unwrap();
        assert_eq!(map.as_map().unwrap().len(), 2, "{fsync:?}: both delta fields");
        b.close().await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_repairs_what_changed_while_it_was_away() {
    let dir = data_dir("away");
    let a = durable(&dir, Fsync::Batch).await;
    let b = plain().await;
    a.connect(b.out_addr().clone()).await.unwrap();
    for i in 0..100 {
        a.set(format!("k{i}"), Value::from(i)).await.unwrap();
    }
    wait_for(10, "b has a's keys", || async { b.len().await.unwrap() == 100 }).await;
    a.close().await.unwrap();
    // Meanwhile: a new key, a changed one, a deleted one.
    b.set("new", "while away").await.unwrap();
    b.set("k1", "changed").await.unwrap();
    b.delete("k2").await.unwrap();
    let a = durable(&dir, Fsync::Batch).await;
    assert_eq!(a.len().await.unwrap(), 100, "loaded from disk before any peer");
    a.connect(b.out_addr().clone()).await.unwrap();
    wait_for(10, "replicas equal", || async { dump(&a).await == dump(&b).await }).await;
    assert_eq!(a.get("new").await.unwrap(), Some(Value::from("while away")));
    assert_eq!(a.get("k1").await.unwrap(), Some(Value::from("changed")));
    assert_eq!(a.get("k2").await.unwrap(), None);
    let received = a.status().await.unwrap().sync.unwrap().stats.entries_received;
    assert!(received < 50, "repaired by anti-entropy, not a full transfer: {received} entries received");
    a.close().await.unwrap();
    b.close().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_redials_the_peers_it_had() {
    // a is dialed by b and dials nobody: after a restart, nothing but its
    // own memory of b can link it again (b has said goodbye to it).
    let dir = data_dir("redial");
    let a = durable(&dir, Fsync::Batch).await;
    let b = plain().await;
    b.connect(a.out_addr().clone()).await.unwrap();
    wait_for(10, "linked", || async { a.routing_table().await.unwrap().len() == 1 }).await;
    a.close().await.unwrap();
    b.set("while-away", 1).await.unwrap();
    let a = durable(&dir, Fsync::Batch).await;
    wait_for(10, "a redialed b on its own", || async {
        a.routing_table().await.unwrap().iter().any(|p| &p.id == b.id())
    })
    .await;
    wait_for(10, "and caught up", || async { a.get("while-away").await.unwrap().is_some() }).await;
    a.close().await.unwrap();
    b.close().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_nodes_writes_keep_their_proofs() {
    // Under leases (holdings and their start proofs are stored too).
    let leased = |dir: Option<&PathBuf>| {
        let b = SyncSocket::builder().anti_entropy_interval(Duration::from_millis(200));
        match dir {
            Some(d) => b.data_dir(d).fsync(Fsync::Batch).spawn(),
            None => b.spawn(),
        }
    };
    let dir = data_dir("proofs");
    let a = leased(Some(&dir)).await.unwrap();
    for i in 0..50 {
        a.set(format!("k{i}"), Value::from(i)).await.unwrap();
    }
    a.set("k0", "again").await.unwrap();
    a.apply_delta("map", vec![(Value::from("x"), Value::from(1)), (Value::from("y"), Value::from(2))]).await.unwrap();
    a.close().await.unwrap();
    let a = leased(Some(&dir)).await.unwrap();
    // c links to a only: a proves its id on the link, so c knows a as a
    // writer that proves its writes, and takes a's stored records only
    // with their proofs.
    let c = leased(None).await.unwrap();
    c.connect(a.out_addr().clone()).await.unwrap();
    wait_for(10, "c repaired from a's store", || async { dump(&c).await == dump(&a).await }).await;
    assert_eq!(c.len().await.unwrap(), 51);
    assert_eq!(c.status().await.unwrap().sync.unwrap().stats.forged_writes, 0);
    a.close().await.unwrap();
    c.close().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
