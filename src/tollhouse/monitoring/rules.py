"""`tollhouse monitoring rules`: Prometheus rules and Grafana rows from a config (docs/monitoring.md).

Writes into a directory:

- `tollhouse-slo.yml`: for every route with an `slo`, recording rules for its error
  ratios (availability: 5xx; latency: slower than the threshold, from the histogram's
  bucket) over the windows the SRE workbook's multi-window, multi-burn-rate alerts use,
  and those alerts: a page when 2 % of the budget burns in 1 h (burn rate 14.4, checked
  over 1 h and 5 m) or 5 % in 6 h (6, over 6 h and 30 m); a ticket when 10 % burns in
  3 days (1, over 3 d and 6 h). Burn rates scale with the SLO's window (30 days by default).
- `tollhouse-alerts.yml`: the threshold alerts with the file's thresholds, a route's own
  overrides as alerts of their own;
- `tollhouse-escalation.yml`: a warning unresolved for 30 minutes becomes critical (the
  Alertmanager routing tree sends critical to on-call).
- `tollhouse-anomaly.yml`: per route, the request rate, error ratio and p99 now, their
  baseline (the same hour a week before, smoothed over an hour, moved by the week's
  trend), the week's standard deviation, the z-score, and alerts when |z| passes
  `monitoring.anomaly.z` for `monitoring.anomaly.for`. A route with no samples a week
  ago has no baseline and never fires.
- `tollhouse-slo-dashboard.json`: a Grafana dashboard with a row per SLO: the budget left
  and the burn rate.
"""
from __future__ import annotations

import json
import os
import re

import yaml

#: The threshold alerts with their default thresholds; deploy/prometheus/tollhouse-alerts.yml is
#: what `tollhouse monitoring rules` writes from it for a config without `monitoring`.
SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "threshold-alerts.yml")
#: (window, short window, burn rate over a 30-day SLO window, severity): the SRE workbook's table.
BURNS = (("1h", "5m", 14.4, "critical"), ("6h", "30m", 6.0, "critical"), ("3d", "6h", 1.0, "warning"))
WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
SIGNALS = {
    "rate": "sum by (route) (rate(tollhouse_requests_total[5m]))",
    "error_ratio": 'sum by (route) (rate(tollhouse_requests_total{status=~"5.."}[5m])) / '
                   "sum by (route) (rate(tollhouse_requests_total[5m]))",
    "p99": "histogram_quantile(0.99, sum by (le, route) (rate(tollhouse_request_duration_seconds_bucket[5m])))",
}


def _le(seconds: float) -> str:
    return f"{seconds:g}"


def slo_rules(config) -> dict:
    groups = []
    for i, route in enumerate(config.routes):
        slo = route.slo
        if slo is None:
            continue
        name = route.name or f"route-{i}"
        scale = slo.window / (30 * 86400.0)   # burn rates are per 30 days in the workbook
        rules = []
        objectives = []
        if slo.availability is not None:
            objectives.append(("availability", slo.availability,
                               lambda w, n=name: f'sum(rate(tollhouse_requests_total{{route="{n}",status=~"5.."}}[{w}])) / '
                                                 f'sum(rate(tollhouse_requests_total{{route="{n}"}}[{w}]))'))
        if slo.latency is not None:
            le = _le(slo.latency.threshold)
            objectives.append(("latency", slo.latency.target,
                               lambda w, n=name, le=le: f'1 - (sum(rate(tollhouse_request_duration_seconds_bucket'
                                                        f'{{route="{n}",le="{le}"}}[{w}])) / sum(rate('
                                                        f'tollhouse_request_duration_seconds_count{{route="{n}"}}[{w}])))'))
        for kind, objective, ratio in objectives:
            labels = {"route": name, "slo": kind}
            for window in WINDOWS:
                rules.append({"record": f"tollhouse:slo_errors:ratio_rate{window}", "expr": ratio(window),
                              "labels": dict(labels)})
            budget = 1 - objective
            selector = f'{{route="{name}",slo="{kind}"}}'
            for long, short, burn, severity in BURNS:
                rate = burn * scale   # the same share of the budget, spent over the same time
                threshold = f"{rate:g} * {budget:.6g}"
                rules.append({
                    "alert": "TollhouseSLOBudgetBurn" if severity == "critical" else "TollhouseSLOBudgetBurnSlow",
                    "expr": f"tollhouse:slo_errors:ratio_rate{long}{selector} > ({threshold}) and "
                            f"tollhouse:slo_errors:ratio_rate{short}{selector} > ({threshold})",
                    "labels": {**labels, "severity": severity, "window": long},
                    "annotations": {"summary": f"Route {name}: the {kind} SLO ({objective * 100:g}%) burns its "
                                               f"error budget {rate:g}x too fast (over {long} and {short})"}})
        groups.append({"name": f"tollhouse-slo-{name}", "rules": rules})
    return {"groups": groups}


def threshold_rules(config, shipped: str = SHIPPED) -> dict:
    """The shipped alerts with the config's thresholds (and `for`), per-route overrides apart."""
    with open(shipped, encoding="utf-8") as f:
        document = yaml.safe_load(f)
    monitoring = config.monitoring
    values = {"TollhouseHighErrorRatio": ("error_ratio", lambda v: f"{v:g}"),
              "TollhouseHighLatencyP99": ("latency_p99", lambda v: f"{v:g}"),
              "TollhouseRateLimitRejectionsSurge": ("ratelimit_rejections", lambda v: f"{v:g}"),
              "TollhouseRegionSyncLag": ("region_sync_lag", lambda v: f"{v:g}")}
    out = []
    for rule in document["groups"][0]["rules"]:
        rule = dict(rule)
        if monitoring is not None and monitoring.for_ is not None:
            rule["for"] = f"{monitoring.for_:g}s"
        known = values.get(rule["alert"])
        if known is None or monitoring is None:
            out.append(rule)
            continue
        key, show = known
        measure, comparison, _ = _split(rule["expr"])
        overridden = {r: getattr(t, key) for r, t in monitoring.routes.items()
                      if hasattr(t, key) and getattr(t, key) is not None}
        general = dict(rule)
        general["expr"] = f"({_except(measure, overridden)}) {comparison} {show(getattr(monitoring.thresholds, key))}"
        out.append(general)
        for route, value in sorted(overridden.items()):
            own = dict(rule)
            own["expr"] = f'({_only(measure, route)}) {comparison} {show(value)}'
            own["labels"] = {**rule.get("labels", {}), "route": route}
            out.append(own)
    return {"groups": [{"name": "tollhouse", "rules": out}]}


def escalation_rules(config=None) -> dict:
    return {"groups": [{"name": "tollhouse-escalation", "rules": [{
        "alert": "TollhouseWarningUnresolved",
        # The warning's own labels, its name kept as escalated_from (alertname and alertstate are the rule's).
        "expr": 'max without (alertname, alertstate) (label_replace(ALERTS{alertstate="firing",severity="warning",'
                'alertname!="TollhouseWarningUnresolved"}, "escalated_from", "$1", "alertname", "(.+)"))',
        "for": "30m", "labels": {"severity": "critical", "escalated": "true"},
        "annotations": {"summary": "{{ $labels.escalated_from }} has been firing for 30 minutes: escalated to on-call"}}]}]}


def _split(expr: str) -> tuple[str, str, str]:
    """`(<measure>) <comparison> <threshold>` (the shipped file keeps that shape)."""
    depth = 0
    for i, ch in enumerate(expr):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            comparison, threshold = expr[i + 1:].split()
            return expr[1:i], comparison, threshold
    raise ValueError(f"unexpected alert expression: {expr}")


# The per-route series the threshold alerts read: a route selector goes on each of them.
_ROUTE_SERIES = re.compile(r"(tollhouse_requests_total|tollhouse_request_duration_seconds_bucket|"
                           r"tollhouse_ratelimit_rejections_total)([{\[])")


def _with_route(measure: str, matcher: str) -> str:
    """`measure` with `matcher` (route="x" or route!~"a|b") on every per-route series."""
    return _ROUTE_SERIES.sub(lambda m: m.group(1) + ("{" + matcher + "," if m.group(2) == "{" else
                                                     "{" + matcher + "}["), measure)


def _except(measure: str, routes: dict) -> str:
    return _with_route(measure, 'route!~"' + "|".join(sorted(routes)) + '"') if routes else measure


def _only(measure: str, route: str) -> str:
    return _with_route(measure, f'route="{route}"')


def anomaly_rules(config) -> dict:
    anomaly = config.monitoring.anomaly if config.monitoring is not None else None
    z = anomaly.z if anomaly is not None else 3.0
    hold = anomaly.for_ if anomaly is not None else 600.0
    rules = []
    for signal, expr in SIGNALS.items():
        now = f"tollhouse:route_{signal}:5m"
        rules += [
            {"record": now, "expr": expr},
            # The same hour a week ago, smoothed over an hour, moved by how the week's mean changed since.
            {"record": f"{now}:baseline", "expr": f"avg_over_time({now}[1h] offset 167h30m) + "
                                                  f"avg_over_time({now}[1w]) - avg_over_time({now}[1w] offset 1w)"},
            {"record": f"{now}:stddev_1w", "expr": f"stddev_over_time({now}[1w])"},
            # No sample a week ago (a new route): no baseline, no z-score, no alert.
            {"record": f"{now}:z", "expr": f"({now} - {now}:baseline) / ({now}:stddev_1w > 0) "
                                           f"and on (route) ({now} offset 1w)"},
        ]
    for signal in SIGNALS:
        rules.append({"alert": "TollhouseAnomaly", "expr": f"abs(tollhouse:route_{signal}:5m:z) > {z:g}",
                      "for": f"{hold:g}s", "labels": {"severity": "warning", "signal": signal},
                      "annotations": {"summary": f"Route {{{{ $labels.route }}}}: {signal} left its weekly baseline "
                                                 f"(|z| > {z:g} for {hold:g}s)"}})
    return {"groups": [{"name": "tollhouse-anomaly", "rules": rules}]}


def slo_dashboard(config) -> dict:
    panels = []
    y = 0
    for i, route in enumerate(config.routes):
        if route.slo is None:
            continue
        name = route.name or f"route-{i}"
        panels.append({"type": "row", "title": f"SLO: {name}", "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
                       "collapsed": False, "panels": []})
        y += 1
        for kind, objective in (("availability", route.slo.availability),
                                ("latency", route.slo.latency.target if route.slo.latency else None)):
            if objective is None:
                continue
            budget = 1 - objective
            sel = f'{{route="{name}",slo="{kind}"}}'
            panels.append({"type": "stat", "title": f"{name} {kind}: error budget left (30d)",
                           "gridPos": {"x": 0 if kind == "availability" else 12, "y": y, "w": 6, "h": 6},
                           "fieldConfig": {"defaults": {"unit": "percentunit"}},
                           "targets": [{"expr": f"1 - (avg_over_time(tollhouse:slo_errors:ratio_rate1h{sel}[30d]) / "
                                                f"{budget:.6g})"}]})
            panels.append({"type": "timeseries", "title": f"{name} {kind}: burn rate",
                           "gridPos": {"x": 6 if kind == "availability" else 18, "y": y, "w": 6, "h": 6},
                           "targets": [{"expr": f"tollhouse:slo_errors:ratio_rate1h{sel} / {budget:.6g}",
                                        "legendFormat": "1h"},
                                       {"expr": f"tollhouse:slo_errors:ratio_rate6h{sel} / {budget:.6g}",
                                        "legendFormat": "6h"}]})
        y += 6
    return {"title": "Tollhouse SLOs", "uid": "tollhouse-slo", "schemaVersion": 39, "panels": panels,
            "time": {"from": "now-7d", "to": "now"}}


def render_rules(content: dict) -> str:
    return ("# Written by `tollhouse monitoring rules` (docs/monitoring.md): do not edit, write it again.\n" +
            yaml.safe_dump(content, sort_keys=False, width=1000))


def write_rules(config, directory: str) -> list[str]:
    """Every file into `directory`; their paths."""
    os.makedirs(directory, exist_ok=True)
    written = []
    for name, content in (("tollhouse-slo.yml", slo_rules(config)), ("tollhouse-alerts.yml", threshold_rules(config)),
                          ("tollhouse-escalation.yml", escalation_rules(config)),
                          ("tollhouse-anomaly.yml", anomaly_rules(config))):
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(render_rules(content))
        written.append(path)
    path = os.path.join(directory, "tollhouse-slo-dashboard.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(slo_dashboard(config), f, indent=2)
    written.append(path)
    return written
