"""The official MCP TypeScript SDK (`@modelcontextprotocol/sdk` from npm, tests/e2e/ts) against
`grantline serve`: its StreamableHTTPClientTransport with an OAuthClientProvider discovers,
registers and authorizes on its own (tests/e2e/ts/client.mjs plays the user over HTTP), lists
tools, calls a read tool, and steps up to demo:write when a write tool is refused with 403
insufficient_scope. Needs Node ≥ 20 and `npm ci` in tests/e2e/ts (tools/test.sh runs it)."""
import json
import os
import shutil
import subprocess

import pytest

from conftest import ADMIN_PASSWORD, ROOT

TS = ROOT / "tests/e2e/ts"
REDIRECT = "http://127.0.0.1:8768/callback"


def run_client(server):
    node = shutil.which("node")
    if node is None or not (TS / "node_modules/@modelcontextprotocol/sdk").is_dir():
        if os.environ.get("GRANTLINE_E2E_REQUIRE_NODE"):
            pytest.fail("node or tests/e2e/ts/node_modules is missing (run npm ci in tests/e2e/ts)")
        pytest.skip("node or tests/e2e/ts/node_modules is missing (run npm ci in tests/e2e/ts)")
    p = subprocess.run(
        [node, "client.mjs", server.base + "/mcp/demo", REDIRECT], cwd=TS,
        env=dict(os.environ, GRANTLINE_E2E_PASSWORD=ADMIN_PASSWORD),
        capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 0, f"client.mjs failed:\n{p.stdout}\n{p.stderr}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_official_typescript_sdk(server):
    mcp_server = server  # the demo resource, 1-hour access tokens
    out = run_client(mcp_server)

    # The SDK's own discovery and authorization: refused without a token, RFC 9728 metadata
    # (from the challenge), RFC 8414 metadata, dynamic registration, the user sent to authorize
    # (the SDK's UnauthorizedError); then finishAuth discovers again and exchanges the code.
    # Then MCP with a bearer token and no Origin header (the gateway refuses foreign origins).
    story = [(r["method"], r["path"], r["status"]) for r in out["connectRequests"]]
    prm = ("GET", "/.well-known/oauth-protected-resource/mcp/demo", 200)
    asm = ("GET", "/.well-known/oauth-authorization-server", 200)
    assert story[:7] == [
        ("POST", "/mcp/demo", 401), prm, asm, ("POST", "/oauth/register", 201),
        prm, asm, ("POST", "/oauth/token", 200),
    ], story
    assert story[7] == ("POST", "/mcp/demo", 200), story
    mcp = [r for r in out["requests"] if r["path"] == "/mcp/demo"]
    assert all(r["bearer"] for r in mcp[1:]), mcp
    assert all(r["origin"] is None for r in out["requests"]), out["requests"]

    first = out["authorizations"][0]
    assert first["resource"] == mcp_server.base + "/mcp/demo"
    assert first["code_challenge_method"] == "S256" and first["client_id"] == out["clientId"]
    assert set(first["scope"].split()) == {"demo:read"}, first
    assert out["server"]["name"] == "grantline-demo"

    assert {"get_time", "list_notes"} <= set(out["tools"]) <= {"get_time", "list_notes", "add_note"}
    assert not out["read"]["isError"] and "T" in out["read"]["text"], out["read"]
    assert out["scopeBefore"].split() == ["demo:read"]

    # Step-up: the write tool was refused with 403 insufficient_scope naming both scopes, the
    # user consented again, and the call went through with a token for both.
    assert out["stepUp"]["path"] in ("sdk-redirect", "sdk-refreshed-then-gave-up"), out["stepUp"]
    assert out["stepUp"]["challenge"]["error"] == "insufficient_scope", out["stepUp"]
    assert set(out["stepUp"]["challenge"]["scope"].split()) == {"demo:read", "demo:write"}
    step = [(r["method"], r["path"], r["status"]) for r in out["stepUpRequests"]]
    assert step[0] == ("POST", "/mcp/demo", 403) and step[-1] == ("POST", "/mcp/demo", 200), step
    assert len(out["authorizations"]) == 2 and out["consents"] == 2
    assert set(out["authorizations"][1]["scope"].split()) == {"demo:read", "demo:write"}
    assert not out["added"]["isError"], out["added"]
    assert "hello from the TypeScript SDK" in out["added"]["text"]
    assert set(out["scopeAfter"].split()) == {"demo:read", "demo:write"}
    assert "hello from the TypeScript SDK" in out["notes"]["text"]

    mcp_server.stop()
    binary = os.environ.get("GRANTLINE_BIN", str(ROOT / "target/debug/grantline"))
    ledger = subprocess.run(
        [binary, "--data-dir", str(mcp_server.data_dir), "events", "--json", "--limit", "100000"],
        capture_output=True, text=True, check=True,
        env={k: v for k, v in os.environ.items() if k != "GRANTLINE_CONFIG"},
    ).stdout
    events = [json.loads(line) for line in ledger.splitlines() if line.strip()]
    kinds = [e["kind"] for e in events]
    registered = [e["payload"]["client_id"] for e in events if e["kind"] == "client.registered"]
    assert registered == ["resource-server", out["clientId"]], registered  # configured; the SDK's
    assert kinds.count("consent.granted") == 2, kinds
    for k in ["code.issued", "token.issued", "tool.listed", "authorization.denied"]:
        assert k in kinds, f"{k} missing from {sorted(set(kinds))}"
    calls = [e["payload"] for e in events if e["kind"] == "tool.called"]
    # With this SDK version the step-up first refreshes (same scope) and is refused once more
    # before the client authorizes for demo:write (see client.mjs, typescript-sdk#2255).
    gave_up = out["stepUp"]["path"] == "sdk-refreshed-then-gave-up"
    denied = [("add_note", "denied")] * (2 if gave_up else 1)
    assert [(c["tool"], c["outcome"]) for c in calls] == [
        ("get_time", "ok"), *denied, ("add_note", "ok"), ("list_notes", "ok"),
    ], calls
    assert kinds.count("token.refreshed") == (1 if gave_up else 0), kinds
    assert all(c["client_id"] == out["clientId"] and c.get("user_id") for c in calls), calls
    assert "hello from the TypeScript SDK" not in ledger, "arguments are recorded as a digest only"
    for t in out["tokenHistory"]:
        assert t["access_token"] not in ledger and (t.get("refresh_token") or "x") not in ledger
