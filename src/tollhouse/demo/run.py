"""`tollhouse demo`: the gateway on its embedded config with two demo services."""
from __future__ import annotations

import os
import sys

from ..config import load_text
from ..server.lifecycle import run_loop, serve_single
from .services import start_services

CONFIG = os.path.join(os.path.dirname(__file__), "config.yaml")


def http2_available() -> bool:
    from ..server.http2 import AVAILABLE

    return AVAILABLE


def curl_lines(port: int, admin_port: int, token: str) -> str:
    base = f"http://127.0.0.1:{port}"
    return "\n".join([
        "Tollhouse demo is up. Try:",
        f"  curl -i {base}/api/users/            # list users (prefix route, strip_prefix)",
        f"  curl -i {base}/api/v1/users/1        # templated route with rewrite",
        f"  curl -i '{base}/api/orders?owner=1'  # another upstream",
        f"  curl -i {base}/api/%75sers/2         # normalised to /api/users/2",
        f"  curl -i -X POST {base}/api/users/    # 405 with Allow",
        f"  curl -i {base}/nowhere               # 404 problem+json",
        *([f"  curl -si --http2-prior-knowledge {base}/api/users/ | head -1   # HTTP/2 on the same port"]
          if http2_available() else []),
        f"  for i in $(seq 8); do curl -s -o /dev/null -w '%{{http_code}} ' {base}/api/limited/; done; echo"
        "   # 5 per 10 s and bursts of 3 per IP: 200s, then 429",
        f"  curl -si {base}/api/limited/ | grep -i -E '^(HTTP|ratelimit|retry-after)'"
        "   # the RateLimit headers (a 429 with Retry-After right after the loop above)",
        f"  for i in 1 2; do curl -si {base}/api/cached/1 | grep -i -E '^(x-cache-status|age)'; done"
        "   # MISS, then HIT with Age",
        f"  curl -s -X DELETE http://127.0.0.1:{admin_port}/cache?route=cached   # purge the cache",
        f"  curl -i {base}/api/private/1                                  # 401: credentials required",
        f"  curl -i -H 'Authorization: Bearer {token}' {base}/api/private/1   # a demo JWT (HS256, 1 day)",
        f"  curl -i -H 'X-API-Key: demo-key-123' {base}/api/private/2         # the demo API key",
        f"  curl -s -H 'X-API-Key: demo-key-123' {base}/api/me   # profile and orders merged (aggregate)",
        f"""  curl -s -H 'Content-Type: application/json' -d '{{"query": "{{ orders {{ item owner {{ name }} }} }}"}}'"""
        f" {base}/graphql   # one GraphQL query joining both services (federation)",
        f"  curl -s -u demo-cli:demo-secret -d grant_type=client_credentials {base}/oauth/token"
        "   # the built-in OAuth server",
        f"  curl -s {base}/.well-known/jwks.json",
        f"  curl -s http://127.0.0.1:{admin_port}/metrics | grep tollhouse_requests",
        f"  curl -s http://127.0.0.1:{admin_port}/status",
        f"  curl -s 'http://127.0.0.1:{admin_port}/dashboard/data?window=60s'   # the dashboard's figures",
        f"Live dashboard: open http://127.0.0.1:{admin_port}/dashboard in a browser.",
        "Ctrl-C stops it.",
    ])


def _demo_credentials() -> str:
    """A JWT secret and a signing key for this run (nothing to configure)."""
    import secrets
    import tempfile

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    os.environ.setdefault("TOLLHOUSE_DEMO_JWT_SECRET", secrets.token_urlsafe(48))
    if "TOLLHOUSE_DEMO_SIGNING_KEY" not in os.environ:
        path = os.path.join(tempfile.mkdtemp(prefix="tollhouse-demo-"), "signing.pem")
        with open(path, "wb") as f:
            f.write(ed25519.Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        os.environ["TOLLHOUSE_DEMO_SIGNING_KEY"] = path
    from ..policies.auth.tokens import mint

    return mint(secret=os.environ["TOLLHOUSE_DEMO_JWT_SECRET"], subject="demo", scope="users:read", tier="premium",
                ttl="1d")


def run_demo() -> int:
    token = _demo_credentials()
    os.environ.setdefault("TOLLHOUSE_DEMO_SUPERGRAPH", os.path.join(os.path.dirname(__file__), "supergraph.graphql"))
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
            print(curl_lines(port, admin_addr[1], token), file=sys.stderr, flush=True)

        try:
            return await serve_single(config, None, on_ready=ready)
        finally:
            for s in services:
                s.close()

    return run_loop(main())
