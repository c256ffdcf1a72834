#!/usr/bin/env bash
# The project's test command (what `make test` and CI run): the default suite, every test with a timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if [ "$#" -eq 0 ]; then  # the whole suite: lint and type check first (configuration in pyproject.toml)
  "$PY" -m ruff check --quiet . || { echo "test: ruff found problems (above)"; exit 1; }
  "$PY" -m mypy --no-error-summary || { echo "test: mypy found type errors (above)"; exit 1; }
fi
"$PY" -m pytest -q -p no:cacheprovider --timeout=600 -m "not slow" "$@"
