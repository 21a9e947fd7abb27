#!/usr/bin/env bash
# The Python package's tests: builds and installs crates/py into a fresh
# virtualenv (.venv-py, with pytest and the pinned py2p reference peer),
# runs the package's own pytest suite, then py2p 0.7.878's own test modules
# (shipped inside the py2p package) with py2p's modules mapped to rs2p's.
# A missing Python is an error, not a skip. With --setup-only it stops after
# the install (the Python benchmark uses the same virtualenv).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
py=${PYTHON:-python3}
if ! command -v "$py" >/dev/null 2>&1; then
    echo "error: '$py' not found: the Python package's tests need Python 3.9+" >&2
    exit 1
fi
venv="$root/.venv-py"
stamp="$venv/.requirements"
reqs=$(cat scripts/py2p-requirements.txt scripts/python-test-requirements.txt)
if ! [ -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$reqs" ]; then
    echo "setting up $venv..." >&2
    rm -rf "$venv"
    "$py" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps \
        -r scripts/py2p-requirements.txt -r scripts/python-test-requirements.txt
    echo "$reqs" >"$stamp"
fi
# The README's install command, into this virtualenv.
"$venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps ./crates/py
"$venv/bin/python" -c "import rs2p, py2p.flags; print('rs2p', rs2p.__version__, 'installed')"
if [ "${1:-}" = "--setup-only" ]; then
    exit 0
fi
cd crates/py/tests
"$venv/bin/python" -m pytest -q -p no:cacheprovider .
# py2p's own suite, from the installed py2p package, on rs2p.
tests=$("$venv/bin/python" -c "import importlib.util, os; print(os.path.join(os.path.dirname(importlib.util.find_spec('py2p').origin), 'test'))")
PYTHONPATH="$root/crates/py/tests/py2p_suite" "$venv/bin/python" -m pytest -q -p no:cacheprovider -p py2p_as_rs2p \
    --rootdir "$tests" "$tests/test_mesh.py" "$tests/test_sync.py"
