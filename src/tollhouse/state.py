"""Everything a config version means at run time, built aside and swapped whole.

`build_state(config, previous)` compiles the route table, builds each route's
policy chain and the upstream pools. Pools whose settings did not change
are carried over from the previous version with their warm connections.
"""
from __future__ import annotations

import ipaddress
from functools import lru_cache

from .config.loader import ConfigError
from .pipeline import EMPTY_CHAIN, Chain, PolicyContext, load_policy_class
from .policies.auth import AuthPolicy, AuthService
from .policies.cache import CachePolicy
from .policies.compress import CompressPolicy
from .policies.cors import CorsPolicy
from .policies.headers import HeadersPolicy
from .policies.ip import IpFilter, IpPolicy
from .policies.request import RequestPolicy
from .policies.ratelimit import RateLimitPolicy, make_limiter
from .routing import RouteTable, RouteTarget
from .upstream.pool import UpstreamPool


class GatewayState:
    """One immutable config version's runtime objects."""

    def __init__(self, config, table: RouteTable, pools: dict[str, UpstreamPool], version: int, auth=None):
        self.config = config
        self.limits = config.limits
        self.table = table
        self.pools = pools
        self.version = version
        self.auth = auth
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


def policy_classes(config) -> tuple[dict[str, tuple[type, object]], list[ConfigError]]:
    """Import custom policies and validate their options; errors name the key."""
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
            from .config.schema import MISSING

            options = cls.Config.validate(spec.config, f"{path}.config", None, errors)
            if options is MISSING:
                continue
        out[name] = (cls, options)
    return out, errors


def build_state(config, loop, stats, store, previous: GatewayState | None = None, version: int = 1,
                limiter=None, cache=None) -> GatewayState:
    classes, errors = policy_classes(config)
    if errors:
        raise ValueError("; ".join(map(str, errors)))
    old_pools = previous.pools if previous is not None else {}
    pools = {}
    for name, settings in config.upstreams.items():
        old = old_pools.get(name)
        if old is not None and old.signature == repr(settings):
            pools[name] = old
        else:
            pools[name] = UpstreamPool(name, settings, loop)
    auth = None
    if config.auth is not None or config.consumers:
        auth = AuthService(config.auth, config.consumers, store)
    global_ip = IpFilter(config.ip) if config.ip is not None else None
    routes = []
    for i, r in enumerate(config.routes):
        name = r.name or f"route-{i}"
        context = PolicyContext(store, stats, name)
        policies = []
        ip_filters = [f for f in (global_ip, IpFilter(r.ip) if r.ip is not None else None) if f is not None]
        if ip_filters:
            policies.append(IpPolicy(r.ip, context, filters=ip_filters))
        if r.cors is not None:
            policies.append(CorsPolicy(r.cors, context))
        if r.request is not None:
            policies.append(RequestPolicy(r.request, context))
        if r.headers is not None:
            policies.append(HeadersPolicy(r.headers, context))
        if r.compress is not None:
            policies.append(CompressPolicy(r.compress, context))
        if r.auth is not None:
            policies.append(AuthPolicy(r.auth, context, service=auth, route_name=name))
        if r.rate_limits:
            if limiter is None:
                limiter = make_limiter(store, stats, config.store_failure)
            policies.append(RateLimitPolicy(r.rate_limits, context, tiers=config.tiers,
                                            limiter=limiter, route_name=name))
        if r.cache is not None:
            if cache is None:
                raise ValueError(f"routes[{i}].cache: this process has no response cache")
            policies.append(CachePolicy(r.cache, context, cache=cache))
        for pname in r.policies:
            cls, options = classes[pname]
            policies.append(cls(options, context))
        routes.append(RouteTarget(
            name, i, host=r.match.host, methods=r.match.methods, path=r.match.path, prefix=r.match.prefix,
            strip_prefix=r.strip_prefix, rewrite=r.rewrite, timeout=r.timeout, preserve_host=r.preserve_host,
            upstream=pools[r.upstream], chain=Chain(policies) if policies else EMPTY_CHAIN,
            stats=stats.route(name, r.upstream)))
    if auth is not None:
        for method, path, handler in auth.local_routes():
            name = "oauth" + path.replace("/", "-").replace(".", "")
            chain = EMPTY_CHAIN
            if global_ip is not None:
                chain = Chain([IpPolicy(None, PolicyContext(store, stats, name), filters=[global_ip])])
            routes.append(RouteTarget(name, len(routes), methods=(method,), path=path, chain=chain,
                                      stats=stats.route(name, None), local=handler))
    return GatewayState(config, RouteTable(routes), pools, version, auth)


def retire(previous: GatewayState, current: GatewayState) -> None:
    """Close pools the new version no longer uses (their in-flight exchanges finish first)."""
    if previous.auth is not None:
        previous.auth.close()
    kept = {id(p) for p in current.pools.values()}
    for pool in previous.pools.values():
        if id(pool) not in kept:
            pool.close()
