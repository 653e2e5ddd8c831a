"""The shipped rule files are what `tollhouse monitoring rules` writes for a config without
`monitoring` (one template, src/tollhouse/monitoring/threshold-alerts.yml)."""
import os

from tollhouse.builtins import install
from tollhouse.config import load_text
from tollhouse.monitoring.rules import escalation_rules, render_rules, threshold_rules

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_the_shipped_rules_are_in_step_with_the_generator():
    install()
    config, errors = load_text("routes: []\n")
    assert not errors
    for name, rules in (("tollhouse-alerts.yml", threshold_rules(config)),
                        ("tollhouse-escalation.yml", escalation_rules(config))):
        with open(os.path.join(ROOT, "deploy", "prometheus", name), encoding="utf-8") as f:
            assert f.read() == render_rules(rules), f"deploy/prometheus/{name} is stale: write it again"


def test_burn_rates_scale_with_the_slo_window():
    """The workbook's rates are for 30 days: 2 % of a 7-day budget in 1 h is a burn rate of
    14.4 x 7/30, and 10 % in 3 days is 1 x 7/30, the ticket included."""
    from tollhouse.monitoring.rules import slo_rules

    install()
    config, errors = load_text("""
upstreams: {app: {targets: ["http://127.0.0.1:9"]}}
routes:
  - {name: r, match: {prefix: /}, upstream: app, slo: {availability: 99.9%, window: 7d}}
""")
    assert not errors
    alerts = {r["labels"]["window"]: r["expr"] for r in slo_rules(config)["groups"][0]["rules"] if "alert" in r}
    assert "> (3.36 * 0.001)" in alerts["1h"]
    assert "> (1.4 * 0.001)" in alerts["6h"]
    assert "> (0.233333 * 0.001)" in alerts["3d"]
