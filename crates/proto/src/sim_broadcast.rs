//! The broadcast at scale, in the simulator with its latency model: a
//! network forms through the real protocol, settles, then carries a paced
//! stream of broadcasts while nodes fail and others join, and the run is
//! measured: relative message redundancy, last-delivery hop, missed
//! deliveries, latency and repair time.
//!
//! `cargo test` runs small networks (`mesh::tests`); the example
//! `sim_broadcast` and `scripts/sim-scale.sh` run 1,000 and 10,000 nodes.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::id::Protocol;
use crate::mesh::{Broadcast, Event};
use crate::sim::{config_for, Sim};

/// What to run.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Nodes present from the start.
    pub nodes: usize,
    /// Nodes that join a third of the way into the stream.
    pub joiners: usize,
    /// Nodes (not senders) that fail a third of the way into the stream.
    pub killed: usize,
    /// Nodes that broadcast, in turn.
    pub senders: usize,
    /// Broadcasts in the measured stream.
    pub messages: usize,
    /// Simulated milliseconds between two broadcasts.
    pub pace_ms: u64,
    /// One-way link delay, drawn per link from this range (ms).
    pub latency_ms: (u64, u64),
    /// The broadcast strategy of every node.
    pub broadcast: Broadcast,
    /// Seeds the topology, the delays and the failures.
    pub seed: u64,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            nodes: 200,
            joiners: 0,
            killed: 0,
            senders: 3,
            messages: 150,
            pace_ms: 20,
            latency_ms: (5, 50),
            broadcast: Broadcast::Tree,
            seed: 1,
        }
    }
}

/// What was measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Copies received and suppressed per delivery, over the stream.
    pub rmr: f64,
    /// Mean over messages of the hop count of the last node reached.
    pub last_hop_mean: f64,
    /// The highest hop count of any delivery.
    pub last_hop_max: u32,
    /// Deliveries expected at nodes up for the whole stream.
    pub expected: usize,
    /// Of those, the ones that never happened.
    pub missed: usize,
    /// Which: (message number, node).
    pub missed_pairs: Vec<(usize, usize)>,
    /// Messages handed to an application more than once.
    pub delivered_twice: usize,
    /// Joiners' deliveries missing, of messages sent from one second after
    /// they joined.
    pub joiner_missed: usize,
    /// Publish to delivery, over every delivery (ms): median, 99th
    /// percentile.
    pub latency_p50_ms: u64,
    /// See `latency_p50_ms`.
    pub latency_p99_ms: u64,
    /// The slowest delivery of a message sent before the failures (ms).
    pub worst_before_ms: u64,
    /// The slowest delivery of a message sent in the two seconds after the
    /// failures (ms): how long the repair made anyone wait.
    pub worst_after_ms: u64,
    /// Grafts, wants and prunes over the stream, all nodes.
    pub grafts: u64,
    /// See `grafts`.
    pub wants: u64,
    /// See `grafts`.
    pub prunes: u64,
}

fn percentile(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p) as usize]
}

/// Runs `s` and measures it.
///
/// # Panics
/// If the network does not connect while forming.
pub fn run(s: &Scenario) -> Report {
    let total = s.nodes + s.joiners;
    let protocol = Protocol::default();
    let cfgs = (0..total)
        .map(|i| {
            let mut c = config_for(i, &protocol);
            c.broadcast = s.broadcast;
            c
        })
        .collect();
    let mut sim = Sim::with_configs(cfgs);
    let mut rng = StdRng::seed_from_u64(s.seed);
    sim.set_latency(s.latency_ms.0, s.latency_ms.1, s.seed);
    for j in s.nodes..total {
        sim.down[j] = true;
    }
    // Formation: each node joins through a random earlier one; peer
    // exchange and upkeep fill the outgoing targets.
    for i in 1..s.nodes {
        let to = rng.random_range(0..i);
        sim.connect(i, to);
    }
    sim.advance(15_000);
    assert!(sim.connected(), "the simulated network did not connect");
    let senders: Vec<usize> = (0..s.senders.min(s.nodes)).collect();
    // Warm-up: the tree settles on the first messages of each sender.
    for k in 0..20 {
        for &x in &senders {
            sim.broadcast_text(x, &format!("warm-{x}-{k}"));
        }
        sim.advance(s.pace_ms.max(1));
    }
    sim.advance(3_000);
    let before: Vec<_> = (0..total).map(|i| (sim.nodes[i].mesh().stats(), sim.nodes[i].mesh().tree_stats())).collect();
    let first_event: Vec<usize> = sim.events.iter().map(Vec::len).collect();

    // The stream, with churn a third of the way in.
    let churn_at = s.messages / 3;
    let mut published: Vec<(usize, u64)> = Vec::with_capacity(s.messages);
    let mut killed: Vec<usize> = Vec::new();
    let mut churn_ms = u64::MAX;
    for k in 0..s.messages {
        if k == churn_at && (s.killed > 0 || s.joiners > 0) {
            churn_ms = sim.now.mono_ms;
            let mut candidates: Vec<usize> = (s.senders..s.nodes).collect();
            candidates.shuffle(&mut rng);
            killed = candidates.into_iter().take(s.killed).collect();
            for &i in &killed {
                sim.kill(i);
            }
            for j in s.nodes..total {
                sim.down[j] = false;
                let live: Vec<usize> = (0..s.nodes).filter(|i| !sim.down[*i]).collect();
                let to = live[rng.random_range(0..live.len())];
                sim.connect(j, to);
            }
        }
        let x = senders[k % senders.len()];
        published.push((x, sim.now.mono_ms));
        sim.broadcast_text(x, &format!("m{k}"));
        sim.advance(s.pace_ms);
    }
    sim.advance(10_000);

    // Deliveries of the stream: (message, node) -> (time, from node).
    let mut deliveries: HashMap<(usize, usize), (u64, usize)> = HashMap::new();
    let mut delivered_twice = 0;
    for (i, &first) in first_event.iter().enumerate() {
        for (e, &t) in sim.events[i][first..].iter().zip(&sim.event_ms[i][first..]) {
            let Event::Message(d) = e else { continue };
            let Ok(v) = d.packet.values() else { continue };
            let Some(k) = v.first().and_then(|x| x.as_str()).and_then(|t| t.strip_prefix('m')?.parse::<usize>().ok())
            else {
                continue;
            };
            let from = sim.conn_peer.get(&d.conn).copied().unwrap_or(usize::MAX);
            if deliveries.insert((k, i), (t, from)).is_some() {
                delivered_twice += 1;
            }
        }
    }
    // Hops: in time order, one more than the node it came from.
    let mut order: Vec<_> = deliveries.iter().collect();
    order.sort_by_key(|(_, (t, _))| *t);
    let mut hops: HashMap<(usize, usize), u32> = HashMap::new();
    let mut last_hop = vec![0u32; s.messages];
    for (&(k, i), &(_, from)) in order.into_iter() {
        let prev = if from == published[k].0 { 0 } else { hops.get(&(k, from)).copied().unwrap_or(0) };
        let h = prev + 1;
        hops.insert((k, i), h);
        last_hop[k] = last_hop[k].max(h);
    }
    let alive_throughout = |i: usize| i < s.nodes && !killed.contains(&i);
    let mut expected = 0;
    let mut missed = 0;
    let mut missed_pairs = Vec::new();
    let mut joiner_missed = 0;
    let mut latencies = Vec::new();
    let (mut worst_before, mut worst_after) = (0, 0);
    for (k, &(x, at)) in published.iter().enumerate() {
        for i in 0..total {
            if i == x {
                continue;
            }
            let got = deliveries.get(&(k, i));
            if alive_throughout(i) {
                expected += 1;
                if got.is_none() {
                    missed += 1;
                    missed_pairs.push((k, i));
                }
            } else if i >= s.nodes && churn_ms != u64::MAX && at >= churn_ms + 1_000 && got.is_none() {
                joiner_missed += 1;
            }
            if let Some(&(t, _)) = got {
                let lat = t - at;
                latencies.push(lat);
                if at < churn_ms {
                    worst_before = worst_before.max(lat);
                } else if at < churn_ms.saturating_add(2_000) {
                    worst_after = worst_after.max(lat);
                }
            }
        }
    }
    let (mut dups, mut delivered, mut grafts, mut wants, mut prunes) = (0u64, 0u64, 0, 0, 0);
    for (i, (st0, tr0)) in before.iter().enumerate() {
        let st = sim.nodes[i].mesh().stats();
        dups += st.duplicates - st0.duplicates;
        delivered += st.delivered - st0.delivered;
        if let (Some(t), Some(t0)) = (sim.nodes[i].mesh().tree_stats(), tr0) {
            grafts += t.grafts - t0.grafts;
            wants += t.wants - t0.wants;
            prunes += t.prunes - t0.prunes;
        }
    }
    let mut lat_for_p = latencies.clone();
    let p50 = percentile(&mut lat_for_p, 0.5);
    let p99 = percentile(&mut lat_for_p, 0.99);
    Report {
        rmr: dups as f64 / delivered.max(1) as f64,
        last_hop_mean: last_hop.iter().map(|&h| f64::from(h)).sum::<f64>() / s.messages.max(1) as f64,
        last_hop_max: last_hop.iter().copied().max().unwrap_or(0),
        expected,
        missed,
        missed_pairs,
        delivered_twice,
        joiner_missed,
        latency_p50_ms: p50,
        latency_p99_ms: p99,
        worst_before_ms: worst_before,
        worst_after_ms: worst_after,
        grafts,
        wants,
        prunes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The small version of the scale runs (`scripts/sim-scale.sh` runs
    /// 1,000 and 10,000 nodes): with link delays of 5-50 ms, 10% of the
    /// nodes failing and 5% joining mid-stream.
    #[test]
    fn the_tree_delivers_what_flooding_does_at_a_fraction_of_the_copies() {
        for seed in [1, 2] {
            let s = Scenario { nodes: 150, joiners: 7, killed: 15, seed, ..Scenario::default() };
            let tree = run(&s);
            let flood = run(&Scenario { broadcast: Broadcast::Flood, ..s.clone() });
            let ctx = format!(
                "seed {seed}: tree RMR {} hops {}, flood RMR {} hops {}",
                tree.rmr, tree.last_hop_mean, flood.rmr, flood.last_hop_mean
            );
            assert!(tree.expected > 15_000, "{ctx}");
            // What flooding delivers, the tree delivers (a node cut off by the
            // failures while a message passes misses it in both).
            let beyond: Vec<_> = tree.missed_pairs.iter().filter(|p| !flood.missed_pairs.contains(p)).collect();
            assert!(beyond.is_empty(), "missed only by the tree: {beyond:?}; {ctx}");
            assert_eq!((tree.delivered_twice, flood.delivered_twice), (0, 0), "{ctx}");
            assert_eq!(tree.joiner_missed, 0, "{ctx}");
            assert!(tree.rmr < 0.5 && flood.rmr > 3.0, "{ctx}");
            assert!(tree.last_hop_mean <= 1.5 * flood.last_hop_mean, "{ctx}");
            assert!(tree.prunes > 0 || tree.grafts > 0, "the tree did repair work: {ctx}");
        }
    }
}
