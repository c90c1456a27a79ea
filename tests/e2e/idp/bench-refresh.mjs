#!/usr/bin/env node
// node-oidc-provider (npm oidc-provider, its default in-memory adapter) set up as the other side
// of `grantline-bench refresh --oidc-provider`: the same refresh-token rotation, measured by the
// same load generator in the same run (docs/performance.md).
//
//   node bench-refresh.mjs --clients C
//
// C public clients (token_endpoint_auth_method none, so oidc-provider rotates every refresh
// token, as Grantline does), each with one grant and one refresh token made through the
// provider's own models. Scope `offline_access` without `openid`: no ID token is signed, and the
// access token is opaque — what Grantline's default refresh answers with. When it listens it
// prints one JSON line on stdout: {"token_url": …, "families": [{"client_id", "refresh_token"}]}.
// Everything else goes to stderr. It runs until stdin closes or it is killed.

import { format, parseArgs } from 'node:util';

const toStderr = (...args) => { process.stderr.write(`${format(...args)}\n`); };
console.log = toStderr;
console.info = toStderr;
console.warn = toStderr;

const { default: Provider } = await import('oidc-provider');

const { values: args } = parseArgs({ options: { clients: { type: 'string' } }, strict: true });
const clients = Number(args.clients ?? 32);
if (!Number.isInteger(clients) || clients < 1) {
  toStderr('usage: node bench-refresh.mjs --clients C');
  process.exit(2);
}

const REDIRECT = 'http://127.0.0.1:9/cb';
const ids = Array.from({ length: clients }, (_, i) => `bench-${i}`);
const provider = new Provider('http://127.0.0.1', {
  clients: ids.map((client_id) => ({
    client_id,
    application_type: 'native',
    token_endpoint_auth_method: 'none',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: [REDIRECT],
  })),
  findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
  ttl: { RefreshToken: 14 * 24 * 3600, AccessToken: 3600, Grant: 14 * 24 * 3600 },
});

const server = provider.listen(0, '127.0.0.1');
await new Promise((resolve) => { server.once('listening', resolve); });
const { port } = server.address();
// The issuer names port 80; requests come to the real port. oidc-provider checks no Host.

const families = [];
for (const id of ids) {
  const client = await provider.Client.find(id);
  const grant = new provider.Grant({ accountId: `user-${id}`, clientId: id });
  grant.addOIDCScope('offline_access');
  const grantId = await grant.save();
  const token = new provider.RefreshToken({
    client,
    accountId: `user-${id}`,
    grantId,
    gty: 'authorization_code',
    scope: 'offline_access',
    authTime: Math.floor(Date.now() / 1000),
  });
  families.push({ client_id: id, refresh_token: await token.save() });
}

process.stdout.write(`${JSON.stringify({ token_url: `http://127.0.0.1:${port}/token`, families })}\n`);
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
