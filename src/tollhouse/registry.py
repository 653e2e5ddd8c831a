"""One registry of what the gateway is made of: policy kinds, top-level config
sections and upstream protocols. Built-in and custom policies declare the same things.

A `PolicyKind` names a policy, its phase, the schema of its config and a
factory. Built-ins are configured under their own route key (`rate_limits:`,
`cache:`, ...: the users' contract); custom policies are registered from the
top-level `policies:` and named in a route's `policies:` list, optionally
with per-route config. `build_state` builds every route's chain by asking
each kind in turn, so adding a capability means registering a kind, not
editing the core.

A kind may also declare a per-worker *service* (the rate limiter's store
connection and batching, the response cache): made once per worker, kept
across reloads, and handed to every factory in `Services`; and top-level
config `Section`s (auth's `auth:` and `consumers:`), which the gateway's
schema takes from here as a route's schema takes the kinds' route keys.
An `UpstreamProtocol` says which target URLs an upstream speaks and what
keys and checks it adds to the upstream's schema (gRPC's `descriptors`).

The registry imports nothing of what it holds: the top (the command line,
a test's set-up) hands it the built-ins with `install(...)`
(tollhouse.builtins), so nothing here forms an import circle.
"""
from __future__ import annotations

from typing import Any, Callable


class NotedHeader:
    """A request header a kind reads: the parser notes its value as it parses (no scan of
    the header lines), at `index` of the exchange's `noted` values. `relayed`: False
    when only the gateway may see it (the debug token); `singleton`: a second copy is
    refused with 400 before routing (a service reading the other copy would see another
    value than the gateway checked)."""

    __slots__ = ("name", "relayed", "singleton", "index")

    def __init__(self, name: str, relayed: bool = True, singleton: bool = False):
        self.name = name.lower()
        self.relayed = relayed
        self.singleton = singleton
        self.index = -1   # given by `install`


class Section:
    """A top-level config key: its schema `field`, `check(config, errors)` for rules
    between it and the rest of the config (optional; errors are `ConfigError`s), and the
    request `headers` (NotedHeader) the feature it configures reads."""

    __slots__ = ("key", "field", "check", "headers")

    def __init__(self, key: str, field: Any, check: Callable | None = None, headers: tuple = ()):
        self.key = key
        self.field = field
        self.check = check
        self.headers = tuple(headers)


class UpstreamProtocol:
    """How an upstream's targets are spoken to: the URL `schemes` of its targets, the keys
    it adds to an upstream's schema (`fields`: name -> Field), `check(upstream, used,
    path, lines, line, errors)` for every upstream (`used`: its targets speak this
    protocol; optional), the `codec` its pools frame requests with
    (exchange.codec.UpstreamCodec; None for a protocol whose policy has its own client),
    and `target_pool(url, weight, settings, loop, codec)`, the pool of one target's
    connections (None: upstream.pool.TargetPool, one request per connection). A protocol
    with no `schemes` is spoken only where an upstream names it (`protocol:`)."""

    __slots__ = ("name", "schemes", "fields", "check", "codec", "target_pool")

    def __init__(self, name: str, schemes: tuple, fields: dict | None = None, check: Callable | None = None,
                 codec: Any = None, target_pool: Callable | None = None):
        self.name = name
        self.schemes = tuple(schemes)
        self.fields = dict(fields or {})
        self.check = check
        self.codec = codec
        self.target_pool = target_pool

    def speaks(self, url: str) -> bool:
        return url.split("://", 1)[0] in self.schemes


class PolicyKind:
    """What one kind of policy declares.

    - `name`: its registry name (a built-in's, or the key under top-level `policies`);
    - `phase`: where its request hook runs (one of `phases()`);
    - `key`: the route key it is configured under (built-ins), None for custom policies
      (named in the route's `policies` list);
    - `field`: the config schema `Field` of that route key (built-ins);
    - `build(config, context, services) -> Policy | None`: the route's policy, or None
      when the route does not use it (`config` is the route key's value);
    - `service(config, store, stats, worker) -> object`: optional per-worker service,
      kept across reloads (see `worker_services`);
    - `endpoints(services) -> [(route name, method, path, handler)]`: optional paths the gateway
      answers itself (the OAuth token endpoint); the global policies guard them;
    - `log_fields`: more access log fields its policies fill per request
      (`Policy.log_values`), null where a route has none of them;
    - `outcome`: the name of its policies' outcome (`Policy.outcome`), a field of
      every access log line (null where the route has no such policy);
    - `check(route, where, config, errors)`: optional rules between a route and the rest
      of the config (its upstream, its path parameters), called for every route;
    - `own_upstream`: False when a route with this key answers itself (aggregation) and
      so names no upstream of its own;
    - `sections`: the top-level config `Section`s it declares (auth's `auth:`, `consumers:`);
    - `headers`: the request headers its policies read (`NotedHeader`s: auth's Authorization);
    - `new_phase`: (name, after) when its `phase` is one it adds to the order, after `after`;
    - `chooser(route config, context, services, pools) -> chooser | None`: optional; how the
      route's upstream is chosen when its key is set (the route's `upstream` otherwise);
    - `admin`: ((methods, path pattern), ...) the admin listener hands to the kind's
      per-worker service: `service.admin(method, path, body, request) -> (status, JSON-able)`,
      or an awaitable of it (the split's live weights). `request` holds the query, a
      `nonce` and `now` drawn once by the admin listener, and `writer`: False on the
      workers that leave a shared store's change to the one that makes it.
    - `request_values`: {name: (use, doc)} values its policies put in `exchange.vars` for
      others to read: use "key" for a value rate limits may count by (`key: NAME`), "cost"
      for a number they may weigh requests by (`cost: NAME`); GraphQL's operation and cost.
    """

    __slots__ = ("name", "phase", "key", "field", "build", "service", "endpoints", "outcome", "check",
                 "own_upstream", "sections", "headers", "new_phase", "chooser", "admin", "log_fields",
                 "request_values")

    def __init__(self, name: str, *, phase: str, build: Callable, key: str | None = None, field: Any = None,
                 service: Callable | None = None, endpoints: Callable | None = None, outcome: str | None = None,
                 check: Callable | None = None, own_upstream: bool = True, sections: tuple = (),
                 headers: tuple = (), new_phase: tuple | None = None, chooser: Callable | None = None,
                 admin: tuple = (), log_fields: tuple = (), request_values: dict | None = None):
        self.name = name
        self.request_values = dict(request_values or {})
        self.log_fields = tuple(log_fields)
        self.phase = phase
        self.key = key
        self.field = field
        self.build = build
        self.service = service
        self.endpoints = endpoints
        self.outcome = outcome
        self.check = check
        self.own_upstream = own_upstream
        self.sections = tuple(sections)
        self.headers = tuple(headers)
        self.new_phase = new_phase
        self.chooser = chooser
        self.admin = tuple(admin)


class Services:
    """What a policy factory may use beyond its route's config: shared by all routes of
    a config version. `workers` holds the per-worker services by kind name."""

    __slots__ = ("config", "store", "stats", "workers", "shared")

    def __init__(self, config, store, stats, workers: dict):
        self.config = config
        self.store = store
        self.stats = stats
        self.workers = workers
        self.shared: dict[str, Any] = {}   # per config version, made by the first factory that needs it

    def worker(self, name: str):
        """The per-worker service of kind `name`, or None."""
        return self.workers.get(name)

    def once(self, name: str, make: Callable[[], Any]):
        """An object shared by every route of this config version, made on first use."""
        if name not in self.shared:
            self.shared[name] = make()
        return self.shared[name]

    def close(self) -> None:
        """The config version is retired: close what it made (not the worker services)."""
        for value in self.shared.values():
            close = getattr(value, "close", None)
            if close is not None:
                close()


class Installed:
    """What `install` was handed: the policy kinds in route-key order (the config
    reference lists them so), the top-level sections (the kinds' own, then the others),
    the upstream protocols, the phase order, and the noted request headers (by name)."""

    __slots__ = ("kinds", "sections", "protocols", "phases", "headers")

    def __init__(self, kinds: tuple, sections: tuple, protocols: tuple, phases: tuple, headers: dict):
        self.kinds = kinds
        self.sections = sections
        self.protocols = protocols
        self.phases = phases
        self.headers = headers


_installed: Installed | None = None


def install(kinds, sections=(), protocols=(), phases=()) -> Installed:
    """Hand the registry what the gateway is made of (the top calls this once, before any
    config is loaded). `sections` are top-level sections declared outside a policy kind
    (the listener's TLS, tracing); `phases` the order of request hooks, which a kind's
    `new_phase` extends. Installing the same things again changes nothing."""
    global _installed
    kinds = tuple(kinds)
    order = list(phases)
    for kind in kinds:
        if kind.new_phase is not None:
            name, after = kind.new_phase
            if name not in order:
                if after not in order:
                    raise ValueError(f"kind {kind.name!r} adds phase {name!r} after {after!r}, which is no phase")
                order.insert(order.index(after) + 1, name)
    for kind in kinds:
        if kind.phase not in order:
            raise ValueError(f"kind {kind.name!r} runs in phase {kind.phase!r}, which is no phase")
    names = [k.name for k in kinds]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"a policy kind named {name!r} is registered twice")
    all_sections = tuple(s for k in kinds for s in k.sections) + tuple(sections)
    keys = [s.key for s in all_sections]
    for key in keys:
        if keys.count(key) > 1:
            raise ValueError(f"two sections declare the top-level key {key!r}")
    headers: dict[str, NotedHeader] = {}
    for declared in [h for k in kinds for h in k.headers] + [h for s in all_sections for h in s.headers]:
        known = headers.get(declared.name)
        if known is None:
            headers[declared.name] = known = NotedHeader(declared.name, declared.relayed, declared.singleton)
            known.index = len(headers) - 1
        else:   # declared twice: hidden if either hides it, a singleton if either says so
            known.relayed = known.relayed and declared.relayed
            known.singleton = known.singleton or declared.singleton
    _installed = Installed(kinds, all_sections, tuple(protocols), tuple(order), headers)
    return _installed


def installed() -> Installed:
    if _installed is None:
        raise RuntimeError("no policy kinds are installed: call tollhouse.builtins.install() first")
    return _installed


def protocol_of(url: str) -> UpstreamProtocol | None:
    """The installed protocol that speaks `url`, or None."""
    for protocol in installed().protocols:
        if protocol.speaks(url):
            return protocol
    return None


def protocol_named(name: str) -> UpstreamProtocol | None:
    """The installed protocol called `name`, or None."""
    for protocol in installed().protocols:
        if protocol.name == name:
            return protocol
    return None


def noted_index(name: str) -> int:
    """Where an exchange keeps the value of request header `name` (declared by an installed
    kind or section): `exchange.noted_value(index)`."""
    return installed().headers[name.lower()].index


def phases() -> tuple[str, ...]:
    """The order request hooks run in (pipeline.Chain sorts a route's policies by it)."""
    return installed().phases


def policy_kinds() -> tuple[PolicyKind, ...]:
    """The installed policy kinds, in route-key order."""
    return installed().kinds


def outcome_names() -> tuple[str, ...]:
    """The outcomes the installed kinds declare, in registry order (the access log's fields)."""
    return tuple(k.outcome for k in policy_kinds() if k.outcome)


def log_field_names() -> tuple[str, ...]:
    """The access log fields the installed kinds declare beyond their outcomes (`log_fields`)."""
    return tuple(f for k in policy_kinds() for f in k.log_fields)


def request_values(use: str) -> dict[str, str]:
    """The exchange values the installed kinds declare for `use` ("key" or "cost"): name -> doc."""
    if _installed is None:
        return {}
    return {name: doc for k in policy_kinds() for name, (u, doc) in k.request_values.items() if u == use}


def custom_kind(name: str, cls: type, options) -> PolicyKind:
    """A custom policy class registered under its name from top-level `policies`."""
    def build(route_options, context, services):
        return cls(options if route_options is None else route_options, context)

    return PolicyKind(name, phase=cls.phase, build=build)


def worker_services(config, store, stats, worker, previous: dict | None = None) -> dict:
    """The per-worker services of every installed kind that declares one. On a reload
    (`previous`), a service whose `reconfigure(config)` returns itself is kept; one that
    returns a replacement is closed once the new state is in force (the caller's job)."""
    made = {}
    for kind in policy_kinds():
        if kind.service is None:
            continue
        old = (previous or {}).get(kind.name)
        made[kind.name] = old.reconfigure(config) if old is not None else kind.service(config, store, stats, worker)
    return made
