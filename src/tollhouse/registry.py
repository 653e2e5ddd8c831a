"""One registry of policy kinds: built-in and custom policies declare the same things.

A `PolicyKind` names a policy, its phase, the schema of its config and a
factory. Built-ins are registered by `tollhouse.policies` (each module
declares its kind beside its handler and schema) and are configured under
their own route key (`rate_limits:`, `cache:`, ...: the users' contract);
custom policies are registered from the top-level `policies:` and named in
a route's `policies:` list, optionally with per-route config. `build_state`
builds every route's chain by asking each kind in turn, so adding a
capability means registering a kind, not editing the core.

A kind may also declare a per-worker *service* (the rate limiter's store
connection and batching, the response cache): made once per worker, kept
across reloads, and handed to every factory in `Services`.
"""
from __future__ import annotations

from typing import Any, Callable


class PolicyKind:
    """What one kind of policy declares.

    - `name`: its registry name (a built-in's, or the key under top-level `policies`);
    - `phase`: where its request hook runs (pipeline.PHASES);
    - `key`: the route key it is configured under (built-ins), None for custom policies
      (named in the route's `policies` list);
    - `field`: the config schema `Field` of that route key (built-ins);
    - `build(config, context, services) -> Policy | None`: the route's policy, or None
      when the route does not use it (`config` is the route key's value);
    - `service(config, store, stats, worker) -> object`: optional per-worker service,
      kept across reloads (see `worker_services`);
    - `endpoints(services) -> [(route name, method, path, handler)]`: optional paths the gateway
      answers itself (the OAuth token endpoint); the global policies guard them;
    - `outcome`: the name of its policies' outcome (`Policy.outcome`), a field of
      every access log line (null where the route has no such policy);
    - `check(route, where, config, errors)`: optional rules between a route and the rest
      of the config (its upstream, its path parameters), called for every route;
    - `own_upstream`: False when a route with this key answers itself (aggregation) and
      so names no upstream of its own.
    """

    __slots__ = ("name", "phase", "key", "field", "build", "service", "endpoints", "outcome", "check",
                 "own_upstream")

    def __init__(self, name: str, *, phase: str, build: Callable, key: str | None = None, field: Any = None,
                 service: Callable | None = None, endpoints: Callable | None = None, outcome: str | None = None,
                 check: Callable | None = None, own_upstream: bool = True):
        self.name = name
        self.phase = phase
        self.key = key
        self.field = field
        self.build = build
        self.service = service
        self.endpoints = endpoints
        self.outcome = outcome
        self.check = check
        self.own_upstream = own_upstream


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


_BUILTINS: list[PolicyKind] = []


def register(kind: PolicyKind) -> PolicyKind:
    """Register a built-in kind (in route-key order: the config reference lists them so)."""
    if any(k.name == kind.name for k in _BUILTINS):
        raise ValueError(f"a policy kind named {kind.name!r} is registered already")
    _BUILTINS.append(kind)
    return kind


def builtins() -> tuple[PolicyKind, ...]:
    from .policies import builtin  # noqa: F401 - importing it registers the built-in kinds

    return tuple(_BUILTINS)


def outcome_names() -> tuple[str, ...]:
    """The outcomes the built-in kinds declare, in registry order (the access log's fields)."""
    return tuple(k.outcome for k in builtins() if k.outcome)


def custom_kind(name: str, cls: type, options) -> PolicyKind:
    """A custom policy class registered under its name from top-level `policies`."""
    def build(route_options, context, services):
        return cls(options if route_options is None else route_options, context)

    return PolicyKind(name, phase=cls.phase, build=build)


def worker_services(config, store, stats, worker, previous: dict | None = None) -> dict:
    """The per-worker services of every built-in kind that declares one. On a reload
    (`previous`), a service whose `reconfigure(config)` returns itself is kept; one that
    returns a replacement is closed once the new state is in force (the caller's job)."""
    made = {}
    for kind in builtins():
        if kind.service is None:
            continue
        old = (previous or {}).get(kind.name)
        made[kind.name] = old.reconfigure(config) if old is not None else kind.service(config, store, stats, worker)
    return made
