"""Alerts from the config (docs/monitoring.md), checked by the real tools: `promtool test
rules` runs every generated rule on synthetic series (each alert fires where it should
and stays silent where it should not), `amtool` checks the shipped Alertmanager config
and its escalation paths, and an end-to-end run has a real Prometheus scrape a real
gateway whose upstream turns bad, until the alert reaches a real Alertmanager that posts
it to a webhook server run here."""
import json
import math
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from tests.support.processes import ROOT, free_port, wait_for

ALERTMANAGER = os.path.join(ROOT, "deploy", "alertmanager", "alertmanager.yml")

CONFIG = """
upstreams:
  app: {{targets: ["{upstream}"]}}
monitoring:
  thresholds: {{error_ratio: 2%}}
  routes:
    checkout: {{error_ratio: 1%}}
  anomaly: {{z: 3, for: 10m}}
{extra}
routes:
  - name: checkout
    match: {{prefix: /checkout}}
    upstream: app
    slo: {{availability: 99.9%, latency: {{threshold: 300ms, target: 99%}}}}
  - name: api
    match: {{prefix: /}}
    upstream: app
"""


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: 'sudo apt-get install prometheus prometheus-alertmanager' (make test does)"
    return path


def tollhouse(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "tollhouse", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": os.path.join(ROOT, "src")})


@pytest.fixture(scope="module")
def rules(tmp_path_factory):
    d = tmp_path_factory.mktemp("rules")
    (d / "gateway.yaml").write_text(CONFIG.format(upstream="http://127.0.0.1:9", extra=""))
    out = tollhouse("monitoring", "rules", "-c", str(d / "gateway.yaml"), "-o", str(d))
    assert out.returncode == 0, out.stderr
    assert sorted(os.path.basename(p) for p in out.stdout.split()) == [
        "tollhouse-alerts.yml", "tollhouse-anomaly.yml", "tollhouse-escalation.yml", "tollhouse-slo-dashboard.json",
        "tollhouse-slo.yml"]
    return d


# The rule tests run promtool alone: the gateway's build plays no part, so the pure-Python
# pass of `make test` leaves them to the compiled one.
promtool_only = pytest.mark.skipif(bool(os.environ.get("TOLLHOUSE_PURE_PYTHON")),
                                   reason="promtool alone: run once, in the compiled pass")


def promtool_test(directory, rule_files: list[str], tests: list[dict], interval: str = "1m") -> None:
    test_file = directory / f"test-{abs(hash(json.dumps(tests, default=str)))}.yml"
    test_file.write_text(yaml.safe_dump({"rule_files": rule_files, "evaluation_interval": interval, "tests": tests},
                                        width=100000))
    out = subprocess.run([_tool("promtool"), "test", "rules", str(test_file)], capture_output=True, text=True,
                         cwd=directory, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]


def test_the_generated_files_pass_promtool_and_grafana_gets_a_row_per_slo(rules):
    for name in ("tollhouse-slo.yml", "tollhouse-alerts.yml", "tollhouse-escalation.yml", "tollhouse-anomaly.yml"):
        out = subprocess.run([_tool("promtool"), "check", "rules", str(rules / name)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
    dashboard = json.loads((rules / "tollhouse-slo-dashboard.json").read_text())
    assert [p["title"] for p in dashboard["panels"] if p["type"] == "row"] == ["SLO: checkout"]
    titles = [p["title"] for p in dashboard["panels"] if p["type"] != "row"]
    assert "checkout availability: error budget left (30d)" in titles and "checkout latency: burn rate" in titles


def _burn(route, kind, severity, window, objective, rate, long, short):
    return {"exp_labels": {"route": route, "slo": kind, "severity": severity, "window": window},
            "exp_annotations": {"summary": f"Route {route}: the {kind} SLO ({objective}%) burns its error budget "
                                           f"{rate}x too fast (over {long} and {short})"}}


@promtool_only
def test_slo_burn_rate_alerts_fire_on_a_burn_and_not_within_budget(rules):
    ok = 'tollhouse_requests_total{route="checkout",method="GET",status="200"}'
    bad = 'tollhouse_requests_total{route="checkout",method="GET",status="500"}'
    fast, count = ('tollhouse_request_duration_seconds_bucket{route="checkout",le="0.3"}',
                   'tollhouse_request_duration_seconds_count{route="checkout"}')
    page = [_burn("checkout", "availability", "critical", "1h", "99.9", "14.4", "1h", "5m"),
            _burn("checkout", "availability", "critical", "6h", "99.9", "6", "6h", "30m")]
    promtool_test(rules, ["tollhouse-slo.yml"], [
        {   # 5% of requests fail: 50 times the budget's rate. Pages (1h and 6h) and the ticket.
            "interval": "1m",
            "input_series": [{"series": ok, "values": "0+950x90"}, {"series": bad, "values": "0+50x90"},
                             {"series": fast, "values": "0+1000x90"}, {"series": count, "values": "0+1000x90"}],
            "alert_rule_test": [
                {"eval_time": "70m", "alertname": "TollhouseSLOBudgetBurn", "exp_alerts": page},
                {"eval_time": "70m", "alertname": "TollhouseSLOBudgetBurnSlow",
                 "exp_alerts": [_burn("checkout", "availability", "warning", "3d", "99.9", "1", "3d", "6h")]}]},
        {   # 0.05% fail (half the budget's rate); every request is fast: nothing fires.
            "interval": "1m",
            "input_series": [{"series": ok, "values": "0+1999x90"}, {"series": bad, "values": "0+1x90"},
                             {"series": fast, "values": "0+2000x90"}, {"series": count, "values": "0+2000x90"}],
            "alert_rule_test": [{"eval_time": "70m", "alertname": "TollhouseSLOBudgetBurn", "exp_alerts": []},
                                {"eval_time": "70m", "alertname": "TollhouseSLOBudgetBurnSlow", "exp_alerts": []}]},
        {   # 10% slower than 300ms against a 99% target: burn rate 10. Not the 1h page (14.4); the 6h one (6).
            "interval": "1m",
            "input_series": [{"series": ok, "values": "0+1000x90"}, {"series": fast, "values": "0+900x90"},
                             {"series": count, "values": "0+1000x90"}],
            "alert_rule_test": [{"eval_time": "70m", "alertname": "TollhouseSLOBudgetBurn", "exp_alerts": [
                _burn("checkout", "latency", "critical", "6h", "99", "6", "6h", "30m")]}]},
    ])


@promtool_only
def test_threshold_alerts_take_the_files_values_and_route_overrides(rules):
    def series(route, good, bad):
        return [{"series": f'tollhouse_requests_total{{route="{route}",method="GET",status="200"}}',
                 "values": f"0+{good}x30"},
                {"series": f'tollhouse_requests_total{{route="{route}",method="GET",status="500"}}',
                 "values": f"0+{bad}x30"}]
    alert = {"exp_labels": {"route": "checkout", "severity": "critical"},
             "exp_annotations": {"summary": "Route checkout: 1.5% of requests answered 5xx"}}
    promtool_test(rules, ["tollhouse-alerts.yml"], [
        {   # 1.5% errors on both routes: past checkout's own 1%, under the file's 2% for the others.
            "interval": "1m", "input_series": series("checkout", 985, 15) + series("api", 985, 15),
            "alert_rule_test": [{"eval_time": "20m", "alertname": "TollhouseHighErrorRatio", "exp_alerts": [alert]}]},
        {   # 3% on api: past the file's 2%.
            "interval": "1m", "input_series": series("api", 970, 30),
            "alert_rule_test": [{"eval_time": "20m", "alertname": "TollhouseHighErrorRatio", "exp_alerts": [
                {"exp_labels": {"route": "api", "severity": "critical"},
                 "exp_annotations": {"summary": "Route api: 3% of requests answered 5xx"}}]}]},
    ])


@promtool_only
def test_a_warning_unresolved_for_30_minutes_escalates(rules):
    warning = 'ALERTS{alertname="TollhouseHighLatencyP99",alertstate="firing",severity="warning",route="api"}'
    escalated = {"exp_labels": {"severity": "critical", "escalated": "true", "route": "api",
                                "escalated_from": "TollhouseHighLatencyP99"},
                 "exp_annotations": {"summary": "TollhouseHighLatencyP99 has been firing for 30 minutes: escalated "
                                                "to on-call"}}
    promtool_test(rules, ["tollhouse-escalation.yml"], [
        {"interval": "1m", "input_series": [{"series": warning, "values": "1x40"}],
         "alert_rule_test": [{"eval_time": "20m", "alertname": "TollhouseWarningUnresolved", "exp_alerts": []},
                             {"eval_time": "35m", "alertname": "TollhouseWarningUnresolved",
                              "exp_alerts": [escalated]}]}])


def _weekly(days: int, start: int = 0, drop_from: int | None = None, spike_at: int | None = None,
            departure: float = 10, scale: float = 1.0) -> str:
    """A signal every 10 minutes for `days`: 100 with a daily swing of 20 and a little deterministic
    noise (times `scale`); optionally at `departure` from sample `drop_from` on, or one sample at 400."""
    values = []
    for i in range(start, days * 144):
        v = 100 + 20 * math.sin(2 * math.pi * i / 144) + 2 * math.sin(i * 7.3)
        if drop_from is not None and i >= drop_from:
            v = departure
        v *= scale
        if spike_at is not None and i == spike_at:
            v = 400 * scale
        values.append(f"{v:.6f}")
    return " ".join(values)


@promtool_only
def test_anomaly_alerts_fire_on_a_departure_either_way_and_not_otherwise(rules):
    days = 15
    end = days * 144 - 1                   # the last sample
    at = f"{end * 10}m"
    rate = 'tollhouse:route_rate:5m{route="shop"}'
    fired = [{"exp_labels": {"route": "shop", "signal": "rate", "severity": "warning"},
              "exp_annotations": {"summary": "Route shop: rate left its weekly baseline (|z| > 3 for 600s)"}}]
    promtool_test(rules, ["tollhouse-anomaly.yml"], [
        {"interval": "10m", "input_series": [{"series": rate, "values": _weekly(days)}],        # a normal week
         "alert_rule_test": [{"eval_time": at, "alertname": "TollhouseAnomaly", "exp_alerts": []}]},
        {"interval": "10m", "input_series": [{"series": rate, "values": _weekly(days, drop_from=end - 6)}],  # a drop
         "alert_rule_test": [{"eval_time": at, "alertname": "TollhouseAnomaly", "exp_alerts": fired}]},
        {"interval": "10m", "input_series": [{"series": rate, "values": _weekly(days, spike_at=end - 3)}],   # a spike
         "alert_rule_test": [{"eval_time": at, "alertname": "TollhouseAnomaly", "exp_alerts": []}]},
        {"interval": "10m", "input_series": [  # a new route: two days of history, then a drop; no baseline
            {"series": rate, "values": " ".join(["_"] * ((days - 2) * 144)) + " " +
             _weekly(days, start=(days - 2) * 144, drop_from=end - 6)}],
         "alert_rule_test": [{"eval_time": at, "alertname": "TollhouseAnomaly", "exp_alerts": []}]},
        {"interval": "10m", "input_series": [  # the error ratio surges: the same rules for every signal
            {"series": 'tollhouse:route_error_ratio:5m{route="shop"}',
             "values": _weekly(days, drop_from=end - 6, departure=300, scale=0.0001)}],
         "alert_rule_test": [{"eval_time": at, "alertname": "TollhouseAnomaly", "exp_alerts": [
             {"exp_labels": {"route": "shop", "signal": "error_ratio", "severity": "warning"},
              "exp_annotations": {"summary": "Route shop: error_ratio left its weekly baseline (|z| > 3 for 600s)"}}]}]},
    ], interval="10m")


@promtool_only
def test_alertmanager_config_and_its_escalation_paths():
    amtool = _tool("amtool")
    out = subprocess.run([amtool, "check-config", ALERTMANAGER], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    for labels, receiver in ((["severity=warning", "route=api"], "team-channel"),
                             (["severity=critical", "route=api"], "oncall"),
                             (["alertname=TollhouseWarningUnresolved", "severity=critical", "escalated=true",
                               "escalated_from=TollhouseHighLatencyP99"], "oncall"),
                             (["alertname=Other"], "team-channel")):
        out = subprocess.run([amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER}", *labels],
                             capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.strip() == receiver, (labels, out.stdout, out.stderr)


def test_bad_monitoring_values_are_errors_naming_the_key(tmp_path):
    cases = [("availability: 120%", "routes[0].slo.availability"),
             ("availability: 100%", "routes[0].slo.availability"),
             ("latency: {threshold: -5ms, target: 99%}", "routes[0].slo.latency.threshold"),
             ("latency: {threshold: 200ms, target: 99%}", "routes[0].slo.latency.threshold")]
    for slo, key in cases:
        path = tmp_path / "g.yaml"
        path.write_text(CONFIG.format(upstream="http://127.0.0.1:9", extra="").replace(
            "slo: {availability: 99.9%, latency: {threshold: 300ms, target: 99%}}", "slo: {" + slo + "}"))
        out = tollhouse("check", "-c", str(path))
        assert out.returncode != 0 and key in out.stderr + out.stdout, (slo, out.stderr)
    assert "250ms, 300ms, 500ms" in out.stderr + out.stdout   # the boundaries there are
    path.write_text(CONFIG.format(upstream="http://127.0.0.1:9", extra="").replace("    checkout: {error_ratio: 1%}",
                                                                                  "    nowhere: {error_ratio: 1%}"))
    out = tollhouse("check", "-c", str(path))
    assert out.returncode != 0 and "monitoring.routes.nowhere" in out.stderr + out.stdout


class _Webhook:
    def __init__(self):
        self.received: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.received.append({"path": self.path, **json.loads(body)})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


def test_end_to_end_a_bad_upstream_reaches_the_on_call_webhook(gateway_factory, tmp_path):
    from tests.support.client import request
    from tests.support.upstream import Upstream

    failing = Upstream(fail_with=500).start()   # the load turns bad: every answer is a 500
    hook = _Webhook()
    try:
        g = gateway_factory(CONFIG.format(upstream=failing.url, extra="").replace(
            "  anomaly: {z: 3, for: 10m}", "  anomaly: {z: 3, for: 10m}\n  for: 2s"))
        out = tollhouse("monitoring", "rules", "-c", g.config_path, "-o", str(tmp_path))
        assert out.returncode == 0, out.stderr
        am_port, prom_port = free_port(), free_port()
        am_config = open(ALERTMANAGER).read().replace("http://alert-sink.example", hook.url).replace(
            "group_wait: 30s", "group_wait: 1s").replace("group_wait: 10s", "group_wait: 1s")
        (tmp_path / "am.yml").write_text(am_config)
        am = subprocess.Popen([_tool("prometheus-alertmanager"), f"--config.file={tmp_path / 'am.yml'}",
                               f"--storage.path={tmp_path / 'am'}", f"--web.listen-address=127.0.0.1:{am_port}",
                               "--cluster.listen-address="], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp_path / "tollhouse-alerts.yml")],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
            "scrape_configs": [{"job_name": "tollhouse", "static_configs": [{"targets": [f"127.0.0.1:{g.admin_port}"]}]}]}))
        prom = subprocess.Popen([_tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            def traffic_until_paged():
                for _ in range(20):
                    request(g.port, b"GET /checkout/pay HTTP/1.1\r\nHost: shop\r\n\r\n")
                return any(a["labels"].get("alertname") == "TollhouseHighErrorRatio" and a["status"] == "firing"
                           for m in hook.received if m["path"] == "/oncall" for a in m["alerts"])
            wait_for(traffic_until_paged, timeout=60, interval=0.5)
            alert = next(a for m in hook.received if m["path"] == "/oncall" for a in m["alerts"]
                         if a["labels"]["alertname"] == "TollhouseHighErrorRatio")
            assert alert["labels"]["route"] == "checkout" and alert["labels"]["severity"] == "critical"
        finally:
            for proc in (prom, am):
                proc.terminate()
                proc.wait(10)
    finally:
        hook.server.shutdown()
        failing.stop()


SHIPPED = os.path.join(ROOT, "deploy", "prometheus", "tollhouse-alerts.yml")

# Every shipped threshold alert: (series that trigger it, series that do not, the alert expected).
_SHIPPED_CASES = {
    "TollhouseHighErrorRatio": (
        [('tollhouse_requests_total{route="a",method="GET",status="200"}', "0+900x30"),
         ('tollhouse_requests_total{route="a",method="GET",status="500"}', "0+100x30")],
        [('tollhouse_requests_total{route="a",method="GET",status="200"}', "0+990x30"),
         ('tollhouse_requests_total{route="a",method="GET",status="500"}', "0+10x30")],
        {"route": "a", "severity": "critical"}, "Route a: 10% of requests answered 5xx"),
    "TollhouseHighLatencyP99": (
        [('tollhouse_request_duration_seconds_bucket{route="a",le="1"}', "0+0x30"),
         ('tollhouse_request_duration_seconds_bucket{route="a",le="2.5"}', "0+100x30"),
         ('tollhouse_request_duration_seconds_bucket{route="a",le="+Inf"}', "0+100x30")],
        [('tollhouse_request_duration_seconds_bucket{route="a",le="0.1"}', "0+100x30"),
         ('tollhouse_request_duration_seconds_bucket{route="a",le="+Inf"}', "0+100x30")],
        {"route": "a", "severity": "warning"}, "Route a: p99 latency 2.485s"),
    "TollhouseRateLimitRejectionsSurge": (
        [('tollhouse_ratelimit_rejections_total{route="a"}', "0+1200x30")],
        [('tollhouse_ratelimit_rejections_total{route="a"}', "0+60x30")],
        {"route": "a", "severity": "warning"}, "Route a: 20 rate-limit rejections per second"),
    "TollhouseCircuitOpen": (
        [('tollhouse_circuit_state{upstream="u"}', "1x30")], [('tollhouse_circuit_state{upstream="u"}', "2x30")],
        {"upstream": "u", "severity": "critical"}, "The circuit to upstream u is open"),
    "TollhouseUnhealthyTargets": (
        [('tollhouse_upstream_target_healthy{upstream="u",target="http://t:1"}', "0x30")],
        [('tollhouse_upstream_target_healthy{upstream="u",target="http://t:1"}', "1x30")],
        {"upstream": "u", "target": "http://t:1", "severity": "warning"}, "Target http://t:1 of u is unhealthy or ejected"),
    "TollhouseStoreFailures": (
        [('tollhouse_store_errors_total{store="redis"}', "0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 3 3 3 3 3 3 3 3 3 3 3 3 3 3 3 3")],
        [('tollhouse_store_errors_total{store="redis"}', "7x30")],
        {"store": "redis", "severity": "critical"}, "The redis store failed 3 times in 5 minutes"),
    "TollhouseStoreFallback": (
        [('tollhouse_ratelimit_fallback{mode="local"}', "1x30")], [('tollhouse_ratelimit_fallback{mode="local"}', "0x30")],
        {"mode": "local", "severity": "warning"}, "Rate limiting runs on store_failure=local: the store is unreachable"),
    "TollhouseRegionSyncLag": (
        [('tollhouse_region_sync_lag_seconds{peer="us"}', "5x30")], [('tollhouse_region_sync_lag_seconds{peer="us"}', "1x30")],
        {"peer": "us", "severity": "warning"}, "Global limits: this region's view of us is 5s old"),
    "TollhouseRegionPeerDown": (
        [('tollhouse_region_peer_up{peer="us"}', "0x30")], [('tollhouse_region_peer_up{peer="us"}', "1x30")],
        {"peer": "us", "severity": "critical"}, "Global limits: region us is partitioned (on_partition applies)"),
}


@promtool_only
def test_every_shipped_threshold_alert_fires_when_it_should_and_only_then(tmp_path):
    shutil.copy(SHIPPED, tmp_path / "tollhouse-alerts.yml")
    names = [r["alert"] for r in yaml.safe_load(open(SHIPPED))["groups"][0]["rules"]]
    assert sorted(names) == sorted(_SHIPPED_CASES)   # a new shipped alert needs its case here
    tests = []
    for name, (firing, quiet, labels, summary) in _SHIPPED_CASES.items():
        expected = {"exp_labels": labels, "exp_annotations": {"summary": summary}}
        tests.append({"interval": "1m", "input_series": [{"series": s, "values": v} for s, v in firing],
                      "alert_rule_test": [{"eval_time": "17m", "alertname": name, "exp_alerts": [expected]}]})
        tests.append({"interval": "1m", "input_series": [{"series": s, "values": v} for s, v in quiet],
                      "alert_rule_test": [{"eval_time": "17m", "alertname": name, "exp_alerts": []}]})
    promtool_test(tmp_path, ["tollhouse-alerts.yml"], tests)
