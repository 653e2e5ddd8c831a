"""The auth service of a config version (its providers and token issuer) and a route's
check (`AuthPolicy`); the kind that declares them is in __init__.py."""
from __future__ import annotations

import time
import urllib.parse
from hashlib import sha256

from ...identity import Identity
from ...pipeline import Reply
from ...registry import noted_index
from .admitted import AdmittedTokens, identify
from .certificates import MtlsProvider, client_certificate
from .oidc import OidcProvider, is_navigation
from .issuer import TokenIssuer
from .providers import ApiKeyProvider, AuthFailure, IntrospectionProvider, JwtProvider
from .schema import Auth, RouteAuth


class AuthService:
    """The providers of one config version (and the token issuer, if configured)."""

    def __init__(self, auth_cfg, consumers, store, directory=None):
        """`directory`: the worker's consumers made at run time (policies/auth/directory.py)."""
        auth_cfg = auth_cfg or Auth()
        self.consumers = {c.id: c for c in consumers}
        self.providers: dict = {}
        for name, cfg in auth_cfg.providers.items():
            if cfg.type == "jwt":
                self.providers[name] = JwtProvider(name, cfg, auth_cfg.claims, self.consumers)
            elif cfg.type == "api_key":
                self.providers[name] = ApiKeyProvider(name, cfg, consumers, directory)
            elif cfg.type == "mtls":
                self.providers[name] = MtlsProvider(name, cfg, self.consumers)
            elif cfg.type == "oidc":
                self.providers[name] = OidcProvider(name, cfg, auth_cfg.claims, self.consumers, directory)
            else:
                self.providers[name] = IntrospectionProvider(name, cfg, auth_cfg.claims, self.consumers)
        self.issuer = None
        if auth_cfg.token_endpoint is not None:
            self.issuer = TokenIssuer(auth_cfg.token_endpoint, consumers, store)
            te = auth_cfg.token_endpoint
            self_cfg = _SelfProviderConfig(self.issuer.algorithm, te.audience)
            self.providers["self"] = JwtProvider("self", self_cfg, auth_cfg.claims, self.consumers,
                                                 static_key=self.issuer.public_key, issuer_override=te.issuer)
        self.started = False

    def start(self) -> None:
        """Background work (JWKS refresh) needs the running loop: started on first use."""
        if not self.started:
            self.started = True
            for p in self.providers.values():
                if isinstance(p, (JwtProvider, OidcProvider)):
                    p.start()

    def close(self) -> None:
        for p in self.providers.values():
            if isinstance(p, (JwtProvider, OidcProvider)):
                p.close()

    def local_routes(self):
        """(method, path, handler) the gateway answers itself."""
        routes = [r for p in self.providers.values() if isinstance(p, OidcProvider) for r in p.local_routes()]
        if self.issuer is None:
            return routes
        te = self.issuer.cfg
        return routes + [("POST", te.path, self.issuer.token_endpoint), ("POST", te.revoke_path, self.issuer.revoke_endpoint),
                ("GET", te.jwks_path, self.issuer.jwks_endpoint)]


class _SelfProviderConfig:
    """The `self` provider: tokens from our own issuer."""

    def __init__(self, algorithm: str, audience: str):
        self.algorithms = (algorithm,)
        self.audience = audience
        self.leeway = 0.0
        self.issuer = ""
        self.jwks_url = ""
        self.secret = ""
        self.public_key = ""
        self.timeout = 2.0


_CHALLENGE = 'Bearer realm="tollhouse"'
_NEXT = object()   # no API-key provider decided: the next kind of provider is tried
#: Failure reasons exported at 0 for every authenticated route (the rarer ones appear when they happen).
DECLARED_FAILURES = ("missing", "malformed", "expired", "bad_signature", "invalid_key", "insufficient_scope")
ADMITTED_MAX = 4096


class AuthPolicy(AdmittedTokens):
    """A route's check. Its common case, a token this route admitted before, is
    `AdmittedTokens.on_request` (compiled); the rest is `check`."""

    phase = "auth"

    def __init__(self, config: RouteAuth, context, *, service: AuthService, route_name: str):
        super().__init__(config, context)
        self.service = service
        self.providers = [service.providers[name] for name in config.providers]
        self.bearer = [p for p in self.providers if p.kind in ("jwt", "introspection")]
        self.api_keys = [p for p in self.providers if p.kind == "api_key"]
        self.certificates = [p for p in self.providers if p.kind == "mtls"]
        self.browsers = [p for p in self.providers if p.kind == "oidc"]
        self.sessions = {} if self.browsers else None   # Cookie header -> (what its session made, its entry)
        self.cookie = noted_index("cookie")
        # A route that takes client certificates logs the fingerprint of the one presented.
        self.log_fields = ("client_cert",) if self.certificates else ()
        self.scopes = frozenset(config.scopes)
        self.roles = frozenset(config.roles)
        self.optional = config.optional
        self.route = route_name
        self.counters = context.stats.counters
        for reason in DECLARED_FAILURES:
            context.stats.declare("auth_failures", (("reason", reason), ("route", route_name)))
        self.scope_param = " ".join(sorted(self.scopes))
        self.admitted: dict[bytes, tuple] = {}   # Authorization value -> (identity, until), this route's passes
        self.authorization = noted_index("authorization")

    def check(self, exchange):
        auth = exchange.noted_value(self.authorization)
        if auth is not None and self.bearer:
            now = time.time()
            scheme = auth[:7]
            if scheme == b"Bearer " or scheme.lower() == b"bearer ":
                raw = auth[7:].strip()
                key = sha256(raw).digest()
                for provider in self.bearer:
                    hit = provider.cache.entries.get(key)
                    if hit is not None and hit[1] > now and hit[0].__class__ is Identity:
                        result = self._admit(exchange, hit[0])
                        if result is None:
                            # Until the verified-token cache's own expiry (the token's exp + leeway).
                            if len(self.admitted) >= ADMITTED_MAX:
                                self.admitted.clear()
                            self.admitted[auth] = hit
                        return result
                return self._authenticate(exchange, raw.decode("latin-1"), key, now)
        return self._authenticate(exchange, None, None, None)

    def _authenticate(self, exchange, token, key, now):
        service = self.service
        if not service.started:
            service.start()
        failure = None
        if token and self.bearer:
            for provider in self.bearer:
                try:
                    result = provider.verify(token, key, now)
                except AuthFailure as e:
                    failure = failure or e
                    continue
                if isinstance(result, Identity):
                    return self._admit(exchange, result)
                return self._await(exchange, result, self.bearer.index(provider), token, key)
        if self.api_keys:
            result, failure = self._keys(exchange, 0, failure)
            if result is not _NEXT:
                return result
        if self.certificates:
            certificate = client_certificate(exchange.conn)
            if certificate is not None:
                exchange.remember(self.slot, certificate.fingerprint)
                for provider in self.certificates:
                    identity = provider.identify(certificate)
                    if identity is not None:
                        return self._admit(exchange, identity)
                failure = failure or AuthFailure("certificate", f"the client certificate has no {provider.source}")
        if self.browsers:
            now = now or time.time()
            for index, provider in enumerate(self.browsers):
                try:
                    result = provider.session(exchange, now)
                except AuthFailure as e:
                    return self._deny(e)
                if result is None:
                    continue
                if result.__class__ is Identity:
                    reply = self._admit(exchange, result)
                    if reply is None and provider.last is not None:
                        # Admitted: the next request with this cookie takes the compiled shortcut.
                        if len(self.sessions) >= ADMITTED_MAX:
                            self.sessions.clear()
                        self.sessions[exchange.noted_value(self.cookie)] = provider.last
                    return reply
                return self._await_session(exchange, result, index, failure, token)
        return self._unauthenticated(exchange, failure, token)

    def _unauthenticated(self, exchange, failure, token):
        """No provider recognised the caller: anonymous (optional), a login (a browser's
        navigation on a route with an oidc provider), or 401."""
        if failure is None and token is None:
            if self.optional:
                return None
            if self.browsers and is_navigation(exchange):
                return self.browsers[0].login(exchange)
        return self._deny(failure)

    async def _await_session(self, exchange, pending, index, failure, token):
        """A session the worker has not cached: the store is asked."""
        try:
            identity = await pending
            for provider in self.browsers[index + 1:]:
                if identity is not None:
                    break
                identity = provider.session(exchange, time.time())
                if identity is not None and identity.__class__ is not Identity:
                    identity = await identity
        except AuthFailure as e:
            return self._deny(e)
        if identity is not None:
            return self._admit(exchange, identity)
        result = self._unauthenticated(exchange, failure, token)
        if result is not None and result.__class__ is not Reply:
            result = await result
        return result

    def log_values(self, value) -> tuple:
        return (value,)   # the client certificate's fingerprint

    async def _await(self, exchange, pending, index, token, key):
        """A provider had to wait (JWKS refetch, introspection); later ones still get their turn."""
        failure = None
        try:
            return self._admit(exchange, await pending)
        except AuthFailure as e:
            failure = e
        for provider in self.bearer[index + 1:]:
            try:
                result = provider.verify(token, key, time.time())
                if not isinstance(result, Identity):
                    result = await result
                return self._admit(exchange, result)
            except AuthFailure:
                continue
        return self._deny(failure)

    def _keys(self, exchange, start: int, failure):
        """The API-key providers from `start` on: (the answer: a Reply, None for admitted, an
        awaitable when the store is asked, or _NEXT when none decided; the first failure)."""
        for index in range(start, len(self.api_keys)):
            provider = self.api_keys[index]
            try:
                presented = self._api_key(exchange, provider)
                if presented is None:
                    continue
                result = provider.verify(presented)
                if result.__class__ is not Identity:
                    return self._await_key(exchange, result, index, failure), failure
                return self._admit(exchange, result), failure
            except AuthFailure as e:
                if e.reason == "duplicate_credential" or e.reason == "store_unavailable":
                    return self._deny(e), failure
                failure = failure or e
        return _NEXT, failure

    async def _await_key(self, exchange, pending, index, failure):
        """A runtime key the worker has not cached: the store is asked; later providers
        still get their turn."""
        try:
            return self._admit(exchange, await pending)
        except AuthFailure as e:
            if e.reason == "store_unavailable":
                return self._deny(e)
            failure = failure or e
        result, failure = self._keys(exchange, index + 1, failure)
        if result is _NEXT:
            return self._deny(failure)
        if result is not None and result.__class__ is not Reply:
            result = await result
        return result

    def _api_key(self, exchange, provider) -> str | None:
        if provider.query:
            query = exchange.query
            if not query:
                return None
            pairs = urllib.parse.parse_qsl(query[1:].decode("latin-1"), keep_blank_values=True)
            values = [v for k, v in pairs if k == provider.query]
            value = values[0] if values else None
            if len(values) > 1:
                raise AuthFailure("duplicate_credential", f"more than one {provider.query} parameter")
            if value is not None:
                # The credential is not forwarded upstream.
                rest = [(k, v) for k, v in pairs if k != provider.query]
                exchange.query = ("?" + urllib.parse.urlencode(rest)).encode() if rest else b""
            return value
        value = exchange.header(provider.header)
        if value is not None:
            # Every copy is removed, so none reaches the service; two copies are
            # refused (a service reading the other one would see another caller).
            count = exchange.header_count(provider.header)
            exchange.remove_header(provider.header)
            if count > 1:
                raise AuthFailure("duplicate_credential", f"more than one {provider.header} header")
        return value

    def _admit(self, exchange, identity: Identity):
        if self.scopes and not self.scopes <= identity.scopes:
            self._count("insufficient_scope")
            return Reply.problem(403, "Forbidden", "the credential lacks a required scope", headers=[
                ("www-authenticate", f'{_CHALLENGE}, error="insufficient_scope", scope="{self.scope_param}"')])
        if self.roles and not self.roles & identity.roles:
            self._count("forbidden_role")
            return Reply.problem(403, "Forbidden", "the caller has none of the required roles",
                                 headers=[("www-authenticate", f'{_CHALLENGE}, error="insufficient_scope"')])
        identify(exchange, identity)
        return None

    def _deny(self, failure: AuthFailure | None) -> Reply:
        if failure is not None and failure.reason == "store_unavailable":
            self._count(failure.reason)
            return Reply.problem(503, "Service Unavailable", failure.detail, headers=[("retry-after", "1")])
        if failure is None:
            # No credential at all: a bare challenge (RFC 6750 §3.1).
            self._count("missing")
            return Reply.problem(401, "Unauthorized", "credentials are required",
                                 headers=[("www-authenticate", _CHALLENGE)])
        self._count(failure.reason)
        detail = failure.detail.replace('"', "'")
        return Reply.problem(401, "Unauthorized", failure.detail, headers=[
            ("www-authenticate", f'{_CHALLENGE}, error="invalid_token", error_description="{detail}"')])

    def _count(self, reason: str) -> None:
        key = ("auth_failures", (("reason", reason), ("route", self.route)))
        self.counters[key] = self.counters.get(key, 0) + 1
