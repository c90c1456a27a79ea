// The official MCP TypeScript SDK (@modelcontextprotocol/sdk) against `grantline serve`, driven
// by tests/e2e/test_ts_sdk.py:
//
//   node client.mjs <mcp endpoint URL> <redirect URI>      (GRANTLINE_E2E_PASSWORD in the env)
//
// The SDK's StreamableHTTPClientTransport with an OAuthClientProvider discovers, registers and
// authorizes on a 401; its redirectToAuthorization plays the user (signs in as admin and
// approves the consent page over HTTP, as a browser would) and keeps the code for finishAuth.
// Then: tools/list, a read tool, and a write tool, refused with 403 insufficient_scope, for which
// the client steps up to the write scope. Prints one JSON object on stdout.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport, StreamableHTTPError } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { auth, extractWWWAuthenticateParams, UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';
import { randomBytes } from 'node:crypto';

const [mcpUrl, redirectUri] = process.argv.slice(2);
const password = process.env.GRANTLINE_E2E_PASSWORD;
if (!mcpUrl || !redirectUri || !password) {
  console.error('usage: GRANTLINE_E2E_PASSWORD=… node client.mjs <mcp endpoint URL> <redirect URI>');
  process.exit(2);
}
const base = new URL(mcpUrl).origin;

// Every HTTP request the SDK makes (MCP messages and its OAuth flow), without secrets.
const requests = [];
let lastForbidden;
const recordingFetch = async (url, init = {}) => {
  const response = await fetch(url, init);
  const headers = new Headers(init.headers);
  requests.push({
    method: init.method ?? 'GET',
    path: new URL(url).pathname,
    status: response.status,
    bearer: (headers.get('authorization') ?? '').startsWith('Bearer '),
    origin: headers.get('origin'),
  });
  if (response.status === 403) lastForbidden = response.clone();
  return response;
};

// The user's browser: a cookie jar, redirects followed by hand, forms posted like a browser
// (same-origin Origin header).
class Browser {
  constructor() {
    this.cookies = new Map();
    this.consents = 0;
    this.authorizations = [];
  }
  async go(url, init = {}) {
    const headers = new Headers(init.headers);
    if (this.cookies.size) {
      headers.set('cookie', [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; '));
    }
    const r = await fetch(url, { ...init, headers, redirect: 'manual' });
    for (const c of r.headers.getSetCookie()) {
      const [pair] = c.split(';');
      const i = pair.indexOf('=');
      this.cookies.set(pair.slice(0, i).trim(), pair.slice(i + 1).trim());
    }
    return r;
  }
  async post(path, fields) {
    return this.go(new URL(path, base), {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', origin: base },
      body: new URLSearchParams(fields).toString(),
    });
  }
  // Follows an authorization URL to the client's redirect URI; returns the callback URL.
  async authorize(url) {
    this.authorizations.push(url.toString());
    let r = await this.go(url);
    if (r.status === 302 && r.headers.get('location').includes('/login?')) {
      const page = await (await this.go(new URL(r.headers.get('location'), base))).text();
      r = await this.post('/login', {
        username: 'admin', password, csrf: field(page, 'csrf'), return_to: field(page, 'return_to'),
      });
      expect(r.status === 303, `sign-in answered ${r.status}: ${await r.text()}`);
      r = await this.go(new URL(r.headers.get('location'), base));
    }
    if (r.status === 200) {
      const page = await r.text();
      this.consents += 1;
      r = await this.post('/oauth/consent', {
        request_id: field(page, 'request_id'), csrf: field(page, 'csrf'), decision: 'approve',
      });
    }
    expect([302, 303].includes(r.status), `authorization ended with ${r.status}: ${await r.text()}`);
    const location = r.headers.get('location');
    expect(location.startsWith(redirectUri), `redirected to ${location}`);
    return new URL(location);
  }
}

function field(page, name) {
  const m = page.match(new RegExp(`name="${name}" value="([^"]*)"`));
  expect(m, `no ${name} in page: ${page.slice(0, 500)}`);
  return m[1].replaceAll('&quot;', '"').replaceAll('&#39;', "'").replaceAll('&lt;', '<')
    .replaceAll('&gt;', '>').replaceAll('&amp;', '&');
}

function expect(ok, message) {
  if (!ok) throw new Error(message);
}

// The SDK's OAuthClientProvider, in memory. redirectToAuthorization plays the user at once and
// keeps the code, which the caller hands to transport.finishAuth().
class Provider {
  constructor(browser) {
    this.browser = browser;
    this._client = undefined;
    this._tokens = undefined;
    this._verifier = undefined;
    this._state = undefined;
    this.pendingCode = undefined;
    this.tokenHistory = [];
  }
  get redirectUrl() { return redirectUri; }
  get clientMetadata() {
    return {
      client_name: 'MCP TypeScript SDK e2e',
      redirect_uris: [redirectUri],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    };
  }
  state() {
    this._state = randomBytes(16).toString('base64url');
    return this._state;
  }
  clientInformation() { return this._client; }
  saveClientInformation(info) { this._client = info; }
  tokens() { return this._tokens; }
  saveTokens(tokens) {
    this._tokens = tokens;
    this.tokenHistory.push(tokens);
  }
  saveCodeVerifier(v) { this._verifier = v; }
  codeVerifier() { return this._verifier; }
  invalidateCredentials(scope) {
    if (scope === 'all' || scope === 'client') this._client = undefined;
    if (scope === 'all' || scope === 'tokens') this._tokens = undefined;
    if (scope === 'all' || scope === 'verifier') this._verifier = undefined;
  }
  async redirectToAuthorization(url) {
    const callback = await this.browser.authorize(url);
    const q = callback.searchParams;
    expect(!q.get('error'), `authorization refused: ${q.get('error')} ${q.get('error_description')}`);
    // What an app must check itself with this SDK version: the state it sent, and the
    // authorization response's issuer (RFC 9207).
    expect(q.get('state') === this._state, 'state mismatch');
    expect(q.get('iss') === base, `iss ${q.get('iss')} is not ${base}`);
    this.pendingCode = q.get('code');
  }
  takeCode() {
    const code = this.pendingCode;
    expect(code, 'the SDK asked for no authorization');
    this.pendingCode = undefined;
    return code;
  }
}

const browser = new Browser();
const provider = new Provider(browser);

function transport() {
  return new StreamableHTTPClientTransport(new URL(mcpUrl), { authProvider: provider, fetch: recordingFetch });
}

// Connects; on the SDK's UnauthorizedError (it sent the user to authorize), finishes the
// authorization with the code and connects again.
async function connect() {
  let t = transport();
  let client = new Client({ name: 'grantline-e2e-ts', version: '1.0.0' });
  try {
    await client.connect(t);
    return { client, t };
  } catch (e) {
    if (!(e instanceof UnauthorizedError)) throw e;
    await t.finishAuth(provider.takeCode());
    await client.close().catch(() => {});
  }
  t = transport();
  client = new Client({ name: 'grantline-e2e-ts', version: '1.0.0' });
  await client.connect(t);
  return { client, t };
}

const text = (result) => result.content.filter((c) => c.type === 'text').map((c) => c.text).join(' ');

async function main() {
  const { client, t } = await connect();
  const connectRequests = requests.length;
  const server = client.getServerVersion();
  const tools = (await client.listTools()).tools.map((tool) => tool.name);
  const read = await client.callTool({ name: 'get_time', arguments: {} });
  const scopeBefore = provider.tokens().scope;

  // A write tool: 403 insufficient_scope. The transport calls the SDK's auth() with the
  // challenged scope; when that sends the user to authorize, finish it and call again.
  const stepUp = { path: 'sdk-redirect', sdkError: null, challenge: null };
  const mark = requests.length;
  let added;
  try {
    added = await client.callTool({ name: 'add_note', arguments: { text: 'hello from the TypeScript SDK' } });
    stepUp.path = 'none';
  } catch (e) {
    if (e instanceof UnauthorizedError) {
      await t.finishAuth(provider.takeCode());
    } else if (e instanceof StreamableHTTPError && e.code === 403 && lastForbidden) {
      // This SDK version's dead end (typescript-sdk#2255): holding a refresh token, auth()
      // refreshes instead of asking for the new scope, the refreshed token is refused again
      // and the transport gives up. Start the authorization for the challenged scope through
      // the SDK's own auth(), without the stale tokens.
      stepUp.path = 'sdk-refreshed-then-gave-up';
      stepUp.sdkError = e.message;
      const { scope, resourceMetadataUrl } = extractWWWAuthenticateParams(lastForbidden);
      provider.invalidateCredentials('tokens');
      const result = await auth(provider, { serverUrl: mcpUrl, scope, resourceMetadataUrl, fetchFn: recordingFetch });
      expect(result === 'REDIRECT', `auth() answered ${result}`);
      await t.finishAuth(provider.takeCode());
    } else {
      throw e;
    }
    added = await client.callTool({ name: 'add_note', arguments: { text: 'hello from the TypeScript SDK' } });
  }
  if (lastForbidden) {
    stepUp.challenge = extractWWWAuthenticateParams(lastForbidden);
    stepUp.challenge.resourceMetadataUrl = stepUp.challenge.resourceMetadataUrl?.toString();
  }
  const notes = await client.callTool({ name: 'list_notes', arguments: {} });
  await client.close();

  return {
    server,
    protocolVersion: t.protocolVersion ?? null,
    clientId: provider.clientInformation()?.client_id,
    tools,
    read: { isError: !!read.isError, text: text(read) },
    added: { isError: !!added.isError, text: text(added) },
    notes: { isError: !!notes.isError, text: text(notes) },
    scopeBefore,
    scopeAfter: provider.tokens().scope,
    stepUp,
    stepUpRequests: requests.slice(mark).map(({ method, path, status }) => ({ method, path, status })),
    consents: browser.consents,
    authorizations: browser.authorizations.map((u) => Object.fromEntries(new URL(u).searchParams)),
    connectRequests: requests.slice(0, connectRequests),
    requests,
    tokenHistory: provider.tokenHistory.map(({ access_token, refresh_token }) => ({ access_token, refresh_token })),
  };
}

main().then(
  (out) => {
    process.stdout.write(JSON.stringify(out) + '\n');
    process.exit(0);
  },
  (e) => {
    process.stdout.write(JSON.stringify({ error: String(e?.stack ?? e), requests }) + '\n');
    process.exit(1);
  },
);
