#!/usr/bin/env bash
# The whole test suite, with everything it needs set up here and torn down afterwards:
#   - Debian's rsyslog, chromium and chromium-driver, installed when missing;
#   - a throwaway PostgreSQL cluster (so the PostgreSQL half of every backend test really runs);
#   - a Python virtualenv (.venv) with the third-party clients the end-to-end tests drive
#     Grantline with: the MCP SDK, an OAuth client, Selenium, the offline OCSF validator and a
#     CEF parser (tests/requirements.txt);
#   - the MCP TypeScript SDK for the end-to-end tests (npm ci in tests/e2e/ts);
#   - npm's oidc-provider as the upstream identity provider of the federation tests (npm ci in
#     tests/e2e/idp);
# then the Rust tests (cargo nextest, else cargo test) and the Python end-to-end tests.
# Extra arguments go to the Rust test runner.
#
#   tools/test.sh
#   GRANTLINE_TEST_DATABASE_URL=postgres://… tools/test.sh   # use an existing server instead
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive as real parts: rsyslog (the syslog sink's receiver), and
# Chromium with its driver (the audit page in a browser). Installed when missing.
need=()
[ -x /usr/sbin/rsyslogd ] || need+=(rsyslog)
# curl: the incident-response runbook (docs/incident-response.md) uses it, and its test runs it.
command -v curl >/dev/null || need+=(curl)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
# What the machine is expected to have, installed too when missing: PostgreSQL's server (the
# throwaway cluster), Python's venv module, Node and npm (the MCP TypeScript SDK needs Node 20
# or later, which Debian 12's own nodejs is not: see the README).
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
python3 -c "import ensurepip" 2>/dev/null || need+=(python3-venv)
command -v npm >/dev/null || need+=(nodejs npm)
if [ ${#need[@]} -gt 0 ]; then
  echo "test.sh: installing ${need[*]} from Debian's packages" >&2
  as_root=""
  [ "$(id -u)" = 0 ] || as_root="sudo"
  $as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The whole suite is not an edit loop: incremental artefacts would only add gigabytes to target/.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
echo "test.sh: $(df -h --output=avail . | tail -n 1 | tr -d ' ') free on the disk of target/" >&2
echo "test.sh: building (first run compiles every dependency; several minutes on 2 cores)" >&2
# Quiet when it builds; when it does not, the compiler's whole account of why.
build_log=$(mktemp)
if ! cargo build --workspace --all-targets --locked >"$build_log" 2>&1; then
  cat "$build_log" >&2
  rm -f "$build_log"
  exit 1
fi
tail -n 3 "$build_log" >&2
rm -f "$build_log"

# The virtualenv is rebuilt whenever tests/requirements.txt changes.
want=$(sha256sum tests/requirements.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.requirements 2>/dev/null)" != "$want" ]; then
  echo "test.sh: creating .venv with tests/requirements.txt" >&2
  rm -rf .venv
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
  echo "$want" > .venv/.requirements
fi

# The MCP TypeScript SDK the end-to-end tests drive (tests/e2e/ts), reinstalled whenever its
# package-lock.json changes. Needs Node >= 20 and npm.
want=$(sha256sum tests/e2e/ts/package-lock.json | cut -d' ' -f1)
if [ ! -d tests/e2e/ts/node_modules ] || [ "$(cat tests/e2e/ts/node_modules/.lock-sha256 2>/dev/null)" != "$want" ]; then
  echo "test.sh: npm ci in tests/e2e/ts" >&2
  (cd tests/e2e/ts && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" > tests/e2e/ts/node_modules/.lock-sha256
fi
# The upstream identity providers of the federation tests (tests/e2e/idp: npm's oidc-provider,
# and jose for the deliberately wrong one), reinstalled whenever their package-lock.json changes.
want=$(sha256sum tests/e2e/idp/package-lock.json | cut -d' ' -f1)
if [ ! -d tests/e2e/idp/node_modules ] || [ "$(cat tests/e2e/idp/node_modules/.lock-sha256 2>/dev/null)" != "$want" ]; then
  echo "test.sh: npm ci in tests/e2e/idp" >&2
  (cd tests/e2e/idp && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" > tests/e2e/idp/node_modules/.lock-sha256
fi
export GRANTLINE_E2E_REQUIRE_NODE=1

export GRANTLINE_BIN="$PWD/target/debug/grantline"
if [ -n "${GRANTLINE_TEST_DATABASE_URL:-}" ]; then
  exec tools/run-tests.sh "$@"
fi
exec tools/throwaway-postgres.sh tools/run-tests.sh "$@"
