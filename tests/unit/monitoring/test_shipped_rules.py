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
