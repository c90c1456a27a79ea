#!/usr/bin/env bash
# The whole test suite, with everything it needs set up here and torn down afterwards:
# a throwaway PostgreSQL cluster (so the PostgreSQL half of every backend test really runs).
# Extra arguments go to the test runner (cargo nextest, else cargo test).
#
#   tools/test.sh
#   GRANTLINE_TEST_DATABASE_URL=postgres://… tools/test.sh   # use an existing server instead
set -euo pipefail
cd "$(dirname "$0")/.."

if cargo nextest --version >/dev/null 2>&1; then
  runner=(cargo nextest run --workspace --no-fail-fast)
else
  runner=(cargo test --workspace --no-fail-fast)
fi

echo "test.sh: building (first run compiles every dependency; a few minutes on 2 cores)" >&2
cargo build --workspace --all-targets --locked 2>&1 | tail -n 3 >&2

if [ -n "${GRANTLINE_TEST_DATABASE_URL:-}" ]; then
  exec "${runner[@]}" "$@"
fi
exec tools/throwaway-postgres.sh "${runner[@]}" "$@"
