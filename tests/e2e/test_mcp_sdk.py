"""The official MCP Python SDK (`mcp` 2.x from PyPI) against `grantline serve`, with its own OAuth
client: 401 → protected-resource metadata → authorization-server metadata → dynamic
registration → authorize (the test's redirect handler signs in and consents over HTTP) →
token → initialize → tools/list → tools/call → a refresh on its own (4-second access tokens) →
step-up for a write tool → the user revokes the grant → the next call is refused and the SDK
authorizes again. Then the ledger is checked."""
import asyncio
import hashlib
import hmac
import json
import os
import subprocess
import time

import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import ADMIN_PASSWORD, ROOT, WEBHOOK_SECRET
from mcp_client import Browser, MemoryStorage, sdk_client, text_of

REDIRECT = "http://127.0.0.1:8766/callback"


def paths(seen, start=0):
    return [(m, p, s) for (m, p, s, _) in seen[start:]]


async def scenario(server, browser, storage, seen):
    url = server.base + "/mcp/demo"
    async with sdk_client(url, browser, storage, "MCP SDK e2e", seen) as client:
        # The discovery and authorization the SDK went through before its first message was
        # answered: refused without a token, then RFC 9728 → RFC 8414 → RFC 7591 → token.
        story = paths(seen)
        first_mcp = story.index(("POST", "/mcp/demo", 401))
        assert story[first_mcp:first_mcp + 6] == [
            ("POST", "/mcp/demo", 401),
            ("GET", "/.well-known/oauth-protected-resource/mcp/demo", 200),
            ("GET", "/.well-known/oauth-authorization-server", 200),
            ("POST", "/oauth/register", 201),
            ("POST", "/oauth/token", 200),
            ("POST", "/mcp/demo", 200),
        ], story
        assert len(browser.callbacks) == 1 and browser.consents == 1
        # The challenge's scope; the SDK adds offline_access (SEP-2207) since the authorization
        # server offers it and the client wants refresh tokens.
        assert browser.last_scope() == {"demo:read", "offline_access"}, browser.authorize_urls
        assert storage.client.client_id and storage.client.token_endpoint_auth_method == "none"
        # The demo does not speak the 2026 `server/discover`: the SDK falls back to initialize.
        init = client.session.initialize_result
        assert init is not None and init.server_info.name == "grantline-demo", init
        assert client.protocol_version == init.protocol_version

        listed = await client.list_tools()
        tools = {t.name for t in listed.tools}
        # The read tools, nothing the demo does not have. (add_note, which needs demo:write, is
        # hidden from a demo:read caller or listed for a step-up, depending on Grantline's
        # listing policy; calling it is what the step-up below checks.)
        assert {"get_time", "list_notes"} <= tools <= {"get_time", "list_notes", "add_note"}, tools
        first = await client.call_tool("get_time", {})
        assert not first.is_error and "T" in text_of(first), first
        token_1 = storage.tokens.access_token
        refresh_1 = storage.tokens.refresh_token
        assert token_1.startswith("gla_") and refresh_1.startswith("glr_")

        # The access token expires; the SDK refreshes on its own.
        await asyncio.sleep(5)
        mark = len(seen)
        again = await client.call_tool("list_notes", {})
        assert not again.is_error, again
        assert ("POST", "/oauth/token", 200) in paths(seen, mark)
        assert storage.tokens.access_token != token_1
        assert storage.tokens.refresh_token != refresh_1, "refresh tokens rotate"
        assert len(browser.callbacks) == 1, "a refresh, not a new authorization"

        # A write tool needs demo:write: 403 insufficient_scope, and the SDK steps up.
        mark = len(seen)
        added = await client.call_tool("add_note", {"text": "hello from the SDK"})
        assert not added.is_error, added
        assert "hello from the SDK" in text_of(added)
        step = paths(seen, mark)
        assert step[0] == ("POST", "/mcp/demo", 403) and step[-1] == ("POST", "/mcp/demo", 200), step
        assert len(browser.callbacks) == 2 and browser.consents == 2
        assert browser.last_scope() - {"offline_access"} == {"demo:read", "demo:write"}, \
            "step-up keeps demo:read"
        assert set(storage.tokens.scope.split()) - {"offline_access"} == {"demo:read", "demo:write"}

        # The user revokes the grant: the next call is refused and the SDK authorizes again.
        await asyncio.to_thread(browser.revoke_all_grants)
        mark = len(seen)
        after = await client.call_tool("list_notes", {})
        assert not after.is_error, after
        assert "hello from the SDK" in text_of(after)
        assert len(browser.callbacks) == 3, "sent back to authorize"
        again_story = paths(seen, mark)
        assert ("POST", "/mcp/demo", 401) in again_story, again_story
        assert ("POST", "/oauth/register", 201) not in again_story, "the registration is kept"
    return listed


def test_official_mcp_sdk_end_to_end(mcp_server):
    # The user who signs in has an email address, so /metrics can be checked for it.
    email = "carol.e2e@example.test"
    r = requests.post(mcp_server.base + "/admin/api/users", auth=("admin", ADMIN_PASSWORD), json={
        "username": "carol", "password": "carol-password-e2e", "role": "admin", "email": email})
    assert r.status_code == 201, r.text
    carol = r.json()["user_id"]
    browser = Browser(mcp_server.base, REDIRECT, "carol", "carol-password-e2e")
    storage = MemoryStorage()
    seen = []
    listed = asyncio.run(scenario(mcp_server, browser, storage, seen))
    # Every request to the resource after the first carried a bearer token.
    mcp_requests = [s for s in seen if s[1] == "/mcp/demo"]
    assert not mcp_requests[0][3] and all(s[3] for s in mcp_requests[1:]), mcp_requests
    # A script guessing passwords at the admin API from this address is held back (the
    # server's own limit, apart from the gateway's), and the operator sees it counted.
    throttled = 0
    for i in range(60):
        r = requests.get(mcp_server.base + "/admin/api/clients", auth=(f"guess-{i}", "guess"),
                         timeout=10)
        assert r.status_code in (401, 429), r.text
        throttled += r.status_code == 429
        if throttled == 3:
            break
    assert throttled == 3
    # The SIEM's webhook has taken every event up to the head (sinks push in the background).
    deadline = time.time() + 20
    while True:
        scraped = requests.get(mcp_server.metrics_url, timeout=10)
        lag = [l for l in scraped.text.splitlines() if l.startswith("grantline_sink_lag_events")]
        if lag == ['grantline_sink_lag_events{sink="siem"} 0'] or time.time() > deadline:
            break
        time.sleep(0.2)
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
    # Not on the main listener without the configured bearer token (none is configured).
    assert requests.get(mcp_server.base + "/metrics", timeout=10).status_code == 404
    mcp_server.stop()

    binary = os.environ.get("GRANTLINE_BIN", str(ROOT / "target/debug/grantline"))
    out = subprocess.run(
        [binary, "--data-dir", str(mcp_server.data_dir), "events", "--json", "--limit", "100000"],
        capture_output=True, text=True, check=True,
        env={k: v for k, v in os.environ.items() if k != "GRANTLINE_CONFIG"},
    ).stdout
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    kinds = [e["kind"] for e in events]
    for k in ["client.registered", "consent.granted", "code.issued", "token.issued",
              "token.refreshed", "tool.listed", "tool.called", "authorization.denied",
              "grant.revoked"]:
        assert k in kinds, f"{k} missing from {sorted(set(kinds))}"
    assert kinds.count("client.registered") == 1
    assert kinds.count("consent.granted") == 3
    listings = [e["payload"] for e in events if e["kind"] == "tool.listed"]
    # The first is the test's; the SDK lists again on its own when it meets a tool it has not
    # seen listed (add_note, after the step-up, with demo:write: all three).
    assert listings[0]["tools_returned"] == len(listed.tools), listings
    assert all(l["tools_returned"] <= 3 and l["outcome"] == "ok" for l in listings), listings
    calls = [e["payload"] for e in events if e["kind"] == "tool.called"]
    outcomes = [(c["tool"], c["outcome"]) for c in calls]
    assert outcomes == [("get_time", "ok"), ("list_notes", "ok"), ("add_note", "denied"),
                        ("add_note", "ok"), ("list_notes", "ok")], outcomes
    assert all(c.get("client_id") == storage.client.client_id and c.get("user_id") for c in calls)
    assert "hello from the SDK" not in out, "arguments are recorded as a digest only"
    for t in storage.history:
        assert t.access_token not in out and (t.refresh_token or "x") not in out
    assert all(c["user_id"] == carol for c in calls)
    check_metrics(scraped.text, events, storage, {carol, email, "carol"}, throttled)
    # What the SIEM was pushed is what the ledger holds up to the scrape, in order, once each,
    # in batches signed with the shared secret (HMAC-SHA256 of "<t>.<body>").
    pushed = []
    assert len(mcp_server.siem.bodies) == len(mcp_server.siem.headers)
    for (_, _, body), headers in zip(mcp_server.siem.bodies, mcp_server.siem.headers):
        sig = dict(p.split("=", 1) for p in headers["grantline-signature"].split(","))
        mac = hmac.new(WEBHOOK_SECRET.encode(), sig["t"].encode() + b"." + body, hashlib.sha256)
        assert hmac.compare_digest(mac.hexdigest(), sig["v1"]), headers
        pushed.extend((e["seq"], e["hash"]) for e in json.loads(body)["events"])
    ledger = [(e["seq"], e["hash"]) for e in events]
    assert pushed == ledger[:len(pushed)], pushed[:5]
    assert len(pushed) >= value_of(scraped.text, "grantline_ledger_head_seq")


def value_of(text, name, **labels):
    """The sum of the samples of `name` with `labels` in a /metrics text (parsed by the
    Prometheus project's own parser); None when there is none."""
    found = [s.value for f in text_string_to_metric_families(text) for s in f.samples
             if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return sum(found) if found else None


def check_metrics(text, events, storage, who, throttled):
    """/metrics after the SDK's session: parsed by the Prometheus project's own parser, the
    series an operator needs with the values this session must have produced, and nothing that
    identifies a user, a client or a token."""
    families = {f.name: f for f in text_string_to_metric_families(text)}

    def value(name, **labels):
        v = value_of(text, name, **labels)
        assert v is not None, f"{name} {labels} missing from /metrics"
        return v

    kinds = [e["kind"] for e in events]
    # Revocations and the two detections, each the count of its events (present at 0 too).
    assert value("grantline_tokens_revoked_total") == kinds.count("token.revoked")
    assert value("grantline_token_families_revoked_total") == kinds.count("family.revoked")
    assert value("grantline_refresh_reuse_detected_total") == kinds.count("refresh.reuse_detected")
    assert value("grantline_code_replays_total") == kinds.count("code.replayed")
    assert value("grantline_rate_limit_refusals_total", resource="", bucket="sign_in") \
        == throttled
    # The SIEM sink: caught up with the head, no failure.
    assert value("grantline_sink_lag_events", sink="siem") == 0
    assert value("grantline_sink_consecutive_failures", sink="siem") == 0
    assert value("grantline_tokens_issued_total", grant_type="authorization_code") \
        == kinds.count("token.issued")
    assert value("grantline_tokens_refreshed_total") == kinds.count("token.refreshed") >= 1
    assert value("grantline_events_appended_total", kind="consent.granted") == 3
    assert value("grantline_gateway_calls_total", resource="demo", outcome="ok") == 4
    assert value("grantline_gateway_calls_total", resource="demo", outcome="denied") == 1
    assert value("grantline_gateway_upstream_requests_total", resource="demo", status="200") >= 5
    assert value("grantline_gateway_upstream_duration_seconds_count", resource="demo") >= 5
    # HTTP by route template: the token endpoint answered the code exchanges and the refresh.
    assert value("grantline_http_requests_total", route="/oauth/token", method="POST",
                 status="200") >= 3
    assert value("grantline_http_requests_total", route="/mcp/{name}", method="POST",
                 status="401") >= 1
    assert value("grantline_http_request_duration_seconds_count", route="/oauth/token") >= 3
    # Connections: what the session's clients left open, under the cap (by default three
    # quarters of the limit on open files).
    assert 0 <= value("grantline_http_connections") <= value("grantline_http_connections_max")
    assert value("grantline_http_connections_max") >= 1
    # The ledger: every event went through a group commit, none failed.
    assert value("grantline_ledger_commits_total", outcome="ok") >= 1
    assert value_of(text, "grantline_ledger_commits_total", outcome="failed") in (None, 0)
    assert value("grantline_ledger_group_commit_events_sum") >= len(events) - 5
    assert value("grantline_ledger_commit_duration_seconds_count") >= 1
    head = value("grantline_ledger_head_seq")
    assert head >= len(events) - 5 and head > 0
    assert 0 <= value("grantline_projection_lag_events") <= head
    assert 0 <= value("grantline_projection_last_read_age_seconds") < 10
    # The session lasted seconds: the unsigned tail and the index trail the head by little.
    assert 0 <= value("grantline_checkpoint_age_seconds") < 600
    assert 0 <= value("grantline_checkpoint_lag_events") <= head
    assert "grantline_audit_index_lag_events" in families
    assert 0 <= value("grantline_audit_index_lag_events") <= head
    for check in ["migrations", "ledger", "projection", "checkpoint_key", "serving"]:
        assert value("grantline_ready", check=check) == 1, check
    # No label or value carries who or what: the signed-in user's id, name and email (`who`),
    # any user or client id in the events, or a token.
    secrets = {storage.client.client_id, *who}
    for e in events:
        for key in ("user_id", "client_id"):
            v = e["payload"].get(key)
            if isinstance(v, str) and v:
                secrets.add(v)
    for t in storage.history:
        secrets.update(x for x in (t.access_token, t.refresh_token) if x)
    for s in secrets:
        assert s not in text, f"{s[:6]}… appears in /metrics"
