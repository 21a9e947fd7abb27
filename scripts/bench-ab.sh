#!/usr/bin/env bash
# Side-by-side before/after of two revisions, on the same machine, in one
# sitting: builds rs2p-bench at BEFORE and AFTER (git worktrees, own target
# dirs under target/ab), then runs each in-process workload alternately
# (before, after, before, ...) RUNS times and prints medians and ranges.
# Usage: ./scripts/bench-ab.sh BEFORE AFTER [RUNS] [WORKLOAD...]
# A workload is the child's arguments, e.g. "rs2p-throughput 5 20000 100".
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
before=${1:?usage: bench-ab.sh BEFORE AFTER [RUNS] [WORKLOAD...]}
after=${2:?usage: bench-ab.sh BEFORE AFTER [RUNS] [WORKLOAD...]}
runs=${3:-5}
shift $(( $# < 3 ? $# : 3 ))
if [ $# -eq 0 ]; then
    set -- "rs2p-throughput 5 20000 100" "rs2p-throughput 10 20000 100" "rs2p-throughput 5 2000 10240" \
        "rs2p-throughput 10 2000 10240" "rs2p-latency 10 300" "rs2p-sync-chain 5 100000" "rs2p-sync-join 1000000"
fi
work="$root/target/ab"
mkdir -p "$work"
build() { # rev name
    local dir="$work/src-$2"
    rm -rf "$dir"
    git worktree prune
    git worktree add --detach "$dir" "$1" >/dev/null
    (cd "$dir" && CARGO_TARGET_DIR="$work/target-$2" cargo build --release -q -p rs2p-bench)
    cp "$work/target-$2/release/rs2p-bench" "$work/bench-$2"
    git worktree remove --force "$dir"
}
build "$before" before
build "$after" after
out="$work/results.txt"
: >"$out"
for w in "$@"; do
    for _ in $(seq "$runs"); do
        for v in before after; do
            # shellcheck disable=SC2086 # the workload is several arguments
            echo "$v | $w | $("$work/bench-$v" child $w 2>/dev/null | tail -1)" >>"$out"
        done
    done
done
python3 "$root/scripts/bench-table.py" "$out" before after
