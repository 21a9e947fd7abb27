#!/usr/bin/env bash
# The benchmark suite: every workload against rs2p, the rs2p CLI (across
# processes), the limit program, py2p 0.7.878 and libp2p gossipsub, side by
# side in one run. Usage: ./scripts/bench.sh [all|throughput|latency|...]
# [--runs N] [--systems rs2p,limit,...]. Prints a markdown table.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
./scripts/setup-py2p.sh
cargo build --release -p rs2p-cli -p rs2p-bench
exec ./target/release/rs2p-bench "${@:-all}"
