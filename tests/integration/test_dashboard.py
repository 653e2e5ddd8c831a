"""The admin listener's live dashboard: /dashboard/data from real traffic, fleet-wide
over a real Redis, and the page itself in a real browser (Debian's chromium)."""
import json
import os
import shutil
import threading
import time
import urllib.request

import pytest

from tests.integration.conftest import basic_config
from tests.support.processes import ROOT, RedisServer, wait_for

TOKEN = "dash-s3cret"
ARTIFACTS = os.environ.get("TOLLHOUSE_ARTIFACTS", os.path.join(ROOT, "artifacts"))

EXTRA = f"""admin: {{listen: '127.0.0.1:{{admin_port}}', token: {TOKEN}}}
consumers:
  - {{id: alice, api_keys: [alice-key-123]}}
  - {{id: bob, api_keys: [bob-key-456]}}
auth:
  providers:
    keys: {{type: api_key, header: X-API-Key}}
"""
ROUTES = """  - name: keyed
    match: {prefix: /keyed}
    upstream: app
    auth: {providers: [keys]}
  - name: limited
    match: {prefix: /limited}
    upstream: app
    rate_limits: [{limit: 2, window: 1m, key: ip}]
  - name: shop
    match: {prefix: /shop}
    split: [{upstream: app, weight: 3}, {upstream: canary, weight: 1}]
"""


def _config(store: str = "memory") -> str:
    return basic_config("{upstream}", extra_routes=ROUTES, extra=EXTRA + f"store: {store}\n",
                        upstream_extra='  canary: {targets: ["{upstream}"]}')


def _get(g, path: str, headers: dict | None = None) -> int:
    req = urllib.request.Request(g.url(path), headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _data(g, window: str = "60s") -> dict:
    status, body = g.get_admin(f"/dashboard/data?window={window}", token=TOKEN)
    assert status == 200, body
    return json.loads(body)


def _traffic(g) -> None:
    for _ in range(12):
        assert _get(g, "/api/x") == 200
    for _ in range(3):
        assert _get(g, "/keyed/a", {"X-API-Key": "alice-key-123"}) == 200
    assert _get(g, "/keyed/b", {"X-API-Key": "bob-key-456"}) == 200
    assert _get(g, "/keyed/c") == 401
    assert [_get(g, "/limited") for _ in range(4)] == [200, 200, 429, 429]


def test_dashboard_data_sums_the_last_seconds_of_traffic(gateway_factory, upstream):
    g = gateway_factory(_config().replace("{upstream}", upstream.url))
    _traffic(g)
    # Summaries are per whole second: wait for the seconds holding the traffic to be reported.
    data = wait_for(lambda: (d := _data(g)) and d["fleet"]["requests"] >= 21 and d, timeout=6)
    fleet = data["fleet"]
    assert fleet["requests"] == 21
    assert fleet["status"] == {"2xx": 18, "3xx": 0, "4xx": 3, "5xx": 0}
    assert fleet["rate_limited"] == 2 and fleet["auth_failures"] == 1
    assert fleet["p50_ms"] is not None and fleet["p99_ms"] >= fleet["p50_ms"]
    routes = {r["route"]: r for r in data["routes"]}
    assert routes["api"]["requests"] == 12 and routes["keyed"]["requests"] == 5 and routes["limited"]["requests"] == 4
    assert data["top_consumers"] == [{"consumer": "alice", "requests": 3}, {"consumer": "bob", "requests": 1}]
    assert data["top_denied"] == [{"client_ip": "127.0.0.1", "refusals": 3}]
    assert [u["upstream"] for u in data["upstreams"]] == ["app", "canary"]
    assert data["upstreams"][0]["circuit"] == "closed" and data["upstreams"][0]["targets"][0]["healthy"] is True
    assert sum(p["requests"] for p in data["series"]) == 21 and len(data["series"]) == 60
    assert [i["instance"] for i in data["instances"]] == [data["instance"]] and not data["fleet_wide"]


def test_dashboard_page_is_open_and_its_figures_need_the_token(gateway_factory, upstream):
    g = gateway_factory(_config().replace("{upstream}", upstream.url))
    status, page = g.get_admin("/dashboard")
    assert status == 200 and b'data-token-required="true"' in page and TOKEN.encode() not in page
    assert b"http://" not in page and b"https://" not in page   # self-contained: nothing fetched from elsewhere
    assert g.get_admin("/dashboard/data")[0] == 401
    assert g.get_admin("/dashboard/data", token="wrong")[0] == 401
    status, body = g.get_admin("/dashboard/data?window=10h", token=TOKEN)
    assert status == 400 and b"window must be" in body
    assert _data(g, "5m")["window_seconds"] == 300


def test_dashboard_is_fleet_wide_over_a_shared_redis(gateway_factory, upstream):
    redis = RedisServer().start()
    try:
        cfg = _config(redis.url).replace("{upstream}", upstream.url)
        a, b = gateway_factory(cfg, workers=2), gateway_factory(cfg)   # a supervisor of two workers, and one
        for _ in range(7):
            assert _get(a, "/api/x") == 200
        for _ in range(5):
            assert _get(b, "/exact") == 200
        data = wait_for(lambda: (d := _data(a)) and d["fleet"]["requests"] >= 12 and d, timeout=6)
        assert data["fleet_wide"] and data["store_up"]
        instances = {i["instance"]: i["requests"] for i in data["instances"]}
        assert instances == {f"{_host()}:{a.admin_port}": 7, f"{_host()}:{b.admin_port}": 5}
        assert {r["route"]: r["requests"] for r in data["routes"]} == {"api": 7, "exact": 5}
        assert _data(b)["fleet"]["requests"] == 12   # either gateway shows the fleet
        # The store goes away: each gateway still shows its own figures, and says so.
        redis.kill()
        alone = wait_for(lambda: (d := _data(a)) and not d["store_up"] and d, timeout=8)
        assert [i["instance"] for i in alone["instances"]] == [f"{_host()}:{a.admin_port}"]
        assert alone["fleet"]["requests"] == 7
    finally:
        redis.cleanup()


def _host() -> str:
    import socket

    return socket.gethostname()


# ---------------------------------------------------------------- the page in a browser
def _browser():
    chromium = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("chromium and chromedriver are missing: 'sudo apt-get install chromium chromium-driver' "
                    "(make test installs them when root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1100"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(driver))


def test_dashboard_page_in_a_real_browser(gateway_factory, upstream):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    g = gateway_factory(_config().replace("{upstream}", upstream.url))
    browser = _browser()
    stop = threading.Event()
    try:
        browser.get(f"http://127.0.0.1:{g.admin_port}/dashboard")
        assert browser.find_element(By.ID, "login").is_displayed()
        assert not browser.find_element(By.ID, "app").is_displayed()
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.ID, "connect").click()
        wait = WebDriverWait(browser, 10, poll_frequency=0.2)
        wait.until(lambda b: b.find_element(By.ID, "app").is_displayed())
        assert TOKEN not in browser.current_url

        def route_rows():
            # Read in one script: the page redraws its tables every second.
            return dict(browser.execute_script(
                "return [...document.querySelectorAll('#routes tbody tr')].filter(tr => tr.cells.length > 1)"
                ".map(tr => [tr.cells[0].textContent, tr.cells[1].textContent])"))

        def steady(path, headers=None):
            while not stop.is_set():
                _get(g, path, headers)
                time.sleep(0.02)

        threading.Thread(target=steady, args=("/api/x",), daemon=True).start()
        wait.until(lambda b: b.find_element(By.ID, "rps").text not in ("—", "0.0"))
        wait.until(lambda b: "api" in route_rows())
        first = int(route_rows()["api"])
        # More traffic, on another route too: the figures and the rows move.
        threading.Thread(target=steady, args=("/keyed/a", {"X-API-Key": "alice-key-123"}), daemon=True).start()
        wait.until(lambda b: "keyed" in route_rows() and int(route_rows()["api"]) > first)
        wait.until(lambda b: "alice" in b.find_element(By.ID, "consumers").text)
        # A split route: its sides' shares.
        threading.Thread(target=steady, args=("/shop/x",), daemon=True).start()
        wait.until(lambda b: "canary" in b.find_element(By.ID, "splits").text)
        assert "shop" in browser.find_element(By.ID, "splits").text
        assert "app" in browser.find_element(By.ID, "upstreams").text
        assert browser.find_element(By.ID, "p99").text.endswith("ms")
        os.makedirs(ARTIFACTS, exist_ok=True)
        browser.save_screenshot(os.path.join(ARTIFACTS, "dashboard.png"))
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors
    finally:
        stop.set()
        browser.quit()


def test_dashboard_shows_each_split_routes_shares(gateway_factory, upstream):
    g = gateway_factory(_config().replace("{upstream}", upstream.url))
    for _ in range(40):
        assert _get(g, "/shop/x") == 200
    data = wait_for(lambda: (d := _data(g)) and d["splits"] and sum(s["requests"] for s in d["splits"][0]["sides"])
                    >= 40 and d, timeout=6)
    (row,) = data["splits"]
    sides = {s["upstream"]: s for s in row["sides"]}
    assert row["route"] == "shop" and set(sides) == {"app", "canary"}
    assert sides["app"]["requests"] + sides["canary"]["requests"] == 40
    assert abs(sides["app"]["share"] + sides["canary"]["share"] - 1) < 0.001
    assert sides["canary"]["rollbacks"] == 0


def test_dashboard_shows_the_http2_share(gateway_factory, upstream):
    import subprocess

    g = gateway_factory(_config().replace("{upstream}", upstream.url))
    for _ in range(3):
        assert _get(g, "/api/x") == 200
    for _ in range(2):
        out = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_version}",
                              g.url("/api/x")], capture_output=True, text=True, timeout=10)
        assert out.stdout == "2"
    data = wait_for(lambda: (d := _data(g)) and d["fleet"]["requests"] >= 5 and d, timeout=6)
    assert data["fleet"]["http2_requests"] == 2 and data["fleet"]["http2_share"] == 0.4
    status, page = g.get_admin("/dashboard")
    assert b'id="http2-share"' in page
