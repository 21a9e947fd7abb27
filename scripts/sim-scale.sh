#!/usr/bin/env bash
# The broadcast at 1,000 and 10,000 simulated nodes (link delays 5-50 ms,
# 10% of the nodes failing and 5% joining a third of the way into a stream
# of 150 broadcasts from 3 senders), the tree beside py2p's flood. Prints
# markdown rows for BENCHMARKS.md. Usage: ./scripts/sim-scale.sh [SEEDS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release -p rs2p-proto --features sim --example sim_broadcast
seeds=${1:-1}
./target/release/examples/sim_broadcast 1000 "$seeds"
./target/release/examples/sim_broadcast 10000 "$seeds" | tail -n +3
