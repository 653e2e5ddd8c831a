"""Monitoring as configuration (docs/monitoring.md, contract §11): a route's `slo`, the
top-level `monitoring` section, and `tollhouse monitoring rules`, which writes the
Prometheus rules (SLO burn rates, thresholds, escalation, anomalies) and a Grafana
dashboard row per SLO from them (rules.py). The gateway's own anomaly marks are the
dashboard's (observability/anomaly.py)."""
from __future__ import annotations

from ..config.schema import Field
from ..registry import PolicyKind, Section
from .schema import Monitoring, Slo, check_monitoring

KIND = PolicyKind("slo", phase="transform", key="slo", build=lambda config, context, services: None,
                  field=Field(Slo, None, "{availability, latency: {threshold, target}, window}: objectives "
                                         "`tollhouse monitoring rules` writes burn-rate alerts for; docs/monitoring.md"))

SECTION = Section("monitoring", Field(Monitoring, None, "{thresholds, routes, anomaly, for}: the values of the "
                                                        "alerts `tollhouse monitoring rules` writes; docs/monitoring.md"),
                  check=check_monitoring)
