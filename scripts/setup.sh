#!/usr/bin/env bash
# Installs what ftrain needs on a fresh Debian/Ubuntu machine: system packages (when root),
# torch 2.13.0 (CPU) when no torch is present, then ftrain itself with its test extras.
# Idempotent: re-running skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
APT_PACKAGES="libisal2 prometheus openssh-server openssh-client"

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  missing=""
  for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    echo "setup: apt-get install$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    # the Debian prometheus package starts a system service; tests run their own instances
    (systemctl stop prometheus 2>/dev/null || service prometheus stop 2>/dev/null || pkill -x prometheus) >/dev/null 2>&1 || true
  fi
else
  echo "setup: not root (or no apt): skipping system packages ($APT_PACKAGES); ISA-L falls back to numpy"
fi

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "setup: installing torch 2.13.0 (CPU)"
  "$PY" -m pip install -q torch==2.13.0
fi
"$PY" -m pip install -q -e ".[dev,examples]"
echo "setup: done ($("$PY" -c 'import torch, ftrain; print("torch", torch.__version__, "ftrain", ftrain.__version__)'))"
