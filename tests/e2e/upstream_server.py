"""A third-party MCP server behind Grantline's gateway: written with the official MCP Python SDK
(`MCPServer`, Streamable HTTP, stateless, JSON answers), started by the `upstream` fixture.

    python upstream_server.py PORT SEEN_FILE

Every HTTP request it receives is appended to SEEN_FILE as one JSON line: method, path, the
`Authorization` header (verbatim: the test checks that no bearer token of the client's ever
arrives) and Grantline's identity assertion header. The `whoami` tool returns the same two
headers as the SDK's request context saw them.
"""
import json
import os
import sys

import requests

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations

IDENTITY_HEADER = "x-grantline-identity"

server = MCPServer("e2e-upstream", instructions="A third-party MCP server behind Grantline.")
notes: list[str] = []


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def echo(text: str) -> str:
    """Says the text back."""
    return f"upstream echo: {text}"


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def whoami(ctx: Context) -> str:
    """The authorization and identity headers this request arrived with (JSON)."""
    headers = ctx.headers or {}
    return json.dumps({
        "authorization": headers.get("authorization"),
        "identity": headers.get(IDENTITY_HEADER),
    })


@server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False))
def add_note(text: str) -> str:
    """Adds a note (a write)."""
    notes.append(text)
    return f"added: {text}"


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def upstream_profile(ctx: Context) -> str:
    """Who the user is at the identity provider, asked with the user's own upstream token.

    How an MCP server behind Grantline gets that token (docs/federation.md): it never receives
    it from the gateway; it exchanges the identity assertion the gateway sent with this request
    at Grantline's token endpoint (RFC 8693), authenticating as its confidential client."""
    assertion = (ctx.headers or {}).get(IDENTITY_HEADER)
    r = requests.post(os.environ["GRANTLINE_TOKEN_ENDPOINT"], data={
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": assertion,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
    }, auth=(os.environ["EXCHANGE_CLIENT_ID"], os.environ["EXCHANGE_CLIENT_SECRET"]), timeout=10)
    if r.status_code != 200:
        return json.dumps({"exchange_status": r.status_code, "error": r.json()})
    token = r.json()["access_token"]
    me = requests.get(os.environ["UPSTREAM_USERINFO"],
                      headers={"Authorization": f"Bearer {token}"}, timeout=10)
    return json.dumps({"exchange_status": 200, "userinfo_status": me.status_code,
                       "userinfo": me.json() if me.ok else None})


def recording(app, seen_file):
    """ASGI middleware: one JSON line per HTTP request, before the app sees it."""

    async def wrapped(scope, receive, send):
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            line = json.dumps({
                "method": scope["method"], "path": scope["path"],
                "authorization": headers.get("authorization"),
                "identity": headers.get(IDENTITY_HEADER),
                "mcp_protocol_version": headers.get("mcp-protocol-version"),
                "traceparent": headers.get("traceparent"),
            })
            with open(seen_file, "a") as f:
                f.write(line + "\n")
        await app(scope, receive, send)

    return wrapped


def main():
    port, seen_file = int(sys.argv[1]), sys.argv[2]
    app = server.streamable_http_app(stateless_http=True, json_response=True, host="127.0.0.1")
    uvicorn.run(recording(app, seen_file), host="127.0.0.1", port=port, log_level="warning",
                lifespan="on")


if __name__ == "__main__":
    main()
