#!/usr/bin/env node
// A tiny hand-written OpenID Connect provider whose ID tokens can be made deliberately wrong, so
// that Grantline's federation end-to-end tests can check that the relying party refuses them.
//
//   node rogue.mjs --port P --client-id ID --client-secret SECRET [--mode MODE]
//
// Issuer http://127.0.0.1:P (P may be 0). Prints exactly one line `READY http://127.0.0.1:P` on
// stdout when it listens; everything else goes to stderr. No login page: /authorize redirects at
// once. POST /__test/mode {"mode": "..."} chooses how the next responses are broken (see MODES);
// POST /__test/rotate publishes a new signing key and withdraws the current one from /jwks.

import * as crypto from 'node:crypto';
import * as http from 'node:http';
import { format, parseArgs } from 'node:util';

import {
  base64url, calculateJwkThumbprint, exportJWK, generateKeyPair, SignJWT,
} from 'jose';

const log = (...args) => { process.stderr.write(`[rogue] ${format(...args)}\n`); };

// what each mode does (to the authorization response or to the ID token)
const MODES = {
  ok: 'a valid ID token',
  wrong_iss: 'iss is the issuer + "/other"',
  wrong_aud: 'aud is "someone-else"',
  expired: 'iat now-1200, exp now-600',
  future_iat: 'iat now+3600, exp now+4000',
  bad_signature: 'a valid token with one character in the middle of the signature changed',
  alg_none: 'header {"alg":"none","typ":"JWT"} and an empty signature',
  rotated_key: 'signed with a key (own kid) that /jwks does not list',
  removed_key: 'signed with the key /jwks listed before POST /__test/rotate withdrew it',
  replay_nonce: 'nonce of the previous authorize request instead of this one',
  azp_mismatch: 'aud [client_id, "other-client"], azp "other-client"',
  azp_other: 'aud client_id alone, but azp "other-client"',
  no_nonce: 'no nonce claim',
  state_mismatch: 'the authorization response carries a different state',
  iss_param_wrong: 'the authorization response carries iss=https://evil.example',
  iss_param_missing: 'the authorization response carries no iss, though discovery promises it',
  access_denied: 'the authorization response is error=access_denied (no code)',
  userinfo_down: 'an ID token without email or name, and /userinfo answers 500 naming an internal address',
  stale_auth_time: 'auth_time an hour ago: the person was not signed in again, whatever prompt and max_age asked',
  fresh_auth_time: 'auth_time now',
};

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      port: { type: 'string' },
      'client-id': { type: 'string' },
      'client-secret': { type: 'string' },
      mode: { type: 'string', default: 'ok' },
    },
    strict: true,
  }));
} catch (err) {
  log(err.message);
  process.exit(2);
}
if (args.port === undefined || !/^\d+$/.test(args.port) || !args['client-id']
  || !args['client-secret'] || !Object.hasOwn(MODES, args.mode)) {
  process.stderr.write('usage: node rogue.mjs --port P --client-id ID --client-secret SECRET [--mode MODE]\n'
    + `modes: ${Object.keys(MODES).join(' ')}\n`);
  process.exit(2);
}

const CLIENT_ID = args['client-id'];
const CLIENT_SECRET = args['client-secret'];
let mode = args.mode;
let ISSUER;

const SUBJECT = {
  sub: 'rogue-sub-1',
  email: 'eve@example.com',
  email_verified: true,
  name: 'Eve Rogue',
};

async function makeKey() {
  const { privateKey, publicKey } = await generateKeyPair('RS256', { extractable: true });
  const pub = await exportJWK(publicKey);
  const kid = await calculateJwkThumbprint(pub);
  return { privateKey, kid, publicJwk: { ...pub, kid, alg: 'RS256', use: 'sig' } };
}

let currentKey = await makeKey();
let retiredKey = null; // for removed_key: published until POST /__test/rotate
const strayKey = await makeKey(); // for rotated_key: never published

// state
const codes = new Map(); // code -> { nonce, challenge, redirectUri, scope, previousNonce, used }
const accessTokens = new Map(); // token -> exp (ms)
const refreshTokens = new Map(); // token -> { nonce, scope }
let lastAuthorizeNonce; // nonce of the most recent /authorize request

const random = () => crypto.randomBytes(24).toString('base64url');
const now = () => Math.floor(Date.now() / 1000);

// ---------------------------------------------------------------------------------------------

async function idToken({ nonce, previousNonce }) {
  const t = now();
  const payload = {
    iss: ISSUER,
    aud: CLIENT_ID,
    ...SUBJECT,
    nonce,
    iat: t,
    exp: t + 300,
  };
  let key = currentKey;
  switch (mode) {
    case 'wrong_iss': payload.iss = `${ISSUER}/other`; break;
    case 'wrong_aud': payload.aud = 'someone-else'; break;
    case 'expired': payload.iat = t - 1200; payload.exp = t - 600; break;
    case 'future_iat': payload.iat = t + 3600; payload.exp = t + 4000; break;
    case 'rotated_key': key = strayKey; break;
    case 'removed_key': key = retiredKey ?? currentKey; break;
    case 'replay_nonce': payload.nonce = previousNonce ?? `no-previous-authorize-${random()}`; break;
    case 'azp_mismatch': payload.aud = [CLIENT_ID, 'other-client']; payload.azp = 'other-client'; break;
    case 'azp_other': payload.azp = 'other-client'; break;
    case 'no_nonce': delete payload.nonce; break;
    case 'userinfo_down': delete payload.email; delete payload.email_verified; delete payload.name; break;
    case 'stale_auth_time': payload.auth_time = t - 3600; break;
    case 'fresh_auth_time': payload.auth_time = t; break;
    default:
  }
  if (payload.nonce === undefined) delete payload.nonce;

  if (mode === 'alg_none') {
    const enc = (obj) => base64url.encode(JSON.stringify(obj));
    return `${enc({ alg: 'none', typ: 'JWT' })}.${enc(payload)}.`;
  }

  const jwt = await new SignJWT(payload)
    .setProtectedHeader({ alg: 'RS256', typ: 'JWT', kid: key.kid })
    .sign(key.privateKey);

  if (mode === 'bad_signature') {
    const [h, p, s] = jwt.split('.');
    const i = Math.floor(s.length / 2);
    const altered = s[i] === 'A' ? 'B' : 'A';
    return `${h}.${p}.${s.slice(0, i)}${altered}${s.slice(i + 1)}`;
  }
  return jwt;
}

// ---------------------------------------------------------------------------------------------

function send(res, status, body, headers = {}) {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(status, {
    'content-type': typeof body === 'string' ? 'text/plain; charset=utf-8' : 'application/json',
    'cache-control': 'no-store',
    'content-length': Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

const oauthError = (res, status, error, description, headers) => send(res, status,
  { error, error_description: description }, headers);

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

const formDecode = (s) => decodeURIComponent(s.replace(/\+/g, '%20'));

function safeEqual(a, b) {
  const x = Buffer.from(String(a));
  const y = Buffer.from(String(b));
  return x.length === y.length && crypto.timingSafeEqual(x, y);
}

function discovery() {
  return {
    issuer: ISSUER,
    authorization_endpoint: `${ISSUER}/authorize`,
    token_endpoint: `${ISSUER}/token`,
    jwks_uri: `${ISSUER}/jwks`,
    userinfo_endpoint: `${ISSUER}/userinfo`,
    response_types_supported: ['code'],
    response_modes_supported: ['query'],
    subject_types_supported: ['public'],
    id_token_signing_alg_values_supported: ['RS256'],
    code_challenge_methods_supported: ['S256'],
    scopes_supported: ['openid', 'email', 'profile', 'groups', 'offline_access'],
    token_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post'],
    grant_types_supported: ['authorization_code', 'refresh_token'],
    claims_supported: ['sub', 'iss', 'aud', 'exp', 'iat', 'nonce', 'email', 'email_verified', 'name'],
    authorization_response_iss_parameter_supported: true,
  };
}

// GET /authorize
function authorize(req, res, url) {
  const q = url.searchParams;
  if (q.get('client_id') !== CLIENT_ID) {
    send(res, 400, 'unknown client_id');
    return;
  }
  const redirectUri = q.get('redirect_uri');
  let target;
  try {
    target = new URL(redirectUri);
    if (!['http:', 'https:'].includes(target.protocol)) throw new Error('scheme');
  } catch {
    send(res, 400, 'missing or invalid redirect_uri');
    return;
  }
  const state = q.get('state');
  const nonce = q.get('nonce') ?? undefined;
  const previousNonce = lastAuthorizeNonce;
  lastAuthorizeNonce = nonce;

  const respond = (params) => {
    const out = { ...params };
    if (state !== null) out.state = mode === 'state_mismatch' ? `${state}-not-yours-${random()}` : state;
    if (mode !== 'iss_param_missing') out.iss = mode === 'iss_param_wrong' ? 'https://evil.example' : ISSUER;
    for (const [k, v] of Object.entries(out)) target.searchParams.set(k, v);
    res.writeHead(302, { location: target.href, 'cache-control': 'no-store', 'content-length': 0 });
    res.end();
  };

  if (q.get('response_type') !== 'code') {
    respond({ error: 'unsupported_response_type', error_description: 'only code' });
    return;
  }
  if (!q.get('code_challenge') || q.get('code_challenge_method') !== 'S256') {
    respond({ error: 'invalid_request', error_description: 'PKCE with S256 is required' });
    return;
  }
  if (mode === 'access_denied') {
    respond({ error: 'access_denied', error_description: 'The user refused' });
    return;
  }
  const code = random();
  codes.set(code, {
    nonce,
    previousNonce,
    challenge: q.get('code_challenge'),
    redirectUri,
    scope: q.get('scope') ?? 'openid',
    exp: Date.now() + 120_000,
  });
  respond({ code });
}

// POST /token
async function token(req, res) {
  const type = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
  if (type !== 'application/x-www-form-urlencoded') {
    await readBody(req);
    oauthError(res, 400, 'invalid_request', 'body must be application/x-www-form-urlencoded');
    return;
  }
  const form = new URLSearchParams(await readBody(req));

  // client authentication: client_secret_basic or client_secret_post (not both)
  let id;
  let secret;
  const authz = req.headers.authorization;
  const basicChallenge = { 'www-authenticate': `Basic realm="${ISSUER}"` };
  if (authz !== undefined) {
    const m = /^Basic\s+([A-Za-z0-9+/=]+)$/i.exec(authz);
    if (!m || form.has('client_secret')) {
      oauthError(res, 400, 'invalid_request', 'malformed Authorization header or two authentication methods');
      return;
    }
    const decoded = Buffer.from(m[1], 'base64').toString('utf8');
    const i = decoded.indexOf(':');
    try {
      if (i < 0) throw new Error('no colon');
      id = formDecode(decoded.slice(0, i));
      secret = formDecode(decoded.slice(i + 1));
    } catch {
      oauthError(res, 400, 'invalid_request', 'malformed Authorization header');
      return;
    }
    if (form.has('client_id') && form.get('client_id') !== id) {
      oauthError(res, 400, 'invalid_request', 'client_id mismatch');
      return;
    }
  } else {
    id = form.get('client_id');
    secret = form.get('client_secret');
  }
  if (id !== CLIENT_ID || secret === null || secret === undefined
    || !safeEqual(secret, CLIENT_SECRET)) {
    oauthError(res, 401, 'invalid_client', 'client authentication failed',
      authz !== undefined ? basicChallenge : {});
    return;
  }

  const grantType = form.get('grant_type');
  let nonce;
  let previousNonce;
  let scope;
  if (grantType === 'authorization_code') {
    const entry = codes.get(form.get('code') ?? '');
    codes.delete(form.get('code') ?? ''); // one use, even when the exchange fails
    if (!entry || entry.exp < Date.now()) {
      oauthError(res, 400, 'invalid_grant', 'unknown, used or expired code');
      return;
    }
    if (form.get('redirect_uri') !== entry.redirectUri) {
      oauthError(res, 400, 'invalid_grant', 'redirect_uri does not match the authorization request');
      return;
    }
    const verifier = form.get('code_verifier');
    if (!verifier || !/^[A-Za-z0-9._~-]{43,128}$/.test(verifier)) {
      oauthError(res, 400, 'invalid_grant', 'code_verifier missing or malformed');
      return;
    }
    const computed = crypto.createHash('sha256').update(verifier).digest('base64url');
    if (!safeEqual(computed, entry.challenge)) {
      oauthError(res, 400, 'invalid_grant', 'code_verifier does not match code_challenge');
      return;
    }
    ({ nonce, previousNonce, scope } = entry);
  } else if (grantType === 'refresh_token') {
    const rt = form.get('refresh_token') ?? '';
    const entry = refreshTokens.get(rt);
    if (!entry) {
      oauthError(res, 400, 'invalid_grant', 'unknown refresh token');
      return;
    }
    refreshTokens.delete(rt);
    ({ nonce, previousNonce, scope } = entry);
  } else {
    oauthError(res, 400, 'unsupported_grant_type', `grant_type ${grantType} is not supported`);
    return;
  }

  const accessToken = random();
  const refreshToken = random();
  accessTokens.set(accessToken, Date.now() + 3600_000);
  refreshTokens.set(refreshToken, { nonce, previousNonce, scope });
  const body = {
    access_token: accessToken,
    token_type: 'Bearer',
    expires_in: 3600,
    refresh_token: refreshToken,
    id_token: await idToken({ nonce, previousNonce }),
    scope,
  };
  log(`token (${grantType}) issued in mode ${mode}`);
  send(res, 200, body, { pragma: 'no-cache' });
}

// GET /userinfo
function userinfo(req, res) {
  if (mode === 'userinfo_down') {
    send(res, 500, { error: 'server_error', error_description: 'backend 10.9.8.7:5432 refused the query' });
    return;
  }
  const m = /^Bearer\s+(\S+)$/i.exec(req.headers.authorization ?? '');
  const exp = m ? accessTokens.get(m[1]) : undefined;
  if (!exp || exp < Date.now()) {
    oauthError(res, 401, 'invalid_token', 'unknown or expired access token', {
      'www-authenticate': `Bearer realm="${ISSUER}", error="invalid_token"`,
    });
    return;
  }
  send(res, 200, { ...SUBJECT });
}

async function testMode(req, res) {
  if (req.method === 'GET') {
    send(res, 200, { mode, modes: MODES });
    return;
  }
  let body;
  try {
    body = JSON.parse(await readBody(req));
  } catch {
    send(res, 400, { error: 'invalid_request', error_description: 'body is not JSON' });
    return;
  }
  if (typeof body?.mode !== 'string' || !Object.hasOwn(MODES, body.mode)) {
    send(res, 400, { error: 'unknown_mode', mode: body?.mode ?? null, modes: Object.keys(MODES) });
    return;
  }
  mode = body.mode;
  log(`mode := ${mode}`);
  send(res, 200, { mode });
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  const route = `${req.method} ${url.pathname}`;
  res.on('finish', () => log(`${req.method} ${url.pathname} -> ${res.statusCode}`));
  (async () => {
    switch (route) {
      case 'GET /.well-known/openid-configuration': send(res, 200, discovery()); break;
      case 'GET /jwks': send(res, 200, { keys: [currentKey.publicJwk] }); break;
      case 'GET /authorize': authorize(req, res, url); break;
      case 'POST /token': await token(req, res); break;
      case 'GET /userinfo': userinfo(req, res); break;
      case 'POST /__test/rotate':
        retiredKey = currentKey;
        currentKey = await makeKey();
        log(`keys rotated: ${retiredKey.kid} withdrawn, ${currentKey.kid} published`);
        send(res, 200, { kid: currentKey.kid, withdrawn: retiredKey.kid });
        break;
      case 'GET /__test/mode':
      case 'POST /__test/mode': await testMode(req, res); break;
      default: send(res, 404, { error: 'not_found' });
    }
  })().catch((err) => {
    log(`error on ${route}: ${err.stack ?? err}`);
    if (!res.headersSent) send(res, 500, { error: 'server_error' });
    else res.destroy();
  });
});

server.listen(Number(args.port), '127.0.0.1', () => {
  ISSUER = `http://127.0.0.1:${server.address().port}`;
  log(`issuer ${ISSUER}, client ${CLIENT_ID}, kid ${currentKey.kid}, unpublished kid ${strayKey.kid}, mode ${mode}`);
  process.stdout.write(`READY ${ISSUER}\n`);
});
server.on('error', (err) => {
  log(err.message);
  process.exit(1);
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections?.();
    process.exit(0);
  });
}
