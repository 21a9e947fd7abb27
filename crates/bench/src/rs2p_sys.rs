//! The workloads on rs2p itself (nodes in one process).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rs2p::{MeshSocket, PeerId, SyncSocket, Value};
use serde_json::{json, Value as Json};

/// Whether nodes sign their broadcasts: on, unless `RS2P_SIGN=0` (how
/// `scripts/bench-signing.sh` measures what signing costs).
fn signing() -> bool {
    std::env::var("RS2P_SIGN").map_or(true, |v| v != "0")
}

/// A chain: node i dials node i+1; nobody dials anybody else.
async fn chain(n: usize) -> Result<Vec<MeshSocket>> {
    let mut nodes = Vec::with_capacity(n);
    for _ in 0..n {
        nodes.push(
            MeshSocket::builder().max_outgoing(0).maintain_outgoing(false).sign_broadcasts(signing()).spawn().await?,
        );
    }
    for i in 0..n - 1 {
        nodes[i].connect(nodes[i + 1].out_addr().clone()).await?;
    }
    for (i, node) in nodes.iter().enumerate() {
        let want = if i == 0 || i == n - 1 { 1 } else { 2 };
        let deadline = Instant::now() + Duration::from_secs(10);
        while node.routing_table().await?.len() < want {
            if Instant::now() > deadline {
                bail!("chain did not form");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(nodes)
}

/// Counts messages on every node (an application that consumes them).
fn drain(nodes: &[MeshSocket]) -> Vec<Arc<AtomicU64>> {
    nodes
        .iter()
        .map(|n| {
            let c = Arc::new(AtomicU64::new(0));
            let (n, c2) = (n.clone(), c.clone());
            tokio::spawn(async move {
                loop {
                    let got = n.recv(4096).len() as u64;
                    if got == 0 {
                        match n.next_message().await {
                            Some(_) => {
                                c2.fetch_add(1, Ordering::Relaxed);
                            }
                            None => return,
                        }
                    } else {
                        c2.fetch_add(got, Ordering::Relaxed);
                    }
                }
            });
            c
        })
        .collect()
}

/// Workload 1: one sender, a chain of `n`, `count` messages of `size` bytes;
/// messages per second delivered at the farthest node, and losses.
pub async fn throughput(n: usize, count: usize, size: usize) -> Result<Json> {
    let nodes = chain(n).await?;
    let counters = drain(&nodes);
    let far = counters[n - 1].clone();
    let payload = Value::Binary(vec![0xAB; size]);
    let start = Instant::now();
    // Batches of broadcasts per command: what a producer with many messages
    // does; the node still frames, hashes and floods each one.
    let batch = 256;
    let mut sent = 0;
    while sent < count {
        let k = batch.min(count - sent);
        // A sequence number makes each message distinct (equal payloads in
        // the same second are the same message, and are deduplicated).
        nodes[0]
            .broadcast_many((sent..sent + k).map(|i| vec![Value::from(i as u64), payload.clone()]).collect())
            .await?;
        sent += k;
    }
    let (last, secs) = crate::await_arrivals(&far, count, start).await;
    let mut unresponsive = 0;
    for node in &nodes {
        unresponsive += node.status().await?.stats.unresponsive;
        node.close().await.ok();
    }
    Ok(json!({"rate": last as f64 / secs, "lost": count as u64 - last, "secs": secs, "unresponsive": unresponsive}))
}

/// Workload 2: one message at a time through a chain of `n`; publish to
/// delivery at every node, and at the farthest.
pub async fn latency(n: usize, messages: usize) -> Result<Json> {
    let nodes = chain(n).await?;
    let mut all = Vec::new();
    let mut far = Vec::new();
    for k in 0..messages {
        let start = Instant::now();
        nodes[0].broadcast(vec![Value::from(k as u64)]).await?;
        // Wait on every receiver concurrently, timing each arrival.
        let waits = nodes[1..].iter().map(|node| {
            let node = node.clone();
            async move {
                let m = tokio::time::timeout(Duration::from_secs(5), node.next_message()).await;
                (m.is_ok(), start.elapsed())
            }
        });
        let results = futures_join(waits).await;
        for (i, (ok, d)) in results.into_iter().enumerate() {
            if !ok {
                bail!("message {k} lost");
            }
            let us = d.as_secs_f64() * 1e6;
            all.push(us);
            if i == n - 2 {
                far.push(us);
            }
        }
    }
    for node in &nodes {
        node.close().await.ok();
    }
    Ok(json!({"far_p50_us": pct(&mut far, 0.5), "far_p99_us": pct(&mut far, 0.99),
              "all_p50_us": pct(&mut all, 0.5), "all_p99_us": pct(&mut all, 0.99)}))
}

async fn futures_join<F: std::future::Future + Send + 'static>(fs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("join"));
    }
    out
}

pub fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// `n` nodes that all join at the same moment through a random earlier
/// node; returns them once the graph is connected and every node has its
/// outgoing target (or knows everyone), with the time that took (`None`:
/// not within `timeout`).
async fn form(
    n: usize,
    broadcast: rs2p::Broadcast,
    tree: rs2p::TreeConfig,
    timeout: Duration,
) -> Result<(Vec<MeshSocket>, Option<Duration>)> {
    let mut nodes = Vec::with_capacity(n);
    for _ in 0..n {
        nodes.push(
            MeshSocket::builder()
                .max_connections(4096)
                .max_pending_handshakes(4096)
                .broadcast(broadcast)
                .tree(tree)
                .sign_broadcasts(signing())
                .spawn()
                .await?,
        );
    }
    let index: HashMap<PeerId, usize> = nodes.iter().enumerate().map(|(i, s)| (s.id().clone(), i)).collect();
    let mut seed = 0x9e37_79b9_u64 ^ n as u64;
    let start = Instant::now();
    let mut joins = Vec::new();
    for i in 1..n {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let target = nodes[(seed >> 33) as usize % i].out_addr().clone();
        let node = nodes[i].clone();
        joins.push(tokio::spawn(async move { node.connect(target).await }));
    }
    for j in joins {
        let _ = j.await?;
    }
    let mut formed = None;
    while start.elapsed() < timeout {
        let mut adj = vec![Vec::new(); n];
        let mut at_target = true;
        for (i, node) in nodes.iter().enumerate() {
            let peers = node.routing_table().await?;
            at_target &= peers.iter().filter(|p| p.outgoing).count() >= 4.min(n - 1) || peers.len() == n - 1;
            adj[i] = peers.iter().filter_map(|p| index.get(&p.id).copied()).collect();
        }
        if at_target && connected(&adj) {
            formed = Some(start.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok((nodes, formed))
}

/// Workload 3 and 4: formation (see [`form`]); then one broadcast, time
/// until every node has it.
pub async fn formation(n: usize, timeout: Duration, broadcast: bool) -> Result<Json> {
    let (nodes, formed) = form(n, rs2p::Broadcast::Tree, rs2p::TreeConfig::default(), timeout).await?;
    let mut out = json!({"formed_ms": formed.map(|d| d.as_secs_f64() * 1e3), "nodes": n});
    if broadcast && formed.is_some() {
        let counters = drain(&nodes);
        let t = Instant::now();
        nodes[0].broadcast(vec![Value::from("scale")]).await?;
        let mut reached = None;
        while t.elapsed() < Duration::from_secs(30) {
            if counters[1..].iter().all(|c| c.load(Ordering::Relaxed) >= 1) {
                reached = Some(t.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        let got = counters[1..].iter().filter(|c| c.load(Ordering::Relaxed) >= 1).count();
        out["broadcast_ms"] = json!(reached.map(|d| d.as_secs_f64() * 1e3));
        out["reached"] = json!(got);
    }
    for node in &nodes {
        node.close().await.ok();
    }
    Ok(out)
}

/// Workload 7: broadcast in a random mesh of `n` (formed as in [`form`]):
/// `senders` nodes each broadcast `count` messages of `size` bytes, in
/// batches of 256 (`pace_ms` = 0) or one every `pace_ms`; deliveries per
/// second over the whole mesh until every node has every message, losses,
/// and the redundancy (copies suppressed per delivery). `variant`: "tree"
/// (the default), "flood" (py2p's flood between the rs2p nodes) or
/// "ahead" (the tree with announcements ahead of payload).
pub async fn mesh_broadcast(
    n: usize,
    senders: usize,
    count: usize,
    size: usize,
    pace_ms: u64,
    variant: &str,
) -> Result<Json> {
    let (strategy, tree) = match variant {
        "tree" => (rs2p::Broadcast::Tree, rs2p::TreeConfig::default()),
        "flood" => (rs2p::Broadcast::Flood, rs2p::TreeConfig::default()),
        "ahead" => (rs2p::Broadcast::Tree, rs2p::TreeConfig { announce_ahead: true, ..Default::default() }),
        other => bail!("unknown variant {other}"),
    };
    let (nodes, formed) = form(n, strategy, tree, Duration::from_secs(30)).await?;
    if formed.is_none() {
        bail!("the mesh did not form");
    }
    let counters = drain(&nodes);
    let senders = senders.clamp(1, n);
    let payload = Value::Binary(vec![0xAB; size]);
    // Warm-up: the tree prunes its redundant links on the first messages.
    for w in 0..20u64 {
        for node in nodes.iter().take(senders) {
            node.broadcast(vec![Value::from("warm-up"), Value::from(w)]).await?;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total = |cs: &[Arc<AtomicU64>]| cs.iter().map(|c| c.load(Ordering::Relaxed)).sum::<u64>();
    let base = total(&counters);
    let mut dups_before = 0;
    for node in &nodes {
        dups_before += node.status().await?.duplicates;
    }
    let expected = (senders * count * (n - 1)) as u64;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (s, node) in nodes.iter().take(senders).enumerate() {
        let (node, payload) = (node.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            let msg = |i: usize| vec![Value::from(s as u64), Value::from(i as u64), payload.clone()];
            let mut sent = 0;
            while sent < count {
                if pace_ms > 0 {
                    node.broadcast(msg(sent)).await?;
                    sent += 1;
                    tokio::time::sleep(Duration::from_millis(pace_ms)).await;
                } else {
                    let k = 256.min(count - sent);
                    node.broadcast_many((sent..sent + k).map(msg).collect()).await?;
                    sent += k;
                }
            }
            Ok::<_, rs2p::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    // Until everything arrived or nothing moved for 5 s.
    let (mut last, mut last_change) = (0, Instant::now());
    loop {
        let got = total(&counters) - base;
        if got != last {
            (last, last_change) = (got, Instant::now());
        }
        if got >= expected || last_change.elapsed() > Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let secs = last_change.duration_since(start).as_secs_f64();
    let (mut dups, mut dropped, mut dropped_control, mut grafts, mut unresponsive) = (0, 0, 0, 0, 0);
    let (mut ignored, mut given_up, mut unserved, mut postponed, mut wants) = (0, 0, 0, 0, 0);
    for node in &nodes {
        let st = node.status().await?;
        dups += st.duplicates;
        dropped += st.dropped_frames;
        dropped_control += st.dropped_control;
        unresponsive += st.stats.unresponsive;
        if let Some(t) = st.tree {
            grafts += t.grafts;
            wants += t.wants;
            ignored += t.ignored;
            given_up += t.given_up;
            unserved += t.unserved;
            postponed += t.postponed;
        }
    }
    for node in &nodes {
        node.close().await.ok();
    }
    Ok(json!({
        "rate": last as f64 / secs,
        "lost": expected.saturating_sub(last),
        "rmr": (dups - dups_before) as f64 / last.max(1) as f64,
        "dropped_frames": dropped,
        "dropped_control": dropped_control,
        "unresponsive": unresponsive,
        "grafts": grafts,
        "tree_wants": wants,
        "tree_ignored": ignored,
        "tree_given_up": given_up,
        "tree_unserved": unserved,
        "tree_postponed": postponed,
        "secs": secs,
    }))
}

fn connected(adj: &[Vec<usize>]) -> bool {
    let mut seen = vec![false; adj.len()];
    let mut stack = vec![0];
    seen[0] = true;
    while let Some(i) = stack.pop() {
        for &j in &adj[i] {
            if !seen[j] {
                seen[j] = true;
                stack.push(j);
            }
        }
    }
    seen.iter().all(|&s| s)
}

/// Workload 5: RSS per idle node (with its connections), one and 100.
pub async fn idle_memory(n: usize) -> Result<Json> {
    let before = crate::rss_kib();
    let mut nodes: Vec<MeshSocket> = Vec::with_capacity(n);
    for i in 0..n {
        let s = MeshSocket::builder().spawn().await?;
        if i > 0 {
            s.connect(nodes[i / 2].out_addr().clone()).await?;
        }
        nodes.push(s);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut conns = 0;
    for node in &nodes {
        conns += node.routing_table().await?.len();
    }
    let after = crate::rss_kib();
    for node in &nodes {
        node.close().await.ok();
    }
    Ok(
        json!({"kib_per_node": (after.saturating_sub(before)) as f64 / n as f64, "links_per_node": conns as f64 / n as f64}),
    )
}

/// A fresh data directory for a benchmark node (removed by the caller).
fn bench_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rs2p-bench-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The durability of a sync benchmark node: `memory` (no data directory)
/// or one of the `--fsync` policies.
fn durability(b: rs2p::SyncBuilder, policy: &str, tag: &str) -> Result<rs2p::SyncBuilder> {
    Ok(match policy {
        "memory" => b,
        p => b.data_dir(bench_dir(tag)).fsync(p.parse().map_err(anyhow::Error::msg)?),
    })
}

/// Workload 6a: `keys` keys written on one end of a chain of `n` sync
/// nodes; time until every node holds them all. `policy`: `memory`, or
/// every node with a data directory under that `--fsync` policy. `leased`:
/// with py2p's leases on (every entry then keeps its holdings).
pub async fn sync_chain(n: usize, keys: usize, policy: &str, leased: bool) -> Result<Json> {
    let mut nodes: Vec<SyncSocket> = Vec::with_capacity(n);
    for i in 0..n {
        let b = SyncSocket::builder()
            .leasing(leased)
            .mesh(|m| m.max_outgoing(0).maintain_outgoing(false).sign_broadcasts(signing()));
        nodes.push(durability(b, policy, &format!("chain{i}"))?.spawn().await?);
    }
    for i in 0..n - 1 {
        nodes[i].connect(nodes[i + 1].out_addr().clone()).await?;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    let batch = 1000;
    for b in (0..keys).step_by(batch) {
        let pairs: Vec<(String, Value)> =
            (b..(b + batch).min(keys)).map(|k| (format!("key-{k}"), Value::from(k as u64))).collect();
        nodes[0].update(pairs).await?;
    }
    let done = wait_all(&nodes, keys, start, Duration::from_secs(60)).await?;
    for node in &nodes {
        node.close().await.ok();
    }
    for i in 0..n {
        let _ = std::fs::remove_dir_all(bench_dir(&format!("chain{i}")));
    }
    Ok(json!({"ms": done.map(|d| d.as_secs_f64() * 1e3)}))
}

/// Workload 6c: a node holding `keys` keys in its data directory restarts
/// while its peer changes 1% of them: time from the start of the new
/// process's node to reads served (every key loaded), and to being in sync
/// with the peer again.
pub async fn sync_restart(keys: usize) -> Result<Json> {
    let dir = bench_dir("restart");
    let durable = || {
        SyncSocket::builder()
            .leasing(false)
            .data_dir(&dir)
            .fsync(rs2p::Fsync::Batch)
            .mesh(|m| m.sign_broadcasts(signing()))
    };
    let a = durable().spawn().await?;
    let b = SyncSocket::builder().leasing(false).mesh(|m| m.sign_broadcasts(signing())).spawn().await?;
    a.connect(b.out_addr().clone()).await?;
    let batch = 10_000;
    for start in (0..keys).step_by(batch) {
        let pairs: Vec<(String, Value)> =
            (start..(start + batch).min(keys)).map(|k| (format!("key-{k}"), Value::from(k as u64))).collect();
        a.update(pairs).await?;
    }
    wait_all(std::slice::from_ref(&b), keys, Instant::now(), Duration::from_secs(120)).await?;
    a.close().await?;
    // While a is down: 1% of the keys change on b.
    let changed = keys / 100;
    for start in (0..changed).step_by(batch) {
        let pairs: Vec<(String, Value)> =
            (start..(start + batch).min(changed)).map(|k| (format!("key-{k}"), Value::from("changed"))).collect();
        b.update(pairs).await?;
    }
    let t0 = Instant::now();
    let a = durable().spawn().await?;
    let loaded = a.len().await?;
    let serving = t0.elapsed();
    a.connect(b.out_addr().clone()).await?;
    let changed_value = Value::from("changed");
    let mut in_sync = None;
    while t0.elapsed() < Duration::from_secs(120) {
        // Cheap probes first (the last key changed), then every changed key.
        if a.get(format!("key-{}", changed - 1)).await? == Some(changed_value.clone()) {
            let mut all = true;
            for k in 0..changed {
                if a.get(format!("key-{k}")).await? != Some(changed_value.clone()) {
                    all = false;
                    break;
                }
            }
            if all {
                in_sync = Some(t0.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let received = a.status().await?.sync.map_or(0, |s| s.stats.entries_received);
    a.close().await.ok();
    b.close().await.ok();
    let _ = std::fs::remove_dir_all(&dir);
    anyhow::ensure!(loaded == keys, "loaded {loaded} of {keys} keys");
    Ok(json!({
        "serving_ms": serving.as_secs_f64() * 1e3,
        "in_sync_ms": in_sync.map(|d| d.as_secs_f64() * 1e3),
        "entries_received": received,
    }))
}

async fn wait_all(nodes: &[SyncSocket], keys: usize, start: Instant, limit: Duration) -> Result<Option<Duration>> {
    while start.elapsed() < limit {
        let mut all = true;
        for node in nodes {
            all &= node.len().await? >= keys;
        }
        if all {
            return Ok(Some(start.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(None)
}

/// Workload 6b: a node joins a network whose dictionary holds `keys` keys;
/// time until it holds them all.
pub async fn sync_join(keys: usize) -> Result<Json> {
    let node = || SyncSocket::builder().leasing(false).mesh(|m| m.sign_broadcasts(signing())).spawn();
    let a = node().await?;
    let batch = 10_000;
    for b in (0..keys).step_by(batch) {
        let pairs: Vec<(String, Value)> =
            (b..(b + batch).min(keys)).map(|k| (format!("key-{k}"), Value::from(k as u64))).collect();
        a.update(pairs).await?;
    }
    let b = node().await?;
    let start = Instant::now();
    b.connect(a.out_addr().clone()).await?;
    let done = wait_all(std::slice::from_ref(&b), keys, start, Duration::from_secs(120)).await?;
    a.close().await.ok();
    b.close().await.ok();
    Ok(json!({"ms": done.map(|d| d.as_secs_f64() * 1e3)}))
}
