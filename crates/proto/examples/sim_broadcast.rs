//! The broadcast at scale in the simulator (see `rs2p_proto::sim_broadcast`):
//! `cargo run --release -p rs2p-proto --features sim --example sim_broadcast --
//! NODES [SEEDS]` runs the tree and py2p's flood side by side, with 10% of
//! the nodes failing and 5% joining a third of the way into the stream, and
//! prints one markdown row per run.

use std::time::Instant;

use rs2p_proto::mesh::Broadcast;
use rs2p_proto::sim_broadcast::{run, Scenario};

fn main() {
    let mut args = std::env::args().skip(1);
    let nodes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000);
    let seeds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    println!("| nodes | strategy | seed | RMR | last hop mean / max | missed (of expected) | of which flood delivered | joiners missed | latency p50 / p99 (ms) | worst delay before / after failures (ms) | grafts / wants / prunes | wall (s) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for seed in 1..=seeds {
        let mut rows = Vec::new();
        let mut missed = Vec::new();
        for (name, broadcast) in [("tree", Broadcast::Tree), ("flood", Broadcast::Flood)] {
            let s = Scenario {
                nodes,
                joiners: nodes / 20,
                killed: nodes / 10,
                messages: 150,
                broadcast,
                seed,
                ..Scenario::default()
            };
            let t = Instant::now();
            let r = run(&s);
            missed.push(r.missed_pairs.clone());
            rows.push(format!(
                "| {nodes} | {name} | {seed} | {:.3} | {:.2} / {} | {} ({}) | BEYOND | {} | {} / {} | {} / {} | {} / {} / {} | {:.0} |",
                r.rmr,
                r.last_hop_mean,
                r.last_hop_max,
                r.missed,
                r.expected,
                r.joiner_missed,
                r.latency_p50_ms,
                r.latency_p99_ms,
                r.worst_before_ms,
                r.worst_after_ms,
                r.grafts,
                r.wants,
                r.prunes,
                t.elapsed().as_secs_f64()
            ));
        }
        // The tree's misses that flooding delivered (same seed, same
        // topology and failures).
        let beyond = missed[0].iter().filter(|p| !missed[1].contains(p)).count();
        println!("{}", rows[0].replace("BEYOND", &beyond.to_string()));
        println!("{}", rows[1].replace("BEYOND", "-"));
    }
}
