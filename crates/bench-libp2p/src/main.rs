//! rust-libp2p gossipsub under rs2p's benchmark workloads: what a Rust
//! developer would pick today. tcp + noise + yamux, gossipsub with its
//! default config and signed messages. Nodes run in this process, each
//! swarm driven by its own task. Prints one JSON line.
//!
//! Usage: rs2p-bench-libp2p throughput N COUNT SIZE | latency N MESSAGES | memory N
//! | formation N TIMEOUT_S | scale N TIMEOUT_S

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity};
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

enum Cmd {
    Publish(Vec<u8>, oneshot::Sender<bool>),
    Dial(Multiaddr),
    Peers(oneshot::Sender<(usize, usize)>),
}

struct Node {
    tx: mpsc::Sender<Cmd>,
    addr: Multiaddr,
    received: Arc<AtomicU64>,
    arrivals: Option<mpsc::UnboundedReceiver<(u64, Instant)>>,
}

async fn spawn_node(epoch: Instant) -> Result<Node> {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)?
        .with_behaviour(|key| {
            let cfg = gossipsub::ConfigBuilder::default().build().expect("default config");
            let b: gossipsub::Behaviour =
                gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), cfg).expect("behaviour");
            b
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build();
    let topic = IdentTopic::new("bench");
    swarm.behaviour_mut().subscribe(&topic)?;
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address;
        }
    };
    let (tx, mut rx) = mpsc::channel::<Cmd>(1024);
    let received = Arc::new(AtomicU64::new(0));
    let (arr_tx, arr_rx) = mpsc::unbounded_channel();
    let counter = received.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Publish(data, reply)) => {
                        let ok = swarm.behaviour_mut().publish(topic.clone(), data).is_ok();
                        let _ = reply.send(ok);
                    }
                    Some(Cmd::Dial(a)) => { let _ = swarm.dial(a); }
                    Some(Cmd::Peers(reply)) => {
                        let t = topic.hash();
                        let _ = reply.send((swarm.connected_peers().count(), swarm.behaviour().mesh_peers(&t).count()));
                    }
                    None => return,
                },
                ev = swarm.select_next_some() => {
                    if let SwarmEvent::Behaviour(gossipsub::Event::Message { message, .. }) = ev {
                        counter.fetch_add(1, Ordering::Relaxed);
                        if message.data.len() >= 16 {
                            let seq = u64::from_be_bytes(message.data[..8].try_into().unwrap_or([0; 8]));
                            let _ = arr_tx.send((seq, Instant::now()));
                        }
                        let _ = epoch;
                    }
                }
            }
        }
    });
    Ok(Node { tx, addr, received, arrivals: Some(arr_rx) })
}

async fn peers(n: &Node) -> Result<(usize, usize)> {
    let (tx, rx) = oneshot::channel();
    n.tx.send(Cmd::Peers(tx)).await.ok().context("node gone")?;
    Ok(rx.await?)
}

async fn publish(n: &Node, data: Vec<u8>) -> Result<bool> {
    let (tx, rx) = oneshot::channel();
    n.tx.send(Cmd::Publish(data, tx)).await.ok().context("node gone")?;
    Ok(rx.await?)
}

/// A chain; waits until every link is up and gossipsub's mesh holds each
/// neighbour (after its heartbeats).
async fn chain(n: usize, epoch: Instant) -> Result<Vec<Node>> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(spawn_node(epoch).await?);
    }
    for i in 0..n - 1 {
        nodes[i].tx.send(Cmd::Dial(nodes[i + 1].addr.clone())).await.ok().context("dial")?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut ok = true;
        for (i, node) in nodes.iter().enumerate() {
            let want = if i == 0 || i == n - 1 { 1 } else { 2 };
            let (conn, mesh) = peers(node).await?;
            ok &= conn >= want && mesh >= want;
        }
        if ok {
            return Ok(nodes);
        }
        if Instant::now() > deadline {
            bail!("gossipsub chain did not form");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn message(seq: u64, epoch: Instant, size: usize) -> Vec<u8> {
    let mut d = Vec::with_capacity(size.max(16));
    d.extend_from_slice(&seq.to_be_bytes());
    d.extend_from_slice(&(epoch.elapsed().as_nanos() as u64).to_be_bytes());
    d.resize(size.max(16), 0xAB);
    d
}

async fn throughput(n: usize, count: usize, size: usize) -> Result<serde_json::Value> {
    let epoch = Instant::now();
    let nodes = chain(n, epoch).await?;
    let far = nodes[n - 1].received.clone();
    let start = Instant::now();
    for k in 0..count as u64 {
        // A full publish queue is waited out, not counted as sent.
        let mut tries = 0;
        while !publish(&nodes[0], message(k, epoch, size)).await? {
            tries += 1;
            if tries > 10_000 {
                bail!("publish kept failing");
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    let (mut last, mut changed, mut done) = (0, Instant::now(), Instant::now());
    loop {
        let got = far.load(Ordering::Relaxed);
        if got != last {
            last = got;
            changed = Instant::now();
            done = changed;
        }
        if got as usize >= count || changed.elapsed() > Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let secs = done.duration_since(start).as_secs_f64();
    Ok(json!({"rate": last as f64 / secs, "lost": count as u64 - last, "secs": secs}))
}

async fn latency(n: usize, messages: usize) -> Result<serde_json::Value> {
    let epoch = Instant::now();
    let mut nodes = chain(n, epoch).await?;
    let mut rxs: Vec<_> = nodes.iter_mut().skip(1).map(|x| x.arrivals.take().expect("arrivals")).collect();
    let (mut far, mut all) = (Vec::new(), Vec::new());
    for k in 0..messages as u64 {
        let t0 = Instant::now();
        if !publish(&nodes[0], message(k, epoch, 16)).await? {
            bail!("publish failed");
        }
        for (i, rx) in rxs.iter_mut().enumerate() {
            loop {
                let (seq, at) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await?.context("node gone")?;
                if seq == k {
                    let us = at.duration_since(t0).as_secs_f64() * 1e6;
                    all.push(us);
                    if i == n - 2 {
                        far.push(us);
                    }
                    break;
                }
            }
        }
    }
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[((v.len() - 1) as f64 * p).round() as usize]
    };
    Ok(json!({"far_p50_us": pct(&mut far, 0.5), "far_p99_us": pct(&mut far, 0.99),
              "all_p50_us": pct(&mut all, 0.5), "all_p99_us": pct(&mut all, 0.99)}))
}

fn status(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

async fn memory(n: usize) -> Result<serde_json::Value> {
    let epoch = Instant::now();
    let before = status("VmRSS:");
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..n {
        let node = spawn_node(epoch).await?;
        if i > 0 {
            node.tx.send(Cmd::Dial(nodes[i / 2].addr.clone())).await.ok().context("dial")?;
        }
        nodes.push(node);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = status("VmRSS:");
    Ok(json!({"kib_per_node": after.saturating_sub(before) as f64 / n as f64}))
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

/// Workloads 3 and 4: `n` swarms, each dialing one random earlier node at
/// the same moment. gossipsub has no peer exchange and no outgoing target:
/// "formed" is the graph connected and every node's gossipsub mesh holding
/// all of its links. Then (scale) one publish, time until every node has it.
async fn formation(n: usize, timeout_s: usize, broadcast: bool) -> Result<serde_json::Value> {
    let epoch = Instant::now();
    let mut nodes = Vec::with_capacity(n);
    for _ in 0..n {
        nodes.push(spawn_node(epoch).await?);
    }
    let mut seed = 0x9e37_79b9_u64 ^ n as u64;
    let mut edges = vec![Vec::new(); n];
    let start = Instant::now();
    for i in 1..n {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let j = (seed >> 33) as usize % i;
        edges[i].push(j);
        edges[j].push(i);
        nodes[i].tx.send(Cmd::Dial(nodes[j].addr.clone())).await.ok().context("dial")?;
    }
    let mut formed = None;
    while start.elapsed() < Duration::from_secs(timeout_s as u64) {
        let mut ok = true;
        for (i, node) in nodes.iter().enumerate() {
            let (conn, mesh) = peers(node).await?;
            ok &= conn >= edges[i].len() && mesh >= edges[i].len().min(6);
        }
        if ok && connected(&edges) {
            formed = Some(start.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut out = json!({"formed_ms": formed.map(|d| d.as_secs_f64() * 1e3), "nodes": n});
    if broadcast && formed.is_some() {
        let t = Instant::now();
        if !publish(&nodes[0], message(0, epoch, 16)).await? {
            bail!("publish failed");
        }
        let mut reached = None;
        while t.elapsed() < Duration::from_secs(30) {
            if nodes[1..].iter().all(|x| x.received.load(Ordering::Relaxed) >= 1) {
                reached = Some(t.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        let got = nodes[1..].iter().filter(|x| x.received.load(Ordering::Relaxed) >= 1).count();
        out["broadcast_ms"] = json!(reached.map(|d| d.as_secs_f64() * 1e3));
        out["reached"] = json!(got);
    }
    Ok(out)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| -> Result<usize> { args.get(i).context("missing argument")?.parse().context("number") };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut out = rt.block_on(async {
        match args.first().map(String::as_str) {
            Some("throughput") => throughput(num(1)?, num(2)?, num(3)?).await,
            Some("latency") => latency(num(1)?, num(2)?).await,
            Some("memory") => memory(num(1)?).await,
            Some("formation") => formation(num(1)?, num(2)?, false).await,
            Some("scale") => formation(num(1)?, num(2)?, true).await,
            Some(other) => bail!("workload {other} is not implemented for libp2p"),
            None => bail!("usage: rs2p-bench-libp2p WORKLOAD ARGS"),
        }
    })?;
    out["peak_rss_kib"] = json!(status("VmHWM:"));
    println!("{out}");
    std::process::exit(0);
}
