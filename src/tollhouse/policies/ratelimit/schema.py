"""Config schema of rate limits (route `rate_limits`, top-level `tiers`)."""
from __future__ import annotations

from ...config.schema import Bool, Duration, Field, Int, ListOf, Schema, Str, error_at
from .algorithms import ALGORITHMS

KEY_PATTERN = r"consumer|ip|route|global|header:[A-Za-z0-9_-]+"


class RateLimit(Schema):
    limit = Field(Int(min=1), 0, "requests allowed per window (required unless tiered)")
    window = Field(Duration(min=0.001), 60.0, "the window (token_bucket: limit tokens refill over it)")
    key = Field(Str(pattern=KEY_PATTERN), "consumer",
                "who is counted: consumer (falls back to ip when anonymous), ip, route, global, header:NAME "
                "(falls back to ip when the header is absent)")
    algorithm = Field(Str(choices=tuple(ALGORITHMS)), "sliding_window", "fixed_window, sliding_window or token_bucket")
    burst = Field(Int(min=1), 0, "token_bucket only: bucket capacity (default: limit)")
    tiered = Field(Bool(), False, "apply the caller's tier's rate_limits (from `tiers`) here instead")

    def check(self, path, lines, line, errors):
        if self.tiered:
            if self.limit:
                error_at(errors, path, "limit", lines, line, "a tiered entry takes its limits from `tiers`")
        elif not self.limit:
            error_at(errors, path, "limit", lines, line, "is required")
        if self.burst and self.algorithm != "token_bucket":
            error_at(errors, path, "burst", lines, line, "only token_bucket has a burst")


class Tier(Schema):
    rate_limits = Field(ListOf(RateLimit), (), "the limits of callers in this tier")

    def check(self, path, lines, line, errors):
        for i, limit in enumerate(self.rate_limits):
            if limit.tiered:
                error_at(errors, f"{path}.rate_limits[{i}]", "tiered", {}, line, "a tier's limits cannot be tiered")
