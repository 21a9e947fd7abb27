#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 600: the long campaign;
# CI runs a short one). Works on this stable toolchain through
# RUSTC_BOOTSTRAP=1 (cargo-fuzz needs nightly flags). Installs cargo-fuzz if
# missing. Runs on a copy of the committed seed corpus (fuzz/corpus), so the
# repository stays clean; a crash fails the script and leaves its input in
# fuzz/artifacts/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-600}
export RUSTC_BOOTSTRAP=1
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "installing cargo-fuzz..." >&2
    cargo install cargo-fuzz --locked --quiet
fi
cd "$root/fuzz"
cargo fuzz build --release >/dev/null 2>&1 || cargo fuzz build --release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
total=0
for target in frame_decoder node_inputs; do
    mkdir -p "$work/$target"
    cp -r "corpus/$target/." "$work/$target/"
    log="$work/$target.log"
    if ! cargo fuzz run --release "$target" "$work/$target" -- -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
        tail -40 "$log"
        echo "fuzz target $target FAILED (input saved under fuzz/artifacts/$target)" >&2
        exit 1
    fi
    runs=$(grep -o 'Done [0-9]* runs' "$log" | awk '{print $2}' | tail -1)
    echo "fuzz: $target: ${runs:-0} executions in ${secs} s, no crash"
    total=$((total + ${runs:-0}))
done
echo "fuzz: $total executions in total, no crash"
