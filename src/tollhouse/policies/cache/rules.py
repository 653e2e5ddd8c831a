"""RFC 9111 decisions on bytes: may a response be stored, for how long, and
does a stored response satisfy a conditional request.

Everything here is pure (no I/O) so that each rule has a unit test.
"""
from __future__ import annotations

import email.utils
import re

# Header lines never stored with an entry: the gateway writes its own on every
# answer (Date, Age, Content-Length, X-Request-ID, X-Cache-Status), and the
# connection-level ones mean nothing to a later client.
UNSTORED = frozenset((b"date", b"age", b"content-length", b"transfer-encoding", b"connection", b"keep-alive",
                      b"x-request-id", b"x-cache-status", b"surrogate-key", b"set-cookie"))
# RFC 9110 §15.4.5: what a 304 carries of the stored response.
NOT_MODIFIED_FIELDS = frozenset((b"cache-control", b"content-location", b"etag", b"expires", b"vary",
                                 b"last-modified"))

_DIRECTIVE = re.compile(r'\s*([A-Za-z0-9_-]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^,\s]*))?\s*(?:,|$)')


def parse_cache_control(value: str) -> dict[str, str | None]:
    """Directives by lower-case name; quoted values unquoted; the first of a repeated one wins."""
    out: dict[str, str | None] = {}
    for m in _DIRECTIVE.finditer(value):
        name = m.group(1).lower()
        arg = m.group(2)
        if arg is not None and arg.startswith('"'):
            arg = arg[1:-1].replace('\\"', '"')
        out.setdefault(name, arg)
    return out


def seconds(value: str | None) -> int | None:
    """A delta-seconds argument (RFC 9111 §1.2.2); None when absent or invalid."""
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        return None
    return n if n >= 0 else None


def http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    return parsed.timestamp()


class ResponseFacts:
    """What caching needs from an upstream response head, read in one pass."""

    __slots__ = ("cache_control", "expires", "date", "age", "etag", "last_modified", "vary", "set_cookie",
                 "surrogate_keys", "lines")

    def __init__(self, lines: list[bytes]):
        self.cache_control: dict[str, str | None] | None = None
        self.expires = self.date = self.etag = self.last_modified = None
        self.age = 0
        self.vary: list[str] = []
        self.set_cookie = False
        self.surrogate_keys: list[str] = []
        kept = []
        for line in lines:
            colon = line.find(b":")
            name = line[:colon].strip().lower()
            if name in UNSTORED:
                if name == b"set-cookie":
                    self.set_cookie = True
                elif name == b"surrogate-key":
                    self.surrogate_keys += line[colon + 1:].decode("latin-1").split()
                elif name == b"age":
                    self.age = seconds(line[colon + 1:].strip().decode("latin-1")) or 0
                elif name == b"date":
                    self.date = http_date(line[colon + 1:].strip().decode("latin-1"))
                continue
            kept.append(line)
            if name == b"cache-control":
                cc = parse_cache_control(line[colon + 1:].decode("latin-1"))
                if self.cache_control is None:
                    self.cache_control = cc
                else:
                    for k, v in cc.items():
                        self.cache_control.setdefault(k, v)
            elif name == b"expires":
                self.expires = line[colon + 1:].strip().decode("latin-1")
            elif name == b"etag":
                self.etag = line[colon + 1:].strip().decode("latin-1")
            elif name == b"last-modified":
                self.last_modified = line[colon + 1:].strip().decode("latin-1")
            elif name == b"vary":
                self.vary += [v.strip().lower() for v in line[colon + 1:].decode("latin-1").split(",") if v.strip()]
        self.lines = kept


class Lifetime:
    """How long a response may be served: fresh, then stale while revalidating, then stale on errors."""

    __slots__ = ("fresh", "while_revalidate", "if_error", "shared")

    def __init__(self, fresh: float, while_revalidate: float, if_error: float, shared: bool):
        self.fresh = fresh
        self.while_revalidate = while_revalidate
        self.if_error = if_error
        self.shared = shared     # `public` or `s-maxage`: may answer requests with Authorization (§3.5)

    @property
    def total(self) -> float:
        return self.fresh + max(self.while_revalidate, self.if_error)


def lifetime(status: int, facts: ResponseFacts, settings, now: float) -> tuple[Lifetime | None, str]:
    """(Lifetime, "") when the response may be stored, else (None, why).

    Upstream Cache-Control wins, then Expires, then the route's ttl (RFC 9111
    §4.2.1). Like nginx, `no-cache` is treated as "do not store": a response
    that must be revalidated on every use saves nothing here.
    """
    if status not in settings.statuses:
        return None, f"status {status} is not cacheable"
    if facts.set_cookie:
        return None, "Set-Cookie"
    if "*" in facts.vary:
        return None, "Vary: *"
    cc = facts.cache_control or {}
    for directive in ("no-store", "private", "no-cache"):
        if directive in cc:
            return None, f"Cache-Control: {directive}"
    shared = "public" in cc or "s-maxage" in cc
    fresh = seconds(cc.get("s-maxage"))
    if fresh is None:
        fresh = seconds(cc.get("max-age"))
    if fresh is None and facts.expires is not None:
        expires = http_date(facts.expires)
        # An invalid Expires (e.g. "0") means already expired (§5.3).
        fresh = 0 if expires is None else max(0.0, expires - (facts.date or now))
    if fresh is None:
        fresh = settings.ttl
    fresh = max(0.0, fresh - facts.age)
    swr = seconds(cc.get("stale-while-revalidate"))
    sie = seconds(cc.get("stale-if-error"))
    if "must-revalidate" in cc or "proxy-revalidate" in cc:
        swr = sie = 0   # §5.2.2.2: never served stale
    swr = settings.stale_while_revalidate if swr is None else swr
    sie = settings.stale_if_error if sie is None else sie
    if fresh <= 0 and swr <= 0 and sie <= 0:
        return None, "already stale"
    return Lifetime(fresh, swr, sie, shared), ""


def _etags(value: str) -> list[str]:
    return [t.strip().removeprefix("W/") for t in value.split(",") if t.strip()]


def not_modified(if_none_match: str | None, if_modified_since: str | None, etag: str | None,
                 last_modified: str | None) -> bool:
    """Whether a stored 200 answers a conditional GET with 304 (RFC 9110 §13.1.2, §13.1.3, §13.2.2).

    If-None-Match uses the weak comparison and, when present, If-Modified-Since is ignored.
    """
    if if_none_match is not None:
        if if_none_match.strip() == "*":
            return True
        if etag is None:
            return False
        return etag.removeprefix("W/") in _etags(if_none_match)
    if if_modified_since is not None and last_modified is not None:
        since, modified = http_date(if_modified_since), http_date(last_modified)
        return since is not None and modified is not None and modified <= since
    return False
