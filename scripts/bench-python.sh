#!/usr/bin/env bash
# The Python benchmark: a 3-node chain of Python processes, the rs2p package
# against py2p 0.7.878 side by side (bench/python_chain.py), plus the idle
# memory of one Python node. Usage: ./scripts/bench-python.sh [--runs 3]
# [--messages 20000] [--size 100]. Prints each run, then the results as JSON.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
./scripts/test-python.sh --setup-only >&2
exec .venv-py/bin/python bench/python_chain.py "$@"
