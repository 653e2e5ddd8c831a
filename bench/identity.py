"""Identity benchmarks (docs/auth.md, docs/benchmarks.md), one gateway on the proxy core with a
Redis store, wrk and the upstream on the load core, alternating rounds:

- an API-key route called with a key made at run time through the admin listener (its
  consumer in Redis) against the same route called with a key of the config file
  (aim: >= 0.95x);
- a route behind an OpenID Connect session (a real oidc-provider login made once,
  then its session cookie) against the plain route (aim: >= 0.9x).
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import run as bench  # noqa: E402
from tests.support import openid  # noqa: E402


def _route(name: str, prefix: str, providers: str) -> str:
    return f"""  - name: {name}
    match: {{prefix: {prefix}}}
    upstream: bench
    strip_prefix: true
    auth: {{providers: [{providers}]}}
"""


def run(workdir: str, upstream_port: int) -> dict | None:
    if not openid.available():
        print("  identity: oidc-provider is not installed (make test installs it); skipped", flush=True)
        return None
    redis, redis_port = bench.start_redis()
    provider = openid.OpenIdProvider()
    th = None
    try:
        # The provider starts after the gateway (its callback URL names the gateway's port): the
        # gateway's discovery retries until it answers.
        extra = f"""store: redis://127.0.0.1:{redis_port}/0
consumers:
  - {{id: filed, api_keys: [file-key-0123456789]}}
auth:
  providers:
    keys: {{type: api_key, header: X-API-Key}}
    sso: {{type: oidc, issuer: {provider.issuer}, client_id: gateway, client_secret: gateway-secret}}
"""
        th = bench.Tollhouse(workdir, upstream_port, bench.PROXY_CPUS, extra=extra,
                             route_extra=_route("keys", "/keys", "keys") + _route("sso", "/sso", "sso"))
        origin = f"http://127.0.0.1:{th.port}"
        provider.start([origin + "/auth/callback"], [origin + "/"])
        admin = f"http://127.0.0.1:{th.admin_port}"
        for path, body in (("/consumers", {"id": "runtime"}), ("/consumers/runtime/keys", {})):
            req = urllib.request.Request(admin + path, data=json.dumps(body).encode(), method="POST")
            with urllib.request.urlopen(req, timeout=5) as r:
                made = json.loads(r.read())
        runtime_key = made["key"]
        browser = openid.Browser()
        status, headers, _ = browser.request(origin + "/sso/")
        status, headers, _ = browser.request(browser.follow_provider(openid.location(headers), "bench"))
        session = browser.cookie(f"127.0.0.1:{th.port}", "th_session")
        assert status == 302 and session, "the benchmark's login failed"
        html = "Accept: text/html"
        targets = {
            "file key": ("/keys/", ["X-API-Key: file-key-0123456789"]),
            "runtime key": ("/keys/", [f"X-API-Key: {runtime_key}"]),
            "plain": ("/", [html]),
            "oidc session": ("/sso/", [html, f"Cookie: th_session={session}"]),
        }
        for path, headers in targets.values():   # warm-up (and a check that each answers 2xx)
            r = bench.wrk(th.port, path, bench.CONNS, 1, headers)
            assert r.get("non2xx", 0) == 0, (path, r)
        rows: dict = {name: [] for name in targets}
        for rnd in range(bench.ROUNDS):
            for name, (path, headers) in targets.items():
                rows[name].append(bench.wrk(th.port, path, bench.CONNS, bench.DURATION, headers))
            print(f"  round {rnd + 1}/{bench.ROUNDS}: runtime/file key "
                  f"{rows['runtime key'][-1]['rps'] / rows['file key'][-1]['rps']:.2f}, oidc session/plain "
                  f"{rows['oidc session'][-1]['rps'] / rows['plain'][-1]['rps']:.2f}", flush=True)
    finally:
        if th is not None:
            th.stop()
        provider.stop()
        redis.terminate()
        redis.wait()
    out = {name: statistics.median(r["rps"] for r in runs) for name, runs in rows.items()}
    out["non2xx"] = sum(r.get("non2xx", 0) for runs in rows.values() for r in runs)
    out["keys"] = bench.round_ratios(rows["runtime key"], rows["file key"])
    out["oidc"] = bench.round_ratios(rows["oidc session"], rows["plain"])
    return out


def render(r: dict | None) -> list[str]:
    if r is None:
        return []
    return ["", f"Identity, Redis store, {bench.CONNS} connections:", "",
            "| route | req/s | against | req/s | ratio (aim) |", "|---|---|---|---|---|",
            f"| API key made at run time (Redis) | {r['runtime key']:.0f} | key in the config file | "
            f"{r['file key']:.0f} | {bench.spread(r['keys'])} (≥ 0.95) |",
            f"| OpenID Connect session | {r['oidc session']:.0f} | plain route | {r['plain']:.0f} | "
            f"{bench.spread(r['oidc'])} (≥ 0.9) |",
            "", f"non-2xx answers: {r['non2xx']}"]


def main() -> int:
    import tempfile

    workdir = tempfile.mkdtemp(prefix="tollhouse-bench-identity-")
    upstream, upstream_port = bench.start_upstream(workdir)
    try:
        print("\n".join(render(run(workdir, upstream_port))))
    finally:
        upstream.terminate()
        upstream.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
