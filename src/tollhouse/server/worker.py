"""A worker process: listeners, the current config version, timers, drain.

With `workers: 1` the worker is the whole gateway (admin listener and
signals included). With more, a supervisor (server/lifecycle.py) starts
workers that each bind the port with SO_REUSEPORT and answer the
supervisor's questions (metrics, status, reload, drain) over a socketpair.
"""
from __future__ import annotations

import asyncio
import email.utils
import gc
import inspect
import logging
import os
import signal
import socket
import time

from ..clock import CLOCK
from ..config import load_file, load_text
from ..flow import WorkerCore
from ..observability.access_log import AccessLog, request_id_factory
from ..observability.debug import HEADER as DEBUG_HEADER, debug_tracer_factory
from ..observability.tracing import HEADER as TRACE_HEADER, TracingFactory, combine
from ..observability.metrics import Stats
from ..registry import noted_index, worker_services
from ..state import GatewayState, build_state, retire
from ..store import open_store
from .http2 import Http2Connection, settings_of as http2_settings
from .protocol import ClientConnection
from .tls import follow_reloads, server_context

log = logging.getLogger("tollhouse.worker")

SWEEP_INTERVAL = 0.25
DEADLINE_INTERVAL = 0.02   # upstream timeouts are enforced to within this


def make_listen_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


class Worker(WorkerCore):
    def __init__(self, config, config_path: str | None, loop, index: int = 0, sockets=None):
        super().__init__(loop)
        self.config_path = config_path
        self.index = index
        self.stats = Stats()
        self.health: dict[tuple[str, str], bool] = {}   # (upstream, target url) -> healthy
        self.checker = None
        self.next_request_id = request_id_factory()
        self.date_line = b""   # b"date: <IMF-fixdate>\r\n", rebuilt once a second by the sweeper
        self.started_at = time.time()
        self.tracing = None
        self.store = open_store(config.store)
        # The policies' per-worker services (the rate limiter, the response cache), kept across reloads.
        self.services = worker_services(config, self.store, self.stats, self)
        self.state: GatewayState = build_state(config, loop, self.stats, self.store, workers=self.services)
        self._trace(config)
        self.access_log = AccessLog() if config.access_log else None
        self.circuits = None
        if self.store.kind != "memory":
            from ..upstream.breaker import SharedCircuits

            self.circuits = SharedCircuits(self.store, lambda: self.state.pools)
            self.circuits.attach(self.state.pools)
        self.servers: list[asyncio.AbstractServer] = []
        self.tls_context = None   # the TLS context new handshakes get (a reload makes a new one)
        self._sockets = sockets
        self.http2 = Http2Connection if http2_settings(config) is not None else None
        self._sweeper = None
        self._stopped = asyncio.Event()
        self._update_date()

    # listeners -----------------------------------------------------------------
    async def start(self, reuse_port: bool) -> None:
        config = self.state.config
        ctx = self.tls_context = server_context(config.tls, http2=self.http2 is not None)
        if ctx is not None:
            follow_reloads(ctx, lambda: self.tls_context)
        scheme = b"https" if ctx else b"http"
        sockets = self._sockets or [make_listen_socket(h, p, reuse_port) for h, p in config.listen]
        for sock in sockets:
            server = await self.loop.create_server(lambda: ClientConnection(self, scheme), sock=sock, ssl=ctx,
                                                   backlog=4096)
            self.servers.append(server)
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)
        self._deadlines = self.loop.call_later(DEADLINE_INTERVAL, self._check_deadlines)
        self._start_services()
        if self.circuits is not None and any(p.breaker is not None for p in self.state.pools.values()):
            self.circuits.start()
        # Start-up objects (config, routes, modules) never become garbage: move
        # them out of the collector's sight, and collect young objects less
        # often. The request path makes few cycles; full scans were ~3% of CPU.
        gc.freeze()
        gc.set_threshold(20000, 50, 100)
        # The coarse clock was last set when it was imported, before the config
        # loaded: a request served before the first deadline tick would have its
        # deadlines counted from then, and time out that much early.
        CLOCK.now = time.monotonic()   # loop.time()'s clock, read afresh (the loop's is cached per tick)
        self.set_busy_polling(config.busy_polling)

    def _trace(self, config) -> None:
        """The tracer factory of a config version: tracing (sampled requests) and the debug header."""
        if self.tracing is not None:
            self.tracing.close()
        self.tracing = TracingFactory(config.tracing, self.loop) if config.tracing is not None else None
        self.tracer_factory = combine(self.tracing, debug_tracer_factory(config.debug))
        self.trace_skip = self.tracing.first_skip() if self.tracing is not None else 0
        self.trace_notes = tuple(noted_index(h) for h in (TRACE_HEADER, DEBUG_HEADER))

    def _start_services(self) -> None:
        for service in self.services.values():
            start = getattr(service, "start", None)
            if start is not None:
                start(self.state.config)

    def bound_addresses(self) -> list[tuple[str, int]]:
        return [s.sockets[0].getsockname()[:2] for s in self.servers]

    # timers ----------------------------------------------------------------------
    def _update_date(self) -> None:
        self.date_line = b"date: %s\r\n" % email.utils.formatdate(usegmt=True).encode()

    def _sweep(self) -> None:
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)
        self._update_date()
        now = CLOCK.now = self.loop.time()
        limits = self.state.limits
        for conn in list(self.connections):
            conn.check_timeouts(now, limits)
        for pool in self.state.pools.values():
            pool.reap(now)

    def _check_deadlines(self) -> None:
        self._deadlines = self.loop.call_later(DEADLINE_INTERVAL, self._check_deadlines)
        CLOCK.now = now = self.loop.time()
        self.count_ended()
        if not self.inflight:
            return
        # Checked after the walk: an exchange that times out finishes, and finishing
        # takes it out of `inflight` (a set must not change while it is walked).
        due = [ex for ex in self.inflight if ex.deadline <= now]
        for ex in due:
            if not ex.check_deadline(now):
                self.inflight.discard(ex)

    def count_ended(self) -> None:
        """Metrics and access log lines for the exchanges ended since the last call,
        a batch at a time (far cheaper than per request on the request path)."""
        if not self.ended:
            return
        batch, self.ended = self.ended, []
        self.stats.fold(batch)
        if self.access_log is not None and self.state.config.access_log:
            self.access_log.write_batch(batch)

    # config versions ---------------------------------------------------------------
    def apply(self, config) -> None:
        """Swap in a validated config: new requests use it, in-flight ones finish on theirs."""
        previous = self.state
        if self.tls_context is not None and config.tls is not None:
            # Files read again before anything changes: one that fails refuses the reload.
            self.tls_context = server_context(config.tls, http2=http2_settings(config) is not None)
        if config.access_log and self.access_log is None:
            self.access_log = AccessLog()
        services = worker_services(config, self.store, self.stats, self, previous=self.services)
        self.state = build_state(config, self.loop, self.stats, self.store, previous, previous.version + 1,
                                 workers=services)
        self._trace(config)
        self.set_busy_polling(config.busy_polling)
        self.http2 = Http2Connection if http2_settings(config) is not None else None
        for name, old in self.services.items():
            if services.get(name) is not old:
                old.close()   # replaced (e.g. the cache's storage changed)
        self.services = services
        self._start_services()
        retire(previous, self.state)
        if self.circuits is not None:
            self.circuits.attach(self.state.pools)
            if any(p.breaker is not None for p in self.state.pools.values()):
                self.circuits.start()
        if self.checker is not None:
            self.health.clear()
            self.run_health_checks()
        for (upstream, url), healthy in self.health.items():
            pool = self.state.pools.get(upstream)
            if pool is not None:
                pool.set_health(url, healthy)
        log.info("config version %d in force", self.state.version)

    def reload_text(self, text: str) -> list[str]:
        return self._apply_loaded(*load_text(text))

    def reload_file(self) -> list[str]:
        if not self.config_path:
            return ["no config file to reload (started from the embedded demo config)"]
        config, errors, _ = load_file(self.config_path)
        return self._apply_loaded(config, errors)

    def _apply_loaded(self, config, errors) -> list[str]:
        """Swap in a loaded config; the errors that refused it otherwise."""
        if errors:
            return [str(e) for e in errors]
        try:
            self.apply(config)
        except ValueError as e:
            return [str(e)]
        return []

    # questions from the admin side -------------------------------------------------
    def snapshot(self) -> dict:
        self.count_ended()
        gauges = self.stats.gauges
        counters = self.stats.counters
        for name, pool in self.state.pools.items():
            for t in pool.targets:
                gauges[("upstream_target_healthy", (("target", t.url), ("upstream", name)))] = \
                    1 if t.healthy and t.ejected_until <= CLOCK.now else 0
            if pool.localities is not None:
                # Where the traffic goes now: each region's share (upstream/locality.py).
                pool.localities.current(pool.usable)
                for region, share in pool.localities.by_region().items():
                    gauges[("upstream_locality_share", (("region", region), ("upstream", name)))] = share
            if pool.dns is not None:
                counters[("dns_failures", (("upstream", name),))] = pool.dns.failures
            if pool.concurrency is not None:
                gauges[("upstream_concurrency_limit", (("upstream", name),))] = int(pool.concurrency.limit)
                for tier, shed in pool.concurrency.shed.items():
                    counters[("upstream_shed", (("tier", tier), ("upstream", name)))] = shed
            counters[("upstream_retries", (("upstream", name),))] = pool.retry_count
            counters[("upstream_ejections", (("upstream", name),))] = pool.ejection_count
            # tollhouse_circuit_state: 0 closed, 1 open, 2 half-open; always closed without a breaker
            gauges[("circuit_state", (("upstream", name),))] = pool.breaker.state if pool.breaker is not None else 0
        for service in self.services.values():
            export = getattr(service, "export", None)
            if export is not None:
                export(gauges)
        self.stats.active_requests = self.active_requests
        return self.stats.snapshot()

    def dashboard_sample(self) -> dict:
        """The figures the admin's dashboard samples every second: the snapshot, and
        the per-consumer and per-client counts taken since the last sample."""
        snapshot = self.snapshot()
        consumers, denied = self.stats.take_tops()
        return {"snapshot": snapshot, "consumers": consumers, "denied": denied}

    async def admin(self, kind: str, method: str, path: str, body: str, request: dict | None = None):
        """An admin call for a kind's per-worker service (registry.PolicyKind.admin): (status, payload)."""
        service = self.services.get(kind)
        if service is None:
            return 404, {"error": "not found"}
        answer = service.admin(method, path, body, request or {})
        if inspect.isawaitable(answer):
            answer = await answer
        return answer

    async def purge_cache(self, route: str | None, prefix: str | None, tag: str | None) -> int:
        cache = self.services.get("cache")
        return await cache.purge(route, prefix, tag) if cache is not None else 0

    def run_health_checks(self) -> None:
        """Single-process gateways check their targets themselves."""
        from ..upstream.health import HealthChecker

        if self.checker is not None:
            self.checker.stop()
        self.checker = HealthChecker(self.state.config, self.set_health)
        self.checker.start()

    def set_health(self, upstream: str, url: str, healthy: bool) -> None:
        """A health checker's verdict (this worker's own, or the supervisor's)."""
        self.health[(upstream, url)] = healthy
        pool = self.state.pools.get(upstream)
        if pool is not None:
            pool.set_health(url, healthy)

    def status(self) -> dict:
        state = self.state
        return {
            "pid": os.getpid(),
            "worker": self.index,
            "config_version": state.version,
            "connections": len(self.connections),
            "store": {"kind": self.store.kind, **self._services_status()},
            "routes": [{"name": r.name, "host": r.host or None, "path": r.path.decode() or None,
                        "prefix": r.prefix.decode() or ("/" if not r.path else None),
                        "methods": sorted(m.decode() for m in r.methods) or None,
                        # the gateway's own endpoints (OAuth) have no upstream
                        "upstream": r.upstream.name if r.upstream is not None else None}
                       for r in state.table.routes],
            "upstreams": {name: pool.status() for name, pool in state.pools.items()},
        }

    def _services_status(self) -> dict:
        found = {}
        for service in self.services.values():
            status = getattr(service, "status", None)
            if status is not None:
                found.update(status())
        return found

    # shutdown -------------------------------------------------------------------------
    async def drain(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish within shutdown_grace."""
        if self.draining:
            await self._stopped.wait()
            return
        self.draining = True
        if self.checker is not None:
            self.checker.stop()
        if self.circuits is not None:
            self.circuits.stop()
        grace = self.state.config.shutdown_grace if grace is None else grace
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            conn.drain()
        # Services with connections of their own (WebSocket sessions) close them too.
        busy = [s for s in self.services.values() if getattr(s, "drain", None) is not None]
        for service in busy:
            service.drain()
        deadline = self.loop.time() + grace
        while (self.connections or any(s.busy() for s in busy)) and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._deadlines.cancel()
        for pool in self.state.pools.values():
            pool.close()
        self.count_ended()
        if self.access_log is not None:
            self.access_log.close()
        for service in self.services.values():
            close = getattr(service, "close", None)
            if close is not None:
                close()
        if self.tracing is not None:
            self.tracing.close()
        await self.store.close()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


def install_signals(loop, on_stop, on_reload=None) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop)
    if on_reload is not None:
        loop.add_signal_handler(signal.SIGHUP, on_reload)
    else:
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
