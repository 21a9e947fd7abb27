#!/usr/bin/env bash
# What signing broadcasts costs (#13), side by side in one sitting: runs
# each in-process workload of the current build alternately with signing
# off (RS2P_SIGN=0) and on, RUNS times, and prints medians and ranges.
# Usage: ./scripts/bench-signing.sh [RUNS] [WORKLOAD...]
# A workload is the child's arguments, e.g. "rs2p-throughput 5 20000 100".
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
runs=${1:-5}
shift $(( $# < 1 ? $# : 1 ))
if [ $# -eq 0 ]; then
    set -- "rs2p-throughput 5 20000 100" "rs2p-throughput 5 2000 10240" "rs2p-latency 10 300" \
        "rs2p-sync-chain 5 100000" "rs2p-mesh 20 4 20000 100 0" "rs2p-mesh 100 3 1000 100 5"
fi
cargo build --release -q -p rs2p-bench
bench="$root/target/release/rs2p-bench"
out="$root/target/bench-signing.txt"
: >"$out"
for w in "$@"; do
    for _ in $(seq "$runs"); do
        for v in unsigned signed; do
            sign=$([ "$v" = signed ] && echo 1 || echo 0)
            # shellcheck disable=SC2086 # the workload is several arguments
            echo "$v | $w | $(RS2P_SIGN=$sign "$bench" child $w 2>/dev/null | tail -1)" >>"$out"
        done
    done
done
python3 "$root/scripts/bench-table.py" "$out" unsigned signed
