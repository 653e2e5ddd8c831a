"""Side-by-side benchmark: Tollhouse vs nginx as a reverse proxy, one run.

Layout (2 cores): the proxy under test is pinned to core 0; wrk and the
nginx upstream (a fixed ~300-byte JSON) share core 1. Rounds alternate the
targets (direct, nginx proxy, tollhouse, ...) and are repeated; each req/s,
p50 and p99 is the median over rounds, each ratio the median of the rounds'
ratios (runs seconds apart), with its lowest and highest. Results print as a table and are written to
docs/benchmarks.md (between the BENCH markers).

Environment: BENCH_DURATION (seconds per wrk run, default 3), BENCH_ROUNDS
(default 5), BENCH_CONNECTIONS (default 50), BENCH_SCENARIOS (comma list,
default all), BENCH_PROXY_CPUS / BENCH_LOAD_CPUS (default 0 / 1),
BENCH_WORKERS (comma list of worker counts for the scaling table, default
none; needs more cores), BENCH_NO_WRITE=1 to leave the docs alone,
BENCH_SKIP_CORE=1 to run only the scenarios (printed, not written),
BENCH_SKIP_CACHE_LATENCY=1 to skip the 20 ms-upstream cache latency run,
BENCH_SKIP_CHAIN=1 to skip the full chain (JWT + Redis limit) vs nginx run,
BENCH_SKIP_PROTOCOLS=1 to skip the WebSocket and gRPC runs, BENCH_SKIP_HTTP2=1 to skip
the HTTP/2 runs (bench/http2.py), BENCH_SKIP_WAF=1 to skip the WAF runs (bench/waf.py),
BENCH_SKIP_IDENTITY=1 to skip the runtime-key and OpenID-session runs (bench/identity.py),
BENCH_SKIP_GRAPHQL=1 to skip GraphQL federation against Hive Gateway (bench/federation.py),
BENCH_SKIP_OVERLOAD=1 to skip adaptive concurrency under overload (bench/overload.py, which also
redraws docs/img/adaptive-limit.png).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DURATION = int(os.environ.get("BENCH_DURATION", "3"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
CONNS = int(os.environ.get("BENCH_CONNECTIONS", "50"))
PROXY_CPUS = os.environ.get("BENCH_PROXY_CPUS", "0")
LOAD_CPUS = os.environ.get("BENCH_LOAD_CPUS", "1")
PAYLOAD = ('{"id":12345,"name":"Ada Lovelace","email":"ada@example.com","roles":["admin","author"],'
           '"created":"2026-01-01T00:00:00Z","plan":"premium","quota":{"requests":600,"window":"1m"},'
           '"tags":["math","engines","poetry"],"address":{"city":"London","country":"UK"},'
           '"bio":"First to publish an algorithm intended for a machine.","active":true}')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def nginx_conf(workdir: str, body: str) -> str:
    path = os.path.join(workdir, f"nginx-{abs(hash(body))}.conf")
    with open(path, "w") as f:
        f.write(f"""worker_processes 1;
daemon off;
pid {path}.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  {body}
}}
""")
    return path


def start_nginx(workdir: str, body: str, cpus: str) -> subprocess.Popen:
    conf = nginx_conf(workdir, body)
    return subprocess.Popen(["taskset", "-c", cpus, "nginx", "-c", conf, "-p", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_upstream(workdir: str) -> tuple[subprocess.Popen, int]:
    """The benchmark's upstream: nginx answering PAYLOAD, on the load cores; (process, port)."""
    port = free_port()
    proc = start_nginx(workdir, f"""
  server {{
    listen 127.0.0.1:{port};
    location / {{ default_type application/json; return 200 '{PAYLOAD}'; }}
  }}""", LOAD_CPUS)
    wait_port(port)
    return proc, port


def start_redis() -> tuple[subprocess.Popen, int]:
    """A throwaway redis-server on the load cores; (process, port)."""
    if not shutil.which("redis-server"):
        sys.exit("redis-server is not installed (make test installs it when run as root)")
    port = free_port()
    proc = subprocess.Popen(["taskset", "-c", LOAD_CPUS, "redis-server", "--port", str(port), "--save", "",
                             "--appendonly", "no", "--dir", tempfile.gettempdir()], stdout=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if m is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(port: int, path: str, connections: int, duration: int, headers: list[str] = ()) -> dict:
    cmd = ["taskset", "-c", LOAD_CPUS, "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(f"http://127.0.0.1:{port}{path}")
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    if "50%" not in out:
        raise RuntimeError(f"wrk failed against port {port}:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    # The latency distribution lines, e.g. "     50%  801.00us" (anchored: "67.99%" elsewhere).
    p50 = _ms(re.search(r"(?m)^\s+50%\s+(\S+)", out).group(1))
    p99 = _ms(re.search(r"(?m)^\s+99%\s+(\S+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": p50, "p99": p99, "non2xx": int(errors.group(1)) if errors else 0}


def tollhouse_config(port: int, admin_port: int, upstream_port: int, workers: int = 1, extra: str = "",
                     route_extra: str = "", upstreams_extra: str = "") -> str:
    return f"""listen: 127.0.0.1:{port}
workers: {workers}
admin: {{listen: "127.0.0.1:{admin_port}"}}
access_log: true
{extra}
upstreams:
  bench:
    targets: ["http://127.0.0.1:{upstream_port}"]
    max_connections: 1024
  bench-canary:   # the same upstream under a second name: the split scenarios' other side
    targets: ["http://127.0.0.1:{upstream_port}"]
    max_connections: 1024
{upstreams_extra}
routes:
  - name: plain
    match: {{prefix: /}}
    upstream: bench
{route_extra}
"""


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the benchmark dies (a killed run must not leave
    gateways behind, least of all a busy_polling one spinning on the proxy core)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG


class Tollhouse:
    def __init__(self, workdir: str, upstream_port: int, cpus: str, workers: int = 1, extra: str = "",
                 route_extra: str = "", root: str = ROOT, upstreams_extra: str = "", access_log: str | None = None):
        self.port = free_port()
        self.admin_port = free_port()
        path = os.path.join(workdir, f"tollhouse-{self.port}.yaml")
        with open(path, "w") as f:
            f.write(tollhouse_config(self.port, self.admin_port, upstream_port, workers, extra, route_extra,
                                     upstreams_extra))
        env = {**os.environ, "PYTHONPATH": os.path.join(root, "src"), "TOLLHOUSE_LOG_LEVEL": "WARNING"}
        self.log = open(os.path.join(workdir, f"tollhouse-{self.port}.log"), "wb")
        # `access_log`: a file for the access log (stdout), for a benchmark that reads it.
        self.access = open(access_log, "wb") if access_log else None
        self.proc = subprocess.Popen(["taskset", "-c", cpus, sys.executable, "-m", "tollhouse", "run", "-c", path],
                                     stdout=self.access or subprocess.DEVNULL, stderr=self.log, env=env,
                                     preexec_fn=_die_with_parent)
        wait_port(self.port)
        wait_port(self.admin_port)

    def signal_all(self, sig: int) -> None:
        """`sig` to the gateway's process and its workers."""
        children = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        for pid in [self.proc.pid, *map(int, children)]:
            os.kill(pid, sig)

    def stop(self):
        try:
            self.signal_all(signal.SIGCONT)   # a stopped gateway cannot act on SIGTERM
        except ProcessLookupError:
            pass
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        if self.access is not None:
            self.access.close()


def median_result(results: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in results) for k in results[0]}


def round_ratios(these: list[dict], those: list[dict]) -> list[float]:
    """req/s ratios of runs made side by side, round by round: this machine's
    speed drifts by tens of percent within minutes, and a ratio of runs made
    seconds apart is steadier than a ratio of medians taken over the whole run."""
    return [a["rps"] / b["rps"] for a, b in zip(these, those)]


def spread(ratios: list[float]) -> str:
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})"


def start_nginx_proxy(workdir: str, upstream_port: int) -> tuple[subprocess.Popen, int]:
    """nginx as the reference reverse proxy, on the proxy cores; (process, port)."""
    nginx_port = free_port()
    proxy = start_nginx(workdir, f"""
  upstream backend {{ server 127.0.0.1:{upstream_port}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{nginx_port};
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}""", PROXY_CPUS)
    wait_port(nginx_port)
    return proxy, nginx_port


def run_core(workdir: str, upstream_port: int) -> dict:
    proxy, nginx_port = start_nginx_proxy(workdir, upstream_port)
    th = Tollhouse(workdir, upstream_port, PROXY_CPUS)
    # The same gateway with busy_polling: its worker never sleeps in the poller (latency for a core).
    # Stopped (SIGSTOP) except in its own runs: polling, it would take the proxy core from the others.
    busy = Tollhouse(workdir, upstream_port, PROXY_CPUS, extra="busy_polling: true")
    busy.signal_all(signal.SIGSTOP)
    targets = {"direct": upstream_port, "nginx": nginx_port, "tollhouse": th.port, "tollhouse, busy_polling": busy.port}
    results: dict[str, dict[str, list]] = {name: {"c": [], "one": []} for name in targets}

    def measure(name: str, port: int, connections: int, seconds: int) -> dict:
        if name == "tollhouse, busy_polling":
            busy.signal_all(signal.SIGCONT)
        try:
            return wrk(port, "/", connections, seconds)
        finally:
            if name == "tollhouse, busy_polling":
                busy.signal_all(signal.SIGSTOP)

    try:
        for name, port in targets.items():  # warm-up
            measure(name, port, CONNS, 1)
        for rnd in range(ROUNDS):
            for name, port in targets.items():
                results[name]["c"].append(measure(name, port, CONNS, DURATION))
                results[name]["one"].append(measure(name, port, 1, max(2, DURATION // 2)))
            print(f"  round {rnd + 1}/{ROUNDS}: " + ", ".join(
                f"{n} {results[n]['c'][-1]['rps']:.0f} req/s" for n in targets)
                + f"; tollhouse/nginx {results['tollhouse']['c'][-1]['rps'] / results['nginx']['c'][-1]['rps']:.2f}",
                flush=True)
    finally:
        th.stop()
        busy.stop()
        proxy.terminate()
        proxy.wait()
    return {name: {"c": median_result(r["c"]), "one": median_result(r["one"]),
                   "ratios": round_ratios(r["c"], results["nginx"]["c"])} for name, r in results.items()}


SCENARIOS: dict[str, dict] = {}


def scenario(name: str, description: str, extra: str = "", route_extra: str = "", path: str = "/",
             headers: tuple = (), needs_redis: bool = False, setup=None, gateway_wide: bool = False):
    """`setup(workdir)`, when given, returns (extra, headers) computed at run time.
    `gateway_wide`: the setting applies to every route (tracing), so the reference is
    the plain route of a second gateway without it, alternating on the same core."""
    SCENARIOS[name] = dict(description=description, extra=extra, route_extra=route_extra, path=path,
                           headers=headers, needs_redis=needs_redis, setup=setup, gateway_wide=gateway_wide)


RATE_LIMITED_ROUTE = """  - name: limited
    match: {prefix: /rl}
    upstream: bench
    rate_limits: [{limit: 100000000, window: 1m, key: ip}]
"""
scenario("ratelimit-redis", "per-IP sliding window in Redis, never rejecting",
         extra="store: redis://127.0.0.1:{redis_port}/0", route_extra=RATE_LIMITED_ROUTE, path="/rl",
         needs_redis=True)
scenario("ratelimit-memory", "per-IP sliding window in memory, never rejecting",
         route_extra=RATE_LIMITED_ROUTE, path="/rl")


def _jwt_setup(workdir: str):
    """An RS256 key pair: the public half for the gateway, one token reused by wrk (as real clients do)."""
    sys.path.insert(0, os.path.join(ROOT, "src"))
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from tollhouse.policies.auth.tokens import mint

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = os.path.join(workdir, "bench-rs256.pem")
    public = os.path.join(workdir, "bench-rs256.pub.pem")
    with open(private, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(public, "wb") as f:
        f.write(key.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    token = mint(key_file=private, subject="bench", scope="bench:read", ttl="1d")
    extra = f"auth:\n  providers:\n    corp: {{type: jwt, algorithms: [RS256], public_key: {public}}}\n"
    return extra, (f"Authorization: Bearer {token}",)


scenario("jwt-rs256", "RS256 JWT auth (one token reused), scope required", path="/jwt",
         route_extra="""  - name: jwt
    match: {prefix: /jwt}
    upstream: bench
    auth: {providers: [corp], scopes: [bench:read]}
""", setup=_jwt_setup)


CACHED_ROUTE = """  - name: cached
    match: {prefix: /cached}
    upstream: bench
    cache: {ttl: 1h}
"""
scenario("cache-memory", "cache hits from the memory LRU", route_extra=CACHED_ROUTE, path="/cached")
scenario("cache-redis", "cache hits from Redis", extra="store: redis://127.0.0.1:{redis_port}/0",
         route_extra=CACHED_ROUTE, path="/cached", needs_redis=True)

_SINK = []


def _trace_sink() -> int:
    """A minimal OTLP/HTTP endpoint on the load core that accepts every batch (started once)."""
    if not _SINK:
        import atexit

        port = free_port()
        code = ("import http.server as h\n"
                "class H(h.BaseHTTPRequestHandler):\n"
                "    def do_POST(self):\n"
                "        self.rfile.read(int(self.headers['content-length']))\n"
                "        self.send_response(200); self.send_header('content-length', '0'); self.end_headers()\n"
                "    def log_message(self, *a): pass\n"
                f"h.ThreadingHTTPServer(('127.0.0.1', {port}), H).serve_forever()\n")
        proc = subprocess.Popen(["taskset", "-c", LOAD_CPUS, sys.executable, "-c", code])
        atexit.register(proc.terminate)
        wait_port(port)
        _SINK.append(port)
    return _SINK[0]


def _tracing(sampler: str):
    def setup(workdir: str):
        return (f"tracing: {{endpoint: 'http://127.0.0.1:{_trace_sink()}/v1/traces', sampler: {sampler}}}\n", ())
    return setup


scenario("tracing-1pct", "OpenTelemetry tracing, ratio 0.01 (vs a gateway without tracing)", path="/plain",
         setup=_tracing("{type: ratio, ratio: 0.01}"), gateway_wide=True)
scenario("tracing-always", "OpenTelemetry tracing, every request (vs a gateway without tracing)", path="/plain",
         setup=_tracing("{type: always_on}"), gateway_wide=True)

SLOW_MS = 20


AGGREGATE_ROUTE = """  - name: aggregate
    match: {path: /agg}
    aggregate:
      backends:
        first: {upstream: bench, path: /a}
        second: {upstream: bench, path: /b}
"""
scenario("aggregate-2", "aggregate route over two backends on the nginx upstream (aim: >= 0.5x, two proxied "
         "requests)", route_extra=AGGREGATE_ROUTE, path="/agg")


CHAIN_ROUTE = """  - name: chain
    match: {prefix: /chain}
    upstream: bench
    auth: {providers: [corp], scopes: [bench:read]}
    rate_limits: [{limit: 100000000, window: 1m, key: consumer}]
"""


SPLIT_ROUTE = """  - name: split
    match: {prefix: /split}
    split: [{upstream: bench, weight: 90}, {upstream: bench-canary, weight: 10}]
    sticky: consumer
"""
scenario("split", "a 90/10 split, sticky by consumer (aim: >= 0.95x)", route_extra=SPLIT_ROUTE, path="/split")
scenario("split-mirror", "the same split with a 5 % mirror to the upstream (aim: >= 0.85x)",
         route_extra=SPLIT_ROUTE + "    mirror: {upstream: bench-canary, percent: 5}\n", path="/split")


def _chain_setup(workdir: str):
    auth, headers = _jwt_setup(workdir)
    return auth + "store: redis://127.0.0.1:{redis_port}/0\n", headers


scenario("chain", "the full chain (RS256 JWT, a Redis limit per consumer) vs the plain route (bench/ab.py's "
         "measure of the chain; the run against nginx is run_chain)", route_extra=CHAIN_ROUTE, path="/chain",
         needs_redis=True, setup=_chain_setup)


def run_chain(workdir: str, upstream_port: int) -> dict:
    """The full chain (RS256 JWT, a Redis rate limit per consumer, metrics, the access log)
    vs nginx proxying the same requests, alternating rounds; the plain route is shown beside."""
    auth, headers = _jwt_setup(workdir)
    redis, rport = start_redis()
    proxy, nginx_port = start_nginx_proxy(workdir, upstream_port)
    th = Tollhouse(workdir, upstream_port, PROXY_CPUS, extra=auth + f"store: redis://127.0.0.1:{rport}/0\n",
                   route_extra=CHAIN_ROUTE)
    results: dict[str, list] = {"nginx": [], "chain": [], "plain": []}
    try:
        wrk(th.port, "/chain", CONNS, 1, list(headers))
        for _ in range(ROUNDS):
            results["nginx"].append(wrk(nginx_port, "/chain", CONNS, DURATION, list(headers)))
            results["chain"].append(wrk(th.port, "/chain", CONNS, DURATION, list(headers)))
            results["plain"].append(wrk(th.port, "/plain", CONNS, DURATION, list(headers)))
    finally:
        th.stop()
        proxy.terminate()
        proxy.wait()
        redis.terminate()
        redis.wait()
    found = {name: median_result(r) for name, r in results.items()}
    found["ratios"] = round_ratios(results["chain"], results["nginx"])
    found["plain_ratios"] = round_ratios(results["chain"], results["plain"])
    print(f"  full chain: {found['chain']['rps']:.0f} req/s vs nginx {found['nginx']['rps']:.0f}: "
          f"{spread(found['ratios'])}x nginx, {spread(found['plain_ratios'])}x the plain route "
          f"(non-2xx {found['chain']['non2xx']:.0f})", flush=True)
    return found


def run_aggregate_latency(workdir: str, upstream_port: int) -> dict:
    """p50 at one connection: the aggregate route (two backends on the same upstream) vs the
    plain route to that upstream alone, alternating rounds on one gateway."""
    th = Tollhouse(workdir, upstream_port, PROXY_CPUS, route_extra=AGGREGATE_ROUTE)
    try:
        wrk(th.port, "/agg", 1, 1)
        plain, agg = [], []
        for _ in range(ROUNDS):
            plain.append(wrk(th.port, "/plain", 1, DURATION))
            agg.append(wrk(th.port, "/agg", 1, DURATION))
    finally:
        th.stop()
    p, a = median_result(plain), median_result(agg)
    added = [x["p50"] - y["p50"] for x, y in zip(agg, plain)]
    print(f"  aggregate latency at 1 connection: p50 plain {p['p50']:.3f} ms, aggregate {a['p50']:.3f} ms, "
          f"added {statistics.median(added):.3f} ms [{min(added):.3f}-{max(added):.3f}]", flush=True)
    return {"plain": p, "aggregate": a, "added": added}


def run_cache_latency(workdir: str) -> dict:
    """p50 through a route to an upstream taking SLOW_MS, uncached (/) vs cached (/cached), 10 connections."""
    port = free_port()
    slow = subprocess.Popen(["taskset", "-c", LOAD_CPUS, sys.executable, os.path.join(ROOT, "bench", "slow_upstream.py"),
                             str(port), str(SLOW_MS)])
    wait_port(port)
    th = Tollhouse(workdir, port, PROXY_CPUS, route_extra=CACHED_ROUTE)
    try:
        wrk(th.port, "/cached", 10, 1)
        uncached = median_result([wrk(th.port, "/", 10, DURATION) for _ in range(ROUNDS)])
        cached = median_result([wrk(th.port, "/cached", 10, DURATION) for _ in range(ROUNDS)])
    finally:
        th.stop()
        slow.terminate()
        slow.wait()
    cut = 1 - cached["p50"] / uncached["p50"]
    print(f"  cache latency: p50 uncached {uncached['p50']:.3f} ms, cached {cached['p50']:.3f} ms: cut {cut:.1%}",
          flush=True)
    return {"uncached": uncached, "cached": cached, "cut": cut}


def run_scenarios(workdir: str, upstream_port: int, selected: list[str]) -> list[tuple]:
    """Each scenario route vs the plain route on the same Tollhouse, alternating,
    with identical requests: the ratio is the policy's cost alone."""
    rows = []
    for name in selected:
        sc = SCENARIOS[name]
        redis = None
        extra = sc["extra"]
        if sc["setup"] is not None:
            extra, headers = sc["setup"](workdir)
            sc = {**sc, "headers": headers}
        if sc["needs_redis"]:
            redis, rport = start_redis()
            extra = extra.replace("{redis_port}", str(rport))
        th = Tollhouse(workdir, upstream_port, PROXY_CPUS, extra=extra, route_extra=sc["route_extra"])
        # The reference: the plain route of this gateway, or of one without the setting.
        ref = Tollhouse(workdir, upstream_port, PROXY_CPUS) if sc["gateway_wide"] else th
        try:
            wrk(th.port, sc["path"], CONNS, 1, list(sc["headers"]))
            plain, policy = [], []
            for _ in range(ROUNDS):
                # The same requests (headers included) to a route without the policy.
                plain.append(wrk(ref.port, "/plain", CONNS, DURATION, list(sc["headers"])))
                policy.append(wrk(th.port, sc["path"], CONNS, DURATION, list(sc["headers"])))
            p, q = median_result(plain), median_result(policy)
            ratios = round_ratios(policy, plain)
            rows.append((name, sc["description"], p["rps"], q["rps"], ratios, q["non2xx"]))
            print(f"  {name}: {q['rps']:.0f} vs plain {p['rps']:.0f} req/s, ratio {spread(ratios)}x", flush=True)
        finally:
            th.stop()
            if ref is not th:
                ref.stop()
            if redis is not None:
                redis.terminate()
                redis.wait()
    return rows


def run_scaling(workdir: str, upstream_port: int, counts: list[int]) -> list[tuple]:
    rows = []
    for n in counts:
        th = Tollhouse(workdir, upstream_port, PROXY_CPUS, workers=n)
        try:
            time.sleep(1)
            wrk(th.port, "/", CONNS * n, 1)
            r = median_result([wrk(th.port, "/", CONNS * n, DURATION) for _ in range(ROUNDS)])
            rows.append((n, r["rps"]))
            print(f"  workers={n}: {r['rps']:.0f} req/s", flush=True)
        finally:
            th.stop()
    return rows


def render(core: dict, scenario_rows: list[tuple], scaling: list[tuple], env: str, latency: dict | None = None,
           fanout: dict | None = None, protocols: dict | None = None, chain: dict | None = None,
           http2: list | None = None) -> str:
    ng = core["nginx"]
    direct = core["direct"]
    lines = [f"Measured {time.strftime('%Y-%m-%d')} with `make bench` ({env}).", "",
             f"Plain proxied route, {CONNS} connections (medians of {ROUNDS} alternating rounds of {DURATION}s; "
             "ratios: median of the rounds' ratios, lowest–highest in brackets):", "",
             "| target | req/s | ratio to nginx | p50 ms | p99 ms | added p50 at 1 conn, ms | ratio to nginx |",
             "|---|---|---|---|---|---|---|"]
    for name in ("direct", "nginx", "tollhouse", "tollhouse, busy_polling"):
        r = core[name]
        added = r["one"]["p50"] - direct["one"]["p50"]
        ng_added = ng["one"]["p50"] - direct["one"]["p50"]
        lines.append(f"| {name} | {r['c']['rps']:.0f} | {spread(r['ratios'])} | {r['c']['p50']:.3f} | "
                     f"{r['c']['p99']:.3f} | {added:.3f} | "
                     + (f"{added / ng_added:.2f} |" if ng_added > 0 and name != "direct" else "- |"))
    if scenario_rows:
        lines += ["", "Policies, each against the plain route of the same gateway:", "",
                  "| scenario | what | plain req/s | scenario req/s | ratio | non-2xx |", "|---|---|---|---|---|---|"]
        for name, desc, p, q, ratios, bad in scenario_rows:
            lines.append(f"| {name} | {desc} | {p:.0f} | {q:.0f} | {spread(ratios)} | {bad:.0f} |")
    if chain:
        lines += ["", "Full chain: RS256 JWT, a Redis rate limit per consumer, metrics and the access log, "
                  "vs nginx proxying the same requests (target ≥ 0.45×):", "",
                  "| target | req/s | p50 ms | p99 ms | ratio |", "|---|---|---|---|---|",
                  f"| nginx | {chain['nginx']['rps']:.0f} | {chain['nginx']['p50']:.3f} | {chain['nginx']['p99']:.3f} | 1 |",
                  f"| tollhouse, full chain | {chain['chain']['rps']:.0f} | {chain['chain']['p50']:.3f} | "
                  f"{chain['chain']['p99']:.3f} | {spread(chain['ratios'])} |",
                  f"| tollhouse, plain route | {chain['plain']['rps']:.0f} | {chain['plain']['p50']:.3f} | "
                  f"{chain['plain']['p99']:.3f} | chain/plain {spread(chain['plain_ratios'])} |"]
    if latency:
        u, c = latency["uncached"], latency["cached"]
        lines += ["", f"Cache, upstream taking {SLOW_MS} ms, 10 connections:", "",
                  "| route | req/s | p50 ms | p99 ms |", "|---|---|---|---|",
                  f"| uncached | {u['rps']:.0f} | {u['p50']:.3f} | {u['p99']:.3f} |",
                  f"| cached | {c['rps']:.0f} | {c['p50']:.3f} | {c['p99']:.3f} |", "",
                  f"p50 latency cut by the cache: {latency['cut']:.1%}"]
    if fanout:
        added = fanout["added"]
        lines += ["", "Aggregation at 1 connection (two backends vs one of them alone through the plain route):", "",
                  f"p50 plain {fanout['plain']['p50']:.3f} ms, aggregate {fanout['aggregate']['p50']:.3f} ms: added "
                  f"{statistics.median(added):.3f} ms [{min(added):.3f}–{max(added):.3f}] (aim: ≤ 0.2 ms)"]
    if protocols:
        ws, g = protocols["websocket"], protocols["grpc"]
        lines += ["", "Protocols (Python clients and servers on the load core):", "",
                  "| what | through Tollhouse | direct | ratio |", "|---|---|---|---|",
                  f"| WebSocket echo, 64-byte messages, msg/s (aim ≥ 0.5×) | {ws['through']:.0f} | {ws['direct']:.0f} | "
                  f"{spread(ws['ratios'])} |",
                  f"| gRPC GetItem: transcoded req/s (wrk) vs a grpcio client's calls/s | {g['through']:.0f} | "
                  f"{g['direct']:.0f} | {spread(g['ratios'])} |"]
    if http2:
        lines += http2
    if scaling:
        base = scaling[0][1] / scaling[0][0]
        lines += ["", "Workers (load generator on its own cores):", "", "| workers | req/s | per-worker efficiency |",
                  "|---|---|---|"]
        for n, rps in scaling:
            lines.append(f"| {n} | {rps:.0f} | {rps / (base * n):.2f} |")
    return "\n".join(lines) + "\n"


def write_docs(table: str) -> None:
    path = os.path.join(ROOT, "docs", "benchmarks.md")
    with open(path) as f:
        text = f.read()
    start, end = "<!-- BENCH:START -->", "<!-- BENCH:END -->"
    if start in text and end in text:
        text = text[:text.index(start) + len(start)] + "\n" + table + text[text.index(end):]
    else:
        text += f"\n{start}\n{table}{end}\n"
    with open(path, "w") as f:
        f.write(text)


def main() -> int:
    for tool in ("nginx", "wrk", "h2load", "taskset"):
        if not shutil.which(tool):
            print(f"{tool} is missing (make bench installs nginx and wrk when run as root)", file=sys.stderr)
            return 1
    workdir = tempfile.mkdtemp(prefix="tollhouse-bench-")
    upstream, upstream_port = start_upstream(workdir)
    try:
        if os.environ.get("BENCH_SKIP_CORE"):
            core = None
        else:
            print(f"core: direct vs nginx vs tollhouse, {ROUNDS} rounds x {DURATION}s", flush=True)
            core = run_core(workdir, upstream_port)
        selected = [s for s in os.environ.get("BENCH_SCENARIOS", ",".join(SCENARIOS)).split(",") if s]
        rows = run_scenarios(workdir, upstream_port, selected) if selected else []
        chain = None
        if not os.environ.get("BENCH_SKIP_CHAIN"):
            print(f"full chain vs nginx, {ROUNDS} rounds x {DURATION}s", flush=True)
            chain = run_chain(workdir, upstream_port)
        latency = run_cache_latency(workdir) if not os.environ.get("BENCH_SKIP_CACHE_LATENCY") else None
        fanout = run_aggregate_latency(workdir, upstream_port) if "aggregate-2" in selected else None
        protocols = None
        if not os.environ.get("BENCH_SKIP_PROTOCOLS"):
            import protocols as protocol_bench

            print("protocols: websocket echo and grpc transcoding", flush=True)
            protocols = {"websocket": protocol_bench.run_websocket(workdir), "grpc": protocol_bench.run_grpc(workdir)}
            print(f"  websocket {spread(protocols['websocket']['ratios'])}x, grpc {spread(protocols['grpc']['ratios'])}x",
                  flush=True)
        http2 = None
        if not os.environ.get("BENCH_SKIP_HTTP2"):
            import http2 as http2_bench

            print(f"HTTP/2: h2load against nginx and tollhouse, {ROUNDS} rounds x {DURATION}s", flush=True)
            h2 = http2_bench.run_http2(workdir, upstream_port)
            grpc = http2_bench.run_grpc_passthrough(workdir) if not os.environ.get("BENCH_SKIP_PROTOCOLS") else None
            http2 = http2_bench.render(h2, grpc)
            print("\n".join(http2), flush=True)
        if not os.environ.get("BENCH_SKIP_WAF"):
            import waf as waf_bench

            print(f"WAF: nginx + ModSecurity against tollhouse's, {ROUNDS} rounds x {DURATION}s", flush=True)
            waf_lines = waf_bench.render(waf_bench.run(workdir, upstream_port))
            print("\n".join(waf_lines), flush=True)
            http2 = (http2 or []) + waf_lines
        if not os.environ.get("BENCH_SKIP_IDENTITY"):
            import identity as identity_bench

            print(f"identity: runtime keys and OpenID sessions, {ROUNDS} rounds x {DURATION}s", flush=True)
            identity_lines = identity_bench.render(identity_bench.run(workdir, upstream_port))
            print("\n".join(identity_lines), flush=True)
            http2 = (http2 or []) + identity_lines
        if not os.environ.get("BENCH_SKIP_GRAPHQL"):
            import federation as federation_bench

            print(f"GraphQL federation: Hive Gateway against tollhouse, {ROUNDS} rounds x {DURATION}s", flush=True)
            federation_lines = federation_bench.render(federation_bench.run(workdir))
            print("\n".join(federation_lines), flush=True)
            http2 = (http2 or []) + federation_lines
        if not os.environ.get("BENCH_SKIP_OVERLOAD"):
            import overload as overload_bench

            print(f"overload: adaptive concurrency, {ROUNDS} rounds x {DURATION}s", flush=True)
            overload = overload_bench.run(workdir)
            overload_bench.plot(overload["trace"])
            overload_lines = overload_bench.render(overload)
            print("\n".join(overload_lines), flush=True)
            http2 = (http2 or []) + overload_lines
        counts = [int(n) for n in os.environ.get("BENCH_WORKERS", "").split(",") if n]
        scaling = run_scaling(workdir, upstream_port, counts) if counts else []
    finally:
        upstream.terminate()
        upstream.wait()
    env = f"{os.cpu_count()} cores, proxy on CPU {PROXY_CPUS}, wrk + upstream on CPU {LOAD_CPUS}"
    if core is None:
        for row in rows:
            print(row)
        return 0
    table = render(core, rows, scaling, env, latency, fanout, protocols, chain, http2)
    print(table)
    if not os.environ.get("BENCH_NO_WRITE"):
        write_docs(table)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
