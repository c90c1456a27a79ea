"""A stand-in for GitHub's OAuth endpoints and the REST calls Grantline's `github` preset makes,
because GitHub itself cannot be reached from the test machine. It mimics GitHub's documented
behaviour for OAuth apps: `GET /login/oauth/authorize` (here it signs the "current" user in at
once), `POST /login/oauth/access_token` (form in; JSON out when asked with
`Accept: application/json`; client secret and PKCE S256 checked), and, with the bearer token,
`GET /api/user`, `/api/user/emails`, `/api/user/orgs`, `/api/user/teams`. Lists are paged as
GitHub pages them: `per_page` (default 30, at most 100) and `page`, with a `Link` header whose
`rel="next"` names the next page.

    python github_mock.py PORT CLIENT_ID CLIENT_SECRET

`POST /__test/user {"login": "mona"}` chooses who signs in next; `POST /__test/orgs
{"login": "octocat", "orgs": []}` changes a user's organisations (and drops their teams).

`POST /__test/app {"expiring": true}` makes it answer as a GitHub App with expiring user tokens
does: each token answer carries `expires_in` and a `ghr_` refresh token, which
`grant_type=refresh_token` exchanges once for a new pair; an unknown or used refresh token is
`200 {"error": "bad_refresh_token"}`, as GitHub answers it. `POST /__test/revoke {"login":
"octocat"}` is the person revoking the app: their tokens stop working.
"""
import base64
import hashlib
import json
import secrets
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

USERS = {
    "octocat": {
        "user": {"id": 583231, "login": "octocat", "name": "The Octocat", "email": None},
        "emails": [
            {"email": "octocat@old.example", "primary": False, "verified": True, "visibility": None},
            {"email": "octocat@github.example", "primary": True, "verified": True,
             "visibility": "private"},
        ],
        # Many organisations and teams, the ones that matter past the first page of 100.
        "orgs": [{"login": f"club-{i}", "id": 100 + i} for i in range(120)] + [{"login": "Acme", "id": 1}],
        "teams": [{"slug": f"team-{i}", "organization": {"login": f"club-{i}"}} for i in range(105)]
        + [{"slug": "platform", "organization": {"login": "Acme"}}],
    },
    "mona": {
        "user": {"id": 9919, "login": "mona", "name": "Mona Lisa", "email": "mona@other.example"},
        "emails": [{"email": "mona@other.example", "primary": True, "verified": True,
                    "visibility": "public"}],
        "orgs": [{"login": "other", "id": 2}],
        "teams": [],
    },
}


class State:
    current = "octocat"
    codes = {}
    tokens = {}
    refresh_tokens = {}
    expiring = False


def make_handler(client_id, client_secret):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def send_json(self, status, body, link=None):
            data = json.dumps(body).encode()
            self.send_response(status)
            if link:
                self.send_header("Link", link)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def user(self):
            auth = self.headers.get("Authorization", "")
            token = auth.split(" ", 1)[1] if " " in auth else ""
            return USERS.get(State.tokens.get(token, ""))

        def do_GET(self):
            url = urllib.parse.urlparse(self.path)
            q = dict(urllib.parse.parse_qsl(url.query))
            if url.path == "/login/oauth/authorize":
                if q.get("client_id") != client_id:
                    return self.send_json(404, {"error": "unknown client"})
                code = secrets.token_hex(10)
                State.codes[code] = (State.current, q.get("code_challenge"), q.get("redirect_uri"))
                target = q["redirect_uri"] + "?" + urllib.parse.urlencode(
                    {"code": code, "state": q.get("state", "")})
                self.send_response(302)
                self.send_header("Location", target)
                self.end_headers()
                return
            u = self.user()
            if u is None:
                return self.send_json(401, {"message": "Bad credentials"})
            paths = {"/api/user": "user", "/api/user/emails": "emails",
                     "/api/user/orgs": "orgs", "/api/user/teams": "teams"}
            if url.path in ("/api/user/orgs", "/api/user/teams"):
                items = u[paths[url.path]]
                per_page = min(int(q.get("per_page", 30)), 100)
                page = int(q.get("page", 1))
                chunk = items[(page - 1) * per_page:page * per_page]
                link = None
                if page * per_page < len(items):
                    nxt = urllib.parse.urlencode({"per_page": per_page, "page": page + 1})
                    link = f'<http://{self.headers["Host"]}{url.path}?{nxt}>; rel="next"'
                return self.send_json(200, chunk, link)
            if url.path in paths:
                return self.send_json(200, u[paths[url.path]])
            self.send_json(404, {"message": "Not Found"})

        def do_POST(self):
            url = urllib.parse.urlparse(self.path)
            length = int(self.headers.get("Content-Length", 0))
            raw = self.rfile.read(length).decode()
            if url.path == "/__test/user":
                State.current = json.loads(raw)["login"]
                return self.send_json(200, {"current": State.current})
            if url.path == "/__test/app":
                State.expiring = bool(json.loads(raw)["expiring"])
                return self.send_json(200, {})
            if url.path == "/__test/revoke":
                login = json.loads(raw)["login"]
                for table in (State.tokens, State.refresh_tokens):
                    for t in [t for t, who in table.items() if who == login]:
                        del table[t]
                return self.send_json(200, {})
            if url.path == "/__test/orgs":
                body = json.loads(raw)
                USERS[body["login"]]["orgs"] = [{"login": o, "id": 9} for o in body["orgs"]]
                USERS[body["login"]]["teams"] = []
                return self.send_json(200, {})
            if url.path != "/login/oauth/access_token":
                return self.send_json(404, {"message": "Not Found"})
            form = dict(urllib.parse.parse_qsl(raw))
            # GitHub answers errors with 200 and an error body.
            if form.get("client_id") != client_id or form.get("client_secret") != client_secret:
                return self.send_json(200, {"error": "incorrect_client_credentials"})
            if form.get("grant_type") == "refresh_token":
                login = State.refresh_tokens.pop(form.get("refresh_token", ""), None)
                if login is None:
                    return self.send_json(200, {
                        "error": "bad_refresh_token",
                        "error_description": "The refresh token passed is incorrect or expired.",
                        "error_uri": "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/#bad-verification-code"})
                return self.send_tokens(login)
            entry = State.codes.pop(form.get("code", ""), None)
            if entry is None:
                return self.send_json(200, {"error": "bad_verification_code"})
            login, challenge, redirect = entry
            verifier = form.get("code_verifier", "")
            digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            if challenge and digest.decode().rstrip("=") != challenge:
                return self.send_json(200, {"error": "bad_verification_code"})
            if form.get("redirect_uri") and form["redirect_uri"] != redirect:
                return self.send_json(200, {"error": "redirect_uri_mismatch"})
            self.send_tokens(login)

        def send_tokens(self, login):
            token = ("ghu_" if State.expiring else "gho_") + secrets.token_hex(18)
            State.tokens[token] = login
            body = {"access_token": token, "token_type": "bearer",
                    "scope": "read:org,read:user,user:email"}
            if State.expiring:
                refresh = "ghr_" + secrets.token_hex(30)
                State.refresh_tokens[refresh] = login
                body.update({"expires_in": 28800, "refresh_token": refresh,
                             "refresh_token_expires_in": 15811200, "scope": ""})
            self.send_json(200, body)

    return Handler


def main():
    port, client_id, client_secret = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    ThreadingHTTPServer(("127.0.0.1", port), make_handler(client_id, client_secret)).serve_forever()


if __name__ == "__main__":
    main()
