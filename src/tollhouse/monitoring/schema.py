"""Config of monitoring: a route's `slo`, and the top-level `monitoring` (thresholds of the
shipped alerts, per-route overrides, the anomaly band). Checked at load, with key paths."""
from __future__ import annotations

from ..config.loader import ConfigError
from ..config.schema import Duration, Field, Float, MapOf, Ratio, Schema, error_at
from ..observability.metrics import BUCKETS


def _boundaries() -> str:
    return ", ".join(f"{b * 1000:g}ms" if b < 1 else f"{b:g}s" for b in BUCKETS)


class LatencyObjective(Schema):
    threshold = Field(Duration(min=0.0), doc="a request slower than this counts against the objective "
                      "(a bucket boundary of tollhouse_request_duration_seconds)")
    target = Field(Ratio(), doc="the share of requests that must be faster, e.g. 99%")

    def check(self, path, lines, line, errors):
        if not any(abs(self.threshold - b) < 1e-9 for b in BUCKETS):
            error_at(errors, path, "threshold", lines, line, f"{self.threshold * 1000:g}ms is not a bucket boundary of "
                     f"tollhouse_request_duration_seconds; the boundaries are {_boundaries()}")
        _objective(self.target, path, "target", lines, line, errors)


class Slo(Schema):
    availability = Field(Ratio(), None, "the share of requests answered without a 5xx, e.g. 99.9%")
    latency = Field(LatencyObjective, None, "{threshold, target}: the share of requests faster than threshold")
    window = Field(Duration(min=3600.0), 30 * 86400.0, "the period the error budget is counted over")

    def check(self, path, lines, line, errors):
        if self.availability is None and self.latency is None:
            error_at(errors, path, "availability", lines, line, "an slo needs availability, latency or both")
        if self.availability is not None:
            _objective(self.availability, path, "availability", lines, line, errors)


def _objective(value: float, path, key, lines, line, errors) -> None:
    if not 0.0 < value < 1.0:
        error_at(errors, path, key, lines, line, f"an objective is above 0% and below 100%, got {value * 100:g}%")


class Thresholds(Schema):
    """The shipped threshold alerts' thresholds (deploy/prometheus/tollhouse-alerts.yml)."""

    error_ratio = Field(Ratio(), 0.05, "TollhouseHighErrorRatio: share of 5xx over 5 minutes")
    latency_p99 = Field(Duration(min=0.0), 1.0, "TollhouseHighLatencyP99: p99 over 5 minutes")
    ratelimit_rejections = Field(Float(min=0.0), 10.0, "TollhouseRateLimitRejectionsSurge: rejections per second")
    region_sync_lag = Field(Duration(min=0.0), 2.0, "TollhouseRegionSyncLag: age of a peer region's counts")


class RouteThresholds(Schema):
    error_ratio = Field(Ratio(), None, "this route's TollhouseHighErrorRatio threshold")
    latency_p99 = Field(Duration(min=0.0), None, "this route's TollhouseHighLatencyP99 threshold")
    ratelimit_rejections = Field(Float(min=0.0), None, "this route's rejections per second")


class Anomaly(Schema):
    z = Field(Float(min=0.5), 3.0, "how many standard deviations from its baseline a signal may go")
    for_ = Field(Duration(min=0.0), 600.0, "how long it must stay outside before the alert fires")


class Monitoring(Schema):
    thresholds = Field(Thresholds, Thresholds(), "the shipped threshold alerts, with these values")
    routes = Field(MapOf(RouteThresholds), {}, "route name -> its own thresholds")
    anomaly = Field(Anomaly, Anomaly(), "{z, for}: anomaly alerts (Prometheus) and the dashboard's marks")
    for_ = Field(Duration(min=0.0), None, "how long every threshold alert's condition must hold (default: each "
                 "alert's own, 1 to 10 minutes)")


def check_monitoring(config, errors: list) -> None:
    """`monitoring.routes` names routes of the config."""
    if config.monitoring is None:
        return
    names = {r.name or f"route-{i}" for i, r in enumerate(config.routes)}
    for name in config.monitoring.routes:
        if name not in names:
            errors.append(ConfigError(f"monitoring.routes.{name}", None, f"no route named {name!r}"))
