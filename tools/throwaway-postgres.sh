#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster (initdb/pg_ctl as the `postgres` user, a free port,
# a temporary directory), runs the given command with GRANTLINE_TEST_DATABASE_URL pointing at
# it, then stops the cluster and removes the directory — whatever the command's outcome.
#
#   tools/throwaway-postgres.sh cargo nextest run --workspace
set -euo pipefail

PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ]; then
  echo "throwaway-postgres: no PostgreSQL server binaries under /usr/lib/postgresql/*/bin" >&2
  exit 1
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dir=$(mktemp -d /tmp/grantline-pg.XXXXXX)
chmod 755 "$dir"
as_pg() {
  if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi
}
if [ "$(id -un)" != postgres ]; then chown postgres "$dir"; fi

cleanup() {
  as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

as_pg "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 \
  || { cat "$dir/initdb.log" >&2; exit 1; }
as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
  -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c max_connections=300 -c fsync=on" \
  start >/dev/null || { cat "$dir/server.log" >&2; exit 1; }

export GRANTLINE_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
echo "throwaway-postgres: PostgreSQL on 127.0.0.1:$port ($dir)" >&2
set +e
"$@"
status=$?
set -e
exit $status
