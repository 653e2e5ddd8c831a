"""`tollhouse demo`: the gateway on its embedded config with two demo services."""
from __future__ import annotations

import asyncio
import os
import sys

from ..config import load_text
from ..server.lifecycle import run_loop, serve_single
from .services import start_services

CONFIG = os.path.join(os.path.dirname(__file__), "config.yaml")


def curl_lines(port: int, admin_port: int) -> str:
    base = f"http://127.0.0.1:{port}"
    return "\n".join([
        "Tollhouse demo is up. Try:",
        f"  curl -i {base}/api/users/            # list users (prefix route, strip_prefix)",
        f"  curl -i {base}/api/v1/users/1        # templated route with rewrite",
        f"  curl -i '{base}/api/orders?owner=1'  # another upstream",
        f"  curl -i {base}/api/%75sers/2         # normalised to /api/users/2",
        f"  curl -i -X POST {base}/api/users/    # 405 with Allow",
        f"  curl -i {base}/nowhere               # 404 problem+json",
        f"  for i in $(seq 8); do curl -s -o /dev/null -w '%{{http_code}} ' {base}/api/limited/; done; echo"
        "   # 5 per 10 s and bursts of 3 per IP: 200s, then 429",
        f"  curl -si {base}/api/limited/ | grep -i -E '^(HTTP|ratelimit|retry-after)'   # the RateLimit headers",
        f"  curl -s http://127.0.0.1:{admin_port}/metrics | grep tollhouse_requests",
        f"  curl -s http://127.0.0.1:{admin_port}/status",
        "Ctrl-C stops it.",
    ])


def run_demo() -> int:
    with open(CONFIG, encoding="utf-8") as f:
        config, errors = load_text(f.read())
    if errors:
        for e in errors:
            print(f"demo config: {e}", file=sys.stderr)
        return 1

    async def main():
        users_port = int(os.environ.get("TOLLHOUSE_DEMO_USERS_PORT", "9001"))
        orders_port = int(os.environ.get("TOLLHOUSE_DEMO_ORDERS_PORT", "9002"))
        services = await start_services(users_port=users_port, orders_port=orders_port)

        def ready(worker, admin_addr):
            port = worker.bound_addresses()[0][1]
            print(curl_lines(port, admin_addr[1]), file=sys.stderr, flush=True)

        try:
            return await serve_single(config, None, on_ready=ready)
        finally:
            for s in services:
                s.close()

    return run_loop(main())
