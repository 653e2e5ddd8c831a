"""CORS (docs/contract.md §2 route `cors`), following the Fetch standard's CORS protocol.

A preflight (OPTIONS with Origin and Access-Control-Request-Method) is
answered by the gateway and never reaches the upstream: 204 with the
allowed methods, headers and max age when the origin, method and headers
are allowed; 403 problem+json otherwise. Actual requests from an allowed
origin get Access-Control-Allow-Origin (the origin itself, never `*` with
credentials) and Access-Control-Expose-Headers; requests from other origins
pass through without CORS headers, so the browser withholds the response.
Every response of a CORS route carries `Vary: Origin`, so shared caches keep
per-origin answers apart.
"""
from __future__ import annotations

import re

from ..config.schema import Bool, Duration, Field, ListOf, Schema, Str, error_at
from ..pipeline import Policy, Reply
from ..registry import PolicyKind

_ORIGIN = r"\*|null|https?://(\*\.)?[A-Za-z0-9.-]+(:[0-9]+)?"
_TOKEN = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"


class Cors(Schema):
    origins = Field(ListOf(Str(pattern=_ORIGIN)), doc="allowed origins: exact (https://app.example), "
                    "subdomain wildcards (https://*.example.com), `null` only if listed, or `*` (any, no credentials)")
    methods = Field(ListOf(Str(pattern=r"[A-Z]+")), ("GET", "HEAD", "POST"), "methods a preflight may allow")
    headers = Field(ListOf(Str(pattern=_TOKEN)), (), "request headers a preflight may allow (beyond the CORS-safelisted)")
    expose_headers = Field(ListOf(Str(pattern=_TOKEN)), (), "response headers scripts may read")
    credentials = Field(Bool(), False, "allow cookies and Authorization (Access-Control-Allow-Credentials)")
    max_age = Field(Duration(), 600.0, "how long browsers may cache a preflight answer")

    def check(self, path, lines, line, errors):
        if not self.origins:
            error_at(errors, path, "origins", lines, line, "needs at least one origin")
        if self.credentials and "*" in self.origins:
            # Reflecting any origin with credentials would let every site read the user's data.
            error_at(errors, path, "credentials", lines, line, "cannot be combined with origins: ['*']")


class OriginMatcher:
    __slots__ = ("any", "exact", "patterns")

    def __init__(self, origins):
        self.any = "*" in origins
        self.exact = {o.lower() for o in origins if "*" not in o}
        self.patterns = [re.compile(re.escape(o.lower()).replace(r"\*\.", r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\."))
                         for o in origins if o != "*" and "*" in o]

    def allows(self, origin: str) -> bool:
        origin = origin.lower()
        if origin in self.exact:
            return True
        if origin == "null":
            return False      # only when listed (sandboxed frames and file: pages send it)
        if self.any:
            return True
        return any(p.fullmatch(origin) for p in self.patterns)


class CorsPolicy(Policy):
    phase = "cors"
    Config = Cors

    def __init__(self, config: Cors, context):
        super().__init__(config, context)
        self.matcher = OriginMatcher(config.origins)
        self.methods = frozenset(config.methods) | {"GET", "HEAD", "POST"}
        self.allowed_headers = frozenset(h.lower() for h in config.headers)
        self.allow_methods = ", ".join(config.methods)
        self.allow_headers = ", ".join(config.headers)
        self.max_age = str(int(config.max_age))
        self.credentials = config.credentials
        self.expose = ", ".join(config.expose_headers).encode()

    def on_request(self, exchange):
        origin = exchange.header("origin")
        if origin is None:
            return None
        if exchange.method == b"OPTIONS":
            requested = exchange.header("access-control-request-method")
            if requested is not None:
                return self.preflight(exchange, origin, requested)
        return None

    def preflight(self, exchange, origin: str, requested: str) -> Reply:
        if not self.matcher.allows(origin):
            return Reply.problem(403, "Forbidden", f"origin {origin} is not allowed")
        if requested not in self.methods:
            return Reply.problem(403, "Forbidden", f"method {requested} is not allowed for cross-origin requests")
        asked = exchange.header("access-control-request-headers") or ""
        names = [h.strip().lower() for h in asked.split(",") if h.strip()]
        refused = [h for h in names if h not in self.allowed_headers]
        if refused:
            return Reply.problem(403, "Forbidden", f"header {refused[0]} is not allowed for cross-origin requests")
        headers = [("access-control-allow-origin", origin), ("access-control-allow-methods", self.allow_methods),
                   ("access-control-max-age", self.max_age),
                   ("vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers")]
        if self.allow_headers:
            headers.append(("access-control-allow-headers", self.allow_headers))
        if self.credentials:
            headers.append(("access-control-allow-credentials", "true"))
        return Reply(204, headers=headers)

    def on_response(self, exchange) -> None:
        if exchange.status == 204 and exchange.response_header("access-control-allow-methods") is not None:
            return   # our own preflight answer
        lines = exchange.response_headers
        lines.append(b"vary: Origin\r\n")
        origin = exchange.header("origin")
        if origin is None or not self.matcher.allows(origin):
            return
        # The origin itself, not `*`: correct with and without credentials; the upstream's own say is replaced.
        if exchange.response_header("access-control-allow-origin") is not None:
            exchange.remove_response_header("access-control-allow-origin")
            exchange.remove_response_header("access-control-allow-credentials")
            lines = exchange.response_headers
        lines.append(b"access-control-allow-origin: %s\r\n" % origin.encode("latin-1"))
        if self.credentials:
            lines.append(b"access-control-allow-credentials: true\r\n")
        if self.expose:
            lines.append(b"access-control-expose-headers: %s\r\n" % self.expose)


KIND = PolicyKind("cors", phase=CorsPolicy.phase, key="cors",
                  build=lambda config, context, services: CorsPolicy(config, context) if config is not None else None,
                  field=Field(Cors, None, "{origins, methods, headers, expose_headers, credentials, max_age}; "
                              "see docs/traffic.md"))
