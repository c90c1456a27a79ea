"""Backup and restore as an operator runs them: `grantline backup` of a running server's SQLite
ledger, `grantline restore` into another data directory and over the same one, a backup that
does not verify refused with nothing changed; and the PostgreSQL procedure of
docs/operations.md (pg_dump, pg_restore, `grantline verify`) against the throwaway cluster."""
import json
import os
import pathlib
import re
import shutil
import subprocess
import uuid

import threading
import time

import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session

from conftest import RS_SECRET, ROOT, Cluster, Server, as_postgres, query, until
from test_oauth_flow import REDIRECT, browser_authorize, discover, register

BINARY = os.environ.get("GRANTLINE_BIN", str(ROOT / "target/debug/grantline"))


def grantline(*args, env=None, check=True):
    e = {k: v for k, v in os.environ.items() if k not in ("GRANTLINE_CONFIG", "GRANTLINE_DATABASE_URL")}
    e.update(env or {})
    p = subprocess.run([BINARY, *args], capture_output=True, text=True, env=e)
    if check and p.returncode != 0:
        raise AssertionError(f"grantline {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def test_sqlite_backup_of_a_running_server_restores_and_a_bad_one_is_refused(server, tmp_path):
    data = str(server.data_dir)
    grantline("--data-dir", data, "user", "add", "alice", env={"GRANTLINE_USER_PASSWORD": "pw-alice-1234"})
    out = tmp_path / "ledger.backup"
    backed = grantline("--data-dir", data, "backup", "--output", str(out)).stdout
    m = re.search(r"backed up (\d+) events \(head (\d+) ([0-9a-f]{64})\)", backed)
    assert m, backed
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    key = grantline("--data-dir", data, "key", "show").stdout.split()[-1]
    assert "+" in key

    # Into a new data directory: restored and verified; the key must be supplied separately.
    fresh = tmp_path / "fresh"
    restored = grantline("--data-dir", str(fresh), "restore", "--input", str(out), "--public-key", key).stdout
    assert f"restored {m.group(1)} events (head {m.group(2)} {m.group(3)})" in restored, restored
    assert "has no checkpoint key" in restored
    assert "and the manifest's signature" in restored, restored
    verified = grantline("--data-dir", str(fresh), "verify", "--public-key", key).stdout
    assert verified.startswith(f"ok: {m.group(1)} events"), verified

    # Over the live data directory: refused without --force; the running ledger untouched.
    refused = grantline("--data-dir", data, "restore", "--input", str(out), check=False)
    assert refused.returncode != 0 and "server is running" in refused.stderr, refused.stderr
    # Not with --force either: the server would go on writing to the ledger moved aside.
    before = sorted(p.name for p in server.data_dir.iterdir())
    refused = grantline("--data-dir", data, "restore", "--input", str(out), "--force", check=False)
    assert refused.returncode != 0 and "server is running" in refused.stderr, refused.stderr
    assert sorted(p.name for p in server.data_dir.iterdir()) == before
    # Recorded after the backup: gone from the restored ledger, kept in the replaced one.
    grantline("--data-dir", data, "user", "add", "bob", env={"GRANTLINE_USER_PASSWORD": "pw-bob-12345"})
    server.stop()
    # Stopped: refused without --force, which the message offers.
    refused = grantline("--data-dir", data, "restore", "--input", str(out), check=False)
    assert refused.returncode != 0 and "--force" in refused.stderr, refused.stderr
    # A sink that had delivered further than the backup reaches (with the hash of the event
    # its cursor stood on).
    sinks = server.data_dir / "sinks"
    sinks.mkdir(exist_ok=True)
    (sinks / "siem.json").write_text(json.dumps({"seq": 100000, "hash": "ab" * 32}))
    forced = grantline("--data-dir", data, "restore", "--input", str(out), "--force").stdout
    # Brought back to the restored head, and without the old position's hash (kept, the sink
    # would take the restored ledger for another history and send it all again).
    cursor = json.loads((sinks / "siem.json").read_text())
    assert cursor["seq"] == int(m.group(2)) and "hash" not in cursor, (cursor, forced)
    moved = re.search(r"previous ledger was moved to (\S+)", forced)
    assert moved and pathlib.Path(moved.group(1)).exists(), forced
    # What the replaced ledger recorded after the restored head, by the command restore names.
    listed = re.search(r"(events --after (\d+) --kind user.erased)", forced)
    assert listed and listed.group(2) == m.group(2), forced
    # As printed: with the data directory, whose key records the reading (without it, the
    # default data directory's, which a fresh machine does not have).
    assert f"grantline --data-dir {data} --database sqlite:{moved.group(1)} events" in forced, forced
    later = grantline("--data-dir", data, "--database", f"sqlite:{moved.group(1)}", "events",
                      "--after", m.group(2), "--json").stdout
    later = [json.loads(line) for line in later.splitlines() if line.strip()]
    assert later and all(e["seq"] > int(m.group(2)) for e in later), later
    assert "user.created" in [e["kind"] for e in later], later
    assert grantline("--data-dir", data, "verify").stdout.startswith(f"ok: {m.group(1)} events")

    # The database moved away but its write-ahead log left behind (SQLite would apply it to
    # the restored database): refused; with --force it is moved aside with the rest.
    other = tmp_path / "other"
    other.mkdir()
    (other / "grantline.db-wal").write_bytes(b"frames of another ledger")
    p = grantline("--data-dir", str(other), "restore", "--input", str(out), "--public-key", key,
                  check=False)
    assert p.returncode != 0 and "grantline.db-wal exists" in p.stderr, p.stderr
    assert not (other / "grantline.db").exists()
    forced = grantline("--data-dir", str(other), "restore", "--input", str(out), "--public-key", key,
                       "--force").stdout
    assert "left were moved aside as" in forced and "previous ledger was moved" not in forced, forced
    assert not (other / "grantline.db-wal").exists() or (other / "grantline.db-wal").read_bytes() != b"frames of another ledger"
    assert grantline("--data-dir", str(other), "verify", "--public-key", key).stdout.startswith(
        f"ok: {m.group(1)} events")

    # A backup whose database was altered: refused, and nothing was written.
    bad = tmp_path / "bad.backup"
    raw = bytearray(out.read_bytes())
    raw[-8192] ^= 0x01
    bad.write_bytes(bytes(raw))
    target = tmp_path / "target"
    p = grantline("--data-dir", str(target), "restore", "--input", str(bad), check=False)
    assert p.returncode != 0, p.stdout
    assert "nothing was changed" in p.stderr and "digest" in p.stderr, p.stderr
    assert not (target / "grantline.db").exists()
    # PostgreSQL is not backed up by this command: it says what to do instead.
    p = grantline("--data-dir", data, "--database", "postgres://nobody@127.0.0.1:1/x", "backup",
                  "--output", str(tmp_path / "pg.backup"), check=False)
    assert p.returncode != 0 and "pg_dump" in p.stderr, p.stderr


def refresh_tokens(server, n):
    """`n` refresh tokens, each of its own client and family, as an OAuth client gets them."""
    prm, meta = discover(server.base)
    out = []
    for _ in range(n):
        reg = register(meta)
        client = OAuth2Session(reg["client_id"], redirect_uri=REDIRECT, scope="demo:read",
                               code_challenge_method="S256", token_endpoint_auth_method="none")
        verifier = "v" * 50 + str(len(out))
        url, _ = client.create_authorization_url(meta["authorization_endpoint"],
                                                 code_verifier=verifier, resource=prm["resource"])
        callback, _ = browser_authorize(url, server.base)
        token = client.fetch_token(meta["token_endpoint"], authorization_response=callback,
                                   code_verifier=verifier)
        out.append((reg["client_id"], token["refresh_token"]))
    return meta["token_endpoint"], out


def refresh(token_endpoint, client_id, refresh_token):
    return requests.post(token_endpoint, data={
        "grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id,
    }, timeout=10)


def test_backup_under_load_restores_and_serves_the_refresh_tokens_live_at_it(server, tmp_path):
    """The commands an operator runs, while clients keep the server busy: `grantline backup`
    of the running server, `grantline restore` elsewhere, and the restored server takes every
    refresh token that was live when the backup was taken, one rotated since included."""
    data = str(server.data_dir)
    endpoint, live = refresh_tokens(server, 3)

    # Load during the backup: client-credentials token requests, each a `token.issued`.
    stop, answers = threading.Event(), []

    def load():
        while not stop.is_set():
            try:
                r = requests.post(endpoint, data={
                    "grant_type": "client_credentials", "resource": server.base + "/mcp/demo",
                }, auth=("resource-server", RS_SECRET), timeout=10)
                answers.append((r.status_code, r.text))
            except Exception as e:  # noqa: BLE001 - reported by the assertion below
                answers.append((0, repr(e)))
                return
    worker = threading.Thread(target=load)
    worker.start()
    try:
        time.sleep(0.5)
        out = tmp_path / "ledger.backup"
        backed = grantline("--data-dir", data, "backup", "--output", str(out)).stdout
        time.sleep(0.5)
    finally:
        stop.set()
        worker.join()
    assert len(answers) > 5, f"the server was under load: {len(answers)} tokens"
    assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:3]
    m = re.search(r"backed up (\d+) events \(head (\d+) ([0-9a-f]{64})\)", backed)
    assert m, backed
    at_backup = int(m.group(2))
    # After the backup, one family rotates on the running server.
    r = refresh(endpoint, *live[0])
    assert r.status_code == 200, r.text
    server.stop()
    # The load's tokens were issued on both sides of the copy: it ran during the backup.
    issued = json_lines(grantline("--data-dir", data, "events", "--json", "--kind",
                                  "token.issued").stdout)
    loaded = [e["seq"] for e in issued if e["payload"].get("client_id") == "resource-server"]
    assert any(seq <= at_backup for seq in loaded) and any(seq > at_backup for seq in loaded), \
        (at_backup, loaded[:3], loaded[-3:])

    # Restored into another data directory, with the keys the backup does not carry.
    key = grantline("--data-dir", data, "key", "show").stdout.split()[-1]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for f in ("checkpoint.key", "access-token.key"):
        shutil.copy(server.data_dir / f, fresh / f)
    restored = grantline("--data-dir", str(fresh), "restore", "--input", str(out),
                         "--public-key", key).stdout
    assert f"restored {m.group(1)} events (head {at_backup} " in restored, restored
    # On the same address (resources are named by the public URL).
    again = Server(fresh, tmp_path / "restored.log")
    again.port, again.base = server.port, server.base
    again.start()
    try:
        for client_id, token in live:
            r = refresh(endpoint, client_id, token)
            assert r.status_code == 200, r.text
            assert r.json()["access_token"].startswith("gla_")
    finally:
        again.stop()
    verified = grantline("--data-dir", str(fresh), "verify", "--public-key", key).stdout
    assert verified.startswith("ok: "), verified


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def psql(url, sql):
    subprocess.run(["psql", "-v", "ON_ERROR_STOP=1", "-q", "-d", url, "-c", sql],
                   check=True, capture_output=True, text=True)


def test_postgresql_dump_and_restore_procedure_verifies(tmp_path):
    if not os.environ.get("GRANTLINE_TEST_DATABASE_URL"):
        # Skipped only where no server is given; CI starts one (tools/throwaway-postgres.sh).
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but GRANTLINE_TEST_DATABASE_URL is not set")
        pytest.skip("no GRANTLINE_TEST_DATABASE_URL: the PostgreSQL procedure needs a server")
    if not shutil.which("pg_dump") or not shutil.which("pg_restore"):
        pytest.fail("pg_dump and pg_restore are needed (Debian's postgresql-client)")
    admin = os.environ["GRANTLINE_TEST_DATABASE_URL"]
    base = admin.rsplit("/", 1)[0]
    tag = uuid.uuid4().hex[:8]
    src_name, dst_name = f"bk_src_{tag}", f"bk_dst_{tag}"
    # The roles of "PostgreSQL least privilege" (named apart: roles are the cluster's).
    owner, migrator, app = f"gl_owner_{tag}", f"gl_migrator_{tag}", f"gl_app_{tag}"
    psql(admin, f"CREATE ROLE {owner} NOLOGIN")
    psql(admin, f"CREATE ROLE {migrator} LOGIN IN ROLE {owner}")
    psql(admin, f"CREATE ROLE {app} LOGIN")
    psql(admin, f"CREATE DATABASE {src_name} OWNER {owner}")
    host = base.split("@", 1)[1]
    as_role = lambda role, db: f"postgres://{role}@{host}/{db}"  # noqa: E731
    grants = [
        f"GRANT USAGE ON SCHEMA public TO {app}",
        f"GRANT SELECT, INSERT ON events, checkpoints TO {app}",
        f"GRANT SELECT, INSERT, DELETE ON subject_keys TO {app}",
        f"GRANT SELECT, INSERT ON erased_subjects TO {app}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON user_credentials TO {app}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON user_links, upstream_tokens TO {app}",
        f"GRANT SELECT ON _sqlx_migrations TO {app}",
        f"GRANT USAGE ON SEQUENCE checkpoints_id_seq TO {app}",
    ]
    src, dst = as_role(migrator, src_name), as_role(migrator, dst_name)
    data = tmp_path / "data"
    try:
        grantline("--data-dir", str(data), "--database", src, "migrate")
        for g in grants:
            psql(src, g)
        for name in ["alice", "bob"]:
            grantline("--data-dir", str(data), "--database", as_role(app, src_name), "user", "add", name,
                      env={"GRANTLINE_USER_PASSWORD": "pw-" + name + "-1234"})
        grantline("--data-dir", str(data), "--database", src, "snapshot")
        # The procedure of docs/operations.md, "Backup and restore", step by step, with its roles.
        dump = tmp_path / "grantline.dump"
        subprocess.run(["pg_dump", "--format=custom", "--file", str(dump), "--dbname", src], check=True)
        psql(admin, f"CREATE DATABASE {dst_name} OWNER {owner}")
        subprocess.run(["pg_restore", "--exit-on-error", "--no-owner", "--role", owner,
                        "--dbname", dst, str(dump)], check=True)
        before = grantline("--data-dir", str(data), "--database", src, "verify").stdout
        after = grantline("--data-dir", str(data), "--database", dst, "verify").stdout
        assert after.split("(")[0] == before.split("(")[0], (before, after)
        # The application role, granted again, reads and appends; it cannot rewrite.
        for g in grants:
            psql(dst, g)
        users = grantline("--data-dir", str(data), "--database", as_role(app, dst_name), "user", "list").stdout
        assert "alice" in users and "bob" in users, users
        grantline("--data-dir", str(data), "--database", as_role(app, dst_name), "user", "add", "carol",
                  env={"GRANTLINE_USER_PASSWORD": "pw-carol-1234"})
        with pytest.raises(subprocess.CalledProcessError) as refused:
            psql(as_role(app, dst_name), "DELETE FROM events WHERE seq = 1")
        assert "permission denied" in refused.value.stderr, refused.value.stderr
        # The restored ledger is still append-only, for its owner too.
        with pytest.raises(subprocess.CalledProcessError) as refused:
            psql(dst, "UPDATE events SET kind = 'x' WHERE seq = 1")
        assert "append-only" in refused.value.stderr
        # And a restored copy someone edited is caught.
        psql(dst, "ALTER TABLE events DISABLE TRIGGER USER")
        psql(dst, "UPDATE events SET body = body || '\\x00'::bytea WHERE seq = 2")
        p = grantline("--data-dir", str(data), "--database", dst, "verify", check=False)
        assert p.returncode == 1 and "NOT INTACT" in p.stdout, p.stdout
    finally:
        psql(admin, f"DROP DATABASE IF EXISTS {src_name} WITH (FORCE)")
        psql(admin, f"DROP DATABASE IF EXISTS {dst_name} WITH (FORCE)")
        for role in (app, migrator, owner):
            psql(admin, f"DROP ROLE IF EXISTS {role}")


def test_postgresql_point_in_time_recovery_procedure_verifies(tmp_path):
    """docs/operations.md's point-in-time recovery, on a cluster of its own (archiving needs a
    restart, so not the shared throwaway one): WAL archived, a base backup, users added before
    and after a moment, recovery to that moment, and `grantline verify` of the recovered
    ledger: intact, and its head the one at that moment."""
    root = Cluster.root()
    archive = root / "archive"
    primary, recovered = Cluster(root, "primary"), Cluster(root, "recovered")
    data = tmp_path / "data"
    try:
        archive.mkdir()
        if os.geteuid() == 0:
            shutil.chown(archive, "postgres")
        primary.init()
        with open(primary.data / "postgresql.auto.conf", "a") as f:
            f.write("archive_mode = on\nwal_level = replica\n"
                    f"archive_command = 'test ! -f {archive}/%f && cp %p {archive}/%f'\n")
        primary.start()
        query(primary.url(), "CREATE DATABASE grantline")
        url = primary.url("grantline")
        ledger = ("--data-dir", str(data), "--database", url)
        grantline(*ledger, "migrate")
        grantline(*ledger, "user", "add", "alice", env={"GRANTLINE_USER_PASSWORD": "pw-alice-1234"})
        # The base backup (its WAL streamed with it).
        base = root / "base"
        as_postgres(primary.binaries / "pg_basebackup", "-D", base, "-h", "127.0.0.1", "-p", primary.port,
                    "-U", "postgres", "-X", "stream", "--checkpoint=fast")
        grantline(*ledger, "user", "add", "bob", env={"GRANTLINE_USER_PASSWORD": "pw-bob-12345"})
        at_target = grantline(*ledger, "verify").stdout
        head_at_target = re.match(r"ok: (\d+) events, .* head ([0-9a-f]{64})", at_target).groups()
        time.sleep(1.1)
        target = query(url, "SELECT now()")
        time.sleep(1.1)
        # After the moment to recover to: a user that must not come back.
        grantline(*ledger, "user", "add", "carol", env={"GRANTLINE_USER_PASSWORD": "pw-carol-1234"})
        after = re.match(r"ok: (\d+) events", grantline(*ledger, "verify").stdout).group(1)
        assert int(after) > int(head_at_target[0])
        # Every WAL segment up to carol archived, then the server is lost.
        segment = query(url, "SELECT pg_walfile_name(pg_switch_wal())")
        until("the last segment archived", 60, lambda: (archive / segment).exists())
        primary.stop()

        # The procedure: the base backup, the archive, a target time, recovery.signal.
        as_postgres("cp", "-a", base, recovered.data)
        with open(recovered.data / "postgresql.auto.conf", "a") as f:
            f.write(f"restore_command = 'cp {archive}/%f %p'\n"
                    f"recovery_target_time = '{target}'\nrecovery_target_action = 'promote'\n"
                    "archive_mode = off\n")
        as_postgres("touch", recovered.data / "recovery.signal")
        recovered.start()
        url2 = recovered.url("grantline")
        until("recovery finished", 120,
                 lambda: query(url2, "SELECT pg_is_in_recovery()") == "f")
        verified = grantline("--data-dir", str(data), "--database", url2, "verify").stdout
        # The ledger as it was at the target: that many events, that head hash.
        assert re.match(r"ok: (\d+) events, .* head ([0-9a-f]{64})", verified).groups() == \
            head_at_target, (verified, at_target)
        users = grantline("--data-dir", str(data), "--database", url2, "user", "list").stdout
        assert "bob" in users and "carol" not in users, users
    finally:
        primary.stop()
        recovered.stop()
        shutil.rmtree(root, ignore_errors=True)

