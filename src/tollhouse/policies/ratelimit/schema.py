"""Config schema of rate limits (route `rate_limits`, top-level `tiers`)."""
from __future__ import annotations

from ...config.loader import ConfigError
from ...config.schema import Bool, Duration, Field, Int, ListOf, MapOf, Schema, Str, error_at
from .algorithms import ALGORITHMS

KEY_PATTERN = r"consumer|ip|route|global|header:[A-Za-z0-9_-]+|[a-z][a-z0-9_]*"
BUILT_IN_KEYS = ("consumer", "ip", "route", "global")


class RateLimit(Schema):
    limit = Field(Int(min=1), 0, "requests allowed per window (required unless tiered)")
    window = Field(Duration(min=0.001), 60.0, "the window (token_bucket: limit tokens refill over it)")
    key = Field(Str(pattern=KEY_PATTERN), "consumer",
                "who is counted: consumer (falls back to ip when anonymous), ip, route, global, header:NAME "
                "(falls back to ip when the header is absent), or a value a policy sets (graphql_operation)")
    cost = Field(Str(pattern=r"[a-z][a-z0-9_]*"), "request",
                 "what a request weighs: request (1 each) or a number a policy sets (graphql_cost: the GraphQL "
                 "operation's estimated cost)")
    algorithm = Field(Str(choices=tuple(ALGORITHMS)), "sliding_window", "fixed_window, sliding_window or token_bucket")
    burst = Field(Int(min=1), 0, "token_bucket only: bucket capacity (default: limit)")
    tiered = Field(Bool(), False, "apply the caller's tier's rate_limits (from `tiers`) here instead")
    scope = Field(Str(choices=("region", "global")), "region",
                  "region: exact within this region's store; global: counted across `regions` (docs/regions.md)")
    mode = Field(Str(choices=("gcounter", "escrow")), "gcounter",
                 "scope: global only. gcounter: every region adds up the others' counts (a bounded over-admission); "
                 "escrow: each region holds a share and borrows unused share from its peers (never over the limit)")

    def check(self, path, lines, line, errors):
        from ...registry import request_values

        if self.key not in BUILT_IN_KEYS and not self.key.startswith("header:"):
            known = request_values("key")
            if self.key not in known:
                error_at(errors, path, "key", lines, line, f"unknown key {self.key!r}: consumer, ip, route, global, "
                                                          f"header:NAME{''.join(', ' + k for k in sorted(known))}")
        if self.cost != "request":
            known = request_values("cost")
            if self.cost not in known:
                error_at(errors, path, "cost", lines, line, f"unknown cost {self.cost!r}: request"
                                                            f"{''.join(', ' + k for k in sorted(known))}")
        if self.tiered:
            if self.limit:
                error_at(errors, path, "limit", lines, line, "a tiered entry takes its limits from `tiers`")
        elif not self.limit:
            error_at(errors, path, "limit", lines, line, "is required")
        if self.burst and self.algorithm != "token_bucket":
            error_at(errors, path, "burst", lines, line, "only token_bucket has a burst")
        if self.scope == "global" and self.algorithm == "token_bucket":
            error_at(errors, path, "scope", lines, line, "a global limit counts windows (fixed_window or "
                                                         "sliding_window): a token bucket's state is a time, not a "
                                                         "count the regions can add up")
        if self.mode == "escrow" and self.scope != "global":
            error_at(errors, path, "mode", lines, line, "escrow shares a limit between regions: it needs scope: global")
        elif self.mode == "escrow" and self.algorithm != "fixed_window":
            error_at(errors, path, "mode", lines, line, "escrow lends shares of one window's count: it needs "
                                                        "algorithm: fixed_window")


class Regions(Schema):
    name = Field(Str(pattern=r"[A-Za-z0-9_-]+"), doc="this region's name (its component of every global counter)")
    peers = Field(MapOf(Str(pattern=r"(redis|rediss)://.+"), key_pattern=r"[A-Za-z0-9_-]+"),
                  doc="the other regions: name -> their store's redis:// URL")
    sync_interval = Field(Duration(min=0.01), 0.1, "how often this region publishes its changed counts to the peers")
    on_partition = Field(Str(choices=("share", "open")), "share",
                         "a peer cannot be reached: share (this region admits limit / regions of its own at most) "
                         "or open (own + last-known counts only)")
    partition_after = Field(Duration(min=0.01), 1.0,
                            "a peer whose last count is older than this (or that cannot be written) is partitioned")

    def check(self, path, lines, line, errors):
        if not self.peers:
            error_at(errors, path, "peers", lines, line, "needs at least one other region")
        if self.name in self.peers:
            error_at(errors, path, "peers", lines, line, f"{self.name!r} is this region")


class Tier(Schema):
    rate_limits = Field(ListOf(RateLimit), (), "the limits of callers in this tier")

    def check(self, path, lines, line, errors):
        for i, limit in enumerate(self.rate_limits):
            if limit.tiered:
                error_at(errors, f"{path}.rate_limits[{i}]", "tiered", {}, line, "a tier's limits cannot be tiered")


def check_regions(config, errors: list) -> None:
    """`regions` counts in each region's Redis, and `scope: global` limits need `regions`."""
    if config.regions is not None and config.store == "memory":
        errors.append(ConfigError("regions", None, "regions count in each region's Redis: set `store` to redis://..."))
    global_limits = [f"routes[{i}].rate_limits[{j}].scope" for i, r in enumerate(config.routes)
                     for j, lim in enumerate(r.rate_limits) if lim.scope == "global"]
    global_limits += [f"tiers.{n}.rate_limits[{j}].scope" for n, t in config.tiers.items()
                      for j, lim in enumerate(t.rate_limits) if lim.scope == "global"]
    if global_limits and config.regions is None:
        errors.append(ConfigError(global_limits[0], None, "scope: global needs the top-level `regions`"))
