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
python3 - "$out" <<'PY'
import collections, json, statistics, sys
d = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(sys.argv[1]):
    v, w, j = [x.strip() for x in line.split("|", 2)]
    for k, val in json.loads(j).items():
        d[w][(v, k)].append(val)
print("| workload | metric | unsigned: median [min-max] | signed: median [min-max] | signed/unsigned |")
print("|---|---|---|---|---|")
for w in d:
    for k in sorted({k for (_, k) in d[w]}):
        b, a = d[w].get(("unsigned", k), []), d[w].get(("signed", k), [])
        if not b or not a or k == "secs" or not isinstance(b[0], (int, float)):
            continue
        mb, ma = statistics.median(b), statistics.median(a)
        ratio = f"{ma / mb:.3f}" if mb else "-"
        print(f"| `{w}` | {k} | {mb:,.1f} [{min(b):,.0f}-{max(b):,.0f}] | {ma:,.1f} [{min(a):,.0f}-{max(a):,.0f}] | {ratio} |")
PY
