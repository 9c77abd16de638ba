// A real outside OAuth 2.0 authorization server for scripts/interop.sh: panva's oidc-provider
// (npm `oidc-provider`), on loopback, issuing JWT access tokens to one client-credentials client.
//
//   OIDC_PROVIDER_DIR=DIR node scripts/interop_oidc.mjs PORT ISSUER CLIENT_ID CLIENT_SECRET [KID]
//
// DIR is where `npm install oidc-provider` was run (interop.sh uses its temporary directory, so
// nothing is installed into the repository). ISSUER is the issuer identifier (`iss`) — it need
// not name PORT, so two instances can claim the same issuer. Each run generates fresh signing
// keys: an RSA 2048 key (RS256, the default; its kid is KID when given, else the RFC 7638
// thumbprint oidc-provider derives) and a P-256 key (ES256). Both are published at jwks_uri.
//
// Resource servers (RFC 8707 `resource` parameter), all with JWT access tokens (RFC 9068):
//   urn:warden:mqtt        aud "warden",    RS256, 10 min
//   urn:warden:mqtt:es256  aud "warden",    ES256, 10 min
//   urn:warden:mqtt:short  aud "warden",    RS256, 4 s (expires while connected)
//   urn:other:api          aud "other-api", RS256, 10 min (a token not meant for Warden)
// Each grants, of the scopes asked for, those starting with `mqtt:`. The client authenticates
// with client_secret_basic and may only use the client_credentials grant.
//
// Prints `ready` once listening; runs until killed (SIGTERM/SIGINT).
import { createRequire } from 'node:module';
import { generateKeyPairSync } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import path from 'node:path';

const [port, issuer, clientId, clientSecret, kid] = process.argv.slice(2);
if (!clientSecret || !process.env.OIDC_PROVIDER_DIR) {
  console.error('usage: OIDC_PROVIDER_DIR=DIR node interop_oidc.mjs PORT ISSUER CLIENT_ID CLIENT_SECRET [KID]');
  process.exit(2);
}
const require = createRequire(path.join(path.resolve(process.env.OIDC_PROVIDER_DIR), 'noop.js'));
const { default: Provider, errors } = await import(pathToFileURL(require.resolve('oidc-provider')).href);

function privateJwk(type, options, extra) {
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), use: 'sig', ...extra };
}
const rsa = privateJwk('rsa', { modulusLength: 2048 }, kid ? { kid } : {});
const ec = privateJwk('ec', { namedCurve: 'P-256' }, {});

const RESOURCES = {
  'urn:warden:mqtt': { audience: 'warden', alg: 'RS256', ttl: 600 },
  'urn:warden:mqtt:es256': { audience: 'warden', alg: 'ES256', ttl: 600 },
  'urn:warden:mqtt:short': { audience: 'warden', alg: 'RS256', ttl: 4 },
  'urn:other:api': { audience: 'other-api', alg: 'RS256', ttl: 600 },
};

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: clientId,
      client_secret: clientSecret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  jwks: { keys: [rsa, ec] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: false },
    revocation: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => undefined, // a token request must name its resource
      useGrantedResource: () => false,
      getResourceServerInfo(ctx, resourceIndicator) {
        const r = RESOURCES[resourceIndicator];
        if (!r) throw new errors.InvalidTarget('unknown resource server');
        const asked = String(ctx.oidc.params.scope || '').split(' ');
        return {
          audience: r.audience,
          scope: asked.filter((s) => s.startsWith('mqtt:')).join(' ') || 'mqtt:none',
          accessTokenFormat: 'jwt',
          accessTokenTTL: r.ttl,
          jwt: { sign: { alg: r.alg } },
        };
      },
    },
  },
  ttl: {
    ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL || 600,
  },
  clientBasedCORS: () => false,
});
provider.on('server_error', (ctx, err) => console.error('oidc-provider server_error:', err));

const server = provider.listen(Number(port), '127.0.0.1', () => console.log('ready'));
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => server.close(() => process.exit(0)));
}
