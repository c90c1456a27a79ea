#!/usr/bin/env bash
# The whole test suite, with everything it needs set up here and torn down afterwards:
#   - a throwaway PostgreSQL cluster (so the PostgreSQL half of every backend test really runs);
#   - a Python virtualenv (.venv) with the third-party OAuth client the end-to-end tests drive
#     Grantline with (tests/requirements.txt);
# then the Rust tests (cargo nextest, else cargo test) and the Python end-to-end tests.
# Extra arguments go to the Rust test runner.
#
#   tools/test.sh
#   GRANTLINE_TEST_DATABASE_URL=postgres://… tools/test.sh   # use an existing server instead
set -euo pipefail
cd "$(dirname "$0")/.."

echo "test.sh: building (first run compiles every dependency; several minutes on 2 cores)" >&2
cargo build --workspace --all-targets --locked 2>&1 | tail -n 3 >&2

# The virtualenv is rebuilt whenever tests/requirements.txt changes.
want=$(sha256sum tests/requirements.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.requirements 2>/dev/null)" != "$want" ]; then
  echo "test.sh: creating .venv with tests/requirements.txt" >&2
  rm -rf .venv
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
  echo "$want" > .venv/.requirements
fi

export GRANTLINE_BIN="$PWD/target/debug/grantline"
if [ -n "${GRANTLINE_TEST_DATABASE_URL:-}" ]; then
  exec tools/run-tests.sh "$@"
fi
exec tools/throwaway-postgres.sh tools/run-tests.sh "$@"
