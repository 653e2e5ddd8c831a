"""WAF benchmark (docs/waf.md, docs/benchmarks.md): Tollhouse with the WAF (ModSecurity v3 +
CRS 3.3.4 at paranoia 1) against nginx with Debian's libnginx-mod-http-modsecurity and the
same CRS, and against Tollhouse without the WAF (a `waf: off` route of the same gateway),
each proxy on the proxy core, wrk and the upstream on the load core, alternating rounds.

Traffic: benign GETs with query arguments, and JSON POSTs of about 1 KiB, with the headers a
browser sends (the CRS scores a request without User-Agent or Accept). Every answer must be
2xx on both sides: the same verdict (pass) on every request.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import run as bench  # noqa: E402
from tests.support import modsecurity  # noqa: E402

HEADERS = ["Host: shop.example", "User-Agent: Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0",
           "Accept: text/html,application/json;q=0.9,*/*;q=0.8", "Accept-Language: en-GB,en;q=0.5"]
GET_PATH = "/search?q=running+shoes&size=42&colour=blue&page=2&sort=price"
BODY = json.dumps({"order": {"items": [{"sku": f"SKU-{i:04d}", "qty": i % 3 + 1, "note": "gift wrap, no receipt"}
                                       for i in range(12)], "address": {"street": "1 Long Road", "city": "London",
                                                                        "postcode": "N1 9GU"}}})


def nginx_modsecurity(workdir: str, upstream_port: int) -> tuple[subprocess.Popen, int]:
    """nginx + ModSecurity with the same base configuration and CRS as Tollhouse."""
    port = bench.free_port()
    conf = modsecurity.nginx_conf(workdir, port, upstream_port)
    proc = subprocess.Popen(["taskset", "-c", bench.PROXY_CPUS, "nginx", "-c", conf, "-p", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bench.wait_port(port)
    return proc, port


def wrk_post(port: int, path: str, seconds: int, script: str) -> dict:
    cmd = ["taskset", "-c", bench.LOAD_CPUS, "wrk", "-t1", f"-c{bench.CONNS}", f"-d{seconds}s", "-s", script]
    for h in HEADERS:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True).stdout
    rps = float(out.split("Requests/sec:")[1].split()[0])
    bad = out.split("Non-2xx or 3xx responses:")[1].split()[0] if "Non-2xx" in out else "0"
    return {"rps": rps, "non2xx": int(bad)}


def run(workdir: str, upstream_port: int) -> dict:
    nginx, nginx_port = nginx_modsecurity(workdir, upstream_port)
    th = bench.Tollhouse(workdir, upstream_port, bench.PROXY_CPUS, extra="waf: {paranoia: 1}", route_extra="""  - name: nowaf
    match: {prefix: /nowaf}
    upstream: bench
    strip_prefix: true
    waf: off
""")
    script = os.path.join(workdir, "post.lua")
    with open(script, "w") as f:
        f.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(BODY)}\n'
                'wrk.headers["Content-Type"] = "application/json"\n')
    results: dict = {kind: {"nginx": [], "waf": [], "plain": []} for kind in ("get", "post")}
    try:
        targets = {"nginx": (nginx_port, ""), "waf": (th.port, ""), "plain": (th.port, "/nowaf")}
        for port, prefix in targets.values():   # warm-up
            bench.wrk(port, prefix + GET_PATH, bench.CONNS, 1, HEADERS)
        for rnd in range(bench.ROUNDS):
            for name, (port, prefix) in targets.items():
                results["get"][name].append(bench.wrk(port, prefix + GET_PATH, bench.CONNS, bench.DURATION, HEADERS))
                results["post"][name].append(wrk_post(port, prefix + "/orders", bench.DURATION, script))
            print(f"  round {rnd + 1}/{bench.ROUNDS}: GET waf/nginx+modsec "
                  f"{results['get']['waf'][-1]['rps'] / results['get']['nginx'][-1]['rps']:.2f}, POST "
                  f"{results['post']['waf'][-1]['rps'] / results['post']['nginx'][-1]['rps']:.2f}", flush=True)
    finally:
        th.stop()
        nginx.terminate()
        nginx.wait()
    out = {}
    for kind, rows in results.items():
        out[kind] = {name: statistics.median(r["rps"] for r in runs) for name, runs in rows.items()}
        out[kind]["non2xx"] = {name: sum(r["non2xx"] for r in runs) for name, runs in rows.items()}
        out[kind]["ratios"] = [a["rps"] / b["rps"] for a, b in zip(rows["waf"], rows["nginx"])]
    return out


def render(r: dict) -> list[str]:
    lines = ["", "WAF (ModSecurity v3 + CRS 3.3.4, paranoia 1), benign traffic, "
             f"{bench.CONNS} connections; nginx with libnginx-mod-http-modsecurity and the same rules:", "",
             "| traffic | nginx + ModSecurity req/s | Tollhouse + WAF req/s | ratio (aim ≥ 2) | Tollhouse, no WAF | non-2xx |",
             "|---|---|---|---|---|---|"]
    for kind, label in (("get", "GET with query arguments"), ("post", "JSON POST, ~1 KiB")):
        x = r[kind]
        lines.append(f"| {label} | {x['nginx']:.0f} | {x['waf']:.0f} | {bench.spread(x['ratios'])} | {x['plain']:.0f} | "
                     f"{sum(x['non2xx'].values())} |")
    return lines


def main() -> int:
    workdir = tempfile.mkdtemp(prefix="tollhouse-bench-waf-")
    upstream, upstream_port = bench.start_upstream(workdir)
    try:
        r = run(workdir, upstream_port)
    finally:
        upstream.terminate()
        upstream.wait()
    print("\n".join(render(r)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
