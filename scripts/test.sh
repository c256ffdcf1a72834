#!/usr/bin/env bash
# The project's test command (what `make test` and CI run): the default suite, every test with a timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
"$PY" -m pytest -q -p no:cacheprovider --timeout=600 -m "not slow" "$@"
