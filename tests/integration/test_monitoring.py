"""The shipped Grafana dashboard and Prometheus alert rules against a real Prometheus
scraping a real gateway under traffic: every expression parses and returns series."""
import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import yaml

from tests.integration.conftest import basic_config
from tests.support.client import request
from tests.support.processes import ROOT, RedisServer, free_port, wait_for

DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "tollhouse-dashboard.json")
RULES = os.path.join(ROOT, "deploy", "prometheus", "tollhouse-alerts.yml")


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: 'sudo apt-get install prometheus' (make test installs it when root)"
    return path


def _panel_exprs() -> list[tuple[str, str]]:
    panels = json.load(open(DASHBOARD))["panels"]
    return [(p["title"], t["expr"]) for p in panels if p["type"] != "row" for t in p["targets"]]


def _measure(expr: str) -> str:
    """`(<measure>) <comparison> <threshold>` -> the measure (the rules file keeps that shape)."""
    assert expr.startswith("("), expr
    depth = 0
    for i, ch in enumerate(expr):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            rest = expr[i + 1:].split()
            assert rest[0] in (">", "<", "==", ">=", "<=") and float(rest[1]) >= 0, expr
            return expr[1:i]
    raise AssertionError(expr)


def test_promtool_accepts_the_rules_and_the_gateways_metrics(gateway_factory, upstream):
    out = subprocess.run([_tool("promtool"), "check", "rules", RULES], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    g = gateway_factory(basic_config(upstream.url))
    request(g.port, b"GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n")
    metrics = g.get_admin("/metrics")[1]
    out = subprocess.run([_tool("promtool"), "check", "metrics"], input=metrics, capture_output=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_panel_and_alert_expression_returns_series_from_a_real_prometheus(gateway_factory, upstream, redis,
                                                                               tmp_path):
    peer = RedisServer().start()   # another region's store: the region alerts have series
    g = gateway_factory(basic_config(upstream.url, extra_routes="""  - name: limited
    match: {prefix: /limited}
    upstream: app
    rate_limits: [{limit: 2, window: 1m}]
  - name: cached
    match: {prefix: /cached}
    upstream: app
    cache: {ttl: 30s}
  - name: guarded
    match: {prefix: /guarded}
    upstream: app
    auth: {providers: [dev]}
""", extra=f"""store: {redis.url}
regions: {{name: eu, peers: {{us: {peer.url}}}, sync_interval: 100ms}}
auth: {{providers: {{dev: {{type: jwt, algorithms: [HS256], secret: a-secret-of-enough-length-0123456789}}}}}}
""", upstream_extra="""    circuit_breaker: {failure_ratio: 0.9, min_requests: 1000, window: 10s, open_for: 30s}
"""))
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: ["{RULES}"]
scrape_configs:
  - job_name: tollhouse
    static_configs: [{{targets: ["127.0.0.1:{g.admin_port}"]}}]
""")
    prom = subprocess.Popen([_tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def api(path: str, **params) -> dict:
            url = f"http://127.0.0.1:{port}/api/v1/{path}?" + urllib.parse.urlencode(params)
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.loads(r.read())

        def ready() -> bool:
            try:
                return api("query", query="up")["status"] == "success"
            except OSError:
                return False

        wait_for(ready, timeout=20)
        deadline = time.monotonic() + 8   # traffic across several scrapes: rate() needs two samples
        while time.monotonic() < deadline:
            for path in ("/limited/x", "/cached/x", "/guarded/x", "/api/status/503", "/api/x"):
                request(g.port, f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
            time.sleep(0.2)
        rules = api("rules")["data"]["groups"][0]["rules"]
        assert len(rules) >= 7 and all(r["health"] == "ok" for r in rules), rules
        alerts = yaml.safe_load(open(RULES))["groups"][0]["rules"]
        checks = _panel_exprs() + [(rule["alert"], _measure(rule["expr"])) for rule in alerts]
        empty = []
        for name, expr in checks:
            answer = api("query", query=expr.replace("$__rate_interval", "1m"))
            assert answer["status"] == "success", (name, answer)
            if not answer["data"]["result"]:
                empty.append((name, expr))
        assert empty == []
    finally:
        prom.terminate()
        prom.wait(10)
        peer.cleanup()
