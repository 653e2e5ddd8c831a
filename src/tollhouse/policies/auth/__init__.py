"""Authentication and authorisation (docs/contract.md §2 `auth`, `consumers`, route `auth`; §3).

`AuthService` holds the providers of one config version; `AuthPolicy` is
a route's check: any listed provider may succeed, all `scopes` are required,
any of `roles`. Failures are problem+json with an RFC 6750 challenge: 401
`error="invalid_token"` (or no error when no credential was sent), 403
`error="insufficient_scope"`. After success the upstream receives
`X-Consumer-Id`, `X-Consumer-Tier`, `X-Auth-Scopes` (client-sent copies are
always removed), and the rate limiter sees the consumer and tier.
"""
from __future__ import annotations

from ...config.schema import Field, ListOf
from ...identity import Identity
from ...registry import NotedHeader, PolicyKind, Section
from .directory import ConsumerDirectory
from .policy import AuthPolicy, AuthService
from .providers import AuthFailure
from .schema import Auth, Consumer, RouteAuth, check_consumers, check_route

__all__ = ["Auth", "Consumer", "RouteAuth", "AuthService", "AuthPolicy", "AuthFailure", "Identity"]


def _service(services):
    config = services.config
    if config.auth is None and not config.consumers:
        return None
    return services.once("auth", lambda: AuthService(config.auth, config.consumers, services.store,
                                                     services.worker("auth")))


def _build(config, context, services):
    if config is None:
        return None
    return AuthPolicy(config, context, service=_service(services), route_name=context.route_name)


def _endpoints(services):
    service = _service(services)
    if service is None:
        return []
    return [("oauth" + path.replace("/", "-").replace(".", ""), method, path, handler)
            for method, path, handler in service.local_routes()]


_CONSUMER = r"/consumers/[A-Za-z0-9_.-]+"

KIND = PolicyKind("auth", phase=AuthPolicy.phase, key="auth", build=_build, endpoints=_endpoints, check=check_route,
                  # Consumers and API keys made at run time (§14), per worker.
                  service=lambda config, store, stats, worker: ConsumerDirectory(config, store, worker),
                  log_fields=("client_cert",),   # the fingerprint of a client certificate (mtls routes)
                  admin=((("GET", "POST"), r"/consumers"), (("GET", "PATCH", "DELETE"), _CONSUMER),
                         (("GET", "POST"), _CONSUMER + "/keys"), (("DELETE",), _CONSUMER + r"/keys/[0-9a-f]+")),
                  # Noted for the policy (no scan of the lines) and relayed; two Authorization headers are
                  # 400 before routing. The Cookie header: a browser session's (the last copy, if several).
                  headers=(NotedHeader("authorization", singleton=True), NotedHeader("cookie")),
                  field=Field(RouteAuth, None, "who may call: {providers, scopes, roles, optional}; see docs/auth.md"),
                  sections=(Section("auth", Field(Auth, None, "credential providers, claim names, the token endpoint; "
                                                              "see docs/auth.md")),
                            Section("consumers", Field(ListOf(Consumer), (), "known callers: API keys, OAuth clients, "
                                                                             "tier, scopes, roles"),
                                    check=check_consumers)))
