"""A real third-party upstream behind the gateway: an MCP server written with the official MCP
Python SDK (tests/e2e/upstream_server.py) mounted as the protected resource `/mcp/notes`, and the
SDK's client going through Grantline to it. The upstream must never see the client's bearer
token (no token passthrough), and must see Grantline's signed identity assertion instead."""
import asyncio
import json

import jwt
import pytest
import requests
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from mcp_client import Browser, MemoryStorage, sdk_client, text_of

REDIRECT = "http://127.0.0.1:8767/callback"


def verify_assertion(base, token, resource):
    """Checks the identity assertion's signature against Grantline's JWKS; returns its claims."""
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "EdDSA", header
    keys = requests.get(base + "/.well-known/jwks.json").json()["keys"]
    jwk = next(k for k in keys if k.get("kid") == header.get("kid"))
    # The assertion's audience is the resource with a fragment: no access token (whose
    # audience is a resource indicator, which has none) can pass for one.
    assert header["typ"] == "grantline-identity+jwt", header
    return jwt.decode(token, jwt.PyJWK(jwk).key, algorithms=["EdDSA"],
                      audience=resource + "#upstream", issuer=base)


async def scenario(server, browser, storage, seen):
    url = server.base + "/mcp/notes"
    async with sdk_client(url, browser, storage, "MCP SDK via gateway", seen) as client:
        assert len(browser.callbacks) == 1
        assert browser.last_scope() == {"notes:read", "offline_access"}, browser.authorize_urls
        assert client.server_info is not None and client.server_info.name == "e2e-upstream"

        tools = {t.name for t in (await client.list_tools()).tools}
        assert {"echo", "whoami", "upstream_profile"} <= tools \
            <= {"echo", "whoami", "upstream_profile", "add_note"}, tools
        echoed = await client.call_tool("echo", {"text": "through the gateway"})
        assert not echoed.is_error, echoed
        assert text_of(echoed) == "upstream echo: through the gateway"

        who = await client.call_tool("whoami", {})
        assert not who.is_error, who
        headers = json.loads(text_of(who))
        assert headers["authorization"] is None, headers
        assert headers["identity"], "the upstream gets Grantline's identity assertion"
        claims = verify_assertion(server.base, headers["identity"], url)
        assert claims["client_id"] == storage.client.client_id, claims
        assert claims["sub"] and set(claims["scope"].split()) - {"offline_access"} == {"notes:read"}, claims

        # add_note is not read-only (the upstream's own annotations, learned by the gateway):
        # 403 insufficient_scope, the SDK steps up to notes:write, and the call goes through.
        mark = len(seen)
        added = await client.call_tool("add_note", {"text": "written through the gateway"})
        assert not added.is_error and text_of(added) == "added: written through the gateway", added
        step = [(m, p, s) for (m, p, s, _) in seen[mark:]]
        assert step[0] == ("POST", "/mcp/notes", 403) and step[-1] == ("POST", "/mcp/notes", 200), step
        assert browser.consents == 2
        assert browser.last_scope() - {"offline_access"} == {"notes:read", "notes:write"}
        who = await client.call_tool("whoami", {})
        stepped = verify_assertion(server.base, json.loads(text_of(who))["identity"], url)
        assert set(stepped["scope"].split()) >= {"notes:read", "notes:write"}, stepped
        assert stepped["sub"] == claims["sub"] and stepped["jti"] != claims["jti"]

        # The token is bound to /mcp/notes: the gateway refuses it for another resource.
        r = requests.post(server.base + "/mcp/demo", headers={
            "authorization": f"Bearer {storage.tokens.access_token}",
            "content-type": "application/json", "accept": "application/json, text/event-stream",
        }, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"], (
            r.status_code, r.headers)
        return claims


def test_sdk_client_through_the_gateway_to_a_third_party_upstream(gateway_server, upstream):
    browser = Browser(gateway_server.base, REDIRECT)
    storage = MemoryStorage()
    seen = []
    claims = asyncio.run(scenario(gateway_server, browser, storage, seen))

    # The client authenticated every request to the gateway after the first with its token...
    assert any(path == "/mcp/notes" and bearer for (_, path, _, bearer) in seen)
    # ...and the upstream got none of them: no Authorization header at all, and no token of
    # the client's anywhere in what it saw; every request carried the identity assertion.
    got = upstream.seen()
    assert len(got) >= 6, got  # initialize (or discover), tools/list, four tools/call
    assert all(g["authorization"] is None for g in got), got
    dump = json.dumps(got)
    for t in storage.history:
        assert t.access_token not in dump and (t.refresh_token or "x") not in dump
    assert all(g["identity"] for g in got), got
    for g in got:
        c = jwt.decode(g["identity"], options={"verify_signature": False})
        assert c["sub"] == claims["sub"] and c["client_id"] == claims["client_id"], c
        assert c["aud"] == gateway_server.base + "/mcp/notes#upstream"


# The 2026-07-28 transport routes on Mcp-Method/Mcp-Name headers, which the gateway checks
# against the message and forwards.
def test_the_newest_protocol_version_passes_through_the_gateway(gateway_server, upstream):
    async def negotiated():
        async with Client(streamable_http_client(upstream.url), cache=None) as direct:
            alone = direct.protocol_version
        browser = Browser(gateway_server.base, REDIRECT)
        async with sdk_client(gateway_server.base + "/mcp/notes", browser, MemoryStorage(),
                              "MCP SDK via gateway", []) as client:
            return alone, client.protocol_version

    alone, through = asyncio.run(negotiated())
    assert alone in MODERN_PROTOCOL_VERSIONS, alone  # what the upstream speaks with this SDK
    assert through == alone
