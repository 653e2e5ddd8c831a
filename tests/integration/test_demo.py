"""`tollhouse demo` runs on its embedded config and its printed curl lines work."""
import base64
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

from tests.support.processes import ROOT, free_port, wait_for


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def status_with(url: str, headers: dict) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_demo_serves_what_it_prints():
    ports = {k: str(free_port()) for k in ("PORT", "ADMIN_PORT", "USERS_PORT", "ORDERS_PORT")}
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src"),
           **{f"TOLLHOUSE_DEMO_{k}": v for k, v in ports.items()}}
    proc = subprocess.Popen([sys.executable, "-m", "tollhouse", "demo"], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, env=env, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if "Ctrl-C" in line:
                break
        text = "".join(lines)
        urls = re.findall(r"curl -s?i? ?'?(http://127\.0\.0\.1:\d+/[^' ]*)'?", text)
        assert f"http://127.0.0.1:{ports['PORT']}/api/users/" in urls
        wait_for(lambda: status(f"http://127.0.0.1:{ports['PORT']}/api/users/") == 200)
        assert status(f"http://127.0.0.1:{ports['PORT']}/api/v1/users/1") == 200
        assert status(f"http://127.0.0.1:{ports['PORT']}/api/orders?owner=1") == 200
        assert status(f"http://127.0.0.1:{ports['PORT']}/nowhere") == 404
        limited = [status(f"http://127.0.0.1:{ports['PORT']}/api/limited/") for _ in range(8)]
        assert limited[0] == 200 and 429 in limited
        assert status(f"http://127.0.0.1:{ports['ADMIN_PORT']}/metrics") == 200
        cached = f"http://127.0.0.1:{ports['PORT']}/api/cached/1"
        assert cached in urls
        seen = []
        for _ in range(2):
            with urllib.request.urlopen(cached, timeout=5) as r:
                seen.append(r.headers["x-cache-status"])
        assert seen == ["MISS", "HIT"]
        private = f"http://127.0.0.1:{ports['PORT']}/api/private/1"
        assert status(private) == 401
        bearer = re.search(r"Authorization: Bearer ([\w.-]+)", text).group(1)
        assert status_with(private, {"Authorization": f"Bearer {bearer}"}) == 200
        assert status_with(private, {"X-API-Key": "demo-key-123"}) == 200
        form = b"grant_type=client_credentials"
        req = urllib.request.Request(f"http://127.0.0.1:{ports['PORT']}/oauth/token", data=form, headers={
            "Authorization": "Basic " + base64.b64encode(b"demo-cli:demo-secret").decode(),
            "Content-Type": "application/x-www-form-urlencoded"})
        with urllib.request.urlopen(req, timeout=5) as r:
            access = json.loads(r.read())["access_token"]
        assert status_with(private, {"Authorization": f"Bearer {access}"}) == 200
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
