"""What the end-to-end tests with the official MCP Python SDK (`mcp` 2.x) share: a user who signs
in and consents over HTTP (the SDK's redirect and callback handlers), token storage that keeps
every token it was given, and an SDK client whose every HTTP request is recorded."""
import asyncio
import contextlib
import html
import re
import urllib.parse

import httpx2
import requests
from mcp import Client
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider, TokenStorage
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

from conftest import ADMIN_PASSWORD


def field(page, name):
    m = re.search(r'name="%s" value="([^"]*)"' % re.escape(name), page)
    assert m, f"no {name} in page:\n{page[:2000]}"
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

    def __init__(self, base, redirect, username="admin", password=ADMIN_PASSWORD):
        self.base = base
        self.redirect = redirect
        self.username, self.password = username, password
        self.session = requests.Session()
        self.authorize_urls = []
        self.callbacks = []
        self.consents = 0

    def authorize(self, url):
        self.authorize_urls.append(url)
        r = self.session.get(url, allow_redirects=False)
        if r.status_code == 302 and "/login?" in r.headers["location"]:
            page = self.session.get(r.headers["location"]).text
            r = self.session.post(self.base + "/login", data={
                "username": self.username, "password": self.password,
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
        assert location.startswith(self.redirect), location
        self.callbacks.append(location)

    def last_scope(self):
        """The scope the latest authorization request asked for."""
        q = urllib.parse.parse_qs(urllib.parse.urlparse(self.authorize_urls[-1]).query)
        return set(q.get("scope", [""])[0].split())

    async def redirect_handler(self, url):
        await asyncio.to_thread(self.authorize, url)

    async def callback_handler(self):
        q = urllib.parse.parse_qs(urllib.parse.urlparse(self.callbacks[-1]).query)
        assert "error" not in q, q
        return AuthorizationCodeResult(
            code=q["code"][0], state=q.get("state", [None])[0], iss=q.get("iss", [None])[0],
        )

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


@contextlib.asynccontextmanager
async def sdk_client(url, browser, storage, client_name, seen):
    """An SDK `Client` for the MCP endpoint `url`, authorizing with the SDK's own OAuth client
    (dynamic registration, PKCE, refresh, step-up). Every HTTP request it makes, including those
    of the OAuth flow, is appended to `seen` as (method, path, status, had a bearer token)."""
    provider = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name=client_name,
            redirect_uris=[browser.redirect],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=browser.redirect_handler,
        callback_handler=browser.callback_handler,
    )

    async def record(response):
        req = response.request
        seen.append((req.method, req.url.path, response.status_code,
                     req.headers.get("authorization", "").startswith("Bearer ")))

    http = httpx2.AsyncClient(auth=provider, timeout=httpx2.Timeout(30, read=60),
                              event_hooks={"response": [record]})
    async with http:
        transport = streamable_http_client(url, http_client=http)
        # cache=None: every tools/list goes to the server (the gateway filters and records it).
        async with Client(transport, cache=None) as client:
            yield client
