"""Readiness as an operator's log shows it: `grantline serve` writes one line each time
readiness changes (ready, not ready with the reason, ready again) and nothing in between; and
its log, written to a file rather than a terminal, carries no colour codes even though
`NO_COLOR` is not set.

The ledger is made unwritable the way a full disk would: a trigger, created from another
connection, that refuses every new row. The server finds out through its write probe, without
any request."""
import sqlite3
import time

import requests

from conftest import Server, free_port, until

HEALTH = "grantline_server::health:"


def readiness_lines(log_path):
    return [l for l in log_path.read_text().splitlines() if HEALTH in l]


def readyz(server, want):
    # The metrics listener's /readyz (where probes point) says what each check saw; the main
    # listener's says so only to the metrics token.
    r = requests.get(server.probe_url, timeout=5)
    body = r.json()
    assert (r.status_code == 200) == body["ready"], (r.status_code, body)
    return body if body["ready"] == want else None


def test_readiness_is_logged_once_per_change_and_without_colour(tmp_path):
    (tmp_path / "data").mkdir()
    log_path = tmp_path / "server.log"
    probe = f"127.0.0.1:{free_port()}"
    server = Server(tmp_path / "data", log_path,
                    env={"NO_COLOR": None, "GRANTLINE_METRICS_LISTEN": probe})
    server.probe_url = f"http://{probe}/readyz"
    server.start()
    try:
        until("ready", 30, lambda: readyz(server, True))
        until("readiness logged", 30, lambda: len(readiness_lines(log_path)) == 1)

        db = sqlite3.connect(server.data_dir / "grantline.db", timeout=30)
        db.execute("CREATE TRIGGER block_appends BEFORE INSERT ON events "
                   "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        db.commit()
        body = until("unready", 30, lambda: readyz(server, False))
        assert body["checks"]["ledger"]["ok"] is False and "disk full" in \
            body["checks"]["ledger"]["detail"], body
        until("unready logged", 30, lambda: len(readiness_lines(log_path)) == 2)
        # Still unready a while later: no new line for a state that did not change.
        time.sleep(3)
        assert len(readiness_lines(log_path)) == 2

        db.execute("DROP TRIGGER block_appends")
        db.commit()
        db.close()
        until("ready again", 30, lambda: readyz(server, True))
        until("ready logged", 30, lambda: len(readiness_lines(log_path)) == 3)
        time.sleep(2)
    finally:
        server.stop()

    lines = readiness_lines(log_path)
    states = [l.split(HEALTH, 1)[1].strip() for l in lines]
    assert states[0] == "ready" and states[2] == "ready", lines
    assert states[1].startswith("not ready") and "disk full" in states[1], lines
    assert " INFO " in lines[0] and " WARN " in lines[1], lines
    log = log_path.read_text()
    assert len(log.splitlines()) > 5, "the server logged while it ran"
    assert "\x1b" not in log, "colour codes in a log that is not a terminal"
