#!/usr/bin/env node
// A real OpenID Connect provider (panva/oidc-provider, in-memory storage) used as the upstream
// identity provider by Grantline's federation end-to-end tests.
//
//   node provider.mjs --port P --client-id ID --client-secret SECRET \
//       --redirect-uri URI [--redirect-uri URI2 ...]
//
// Issuer http://127.0.0.1:P (P may be 0: the port the OS picks is used). When it listens it prints
// exactly one line `READY http://127.0.0.1:P` on stdout; everything else goes to stderr.
// See README.md beside this file for the users and the /__test/* control endpoints.

import * as crypto from 'node:crypto';
import * as http from 'node:http';
import { format, parseArgs } from 'node:util';

import { calculateJwkThumbprint, exportJWK, generateKeyPair } from 'jose';

// stdout carries the READY line only: oidc-provider prints its NOTICEs with console.info, so
// every console method goes to stderr (set before oidc-provider is imported, hence the dynamic
// import below).
const toStderr = (...args) => { process.stderr.write(`${format(...args)}\n`); };
console.log = toStderr;
console.info = toStderr;
console.debug = toStderr;
console.warn = toStderr;

const { default: Provider } = await import('oidc-provider');

// ---------------------------------------------------------------------------------------------
// command line

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      port: { type: 'string' },
      'client-id': { type: 'string' },
      'client-secret': { type: 'string' },
      'redirect-uri': { type: 'string', multiple: true },
      // Seconds an access token lives (default 3600): short, to make the relying party refresh.
      'access-token-ttl': { type: 'string' },
    },
    strict: true,
  }));
} catch (err) {
  toStderr(`provider.mjs: ${err.message}`);
  process.exit(2);
}
if (args.port === undefined || !/^\d+$/.test(args.port) || !args['client-id']
  || !args['client-secret'] || !args['redirect-uri']?.length) {
  toStderr('usage: node provider.mjs --port P --client-id ID --client-secret SECRET '
    + '--redirect-uri URI [--redirect-uri URI2 ...]');
  process.exit(2);
}

const CLIENT_ID = args['client-id'];
const CLIENT_SECRET = args['client-secret'];
const REDIRECT_URIS = args['redirect-uri'];
const ACCESS_TOKEN_TTL = Number(args['access-token-ttl'] ?? 3600);

// ---------------------------------------------------------------------------------------------
// users (the subject is a stable opaque id, not the username)

const USERS = {
  alice: {
    sub: 'u-alice-7c1d',
    password: 'alice-pw',
    email: 'alice@example.com',
    email_verified: true,
    name: 'Alice Example',
    groups: ['mcp-admins', 'engineering'],
  },
  bob: {
    sub: 'u-bob-3e9a',
    password: 'bob-pw',
    email: 'bob@example.com',
    email_verified: true,
    name: 'Bob Example',
    groups: ['engineering'],
  },
  carol: {
    sub: 'u-carol-51f0',
    password: 'carol-pw',
    email: 'carol@elsewhere.test',
    email_verified: true,
    name: 'Carol Else',
    groups: [],
  },
  // extra: an address the provider does not vouch for (email_verified false)
  dave: {
    sub: 'u-dave-9b27',
    password: 'dave-pw',
    email: 'dave@example.com',
    email_verified: false,
    name: 'Dave Unverified',
    groups: ['mcp-admins'],
  },
};

const userBySub = (sub) => Object.entries(USERS).find(([, u]) => u.sub === sub);

// ---------------------------------------------------------------------------------------------
// storage shared by every Provider instance (one is built per signing-key set, see rotate)

const STORE = new Map(); // `${model}:${id}` -> { payload, exp (ms epoch) | undefined }
const GRANTABLE = new Set([
  'AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode',
  'BackchannelAuthenticationRequest',
]);

function live(key) {
  const entry = STORE.get(key);
  if (!entry) return undefined;
  if (entry.exp !== undefined && entry.exp <= Date.now()) {
    STORE.delete(key);
    return undefined;
  }
  return entry.payload;
}

function sweep() {
  const now = Date.now();
  for (const [key, entry] of STORE) {
    if (entry.exp !== undefined && entry.exp <= now) STORE.delete(key);
  }
}

class SharedMemoryAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    if (STORE.size > 5000) sweep();
    const exp = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : undefined;
    STORE.set(this.key(id), { payload, exp });
  }

  async find(id) {
    return live(this.key(id));
  }

  async findByUid(uid) {
    for (const [key] of STORE) {
      if (key.startsWith(`${this.model}:`)) {
        const payload = live(key);
        if (payload?.uid === uid) return payload;
      }
    }
    return undefined;
  }

  async findByUserCode(userCode) {
    for (const [key] of STORE) {
      if (key.startsWith(`${this.model}:`)) {
        const payload = live(key);
        if (payload?.userCode === userCode) return payload;
      }
    }
    return undefined;
  }

  async consume(id) {
    const payload = live(this.key(id));
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    STORE.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    for (const [key, entry] of STORE) {
      const model = key.slice(0, key.indexOf(':'));
      if (GRANTABLE.has(model) && entry.payload?.grantId === grantId) STORE.delete(key);
    }
  }
}

// Every refresh token, access token, authorization code and grant of one account.
function revokeAccount(sub) {
  const revoked = {};
  for (const [key, entry] of STORE) {
    const model = key.slice(0, key.indexOf(':'));
    if ((GRANTABLE.has(model) || model === 'Grant') && entry.payload?.accountId === sub) {
      STORE.delete(key);
      revoked[model] = (revoked[model] ?? 0) + 1;
    }
  }
  return revoked;
}

// ---------------------------------------------------------------------------------------------
// signing keys

async function newSigningKey() {
  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  const jwk = await exportJWK(privateKey);
  jwk.kid = await calculateJwkThumbprint(jwk);
  jwk.alg = 'RS256';
  jwk.use = 'sig';
  return jwk;
}

let signingKeys = [await newSigningKey()]; // the first one signs
const COOKIE_KEYS = [crypto.randomBytes(32).toString('base64url')];

const publicKid = (jwk) => jwk.kid;

// ---------------------------------------------------------------------------------------------
// the oidc-provider configuration

function findAccount(_ctx, sub) {
  const found = userBySub(sub);
  if (!found) return undefined;
  const [username, user] = found;
  return {
    accountId: sub,
    // read at each call, so /__test/groups shows in the next ID token and userinfo answer
    async claims() {
      return {
        sub,
        email: user.email,
        email_verified: user.email_verified,
        name: user.name,
        preferred_username: username,
        groups: [...user.groups],
      };
    },
  };
}

function buildProvider(issuer) {
  const configuration = {
    adapter: SharedMemoryAdapter,
    clients: [{
      client_id: CLIENT_ID,
      client_secret: CLIENT_SECRET,
      redirect_uris: REDIRECT_URIS,
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      // oidc-provider accepts client_secret_post too for a client registered with basic
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: 'RS256',
    }],
    jwks: { keys: signingKeys.map((k) => ({ ...k })) },
    cookies: {
      keys: COOKIE_KEYS,
      // cookies ignore ports: names that cannot clash with the relying party's on 127.0.0.1
      names: {
        session: 'idp_session',
        interaction: 'idp_interaction',
        resume: 'idp_interaction_resume',
      },
      // no `secure`: oidc-provider sets it only when the request itself is https
      long: { httpOnly: true, sameSite: 'lax' },
      short: { httpOnly: true, sameSite: 'lax' },
    },
    scopes: ['openid', 'email', 'profile', 'groups', 'offline_access'],
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name', 'preferred_username'],
      groups: ['groups'],
    },
    // the ID token carries the claims of the granted scopes itself, not only userinfo
    conformIdTokenClaims: false,
    findAccount,
    pkce: { required: () => true },
    // a refresh token on every authorization_code grant of a client allowed the grant,
    // offline_access or not; not tied to the browser session
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    expiresWithSession: async () => false,
    rotateRefreshToken: true,
    enabledJWA: { idTokenSigningAlgValues: ['RS256'] },
    responseTypes: ['code'],
    clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
    features: {
      devInteractions: { enabled: false },
      dPoP: { enabled: false },
      resourceIndicators: { enabled: false },
      revocation: { enabled: true },
      userinfo: { enabled: true },
    },
    interactions: {
      url: async (_ctx, interaction) => `/interaction/${interaction.uid}`,
    },
    routes: {
      authorization: '/authorize',
      userinfo: '/userinfo',
    },
    ttl: {
      AccessToken: ACCESS_TOKEN_TTL,
      AuthorizationCode: 120,
      IdToken: 3600,
      Interaction: 600,
      RefreshToken: 14 * 24 * 3600,
      Session: 24 * 3600,
      Grant: 14 * 24 * 3600,
    },
    clockTolerance: 5,
    renderError: async (ctx, out) => {
      ctx.type = 'html';
      ctx.body = `<!doctype html><title>error</title><h1>${esc(out.error)}</h1>`
        + `<p>${esc(out.error_description ?? '')}</p>`;
    },
  };
  const provider = new Provider(issuer, configuration);
  for (const event of ['server_error', 'authorization.error', 'grant.error', 'userinfo.error',
    'revocation.error', 'introspection.error', 'end_session.error']) {
    provider.on(event, (_ctx, err) => {
      toStderr(`[provider] ${event}: ${err.name}: ${err.message}`
        + `${err.error_description ? ` (${err.error_description})` : ''}`);
    });
  }
  return { provider, callback: provider.callback() };
}

// ---------------------------------------------------------------------------------------------
// small HTTP helpers

function esc(value) {
  return String(value).replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  }[c]));
}

async function readBody(req, limit = 64 * 1024) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw new Error('body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function sendJson(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'cache-control': 'no-store',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}

function sendHtml(res, status, html) {
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8',
    'cache-control': 'no-store',
    'content-length': Buffer.byteLength(html),
  });
  res.end(html);
}

function loginPage(uid, { clientId, error } = {}) {
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>Sign in</title></head>
<body>
<h1>Sign in to the test identity provider</h1>
${clientId ? `<p>for client <code>${esc(clientId)}</code></p>` : ''}
${error ? `<p class="error" role="alert">${esc(error)}</p>` : ''}
<form method="POST" action="/interaction/${esc(uid)}/login">
  <label>Username <input type="text" name="username" autocomplete="username" autofocus></label>
  <label>Password <input type="password" name="password" autocomplete="current-password"></label>
  <button type="submit">Sign in</button>
</form>
</body></html>
`;
}

// ---------------------------------------------------------------------------------------------
// interactions (login form; consent is granted at once)

async function autoConsent(provider, interaction) {
  const { prompt: { details }, params, session: { accountId } } = interaction;
  let grant;
  if (interaction.grantId) grant = await provider.Grant.find(interaction.grantId);
  if (!grant) grant = new provider.Grant({ accountId, clientId: params.client_id });
  if (params.scope) grant.addOIDCScope(params.scope);
  if (details.missingOIDCScope) grant.addOIDCScope(details.missingOIDCScope.join(' '));
  if (details.missingOIDCClaims) grant.addOIDCClaims(details.missingOIDCClaims);
  if (details.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(details.missingResourceScopes)) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
  }
  return grant.save();
}

async function handleInteraction(provider, req, res, uid, action) {
  let interaction;
  try {
    interaction = await provider.interactionDetails(req, res);
  } catch (err) {
    sendHtml(res, 400, `<!doctype html><title>error</title><p>${esc(err.message)}</p>`);
    return;
  }
  if (interaction.uid !== uid) {
    sendHtml(res, 400, '<!doctype html><title>error</title><p>interaction mismatch</p>');
    return;
  }
  const promptName = interaction.prompt.name;

  if (promptName === 'consent') {
    const grantId = await autoConsent(provider, interaction);
    await provider.interactionFinished(req, res, { consent: { grantId } },
      { mergeWithLastSubmission: true });
    return;
  }

  if (promptName !== 'login') {
    sendHtml(res, 400, `<!doctype html><title>error</title><p>unsupported prompt ${esc(promptName)}</p>`);
    return;
  }

  if (action === undefined) {
    if (req.method !== 'GET') {
      res.writeHead(405, { allow: 'GET' }).end();
      return;
    }
    sendHtml(res, 200, loginPage(uid, { clientId: interaction.params.client_id }));
    return;
  }

  // POST /interaction/:uid/login
  const form = new URLSearchParams(await readBody(req));
  const username = form.get('username') ?? '';
  const user = Object.hasOwn(USERS, username) ? USERS[username] : undefined;
  const password = Buffer.from(form.get('password') ?? '');
  const expected = Buffer.from(user?.password ?? '\0no-such-user');
  const ok = user && password.length === expected.length
    && crypto.timingSafeEqual(password, expected);
  if (!ok) {
    toStderr(`[provider] login refused for ${JSON.stringify(username)}`);
    sendHtml(res, 401, loginPage(uid, {
      clientId: interaction.params.client_id,
      error: 'wrong password (or unknown user)',
    }));
    return;
  }
  toStderr(`[provider] login ${username} (${user.sub})`);
  await provider.interactionFinished(req, res, {
    login: { accountId: user.sub, remember: true },
  }, { mergeWithLastSubmission: false });
}

// ---------------------------------------------------------------------------------------------
// test-control endpoints

async function handleTest(req, res, path) {
  let body = {};
  if (req.method === 'POST') {
    const text = await readBody(req);
    try {
      body = text ? JSON.parse(text) : {};
    } catch {
      sendJson(res, 400, { error: 'invalid_request', error_description: 'body is not JSON' });
      return;
    }
    if (body === null || typeof body !== 'object' || Array.isArray(body)) {
      sendJson(res, 400, { error: 'invalid_request', error_description: 'body must be an object' });
      return;
    }
  }
  const needUser = () => {
    const user = typeof body.user === 'string' && Object.hasOwn(USERS, body.user)
      ? USERS[body.user] : undefined;
    if (!user) sendJson(res, 404, { error: 'unknown_user', user: body.user ?? null });
    return user;
  };

  if (path === '/__test/groups' && req.method === 'POST') {
    const user = needUser();
    if (!user) return;
    if (!Array.isArray(body.groups) || !body.groups.every((g) => typeof g === 'string')) {
      sendJson(res, 400, { error: 'invalid_request', error_description: 'groups must be an array of strings' });
      return;
    }
    user.groups = [...body.groups];
    toStderr(`[provider] groups of ${body.user} := ${JSON.stringify(user.groups)}`);
    sendJson(res, 200, { user: body.user, sub: user.sub, groups: user.groups });
    return;
  }

  if (path === '/__test/revoke' && req.method === 'POST') {
    const user = needUser();
    if (!user) return;
    const revoked = revokeAccount(user.sub);
    toStderr(`[provider] revoked ${body.user}: ${JSON.stringify(revoked)}`);
    sendJson(res, 200, { user: body.user, sub: user.sub, revoked });
    return;
  }

  if (path === '/__test/tokens' && req.method === 'POST') {
    // Every opaque token value the provider issued to the user (an opaque token's value is
    // its id here), so a test can look for them where they must not be.
    const user = needUser();
    if (!user) return;
    const tokens = {};
    for (const [key, entry] of STORE) {
      const model = key.slice(0, key.indexOf(':'));
      if ((model === 'AccessToken' || model === 'RefreshToken') && entry.payload?.accountId === user.sub) {
        (tokens[model] ??= []).push(key.slice(model.length + 1));
      }
    }
    sendJson(res, 200, tokens);
    return;
  }

  if (path === '/__test/rotate' && req.method === 'POST') {
    if (body.keep_old !== undefined && typeof body.keep_old !== 'boolean') {
      sendJson(res, 400, { error: 'invalid_request', error_description: 'keep_old must be a boolean' });
      return;
    }
    const previous = signingKeys;
    const fresh = await newSigningKey();
    signingKeys = body.keep_old ? [fresh, ...previous] : [fresh];
    current = buildProvider(ISSUER);
    const kids = signingKeys.map(publicKid);
    toStderr(`[provider] rotated: signing kid ${fresh.kid}, jwks ${JSON.stringify(kids)}`);
    sendJson(res, 200, { signing_kid: fresh.kid, kids, previous_kids: previous.map(publicKid) });
    return;
  }

  if (path === '/__test/kids' && req.method === 'GET') {
    sendJson(res, 200, { signing_kid: signingKeys[0].kid, kids: signingKeys.map(publicKid) });
    return;
  }

  if (path === '/__test/users' && req.method === 'GET') {
    sendJson(res, 200, Object.fromEntries(Object.entries(USERS).map(([name, u]) => [name, {
      sub: u.sub, email: u.email, email_verified: u.email_verified, name: u.name, groups: u.groups,
    }])));
    return;
  }

  sendJson(res, 404, { error: 'not_found' });
}

// ---------------------------------------------------------------------------------------------
// server

let ISSUER;
let current; // { provider, callback } — swapped by /__test/rotate

const server = http.createServer((req, res) => {
  const started = Date.now();
  res.on('finish', () => {
    toStderr(`[provider] ${req.method} ${req.url.split('?')[0]} -> ${res.statusCode} (${Date.now() - started} ms)`);
  });
  const { pathname } = new URL(req.url, 'http://127.0.0.1');
  const handled = (async () => {
    if (!current) {
      sendJson(res, 503, { error: 'starting' });
      return;
    }
    if (pathname.startsWith('/__test/')) {
      await handleTest(req, res, pathname);
      return;
    }
    const m = /^\/interaction\/([A-Za-z0-9_-]+)(\/login)?$/.exec(pathname);
    if (m) {
      if (m[2] && req.method !== 'POST') {
        res.writeHead(405, { allow: 'POST' }).end();
        return;
      }
      await handleInteraction(current.provider, req, res, m[1], m[2] ? 'login' : undefined);
      return;
    }
    current.callback(req, res);
  })();
  handled.catch((err) => {
    toStderr(`[provider] error on ${req.method} ${pathname}: ${err.stack ?? err}`);
    if (!res.headersSent) sendJson(res, 500, { error: 'server_error' });
    else res.destroy();
  });
});

server.listen(Number(args.port), '127.0.0.1', () => {
  const { port } = server.address();
  ISSUER = `http://127.0.0.1:${port}`;
  current = buildProvider(ISSUER);
  toStderr(`[provider] issuer ${ISSUER}, client ${CLIENT_ID}, redirect_uris ${JSON.stringify(REDIRECT_URIS)}, signing kid ${signingKeys[0].kid}`);
  process.stdout.write(`READY ${ISSUER}\n`);
});
server.on('error', (err) => {
  toStderr(`provider.mjs: ${err.message}`);
  process.exit(1);
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections?.();
    process.exit(0);
  });
}
