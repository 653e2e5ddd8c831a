// A real OpenID provider for Tollhouse's tests: oidc-provider (OpenID Certified), one
// confidential client ("gateway"), its development login and consent pages (the tests
// fill them in), PKCE required, refresh tokens issued, RP-initiated logout.
//
//   node provider.js PORT REDIRECT_URIS POST_LOGOUT_REDIRECT_URIS [ACCESS_TOKEN_TTL_SECONDS]
//
// URIs are comma-separated. Prints "ready" once it listens on 127.0.0.1:PORT; every
// token request is logged as one JSON line ({"grant_type": ...}) on stdout.
import Provider from 'oidc-provider';

const [port, redirects, logouts, accessTtl] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'gateway',
    client_secret: 'gateway-secret',
    redirect_uris: redirects.split(','),
    post_logout_redirect_uris: logouts.split(','),
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  pkce: { required: () => true },
  issueRefreshToken: async () => true,
  ttl: { AccessToken: Number(accessTtl || 3600), IdToken: 3600, RefreshToken: 86400, Session: 86400,
         Grant: 86400, Interaction: 600, AuthorizationCode: 60 },
  features: { devInteractions: { enabled: true }, rpInitiatedLogout: { enabled: true } },
  claims: { openid: ['sub'], email: ['email', 'email_verified'] },
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, email: `${id}@example.com`, email_verified: true }),
  }),
  cookies: { keys: ['tollhouse-test-cookie-key'] },
});

provider.use(async (ctx, next) => {
  if (ctx.path === '/token' && ctx.method === 'POST') {
    await next();
    console.log(JSON.stringify({ token_request: ctx.oidc?.params?.grant_type ?? null, status: ctx.status }));
    return;
  }
  await next();
});

provider.listen(Number(port), '127.0.0.1', () => console.log('ready'));
