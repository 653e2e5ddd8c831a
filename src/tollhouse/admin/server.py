"""The admin listener (docs/contract.md §4): health, readiness, metrics, status, reload, cache purge, dashboard.

Not on the proxy's hot path, so it is plain asyncio streams with httptools
parsing one request per connection. It asks a `controller` (the single
worker, or the supervisor of several) for everything it reports.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import socket
import sys
import time

from urllib.parse import parse_qs

import httptools
import orjson

from .. import __version__
from ..observability.dashboard import Dashboard, parse_window
from ..observability.metrics import render
from ..registry import installed

log = logging.getLogger("tollhouse.admin")

# The dashboard page holds no figures: it asks for the token and sends it with each /dashboard/data call.
OPEN_PATHS = frozenset(("/healthz", "/readyz", "/metrics", "/dashboard"))
_PAGE = os.path.join(os.path.dirname(__file__), "dashboard.html")


class _Request:
    def __init__(self):
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.done = False
        self.peer = "?"

    def on_url(self, url):
        self.url += url

    def on_header(self, name, value):
        self.headers[name.lower()] = value

    def on_body(self, body):
        if len(self.body) < 1 << 20:
            self.body += body

    def on_message_complete(self):
        self.done = True


class AdminServer:
    def __init__(self, controller, token: str):
        self.controller = controller
        self.token = token
        self.started = time.time()
        self.server = None
        self.dashboard: Dashboard | None = None
        self.draining = False   # set on SIGTERM: /readyz answers 503 while in-flight requests finish
        with open(_PAGE, "rb") as f:
            self.page = f.read().replace(b"__TOKEN_REQUIRED__", b"true" if token else b"false")

    async def start(self, host: str, port: int):
        self.server = await asyncio.start_server(self._handle, host, port, reuse_address=True)
        bound = self.server.sockets[0].getsockname()[:2]
        # One name per gateway in the fleet: the host and its admin port.
        monitoring = getattr(getattr(self.controller, "config", None), "monitoring", None)
        self.dashboard = Dashboard(self.controller, f"{socket.gethostname()}:{bound[1]}",
                                   anomaly_z=monitoring.anomaly.z if monitoring is not None else 3.0)
        self.dashboard.start()
        return bound

    def close(self):
        if self.server is not None:
            self.server.close()
        if self.dashboard is not None:
            self.dashboard.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        req = _Request()
        parser = httptools.HttpRequestParser(req)
        try:
            while not req.done:
                data = await asyncio.wait_for(reader.read(65536), 10)
                if not data:
                    return
                parser.feed_data(data)
            method = parser.get_method().decode()
            url = httptools.parse_url(req.url)
            path = url.path.decode()
            query = url.query.decode() if url.query else ""
            req.peer = (writer.get_extra_info("peername") or ("?",))[0]
            status, ctype, body = await self.route(method, path, query, req)
            if method not in ("GET", "HEAD") and status < 400:
                audit(req, method, path, status, bool(self.token))
        except (httptools.HttpParserError, asyncio.TimeoutError, ValueError):
            status, ctype, body = 400, "application/json", orjson.dumps({"error": "bad request"})
        except Exception:  # noqa: BLE001
            log.exception("admin request failed")
            status, ctype, body = 500, "application/json", orjson.dumps({"error": "internal error"})
        try:
            if status == 204:
                head = "HTTP/1.1 204 No Content\r\ncache-control: no-store\r\nconnection: close\r\n\r\n"
                body = b""
            else:
                head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\ncontent-type: {ctype}\r\n"
                        f"content-length: {len(body)}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n")
            writer.write(head.encode() + body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _authorised(self, req: _Request) -> bool:
        if not self.token:
            return True
        given = req.headers.get(b"authorization", b"")
        expected = b"Bearer " + self.token.encode()
        return hmac.compare_digest(given, expected)

    async def route(self, method: str, path: str, query: str, req: _Request):
        c = self.controller
        if path not in OPEN_PATHS and not self._authorised(req):
            return 401, "application/json", orjson.dumps({"error": "admin token required"})
        if path == "/healthz" and method in ("GET", "HEAD"):
            return 200, "application/json", b'{"status":"ok"}'
        if path == "/readyz" and method in ("GET", "HEAD"):
            if self.draining:
                return 503, "application/json", b'{"ready":false,"draining":true}'
            ready, detail = await c.ready()
            return (200 if ready else 503), "application/json", orjson.dumps({"ready": ready, **detail})
        if path == "/metrics" and method in ("GET", "HEAD"):
            snaps = await c.snapshots()
            anomalies = self.dashboard.anomalies.exposition() if self.dashboard is not None else b""
            return 200, "text/plain; version=0.0.4; charset=utf-8", render(snaps) + anomalies
        if path == "/status" and method in ("GET", "HEAD"):
            return 200, "application/json", orjson.dumps(await self.status())
        if path == "/reload" and method == "POST":
            errors = await c.reload()
            if errors:
                return 400, "application/json", orjson.dumps({"reloaded": False, "errors": errors})
            return 200, "application/json", orjson.dumps({"reloaded": True})
        if path == "/cache" and method == "DELETE":
            return await self.purge(query)
        if path == "/dashboard" and method in ("GET", "HEAD"):
            return 200, "text/html; charset=utf-8", self.page
        if path == "/dashboard/data" and method in ("GET", "HEAD"):
            try:
                window = parse_window(parse_qs(query).get("window", [None])[0])
            except ValueError as e:
                return 400, "application/json", orjson.dumps({"error": str(e)})
            return 200, "application/json", orjson.dumps(await self.dashboard.data(window))
        if path in ("/healthz", "/readyz", "/metrics", "/status", "/reload", "/cache", "/dashboard",
                    "/dashboard/data"):
            return 405, "application/json", orjson.dumps({"error": "method not allowed"})
        for kind in installed().kinds:
            for methods, pattern in kind.admin:
                if re.fullmatch(pattern, path):
                    if method not in methods:
                        return 405, "application/json", orjson.dumps({"error": "method not allowed"})
                    # The randomness and the time of a change are drawn here, once: every worker
                    # that applies it (each its own memory store) makes the same record.
                    request = {"nonce": os.urandom(40).hex(), "now": time.time(), "query": query}
                    answer = await c.admin(kind.name, method, path, req.body.decode("utf-8", "replace"), request)
                    if answer is None:
                        return 503, "application/json", orjson.dumps({"error": "no worker answered"})
                    status, payload = answer
                    return status, "application/json", orjson.dumps(payload)
        return 404, "application/json", orjson.dumps({"error": "not found"})

    async def purge(self, query: str):
        """DELETE /cache[?route=NAME|prefix=/path|tag=KEY]: the filters combine (all must match)."""
        params = parse_qs(query, keep_blank_values=True)
        unknown = set(params) - {"route", "prefix", "tag"}
        if unknown:
            return 400, "application/json", orjson.dumps({"error": f"unknown parameter {sorted(unknown)[0]!r}; "
                                                                   "use route, prefix or tag"})
        route, prefix, tag = (params[k][0] if k in params else None for k in ("route", "prefix", "tag"))
        if prefix is not None and not prefix.startswith("/"):
            return 400, "application/json", orjson.dumps({"error": "prefix must start with /"})
        try:
            purged = await self.controller.purge(route, prefix, tag)
        except Exception as e:  # noqa: BLE001 - the store failed: say so, change nothing else
            return 503, "application/json", orjson.dumps({"error": f"the cache store failed: {type(e).__name__}"})
        return 200, "application/json", orjson.dumps({"purged": purged, "route": route, "prefix": prefix, "tag": tag})

    async def status(self) -> dict:
        workers = await self.controller.statuses()
        ready, store = await self.controller.ready()
        first = workers[0] if workers else {}
        upstreams: dict = {}
        for w in workers:
            for name, up in w.get("upstreams", {}).items():
                cur = upstreams.setdefault(name, {"balancer": up["balancer"], "circuit": up.get("circuit"),
                                                  "targets": {}})
                if _CIRCUIT_RANK.get(up.get("circuit"), 0) > _CIRCUIT_RANK.get(cur["circuit"], 0):
                    cur["circuit"] = up["circuit"]   # the worst state among workers
                for t in up["targets"]:
                    agg = cur["targets"].setdefault(t["url"], {"url": t["url"], "weight": t["weight"],
                                                               "open_connections": 0, "idle_connections": 0,
                                                               "in_flight": 0, "waiting": 0})
                    for k in ("open_connections", "idle_connections", "in_flight", "waiting"):
                        agg[k] += t[k]
                    # Ejection is per worker: shown when any worker has the target out.
                    agg["ejected"] = agg.get("ejected", False) or t.get("ejected", False)
                    agg["healthy"] = agg.get("healthy", True) and t.get("healthy", True)
                    agg["ejected_for"] = max(agg.get("ejected_for", 0.0), t.get("ejected_for", 0.0))
        for up in upstreams.values():
            up["targets"] = list(up["targets"].values())
        return {
            "version": __version__,
            "uptime_seconds": round(time.time() - self.started, 3),
            "ready": ready,
            "store": {**first.get("store", {}), **store},
            "workers": [{"pid": w["pid"], "worker": w["worker"], "config_version": w["config_version"],
                         "connections": w["connections"]} for w in workers],
            "routes": first.get("routes", []),
            "upstreams": upstreams,
        }


_CIRCUIT_RANK = {"closed": 1, "half_open": 2, "open": 3}
def audit(req: "_Request", method: str, path: str, status: int, token: bool) -> None:
    """One JSON line on stdout per change made through the admin listener: who (the
    caller's address, and whether it held the admin token), what (the method, the path,
    the answer's status) and when. Never a body: it may carry a secret."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + ".%03dZ" % int(now % 1 * 1000)   # as access lines
    line = orjson.dumps({"time": stamp, "audit": f"{method} {path}", "who": {"ip": req.peer, "admin_token": token},
                         "method": method, "path": path, "status": status})
    sys.stdout.buffer.write(line + b"\n")
    sys.stdout.flush()


_REASONS = {200: "OK", 201: "Created", 204: "No Content",
            400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            409: "Conflict", 500: "Internal Server Error", 503: "Service Unavailable"}
