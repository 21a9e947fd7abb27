#!/usr/bin/env bash
# Installs what the fault lab needs (iproute2's `ip`, libfaketime) from
# Debian's packages unless present. Network namespaces need root.
set -euo pipefail
lib=/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1
if command -v ip >/dev/null 2>&1 && [ -e "$lib" ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "setup-faultlab: missing ip or libfaketime, and not root to install them (apt-get install iproute2 faketime)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq iproute2 faketime >/dev/null
command -v ip >/dev/null && [ -e "$lib" ]
