"""The official MCP Python SDK (`mcp` from PyPI) against `grantline serve`, with its own OAuth
client: 401 → protected-resource metadata → authorization-server metadata → dynamic
registration → authorize (this test's redirect handler signs in and consents over HTTP) →
token → initialize → tools/list → tools/call → a refresh on its own (4-second access tokens) →
step-up for a write tool → the user revokes the grant → the next call is refused and the SDK
authorizes again. Then the ledger is checked."""
import asyncio
import json
import os
import re
import html
import subprocess
import time
import urllib.parse

import requests
from mcp import ClientSession
from mcp.client.auth import OAuthClientProvider, TokenStorage
from mcp.client.streamable_http import streamablehttp_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

from conftest import ADMIN_PASSWORD, ROOT

REDIRECT = "http://127.0.0.1:8766/callback"


def field(page, name, after=None):
    if after:
        page = page[page.index(after):]
    m = re.search(r'name="%s" value="([^"]*)"' % re.escape(name), page)
    assert m, f"no {name} in page"
    return html.unescape(m.group(1))


class MemoryStorage(TokenStorage):
    def __init__(self):
        self.tokens = None
        self.client = None
        self.history = []

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken):
        self.tokens = tokens
        self.history.append(tokens)

    async def get_client_info(self):
        return self.client

    async def set_client_info(self, info: OAuthClientInformationFull):
        self.client = info


class Browser:
    """Plays the user: signs in once, approves every consent page it is shown."""

    def __init__(self, base):
        self.base = base
        self.session = requests.Session()
        self.callbacks = []
        self.consents = 0

    def authorize(self, url):
        r = self.session.get(url, allow_redirects=False)
        if r.status_code == 302 and "/login?" in r.headers["location"]:
            page = self.session.get(r.headers["location"]).text
            r = self.session.post(self.base + "/login", data={
                "username": "admin", "password": ADMIN_PASSWORD,
                "csrf": field(page, "csrf"), "return_to": field(page, "return_to"),
            }, allow_redirects=False)
            assert r.status_code == 303, r.text
            r = self.session.get(r.headers["location"], allow_redirects=False)
        if r.status_code == 200:
            self.consents += 1
            page = r.text
            r = self.session.post(self.base + "/oauth/consent", data={
                "request_id": field(page, "request_id"), "csrf": field(page, "csrf"),
                "decision": "approve",
            }, allow_redirects=False)
        assert r.status_code in (302, 303), r.text
        location = r.headers["location"]
        assert location.startswith(REDIRECT), location
        self.callbacks.append(location)

    async def redirect_handler(self, url):
        await asyncio.to_thread(self.authorize, url)

    async def callback_handler(self):
        q = urllib.parse.parse_qs(urllib.parse.urlparse(self.callbacks[-1]).query)
        return q["code"][0], q.get("state", [None])[0]

    def revoke_all_grants(self):
        page = self.session.get(self.base + "/account").text
        while 'name="grant_id"' in page:
            r = self.session.post(self.base + "/account/grants/revoke", data={
                "csrf": field(page, "csrf"), "grant_id": field(page, "grant_id"),
            }, allow_redirects=False)
            assert r.status_code == 303, r.text
            page = self.session.get(self.base + "/account").text


def text_of(result):
    return " ".join(c.text for c in result.content if getattr(c, "type", "") == "text")


async def scenario(server, browser, storage):
    url = server.base + "/mcp/demo"
    provider = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name="MCP SDK e2e",
            redirect_uris=[REDIRECT],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=browser.redirect_handler,
        callback_handler=browser.callback_handler,
    )
    async with streamablehttp_client(url, auth=provider) as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = [t.name for t in (await session.list_tools()).tools]
            # Only what demo:read may call.
            assert tools == ["get_time", "list_notes"], tools
            first = await session.call_tool("get_time", {})
            assert not first.isError and "T" in text_of(first)
            assert len(browser.callbacks) == 1
            token_1 = storage.tokens.access_token

            # The access token expires; the SDK refreshes on its own.
            await asyncio.sleep(5)
            again = await session.call_tool("list_notes", {})
            assert not again.isError
            assert storage.tokens.access_token != token_1
            assert len(browser.callbacks) == 1, "a refresh, not a new authorization"

            # A write tool needs demo:write: 403 insufficient_scope, and the SDK steps up.
            added = await session.call_tool("add_note", {"text": "hello from the SDK"})
            assert not added.isError, added
            assert "hello from the SDK" in text_of(added)
            assert len(browser.callbacks) == 2 and browser.consents == 2
            assert "demo:write" in storage.tokens.scope

            # The user revokes the grant: the next call is refused and the SDK authorizes again.
            await asyncio.to_thread(browser.revoke_all_grants)
            after = await session.call_tool("list_notes", {})
            assert not after.isError
            assert "hello from the SDK" in text_of(after)
            assert len(browser.callbacks) == 3, "sent back to authorize"


def test_official_mcp_sdk_end_to_end(mcp_server):
    browser = Browser(mcp_server.base)
    storage = MemoryStorage()
    asyncio.run(scenario(mcp_server, browser, storage))
    mcp_server.stop()

    binary = os.environ.get("GRANTLINE_BIN", str(ROOT / "target/debug/grantline"))
    out = subprocess.run(
        [binary, "--data-dir", str(mcp_server.data_dir), "events"],
        capture_output=True, text=True, check=True,
        env={k: v for k, v in os.environ.items() if k != "GRANTLINE_CONFIG"},
    ).stdout
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    kinds = [e["kind"] for e in events]
    for k in ["client.registered", "consent.granted", "code.issued", "token.issued",
              "token.refreshed", "tool.listed", "tool.called", "authorization.denied",
              "grant.revoked"]:
        assert k in kinds, f"{k} missing from {sorted(set(kinds))}"
    calls = [e["payload"] for e in events if e["kind"] == "tool.called"]
    outcomes = [(c["tool"], c["outcome"]) for c in calls]
    assert ("add_note", "denied") in outcomes and ("add_note", "ok") in outcomes, outcomes
    assert all(c.get("client_id") and c.get("user_id") for c in calls)
    assert "hello from the SDK" not in out, "arguments are recorded as a digest only"
    for t in storage.history:
        assert t.access_token not in out and (t.refresh_token or "x") not in out
