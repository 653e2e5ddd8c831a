"""Who is calling: one object, set on the exchange by whichever auth provider
recognised the caller, and read by everything that depends on the caller (rate
limits, the cache's scope, the upstream's identity headers, the access log,
metrics, traces, consistent hashing). None on the exchange for an anonymous caller.
"""
from __future__ import annotations


class Identity:
    """A recognised caller.

    - `consumer`: the consumer id (the token's subject, the API key's consumer);
    - `tier`: its tier name (rate limits), or None;
    - `scopes`, `roles`: frozensets of names;
    - `claims`: the token's claims (a dict; empty for an API key);
    - `credential`: what the caller presented: "jwt", "api_key", "introspection";
    - `provider`: the name of the provider that recognised it;
    - `expires`: when the credential stops being valid (epoch seconds), or None;
    - `upstream_lines`: what the upstream is told (X-Consumer-Id, -Tier, X-Auth-Scopes),
      built once per identity;
    - `rate_limits`: the consumer's own limits (RateLimit configs), which replace a
      route's for it, or None; `limits_key` names that set (the rate limiter's cache).
    """

    __slots__ = ("consumer", "tier", "scopes", "roles", "claims", "credential", "provider", "expires",
                 "upstream_lines", "rate_limits", "limits_key")

    def __init__(self, consumer: str, tier: str | None, scopes: frozenset, roles: frozenset, *, provider: str,
                 credential: str, claims: dict | None = None, expires: float | None = None):
        self.consumer = consumer
        self.tier = tier
        self.scopes = scopes
        self.roles = roles
        self.claims = claims if claims is not None else {}
        self.credential = credential
        self.provider = provider
        self.expires = expires
        lines = [b"x-consumer-id: %s\r\n" % consumer.encode("latin-1", "replace")]
        if tier:
            lines.append(b"x-consumer-tier: %s\r\n" % tier.encode("latin-1", "replace"))
        if scopes:
            lines.append(b"x-auth-scopes: %s\r\n" % " ".join(sorted(scopes)).encode("latin-1", "replace"))
        self.upstream_lines = tuple(lines)
        self.rate_limits = None
        self.limits_key = None

    def set_rate_limits(self, limits: tuple) -> None:
        """The consumer's own limits (empty: the route's apply)."""
        if limits:
            self.rate_limits = tuple(limits)
            self.limits_key = self.consumer + "|" + "|".join(
                f"{c.key}:{c.algorithm}:{c.limit}:{c.window:g}:{c.burst}:{c.scope}:{c.tiered}" for c in limits)

    def __repr__(self) -> str:
        return f"Identity({self.consumer!r}, tier={self.tier!r}, credential={self.credential!r})"
