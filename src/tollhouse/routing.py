"""The route table, compiled once per config version (docs/contract.md §2 "Route choice").

Host first (exact, then the longest `*.suffix` wildcard, then routes without
a host), then the most specific path: exact before templated before the
longest prefix. Routes declaring that same most specific path share it by
method (the first in config order whose methods allow the request wins);
when none allows the method the answer is 405 with `Allow` listing theirs:
a less specific route is never used to dodge a method restriction.
"""
from __future__ import annotations

import re
from typing import Any

_VAR = re.compile(rb"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_REF = re.compile(rb"\{([A-Za-z_][A-Za-z0-9_]*|[0-9]+)\}")
_CACHE_SIZE = 8192


class RouteTarget:
    """What the proxy needs of a matched route; built from config at load."""

    __slots__ = ("name", "index", "host", "methods", "path", "prefix", "template", "strip_prefix", "rewrite", "rewrite_regex",
                 "timeout", "preserve_host", "upstream", "chain", "name_bytes", "specificity", "match_key", "stats", "local",
                 "path_kept", "first_wait", "chooser")

    def __init__(self, name: str, index: int, *, host: str = "", methods=(), path: str = "", prefix: str = "",
                 strip_prefix: bool = False, rewrite: Any = "", timeout: float = 60.0, preserve_host: bool = False,
                 upstream: Any = None, chain: Any = None, stats: Any = None, local: Any = None, chooser: Any = None):
        self.name = name
        self.name_bytes = name.encode()
        self.index = index
        self.host = host.lower()
        self.methods = frozenset(m.encode() for m in methods)
        self.path = path.encode()
        self.prefix = prefix.encode().rstrip(b"/") if prefix else b""
        self.template = None
        if path and _VAR.search(self.path):
            pattern = b""
            pos = 0
            for m in _VAR.finditer(self.path):
                pattern += re.escape(self.path[pos:m.start()]) + b"(?P<" + m.group(1) + b">[^/]+)"
                pos = m.end()
            pattern += re.escape(self.path[pos:])
            self.template = re.compile(pattern)
        self.strip_prefix = strip_prefix
        self.rewrite_regex = None
        if rewrite and not isinstance(rewrite, str):   # {regex, to}
            self.rewrite_regex = re.compile(rewrite.regex.encode())
            rewrite = rewrite.to
        self.rewrite = rewrite.encode() if rewrite else b""
        # The upstream gets the normalised path as it is (no upstream_path call per request).
        self.path_kept = not (self.rewrite or self.rewrite_regex or strip_prefix)
        # How long an answer may take to start (the sweep's first deadline).
        self.first_wait = min(timeout, upstream.settings.read_timeout) if upstream is not None else timeout
        self.timeout = timeout
        self.preserve_host = preserve_host
        self.upstream = upstream   # the route's upstream pool (the chooser's default)
        # How the upstream of each request is chosen, when not always `upstream`: an object
        # with `choose(exchange) -> UpstreamPool` that a policy kind provides (a weighted split).
        self.chooser = chooser
        self.chain = chain
        self.stats = stats
        self.local = local    # handler(exchange, body) for endpoints the gateway answers itself
        # Templates: more literal characters = more specific.
        self.specificity = len(_VAR.sub(b"", self.path))
        self.match_key = (self.path, self.prefix)

    def choose_pool(self, exchange):
        """The upstream pool this request goes to."""
        chooser = self.chooser
        return self.upstream if chooser is None else chooser.choose(exchange)

    def allows(self, method: bytes) -> bool:
        return not self.methods or method in self.methods

    def upstream_path(self, path: bytes, params: dict | None) -> bytes:
        """The path the upstream receives (before the query)."""
        if self.rewrite_regex is not None:
            m = self.rewrite_regex.search(path)
            if m is None:
                return path
            groups = m.groupdict()
            return _REF.sub(lambda r: (m.group(int(r.group(1))) if r.group(1).isdigit()
                                       else groups.get(r.group(1).decode())) or b"", self.rewrite)
        if self.rewrite:
            if params:
                return _VAR.sub(lambda m: params.get(m.group(1).decode(), b""), self.rewrite)
            return self.rewrite
        if self.strip_prefix:
            rest = path[len(self.prefix):]
            return rest if rest.startswith(b"/") else b"/" + rest
        return path


class _HostGroup:
    __slots__ = ("exact", "templates", "prefixes")

    def __init__(self):
        self.exact: dict[bytes, list[RouteTarget]] = {}
        self.templates: list[RouteTarget] = []
        self.prefixes: list[RouteTarget] = []

    def add(self, route: RouteTarget):
        if route.template is not None:
            self.templates.append(route)
        elif route.path:
            self.exact.setdefault(route.path, []).append(route)
        else:
            self.prefixes.append(route)

    def seal(self):
        # Stable sorts keep config order among equals.
        self.templates.sort(key=lambda r: -r.specificity)
        self.prefixes.sort(key=lambda r: -len(r.prefix))

    def candidates(self, path: bytes):
        """Routes whose path matches, most specific first, with template params."""
        exact = self.exact.get(path)
        if exact:
            for r in exact:
                yield r, None
        for r in self.templates:
            m = r.template.fullmatch(path)
            if m:
                yield r, {k: v for k, v in m.groupdict().items()}
        for r in self.prefixes:
            p = r.prefix
            if not p or path == p or (path.startswith(p) and path[len(p)] == 0x2F):
                yield r, None


class RouteTable:
    """`match(host, path, method)` -> (route, params) or (None, allowed methods)."""

    __slots__ = ("routes", "_exact_hosts", "_wildcards", "_any", "_has_hosts", "_cache")

    def __init__(self, routes: list[RouteTarget]):
        self.routes = routes
        self._exact_hosts: dict[str, _HostGroup] = {}
        self._wildcards: list[tuple[str, _HostGroup]] = []
        self._any = _HostGroup()
        wild: dict[str, _HostGroup] = {}
        for r in routes:
            if not r.host:
                group = self._any
            elif r.host.startswith("*."):
                group = wild.setdefault(r.host[1:], _HostGroup())
            else:
                group = self._exact_hosts.setdefault(r.host, _HostGroup())
            group.add(r)
        self._wildcards = sorted(wild.items(), key=lambda kv: -len(kv[0]))
        for g in [self._any, *self._exact_hosts.values(), *wild.values()]:
            g.seal()
        self._has_hosts = bool(self._exact_hosts or self._wildcards)
        self._cache: dict[tuple, tuple] = {}

    def lookup(self, host_header: bytes, path: bytes, method: bytes):
        """`match` on the raw Host header, memoised: real traffic repeats a
        small set of (host, path, method), and a dict hit is cheaper than
        parsing the host and walking the table."""
        key = (host_header, path, method) if self._has_hosts else (path, method)
        hit = self._cache.get(key)
        if hit is None:
            hit = self.match(host_of(host_header) if self._has_hosts else "", path, method)
            cache = self._cache
            if len(cache) >= _CACHE_SIZE:
                cache.clear()   # crude but bounded: an attacker's unique paths cannot grow it
            cache[key] = hit
        return hit

    def _groups(self, host: str):
        if self._has_hosts and host:
            group = self._exact_hosts.get(host)
            if group is not None:
                yield group
            for suffix, group in self._wildcards:
                if host.endswith(suffix):
                    yield group
        yield self._any

    def match(self, host: str, path: bytes, method: bytes):
        allowed: set[bytes] | None = None
        best = None
        for group in self._groups(host):
            for route, params in group.candidates(path):
                key = route.match_key
                if best is not None and key != best:
                    return None, allowed
                best = key
                if route.allows(method):
                    return route, params
                allowed = (allowed or set()) | route.methods
            if best is not None:
                break
        return None, allowed


def host_of(header: bytes) -> str:
    """Host header -> lower-case host without port (IPv6 brackets kept)."""
    h = header.decode("latin-1").strip().lower()
    if h.startswith("["):
        end = h.find("]")
        return h[:end + 1] if end > 0 else h
    colon = h.rfind(":")
    return h[:colon] if colon >= 0 else h


# Route keys that guard a route: a path that escapes them is a bypass.
_GUARDS = ("auth", "ip", "rate_limits", "request", "policies")


def trailing_slash_shadows(routes) -> list[tuple[int, str]]:
    """(index, message) for each exact `match.path` with guarding policies whose
    trailing-slash form (`/admin/`, also what `/admin/.` normalises to) another
    route serves without one of them: exact paths match exactly, as in nginx
    (`location =`) and Envoy (`path`), so that spelling skips those policies."""
    targets = [RouteTarget(r.name or f"route-{i}", i, host=r.match.host, methods=r.match.methods,
                           path=r.match.path, prefix=r.match.prefix) for i, r in enumerate(routes)]
    table = RouteTable(targets)
    found = []
    for i, r in enumerate(routes):
        guards = [g for g in _GUARDS if getattr(r, g)]
        path = r.match.path
        if not guards or not path or path.endswith("/") or _VAR.search(path.encode()):
            continue
        other = None
        for method in (r.match.methods or ("GET",)):
            other, _ = table.match(r.match.host.lower(), path.encode() + b"/", method.encode())
            if other is not None:
                break
        if other is None or other.index == i:
            continue
        missing = [g for g in guards if not getattr(routes[other.index], g)]
        if missing:
            found.append((i, f"{path}/ is served by route {other.name!r}, without this route's "
                             f"{', '.join(missing)}: add a route for {path}/ or match a prefix "
                             "(docs/contract.md, route choice)"))
    return found
