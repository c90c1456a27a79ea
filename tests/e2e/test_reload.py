"""Policy reload as an operator does it: edit the configuration file, `grantline config reload`
(SIGHUP to the running server), read what was recorded; a file that does not load and a change
that needs a restart are refused and the policy in force stays; `grantline state --at` answers
what a user could do by the roles in force at each seq."""
import json
import subprocess
import time

from conftest import CONFIG, Server
from test_backup import grantline

ROLES = """
[roles.admin]
demo = ["*"]

[roles.user]
demo = [{tools}]
"""


# The demo resource as the server defines it when none is configured, and one more.
RESOURCES = """
[[resources]]
name = "demo"
path = "/mcp/demo"
upstream = "builtin:demo"
description = "Grantline's built-in demo MCP server"
default_scopes = ["demo:read"]
scopes = [{ name = "demo:read", description = "Read the demo server's notes and server time" },
          { name = "demo:write", description = "Add notes to the demo server" }]

[[resources]]
name = "notes"
path = "/mcp/notes"
upstream = "builtin:demo"
description = "Notes"
scopes = [{ name = "notes:read", description = "Read notes" }]
write_scope = "notes:read"
"""


def events(data, kind):
    out = grantline("--data-dir", data, "events", "--kind", kind, "--json").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_config_reload_records_the_difference_and_refuses_what_it_cannot_apply(tmp_path):
    (tmp_path / "data").mkdir()
    config = CONFIG + ROLES.format(tools='"get_time", "list_notes"')
    server = Server(tmp_path / "data", tmp_path / "server.log", config).start()
    data = str(server.data_dir)
    conf = server.data_dir / "grantline.toml"
    cli = ("--data-dir", data, "--config", str(conf))
    env = {"GRANTLINE_E2E_RS_SECRET": "e2e-resource-server-secret-91c2-4f0a7d3b"}
    try:
        grantline(*cli, "user", "add", "alice", env={"GRANTLINE_USER_PASSWORD": "pw-alice-1234", **env})
        start = [e for e in events(data, "policy.changed") if e["payload"]["policy"] == "roles"]
        assert len(start) == 1, "the roles in force at the first start are recorded"
        before_reload = json.loads(
            grantline(*cli, "events", "--json", env=env).stdout.splitlines()[-1])["seq"]

        # Nothing changed: nothing recorded. The operator's shell need not hold the secrets
        # the server reads from its own environment (the resource server's here).
        p = grantline(*cli, "config", "reload")
        assert "no policy changed" in p.stdout, p.stdout

        # The user role loses list_notes.
        conf.write_text(CONFIG + ROLES.format(tools='"get_time"'))
        p = grantline(*cli, "config", "reload", env=env)
        assert "roles (1 settings)" in p.stdout, p.stdout
        roles = [e for e in events(data, "policy.changed") if e["payload"]["policy"] == "roles"]
        assert roles[-1]["payload"]["changes"] == [
            {"setting": "user.demo", "from": "get_time, list_notes", "to": "get_time"}]
        assert roles[-1]["seq"] > before_reload

        # The file the server reads is named in its pid file: the command checks that one,
        # with or without --config, and refuses to go on with another file in --config.
        assert (server.data_dir / "grantline.pid").read_text() == f"{server.proc.pid}\n"
        companion = (server.data_dir / "grantline.pid.config").read_text()
        assert companion == f"pid={server.proc.pid}\nconfig={conf}\n", companion
        p = grantline("--data-dir", data, "config", "reload", env=env)
        assert "no policy changed" in p.stdout, p.stdout
        other = tmp_path / "other.toml"
        other.write_text(CONFIG + ROLES.format(tools='"get_time"'))
        signalled = (tmp_path / "server.log").read_text().count("SIGHUP")
        p = grantline("--data-dir", data, "--config", str(other), "config", "reload", env=env, check=False)
        assert p.returncode == 1 and f"reads {conf}, not {other}" in p.stdout, p.stdout
        time.sleep(0.3)
        assert (tmp_path / "server.log").read_text().count("SIGHUP") == signalled, "not signalled"

        # A truncated file: refused by the command before the server is asked.
        good = conf.read_text()
        conf.write_text(good[: good.index("[roles.user]") + 8])
        p = grantline(*cli, "config", "reload", env=env, check=False)
        assert p.returncode == 1 and "refused, the server was not asked" in p.stdout, p.stdout
        # A change that needs a restart: the server refuses it, the policy in force stays.
        conf.write_text(good.replace("[oauth]", "[oauth]\naccess_token_ttl = 99"))
        p = grantline(*cli, "config", "reload", env=env, check=False)
        assert p.returncode == 1 and "[oauth]" in p.stdout and "restart" in p.stdout, p.stdout
        assert len([e for e in events(data, "policy.changed")
                    if e["payload"]["policy"] == "roles"]) == len(roles)
        log = (tmp_path / "server.log").read_text()
        assert "reload refused" in log
        # Readiness is logged once per change: once ready at start, and it stayed so.
        readiness = [l for l in log.splitlines() if "grantline_server::health:" in l]
        assert len(readiness) == 1 and readiness[0].rstrip().endswith("ready"), readiness

        # What alice could do: by the roles in force then, not by today's file.
        def tools_at(at):
            out = grantline(*cli, "state", "--at", str(at), "--user", "alice", "--json", env=env).stdout
            return json.loads(out)["user"]["tools"]["demo"]
        assert tools_at(before_reload) == ["get_time", "list_notes"]
        assert tools_at(roles[-1]["seq"]) == ["get_time"]

        # A resource added by reload: what alice could do lists it from then on only, by the
        # resources recorded in force, not by today's file.
        conf.write_text(good + RESOURCES)
        p = grantline(*cli, "config", "reload", env=env)
        assert "resources (" in p.stdout, p.stdout
        added = [e for e in events(data, "policy.changed")
                 if e["payload"]["policy"] == "resources"][-1]["seq"]

        def resources_at(at):
            out = grantline(*cli, "state", "--at", str(at), "--user", "alice", "--json", env=env).stdout
            return sorted(json.loads(out)["user"]["tools"])
        assert "notes" in resources_at(added) and "demo" in resources_at(added)
        assert "notes" not in resources_at(roles[-1]["seq"])
        conf.write_text(good)
        grantline(*cli, "config", "reload", env=env)
        assert "notes" in resources_at(added), "what was in force then, not the file's today"
    finally:
        server.stop()
    assert not (server.data_dir / "grantline.pid").exists(), "the pid file goes with the server"

    # A pid file left by a server that did not stop cleanly, naming a process that is not a
    # server: nothing is signalled (SIGHUP would end it).
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        (server.data_dir / "grantline.pid").write_text(f"{bystander.pid}\n")
        p = grantline(*cli, "config", "reload", env=env, check=False)
        assert p.returncode != 0 and "no server runs" in p.stderr, (p.stdout, p.stderr)
        time.sleep(0.3)
        assert bystander.poll() is None, "the process in the stale pid file was signalled"
    finally:
        bystander.kill()
        bystander.wait()


def test_config_reload_reaches_the_server_left_running_when_another_on_the_data_directory_stops(tmp_path):
    """A rolling restart: a second server starts on the data directory while the first runs;
    the first holds the pid file and is the one signalled; once it stops, the second takes the
    pid file and `grantline config reload` reaches it."""
    (tmp_path / "data").mkdir()
    config = CONFIG + ROLES.format(tools='"get_time", "list_notes"')
    first = Server(tmp_path / "data", tmp_path / "first.log", config).start()
    second = None
    try:
        second = Server(tmp_path / "data", tmp_path / "second.log", config).start()
        data = str(first.data_dir)
        conf = first.data_dir / "grantline.toml"
        cli = ("--data-dir", data, "--config", str(conf))
        pid = int((first.data_dir / "grantline.pid").read_text())
        assert pid == first.proc.pid
        first.stop()
        deadline = time.time() + 15
        while time.time() < deadline:
            held = (second.data_dir / "grantline.pid")
            if held.exists() and held.read_text().strip() == str(second.proc.pid):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the second server did not take the pid file")
        conf.write_text(CONFIG + ROLES.format(tools='"get_time"'))
        p = grantline(*cli, "config", "reload")
        assert "roles (1 settings)" in p.stdout, p.stdout
        assert "SIGHUP" in (tmp_path / "second.log").read_text()
    finally:
        first.stop()
        if second:
            second.stop()
