"""PostgreSQL restarted under a running `grantline serve`, as an operator does for a minor
upgrade or a configuration change: while the database is down, requests that must be recorded
fail closed at once with an OAuth error, `/readyz` says the ledger cannot be written, and the
log says so in a few lines, not one every quarter second; when it is back, Grantline serves
again by itself, without a restart, and the ledger verifies.

On a cluster of the test's own (`pg_ctl stop -m fast`, then `start`), not the shared one."""
import json
import os
import shutil
import subprocess
import time

import requests

from conftest import ROOT, Cluster, Server, free_port, query, until

BINARY = os.environ.get("GRANTLINE_BIN", str(ROOT / "target/debug/grantline"))

HEALTH = "grantline_server::health:"


def readyz(server):
    # The metrics listener's /readyz (where probes point) says what each check saw.
    r = requests.get(server.probe_url, timeout=10)
    body = r.json()
    assert (r.status_code == 200) == body["ready"], (r.status_code, body)
    return body


def register(server):
    return requests.post(server.base + "/oauth/register", timeout=30, json={
        "client_name": "Restart test",
        "redirect_uris": ["http://127.0.0.1:7777/cb"],
        "token_endpoint_auth_method": "none",
    })


def test_grantline_rides_out_a_postgresql_restart(tmp_path):
    root = Cluster.root()
    data, log_path = tmp_path / "data", tmp_path / "server.log"
    data.mkdir()
    cluster, server = None, None
    try:
        cluster = Cluster(root, "pg").init()
        cluster.start()
        query(cluster.url(), "CREATE DATABASE grantline")
        # Longer than a request during the outage may take: it must not wait for it.
        url = cluster.url("grantline") + "?connect_timeout=5"
        probe = f"127.0.0.1:{free_port()}"
        server = Server(data, log_path, env={"GRANTLINE_DATABASE_URL": url, "NO_COLOR": "1",
                                             "GRANTLINE_METRICS_LISTEN": probe})
        server.probe_url = f"http://{probe}/readyz"
        server.start()
        until("ready", 60, lambda: readyz(server)["ready"])
        assert register(server).status_code == 201

        cluster.stop()
        started = time.time()
        r = register(server)
        took = time.time() - started
        assert r.status_code == 503, (r.status_code, r.text)
        assert r.json()["error"], r.text
        # Its read found PostgreSQL gone by a connection tried beside it after 0.5 s, not
        # after the connect timeout.
        assert took < 3, f"answered after {took:.1f} s"
        body = until("not ready, the ledger's check saying why", 30,
                     lambda: (b := readyz(server))["checks"]["ledger"]["ok"] is False and b)
        assert body["ready"] is False, body
        # Once a read found PostgreSQL gone, the reads behind /readyz fail at once and say
        # why, not "pool timed out" after the connect timeout.
        started = time.time()
        body = readyz(server)
        took = time.time() - started
        text = json.dumps(body)
        assert took < 1, f"/readyz answered after {took:.1f} s: {text}"
        assert "cannot be reached" in text and "pool timed out" not in text, text
        # More requests meanwhile: each failed closed, said once in the log.
        for _ in range(4):
            assert register(server).status_code == 503
        # Down for a while: the background loops fail again and again meanwhile.
        time.sleep(3)

        cluster.start()
        until("ready again", 60, lambda: readyz(server)["ready"])
        r = register(server)
        registered = time.time()
        assert r.status_code == 201, r.text
        # The audit indexer retries with a back-off that has grown to seconds by now; the
        # writer's commit of that registration cuts it short.
        until("the audit indexer reads again", 20,
              lambda: "the audit indexer works again" in log_path.read_text())
        lag = time.time() - registered
        assert lag < 1.5, f"the audit indexer read again {lag:.1f} s after a commit"
        server.stop()
        server = None
        verify = subprocess.run(
            [BINARY, "--data-dir", str(data), "--database", cluster.url("grantline"), "verify"],
            capture_output=True, text=True)
        assert verify.returncode == 0 and verify.stdout.startswith("ok:"), verify
    finally:
        if server:
            server.stop()
        if cluster:
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)

    log = log_path.read_text()
    lines = log.splitlines()
    readiness = [l.split(HEALTH, 1)[1].strip() for l in lines if HEALTH in l]
    assert readiness[0] == "ready" and readiness[-1] == "ready", readiness
    assert any(s.startswith("not ready") for s in readiness), readiness
    assert len(readiness) <= 4, readiness
    # The projection's catch-up ran every 250 ms while the database was down: said once when
    # it started failing and once when it worked again.
    warned = [l for l in lines if " WARN " in l and "catching up with the ledger failed" in l]
    assert len(warned) == 1, warned
    assert sum("catching up with the ledger works again" in l for l in lines) == 1, lines[-40:]
    # The writer's connection: gone once, back once.
    assert sum("PostgreSQL connection is gone" in l for l in lines) <= 3, lines[-40:]
    assert sum("connected to PostgreSQL again" in l for l in lines) >= 1, lines[-40:]
    # The audit indexer, retrying with a back-off: once when it starts failing, once when it
    # reads (and so indexes) the ledger again.
    assert sum(" WARN " in l and "the audit indexer failed" in l for l in lines) == 1, lines[-40:]
    assert sum("the audit indexer works again" in l for l in lines) == 1, lines[-40:]
    # The requests answered 503: the run said once when it started, once when it ended.
    closed = [l for l in lines if " ERROR " in l and "failing closed" in l]
    assert len(closed) == 1, closed
    assert sum("the ledger works again; requests are served" in l for l in lines) == 1, lines[-40:]
    # The reads: found unreachable once, with the reason, and reachable again once.
    unreachable = [l for l in lines if "PostgreSQL cannot be reached; statements that need a new connection" in l]
    assert len(unreachable) == 1 and " WARN " in unreachable[0], unreachable
    assert sum("PostgreSQL can be reached again" in l for l in lines) == 1, lines[-40:]
