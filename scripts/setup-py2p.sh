#!/usr/bin/env bash
# Creates .venv-py2p with the pinned reference peer (py2p 0.7.878) that the
# interop tests run. Idempotent; a missing Python is an error, not a skip.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv-py2p"
req="$root/scripts/py2p-requirements.txt"
py=${PYTHON:-python3}
if ! command -v "$py" >/dev/null 2>&1; then
    echo "error: '$py' not found: the interop tests need Python 3.11 to run py2p" >&2
    exit 1
fi
stamp="$venv/.requirements"
if [ -x "$venv/bin/python" ] && cmp -s "$req" "$stamp" && "$venv/bin/python" -c "import py2p.mesh, py2p.sync" 2>/dev/null; then
    exit 0
fi
echo "setting up $venv (py2p 0.7.878)..." >&2
rm -rf "$venv"
"$py" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$req"
"$venv/bin/python" -c "import py2p.mesh, py2p.sync"
cp "$req" "$stamp"
