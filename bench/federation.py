"""GraphQL federation benchmark (docs/graphql.md, docs/benchmarks.md): Tollhouse against
Hive Gateway (npm @graphql-hive/gateway, bench/hive; `make bench` installs it) serving the
same supergraph (tests/support/graphql/shop.graphql) over the same four subgraphs, each
gateway on the proxy core, the subgraphs and wrk on the load core, alternating rounds.

The subgraphs are the tests' graphql-core schemas behind a memo: each distinct request body
is executed once, then answered from memory, so that the subgraphs cost little and the same
for both gateways (their own latency is measured straight, as `subgraph p50`).

Operations: an entity join across two subgraphs, and a three-level nested one.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import run as bench  # noqa: E402

HIVE = os.path.join(ROOT, "bench", "hive", "node_modules", ".bin", "hive-gateway")
OPERATIONS = {
    "entity join (2 subgraphs)": "{ topProducts { name price inStock } }",
    "nested, 3 levels (4 subgraphs)": "{ me { name reviews { body product { name inStock } } } }",
}
STEPS = {"entity join (2 subgraphs)": 2, "nested, 3 levels (4 subgraphs)": 3}   # fetches one after another


def serve_subgraphs(ports: dict) -> None:
    """Run in a child process: the four subgraphs, memoised, on `ports` (name -> port)."""
    import httptools
    import uvloop
    from graphql import graphql_sync

    from tests.support.shop_subgraphs import Shop

    shop = Shop()

    class Server(asyncio.Protocol):
        def __init__(self, schema, memo):
            self.schema, self.memo = schema, memo
            self.parser = httptools.HttpRequestParser(self)
            self.body = b""

        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.parser.feed_data(data)

        def on_message_begin(self):
            self.body = b""

        def on_body(self, body):
            self.body += body

        def on_message_complete(self):
            answer = self.memo.get(self.body)
            if answer is None:
                request = json.loads(self.body)
                result = graphql_sync(self.schema, request["query"], variable_values=request.get("variables"))
                out = {"data": result.data}
                if result.errors:
                    out["errors"] = [e.formatted for e in result.errors]
                payload = json.dumps(out).encode()
                answer = self.memo[self.body] = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                                 b"content-length: %d\r\n\r\n%s" % (len(payload), payload))
            self.transport.write(answer)

    async def main():
        loop = asyncio.get_running_loop()
        for name, port in ports.items():
            schema, memo = shop.all[name].schema, {}
            await loop.create_server(lambda s=schema, m=memo: Server(s, m), "127.0.0.1", port, backlog=1024)
        await asyncio.Event().wait()

    uvloop.run(main())


def wrk_post(port: int, path: str, query: str, seconds: int, script_dir: str, connections: int = 0) -> dict:
    script = os.path.join(script_dir, f"q{abs(hash(query))}.lua")
    with open(script, "w") as f:
        f.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(json.dumps({"query": query}))}\n'
                'wrk.headers["Content-Type"] = "application/json"\nwrk.headers["Accept"] = "application/json"\n')
    cmd = ["taskset", "-c", bench.LOAD_CPUS, "wrk", "-t1", f"-c{connections or bench.CONNS}", f"-d{seconds}s", "--latency",
           "-s", script,
           f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    import re

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = bench._ms(re.search(r"(?m)^\s+50%\s+(\S+)", out).group(1))
    p99 = bench._ms(re.search(r"(?m)^\s+99%\s+(\S+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": p50, "p99": p99, "non2xx": int(bad.group(1)) if bad else 0}


def run(workdir: str) -> dict | None:
    if not os.path.exists(HIVE):
        print("  graphql: Hive Gateway is not installed (make bench installs it in bench/hive); skipped", flush=True)
        return None
    from tests.support.shop_subgraphs import supergraph_text

    ports = {name: bench.free_port() for name in ("accounts", "products", "inventory", "reviews")}
    code = (f"import sys; sys.path.insert(0, {ROOT!r}); sys.path.insert(0, {os.path.join(ROOT, 'bench')!r}); "
            f"import federation as g; g.serve_subgraphs({ports!r})")
    subgraphs = subprocess.Popen(["taskset", "-c", bench.LOAD_CPUS, sys.executable, "-c", code],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=bench._die_with_parent)
    hive = th = None
    try:
        for port in ports.values():
            bench.wait_port(port)
        supergraph = os.path.join(workdir, "shop.graphql")
        with open(supergraph, "w") as f:
            f.write(supergraph_text("shop.graphql", {n: f"http://127.0.0.1:{p}/graphql" for n, p in ports.items()}))
        hive_port = bench.free_port()
        hive = subprocess.Popen(["taskset", "-c", bench.PROXY_CPUS, HIVE, "supergraph", supergraph, "--port",
                                 str(hive_port), "--host", "127.0.0.1"], cwd=os.path.dirname(os.path.dirname(HIVE)),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=bench._die_with_parent)
        th = bench.Tollhouse(workdir, ports["products"], bench.PROXY_CPUS, route_extra=f"""  - name: graph
    match: {{path: /graphql}}
    graphql: {{supergraph: {supergraph}, limits: {{max_depth: 0, max_aliases: 0, max_root_fields: 0, max_tokens: 0}}}}
""")
        bench.wait_port(hive_port, timeout=60)
        targets = {"hive": hive_port, "tollhouse": th.port}
        for name, query in OPERATIONS.items():   # warm-up, and the same answer from both
            answers = []
            for port in targets.values():
                req = subprocess.run(["curl", "-s", "-H", "Content-Type: application/json", "-d",
                                      json.dumps({"query": query}), f"http://127.0.0.1:{port}/graphql"],
                                     capture_output=True, text=True)
                answers.append(json.loads(req.stdout))
                wrk_post(port, "/graphql", query, 1, workdir)
            assert answers[0] == answers[1] and "errors" not in answers[0], (name, answers)
        rows = {(op, gw): [] for op in OPERATIONS for gw in targets}
        alone = {(op, gw): [] for op in OPERATIONS for gw in targets}   # one connection: latency, not queueing
        direct = []
        for rnd in range(bench.ROUNDS):
            for op, query in OPERATIONS.items():
                for gw, port in targets.items():
                    rows[(op, gw)].append(wrk_post(port, "/graphql", query, bench.DURATION, workdir))
                    alone[(op, gw)].append(wrk_post(port, "/graphql", query, 1, workdir, connections=1))
            # The subgraphs' own latency: one memoised subgraph called straight, one connection.
            direct.append(wrk_post(ports["products"], "/graphql", "{ topProducts { name price } }", 1, workdir,
                                   connections=1))
            print(f"  round {rnd + 1}/{bench.ROUNDS}: " + ", ".join(
                f"{op}: tollhouse/hive {rows[(op, 'tollhouse')][-1]['rps'] / rows[(op, 'hive')][-1]['rps']:.2f}"
                for op in OPERATIONS), flush=True)
    finally:
        for proc in (hive, subgraphs):
            if proc is not None:
                proc.terminate()
                proc.wait()
        if th is not None:
            th.stop()
    out = {"subgraph_p50": statistics.median(r["p50"] for r in direct), "operations": {}}
    for op in OPERATIONS:
        out["operations"][op] = {gw: {k: statistics.median(r[k] for r in rows[(op, gw)]) for k in ("rps", "p50", "p99")}
                                 for gw in targets}
        out["operations"][op]["ratios"] = bench.round_ratios(rows[(op, "tollhouse")], rows[(op, "hive")])
        out["operations"][op]["non2xx"] = sum(r["non2xx"] for gw in targets for r in rows[(op, gw)])
        for gw in targets:
            p50 = statistics.median(r["p50"] for r in alone[(op, gw)])
            out["operations"][op][gw]["alone_p50"] = p50
            out["operations"][op][gw]["added_p50"] = p50 - STEPS[op] * out["subgraph_p50"]
    return out


def render(r: dict | None) -> list[str]:
    if r is None:
        return []
    lines = ["", f"GraphQL federation, {bench.CONNS} connections, the same supergraph and subgraphs; "
             "Hive Gateway (@graphql-hive/gateway) on the proxy core too:", "",
             "| operation | Hive req/s | p50 / p99 ms | Tollhouse req/s | p50 / p99 ms | ratio (aim ≥ 1.5) | non-2xx |",
             "|---|---|---|---|---|---|---|"]
    for op, v in r["operations"].items():
        h, t = v["hive"], v["tollhouse"]
        lines.append(f"| {op} | {h['rps']:.0f} | {h['p50']:.2f} / {h['p99']:.2f} | {t['rps']:.0f} | "
                     f"{t['p50']:.2f} / {t['p99']:.2f} | {bench.spread(v['ratios'])} | {v['non2xx']} |")
    lines += ["", "One connection (latency without queueing): p50 through each gateway, and what it adds over "
              "the subgraph calls made one after another:", "",
              "| operation | Hive p50 ms | added | Tollhouse p50 ms | added (aim ≤ 1 ms) |", "|---|---|---|---|---|"]
    for op, v in r["operations"].items():
        h, t = v["hive"], v["tollhouse"]
        lines.append(f"| {op} | {h['alone_p50']:.2f} | {h['added_p50']:.2f} | {t['alone_p50']:.2f} | "
                     f"{t['added_p50']:.2f} |")
    lines += ["", f"A memoised subgraph called straight, one connection: p50 {r['subgraph_p50']:.2f} ms."]
    return lines


def main() -> int:
    for tool in ("wrk", "taskset", "node"):
        if not shutil.which(tool):
            print(f"{tool} is missing", file=sys.stderr)
            return 1
    workdir = tempfile.mkdtemp(prefix="tollhouse-bench-graphql-")
    started = time.monotonic()
    print("\n".join(render(run(workdir))))
    print(f"({time.monotonic() - started:.0f}s)")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
