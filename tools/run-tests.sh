#!/usr/bin/env bash
# Runs the Rust tests and the Python end-to-end tests; fails if either fails. Called by
# tools/test.sh once PostgreSQL and the virtualenv are ready.
set -uo pipefail
cd "$(dirname "$0")/.."

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
rust=$?

echo "run-tests: Python end-to-end tests (tests/e2e)" >&2
.venv/bin/python -m pytest -q tests/e2e
python=$?

if [ $rust -ne 0 ] || [ $python -ne 0 ]; then
  echo "run-tests: FAILED (rust exit $rust, python exit $python)" >&2
  exit 1
fi
