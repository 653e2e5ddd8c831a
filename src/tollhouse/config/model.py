"""The gateway's config schema (docs/contract.md §2), section by section.

This module holds the core: listeners, limits, upstreams and routes. The rest
comes from the registry (tollhouse.registry) as the top installed it: each
policy kind's route key and top-level sections, each upstream protocol's keys.
`gateway_schema()` assembles them, once per installation; it imports no policy,
no server module and no observability module.
"""
from __future__ import annotations

import re
from urllib.parse import urlsplit

from .loader import ConfigError
from .schema import (MISSING, Address, Bool, Duration, Field, Float, Int, Kind, ListOf, MapOf, Network, OneOf, Ratio,
                     Schema, Size, Str, error_at, is_map)
from ..registry import installed, protocol_named, protocol_of

NAME = r"[A-Za-z0-9_.-]+"
_TEMPLATE_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _is_str(v):
    return isinstance(v, (str, int)) and not isinstance(v, bool)


_is_map = is_map


def _is_list(v):
    return isinstance(v, list)


class Admin(Schema):
    listen = Field(Address(), ("127.0.0.1", 9901), "address of the admin listener")
    token = Field(Str(), "", "bearer token required by every admin path but /healthz, /readyz, /metrics; empty = none")


class Limits(Schema):
    max_header_bytes = Field(Size(min=256), 16 * 1024, "largest request head (431 beyond)")
    max_headers = Field(Int(min=1), 100, "most request header fields (431 beyond)")
    max_uri_bytes = Field(Size(min=16), 8 * 1024, "longest request target (414 beyond)")
    max_body_bytes = Field(Size(), 10 * 1024 * 1024, "largest request body (413 beyond); 0 = unlimited")
    header_timeout = Field(Duration(min=0.01), 10.0, "the whole request head must arrive within this (408 and close)")
    idle_timeout = Field(Duration(min=0.01), 60.0, "idle keep-alive client connections are closed after this")
    max_connections = Field(Int(min=1), 10000, "open client connections per worker; new ones beyond are closed at once")


class Target(Schema):
    url = Field(Str(), "", doc="scheme://host:port, the scheme one an upstream protocol speaks: http, https "
                               "(HTTP/1.1), grpc, grpcs (gRPC)")
    dns = Field(Str(pattern=r"[A-Za-z0-9_.-]+:\d+"), "", "instead of url, host:port: every address of its A/AAAA "
                "records is a target, looked up again on their TTL (docs/upstreams.md)")
    srv = Field(Str(pattern=r"_[A-Za-z0-9-]+\._(tcp|udp)\.[A-Za-z0-9_.-]+"), "", "instead of url, an SRV name: "
                "its records' hosts and ports are the targets (the lowest priority's, by weight)")
    scheme = Field(Str(choices=("http", "https")), "http", "dns/srv: the scheme of the targets found")
    weight = Field(Int(min=1, max=1000), 1, "share of requests relative to the other targets")
    region = Field(Str(pattern=r"[A-Za-z0-9_.-]*"), "", "where it runs (upstream `locality`; docs/regions.md)")
    zone = Field(Str(pattern=r"[A-Za-z0-9_.-]*"), "", "its zone within the region (reported only)")

    def check(self, path, lines, line, errors):
        if sum(map(bool, (self.url, self.dns, self.srv))) != 1:
            error_at(errors, path, "url", lines, line, "give exactly one of url, dns, srv")
            return
        if not self.url:
            return
        parts = urlsplit(self.url)
        schemes = [s for p in installed().protocols for s in p.schemes]
        if parts.scheme not in schemes or not parts.hostname:
            error_at(errors, path, "url", lines, line, f"expected scheme://host:port with a scheme of "
                                                       f"{', '.join(schemes)}, got {self.url!r}")
            return
        try:
            parts.port  # noqa: B018 - reading it checks the port
        except ValueError:
            error_at(errors, path, "url", lines, line, f"invalid port in {self.url!r}")
        if parts.path not in ("", "/") or parts.query:
            error_at(errors, path, "url", lines, line, "a target is scheme://host:port only; use the route's rewrite for paths")


def _target_from_str(kind):
    class FromStr(Kind):
        label = "URL"

        def validate(self, value, path, line, errors):
            return kind.validate({"url": value}, path, line, errors)

    return FromStr()


RETRY_CONDITIONS = r"connect_error|reset|timeout|[1-5][0-9][0-9]"


class RetrySettings(Schema):
    attempts = Field(Int(min=1, max=10), 2, "tries in all, the first included (2 = one retry)")
    on = Field(ListOf(Str(pattern=RETRY_CONDITIONS)), ("connect_error", "502", "503", "504"),
               "connect_error, reset (closed before answering), timeout, or a status code")
    budget = Field(Ratio(), 0.2, "retries in flight stay under this share of the upstream's active requests (at least 3)")
    per_try_timeout = Field(Duration(min=0.001), 0.0, "each try's limit inside the route's timeout; 0 = none")


class HealthCheckSettings(Schema):
    path = Field(Str(pattern=r"/[^\s]*"), "/healthz", "GET this path; 2xx and 3xx pass")
    interval = Field(Duration(min=0.05), 2.0, "time between checks of a target")
    timeout = Field(Duration(min=0.01), 1.0, "a check slower than this fails")
    healthy = Field(Int(min=1), 2, "passes in a row that bring a target back")
    unhealthy = Field(Int(min=1), 2, "failures in a row that take a target out")


class OutlierSettings(Schema):
    consecutive_failures = Field(Int(min=1), 5, "failures in a row (connect errors, resets, timeouts, 5xx) that eject")
    ejection = Field(Duration(min=0.01), 30.0, "first ejection; each further one of the target lasts this much longer")
    max_ejected = Field(Ratio(), 0.5, "never more than this share of the upstream's targets ejected")


class CircuitBreakerSettings(Schema):
    failure_ratio = Field(Float(min=0.01, max=1.0), 0.5, "share of failed requests over `window` that opens the circuit")
    min_requests = Field(Int(min=1), 20, "requests needed in `window` before the ratio counts")
    window = Field(Duration(min=1), 10.0, "how far back outcomes count")
    open_for = Field(Duration(min=0.01), 30.0, "how long the circuit stays open before probing")
    half_open_requests = Field(Int(min=1), 5, "probes let through half-open; all must succeed to close")


class Locality(Schema):
    local = Field(Str(pattern=r"[A-Za-z0-9_.-]+"), doc="this gateway's region: its targets take the traffic "
                                                       "while enough of them are healthy")
    failover = Field(ListOf(Str(pattern=r"[A-Za-z0-9_.-]+")), (), "the regions traffic spills to, in order")
    overprovisioning = Field(Float(min=1.0, max=10.0), 1.4, "a region takes all it is offered while its healthy "
                             "share x this is 100% or more (Envoy's overprovisioning factor)")
    zone = Field(Str(pattern=r"[A-Za-z0-9_.-]*"), "", "this gateway's zone in `local`: the local targets in it come "
                 "first, and the rest of the region takes what they cannot (the same spill, one level down)")


class AdaptiveSettings(Schema):
    initial_limit = Field(Int(min=1), 20, "requests in flight allowed before anything is learnt")
    min_limit = Field(Int(min=1), 3, "the limit never goes below this (and holds it while the minimum latency is "
                      "measured)")
    max_limit = Field(Int(min=1), 1000, "... nor above this")
    queue = Field(Int(min=0), 100, "requests that may wait for a slot; beyond, the lowest tier's are shed")
    queue_timeout = Field(Duration(min=0.0), 0.05, "longest wait for a slot, then 503 with Retry-After (shed)")
    window = Field(Duration(min=0.01), 0.1, "how often the limit is recomputed from the latencies seen")
    probe_interval = Field(Duration(min=0.1), 30.0, "how often the upstream's unqueued latency is measured again "
                           "(the limit pinned at min_limit for 20 requests)")
    tiers = Field(ListOf(Str()), (), "tiers by priority, highest first: shed last, served first from the queue "
                  "(others and anonymous callers: lowest)")

    def check(self, path, lines, line, errors):
        if self.min_limit > self.max_limit:
            error_at(errors, path, "min_limit", lines, line, "is above max_limit")


class _UpstreamCore(Schema):
    targets = Field(ListOf(OneOf((_is_str, _target_from_str(Target)), (_is_map, Target))),
                    doc="the instances: URLs or {url, weight}")
    balancer = Field(Str(choices=("round_robin", "least_connections", "two_random_choices", "consistent_hash")),
                     "round_robin", "round_robin (smooth weighted), least_connections, two_random_choices, consistent_hash")
    connect_timeout = Field(Duration(min=0.001), 1.0, "TCP (and TLS) connect timeout; 502 beyond")
    read_timeout = Field(Duration(min=0.001), 30.0, "longest wait for the next bytes from the upstream; 504 before the head")
    max_connections = Field(Int(min=1), 256, "open connections per target; more requests wait up to connect_timeout, then 503")
    idle_timeout = Field(Duration(min=0.1), 60.0, "pooled idle upstream connections are closed after this")
    tls_verify = Field(Bool(), True, "verify https targets' certificates")
    ca_file = Field(Str(), "", "CA bundle for https targets (default: the system's)")
    hash_key = Field(Str(pattern=r"ip|consumer|path|header:[A-Za-z0-9_-]+|cookie:[A-Za-z0-9_.-]+"), "ip",
                     "consistent_hash only: ip, consumer (ip when anonymous), path, header:NAME, cookie:NAME")
    retries = Field(RetrySettings, None, "retry failed attempts on another target; see docs/upstreams.md")
    health_check = Field(HealthCheckSettings, None, "active checks: one per target per interval for the whole gateway")
    outlier = Field(OutlierSettings, None, "eject targets after consecutive failures (per gateway process)")
    circuit_breaker = Field(CircuitBreakerSettings, None, "open the circuit to a failing upstream (per gateway process)")
    locality = Field(Locality, None, "{local, failover, overprovisioning}: prefer the local region's targets, "
                     "spill to the next regions as they fail; see docs/regions.md")
    concurrency = Field(Str(choices=("", "adaptive")), "", "adaptive: learn how many requests in flight the "
                        "upstream serves without queueing, and shed beyond (docs/upstreams.md)")
    adaptive = Field(AdaptiveSettings, AdaptiveSettings(), "{initial_limit, min_limit, max_limit, queue, queue_timeout, "
                     "window, tiers}: with concurrency: adaptive")
    dns_refresh = Field(Duration(min=1.0), 30.0, "dns/srv targets: looked up again on the records' TTL, at least "
                        "this often")
    dns_resolver = Field(Str(pattern=r"[0-9a-fA-F.:\[\]]+:\d+"), "", "dns/srv targets: the DNS server as ip:port "
                         "(default: the system's, /etc/resolv.conf)")

    def __init__(self, **values):
        super().__init__(**values)
        if not self.protocol:
            # Unnamed: the protocol its targets' scheme says (http:// and https:// are HTTP/1.1).
            first = self.targets[0] if self.targets else None
            spoken = protocol_of(first.url or f"{first.scheme}://dns") if first is not None else None
            object.__setattr__(self, "protocol", spoken.name if spoken is not None else "")

    def check(self, path, lines, line, errors):
        if not self.targets:
            error_at(errors, path, "targets", lines, line, "needs at least one target")
            return
        if self.locality is not None:
            regions = {t.region for t in self.targets}
            if self.locality.local not in regions:
                error_at(errors, f"{path}.locality", "local", lines, line,
                         f"no target is in region {self.locality.local!r} (set each target's region)")
            elif self.locality.zone and not any(t.region == self.locality.local and t.zone == self.locality.zone
                                                for t in self.targets):
                error_at(errors, f"{path}.locality", "zone", lines, line,
                         f"no target of region {self.locality.local!r} is in zone {self.locality.zone!r} "
                         "(set each target's zone)")
            for i, region in enumerate(self.locality.failover):
                if region not in regions:
                    error_at(errors, f"{path}.locality.failover", str(i), lines, line,
                             f"no target is in region {region!r}")
        spoken = {p.name for p in map(protocol_of, (t.url for t in self.targets)) if p is not None}
        named = protocol_named(self.protocol)
        if named is not None and not named.schemes:
            spoken = {self.protocol}   # a protocol spoken only by name (h2c, http2): its check says which schemes
        elif named is not None and spoken and spoken != {self.protocol}:
            error_at(errors, path, "protocol", lines, line, f"{self.protocol} targets are "
                     f"{' or '.join(s + '://' for s in named.schemes)} URLs")
            return
        if len(spoken) > 1:
            error_at(errors, path, "targets", lines, line,
                     f"targets of {' and '.join(sorted(spoken))} cannot share an upstream")
        for protocol in installed().protocols:
            if protocol.check is not None:
                protocol.check(self, protocol.name in spoken, path, lines, line, errors)


class Match(Schema):
    host = Field(Str(), "", "exact host, or *.example.com; empty = any host")
    path = Field(Str(pattern=r"/[^?#\s]*"), "", "exact path; {name} matches one segment")
    prefix = Field(Str(pattern=r"/[^?#\s{}]*"), "", "path prefix, matched on segment boundaries")
    methods = Field(ListOf(Str(pattern=r"[A-Z]+")), (), "allowed methods; empty = all")

    def check(self, path, lines, line, errors):
        if self.path and self.prefix:
            error_at(errors, path, "prefix", lines, line, "use either path or prefix, not both")


class RegexRewrite(Schema):
    regex = Field(Str(), doc="a regular expression searched in the normalised path; (?P<name>...) or numbered groups")
    to = Field(Str(pattern=r"/[^\s]*"), doc="the upstream path; {name} or {1} insert the captures")

    def check(self, path, lines, line, errors):
        try:
            compiled = re.compile(self.regex)
        except re.error as e:
            error_at(errors, path, "regex", lines, line, f"invalid regular expression: {e}")
            return
        for ref in _TEMPLATE_REF.findall(self.to):
            if ref.isdigit() and int(ref) > compiled.groups or not ref.isdigit() and ref not in compiled.groupindex:
                error_at(errors, path, "to", lines, line, f"{{{ref}}} is not a group of the regex")


_TEMPLATE_REF = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*|[0-9]+)\}")


class _NamedOptions(Kind):
    """`{name: {options}}` in a route's `policies`: a custom policy with this route's own config."""

    label = "{name: config}"

    def validate(self, value, path, line, errors):
        if len(value) != 1:
            errors.append(ConfigError(path, line, "expected one policy name with its config, e.g. {audit: {tag: x}}"))
            return MISSING
        (name, options), = value.items()
        if not isinstance(name, str) or not re.fullmatch(NAME, name):
            errors.append(ConfigError(path, line, f"invalid policy name {name!r}"))
            return MISSING
        if not isinstance(options, dict):
            errors.append(ConfigError(f"{path}.{name}", line, f"expected a mapping of options, got {options!r}"))
            return MISSING
        return (name, options)   # validated by the class's Config once it is imported (state.policy_classes)


def policy_name(entry) -> str:
    """The name of an entry of a route's `policies` (a name, or (name, options))."""
    return entry if isinstance(entry, str) else entry[0]


class _RouteCore(Schema):
    name = Field(Str(pattern=NAME), "", "name used in metrics, logs and /status (default route-N)")
    match = Field(Match, doc="what requests this route takes")
    upstream = Field(Str(), "", "name of an upstream in `upstreams`")
    strip_prefix = Field(Bool(), False, "remove the matched prefix before proxying (/api/users/7 -> /7)")
    rewrite = Field(OneOf((_is_str, Str(pattern=r"/[^\s]*")), (_is_map, RegexRewrite)), "",
                    "templated upstream path, e.g. /v2/users/{id}, or {regex, to} with captures, "
                    "e.g. {regex: '^/old/(.*)$', to: '/new/{1}'}")
    timeout = Field(Duration(min=0.001), 60.0, "longest wait for the upstream's response head; 504 beyond")
    preserve_host = Field(Bool(), False, "send the client's Host upstream instead of the target's host")
    policies = Field(ListOf(OneOf((_is_str, Str(pattern=NAME)), (_is_map, _NamedOptions()))), (),
                     "custom policies (names from top-level `policies`), in order; {name: {options}} gives one "
                     "this route's own config")

    def check(self, path, lines, line, errors):
        if self.rewrite and self.strip_prefix:
            error_at(errors, path, "rewrite", lines, line, "use either rewrite or strip_prefix, not both")
        if self.strip_prefix and not self.match.prefix:
            error_at(errors, path, "strip_prefix", lines, line, "needs match.prefix")
        if isinstance(self.rewrite, str) and self.rewrite:
            known = set(_TEMPLATE_VAR.findall(self.match.path))
            for var in _TEMPLATE_VAR.findall(self.rewrite):
                if var not in known:
                    error_at(errors, path, "rewrite", lines, line, f"{{{var}}} is not a variable of match.path")




class CustomPolicy(Schema):
    use = Field(Str(pattern=r"[A-Za-z_][\w.]*:[A-Za-z_]\w*"), doc="module:Class")
    # Kept as parsed (with its lines): the policy class's own Config validates it.
    config = Field(OneOf((_is_map, Kind())), {}, "options handed to the class's Config schema")


def _policy_from_str():
    class FromStr(Kind):
        label = "module:Class"

        def validate(self, value, path, line, errors):
            return CustomPolicy.validate({"use": value}, path, line, errors)

    return FromStr()


class _GatewayCore(Schema):
    listen = Field(ListOf(Address(), single=True), (("0.0.0.0", 8080),), "address or list of addresses")
    workers = Field(Int(min=1, max=256), 1, "processes sharing the port (SO_REUSEPORT)")
    admin = Field(Admin, Admin(), "the admin listener")
    store = Field(Str(pattern=r"memory|(redis|rediss|redis\+cluster)://.+"), "memory",
                  "memory, redis://host:6379/0, rediss://..., redis+cluster://h1:7000,h2:7001")
    store_failure = Field(Str(choices=("open", "closed", "local")), "open",
                          "rate limiting when the store is down: open | closed | local")
    trusted_proxies = Field(ListOf(Network()), (), "peers allowed to set X-Forwarded-For/-Proto/-Host")
    shutdown_grace = Field(Duration(), 10.0, "in-flight requests get this long to finish on SIGTERM")
    access_log = Field(Bool(), True, "one JSON line per request on stdout")
    busy_polling = Field(Bool(), False, "workers never sleep waiting for I/O: ~0.1 ms less latency per request "
                         "on VMs, a whole core busy per worker even when idle; see docs/operations.md")
    limits = Field(Limits, Limits(), "request limits")
    policies = Field(MapOf(OneOf((_is_str, _policy_from_str()), (_is_map, CustomPolicy)), key_pattern=NAME), {},
                     "custom Python policies: name -> module:Class or {use, config}")
    upstreams = Field(MapOf(_UpstreamCore, key_pattern=NAME), {}, "named upstream services")
    routes = Field(ListOf(_RouteCore), (), "routes, chosen by host then the most specific path")

    def check(self, path, lines, line, errors):
        seen = set()
        kinds = installed().kinds
        for i, route in enumerate(self.routes):
            name = route.name or f"route-{i}"
            where = f"routes[{i}]"
            if name in seen:
                errors.append(_err(where + ".name", None, f"duplicate route name {name!r}"))
            seen.add(name)
            # A route whose policy answers it (aggregation) has no upstream of its own.
            if all(k.own_upstream or getattr(route, k.key) is None for k in kinds):
                if not route.upstream:
                    errors.append(_err(where + ".upstream", None, "is required"))
                elif route.upstream not in self.upstreams:
                    errors.append(_err(where + ".upstream", None, f"no upstream named {route.upstream!r} in upstreams"))
            for kind in kinds:
                if kind.check is not None:
                    kind.check(route, where, self, errors)
            for j, entry in enumerate(route.policies):
                pname = policy_name(entry)
                if pname not in self.policies:
                    errors.append(_err(f"{where}.policies[{j}]", None, f"no policy named {pname!r} in policies"))
        for section in installed().sections:
            if section.check is not None:
                section.check(self, errors)


_ASSEMBLED: dict = {}


def gateway_schema() -> type[Schema]:
    """The gateway's schema: the core's keys, then each installed section's; a route takes
    each policy kind's route key, an upstream each protocol's keys. Made once per installation."""
    parts = installed()
    schema = _ASSEMBLED.get(id(parts))
    if schema is None:
        names = tuple(p.name for p in parts.protocols)
        upstream = type(_UpstreamCore)("Upstream", (_UpstreamCore,), {
            "protocol": Field(Str(choices=("",) + names), "", f"how the gateway talks to the targets: {' | '.join(names)} "
                              "(default: the targets' scheme's; docs/http2.md)"),
            **{k: f for p in parts.protocols for k, f in p.fields.items()}})
        route = type(_RouteCore)("Route", (_RouteCore,), {k.key: k.field for k in parts.kinds})
        fields = {"upstreams": Field(MapOf(upstream, key_pattern=NAME), {}, "named upstream services"),
                  "routes": Field(ListOf(route), (), "routes, chosen by host then the most specific path")}
        fields.update((s.key, s.field) for s in parts.sections)
        _ASSEMBLED.clear()   # one installation at a time
        schema = _ASSEMBLED[id(parts)] = type(_GatewayCore)("Gateway", (_GatewayCore,), fields)
    return schema


def _err(path, line, message):
    # The line is filled in by tollhouse.config.load from the document.
    return ConfigError(path, line, message)
