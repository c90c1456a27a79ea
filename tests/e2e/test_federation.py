"""Sign-in through an upstream OpenID Connect provider, end to end, with real parts:

- `tests/e2e/idp/provider.mjs`: npm's `oidc-provider` (a certified OpenID Provider) with two
  users, groups, refresh tokens, PKCE, and key rotation;
- `tests/e2e/idp/rogue.mjs`: a deliberately wrong provider whose ID tokens fail one check each
  (wrong iss/aud, expired, bad signature, alg none, a key not in its JWKS, a replayed nonce…);
- the official MCP Python SDK as the MCP client; `upstream_server.py` (the MCP Python SDK) as a
  third-party MCP server that exchanges the gateway's identity assertion for the user's
  upstream token (RFC 8693).

The MCP client sees only Grantline's OAuth flow; the browser (requests) goes from Grantline's
sign-in page to the provider, signs in there, comes back, consents.
"""
import asyncio
import base64
import concurrent.futures
import json
import os
import pathlib
import subprocess
import time
import urllib.parse

import pytest
import requests
from mcp.shared.exceptions import MCPError

from conftest import ROOT, Server, Upstream, free_port
from mcp_client import MemoryStorage, field, sdk_client, text_of

IDP_DIR = ROOT / "tests/e2e/idp"
IDP_SECRET = "e2e-idp-client-secret-5d1e-9a3f"
ROGUE_SECRET = "e2e-rogue-client-secret-0b7c"
EXCHANGE_SECRET = "e2e-notes-mcp-secret-77aa-4c1e-b0d2"
REDIRECT = "http://127.0.0.1:8767/callback"

CONFIG = """
[oauth]
access_token_ttl = 4
refresh_grace = 2

[roles.admin]
demo = ["*"]
notes = ["*"]
[roles.user]
demo = ["get_time", "list_notes"]
notes = ["whoami", "upstream_profile", "echo"]

[[resources]]
name = "demo"
path = "/mcp/demo"
upstream = "builtin:demo"
scopes = [{{ name = "demo:read" }}, {{ name = "demo:write" }}]
default_scopes = ["demo:read"]

[[resources]]
name = "notes"
path = "/mcp/notes"
upstream = "{upstream}"
scopes = [{{ name = "notes:read" }}, {{ name = "notes:write" }}]
default_scopes = ["notes:read"]
upstream_token_provider = "corp"
upstream_token_clients = ["notes-mcp"]

[[clients]]
client_id = "notes-mcp"
client_name = "The notes MCP server"
grant_types = ["client_credentials"]
scope = "notes:read"
secret_env = "GRANTLINE_E2E_EXCHANGE_SECRET"

[[clients]]
client_id = "other-mcp"
client_name = "Another MCP server"
grant_types = ["client_credentials"]
scope = "notes:read"
secret_env = "GRANTLINE_E2E_EXCHANGE_SECRET"

[[identity_providers]]
id = "corp"
display_name = "Corp SSO"
kind = "oidc"
issuer = "{issuer}"
client_id = "grantline"
client_secret_env = "GRANTLINE_E2E_IDP_SECRET"
scopes = ["openid", "email", "profile", "groups", "offline_access"]
allowed_email_domains = ["example.com"]
store_upstream_token = true
check_upstream_on_refresh = true
upstream_check_cache_secs = 0
role_mapping = [{{ claim = "groups", value = "mcp-admins", role = "admin" }}]

[[identity_providers]]
id = "staff"
display_name = "Staff SSO (accounts made by an admin)"
kind = "oidc"
issuer = "{issuer}"
client_id = "grantline"
client_secret_env = "GRANTLINE_E2E_IDP_SECRET"
provisioning = "existing"

[[identity_providers]]
id = "rogue"
display_name = "Rogue"
kind = "oidc"
issuer = "{rogue}"
client_id = "grantline"
client_secret_env = "GRANTLINE_E2E_ROGUE_SECRET"
clock_skew_secs = 30
jwks_cache_secs = 10
"""


class Node:
    """One of the Node providers, on a free port; `base` is its issuer."""

    def __init__(self, script, tmp_path, *args):
        self.port = free_port()
        self.log = open(tmp_path / f"{script}.log", "ab")
        self.proc = subprocess.Popen(
            ["node", str(IDP_DIR / script), "--port", str(self.port), *args],
            stdout=subprocess.PIPE, stderr=self.log, text=True,
        )
        line = self.proc.stdout.readline().strip()
        assert line.startswith("READY "), f"{script} did not start: {line!r}"
        self.base = line.split(" ", 1)[1]

    def post(self, path, body):
        r = requests.post(self.base + path, json=body, timeout=10)
        assert r.ok, r.text
        return r.json()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def node_available():
    if (IDP_DIR / "node_modules").is_dir():
        return True
    if os.environ.get("GRANTLINE_E2E_REQUIRE_NODE"):
        pytest.fail("tests/e2e/idp/node_modules is missing: tools/test.sh runs npm ci there")
    pytest.skip("run npm ci in tests/e2e/idp (tools/test.sh does) for the federation tests")


@pytest.fixture
def world(tmp_path, monkeypatch):
    node_available()
    (tmp_path / "data").mkdir()
    server = Server(tmp_path / "data", tmp_path / "server.log")
    callback = f"{server.base}/login/upstream/corp/callback"
    staff_callback = f"{server.base}/login/upstream/staff/callback"
    # Upstream access tokens live 40 s, so an exchange after that finds the token expired
    # and Grantline refreshes it first.
    idp = Node("provider.mjs", tmp_path, "--client-id", "grantline",
               "--client-secret", IDP_SECRET, "--redirect-uri", callback,
               "--redirect-uri", staff_callback,
               "--access-token-ttl", "40")
    rogue = Node("rogue.mjs", tmp_path, "--client-id", "grantline",
                 "--client-secret", ROGUE_SECRET)
    monkeypatch.setenv("GRANTLINE_E2E_IDP_SECRET", IDP_SECRET)
    monkeypatch.setenv("GRANTLINE_E2E_ROGUE_SECRET", ROGUE_SECRET)
    monkeypatch.setenv("GRANTLINE_E2E_EXCHANGE_SECRET", EXCHANGE_SECRET)
    # The third-party MCP server exchanges assertions at Grantline's token endpoint.
    monkeypatch.setenv("GRANTLINE_TOKEN_ENDPOINT", f"{server.base}/oauth/token")
    monkeypatch.setenv("EXCHANGE_CLIENT_ID", "notes-mcp")
    monkeypatch.setenv("EXCHANGE_CLIENT_SECRET", EXCHANGE_SECRET)
    monkeypatch.setenv("UPSTREAM_USERINFO", f"{idp.base}/userinfo")
    upstream = Upstream(tmp_path).start()
    server.config = CONFIG.format(upstream=upstream.url, issuer=idp.base, rogue=rogue.base)
    server.start()
    yield server, idp, rogue, upstream
    server.stop()
    upstream.stop()
    idp.stop()
    rogue.stop()


class FederatedBrowser:
    """Plays the user: on Grantline's sign-in page picks a provider, signs in there with a
    password (once: the provider's session is kept), comes back, approves consent."""

    def __init__(self, base, redirect, provider="corp", user="alice", password=None):
        self.base, self.redirect = base, redirect
        self.provider, self.user = provider, user
        self.password = password or f"{user}-pw"
        self.session = requests.Session()
        self.callbacks = []
        self.hops = []
        self.refuse = False
        self.stop_at_callback = False

    def follow(self, r):
        """Follows redirects by hand (the MCP client's redirect URI is not listening), signing
        in at the provider's form when it appears; stops at a page or at the client."""
        for _ in range(30):
            self.hops.append((r.status_code, r.url))
            if r.status_code in (301, 302, 303, 307):
                location = urllib.parse.urljoin(r.url, r.headers["location"])
                if location.startswith(self.redirect):
                    return location
                if self.stop_at_callback and "/callback?" in location \
                        and location.startswith(self.base):
                    return location
                r = self.session.get(location, allow_redirects=False)
                continue
            if r.status_code == 200 and 'name="password"' in r.text and "/interaction/" in r.url:
                action = urllib.parse.urljoin(r.url, r.url.rstrip("/").split("?")[0] + "/login")
                r = self.session.post(action, data={"username": self.user,
                                                    "password": self.password},
                                      allow_redirects=False)
                continue
            return r
        raise AssertionError(f"too many redirects: {self.hops}")

    def sign_in_page(self, return_to="/"):
        return self.session.get(self.base + "/login", params={"return_to": return_to})

    def click(self, page, provider=None):
        provider = provider or self.provider
        marker = f'action="/login/upstream/{provider}"'
        assert marker in page.text, page.text
        form = page.text.split(marker, 1)[1]
        csrf = form.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        return_to = form.split('name="return_to" value="', 1)[1].split('"', 1)[0]
        data = {"csrf": csrf, "return_to": return_to.replace("&amp;", "&")}
        r = self.session.post(f"{self.base}/login/upstream/{provider}", data=data,
                              allow_redirects=False)
        assert r.status_code == 303, r.text
        return self.follow(r)

    def authorize(self, url):
        if self.refuse:
            raise RuntimeError("the test does not sign in again here")
        r = self.session.get(url, allow_redirects=False)
        if r.status_code == 302 and "/login?" in r.headers["location"]:
            page = self.session.get(urllib.parse.urljoin(self.base, r.headers["location"]))
            r = self.click(page)
        else:
            r = self.follow(r)
        if not isinstance(r, str) and r.status_code == 200 and 'name="request_id"' in r.text:
            r = self.session.post(self.base + "/oauth/consent", data={
                "request_id": field(r.text, "request_id"), "csrf": field(r.text, "csrf"),
                "decision": "approve",
            }, allow_redirects=False)
            r = self.follow(r)
        assert isinstance(r, str) and r.startswith(self.redirect), (r, self.hops[-6:])
        self.callbacks.append(r)

    async def redirect_handler(self, url):
        await asyncio.to_thread(self.authorize, url)

    async def callback_handler(self):
        from mcp.client.auth import AuthorizationCodeResult
        q = urllib.parse.parse_qs(urllib.parse.urlparse(self.callbacks[-1]).query)
        return AuthorizationCodeResult(code=q["code"][0], state=q.get("state", [None])[0],
                                       iss=q.get("iss", [None])[0])

    def sign_out(self):
        """Forgets Grantline's session cookie (the provider's session stays: signing in again
        there needs no password)."""
        for c in list(self.session.cookies):
            if c.name == "grantline_session":
                self.session.cookies.clear(c.domain, c.path, c.name)


def events(server):
    binary = os.environ.get("GRANTLINE_BIN", str(ROOT / "target/debug/grantline"))
    out = subprocess.run(
        [binary, "--data-dir", str(server.data_dir), "events", "--json", "--limit", "100000"],
        capture_output=True, text=True, check=True,
        env={k: v for k, v in os.environ.items() if k != "GRANTLINE_CONFIG"},
    ).stdout
    return out, [json.loads(l) for l in out.splitlines() if l.strip()]


def of(evs, kind):
    return [e["payload"] for e in evs if e["kind"] == kind]


async def alice_story(server, idp, browser, storage, seen):
    url = server.base + "/mcp/demo"
    async with sdk_client(url, browser, storage, "Federated SDK e2e", seen) as client:
        first = await client.call_tool("get_time", {})
        assert not first.is_error, first
        assert len(browser.callbacks) == 1
        # She went Grantline → the provider (password) → Grantline → consent → the client.
        hosts = [urllib.parse.urlparse(u).netloc for (_, u) in browser.hops]
        idp_host = urllib.parse.urlparse(idp.base).netloc
        assert idp_host in hosts, browser.hops
        # mcp-admins upstream → admin here: the write tool works (after the SDK's step-up).
        added = await client.call_tool("add_note", {"text": "from alice"})
        assert not added.is_error, added

        # Upstream, alice leaves mcp-admins. At her next sign-in here she loses admin, and the
        # next gateway call that needed it is refused — with the token she already holds.
        idp.post("/__test/groups", {"user": "alice", "groups": ["engineering"]})
        browser.sign_out()
        back = browser.click(browser.sign_in_page("/account"))
        assert back.status_code == 200 and "/account" in back.url, back.url
        with pytest.raises(MCPError) as denied:
            await client.call_tool("add_note", {"text": "again"})
        assert "your role does not permit this tool" in str(denied.value), denied.value
        still = await client.call_tool("get_time", {})
        assert not still.is_error, still
    return storage


def test_sign_in_through_oidc_provider_with_the_mcp_sdk(world):
    server, idp, rogue, upstream = world
    browser = FederatedBrowser(server.base, REDIRECT)
    storage, seen = MemoryStorage(), []
    asyncio.run(alice_story(server, idp, browser, storage, seen))

    out, evs = events(server)
    created = of(evs, "user.created")
    alice = [c for c in created if c.get("provider") == "corp"]
    assert len(alice) == 1 and alice[0]["source"] == "identity_provider", created
    user_id = alice[0]["user_id"]
    assert alice[0]["role"] == "admin"
    assert alice[0]["email"] == "alice@example.com", alice[0]
    linked = of(evs, "user.linked")
    assert [(l["user_id"], l["provider"], l["subject"]) for l in linked] == \
        [(user_id, "corp", "u-alice-7c1d")], linked
    logins = [l for l in of(evs, "login.succeeded") if l["user_id"] == user_id]
    assert len(logins) == 2 and all(l["provider"] == "corp" and l["method"] == "idp:corp"
                                    and l["upstream_subject"] == "u-alice-7c1d" for l in logins)
    changed = [c for c in of(evs, "user.role_changed") if c["user_id"] == user_id]
    assert changed == [{"user_id": user_id, "from": "admin", "to": "user", "provider": "corp"}], \
        changed
    # The chain for her: created, linked, signed in, consented, code, token, tool calls.
    kinds = [e["kind"] for e in evs]
    order = [kinds.index(k) for k in ["user.created", "user.linked", "login.succeeded",
                                      "consent.granted", "code.issued", "token.issued",
                                      "tool.called"]]
    assert order == sorted(order), kinds
    calls = [(c["tool"], c["outcome"]) for c in of(evs, "tool.called") if c.get("user_id") == user_id]
    assert ("add_note", "ok") in calls and calls[-2:] == [("add_note", "denied"), ("get_time", "ok")], calls


def test_deprovisioning_upstream_revokes_everything_at_the_next_refresh(world):
    server, idp, rogue, upstream = world
    browser = FederatedBrowser(server.base, REDIRECT, user="bob")
    storage, seen = MemoryStorage(), []

    async def bob():
        async with sdk_client(server.base + "/mcp/demo", browser, storage, "Bob's client", seen) as c:
            assert not (await c.call_tool("get_time", {})).is_error
    asyncio.run(bob())
    first_family_refresh = storage.tokens.refresh_token
    # A second family (another authorization of the same client) and a personal access token.
    browser.sign_out()
    asyncio.run(bob_again(server, browser))
    page = browser.session.get(server.base + "/account").text
    r = browser.session.post(server.base + "/account/pats", data={
        "csrf": field(page, "csrf"), "name": "laptop", "resource": server.base + "/mcp/demo",
        "scope": "demo:read", "expires": "30"}, allow_redirects=False)
    assert r.status_code in (200, 303), r.text
    pat_page = r.text if r.status_code == 200 else browser.session.get(server.base + "/account").text
    pat = next(w for w in pat_page.replace('"', " ").replace("<", " ").replace(">", " ").split()
               if w.startswith("glp_"))
    ok = requests.post(server.base + "/mcp/demo", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                       headers={"Authorization": f"Bearer {pat}",
                                "Accept": "application/json, text/event-stream"})
    assert ok.status_code == 200, ok.text

    # Upstream, bob's access is revoked (his refresh tokens there die).
    idp.post("/__test/revoke", {"user": "bob"})
    r = requests.post(server.base + "/oauth/token", data={
        "grant_type": "refresh_token", "refresh_token": first_family_refresh,
        "client_id": storage.client.client_id})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    assert "identity provider" in r.json()["error_description"]
    # Everything of his is gone: the other family, the PAT.
    r = requests.post(server.base + "/oauth/token", data={
        "grant_type": "refresh_token", "refresh_token": storage.tokens.refresh_token,
        "client_id": storage.client.client_id})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    gone = requests.post(server.base + "/mcp/demo", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                         headers={"Authorization": f"Bearer {pat}",
                                  "Accept": "application/json, text/event-stream"})
    assert gone.status_code == 401, gone.text

    out, evs = events(server)
    bob_id = next(c["user_id"] for c in of(evs, "user.created") if c.get("email") == "bob@example.com")
    reasons = [g["reason"] for g in of(evs, "grant.revoked") if g["user_id"] == bob_id]
    reasons += [p["reason"] for p in of(evs, "pat.revoked")]
    assert reasons and all("deprovisioned by identity provider corp" in r for r in reasons), reasons
    assert any(p for p in of(evs, "pat.revoked")), "the PAT was revoked"
    # His browser session is over too: he cannot consent again without the provider.
    ended = [e for e in of(evs, "user.sessions_ended") if e["user_id"] == bob_id]
    assert ended and "deprovisioned by identity provider corp" in ended[-1]["reason"], ended
    account = browser.session.get(server.base + "/account", allow_redirects=False)
    assert account.status_code in (302, 303) and "/login" in account.headers["location"], \
        (account.status_code, account.headers.get("location"))


def test_upstream_tokens_that_cannot_be_kept_refuse_the_refresh(world):
    """At a refresh, Grantline refreshes the person's upstream tokens to ask the provider
    about them. When the rotated tokens cannot be stored here, that is Grantline failing, not
    the provider answering: the refresh is refused with 503 and nothing is issued."""
    import sqlite3
    server, idp, rogue, upstream = world
    browser = FederatedBrowser(server.base, REDIRECT, user="bob")
    storage = MemoryStorage()

    async def bob():
        async with sdk_client(server.base + "/mcp/demo", browser, storage, "Bob's client", []) as c:
            assert not (await c.call_tool("get_time", {})).is_error
    asyncio.run(bob())
    db = sqlite3.connect(server.data_dir / "grantline.db")
    for op in ("INSERT", "UPDATE"):
        db.execute(f"CREATE TRIGGER keep_nothing_{op} BEFORE {op} ON upstream_tokens "
                   "BEGIN SELECT RAISE(ABORT, 'kept nowhere'); END")
    db.commit()
    r = requests.post(server.base + "/oauth/token", data={
        "grant_type": "refresh_token", "refresh_token": storage.tokens.refresh_token,
        "client_id": storage.client.client_id})
    assert r.status_code == 503, r.text
    assert "access_token" not in r.text
    # The provider rotated the person's refresh token meanwhile: once the database takes writes
    # again, the next refresh uses the rotated one held in memory, and the person keeps their
    # access (the old one, refused, would have read as the provider ending it).
    for op in ("INSERT", "UPDATE"):
        db.execute(f"DROP TRIGGER keep_nothing_{op}")
    db.commit()
    db.close()
    r = requests.post(server.base + "/oauth/token", data={
        "grant_type": "refresh_token", "refresh_token": storage.tokens.refresh_token,
        "client_id": storage.client.client_id})
    assert r.status_code == 200, r.text
    _, evs = events(server)
    assert not [g for g in of(evs, "grant.revoked") if "deprovisioned" in g.get("reason", "")]


async def bob_again(server, browser):
    storage = MemoryStorage()
    async with sdk_client(server.base + "/mcp/demo", browser, storage, "Bob's other client", []) as c:
        assert not (await c.call_tool("get_time", {})).is_error
    return storage


def test_token_exchange_gives_the_mcp_server_the_users_upstream_token(world, tmp_path):
    server, idp, rogue, upstream = world
    browser = FederatedBrowser(server.base, REDIRECT)
    storage, seen = MemoryStorage(), []
    got = {}

    async def run():
        async with sdk_client(server.base + "/mcp/notes", browser, storage, "Notes client", seen) as c:
            profile = await c.call_tool("upstream_profile", {})
            got["profile"] = json.loads(text_of(profile))
            who = await c.call_tool("whoami", {})
            got["whoami"] = json.loads(text_of(who))
    asyncio.run(run())
    # The MCP server, with the token it exchanged, is alice at the provider.
    assert got["profile"]["exchange_status"] == 200, got
    assert got["profile"]["userinfo"]["sub"] == "u-alice-7c1d", got
    assert got["whoami"]["authorization"] is None, "no passthrough of any token"
    assertion = got["whoami"]["identity"]

    def exchange(client, secret, **extra):
        return requests.post(server.base + "/oauth/token", data={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": assertion,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", **extra,
        }, auth=(client, secret))

    ok = exchange("notes-mcp", EXCHANGE_SECRET)
    assert ok.status_code == 200, ok.text
    upstream_token = ok.json()["access_token"]
    assert ok.json()["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert requests.get(idp.base + "/userinfo", headers={"Authorization": f"Bearer {upstream_token}"}).ok
    # The upstream token expires (40 s, less the 30 s margin): the next exchange refreshes it
    # at the provider first, and hands out the new one. A fresh assertion is needed (60 s).
    time.sleep(11)
    async def again():
        async with sdk_client(server.base + "/mcp/notes", browser, storage, "Notes client", seen) as c:
            got["whoami2"] = json.loads(text_of(await c.call_tool("whoami", {})))
    asyncio.run(again())
    assertion = got["whoami2"]["identity"]
    # Four exchanges at once find the token expired. The provider rotates refresh tokens and
    # refuses a used one, so refreshing four times in parallel would read as the person's
    # access having ended: Grantline refreshes once and hands the new token to all four.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: exchange("notes-mcp", EXCHANGE_SECRET), range(4)))
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    fresh = answers[0]
    refreshed_token = fresh.json()["access_token"]
    assert {a.json()["access_token"] for a in answers} == {refreshed_token}
    assert refreshed_token != upstream_token
    assert requests.get(idp.base + "/userinfo", headers={"Authorization": f"Bearer {refreshed_token}"}).ok
    # A client the resource does not name; an assertion presented for another resource; a
    # tampered assertion; a wrong subject token type.
    no = exchange("other-mcp", EXCHANGE_SECRET)
    assert no.status_code == 400 and no.json()["error"] == "unauthorized_client", no.text
    other = exchange("notes-mcp", EXCHANGE_SECRET, resource=server.base + "/mcp/demo")
    assert other.status_code == 400 and other.json()["error"] == "invalid_target", other.text
    head, body, sig = assertion.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["sub"] = "someone-else"
    forged_body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    assertion_saved, assertion = assertion, f"{head}.{forged_body}.{sig}"
    forged = exchange("notes-mcp", EXCHANGE_SECRET)
    assert forged.status_code == 400 and forged.json()["error"] == "invalid_request", forged.text
    assertion = assertion_saved

    server.stop()
    out, evs = events(server)
    exchanges = of(evs, "upstream_token.exchanged")
    assert len(exchanges) == 6 and all(x["client_id"] == "notes-mcp" and x["provider"] == "corp"
                                       for x in exchanges), exchanges
    refreshed = [bool(x.get("refreshed")) for x in exchanges]
    assert refreshed[:2] == [False, False] and sorted(refreshed[2:]) == [False] * 3 + [True], exchanges
    assert not of(evs, "user.sessions_ended") and not of(evs, "grant.revoked"), "nobody deprovisioned"
    # The upstream tokens are nowhere: not in the ledger, the logs, or any file of the data
    # dir. Every access and refresh token the provider issued to alice (rotated ones too).
    issued = idp.post("/__test/tokens", {"user": "alice"})
    assert upstream_token in issued["AccessToken"] and len(issued["RefreshToken"]) >= 2, issued
    log = (tmp_path / "server.log").read_text()
    files = [f.read_bytes() for f in pathlib.Path(server.data_dir).rglob("*") if f.is_file()]
    for token in {upstream_token, refreshed_token, *issued["AccessToken"], *issued["RefreshToken"]}:
        assert token not in out and token not in log
        assert not any(token.encode() in b for b in files)


@pytest.mark.parametrize("mode,code,why", [
    ("wrong_iss", "id_token_invalid", "issuer"),
    ("wrong_aud", "id_token_invalid", "audience"),
    ("expired", "id_token_invalid", "expired"),
    ("future_iat", "id_token_invalid", "issued in the future"),
    ("bad_signature", "id_token_invalid", "signature"),
    ("alg_none", "id_token_invalid", "signature"),
    ("rotated_key", "id_token_invalid", "no matching key"),
    ("replay_nonce", "id_token_invalid", "nonce"),
    ("azp_mismatch", "id_token_invalid", "audience"),
    ("azp_other", "id_token_invalid", "authorized party (azp)"),
    ("no_nonce", "id_token_invalid", "nonce"),
    ("state_mismatch", "state_mismatch", "state mismatch"),
    ("iss_param_wrong", "issuer_mismatch", "another issuer"),
    ("iss_param_missing", "issuer_missing", "did not say which issuer answered"),
    ("access_denied", "access_denied", "refused the sign-in"),
])
def test_a_bad_answer_from_the_provider_is_refused_with_a_page_and_an_event(world, mode, code, why):
    server, idp, rogue, upstream = world
    browser = FederatedBrowser(server.base, REDIRECT, provider="rogue")
    if mode == "replay_nonce":
        # One good sign-in first, so that there is a previous nonce to replay.
        rogue.post("/__test/mode", {"mode": "ok"})
        ok = browser.click(browser.sign_in_page())
        assert ok.status_code == 200, ok.text
        browser.sign_out()
    rogue.post("/__test/mode", {"mode": mode})
    page = browser.click(browser.sign_in_page())
    assert page.status_code in (400, 403), (page.status_code, page.text[:500])
    assert "Sign-in through Rogue failed" in page.text and f"({code})" in page.text, page.text
    assert why.lower() in page.text.lower(), page.text
    assert "grantline_session" not in browser.session.cookies.get_dict() or mode == "replay_nonce"
    _, evs = events(server)
    failed = [f for f in of(evs, "login.failed") if f.get("provider") == "rogue"]
    assert failed and failed[-1]["error"].startswith(code), failed
    assert not [c for c in of(evs, "user.created") if c.get("provider") == "rogue"] \
        or mode == "replay_nonce"


def test_made_up_callbacks_take_no_room_and_an_answered_one_is_not_taken_twice(world):
    """Only a callback the provider answered with a person is remembered: one without a code
    (anyone can send those, with a flow of their own) fails and leaves the sign-in open, so
    a flood of them cannot fill the memory that refuses replays; the answered one is refused
    when it comes again."""
    server, idp, rogue, upstream = world
    browser = FederatedBrowser(server.base, REDIRECT, user="bob")
    browser.stop_at_callback = True
    callback = browser.click(browser.sign_in_page("/account"))
    assert isinstance(callback, str) and "code=" in callback, callback
    parts = urllib.parse.urlparse(callback)
    query = urllib.parse.parse_qs(parts.query)
    no_code = parts._replace(query=urllib.parse.urlencode(
        {k: v[0] for k, v in query.items() if k != "code"})).geturl()
    # A failed callback clears the browser's sign-in cookie; whoever replays it keeps a copy.
    kept = requests.utils.dict_from_cookiejar(browser.session.cookies)
    for _ in range(3):
        replay = requests.Session()
        replay.cookies.update(kept)
        r = replay.get(no_code, allow_redirects=False)
        assert r.status_code == 400 and "(no_code)" in r.text, r.text[:300]
    browser.session.cookies.update(kept)
    r = browser.session.get(callback, allow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].endswith("/account"), (r.status_code, r.text[:300])
    # The same answer again, with the same cookies: refused before the provider is asked.
    again = requests.Session()
    again.cookies.update(kept)
    r = again.get(callback, allow_redirects=False)
    assert r.status_code == 400 and "(state_replayed)" in r.text, r.text[:300]


def test_callbacks_that_would_ask_the_provider_are_limited_per_address(world, tmp_path):
    """Anyone can begin a sign-in and send its callback made-up codes, again and again; each
    would have Grantline ask the provider's token endpoint with its client secret (providers
    limit those requests per client). Past 30 in ten minutes from one address, a callback is
    refused before the provider is asked. Successful sign-ins do not count, but one person's
    are limited to thirty in fifteen minutes."""
    server, idp, rogue, upstream = world
    rogue.post("/__test/mode", {"mode": "ok"})
    # Sign-ins that succeed do not count against the address: one person signs in thirty
    # times from it.
    for i in range(30):
        person = FederatedBrowser(server.base, REDIRECT, provider="rogue")
        page = person.click(person.sign_in_page("/account"))
        assert page.status_code == 200 and "/account" in page.url, (i, page.text[:300])
    # But one person's sign-ins are limited as a name's on the sign-in page are (thirty in
    # fifteen minutes): the thirty-first is refused, after the provider was asked, so it
    # counts against the address.
    person = FederatedBrowser(server.base, REDIRECT, provider="rogue")
    page = person.click(person.sign_in_page("/account"))
    assert page.status_code == 429 and "of this account" in page.text, (page.status_code, page.text[:300])
    browser = FederatedBrowser(server.base, REDIRECT, provider="rogue")
    browser.stop_at_callback = True
    callback = browser.click(browser.sign_in_page())
    assert isinstance(callback, str) and "code=" in callback, callback
    parts = urllib.parse.urlparse(callback)
    query = {k: v[0] for k, v in urllib.parse.parse_qs(parts.query).items()}
    kept = requests.utils.dict_from_cookiejar(browser.session.cookies)
    log = tmp_path / "rogue.mjs.log"
    asked = lambda: log.read_text().count("POST /token")
    before = asked()
    answers = []
    for i in range(30):
        replay = requests.Session()
        replay.cookies.update(kept)
        made_up = parts._replace(query=urllib.parse.urlencode({**query, "code": f"made-up-{i}"}))
        r = replay.get(made_up.geturl(), allow_redirects=False)
        answers.append((r.status_code, "(rate_limited)" in r.text))
    assert all(status == 400 and not limited for status, limited in answers[:29]), answers
    assert answers[29] == (429, True), answers[29]
    assert asked() - before == 29
    # The browser's own answer, from the same address, waits too: nothing was asked for it.
    browser.session.cookies.update(kept)
    r = browser.session.get(callback, allow_redirects=False)
    assert r.status_code == 429, (r.status_code, r.text[:300])
    assert asked() - before == 29


def test_a_request_too_long_to_carry_through_the_provider_is_refused_at_once(world):
    """The pending sign-in travels in a cookie, which a browser drops without a word past
    about 4 KB; the callback would then say no sign-in is in progress. A return address that
    long is refused when the sign-in begins, saying why; the provider is never asked."""
    server, idp, rogue, upstream = world
    browser = FederatedBrowser(server.base, REDIRECT)
    page = browser.sign_in_page("/oauth/authorize?state=" + "x" * 4000)
    marker = 'action="/login/upstream/corp"'
    form = page.text.split(marker, 1)[1]
    csrf = form.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    return_to = form.split('name="return_to" value="', 1)[1].split('"', 1)[0]
    assert len(return_to) > 4000
    r = browser.session.post(f"{server.base}/login/upstream/corp",
                             data={"csrf": csrf, "return_to": return_to.replace("&amp;", "&")},
                             allow_redirects=False)
    assert r.status_code == 400 and "too long" in r.text, (r.status_code, r.text[:300])
    assert "grantline_upstream" not in r.headers.get("set-cookie", "")
    # An ordinary one goes on to the provider.
    r = browser.session.post(f"{server.base}/login/upstream/corp",
                             data={"csrf": csrf, "return_to": "/account"},
                             allow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith(idp.base), r.status_code


def begin_upstream(browser, server, idp, return_to):
    """Clicks the provider's button on the sign-in page; the browser is sent to the provider
    (the redirect is not followed)."""
    page = browser.sign_in_page(return_to)
    form = page.text.split('action="/login/upstream/corp"', 1)[1]
    csrf = form.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    r = browser.session.post(f"{server.base}/login/upstream/corp",
                             data={"csrf": csrf, "return_to": return_to},
                             allow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith(idp.base), r.text
    return r


def pending_cookies(browser):
    return sorted(c.name for c in browser.session.cookies
                  if c.name.startswith("grantline_upstream"))


def test_two_sign_ins_begun_at_once_in_one_browser_both_finish(world):
    """Two applications connecting at once send the person to the provider twice from one
    browser. Each pending sign-in keeps its own cookie, so the first to come back is not
    taken for the second (a state mismatch), and each callback ends only its own."""
    server, idp, rogue, upstream = world
    browser = FederatedBrowser(server.base, REDIRECT)
    first = begin_upstream(browser, server, idp, "/account")
    second = begin_upstream(browser, server, idp, "/admin/audit")
    assert len(pending_cookies(browser)) == 2, pending_cookies(browser)
    # The first comes back after the second began: it finishes, and the second's cookie stays.
    page = browser.follow(first)
    assert page.status_code == 200 and page.url.endswith("/account"), (page.url, page.text[:300])
    assert len(pending_cookies(browser)) == 1, pending_cookies(browser)
    # The second finishes too (the provider's session answers).
    browser.sign_out()
    page = browser.follow(second)
    # Signed in and sent on to the page it began from (which her role may or may not open).
    assert page.url.endswith("/admin/audit") and "Sign-in through" not in page.text, \
        (page.url, page.status_code, page.text[:300])
    assert "grantline_session" in browser.session.cookies
    assert pending_cookies(browser) == []


def test_two_first_sign_ins_of_one_person_at_once_end_on_one_account(world):
    """A person's first sign-in finished twice at once (two tabs): both write the link row
    first, one records the new user and the other's decision is refused. The refused one must
    not take away the link the winner recorded, or the person's next sign-in would make a
    second account (and theirs would be orphaned)."""
    server, idp, rogue, upstream = world
    browser = FederatedBrowser(server.base, REDIRECT, user="bob")
    browser.stop_at_callback = True
    callbacks = [browser.click(browser.sign_in_page("/account")) for _ in range(2)]
    assert all(isinstance(c, str) and "code=" in c for c in callbacks), callbacks
    kept = requests.utils.dict_from_cookiejar(browser.session.cookies)

    def finish(url):
        s = requests.Session()
        s.cookies.update(kept)
        return s.get(url, allow_redirects=False).status_code

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(finish, callbacks))
    assert 303 in answers, answers
    later = FederatedBrowser(server.base, REDIRECT, user="bob")
    page = later.click(later.sign_in_page("/account"))
    assert page.status_code == 200 and page.url.endswith("/account"), page.text[:300]
    _, evs = events(server)
    created = [c for c in of(evs, "user.created") if c.get("email") == "bob@example.com"]
    assert len(created) == 1, created


def test_sign_ins_begun_and_never_finished_keep_a_few_cookies_at_most(world):
    """Each pending sign-in's cookie may be near 4 KB: sign-ins begun and abandoned would
    otherwise pile up until the browser's requests are too large to be taken. Beyond the
    newest three, or 6,000 bytes, older ones go; the newest still finishes."""
    server, idp, rogue, upstream = world
    browser = FederatedBrowser(server.base, REDIRECT)
    begun = [begin_upstream(browser, server, idp, "/account") for _ in range(5)]
    assert len(pending_cookies(browser)) == 3, pending_cookies(browser)
    page = browser.follow(begun[-1])
    assert page.status_code == 200 and page.url.endswith("/account"), (page.url, page.text[:300])
    # The oldest is gone: its answer finds no sign-in of its own.
    browser.sign_out()
    page = browser.follow(begun[0])
    assert page.status_code == 400 and "(state_mismatch)" in page.text, page.text[:300]
    # Long ones (an application's authorization request near the limit) count by their size:
    # two would not fit in a proxy's header line beside the other cookies.
    other = FederatedBrowser(server.base, REDIRECT)
    long = "/oauth/authorize?state=" + "y" * 2500
    for _ in range(2):
        begin_upstream(other, server, idp, long)
    assert len(pending_cookies(other)) == 1, pending_cookies(other)
    assert sum(len(c.name) + len(c.value) for c in other.session.cookies
               if c.name.startswith("grantline_upstream")) <= 6000


def test_a_fresh_sign_in_asked_for_is_asked_of_the_provider_too(world):
    """An application's `prompt=login` makes Grantline forget its own session; through an
    identity provider the person must sign in again there too, not be waved through by the
    provider's own session. The provider is asked `prompt=login` and `max_age=0`, and its ID
    token's `auth_time` must be after the sign-in began."""
    server, idp, rogue, upstream = world
    browser = FederatedBrowser(server.base, REDIRECT)
    passwords = lambda: sum(1 for _, u in browser.hops
                            if "/interaction/" in u and u.rstrip("/").endswith("/login"))
    page = browser.click(browser.sign_in_page("/account"))
    assert page.status_code == 200 and "/account" in page.url, page.url
    assert passwords() == 1
    # Signed out here, signed in again: the provider's session answers, no password.
    browser.sign_out()
    page = browser.click(browser.sign_in_page("/account"))
    assert page.status_code == 200 and "/account" in page.url, page.url
    assert passwords() == 1
    # An application asks for a fresh sign-in: Grantline's sign-in page carries it...
    client = requests.post(server.base + "/oauth/register", json={
        "client_name": "Fresh", "redirect_uris": [REDIRECT],
        "token_endpoint_auth_method": "none"}).json()["client_id"]
    def fresh_page(b):
        """The sign-in page an authorization request with `prompt=login` leads to."""
        r = b.session.get(server.base + "/oauth/authorize", params={
            "response_type": "code", "client_id": client, "redirect_uri": REDIRECT,
            "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "code_challenge_method": "S256", "state": "s", "prompt": "login",
            "resource": server.base + "/mcp/demo"}, allow_redirects=False)
        assert r.status_code == 302, r.text[:400]
        location = urllib.parse.unquote(r.headers["location"])
        assert "prompt=login" in location and "grantline_signed_in_after=" in location, location
        return b.session.get(urllib.parse.urljoin(server.base, r.headers["location"]))

    page = fresh_page(browser)
    # ...and the provider signs her in again: the password once more. The request then goes
    # on to the consent page.
    page = browser.click(page)
    assert passwords() == 2, "\n".join(f"{s} {u}" for s, u in browser.hops[-8:])
    authorize = [u for _, u in browser.hops if u.startswith(idp.base + "/authorize?")]
    assert "prompt=login" in authorize[-1] and "max_age=0" in authorize[-1], authorize[-1]
    assert page.status_code == 200 and 'name="request_id"' in page.text, page.text[:400]
    # A provider that answers from an older sign-in anyway, or does not say when the person
    # signed in, is refused; one that signed the person in just now is not.
    rogue_browser = FederatedBrowser(server.base, REDIRECT, provider="rogue")
    for mode, why in [("stale_auth_time", "before it began"), ("ok", "(auth_time)")]:
        rogue.post("/__test/mode", {"mode": mode})
        page = rogue_browser.click(fresh_page(rogue_browser))
        assert page.status_code == 400 and "(id_token_invalid)" in page.text, page.text[:400]
        assert why in page.text, page.text[:400]
        # Without a fresh sign-in asked for, the same answer signs in.
        page = rogue_browser.click(rogue_browser.sign_in_page("/account"))
        assert page.status_code == 200 and "/account" in page.url, page.text[:400]
        rogue_browser.sign_out()
    rogue.post("/__test/mode", {"mode": "fresh_auth_time"})
    page = rogue_browser.click(fresh_page(rogue_browser))
    assert page.status_code == 200 and 'name="request_id"' in page.text, page.text[:400]


def test_keys_rotated_upstream_are_fetched_again(world):
    server, idp, rogue, upstream = world
    browser = FederatedBrowser(server.base, REDIRECT, user="bob")
    assert browser.click(browser.sign_in_page()).status_code == 200
    before = requests.get(idp.base + "/__test/kids").json()
    idp.post("/__test/rotate", {"keep_old": False})
    after = requests.get(idp.base + "/__test/kids").json()
    assert before != after
    time.sleep(11)  # Grantline fetches a JWKS again at most every 10 s.
    browser.sign_out()
    back = browser.click(browser.sign_in_page())
    assert back.status_code == 200, back.text[:500]


def test_a_key_the_provider_withdrew_is_refused_once_the_cached_keys_are_old(world):
    server, idp, rogue, upstream = world
    browser = FederatedBrowser(server.base, REDIRECT, provider="rogue")
    rogue.post("/__test/mode", {"mode": "ok"})
    assert browser.click(browser.sign_in_page()).status_code == 200
    browser.sign_out()
    # The provider publishes a new key and withdraws the one Grantline has cached; a token
    # still signed with the withdrawn key (a leaked key, say) names a kid Grantline knows.
    rogue.post("/__test/rotate", {})
    rogue.post("/__test/mode", {"mode": "removed_key"})
    time.sleep(11)  # past the provider's jwks_cache_secs (10)
    page = browser.click(browser.sign_in_page())
    assert page.status_code == 400 and "(id_token_invalid)" in page.text, page.text[:500]
    assert "no matching key" in page.text.lower(), page.text[:500]
    _, evs = events(server)
    failed = [f for f in of(evs, "login.failed") if f.get("provider") == "rogue"]
    assert failed and failed[-1]["error"].startswith("id_token_invalid"), failed
    # Tokens with the new key are accepted.
    rogue.post("/__test/mode", {"mode": "ok"})
    assert browser.click(browser.sign_in_page()).status_code == 200


def test_a_provider_whose_userinfo_fails_ends_on_a_page_that_keeps_its_details_for_the_log(world):
    server, idp, rogue, upstream = world
    browser = FederatedBrowser(server.base, REDIRECT, provider="rogue")
    rogue.post("/__test/mode", {"mode": "userinfo_down"})
    try:
        page = browser.click(browser.sign_in_page())
    finally:
        rogue.post("/__test/mode", {"mode": "ok"})
    assert page.status_code == 502 and "(userinfo_failed)" in page.text, page.text[:500]
    assert "10.9.8.7" not in page.text and rogue.base not in page.text, page.text
    assert rogue.base + "/userinfo answered 500" in server.log_path.read_text(), \
        "the address and the reason are in the server's log"
    _, evs = events(server)
    failed = [f for f in of(evs, "login.failed") if f.get("provider") == "rogue"]
    assert failed and failed[-1]["error"].startswith("userinfo_failed"), failed


def test_a_person_outside_the_allowed_domains_is_refused(world):
    server, idp, rogue, upstream = world
    browser = FederatedBrowser(server.base, REDIRECT, user="carol")
    page = browser.click(browser.sign_in_page())
    assert page.status_code == 403 and "(email_domain_not_allowed)" in page.text, page.text
    _, evs = events(server)
    assert not [c for c in of(evs, "user.created") if c.get("email") == "carol@elsewhere.test"]


@pytest.mark.parametrize("provider,user,code", [
    ("corp", "carol", "email_domain_not_allowed"),  # an admission rule
    ("staff", "bob", "not_provisioned"),  # provisioning = "existing", and no account
])
def test_people_the_rules_refuse_keep_using_up_their_addresss_callbacks(world, provider, user, code):
    """A person the provider vouches for but who is refused here gives nothing back: each
    refused callback counts against the address's 30 in ten minutes, and takes no room among
    the states remembered as answered (anyone with an account at a public provider could fill
    those, and every sign-in would be refused as busy)."""
    server, idp, rogue, upstream = world
    for i in range(30):
        browser = FederatedBrowser(server.base, REDIRECT, provider=provider, user=user)
        page = browser.click(browser.sign_in_page())
        assert page.status_code == 403 and f"({code})" in page.text, (i, page.text[:300])
    browser = FederatedBrowser(server.base, REDIRECT, provider=provider, user=user)
    page = browser.click(browser.sign_in_page())
    assert page.status_code == 429 and "(rate_limited)" in page.text, page.text[:300]


def test_existing_provisioning_links_only_an_account_an_admin_made(world):
    server, idp, rogue, upstream = world
    browser = FederatedBrowser(server.base, REDIRECT, provider="staff", user="bob")
    refused = browser.click(browser.sign_in_page())
    assert refused.status_code == 403 and "(not_provisioned)" in refused.text, refused.text
    binary = os.environ.get("GRANTLINE_BIN", str(ROOT / "target/debug/grantline"))
    made = subprocess.run(
        [binary, "--data-dir", str(server.data_dir), "user", "add", "bob@example.com",
         "--email", "bob@example.com"],
        capture_output=True, text=True,
        env={**{k: v for k, v in os.environ.items() if k != "GRANTLINE_CONFIG"},
             "GRANTLINE_USER_PASSWORD": "a-local-password-nobody-uses-1"})
    assert made.returncode == 0, made.stderr

    def cli(*args):
        r = subprocess.run([binary, "--data-dir", str(server.data_dir), *args],
                           capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if k != "GRANTLINE_CONFIG"})
        assert r.returncode == 0, r.stderr

    def links():
        import sqlite3
        db = sqlite3.connect(f"file:{server.data_dir / 'grantline.db'}?mode=ro", uri=True)
        try:
            return db.execute("SELECT count(*) FROM user_links WHERE provider = 'staff'").fetchone()[0]
        finally:
            db.close()

    # A sign-in the decider refuses (the account is disabled) leaves no link row behind: left,
    # the next sign-in of that subject would count as one of a linked account, which is not
    # asked again whether it may be linked.
    cli("user", "disable", "bob@example.com", "--reason", "on leave")
    refused = browser.click(browser.sign_in_page("/account"))
    assert refused.status_code == 403 and "(sign_in_refused)" in refused.text, refused.text[:300]
    assert links() == 0
    cli("user", "enable", "bob@example.com", "--reason", "back")
    page = browser.click(browser.sign_in_page("/account"))
    assert page.status_code == 200 and "/account" in page.url, page.text[:300]
    assert links() == 1
    _, evs = events(server)
    bob = [c for c in of(evs, "user.created") if c.get("email") == "bob@example.com"]
    assert len(bob) == 1 and bob[0].get("provider") is None, "made by the admin, not by the sign-in"
    assert [(l["user_id"], l["provider"]) for l in of(evs, "user.linked")] == \
        [(bob[0]["user_id"], "staff")]
    failed = [f for f in of(evs, "login.failed") if f.get("provider") == "staff"]
    assert failed and failed[0]["error"].startswith("not_provisioned")

    # An account a sign-in made is named by that upstream's email: another provider that
    # links by email does not inherit it (nor would whoever holds the address next).
    alice = FederatedBrowser(server.base, REDIRECT, provider="corp", user="alice")
    page = alice.click(alice.sign_in_page("/account"))
    assert page.status_code == 200 and "/account" in page.url, page.text[:300]
    again = FederatedBrowser(server.base, REDIRECT, provider="staff", user="alice")
    refused = again.click(again.sign_in_page("/account"))
    assert refused.status_code == 403 and "(not_linkable)" in refused.text, refused.text
    assert "made at a sign-in through an identity provider" in refused.text
    _, evs = events(server)
    made = [c["user_id"] for c in of(evs, "user.created") if c.get("email") == "alice@example.com"]
    assert len(made) == 1
    assert [l["provider"] for l in of(evs, "user.linked") if l["user_id"] == made[0]] == ["corp"]
    assert [f["error"].split(":")[0] for f in of(evs, "login.failed")
            if f.get("provider") == "staff" and f.get("user_id") == made[0]] == ["not_linkable"]


def test_serve_refuses_a_provider_it_cannot_reach(tmp_path, monkeypatch):
    monkeypatch.setenv("GRANTLINE_E2E_IDP_SECRET", IDP_SECRET)
    dead = free_port()
    config = f"""
[[identity_providers]]
id = "corp"
kind = "oidc"
issuer = "http://127.0.0.1:{dead}"
client_id = "grantline"
client_secret_env = "GRANTLINE_E2E_IDP_SECRET"
"""
    (tmp_path / "data").mkdir()
    s = Server(tmp_path / "data", tmp_path / "server.log", config)
    with pytest.raises(RuntimeError) as e:
        s.start()
    assert "identity provider unreachable" in str(e.value) and "corp" in str(e.value), e.value
    assert "--start-without-providers" in str(e.value)
    # A discovery document for another issuer (here: a trailing slash too many) is refused too.
    node_available()
    rogue = Node("rogue.mjs", tmp_path, "--client-id", "grantline", "--client-secret", "x")
    try:
        wrong = Server(tmp_path / "data", tmp_path / "server3.log",
                       config.replace(f"http://127.0.0.1:{dead}", rogue.base + "/"))
        with pytest.raises(RuntimeError) as e:
            wrong.start()
        assert f'names the issuer "{rogue.base}", not the configured "{rogue.base}/"' in str(e.value), e.value
        # A wrong path (a realm that does not exist): the provider answers, but not with one.
        missing = Server(tmp_path / "data", tmp_path / "server4.log",
                         config.replace(f"http://127.0.0.1:{dead}", rogue.base + "/realms/nope"))
        with pytest.raises(RuntimeError) as e:
            missing.start()
        assert "identity provider discovery is invalid: corp: discovery:" in str(e.value), e.value
        assert "answered 404" in str(e.value), e.value
    finally:
        rogue.stop()
    s2 = Server(tmp_path / "data", tmp_path / "server2.log", config,
                extra_args=["--start-without-providers"])
    s2.start()
    try:
        page = requests.get(s2.base + "/login").text
        assert 'action="/login/upstream/corp"' in page
    finally:
        s2.stop()


GITHUB_CONFIG = """
[[identity_providers]]
id = "github"
preset = "github"
client_id = "Iv1.e2e-mock"
client_secret_env = "GRANTLINE_E2E_GH_SECRET"
# GitHub cannot be reached from here: tests/e2e/github_mock.py stands in for it.
authorization_url = "{gh}/login/oauth/authorize"
token_url = "{gh}/login/oauth/access_token"
userinfo_url = "{gh}/api/user"
allowed_organizations = ["acme"]
role_mapping = [{{ claim = "teams", value = "acme/platform", role = "admin" }}]
store_upstream_token = true
"""


def github_stand_in(secret):
    """Starts tests/e2e/github_mock.py on a free port; returns the process and its base URL."""
    import socket
    import sys
    port = free_port()
    gh = subprocess.Popen([sys.executable, str(pathlib.Path(__file__).with_name("github_mock.py")),
                           str(port), "Iv1.e2e-mock", secret])
    deadline = time.time() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return gh, f"http://127.0.0.1:{port}"
        except OSError:
            if time.time() > deadline:
                gh.terminate()
                raise AssertionError("the GitHub stand-in did not start")
            time.sleep(0.1)


def test_the_github_preset_against_a_stand_in_for_github(tmp_path, monkeypatch):
    secret = "e2e-github-secret-19fa"
    monkeypatch.setenv("GRANTLINE_E2E_GH_SECRET", secret)
    gh, gh_base = github_stand_in(secret)
    try:
        (tmp_path / "data").mkdir()
        server = Server(tmp_path / "data", tmp_path / "server.log", GITHUB_CONFIG.format(gh=gh_base))
        server.start()
        try:
            page = requests.get(server.base + "/login").text
            assert "Sign in with GitHub" in page, page
            octocat = FederatedBrowser(server.base, REDIRECT, provider="github")
            home = octocat.click(octocat.sign_in_page("/account"))
            assert home.status_code == 200 and "/account" in home.url, home.text[:300]
            r = octocat.session.post(server.base + "/account/pats", data={
                "csrf": field(home.text, "csrf"), "name": "ci", "resource": server.base + "/mcp/demo",
                "scope": "demo:read", "expires": "30"})
            assert r.status_code == 200 and "glp_" in r.text, r.text[:300]
            # octocat leaves the acme organisation upstream: the next sign-in is refused, and
            # what octocat held here is revoked.
            requests.post(gh_base + "/__test/orgs", json={"login": "octocat", "orgs": ["elsewhere"]})
            octocat.sign_out()
            gone = octocat.click(octocat.sign_in_page())
            assert gone.status_code == 403 and "(organization_not_allowed)" in gone.text
            # mona is not in the acme organisation.
            requests.post(gh_base + "/__test/user", json={"login": "mona"})
            mona = FederatedBrowser(server.base, REDIRECT, provider="github")
            refused = mona.click(mona.sign_in_page())
            assert refused.status_code == 403 and "(organization_not_allowed)" in refused.text
        finally:
            server.stop()
        _, evs = events(server)
        created = [c for c in of(evs, "user.created") if c.get("provider") == "github"]
        # The verified primary address from /user/emails, not the older one; admitted by the
        # acme organisation and admin from its team, both on the second page of their lists.
        assert [(c["email"], c["role"]) for c in created] == [("octocat@github.example", "admin")], created
        assert [(l["provider"], l["subject"]) for l in of(evs, "user.linked")] == [("github", "583231")]
        failed = [f for f in of(evs, "login.failed") if f.get("provider") == "github"]
        assert len(failed) == 2 and all(f["error"].startswith("organization_not_allowed")
                                        for f in failed), failed
        assert failed[0].get("user_id") == created[0]["user_id"], "the refusal names octocat"
        revoked = of(evs, "pat.revoked")
        assert len(revoked) == 1 and "no longer allowed at sign-in (organization_not_allowed)" \
            in revoked[0]["reason"], revoked
    finally:
        gh.terminate()
        gh.wait(timeout=10)


def refresh_after_github_changes(tmp_path, monkeypatch, change, expiring=False):
    """Signs octocat in through the GitHub stand-in (as a GitHub App with expiring tokens when
    `expiring`) on a server that checks the upstream at every refresh, refreshes twice while
    GitHub stands by them, lets `change(gh_base)` happen at GitHub, and refreshes once more.
    Returns that answer, the reasons of the grant revocations, and the server's log."""
    secret = "e2e-github-secret-19fa"
    monkeypatch.setenv("GRANTLINE_E2E_GH_SECRET", secret)
    gh, gh_base = github_stand_in(secret)
    try:
        requests.post(gh_base + "/__test/app", json={"expiring": expiring})
        (tmp_path / "data").mkdir()
        config = GITHUB_CONFIG.format(gh=gh_base) + \
            "check_upstream_on_refresh = true\nupstream_check_cache_secs = 0\n"
        server = Server(tmp_path / "data", tmp_path / "server.log", config)
        server.start()
        try:
            octocat = FederatedBrowser(server.base, REDIRECT, provider="github")
            storage = MemoryStorage()

            async def connect():
                async with sdk_client(server.base + "/mcp/demo", octocat, storage, "Octocat's client", []) as c:
                    assert not (await c.call_tool("get_time", {})).is_error
            asyncio.run(connect())

            def refresh():
                return requests.post(server.base + "/oauth/token", data={
                    "grant_type": "refresh_token", "refresh_token": storage.tokens.refresh_token,
                    "client_id": storage.client.client_id})
            # GitHub still stands by them: the check passes (rotating an expiring upstream
            # token each time) and the refresh goes through.
            for _ in range(2):
                r = refresh()
                assert r.status_code == 200, r.text
                storage.tokens.refresh_token = r.json()["refresh_token"]
            change(gh_base)
            answer = refresh()
        finally:
            server.stop()
        _, evs = events(server)
        reasons = [g["reason"] for g in of(evs, "grant.revoked")]
        return answer, reasons, server.log_path.read_text()
    finally:
        gh.terminate()
        gh.wait(timeout=10)


def test_leaving_the_organisation_upstream_ends_access_at_the_next_refresh(tmp_path, monkeypatch):
    """GitHub people are deprovisioned by removing them from the organisation, and their OAuth
    token outlives it: with check_upstream_on_refresh, each check also asks for the person's
    organisations, and a refresh after the removal revokes everything they hold."""
    r, reasons, _ = refresh_after_github_changes(tmp_path, monkeypatch, lambda gh: requests.post(
        gh + "/__test/orgs", json={"login": "octocat", "orgs": ["elsewhere"]}))
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    assert "identity provider" in r.json()["error_description"], r.text
    assert reasons and all("organization_not_allowed" in r for r in reasons), reasons


def test_a_github_app_token_revoked_upstream_ends_access_at_the_next_refresh(tmp_path, monkeypatch):
    """A GitHub App's user tokens expire and come with a refresh token. GitHub answers a refresh
    token it no longer honours (the person revoked the app, was suspended, or it expired) with
    `200 {"error": "bad_refresh_token"}`: that is a refusal, which deprovisions, and not an
    unreadable answer, which would let access continue unchecked for good."""
    r, reasons, log = refresh_after_github_changes(tmp_path, monkeypatch, lambda gh: requests.post(
        gh + "/__test/revoke", json={"login": "octocat"}), expiring=True)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    assert "identity provider" in r.json()["error_description"], r.text
    assert reasons and all("bad_refresh_token" in r for r in reasons), reasons
    assert "could not be checked; access continues" not in log


def test_the_same_provider_id_at_another_server_signs_its_people_in_apart(tmp_path, monkeypatch):
    """A subject is unique only within the server that issued it: the provider id "github"
    moved from github.com to a GitHub Enterprise server (both stand-ins here, whose octocat has
    the same numeric id) must not sign the Enterprise octocat in as github.com's."""
    secret = "e2e-github-secret-19fa"
    monkeypatch.setenv("GRANTLINE_E2E_GH_SECRET", secret)
    dotcom, dotcom_base = github_stand_in(secret)
    enterprise, enterprise_base = github_stand_in(secret)
    try:
        (tmp_path / "data").mkdir()
        users = []
        for n, base in enumerate([dotcom_base, enterprise_base, dotcom_base]):
            server = Server(tmp_path / "data", tmp_path / f"server{n}.log", GITHUB_CONFIG.format(gh=base))
            server.start()
            try:
                octocat = FederatedBrowser(server.base, REDIRECT, provider="github")
                home = octocat.click(octocat.sign_in_page("/account"))
                assert home.status_code == 200 and "/account" in home.url, home.text[:300]
            finally:
                server.stop()
            _, evs = events(server)
            users.append(of(evs, "login.succeeded")[-1]["user_id"])
        created = [c["user_id"] for c in of(evs, "user.created") if c.get("provider") == "github"]
        assert len(created) == 2 and users[0] != users[1], (users, created)
        assert users == [created[0], created[1], created[0]], "github.com's octocat is still theirs"
        assert [(l["provider"], l["subject"]) for l in of(evs, "user.linked")] \
            == [("github", "583231"), ("github", "583231")]
    finally:
        for gh in (dotcom, enterprise):
            gh.terminate()
            gh.wait(timeout=10)
