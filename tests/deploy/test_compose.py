"""deploy/compose.yaml against the Compose specification's JSON schema (the copy in
tests/support/compose_spec.json, from docker-compose 1.29.2, Apache-2.0), and its files."""
import json
import os

import jsonschema_rs
import yaml

from tests.support.processes import ROOT

DEPLOY = os.path.join(ROOT, "deploy")


def load() -> dict:
    with open(os.path.join(DEPLOY, "compose.yaml")) as f:
        return yaml.safe_load(f)


def test_the_stack_fits_the_compose_specification():
    with open(os.path.join(ROOT, "tests", "support", "compose_spec.json")) as f:
        schema = json.load(f)
    errors = [str(e) for e in jsonschema_rs.validator_for(schema).iter_errors(load())]
    assert errors == []


def test_two_gateways_redis_prometheus_and_grafana_with_the_shipped_files():
    services = load()["services"]
    assert {"gateway-a", "gateway-b", "redis", "prometheus", "grafana"} <= set(services)
    for name in ("gateway-a", "gateway-b"):
        g = services[name]
        assert g["environment"]["TOLLHOUSE_STORE"] == "redis://redis:6379/0" and g["read_only"] is True
        assert g["user"] == "10001:10001"
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            source = volume.split(":")[0]
            assert os.path.exists(os.path.join(DEPLOY, source)), volume   # every mounted file is shipped
    prometheus = yaml.safe_load(open(os.path.join(DEPLOY, "prometheus", "prometheus.yml")))
    assert prometheus["rule_files"] == ["/etc/prometheus/tollhouse-alerts.yml"]
    assert prometheus["scrape_configs"][0]["static_configs"][0]["targets"] == ["gateway-a:9901", "gateway-b:9901"]
    # The gateways' config (the image's) is valid, with the compose stack's environment.
    from tollhouse.config import load_text

    os.environ.update({"TOLLHOUSE_STORE": "redis://redis:6379/0", "TOLLHOUSE_UPSTREAM": "http://echo:8000"})
    try:
        _, errors = load_text(open(os.path.join(DEPLOY, "gateway.yaml")).read())
    finally:
        for k in ("TOLLHOUSE_STORE", "TOLLHOUSE_UPSTREAM"):
            os.environ.pop(k)
    assert errors == []
