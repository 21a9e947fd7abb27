//! `rs2p demo`: a local network of rs2p nodes in one process, formed,
//! flooded and reported on.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rs2p::{MeshSocket, PeerId, SyncSocket, Value};

/// Options of `rs2p demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 10)]
    pub nodes: usize,
    /// Number of nodes that broadcast.
    #[arg(long, default_value_t = 3)]
    pub senders: usize,
    /// Broadcasts per sender.
    #[arg(long, default_value_t = 1000)]
    pub messages: usize,
    /// Payload bytes per broadcast.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Seconds to wait for the mesh to form and for deliveries.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// Keys each writer sets in the synced-dictionary part.
    #[arg(long, default_value_t = 1000)]
    pub keys: usize,
    /// Milliseconds each sender waits between its broadcasts (0: a burst).
    #[arg(long, default_value_t = 0)]
    pub pace_ms: u64,
    /// Broadcasts each sender makes before the measured ones, so that the
    /// broadcast tree has settled (they are delivered, not counted).
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
    /// py2p's flood between rs2p nodes instead of the broadcast tree.
    #[arg(long)]
    pub flood: bool,
    /// Also write a self-contained HTML page with the mesh graph, per-node
    /// deliveries, the latency histogram and the dictionary's convergence.
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<std::path::PathBuf>,
}

#[derive(Default)]
struct NodeLog {
    seen: HashSet<(usize, u64)>,
    repeats: u64,
    latencies_us: Vec<u64>,
    /// For each message, the node it arrived from (its tree parent).
    via: HashMap<(usize, u64), usize>,
}

/// A tiny deterministic generator for picking bootstrap peers.
fn pick(seed: &mut u64, below: usize) -> usize {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*seed >> 33) as usize) % below
}

pub async fn run(args: DemoArgs) -> Result<()> {
    if args.nodes < 2 {
        bail!("--nodes must be at least 2");
    }
    if args.senders == 0 || args.senders > args.nodes {
        bail!("--senders must be between 1 and --nodes ({})", args.nodes);
    }
    if args.messages == 0 || args.keys == 0 {
        bail!("--messages and --keys must be at least 1");
    }
    if args.size > rs2p::proto::wire::DEFAULT_MAX_FRAME_LEN - 1024 {
        bail!(
            "--size {} exceeds what one frame carries ({} bytes)",
            args.size,
            rs2p::proto::wire::DEFAULT_MAX_FRAME_LEN - 1024
        );
    }
    let senders = args.senders;
    let mut report = crate::report::Report::default();
    println!(
        "rs2p demo: {} nodes on 127.0.0.1, {} senders x {} broadcasts of {} B",
        args.nodes, senders, args.messages, args.size
    );
    let strategy = if args.flood { rs2p::Broadcast::Flood } else { rs2p::Broadcast::Tree };
    let mut nodes = Vec::with_capacity(args.nodes);
    for _ in 0..args.nodes {
        nodes.push(MeshSocket::builder().bind("127.0.0.1:0").broadcast(strategy).spawn().await?);
    }
    let index: HashMap<PeerId, usize> = nodes.iter().enumerate().map(|(i, n)| (n.id().clone(), i)).collect();

    // 1. Formation: every node joins through one random earlier node, all at
    // the same moment; peer exchange must do the rest.
    println!("[1/4] forming the mesh: each node joins through one random earlier node...");
    let t0 = Instant::now();
    let mut seed = 0x5eed_u64;
    let mut joins = Vec::new();
    for i in 1..args.nodes {
        let target = nodes[pick(&mut seed, i)].out_addr().clone();
        let n = nodes[i].clone();
        joins.push(tokio::spawn(async move { n.connect(target).await }));
    }
    for j in joins {
        j.await??;
    }
    let deadline = t0 + Duration::from_secs(args.timeout);
    let (links, formation) = loop {
        let mut degrees = Vec::new();
        let mut adj: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
        let mut at_target = true;
        for (i, n) in nodes.iter().enumerate() {
            let peers = n.routing_table().await?;
            let out = peers.iter().filter(|p| p.outgoing).count();
            at_target &= out >= 4.min(nodes.len() - 1) || peers.len() == nodes.len() - 1;
            adj[i] = peers.iter().filter_map(|p| index.get(&p.id).copied()).collect();
            degrees.push(peers.len());
        }
        if at_target && connected(&adj) {
            report.links = adj
                .iter()
                .enumerate()
                .flat_map(|(i, ps)| ps.iter().filter(move |&&j| i < j).map(move |&j| (i, j)))
                .collect();
            break (degrees.iter().sum::<usize>() / 2, t0.elapsed());
        }
        if Instant::now() > deadline {
            bail!("the mesh did not form within {} s", args.timeout);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    println!(
        "      formed in {:.1} ms: {} links, every node connected and at its outgoing target",
        formation.as_secs_f64() * 1e3,
        links
    );

    // 2. Flood.
    let epoch = Instant::now();
    let logs: Vec<Arc<Mutex<NodeLog>>> = (0..nodes.len()).map(|_| Arc::default()).collect();
    for (i, n) in nodes.iter().enumerate() {
        let n = n.clone();
        let log = logs[i].clone();
        let index = index.clone();
        tokio::spawn(async move {
            while let Some(m) = n.next_message().await {
                let now_us = epoch.elapsed().as_micros() as u64;
                let Ok(p) = m.packets() else { continue };
                let (Some(seq), Some(sent)) = (p.first().and_then(Value::as_u64), p.get(1).and_then(Value::as_u64))
                else {
                    continue;
                };
                let from = index.get(m.sender()).copied().unwrap_or(usize::MAX);
                let via = m.via().and_then(|v| index.get(v)).copied().unwrap_or(usize::MAX);
                let mut l = log.lock().expect("log lock");
                if seq >= WARMUP_BASE {
                    continue; // a warm-up message: it shaped the tree, it is not counted
                }
                if l.seen.insert((from, seq)) {
                    l.via.insert((from, seq), via);
                    l.latencies_us.push(now_us.saturating_sub(sent));
                } else {
                    l.repeats += 1;
                }
            }
        });
    }
    let expected_per_node = |i: usize| senders * args.messages - if i < senders { args.messages } else { 0 };
    let expected: usize = (0..nodes.len()).map(expected_per_node).sum();
    println!(
        "[2/4] flooding {} broadcasts from {} nodes ({} deliveries expected)...",
        senders * args.messages,
        senders,
        expected
    );
    let payload = Value::Binary(vec![0xAB; args.size]);
    // Warm-up broadcasts (numbered from WARMUP_BASE, not counted): the
    // tree prunes its duplicate links on the first messages.
    for w in 0..args.warmup as u64 {
        for node in nodes.iter().take(senders) {
            node.broadcast(vec![Value::from(WARMUP_BASE + w), Value::from(0), payload.clone()]).await?;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut dups_before = 0;
    for n in &nodes {
        dups_before += n.status().await?.duplicates;
    }
    let flood_start = Instant::now();
    let mut tasks = Vec::new();
    for node in nodes.iter().take(senders) {
        let n = node.clone();
        let payload = payload.clone();
        let count = args.messages;
        let pace = Duration::from_millis(args.pace_ms);
        tasks.push(tokio::spawn(async move {
            for seq in 0..count as u64 {
                let sent = epoch.elapsed().as_micros() as u64;
                n.broadcast(vec![Value::from(seq), Value::from(sent), payload.clone()]).await?;
                if !pace.is_zero() {
                    tokio::time::sleep(pace).await;
                }
            }
            Ok::<_, rs2p::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let mut last_print = Instant::now();
    let delivered = loop {
        let delivered: usize = logs.iter().map(|l| l.lock().expect("log lock").seen.len()).sum();
        if delivered >= expected || Instant::now() > flood_start + Duration::from_secs(args.timeout) {
            break delivered;
        }
        if last_print.elapsed() > Duration::from_millis(500) {
            println!("      {delivered}/{expected} deliveries...");
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let flood_time = flood_start.elapsed();

    // 3. Report.
    println!("[3/4] report");
    println!("      node  id            peers  received  expected");
    let mut all_lat = Vec::new();
    let mut repeats = 0;
    let mut suppressed = 0;
    let (mut grafts, mut prunes, mut served, mut postponed, mut dropped, mut wants) = (0, 0, 0, 0, 0, 0);
    for (i, n) in nodes.iter().enumerate() {
        let peers = n.routing_table().await?.len();
        let st = n.status().await?;
        suppressed += st.duplicates;
        dropped += st.dropped_frames;
        if let Some(t) = st.tree {
            grafts += t.grafts;
            prunes += t.prunes;
            served += t.served;
            postponed += t.postponed;
            wants += t.wants;
        }
        let l = logs[i].lock().expect("log lock");
        let id: String = n.id().to_string().chars().take(12).collect();
        println!("      {i:>4}  {id:<12}  {peers:>5}  {:>8}  {:>8}", l.seen.len(), expected_per_node(i));
        report.nodes.push(id);
        report.deliveries.push((l.seen.len(), expected_per_node(i)));
        all_lat.extend_from_slice(&l.latencies_us);
        repeats += l.repeats;
    }
    all_lat.sort_unstable();
    let pct = |p: f64| all_lat.get(((all_lat.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(0);
    let suppressed = suppressed - dups_before;
    if !args.flood {
        println!(
            "      tree: {prunes} prunes, {grafts} grafts, {wants} messages asked for ({postponed} asks put off while busy), {served} sent on asks (whole run)"
        );
    }
    println!("      frames dropped at full send queues (lagging peers): {dropped}");
    let (mean_last_hop, max_hop) = hops(&logs, senders, args.messages);
    println!(
        "      deliveries: {delivered}/{expected} ({:.1}%), delivered twice: {repeats}, duplicate copies suppressed by the mesh: {suppressed}",
        100.0 * delivered as f64 / expected as f64
    );
    println!(
        "      {}: relative message redundancy (RMR) {:.3} (duplicates / deliveries); last-delivery hop: mean {:.2}, max {}",
        if args.flood { "flood" } else { "broadcast tree" },
        suppressed as f64 / delivered.max(1) as f64,
        mean_last_hop,
        max_hop
    );
    println!(
        "      throughput: {:.0} deliveries/s ({} broadcasts flooded in {:.3} s)",
        delivered as f64 / flood_time.as_secs_f64(),
        senders * args.messages,
        flood_time.as_secs_f64()
    );
    println!(
        "      latency publish -> delivery: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.5) as f64 / 1e3,
        pct(0.99) as f64 / 1e3,
        pct(1.0) as f64 / 1e3
    );
    for n in &nodes {
        n.close().await.ok();
    }
    let mesh_ok = delivered == expected && repeats == 0;
    let rmr = suppressed as f64 / delivered.max(1) as f64;
    report.summary = vec![
        ("nodes".into(), nodes.len().to_string()),
        ("formation".into(), format!("{:.1} ms, {links} links", formation.as_secs_f64() * 1e3)),
        ("deliveries".into(), format!("{delivered}/{expected}, delivered twice: {repeats}")),
        ("relative message redundancy".into(), format!("{rmr:.3}")),
        ("last-delivery hop".into(), format!("mean {mean_last_hop:.2}, max {max_hop}")),
        ("throughput".into(), format!("{:.0} deliveries/s", delivered as f64 / flood_time.as_secs_f64())),
        ("latency".into(), format!("p50 {:.2} ms, p99 {:.2} ms", pct(0.5) as f64 / 1e3, pct(0.99) as f64 / 1e3)),
    ];
    report.latencies_us = all_lat;
    let sync_ok = sync_part(&args, senders, &mut report).await?;
    report.summary.push(("verdict".into(), if mesh_ok && sync_ok { "healthy" } else { "unhealthy" }.into()));
    if let Some(path) = &args.report {
        std::fs::write(path, report.to_html())
            .with_context(|| format!("cannot write the report {}", path.display()))?;
        println!("      report: {}", path.display());
    }
    if mesh_ok && sync_ok {
        println!("      verdict: healthy");
        Ok(())
    } else {
        bail!("unhealthy network: {delivered}/{expected} delivered, {repeats} repeats, dictionary agreed: {sync_ok}")
    }
}

/// The synced dictionary: writes from several nodes, time until every
/// replica holds the same dictionary.
async fn sync_part(args: &DemoArgs, writers: usize, report: &mut crate::report::Report) -> Result<bool> {
    println!(
        "[4/4] synced dictionary: {} nodes, {} writers x {} keys, plus one shared key written by all...",
        args.nodes, writers, args.keys
    );
    let mut nodes: Vec<SyncSocket> = Vec::with_capacity(args.nodes);
    let mut seed = 0xd1c7_u64;
    for i in 0..args.nodes {
        let n = SyncSocket::builder().leasing(false).spawn().await?;
        if i > 0 {
            n.connect(nodes[pick(&mut seed, i)].out_addr().clone()).await?;
        }
        nodes.push(n);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    let total = writers * args.keys + 1;
    // The convergence curve, sampled from the first write on.
    let curve: Arc<Mutex<Vec<(f64, usize)>>> = Arc::default();
    let sampler = {
        let (nodes, curve) = (nodes.clone(), curve.clone());
        tokio::spawn(async move {
            loop {
                let mut complete = 0;
                for n in &nodes {
                    complete += usize::from(n.len().await.unwrap_or(0) == total);
                }
                curve.lock().expect("curve lock").push((start.elapsed().as_secs_f64() * 1e3, complete));
                if complete == nodes.len() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut tasks = Vec::new();
    for (w, node) in nodes.iter().take(writers).enumerate() {
        let n = node.clone();
        let keys = args.keys;
        tasks.push(tokio::spawn(async move {
            for k in 0..keys {
                n.set(format!("w{w}/k{k}"), Value::from(k as u64)).await?;
            }
            n.set("shared", Value::from(format!("writer {w}"))).await?;
            Ok::<_, rs2p::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let written = start.elapsed();
    let deadline = start + Duration::from_secs(args.timeout);
    let agreed = loop {
        let mut lens = Vec::new();
        for n in &nodes {
            lens.push(n.len().await?);
        }
        if lens.iter().all(|&l| l == total) {
            let first = nodes[0].copy().await?;
            let mut same = true;
            for n in &nodes[1..] {
                same &= n.copy().await? == first;
            }
            if same {
                break Some(start.elapsed());
            }
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    sampler.abort();
    report.convergence = std::mem::take(&mut *curve.lock().expect("curve lock"));
    let shared = nodes[0].get("shared").await?.map(|v| v.to_string()).unwrap_or_default();
    for n in &nodes {
        n.close().await.ok();
    }
    match agreed {
        Some(t) => {
            report.summary.push((
                "dictionary".into(),
                format!("{total} keys, every replica identical after {:.1} ms", t.as_secs_f64() * 1e3),
            ));
            println!(
                "      {total} keys written in {:.1} ms; every replica identical after {:.1} ms (shared = {shared})",
                written.as_secs_f64() * 1e3,
                t.as_secs_f64() * 1e3
            );
            Ok(true)
        }
        None => {
            println!("      replicas did not agree within {} s", args.timeout);
            Ok(false)
        }
    }
}

/// Warm-up broadcasts are numbered from here (the measured ones from 0).
const WARMUP_BASE: u64 = 1 << 40;

/// The hop count of each delivery, from the node each message arrived from
/// (its parent on the path it took): the mean, over messages, of the hop
/// count of its last delivery, and the largest hop count seen.
fn hops(logs: &[Arc<Mutex<NodeLog>>], senders: usize, messages: usize) -> (f64, usize) {
    let vias: Vec<HashMap<(usize, u64), usize>> =
        logs.iter().map(|l| l.lock().expect("log lock").via.clone()).collect();
    let (mut sum_last, mut count, mut max_hop) = (0usize, 0usize, 0usize);
    for origin in 0..senders {
        for seq in 0..messages as u64 {
            let mut last = 0;
            for node in 0..logs.len() {
                // Follow the parents back to the origin (bounded: no cycles
                // in first deliveries, but a lost record must not loop).
                let (mut at, mut h) = (node, 0);
                while at != origin && h <= logs.len() {
                    match vias[at].get(&(origin, seq)) {
                        Some(&p) if p != usize::MAX => {
                            at = p;
                            h += 1;
                        }
                        _ => break,
                    }
                }
                if at == origin {
                    last = last.max(h);
                }
            }
            sum_last += last;
            count += 1;
            max_hop = max_hop.max(last);
        }
    }
    (sum_last as f64 / count.max(1) as f64, max_hop)
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
