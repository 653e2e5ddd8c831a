"""Config schema of authentication (top-level `auth`, `consumers`; route `auth`)."""
from __future__ import annotations

import hashlib
import re

from ...config.loader import ConfigError
from ...config.schema import Bool, Duration, Field, Int, Kind, ListOf, MapOf, Schema, Str, error_at
from ..ratelimit.schema import RateLimit

JWT_ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                  "ES256", "ES384", "EdDSA")
NAME = r"[A-Za-z0-9_.-]+"
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")


def hashed_secret(value: str) -> str:
    """`sha256:<hex>` as given, or the hash of a plain secret (hashed at load)."""
    if _SHA256.fullmatch(value):
        return value
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


class Secret(Kind):
    """A secret stored hashed: `sha256:<64 hex>`, or plain text hashed at load."""

    label = "secret"

    def convert(self, value):
        if not isinstance(value, str) or not value:
            raise ValueError("expected a non-empty string")
        return hashed_secret(value)


class OidcSession(Schema):
    cookie = Field(Str(pattern=r"[A-Za-z0-9_-]+"), "th_session", "the cookie naming the session")
    ttl = Field(Duration(min=1), 8 * 3600.0, "a session ends this long after the login")
    idle = Field(Duration(min=1), 1800.0, "... or after this long without a request")


class Provider(Schema):
    type = Field(Str(choices=("jwt", "api_key", "introspection", "mtls", "oidc")),
                 doc="jwt, api_key, introspection, mtls or oidc")
    # jwt
    algorithms = Field(ListOf(Str(choices=JWT_ALGORITHMS)), (), "jwt: accepted algorithms (never `none`)")
    secret = Field(Str(), "", "jwt: HMAC secret (HS*)")
    public_key = Field(Str(), "", "jwt: PEM public key file (RS*, PS*, ES*, EdDSA)")
    jwks_url = Field(Str(pattern=r"https?://.+"), "", "jwt: JWKS document URL, fetched and refreshed in the background")
    jwks_refresh = Field(Duration(min=1), 300.0, "jwt: how often the JWKS is refetched")
    issuer = Field(Str(), "", "jwt/introspection: required `iss`; oidc: the provider (discovery from "
                   "ISSUER/.well-known/openid-configuration)")
    audience = Field(Str(), "", "jwt/introspection: required in `aud`")
    leeway = Field(Duration(), 0.0, "jwt: clock skew allowed on exp/nbf/iat")
    # api_key
    header = Field(Str(pattern=r"[A-Za-z0-9-]+"), "", "api_key: header carrying the key (default X-API-Key)")
    query = Field(Str(pattern=r"[A-Za-z0-9_.-]+"), "", "api_key: query parameter carrying the key")
    # introspection
    url = Field(Str(pattern=r"https?://.+"), "", "introspection: RFC 7662 endpoint")
    client_id = Field(Str(), "", "introspection/oidc: the gateway's client id (HTTP Basic)")
    client_secret = Field(Str(), "", "introspection/oidc: the gateway's client secret (HTTP Basic)")
    cache_ttl = Field(Duration(), 60.0, "introspection: active answers are cached this long (never past exp)")
    inactive_ttl = Field(Duration(), 10.0, "introspection: inactive answers are cached this long")
    timeout = Field(Duration(min=0.01), 2.0, "jwt (JWKS fetch) / introspection: HTTP timeout")
    # oidc
    redirect_path = Field(Str(pattern=r"/[^\s?#]*"), "/auth/callback", "oidc: where the provider sends the browser "
                          "back (registered at the provider as https://HOST/PATH)")
    logout_path = Field(Str(pattern=r"/[^\s?#]*"), "/auth/logout", "oidc: ends the session (GET or POST)")
    logout_redirect = Field(Str(pattern=r"/[^\s?#]*"), "/", "oidc: where the browser lands after logout "
                            "(registered at the provider as a post-logout redirect URI)")
    scopes = Field(ListOf(Str(pattern=r"[!#-\[\]-~]+")), ("openid",), "oidc: scopes asked for (openid among them)")
    session = Field(OidcSession, OidcSession(), "oidc: {cookie, ttl, idle}: sessions live in the store")
    # mtls
    consumer_from = Field(Str(choices=("subject_cn", "san_dns", "san_uri", "fingerprint")), "subject_cn",
                          "mtls: the consumer id of a verified client certificate: its subject CN, first SAN DNS "
                          "name, first SAN URI, or SHA-256 fingerprint (hex)")

    def check(self, path, lines, line, errors):
        if self.type == "jwt":
            if not self.algorithms:
                error_at(errors, path, "algorithms", lines, line, "a jwt provider needs its algorithms")
            sources = [bool(self.secret), bool(self.public_key), bool(self.jwks_url)]
            if sum(sources) != 1:
                error_at(errors, path, "secret", lines, line, "give exactly one of secret, public_key, jwks_url")
            hs = [a for a in self.algorithms if a.startswith("HS")]
            if self.secret and len(hs) != len(self.algorithms):
                error_at(errors, path, "algorithms", lines, line, "a secret only verifies HS* algorithms")
            if (self.public_key or self.jwks_url) and hs:
                # RS->HS confusion: never verify an HMAC with public key material.
                error_at(errors, path, "algorithms", lines, line, "HS* needs a secret, not a public key")
        elif self.type == "api_key":
            if self.header and self.query:
                error_at(errors, path, "query", lines, line, "use either header or query")
        elif self.type == "introspection":
            if not self.url:
                error_at(errors, path, "url", lines, line, "is required for introspection")
        elif self.type == "oidc":
            for key in ("issuer", "client_id"):
                if not getattr(self, key):
                    error_at(errors, path, key, lines, line, "is required for oidc")
            if self.issuer and not self.issuer.startswith(("https://", "http://")):
                error_at(errors, path, "issuer", lines, line, "expected the provider's URL")
            if "openid" not in self.scopes:
                error_at(errors, path, "scopes", lines, line, "must include openid")
            if self.redirect_path == self.logout_path:
                error_at(errors, path, "logout_path", lines, line, "must differ from redirect_path")


class Claims(Schema):
    consumer = Field(Str(), "sub", "claim naming the consumer")
    scopes = Field(Str(), "scope", "claim with scopes: space-separated string (`scope`) or list (`scp`)")
    roles = Field(Str(), "roles", "claim with roles (list or space-separated)")
    tier = Field(Str(), "tier", "claim with the tier")


class TokenEndpoint(Schema):
    path = Field(Str(pattern=r"/[^\s?#]*"), "/oauth/token", "where the token endpoint answers")
    revoke_path = Field(Str(pattern=r"/[^\s?#]*"), "/oauth/revoke", "RFC 7009 revocation endpoint")
    jwks_path = Field(Str(pattern=r"/[^\s?#]*"), "/.well-known/jwks.json", "public keys of the issued tokens")
    issuer = Field(Str(), doc="`iss` of issued tokens")
    audience = Field(Str(), "", "`aud` of issued tokens (optional)")
    signing_key = Field(Str(), doc="PEM private key file: RSA (RS256) or Ed25519 (EdDSA)")
    kid = Field(Str(), "", "key id (default: derived from the public key)")
    access_ttl = Field(Duration(min=1), 900.0, "lifetime of access tokens")
    refresh_ttl = Field(Duration(), 0.0, "issue rotating refresh tokens living this long; 0 = none")


class Auth(Schema):
    providers = Field(MapOf(Provider, key_pattern=NAME), {}, "named credential providers")
    claims = Field(Claims, Claims(), "where identity lives in a token")
    token_endpoint = Field(TokenEndpoint, None, "the built-in OAuth 2.0 server (provider name `self`)")

    def check(self, path, lines, line, errors):
        if "self" in self.providers:
            error_at(errors, f"{path}.providers", "self", {}, line, "`self` is reserved for the token endpoint")
        paths: dict = {}
        for name, provider in self.providers.items():
            if provider.type != "oidc":
                continue
            for key in ("redirect_path", "logout_path"):
                other = paths.setdefault(getattr(provider, key), name)
                if other != name:
                    error_at(errors, f"{path}.providers.{name}", key, {}, line,
                             f"{getattr(provider, key)} is already {other}'s")


class Consumer(Schema):
    id = Field(Str(pattern=NAME), doc="consumer id (sent upstream as X-Consumer-Id)")
    tier = Field(Str(pattern=NAME), "", "tier name (see `tiers`)")
    api_keys = Field(ListOf(Secret()), (), "API keys, as sha256:<hex> (a plain key is hashed at load)")
    client_id = Field(Str(), "", "client id for the token endpoint")
    client_secret = Field(Secret(), "", "client secret for the token endpoint (sha256:<hex> or plain)")
    scopes = Field(ListOf(Str()), (), "scopes this consumer may hold")
    roles = Field(ListOf(Str()), (), "roles of this consumer")
    rate_limits = Field(ListOf(RateLimit), (), "this consumer's own limits: they replace a limited route's for it")

    def check(self, path, lines, line, errors):
        check_own_limits(self.rate_limits, path, line, errors)


def check_own_limits(limits, path: str, line, errors: list) -> None:
    """A consumer's own limits count in this region, without tiers."""
    for i, limit in enumerate(limits):
        if limit.tiered:
            error_at(errors, f"{path}.rate_limits[{i}]", "tiered", {}, line, "a consumer's own limits cannot be tiered")
        if limit.scope != "region":
            error_at(errors, f"{path}.rate_limits[{i}]", "scope", {}, line,
                     "a consumer's own limits count per region (scope: region)")


class JsonObject(Kind):
    label = "mapping"

    def convert(self, value):
        if not isinstance(value, dict):
            raise ValueError(f"expected a JSON object, got {type(value).__name__}")
        return value


#: Consumers per page of GET /consumers (`?limit=` up to this).
PAGE = 100


class RuntimeConsumer(Schema):
    """The body of the admin listener's POST /consumers (and a consumer after a PATCH)."""

    id = Field(Str(pattern=NAME), doc="consumer id (sent upstream as X-Consumer-Id)")
    tier = Field(Str(pattern=NAME), "", "tier name (see `tiers`)")
    scopes = Field(ListOf(Str()), (), "scopes this consumer holds")
    roles = Field(ListOf(Str()), (), "roles of this consumer")
    rate_limits = Field(ListOf(RateLimit), (), "this consumer's own limits: they replace a limited route's for it")
    metadata = Field(JsonObject(), {}, "free-form JSON object, returned as given")

    def check(self, path, lines, line, errors):
        check_own_limits(self.rate_limits, path, line, errors)


class NewKey(Schema):
    """The body of POST /consumers/{id}/keys."""

    ttl = Field(Duration(min=1), 0.0, "the key expires this long after it is made (0: never)")
    name = Field(Str(pattern=r"[^\x00-\x1f]{1,100}"), "", "a label for listings")


class ListQuery(Schema):
    """The query of GET /consumers."""

    tier = Field(Str(pattern=NAME), "", "only consumers of this tier")
    cursor = Field(Str(pattern=NAME), "", "the `next` of the previous page")
    limit = Field(Int(min=1, max=PAGE), PAGE, "consumers per page")


class RouteAuth(Schema):
    providers = Field(ListOf(Str(pattern=NAME)), doc="any one may succeed, tried in order")
    scopes = Field(ListOf(Str()), (), "all required (403 insufficient_scope otherwise)")
    roles = Field(ListOf(Str()), (), "any one required (403 otherwise)")
    optional = Field(Bool(), False, "anonymous callers pass; known callers are still identified")


def check_consumers(config, errors: list) -> None:
    """Rules across `consumers` (the section's check): unique ids, API keys and client ids,
    and tiers that `tiers` names."""
    ids, keys, clients = set(), set(), set()
    for i, c in enumerate(config.consumers):
        where = f"consumers[{i}]"
        if c.id in ids:
            errors.append(ConfigError(where + ".id", None, f"duplicate consumer id {c.id!r}"))
        ids.add(c.id)
        if c.tier and config.tiers and c.tier not in config.tiers:
            errors.append(ConfigError(where + ".tier", None, f"no tier named {c.tier!r} in tiers"))
        for k in c.api_keys:
            if k in keys:
                errors.append(ConfigError(where + ".api_keys", None, "an API key is given to two consumers"))
            keys.add(k)
        if c.client_id:
            if c.client_id in clients:
                errors.append(ConfigError(where + ".client_id", None, f"duplicate client_id {c.client_id!r}"))
            clients.add(c.client_id)


def check_route(route, where: str, config, errors: list) -> None:
    """A route's `auth` names providers of the top-level `auth` (or `self`, the token endpoint);
    an `mtls` provider needs the listener to ask for client certificates (`tls.client_ca`)."""
    if route.auth is None:
        return
    known = set(config.auth.providers) if config.auth is not None else set()
    if config.auth is not None and config.auth.token_endpoint is not None:
        known.add("self")
    for j, name in enumerate(route.auth.providers):
        if name not in known:
            errors.append(ConfigError(f"{where}.auth.providers[{j}]", None, f"no auth provider named {name!r}"))
        elif name != "self" and config.auth.providers[name].type == "mtls" and (
                config.tls is None or not config.tls.client_ca):
            errors.append(ConfigError(f"{where}.auth.providers[{j}]", None, f"{name!r} is an mtls provider: "
                                      "set tls.client_ca so that the listener asks for client certificates"))
