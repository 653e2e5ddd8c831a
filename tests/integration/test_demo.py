"""`tollhouse demo` runs on its embedded config and its printed curl lines work."""
import base64
import json
import os
import shutil
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

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


@pytest.fixture
def demo():
    """A running `tollhouse demo` on free ports: (ports, what it printed)."""
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
        yield ports, "".join(lines)
    finally:
        proc.terminate()
        assert proc.wait(15) == 0


def test_every_printed_command_works(demo, tmp_path):
    """Each command line the demo prints is run as printed, by bash and the real curl;
    every response it gets has the status its comment promises, else 2xx, never 5xx."""
    _, text = demo
    commands = [line.strip() for line in text.splitlines() if line.startswith("  ") and "curl " in line]
    assert len(commands) >= 15
    # A `curl` first on PATH that runs the real one, also dumping each response head to a file.
    shim = tmp_path / "bin"
    shim.mkdir()
    real = shutil.which("curl")
    (shim / "curl").write_text(f'#!/bin/sh\nexec {real} -D "$TH_HEADS/$(date +%s%N)" "$@"\n')
    (shim / "curl").chmod(0o755)
    for i, command in enumerate(commands):
        heads = tmp_path / f"heads-{i}"
        heads.mkdir()
        out = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=30,
                             env={**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "TH_HEADS": str(heads)})
        statuses = [int(f.read_text().split()[1]) for f in sorted(heads.iterdir())]
        promised = {int(code) for code in re.findall(r"\b([1-5]\d\d)\b", command.partition("#")[2])}
        assert statuses, command
        assert all(s < 500 for s in statuses), (command, statuses, out.stdout)
        assert all(200 <= s < 300 or s in promised for s in statuses), (command, statuses)
        assert promised <= set(statuses) | {200}, (command, statuses)
        # A grep that finds nothing fails the pipeline: the headers it looks for were there.
        assert out.returncode == 0, (command, out.stdout, out.stderr)


def test_demo_serves_what_it_prints(demo):
    ports, text = demo
    urls = re.findall(r"curl -s?i? ?'?(http://127\.0\.0\.1:\d+/[^' ]*)'?", text)
    assert f"http://127.0.0.1:{ports['PORT']}/api/users/" in urls
    wait_for(lambda: status(f"http://127.0.0.1:{ports['PORT']}/api/users/") == 200)
    assert status(f"http://127.0.0.1:{ports['PORT']}/api/v1/users/1") == 200
    assert status(f"http://127.0.0.1:{ports['PORT']}/api/orders?owner=1") == 200
    assert status(f"http://127.0.0.1:{ports['PORT']}/nowhere") == 404
    h2 = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                         f"http://127.0.0.1:{ports['PORT']}/api/users/"], capture_output=True, text=True, timeout=10)
    assert "--http2-prior-knowledge" in text and h2.stdout == "2 200"
    limited = [status(f"http://127.0.0.1:{ports['PORT']}/api/limited/") for _ in range(8)]
    assert limited[0] == 200 and 429 in limited
    assert status(f"http://127.0.0.1:{ports['ADMIN_PORT']}/metrics") == 200
    dashboard = f"http://127.0.0.1:{ports['ADMIN_PORT']}/dashboard"
    assert f"open {dashboard} in a browser" in text and status(dashboard) == 200
    # GraphQL federation over the two demo services: one query, both answered.
    req = urllib.request.Request(f"http://127.0.0.1:{ports['PORT']}/graphql", headers={"Content-Type": "application/json"},
                                 data=b'{"query": "{ orders { item owner { name } } }"}')
    with urllib.request.urlopen(req, timeout=5) as r:
        assert json.loads(r.read()) == {"data": {"orders": [
            {"item": "analytical engine", "owner": {"name": "Ada Lovelace"}},
            {"item": "compiler", "owner": {"name": "Grace Hopper"}},
            {"item": "api gateway", "owner": {"name": "Demo Consumer"}}]}}
    assert "/graphql" in text
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
    me = f"http://127.0.0.1:{ports['PORT']}/api/me"
    assert f"{me}   # profile and orders" in text
    with urllib.request.urlopen(urllib.request.Request(me, headers={"X-API-Key": "demo-key-123"}), timeout=5) as r:
        assert r.headers["x-aggregate-complete"] == "true"
        assert json.loads(r.read()) == {"profile": {"id": "demo", "name": "Demo Consumer"},
                                        "orders": [{"id": "o-3", "owner": "demo", "item": "api gateway"}]}
    form = b"grant_type=client_credentials"
    req = urllib.request.Request(f"http://127.0.0.1:{ports['PORT']}/oauth/token", data=form, headers={
        "Authorization": "Basic " + base64.b64encode(b"demo-cli:demo-secret").decode(),
        "Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(req, timeout=5) as r:
        access = json.loads(r.read())["access_token"]
    assert status_with(private, {"Authorization": f"Bearer {access}"}) == 200


def test_the_runtime_consumer_commands_of_docs_auth_work(demo):
    """docs/auth.md's "Consumers at run time" commands, run as written against the demo
    (its ports substituted), in one shell: a consumer, a key, its listing, a call with it."""
    ports, _ = demo
    text = open(os.path.join(ROOT, "docs", "auth.md"), encoding="utf-8").read()
    block = re.search(r"## Consumers at run time.*?```sh\n(.*?)```", text, re.S).group(1)
    script = block.replace("localhost:9901", f"127.0.0.1:{ports['ADMIN_PORT']}").replace(
        "localhost:8080", f"127.0.0.1:{ports['PORT']}")
    wait_for(lambda: status(f"http://127.0.0.1:{ports['PORT']}/api/users/") == 200)
    out = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, (out.stdout, out.stderr)
    decoder, rest = json.JSONDecoder(), out.stdout   # two JSON answers (no newline after them), then the code
    created, at = decoder.raw_decode(rest)
    listing, end = decoder.raw_decode(rest, at)
    assert created["id"] == "acme" and listing["keys"][0]["name"] == "ci"
    assert rest[end:].strip() == "200"
