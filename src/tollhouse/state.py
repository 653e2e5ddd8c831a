"""Everything a config version means at run time, built aside and swapped whole.

`build_state(config, previous)` compiles the route table, builds each route's
policy chain by asking every registered policy kind (tollhouse.registry) and
the custom policies the route names, and the upstream pools. Pools whose
settings did not change are carried over from the previous version with
their warm connections.
"""
from __future__ import annotations

import ipaddress
from functools import lru_cache

from .config.loader import ConfigError
from .config.model import policy_name
from .pipeline import EMPTY_CHAIN, Chain, PolicyContext, load_policy_class
from .registry import Services, custom_kind, policy_kinds, protocol_named
from .routing import RouteTable, RouteTarget
from .upstream.pool import UpstreamPool


class GatewayState:
    """One immutable config version's runtime objects."""

    def __init__(self, config, table: RouteTable, pools: dict[str, UpstreamPool], version: int, services: Services):
        self.config = config
        self.limits = config.limits
        self.table = table
        self.pools = pools
        self.version = version
        self.services = services
        self.subrequest_routes: dict = {}   # (upstream, timeout, host kept) -> RouteTarget (tollhouse.exchange.subrequest)
        networks = tuple(config.trusted_proxies)

        @lru_cache(maxsize=4096)
        def is_trusted(ip: str) -> bool:
            if not networks:
                return False
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                return False
            return any(addr in n for n in networks)

        self.is_trusted = is_trusted


def policy_classes(config) -> tuple[dict, list[ConfigError]]:
    """Import custom policies and validate their options (top-level and per route);
    errors name the key. Returns ({name: (class, options)} plus {(route, j): options}
    under the key "routes", errors)."""
    from .config.schema import MISSING

    out, errors = {}, []
    for name, spec in config.policies.items():
        path = f"policies.{name}"
        try:
            cls = load_policy_class(spec.use)
        except ValueError as e:
            errors.append(ConfigError(path, None, str(e)))
            continue
        options = dict(spec.config)
        if cls.Config is not None:
            options = cls.Config.validate(spec.config, f"{path}.config", None, errors)
            if options is MISSING:
                continue
        out[name] = (cls, options)
    per_route = {}
    for i, route in enumerate(config.routes):
        for j, entry in enumerate(route.policies):
            if isinstance(entry, str) or entry[0] not in out:
                continue
            name, raw = entry
            cls = out[name][0]
            options = raw
            if cls.Config is not None:
                options = cls.Config.validate(raw, f"routes[{i}].policies[{j}].{name}", None, errors)
                if options is MISSING:
                    continue
            per_route[(i, j)] = options
    return {**out, "routes": per_route}, errors


def build_state(config, loop, stats, store, previous: GatewayState | None = None, version: int = 1,
                workers: dict | None = None) -> GatewayState:
    """`workers`: the per-worker services (registry.worker_services); a kind whose
    service is missing makes what it needs per config version, or refuses."""
    classes, errors = policy_classes(config)
    if errors:
        raise ValueError("; ".join(map(str, errors)))
    per_route = classes.pop("routes")
    custom = {name: custom_kind(name, cls, options) for name, (cls, options) in classes.items()}
    old_pools = previous.pools if previous is not None else {}
    pools = {}
    for name, settings in config.upstreams.items():
        old = old_pools.get(name)
        if old is not None and old.signature == repr(settings):
            pools[name] = old
        else:
            protocol = protocol_named(settings.protocol)
            pools[name] = UpstreamPool(name, settings, loop, protocol.codec if protocol is not None else None,
                                       protocol.target_pool if protocol is not None else None)
    services = Services(config, store, stats, workers or {})
    kinds = policy_kinds()
    routes = []
    for i, r in enumerate(config.routes):
        name = r.name or f"route-{i}"
        context = PolicyContext(store, stats, name, r)
        policies = [kind.build(getattr(r, kind.key), context, services) for kind in kinds]
        for j, entry in enumerate(r.policies):
            policies.append(custom[policy_name(entry)].build(per_route.get((i, j)), context, services))
        policies = [p for p in policies if p is not None]
        # A terminal policy (aggregation) answers the route in place of an upstream.
        terminal = next((p for p in policies if p.terminal), None)
        # A kind may choose each request's upstream (a weighted split); else it is always `upstream`.
        chooser = next((kind.chooser(getattr(r, kind.key), context, services, pools) for kind in kinds
                        if kind.chooser is not None and getattr(r, kind.key) is not None), None)
        routes.append(RouteTarget(
            name, i, host=r.match.host, methods=r.match.methods or (terminal.default_methods if terminal else ()),
            path=r.match.path, prefix=r.match.prefix,
            strip_prefix=r.strip_prefix, rewrite=r.rewrite, timeout=r.timeout, preserve_host=r.preserve_host,
            upstream=pools[r.upstream] if r.upstream else None, chain=Chain(policies) if policies else EMPTY_CHAIN,
            stats=stats.route(name, r.upstream or None), local=terminal.respond if terminal else None,
            chooser=chooser))
    for kind in kinds:
        if kind.endpoints is None:
            continue
        for name, method, path, handler in kind.endpoints(services):
            # The gateway's own endpoints: only the policies that need no route config (the global ip rules).
            context = PolicyContext(store, stats, name)
            policies = [p for p in (k.build(None, context, services) for k in kinds) if p is not None]
            routes.append(RouteTarget(name, len(routes), methods=(method,), path=path,
                                      chain=Chain(policies) if policies else EMPTY_CHAIN,
                                      stats=stats.route(name, None), local=handler))
    for route in routes:
        # A route that takes any method is declared for GET: series need some method label.
        route.stats.declare(sorted(route.methods) or (b"GET",))
    return GatewayState(config, RouteTable(routes), pools, version, services)


def retire(previous: GatewayState, current: GatewayState) -> None:
    """Close pools the new version no longer uses (their in-flight exchanges finish first),
    and what the old version's policies made for it (JWKS refreshers...)."""
    previous.services.close()
    kept = {id(p) for p in current.pools.values()}
    for pool in previous.pools.values():
        if id(pool) not in kept:
            pool.close()
