"""Starts a real `grantline serve` for the end-to-end tests, and a third-party MCP server
(tests/e2e/upstream_server.py) for it to protect.

The binary is `$GRANTLINE_BIN` (tools/test.sh sets it) or target/debug/grantline. Each server
gets its own data directory and SQLite ledger (the PostgreSQL paths are covered by the Rust
HTTP tests in crates/server/tests, which run on both backends).
"""
import json
import os
import pathlib
import random
import socket
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

ROOT = pathlib.Path(__file__).resolve().parents[2]
ADMIN_PASSWORD = "e2e-admin-password-7f3a"
RS_SECRET = "e2e-resource-server-secret-91c2-4f0a7d3b"

CONFIG = """
[oauth]
introspection_clients = ["resource-server"]
refresh_grace = 2
# Tests put load on the token endpoint (test_backup's client credentials in a loop); the
# limit itself is tested in crates/server/tests/oauth.rs.
tokens_per_hour = 1000000

[[clients]]
client_id = "resource-server"
client_name = "Resource server"
grant_types = ["client_credentials"]
scope = "demo:read"
secret_env = "GRANTLINE_E2E_RS_SECRET"
"""


_ports = random.Random()


def free_port():
    """A port no listener holds, below the kernel's ephemeral range. A port that binding to
    port 0 returns lies inside that range, and an outgoing connection (to the identity
    provider, say) can take it as its local port before the server binds it: CI once saw
    "Address already in use" that way."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(500):
        port = _ports.randrange(10000, max(10001, low))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, data_dir, log_path, config=CONFIG, extra_args=(), env=None):
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.data_dir = pathlib.Path(data_dir)
        self.log_path = pathlib.Path(log_path)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = None
        self.config = config

    def start(self):
        (self.data_dir / "grantline.toml").write_text(self.config)
        binary = os.environ.get("GRANTLINE_BIN", str(ROOT / "target/debug/grantline"))
        env = dict(os.environ)
        env.update(
            GRANTLINE_DATA_DIR=str(self.data_dir),
            GRANTLINE_CONFIG=str(self.data_dir / "grantline.toml"),
            GRANTLINE_ADMIN_PASSWORD=ADMIN_PASSWORD,
            GRANTLINE_E2E_RS_SECRET=RS_SECRET,
            GRANTLINE_LOG="debug,sqlx=warn,hyper=info,h2=info,rustls=info",
            NO_COLOR="1",
        )
        for k, v in self.extra_env.items():
            # None removes a variable (NO_COLOR, to see what the server decides by itself).
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [binary, "serve", "--listen", f"127.0.0.1:{self.port}", *self.extra_args],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("grantline exited: " + self.log_path.read_text()[-3000:])
            try:
                if requests.get(self.base + "/healthz", timeout=1).status_code == 200:
                    return self
            except (requests.ConnectionError, requests.Timeout):
                # Not listening yet, or listening but not answering within a second while it
                # starts on a busy machine: ask again until the deadline.
                time.sleep(0.1)
        raise RuntimeError("grantline did not start")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture
def server(tmp_path):
    (tmp_path / "data").mkdir(exist_ok=True)
    s = Server(tmp_path / "data", tmp_path / "server.log")
    s.start()
    yield s
    s.stop()


# The embedded default's demo resource, with access tokens that expire after 4 seconds so the
# MCP SDK has to refresh on its own.
MCP_CONFIG = """
[oauth]
access_token_ttl = 4
refresh_grace = 2
"""


WEBHOOK_SECRET = "whsec-e2e-3c1d9a7f2b6e4085"


class Receiver:
    """A local HTTP receiver (an OTLP collector's or a SIEM's stand-in): answers every POST
    with 200 and keeps (path, content type, body) of each, and in `headers` each one's
    headers."""

    def __init__(self):
        self.bodies = []
        self.headers = []
        received, headers = self.bodies, self.headers
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with lock:  # a body and its headers at the same index
                    received.append((self.path, self.headers.get("content-type"), body))
                    headers.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def stop(self):
        self.http.shutdown()


@pytest.fixture
def mcp_server(tmp_path):
    (tmp_path / "data").mkdir(exist_ok=True)
    # Prometheus scrapes /metrics on an address of its own; a SIEM takes pushed events.
    metrics_port = free_port()
    siem = Receiver()
    (tmp_path / "webhook.secret").write_text(WEBHOOK_SECRET + "\n")
    config = MCP_CONFIG + f'''
[metrics]
listen = "127.0.0.1:{metrics_port}"

[[audit.sinks]]
name = "siem"
kind = "webhook"
url = "{siem.url}/events"
format = "jsonl"
secret_file = "{tmp_path / 'webhook.secret'}"
'''
    s = Server(tmp_path / "data", tmp_path / "server.log", config)
    s.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    s.siem = siem
    s.start()
    yield s
    s.stop()
    siem.stop()


class Upstream:
    """A third-party MCP server (tests/e2e/upstream_server.py, the MCP Python SDK) on a free
    loopback port; `seen()` is every HTTP request it received."""

    def __init__(self, tmp_path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.seen_file = tmp_path / "upstream-seen.jsonl"
        self.log_path = tmp_path / "upstream.log"
        self.proc = None

    def start(self):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(pathlib.Path(__file__).with_name("upstream_server.py")),
             str(self.port), str(self.seen_file)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("upstream exited: " + self.log_path.read_text()[-3000:])
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("upstream did not start")

    def seen(self):
        if not self.seen_file.exists():
            return []
        return [json.loads(l) for l in self.seen_file.read_text().splitlines() if l.strip()]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture
def upstream(tmp_path):
    u = Upstream(tmp_path).start()
    yield u
    u.stop()


# The demo, and the third-party upstream mounted at /mcp/notes.
GATEWAY_CONFIG = """
[[resources]]
name = "demo"
path = "/mcp/demo"
upstream = "builtin:demo"
scopes = [{{ name = "demo:read" }}, {{ name = "demo:write" }}]
default_scopes = ["demo:read"]

[[resources]]
name = "notes"
path = "/mcp/notes"
description = "A third-party MCP server (the MCP Python SDK) behind the gateway"
upstream = "{upstream}"
scopes = [
  {{ name = "notes:read", description = "Read notes" }},
  {{ name = "notes:write", description = "Add notes" }},
]
default_scopes = ["notes:read"]
"""


@pytest.fixture
def gateway_server(tmp_path, upstream):
    (tmp_path / "data").mkdir(exist_ok=True)
    s = Server(tmp_path / "data", tmp_path / "server.log", GATEWAY_CONFIG.format(upstream=upstream.url))
    s.start()
    yield s
    s.stop()


@pytest.fixture
def audit_server(tmp_path):
    """The embedded default (the demo and the audit resource), checkpointing every second so
    each event soon has an inclusion proof."""
    (tmp_path / "data").mkdir(exist_ok=True)
    s = Server(tmp_path / "data", tmp_path / "server.log", MCP_CONFIG,
               extra_args=["--checkpoint-interval", "1"])
    s.start()
    yield s
    s.stop()


def until(what, secs, done):
    """Polls `done` until it returns something true, and returns that; fails after `secs`."""
    deadline = time.time() + secs
    while time.time() < deadline:
        result = done()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {secs} s")


# PostgreSQL server binaries, for tests that run a cluster of their own (restarts, archiving).

def pg_bin():
    found = sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: [int(x) for x in p.parent.parent.name.split(".") if x.isdigit()])
    return found[-1].parent if found else None


def as_postgres(*cmd, **kw):
    """Runs a PostgreSQL server binary as the `postgres` user (it refuses to run as root)."""
    prefix = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]
    p = subprocess.run([*prefix, *map(str, cmd)], capture_output=True, text=True, **kw)
    assert p.returncode == 0, f"{cmd[0]} exited {p.returncode}: {p.stdout}\n{p.stderr}"
    return p


def query(url, sql):
    return subprocess.run(["psql", "-At", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
                          check=True, capture_output=True, text=True).stdout.strip()


class Cluster:
    """A PostgreSQL cluster of a test's own (one the test may stop, restart or configure, so
    not the shared throwaway one), run as the `postgres` user with its data under `root`."""

    @staticmethod
    def binaries():
        """The server binaries' directory; without them (or, as root, without `runuser` and a
        `postgres` user) the test is skipped, and fails under CI=true."""
        binaries = pg_bin()
        usable = binaries is not None
        if usable and os.geteuid() == 0:
            import pwd
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                usable = False
            usable = usable and shutil.which("runuser") is not None
        if not usable:
            if os.environ.get("CI") == "true":
                pytest.fail("CI=true but PostgreSQL's server binaries (or runuser, or the "
                            "postgres user) are missing")
            pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql")
        return binaries

    def __init__(self, root, name):
        self.binaries = Cluster.binaries()
        self.root = pathlib.Path(root)
        self.data = self.root / name
        self.port = free_port()
        self.running = False

    @staticmethod
    def root():
        """A directory the `postgres` user may write: under /tmp itself, as pytest's own
        directories are closed to other users. Skips the test first without PostgreSQL."""
        Cluster.binaries()
        root = pathlib.Path(tempfile.mkdtemp(prefix="grantline-pg."))
        root.chmod(0o755)
        if os.geteuid() == 0:
            shutil.chown(root, "postgres")
        return root

    def init(self):
        as_postgres(self.binaries / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust",
                    "-E", "UTF8", "--no-locale")
        return self

    def start(self):
        as_postgres(self.binaries / "pg_ctl", "-D", self.data, "-l", self.root / f"{self.data.name}.log",
                    "-w", "-t", "120", "-o",
                    f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root}",
                    "start")
        self.running = True
        return self

    def stop(self):
        """A fast shutdown: open connections are closed, as in a restart or a failover."""
        if self.running:
            subprocess.run(([] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]) +
                           [str(self.binaries / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop"],
                           capture_output=True)
            self.running = False

    def url(self, database="postgres"):
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"
