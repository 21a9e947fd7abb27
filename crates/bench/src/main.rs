//! rs2p-bench: side-by-side benchmarks of rs2p, py2p 0.7.878, rust-libp2p
//! gossipsub and "the limit" (a minimal forwarding program), on loopback.
//!
//! `./scripts/bench.sh all` (or `cargo run --release -p rs2p-bench -- all`).
//! Each workload runs every system in the same invocation, at least 3 times,
//! and prints median, min, max and the ratio to rs2p.

mod limit;
mod rs2p_sys;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::{json, Value as Json};

#[derive(Parser, Debug)]
#[command(about = "Side-by-side benchmarks: rs2p, py2p, libp2p gossipsub, the limit")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Debug, Clone)]
struct Opts {
    /// Runs per measurement (median, min, max are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Systems to run: rs2p, rs2p-cli, limit, py2p, libp2p.
    #[arg(long, value_delimiter = ',', default_value = "rs2p,rs2p-cli,limit,py2p,libp2p")]
    systems: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Every workload.
    All(Opts),
    /// 1. Broadcast throughput along 5- and 10-node chains.
    Throughput(Opts),
    /// 2. Broadcast latency along a 10-node chain.
    Latency(Opts),
    /// 3. Mesh formation: 100 nodes joining at once.
    Formation(Opts),
    /// 4. Scale: the largest network in one process, one broadcast.
    Scale(Opts),
    /// 5. Memory: idle nodes.
    Memory(Opts),
    /// 6. Sync: 100,000 keys along a 5-chain; a node joining 1,000,000 keys.
    Sync(Opts),
    /// 7. Broadcast in random meshes: the tree against py2p's flood.
    Mesh(Opts),
    /// Internal: one measurement in this process, printed as JSON.
    #[command(hide = true)]
    Child { workload: String, args: Vec<String> },
}

/// Waits until `counter` reaches `count`, or stops moving for 5 s. Returns
/// what arrived and the seconds from `start` to the last arrival.
pub(crate) async fn await_arrivals(
    counter: &std::sync::atomic::AtomicU64,
    count: usize,
    start: std::time::Instant,
) -> (u64, f64) {
    use std::sync::atomic::Ordering;
    use std::time::Instant;
    let mut last = counter.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    loop {
        let got = counter.load(Ordering::Relaxed);
        if got != last {
            last = got;
            last_change = Instant::now();
        }
        if got as usize >= count || last_change.elapsed() > Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    (last, last_change.duration_since(start).as_secs_f64())
}

pub(crate) fn rss_kib() -> u64 {
    proc_status("VmRSS:")
}

fn peak_kib() -> u64 {
    proc_status("VmHWM:")
}

fn proc_status(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Cmd::Child { workload, args } = &cli.cmd {
        let _ = rlimit::increase_nofile_limit(1 << 20);
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let out = rt.block_on(child(workload, args))?;
        println!("{out}");
        return Ok(());
    }
    let mut table = Table::default();
    let (opts, which): (&Opts, &[&str]) = match &cli.cmd {
        Cmd::All(o) => (o, &["throughput", "latency", "formation", "scale", "memory", "sync", "mesh"]),
        Cmd::Throughput(o) => (o, &["throughput"]),
        Cmd::Latency(o) => (o, &["latency"]),
        Cmd::Formation(o) => (o, &["formation"]),
        Cmd::Scale(o) => (o, &["scale"]),
        Cmd::Memory(o) => (o, &["memory"]),
        Cmd::Sync(o) => (o, &["sync"]),
        Cmd::Mesh(o) => (o, &["mesh"]),
        Cmd::Child { .. } => unreachable!(),
    };
    if opts.systems.iter().any(|s| s == "libp2p") {
        build_libp2p()?;
    }
    for w in which {
        run_workload(w, opts, &mut table)?;
    }
    table.print();
    Ok(())
}

async fn child(workload: &str, args: &[String]) -> Result<Json> {
    let num = |i: usize| -> Result<usize> { args.get(i).context("missing argument")?.parse().context("a number") };
    let mut out = match workload {
        "rs2p-throughput" => rs2p_sys::throughput(num(0)?, num(1)?, num(2)?).await?,
        "limit-throughput" => limit::throughput(num(0)?, num(1)?, num(2)?).await?,
        "rs2p-latency" => rs2p_sys::latency(num(0)?, num(1)?).await?,
        "limit-latency" => limit::latency(num(0)?, num(1)?).await?,
        "rs2p-formation" => rs2p_sys::formation(num(0)?, Duration::from_secs(num(1)? as u64), false).await?,
        "rs2p-scale" => rs2p_sys::formation(num(0)?, Duration::from_secs(num(1)? as u64), true).await?,
        "rs2p-memory" => rs2p_sys::idle_memory(num(0)?).await?,
        "rs2p-sync-chain" => {
            let leased = args.get(3).is_some_and(|a| a == "leased");
            rs2p_sys::sync_chain(num(0)?, num(1)?, args.get(2).map_or("memory", String::as_str), leased).await?
        }
        "rs2p-sync-restart" => rs2p_sys::sync_restart(num(0)?).await?,
        "rs2p-sync-join" => rs2p_sys::sync_join(num(0)?).await?,
        "rs2p-mesh" | "rs2p-flood-mesh" | "rs2p-ahead-mesh" => {
            let variant = match workload {
                "rs2p-flood-mesh" => "flood",
                "rs2p-ahead-mesh" => "ahead",
                _ => "tree",
            };
            rs2p_sys::mesh_broadcast(num(0)?, num(1)?, num(2)?, num(3)?, num(4)? as u64, variant).await?
        }
        other => bail!("unknown workload {other}"),
    };
    out["peak_rss_kib"] = json!(peak_kib());
    Ok(out)
}

/// Runs one measurement in a fresh process (so peak RSS is its own).
fn measure(system: &str, workload: &str, args: &[String]) -> Result<Json> {
    let mut cmd = match system {
        "rs2p" | "rs2p-flood" | "rs2p-ahead" | "limit" => {
            let mut c = std::process::Command::new(std::env::current_exe()?);
            c.arg("child").arg(format!("{system}-{workload}")).args(args);
            c
        }
        "rs2p-cli" => {
            let mut c = std::process::Command::new(std::env::current_exe()?);
            c.arg("child").arg("rs2p-throughput");
            c
        }
        "py2p" => {
            let python = root().join(".venv-py2p/bin/python");
            if !python.exists() {
                bail!("py2p benchmarks need the pinned virtualenv: run ./scripts/setup-py2p.sh");
            }
            let mut c = std::process::Command::new(python);
            c.arg(root().join("bench/py2p_bench.py")).arg(workload).args(args);
            c
        }
        "libp2p" => {
            let mut c = std::process::Command::new(root().join("target/release/rs2p-bench-libp2p"));
            c.arg(workload).args(args);
            c
        }
        other => bail!("unknown system {other}"),
    };
    if system == "rs2p-cli" {
        return cli_throughput(args);
    }
    let out = cmd.stdin(Stdio::null()).stderr(Stdio::inherit()).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().rev().find(|l| l.starts_with('{')).unwrap_or("");
    if !out.status.success() || last.is_empty() {
        bail!("{system} {workload} {args:?} failed ({}): {text}", out.status);
    }
    Ok(serde_json::from_str(last)?)
}

/// Workload 1 across processes: a chain of `rs2p node --json` processes.
fn cli_throughput(args: &[String]) -> Result<Json> {
    let bin = root().join("target/release/rs2p");
    if !bin.exists() {
        bail!("build the CLI first: cargo build --release -p rs2p-cli");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(cli_chain::throughput(&bin, args))
}

mod cli_chain {
    //! A chain of `rs2p node --json` processes; the first is told to
    //! broadcast, the last reports messages.
    use std::path::Path;
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    use anyhow::{Context, Result};
    use serde_json::{json, Value as Json};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::process::Command;

    pub async fn throughput(bin: &Path, args: &[String]) -> Result<Json> {
        let n: usize = args[0].parse()?;
        let count: usize = args[1].parse()?;
        let size: usize = args[2].parse()?;
        let mut procs = Vec::new();
        let mut addrs = Vec::new();
        for _ in 0..n {
            // `--max-outgoing 0`: the links asked for and no others, so the
            // chain stays a chain (as the library's, built the same way);
            // by default the ends would also link to each other.
            let mut child = Command::new(bin)
                .args(["node", "--json", "--max-outgoing", "0"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
            let ready: Json = serde_json::from_str(&lines.next_line().await?.context("ready line")?)?;
            addrs.push(ready["addr"].as_str().context("addr")?.to_string());
            let stdin = child.stdin.take().context("stdin")?;
            procs.push((child, Some(stdin), Some(lines)));
        }
        for i in 0..n - 1 {
            let line = json!({"cmd": "connect", "addr": addrs[i + 1]}).to_string() + "\n";
            procs[i].1.as_mut().context("stdin")?.write_all(line.as_bytes()).await?;
        }
        // Wait until every node has its links: one at the ends, two between.
        let deadline = Instant::now() + Duration::from_secs(10);
        for (i, p) in procs.iter_mut().enumerate() {
            let want = if i == 0 || i == n - 1 { 1 } else { 2 };
            let mut up = 0;
            while up < want {
                let lines = p.2.as_mut().context("stdout")?;
                let l = tokio::time::timeout_at(deadline.into(), lines.next_line())
                    .await
                    .with_context(|| format!("node {i} of {n} did not get its links within 10 s"))??
                    .context("chain link")?;
                up += usize::from(l.contains("\"peer_up\""));
            }
        }
        // Every node's application consumes its messages, as in the
        // library's chain: the nodes before the far one are read, and what
        // they print discarded, with as little work as the library's
        // counting drain (the harness shares the 2 cores with the nodes).
        let mut drains = Vec::new();
        for p in &mut procs[..n - 1] {
            let mut out = p.2.take().context("stdout")?.into_inner();
            drains.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                while matches!(out.read(&mut buf).await, Ok(k) if k > 0) {}
            }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let payload = json!({"$bytes": base64_of(size)});
        // A sequence number per line: equal payloads within a second would
        // be one message, deduplicated.
        let script: String =
            (0..count).map(|k| json!({"cmd": "broadcast", "packets": [k, payload]}).to_string() + "\n").collect();
        let mut head = procs[0].1.take().context("stdin")?;
        let start = Instant::now();
        let writer = tokio::spawn(async move {
            head.write_all(script.as_bytes()).await?;
            Ok::<_, std::io::Error>(head)
        });
        // The far node's lines are counted straight from its output bytes
        // (no String per line): the harness measures the node, not itself.
        let mut far = LineScan::new(procs[n - 1].2.take().context("stdout")?.into_inner());
        let mut got = 0usize;
        let mut last = Instant::now();
        far.until(|l| {
            if l.starts_with(b"{\"event\":\"message\"") {
                got += 1;
                last = Instant::now();
            }
            got >= count
        })
        .await?;
        let secs = last.duration_since(start).as_secs_f64();
        let _ = writer.await;
        // Every message crossed every node: the far node is still linked to
        // its neighbour alone.
        let status = json!({"cmd": "status", "req": "chain"}).to_string() + "\n";
        procs[n - 1].1.as_mut().context("stdin")?.write_all(status.as_bytes()).await?;
        let line = far
            .until(|l| l.windows(13).any(|w| w == b"\"req\":\"chain\""))
            .await?
            .context("the far node did not answer status within 5 s")?;
        let status: Json = serde_json::from_slice(&line)?;
        anyhow::ensure!(status["peers"] == 1, "the chain is not a chain: the far node has {} peers", status["peers"]);
        Ok(json!({"rate": got as f64 / secs, "lost": (count - got) as u64, "secs": secs}))
    }

    /// Complete lines of a child's output, scanned in place.
    struct LineScan<R> {
        r: R,
        buf: Vec<u8>,
        start: usize,
        end: usize,
    }

    impl<R: tokio::io::AsyncRead + Unpin> LineScan<R> {
        fn new(r: R) -> Self {
            LineScan { r, buf: vec![0; 256 << 10], start: 0, end: 0 }
        }

        /// Shows `f` each line until it returns true (that line is
        /// returned); `None` at EOF or after 5 s without output.
        async fn until(&mut self, mut f: impl FnMut(&[u8]) -> bool) -> Result<Option<Vec<u8>>> {
            loop {
                while let Some(k) = self.buf[self.start..self.end].iter().position(|&b| b == b'\n') {
                    let line = &self.buf[self.start..self.start + k];
                    self.start += k + 1;
                    if f(line) {
                        return Ok(Some(line.to_vec()));
                    }
                }
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
                if self.end == self.buf.len() {
                    self.buf.resize(self.buf.len() * 2, 0);
                }
                match tokio::time::timeout(Duration::from_secs(5), self.r.read(&mut self.buf[self.end..])).await {
                    Ok(Ok(k)) if k > 0 => self.end += k,
                    Ok(Err(e)) => return Err(e.into()),
                    _ => return Ok(None),
                }
            }
        }
    }

    fn base64_of(size: usize) -> String {
        // size bytes of 0xAB in base64 ("q6ur" per 3 bytes), rounded down to
        // a multiple of 3.
        "q6ur".repeat(size / 3)
    }
}

fn build_libp2p() -> Result<()> {
    eprintln!("building the libp2p gossipsub benchmark (first time takes a few minutes)...");
    let st = std::process::Command::new("cargo")
        .args(["build", "--release", "-p", "rs2p-bench-libp2p"])
        .current_dir(root())
        .status()?;
    if !st.success() {
        bail!("building rs2p-bench-libp2p failed");
    }
    Ok(())
}

#[derive(Default)]
struct Table {
    rows: Vec<(String, String, String, Vec<f64>, String)>,
}

impl Table {
    fn add(&mut self, workload: &str, system: &str, metric: &str, values: Vec<f64>, unit: &str) {
        eprintln!("  {workload} / {system}: {metric} {values:?} {unit}");
        self.rows.push((workload.into(), system.into(), metric.into(), values, unit.into()));
    }

    fn print(&self) {
        println!();
        println!("| workload | metric | system | median | min | max | rs2p better by |");
        println!("|---|---|---|---|---|---|---|");
        for (w, s, m, v, unit) in &self.rows {
            let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
            v.sort_by(|a, b| a.total_cmp(b));
            let (med, min, max) =
                if v.is_empty() { (f64::NAN, f64::NAN, f64::NAN) } else { (v[v.len() / 2], v[0], v[v.len() - 1]) };
            let base = self
                .rows
                .iter()
                .find(|(w2, s2, m2, ..)| w2 == w && m2 == m && s2 == "rs2p")
                .map(|(.., v2, _)| {
                    let mut v2: Vec<f64> = v2.iter().copied().filter(|x| x.is_finite()).collect();
                    v2.sort_by(|a, b| a.total_cmp(b));
                    v2.get(v2.len() / 2).copied().unwrap_or(f64::NAN)
                })
                .unwrap_or(f64::NAN);
            let higher_better = unit.ends_with("/s") || unit == "runs ok" || unit == "nodes";
            let ratio = if s == "rs2p" || unit == "msgs" || !med.is_finite() || !base.is_finite() || med == 0.0 {
                "".to_string()
            } else {
                // How many times better rs2p is (below 1: worse).
                let r = if higher_better { base / med } else { med / base };
                if r < 10.0 {
                    format!("{r:.2}x")
                } else {
                    format!("{r:.0}x")
                }
            };
            println!("| {w} | {m} ({unit}) | {s} | {} | {} | {} | {ratio} |", fmt(med), fmt(min), fmt(max));
        }
    }
}

fn fmt(x: f64) -> String {
    if !x.is_finite() {
        "n/a".into()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

fn runs(opts: &Opts, system: &str, workload: &str, args: &[String]) -> Vec<Json> {
    (0..opts.runs)
        .filter_map(|_| match measure(system, workload, args) {
            Ok(j) => Some(j),
            Err(e) => {
                eprintln!("  {system} {workload}: {e:#}");
                None
            }
        })
        .collect()
}

/// Each run's peak RSS, in MiB.
fn peak_mib(rs: &[Json]) -> Vec<f64> {
    field(rs, "peak_rss_kib").iter().map(|k| k / 1024.0).collect()
}

fn field(rs: &[Json], f: &str) -> Vec<f64> {
    rs.iter().map(|j| j[f].as_f64().unwrap_or(f64::NAN)).collect()
}

fn s(args: &[usize]) -> Vec<String> {
    args.iter().map(ToString::to_string).collect()
}

fn run_workload(w: &str, opts: &Opts, t: &mut Table) -> Result<()> {
    let has = |s: &str| opts.systems.iter().any(|x| x == s);
    eprintln!("== {w}");
    match w {
        "throughput" => {
            let cases =
                [(3, 20_000, 100), (5, 20_000, 100), (10, 20_000, 100), (5, 2_000, 10_240), (10, 2_000, 10_240)];
            for (n, count, size) in cases {
                let name = format!("1. throughput {n}-chain {count}x{size}B");
                for sys in ["rs2p", "rs2p-cli", "limit", "py2p", "libp2p"] {
                    // The 3-chain compares the node binary with py2p (and the
                    // library); the CLI runs on the 100 B chains only.
                    let skip = (sys == "rs2p-cli" && (n == 10 || size != 100))
                        || (n == 3 && !matches!(sys, "rs2p" | "rs2p-cli" | "py2p"));
                    if !has(sys) || skip {
                        continue;
                    }
                    let rs = runs(opts, sys, "throughput", &s(&[n, count, size]));
                    t.add(&name, sys, "far-node rate", field(&rs, "rate"), "msg/s");
                    t.add(&name, sys, "lost", field(&rs, "lost"), "msgs");
                    if sys == "rs2p" {
                        t.add(&name, sys, "peers declared dead", field(&rs, "unresponsive"), "peers");
                    }
                    // py2p runs its nodes in their own processes: the driver's peak says
                    // nothing about them.
                    if sys != "rs2p-cli" && sys != "py2p" {
                        t.add(&name, sys, "peak RSS", peak_mib(&rs), "MiB");
                    }
                }
            }
        }
        "latency" => {
            let name = "2. latency 10-chain";
            for sys in ["rs2p", "limit", "py2p", "libp2p"] {
                if has(sys) {
                    let rs = runs(opts, sys, "latency", &s(&[10, 300]));
                    t.add(name, sys, "far p50", field(&rs, "far_p50_us"), "us");
                    t.add(name, sys, "far p99", field(&rs, "far_p99_us"), "us");
                    if sys != "limit" {
                        t.add(name, sys, "all-nodes p50", field(&rs, "all_p50_us"), "us");
                        t.add(name, sys, "all-nodes p99", field(&rs, "all_p99_us"), "us");
                    }
                }
            }
        }
        "formation" => {
            let name = "3. formation 100 joiners";
            for sys in ["rs2p", "py2p", "libp2p"] {
                if has(sys) {
                    let rs = runs(opts, sys, "formation", &s(&[100, 15]));
                    let ok = rs.iter().filter(|j| j["formed_ms"].is_number()).count();
                    t.add(name, sys, "time to connected + target", field(&rs, "formed_ms"), "ms");
                    // No result at all means "not measured", not "0 runs ok".
                    let runs_ok = if rs.is_empty() { vec![] } else { vec![ok as f64] };
                    t.add(name, sys, &format!("runs connected of {}", opts.runs), runs_ok, "runs ok");
                }
            }
        }
        "scale" => {
            for n in [1000, 2000] {
                for sys in ["rs2p", "libp2p"] {
                    // libp2p at 2,000 nodes takes minutes per run here:
                    // measured at 1,000 only.
                    if has(sys) && (sys == "rs2p" || n == 1000) {
                        let rs = runs(opts, sys, "scale", &s(&[n, 90]));
                        let name = format!("4. scale {n} nodes in one process");
                        t.add(&name, sys, "formation", field(&rs, "formed_ms"), "ms");
                        t.add(&name, sys, "broadcast reaches all", field(&rs, "broadcast_ms"), "ms");
                        t.add(&name, sys, "nodes reached", field(&rs, "reached"), "nodes");
                    }
                }
            }
        }
        "memory" => {
            for sys in ["rs2p", "py2p", "libp2p"] {
                if has(sys) {
                    for n in [1, 100] {
                        let rs = runs(opts, sys, "memory", &s(&[n]));
                        t.add(
                            &format!("5. memory {n} idle node(s)"),
                            sys,
                            "RSS per node",
                            field(&rs, "kib_per_node"),
                            "KiB",
                        );
                    }
                }
            }
        }
        "sync" => {
            for sys in ["rs2p", "py2p"] {
                if has(sys) {
                    let keys = if sys == "py2p" { 1_000 } else { 100_000 };
                    let rs = runs(opts, sys, "sync-chain", &s(&[5, keys]));
                    t.add(
                        &format!("6. sync {keys} keys along a 5-chain"),
                        sys,
                        "time until all hold all",
                        field(&rs, "ms"),
                        "ms",
                    );
                    let keys = if sys == "py2p" { 10_000 } else { 1_000_000 };
                    let rs = runs(opts, sys, "sync-join", &s(&[keys]));
                    t.add(
                        &format!("6. sync join of {keys} keys"),
                        sys,
                        "time until it holds all",
                        field(&rs, "ms"),
                        "ms",
                    );
                    if sys == "rs2p" {
                        // The durable dictionary (#14): the chain with a data
                        // directory per node under each policy, and a restart.
                        for policy in ["never", "batch", "always"] {
                            let args = vec!["5".to_string(), "100000".to_string(), policy.to_string()];
                            let rs = runs(opts, sys, "sync-chain", &args);
                            t.add(
                                &format!("6. sync 100000 keys along a 5-chain, --fsync {policy}"),
                                sys,
                                "time until all hold all",
                                field(&rs, "ms"),
                                "ms",
                            );
                        }
                        let rs = runs(opts, sys, "sync-restart", &s(&[1_000_000]));
                        let name = "6. restart of a node holding 1000000 keys (1% changed meanwhile)";
                        t.add(name, sys, "to reads served", field(&rs, "serving_ms"), "ms");
                        t.add(name, sys, "to in sync", field(&rs, "in_sync_ms"), "ms");
                        t.add(name, sys, "entries repaired", field(&rs, "entries_received"), "entries");
                    }
                }
            }
        }
        "mesh" => {
            // The tree (rs2p's default) against py2p's flood between the
            // same rs2p nodes, side by side; "rs2p" is the base of the ratio.
            for (n, senders, count, pace) in [(20, 4, 20_000, 0), (100, 3, 1_000, 5)] {
                let name = if pace == 0 {
                    format!("7. mesh {n} nodes, {senders} senders x {count} in batches")
                } else {
                    format!("7. mesh {n} nodes, {senders} senders x {count} every {pace} ms")
                };
                // "rs2p-ahead": the tree with announcements ahead of payload
                // (TreeConfig::announce_ahead), the choice rs2p did not make.
                for sys in ["rs2p", "rs2p-flood", "rs2p-ahead"] {
                    if has("rs2p") {
                        let rs = runs(opts, sys, "mesh", &s(&[n, senders, count, 100, pace]));
                        t.add(&name, sys, "deliveries/s, whole mesh", field(&rs, "rate"), "msg/s");
                        t.add(&name, sys, "lost", field(&rs, "lost"), "msgs");
                        t.add(&name, sys, "RMR", field(&rs, "rmr"), "copies/delivery");
                        t.add(&name, sys, "grafts", field(&rs, "grafts"), "grafts");
                        t.add(&name, sys, "peers declared dead", field(&rs, "unresponsive"), "peers");
                        t.add(&name, sys, "peak RSS", peak_mib(&rs), "MiB");
                    }
                }
            }
        }
        other => bail!("unknown workload {other}"),
    }
    Ok(())
}
