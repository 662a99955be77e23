// The OpenID provider the end-to-end tests start: the npm package
// `oidc-provider` (OpenID certified), configured for the device
// authorization grant, served over TLS on a loopback address.
//
//   node provider.mjs serve --issuer https://127.10.x.y:PORT --listen 127.10.x.y:PORT \
//        --cert server.crt --key server.key --signing-key idp.pem \
//        --accounts '{"alice":["db-admins"]}' [--id-token-ttl 600]
//   node provider.mjs forge KEY.pem KID '{"iss":…}'   (prints an RS256 JWT signed with KEY)
//
// Accounts: any login typed into the provider's own login form is accepted
// (oidc-provider's development interactions); its groups come from
// --accounts. Prints "ready" on stdout once it listens.

import fs from 'node:fs';
import https from 'node:https';
import { createPrivateKey, createSign } from 'node:crypto';

import Provider from 'oidc-provider';

// stdout carries only "ready" (and forged tokens); the provider's own notes go to stderr.
for (const level of ["log", "info", "debug"]) console[level] = (...args) => console.error(...args);

const b64 = (buf) => Buffer.from(buf).toString('base64url');

function forge(keyFile, kid, claimsJson) {
  const header = { alg: 'RS256', typ: 'JWT', kid };
  const input = `${b64(JSON.stringify(header))}.${b64(claimsJson)}`;
  const signer = createSign('RSA-SHA256');
  signer.update(input);
  const sig = signer.sign(createPrivateKey(fs.readFileSync(keyFile)));
  process.stdout.write(`${input}.${b64(sig)}\n`);
}

function options(args) {
  const out = {};
  for (let i = 0; i < args.length; i += 2) {
    if (!args[i].startsWith('--') || args[i + 1] === undefined) throw new Error(`bad argument ${args[i]}`);
    out[args[i].slice(2)] = args[i + 1];
  }
  return out;
}

async function serve(args) {
  const o = options(args);
  const jwk = createPrivateKey(fs.readFileSync(o['signing-key'])).export({ format: 'jwk' });
  Object.assign(jwk, { kid: 'k1', use: 'sig', alg: 'RS256' });
  const accounts = JSON.parse(o.accounts || '{}');
  const idTokenTtl = Number(o['id-token-ttl'] || 600);
  const provider = new Provider(o.issuer, {
    clients: [{
      client_id: 'gatehouse',
      token_endpoint_auth_method: 'none',
      grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
      response_types: [],
      redirect_uris: [],
      id_token_signed_response_alg: 'RS256',
    }],
    jwks: { keys: [jwk] },
    features: { deviceFlow: { enabled: true }, devInteractions: { enabled: true } },
    scopes: ['openid', 'email', 'groups', 'offline_access'],
    claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'] },
    // Scope claims go into the ID token itself (the agent reads only the ID token).
    conformIdTokenClaims: false,
    findAccount: (ctx, id) => ({
      accountId: id,
      claims: () => ({
        sub: id, email: `${id}@example.test`, email_verified: true, groups: accounts[id] || [],
      }),
    }),
    ttl: { IdToken: idTokenTtl, AccessToken: idTokenTtl, DeviceCode: 600, RefreshToken: 86400, Grant: 86400 },
    cookies: { keys: ['gatehouse-test-cookies'] },
  });
  // oidc-provider 8 keeps the device authorization request's nonce in the
  // device code's params but does not copy it into the ID token, as it does
  // for its other flows; carry it, as OpenID Connect Core asks of a nonce.
  const save = provider.DeviceCode.prototype.save;
  provider.DeviceCode.prototype.save = function saveWithNonce(...a) {
    if (this.params?.nonce && !this.nonce) this.nonce = this.params.nonce;
    return save.apply(this, a);
  };
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  const [host, port] = [o.listen.slice(0, o.listen.lastIndexOf(':')), Number(o.listen.slice(o.listen.lastIndexOf(':') + 1))];
  const server = https.createServer({ cert: fs.readFileSync(o.cert), key: fs.readFileSync(o.key) }, provider.callback());
  server.listen(port, host, () => process.stdout.write('ready\n'));
}

const [mode, ...rest] = process.argv.slice(2);
if (mode === 'forge') {
  forge(rest[0], rest[1], rest[2]);
} else if (mode === 'serve') {
  serve(rest).catch((e) => { console.error(e); process.exit(1); });
} else {
  console.error('usage: provider.mjs serve … | forge KEY KID CLAIMS');
  process.exit(2);
}
