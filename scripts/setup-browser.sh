#!/usr/bin/env bash
# Installs the headless browser the report test needs (Chromium's headless
# shell, from Debian's packages) unless one is already on the PATH.
set -euo pipefail
for b in chromium-headless-shell chromium chromium-browser google-chrome; do
  if command -v "$b" >/dev/null 2>&1; then exit 0; fi
done
if [ "$(id -u)" -ne 0 ]; then
  echo "setup-browser: no headless browser, and not root to install one (apt-get install chromium-headless-shell)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium-headless-shell >/dev/null
command -v chromium-headless-shell >/dev/null
