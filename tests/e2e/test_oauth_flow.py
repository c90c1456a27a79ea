"""The whole OAuth 2.1 flow driven by a third-party client library (Authlib), with sign-in and
consent submitted over HTTP the way a browser would, against a running `grantline serve`."""
import html
import re
import secrets
import urllib.parse

import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from conftest import ADMIN_PASSWORD, RS_SECRET

REDIRECT = "http://127.0.0.1:8765/callback"


def field(page, name):
    m = re.search(r'name="%s" value="([^"]*)"' % re.escape(name), page)
    assert m, f"no {name} field in page:\n{page[:2000]}"
    return html.unescape(m.group(1))


def discover(base):
    prm = requests.get(base + "/.well-known/oauth-protected-resource/mcp/demo").json()
    issuer = prm["authorization_servers"][0]
    meta = requests.get(issuer + "/.well-known/oauth-authorization-server").json()
    assert meta["issuer"] == issuer
    oidc = requests.get(issuer + "/.well-known/openid-configuration").json()
    assert oidc["issuer"] == issuer
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["authorization_response_iss_parameter_supported"] is True
    return prm, meta


def register(meta):
    r = requests.post(meta["registration_endpoint"], json={
        "client_name": "Authlib e2e",
        "redirect_uris": [REDIRECT],
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
    })
    assert r.status_code == 201, r.text
    return r.json()


def browser_authorize(authorization_url, base):
    """Follows the authorization URL like a browser: sign in, approve; returns the callback URL."""
    b = requests.Session()
    r = b.get(authorization_url, allow_redirects=False)
    assert r.status_code == 302, r.text
    assert r.headers["location"].startswith(base + "/login?")
    r = b.get(r.headers["location"])
    assert r.status_code == 200
    r = b.post(base + "/login", data={
        "username": "admin", "password": ADMIN_PASSWORD,
        "csrf": field(r.text, "csrf"), "return_to": field(r.text, "return_to"),
    }, allow_redirects=False)
    assert r.status_code == 303, r.text
    r = b.get(r.headers["location"], allow_redirects=False)
    assert r.status_code == 200, r.text
    consent = r.text
    assert "Authlib e2e" in consent and "127.0.0.1:8765" in consent
    assert r.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert r.headers["cache-control"] == "no-store"
    r = b.post(base + "/oauth/consent", data={
        "request_id": field(consent, "request_id"), "csrf": field(consent, "csrf"),
        "decision": "approve",
    }, allow_redirects=False)
    assert r.status_code == 303, r.text
    return r.headers["location"], b


def test_discovery_registration_authorize_token_refresh_revoke_introspect(server):
    prm, meta = discover(server.base)
    resource = prm["resource"]
    reg = register(meta)
    verifier = secrets.token_urlsafe(48)
    client = OAuth2Session(
        reg["client_id"], redirect_uri=REDIRECT, scope="demo:read offline_access",
        code_challenge_method="S256", token_endpoint_auth_method="none",
    )
    url, state = client.create_authorization_url(
        meta["authorization_endpoint"], code_verifier=verifier, resource=resource)
    callback, _ = browser_authorize(url, server.base)
    q = urllib.parse.parse_qs(urllib.parse.urlparse(callback).query)
    assert q["state"] == [state]
    assert q["iss"] == [meta["issuer"]]
    code = q["code"][0]

    token = client.fetch_token(meta["token_endpoint"], authorization_response=callback,
                               code_verifier=verifier, resource=resource)
    assert token["token_type"] == "Bearer"
    assert token["access_token"].startswith("gla_")
    assert token["refresh_token"].startswith("glr_")
    assert set(token["scope"].split()) == {"demo:read", "offline_access"}

    def introspect(t):
        r = requests.post(meta["introspection_endpoint"], data={"token": t},
                          auth=("resource-server", RS_SECRET))
        assert r.status_code == 200, r.text
        return r.json()

    info = introspect(token["access_token"])
    assert info["active"] is True and info["aud"] == resource and info["client_id"] == reg["client_id"]

    refreshed = client.refresh_token(meta["token_endpoint"], refresh_token=token["refresh_token"])
    assert refreshed["refresh_token"] != token["refresh_token"]
    assert introspect(refreshed["access_token"])["active"] is True

    r = client.revoke_token(meta["revocation_endpoint"], token=refreshed["refresh_token"],
                            token_type_hint="refresh_token")
    assert r.status_code == 200
    # Revoking the refresh token revoked its family: both access tokens are dead.
    assert introspect(refreshed["access_token"]) == {"active": False}
    assert introspect(token["access_token"]) == {"active": False}
    assert introspect(refreshed["refresh_token"]) == {"active": False}

    server.stop()
    secrets_used = [token["access_token"], token["refresh_token"], refreshed["access_token"],
                    refreshed["refresh_token"], code, verifier, ADMIN_PASSWORD, RS_SECRET]
    stores = [p for p in server.data_dir.iterdir() if p.name.startswith("grantline.db")]
    assert stores, "no SQLite files found"
    for path in stores + [server.log_path]:
        data = path.read_bytes()
        for s in secrets_used:
            assert s.encode() not in data, f"a raw secret appears in {path.name}"


def test_state_survives_a_restart(server):
    prm, meta = discover(server.base)
    reg = register(meta)
    verifier = secrets.token_urlsafe(48)
    client = OAuth2Session(reg["client_id"], redirect_uri=REDIRECT, scope="demo:read",
                           code_challenge_method="S256", token_endpoint_auth_method="none")
    url, _ = client.create_authorization_url(meta["authorization_endpoint"],
                                             code_verifier=verifier, resource=prm["resource"])
    callback, _ = browser_authorize(url, server.base)
    token = client.fetch_token(meta["token_endpoint"], authorization_response=callback,
                               code_verifier=verifier)
    server.stop()
    server.start()
    # Same client, same grant, same refresh token: all rebuilt from the ledger.
    again = client.refresh_token(meta["token_endpoint"], refresh_token=token["refresh_token"])
    assert again["access_token"].startswith("gla_")


def test_oversized_input_is_answered_and_stays_out_of_the_log(server):
    """Anonymous requests carrying request-sized values (a client id, a grant type, a path) get
    an OAuth error each, and the server's own log (at debug level) never copies them whole."""
    base = server.base
    huge = "A" * 60_000
    answers = [
        requests.post(base + "/oauth/token", data={
            "grant_type": "authorization_code", "client_id": huge, "code": "x",
            "code_verifier": "v" * 43, "redirect_uri": "http://127.0.0.1:1/cb"}),
        requests.post(base + "/oauth/token", data={"grant_type": huge, "client_id": "x"}),
        requests.post(base + "/oauth/token", data={"grant_type": "client_credentials"},
                      auth=(huge[:40_000], "secret")),
        requests.post(base + "/oauth/revoke", data={"client_id": huge, "token": "t"}),
        requests.post(base + "/oauth/introspect", data={"client_id": huge, "token": "t"}),
    ]
    for r in answers:
        assert r.status_code in (400, 401), (r.status_code, r.text[:300])
        body = r.json()
        assert body["error"] in ("invalid_client", "invalid_request", "unsupported_grant_type"), body
        described = body.get("error_description", "")
        assert len(described) <= 300 and huge[:400] not in described, described[:400]
        # RFC 6749 §5.2: printable ASCII without '"' and '\'.
        assert all(0x20 <= ord(c) <= 0x7E and c not in '"\\' for c in described), described
    r = requests.get(base + "/oauth/authorize", params={
        "client_id": huge, "response_type": "code", "redirect_uri": "http://127.0.0.1:1/cb",
        "code_challenge": "c" * 43, "code_challenge_method": "S256", "state": "s"},
        allow_redirects=False)
    assert r.status_code == 400 and "location" not in r.headers, r.status_code
    # Longer than any client id, but within the request bound: answered, and not logged whole.
    r = requests.get(base + "/oauth/authorize", params={
        "client_id": "B" * 5_000, "response_type": "code", "redirect_uri": "http://127.0.0.1:1/cb",
        "code_challenge": "c" * 43, "code_challenge_method": "S256", "state": "s"},
        allow_redirects=False)
    assert r.status_code == 400 and "location" not in r.headers, r.status_code
    r = requests.get(base + "/" + "p" * 30_000)
    assert r.status_code == 404
    log = server.log_path.read_text(errors="replace")
    assert "answered" in log, "the requests were logged"
    # The lines of requests (tantivy logs its index's metadata at debug level, in full).
    requests_lines = [l for l in log.splitlines() if "request{" in l]
    assert len(requests_lines) >= 8, log[-2000:]
    for line in requests_lines:
        assert len(line) < 4096, f"a log line of {len(line)} characters: {line[:200]}..."
    assert "A" * 3000 not in log and "p" * 3000 not in log and "B" * 3000 not in log
