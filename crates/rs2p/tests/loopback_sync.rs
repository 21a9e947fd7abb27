//! SyncSocket over real loopback connections, rs2p only.

mod common;

use std::time::Duration;

use common::wait_for;
use rs2p::{Error, Event, SyncSocket, Value};

async fn sync_node(leasing: bool) -> SyncSocket {
    SyncSocket::builder()
        .leasing(leasing)
        .anti_entropy_interval(Duration::from_millis(300))
        .spawn()
        .await
        .expect("spawn")
}

async fn dump(n: &SyncSocket) -> Vec<(bytes::Bytes, Value)> {
    let mut v = n.items().await.unwrap();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dictionary_api_and_events() {
    let a = sync_node(true).await;
    let b = sync_node(true).await;
    b.connect(a.out_addr().clone()).await.unwrap();
    let mut events = b.events();
    a.set("str", "value").await.unwrap();
    a.set(b"bin".as_slice(), Value::Binary(vec![1, 2])).await.unwrap();
    a.update([("n", Value::from(1)), ("f", Value::F64(2.5))]).await.unwrap();
    a.apply_delta("map", vec![(Value::from("x"), Value::from(1))]).await.unwrap();
    wait_for(5, "b has 5 keys", || async { b.len().await.unwrap() == 5 }).await;
    assert_eq!(b.get("str").await.unwrap(), Some(Value::from("value")));
    assert_eq!(b.index("n").await.unwrap(), Value::from(1));
    assert!(matches!(b.index("missing").await, Err(Error::KeyNotFound)));
    assert_eq!(b.get_or("missing", Value::from("dflt")).await.unwrap(), Value::from("dflt"));
    let (_, owner, ts) = b.get_with_meta("str").await.unwrap().unwrap();
    assert_eq!(&owner, a.id());
    assert!(ts > 1_600_000_000);
    // Lease: b cannot overwrite a's key (a second later: within a's second,
    // py2p's tie rule lets the node with the smaller id take it).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    match b.set("str", "mine").await {
        Err(Error::Leased { owner, until }) => {
            assert_eq!(&owner, a.id());
            assert!(until >= ts + 3600);
        }
        other => panic!("expected a lease refusal, got {other:?}"),
    }
    assert!(matches!(a.apply_delta("str", vec![]).await, Err(Error::NotAMap)));
    // Events arrived for each key.
    let mut updates = 0;
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(200), events.recv()).await {
        if matches!(e, Event::Update { .. }) {
            updates += 1;
        }
    }
    assert_eq!(updates, 5);
    // pop, popitem, delete, on a's keys.
    assert_eq!(a.pop("n").await.unwrap(), Value::from(1));
    assert_eq!(a.pop_or("n", Value::Nil).await.unwrap(), Value::Nil);
    assert!(matches!(a.pop("n").await, Err(Error::KeyNotFound)));
    a.delete("f").await.unwrap();
    assert!(matches!(a.delete("f").await, Err(Error::KeyNotFound)));
    let (k, _) = a.popitem().await.unwrap();
    assert!(a.get(&k).await.unwrap().is_none());
    wait_for(5, "b sees the deletes", || async { b.len().await.unwrap() == 2 }).await;
    assert_eq!(dump(&a).await, dump(&b).await);
    assert_eq!(a.keys().await.unwrap().len(), 2);
    assert_eq!(a.values().await.unwrap().len(), 2);
    assert_eq!(a.copy().await.unwrap().len(), 2);
    let mut saw_delete = false;
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(200), events.recv()).await {
        saw_delete |= matches!(e, Event::Delete { .. });
    }
    assert!(saw_delete);
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_nodes_converge_after_one_is_cut_off_and_rejoins() {
    let mut nodes: Vec<SyncSocket> = Vec::new();
    for i in 0..10 {
        // Node 9, the one cut off later, dials only when told to and gives
        // the others an address where nothing listens (127.0.0.1:1): once
        // its links are cut, nothing re-links it before the heal (the
        // others, short of outgoing links, would otherwise redial it from
        // the peer lists they got, and it them).
        let n = if i == 9 {
            SyncSocket::builder()
                .leasing(false)
                .anti_entropy_interval(Duration::from_millis(300))
                .mesh(|m| m.max_outgoing(0).out_addr(rs2p::PeerAddr::new("127.0.0.1", 1)))
                .spawn()
                .await
                .expect("spawn")
        } else {
            sync_node(false).await
        };
        if i > 0 {
            n.connect(nodes[i / 2].out_addr().clone()).await.unwrap();
        }
        nodes.push(n);
    }
    // Writes from every node, some to shared keys (no leasing: last wins).
    for (i, n) in nodes.iter().enumerate() {
        for j in 0..20 {
            n.set(format!("own-{i}-{j}"), Value::from(j)).await.unwrap();
        }
        n.set("shared", Value::from(i)).await.unwrap();
        n.apply_delta("tally", vec![(Value::from(format!("n{i}")), Value::from(i))]).await.unwrap();
    }
    let converged = |nodes: &[SyncSocket]| {
        let nodes = nodes.to_vec();
        async move {
            let first = dump(&nodes[0]).await;
            for n in &nodes[1..] {
                if dump(n).await != first {
                    return false;
                }
            }
            true
        }
    };
    wait_for(20, "all replicas equal", || converged(&nodes)).await;
    assert_eq!(nodes[0].len().await.unwrap(), 10 * 20 + 2);
    let tally = nodes[0].get("tally").await.unwrap().unwrap();
    assert_eq!(tally.as_map().unwrap().len(), 10, "every node's delta field survived");

    // Cut node 9 off: every link to it is closed, and it stays apart (see
    // its settings above; cut again if a link was in the making).
    let loner = nodes.pop().unwrap();
    let cut = || async {
        for n in &nodes {
            for p in n.routing_table().await.unwrap() {
                if &p.id == loner.id() {
                    let _ = n.disconnect(&p.id).await;
                }
            }
        }
        for p in loner.routing_table().await.unwrap() {
            let _ = loner.disconnect(&p.id).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        loner.routing_table().await.unwrap().is_empty()
    };
    wait_for(10, "loner alone", cut).await;
    // While apart: both sides write and delete.
    nodes[0].set("while-apart", "network side").await.unwrap();
    nodes[3].delete("own-3-0").await.unwrap();
    loner.set("loner-key", "loner side").await.unwrap();
    loner.delete("own-9-1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Heal: the loner dials back in; anti-entropy repairs both sides.
    loner.connect(nodes[0].out_addr().clone()).await.unwrap();
    nodes.push(loner);
    wait_for(20, "replicas equal after the heal", || converged(&nodes)).await;
    for n in &nodes {
        assert_eq!(n.get("while-apart").await.unwrap(), Some(Value::from("network side")));
        assert_eq!(n.get("loner-key").await.unwrap(), Some(Value::from("loner side")));
        assert_eq!(n.get("own-3-0").await.unwrap(), None, "delete kept, not resurrected");
        assert_eq!(n.get("own-9-1").await.unwrap(), None);
    }
    for n in nodes {
        n.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_receives_the_whole_state() {
    let a = sync_node(true).await;
    let pairs: Vec<(String, Value)> = (0..2000).map(|i| (format!("k{i}"), Value::from(i))).collect();
    a.update(pairs).await.unwrap();
    let b = sync_node(true).await;
    b.connect(a.out_addr().clone()).await.unwrap();
    wait_for(10, "b has every key", || async { b.len().await.unwrap() == 2000 }).await;
    assert_eq!(dump(&a).await, dump(&b).await);
    // Owners are kept.
    let (_, owner, _) = b.get_with_meta("k7").await.unwrap().unwrap();
    assert_eq!(&owner, a.id());
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test]
async fn oversized_writes_are_refused_before_applying() {
    let limits = rs2p::Limits { max_frame_len: 64 * 1024, ..rs2p::Limits::default() };
    let a = SyncSocket::builder().mesh(|m| m.limits(limits)).spawn().await.unwrap();
    let big = Value::Binary(vec![0; 100_000]);
    assert!(matches!(a.set("big", big.clone()).await, Err(Error::MessageTooLarge { .. })));
    assert_eq!(a.get("big").await.unwrap(), None, "nothing applied");
    assert!(matches!(a.apply_delta("m", vec![(Value::from("f"), big)]).await, Err(Error::MessageTooLarge { .. })));
    assert_eq!(a.len().await.unwrap(), 0);
    a.set("small", Value::Binary(vec![0; 1000])).await.unwrap();
    assert_eq!(a.len().await.unwrap(), 1);
    a.close().await.unwrap();
}
