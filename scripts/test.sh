#!/usr/bin/env bash
# The test command: installs the pinned py2p peer, then runs every test of
# the workspace (unit, property, simulation, driver, loopback, hostile
# input, TLS and py2p interop), then the Python package's tests (its own
# suite, and py2p's own test modules against it), then a short run of every
# fuzz target, then a short fault lab (5 node processes in their own network
# namespaces under kills, freezes, partitions and clock skew; the long
# campaign: scripts/faultlab.py campaign).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
./scripts/setup-py2p.sh
./scripts/setup-browser.sh
./scripts/setup-faultlab.sh
export RS2P_PY2P_PYTHON="$root/.venv-py2p/bin/python"
report=$(mktemp)
trap 'rm -f "$report"' EXIT
export RS2P_SIM_REPORT="$report"
# The Python extension (rs2p-py) is tested from Python, below.
cargo test --workspace --exclude rs2p-bench-libp2p --exclude rs2p-py --release "$@"
cat "$report"
./scripts/test-python.sh
# A short run of every fuzz target (the long campaign: ./scripts/fuzz.sh).
./scripts/fuzz.sh "${RS2P_FUZZ_SECONDS:-20}"
# The fault lab runs the release node binary (built by `cargo test` above
# only in its test profile).
cargo build --release -p rs2p-cli
python3 scripts/faultlab.py selftest
python3 scripts/faultlab.py run --nodes 5 --seconds 40 --seed "${RS2P_FAULTLAB_SEED:-1}" --py2p 1
