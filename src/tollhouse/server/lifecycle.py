"""Starting, reloading and stopping the gateway, with one worker or several.

One worker: the process is the worker and also serves the admin listener.
Several: this process supervises worker processes (started fresh with
`python -m tollhouse _worker`, never forked from a running loop), each
binding the port with SO_REUSEPORT. It serves the admin listener, answers
from all workers together, relays reloads, restarts a worker that dies and
drains them all on SIGTERM.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import subprocess
import sys

import orjson
import uvloop

from ..admin.server import AdminServer
from ..config import load_file, load_text
from ..state import policy_classes
from ..store import open_store
from ..upstream.health import HealthChecker
from .worker import Worker, install_signals

log = logging.getLogger("tollhouse")


async def _store_ready(store, config) -> tuple[bool, dict]:
    """Ready when the store answers, or when `store_failure` says to serve without it
    (open, local); with `closed` a store that is down means not ready."""
    if config.store == "memory":
        return True, {"kind": "memory", "up": True}
    up = await store.ping()
    return up or config.store_failure != "closed", {"kind": store.kind, "up": up,
                                                      "store_failure": config.store_failure}


class LocalController:
    """Admin answers for a single-process gateway."""

    def __init__(self, worker: Worker):
        self.worker = worker

    @property
    def config(self):
        return self.worker.state.config

    async def snapshots(self):
        return [self.worker.snapshot()]

    async def statuses(self):
        return [self.worker.status()]

    async def samples(self):
        return [self.worker.dashboard_sample()]

    @property
    def store(self):
        return self.worker.store

    async def reload(self):
        return self.worker.reload_file()

    async def purge(self, route, prefix, tag):
        return await self.worker.purge_cache(route, prefix, tag)

    async def admin(self, kind, method, path, body, request=None):
        return await self.worker.admin(kind, method, path, body, {**(request or {}), "writer": True})

    async def ready(self):
        return await _store_ready(self.worker.store, self.worker.state.config)


def announce(listen, admin) -> None:
    print(f"tollhouse listening on {', '.join(f'{h}:{p}' for h, p in listen)}; admin on {admin[0]}:{admin[1]}",
          file=sys.stderr, flush=True)


async def serve_single(config, config_path: str | None, on_ready=None) -> int:
    loop = asyncio.get_running_loop()
    worker = Worker(config, config_path, loop)
    await worker.start(reuse_port=False)
    worker.run_health_checks()
    admin = AdminServer(LocalController(worker), config.admin.token)
    admin_addr = await admin.start(*config.admin.listen)
    stop = asyncio.Event()

    def on_reload():
        errors = worker.reload_file()
        for e in errors:
            log.error("reload rejected: %s", e)

    install_signals(loop, stop.set, on_reload)
    announce(worker.bound_addresses(), admin_addr)
    if on_ready is not None:
        on_ready(worker, admin_addr)
    await stop.wait()
    log.info("draining")
    admin.draining = True   # /readyz fails first; in-flight requests then finish within shutdown_grace
    await worker.drain()
    admin.close()
    return 0


class WorkerHandle:
    def __init__(self, index: int):
        self.index = index
        self.proc: subprocess.Popen | None = None
        self.reader = None
        self.writer = None
        self.ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future] = {}
        self.lock = asyncio.Lock()

    async def ask(self, op: str, timeout: float = 5.0, **kw):
        if self.writer is None:
            return None
        async with self.lock:
            msg_id = next(self.ids)
            self.writer.write(orjson.dumps({"op": op, "id": msg_id, **kw}) + b"\n")
            try:
                await self.writer.drain()
                line = await asyncio.wait_for(self.reader.readline(), timeout)
            except (ConnectionError, asyncio.TimeoutError):
                return None
            if not line:
                return None
            return orjson.loads(line).get("result")


class Supervisor:
    """Admin answers and lifecycle for several worker processes."""

    def __init__(self, config, config_path: str | None, text: str):
        self.config = config
        self.config_path = config_path
        self.text = text
        self.handles = [WorkerHandle(i) for i in range(config.workers)]
        self.stopping = False
        self.store = open_store(config.store)
        self.checker: HealthChecker | None = None

    def start_health_checks(self) -> None:
        """One checker for all workers; each change is told to every worker."""
        if self.checker is not None:
            self.checker.stop()
        self.checker = HealthChecker(self.config, self._health_changed)
        self.checker.start()

    def _health_changed(self, upstream: str, url: str, healthy: bool) -> None:
        for h in self.handles:
            asyncio.get_running_loop().create_task(h.ask("health", upstream=upstream, url=url, healthy=healthy))

    async def start_worker(self, handle: WorkerHandle) -> None:
        parent, child = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__)))), env.get("PYTHONPATH")]))
        handle.proc = subprocess.Popen([sys.executable, "-m", "tollhouse", "_worker", str(handle.index),
                                        str(child.fileno()), self.config_path or ""],
                                       pass_fds=(child.fileno(),), env=env)
        child.close()
        handle.reader, handle.writer = await asyncio.open_connection(sock=parent)
        handle.writer.write(orjson.dumps({"text": self.text}) + b"\n")
        await handle.writer.drain()
        line = await asyncio.wait_for(handle.reader.readline(), 30)
        if not line:
            raise RuntimeError(f"worker {handle.index} failed to start")
        if self.checker is not None:
            for (upstream, url), healthy in self.checker.health.items():
                if not healthy:
                    await handle.ask("health", upstream=upstream, url=url, healthy=False)

    async def watch(self, handle: WorkerHandle) -> None:
        """Restart a worker that exits while the gateway is not stopping."""
        while not self.stopping:
            code = await asyncio.get_running_loop().run_in_executor(None, handle.proc.wait)
            if self.stopping:
                return
            log.error("worker %d exited with %s; restarting it", handle.index, code)
            handle.writer = None
            await asyncio.sleep(0.5)
            try:
                await self.start_worker(handle)
            except Exception:  # noqa: BLE001
                log.exception("worker %d could not be restarted", handle.index)

    async def snapshots(self):
        answers = await asyncio.gather(*(h.ask("snapshot") for h in self.handles))
        return [a for a in answers if a is not None]

    async def statuses(self):
        answers = await asyncio.gather(*(h.ask("status") for h in self.handles))
        return [a for a in answers if a is not None]

    async def samples(self):
        answers = await asyncio.gather(*(h.ask("dashboard") for h in self.handles))
        return [a for a in answers if a is not None]

    async def reload(self):
        if not self.config_path:
            return ["no config file to reload (started from the embedded demo config)"]
        config, errors, text = load_file(self.config_path)
        if not errors:
            errors = policy_classes(config)[1]
        if errors:
            return [str(e) for e in errors]
        answers = await asyncio.gather(*(h.ask("reload", text=text) for h in self.handles))
        problems = [e for a in answers if a for e in a]
        if not problems:
            self.text = text
            self.config = config
            self.start_health_checks()
        return problems

    async def ready(self):
        return await _store_ready(self.store, self.config)

    async def purge(self, route, prefix, tag):
        # Each worker purges its own memory cache (a shared Redis answers the first; the rest find nothing left).
        answers = await asyncio.gather(*(h.ask("purge", route=route, prefix=prefix, tag=tag) for h in self.handles))
        if any(a is None for a in answers):
            raise RuntimeError("a worker did not purge")
        return sum(answers)

    async def admin(self, kind, method, path, body, request=None):
        """A kind's admin call, made in every worker (each holds its own state); the first
        answer. With a shared store the first worker is the one that writes it (`writer`);
        with memory every worker applies it to its own copy, from the same `request`."""
        shared = self.store.kind != "memory"
        answers = await asyncio.gather(*(h.ask("admin", kind=kind, method=method, path=path, body=body,
                                                request={**(request or {}), "writer": i == 0 or not shared})
                                         for i, h in enumerate(self.handles)))
        return next((a for a in answers if a is not None), None)

    async def stop(self):
        self.stopping = True
        for h in self.handles:
            if h.proc is not None and h.proc.poll() is None:
                h.proc.terminate()
        loop = asyncio.get_running_loop()
        grace = self.config.shutdown_grace + 5
        for h in self.handles:
            if h.proc is not None:
                try:
                    await asyncio.wait_for(loop.run_in_executor(None, h.proc.wait), grace)
                except asyncio.TimeoutError:
                    h.proc.kill()
        await self.store.close()


async def serve_supervised(config, config_path: str | None, text: str) -> int:
    loop = asyncio.get_running_loop()
    sup = Supervisor(config, config_path, text)
    for h in sup.handles:
        await sup.start_worker(h)
    sup.start_health_checks()
    watchers = [loop.create_task(sup.watch(h)) for h in sup.handles]
    admin = AdminServer(sup, config.admin.token)
    admin_addr = await admin.start(*config.admin.listen)
    stop = asyncio.Event()

    def on_reload():
        async def go():
            for e in await sup.reload():
                log.error("reload rejected: %s", e)
        loop.create_task(go())

    install_signals(loop, stop.set, on_reload)
    announce(config.listen, admin_addr)
    await stop.wait()
    admin.draining = True
    if sup.checker is not None:
        sup.checker.stop()
    await sup.stop()
    admin.close()
    for w in watchers:
        w.cancel()
    return 0


def worker_main(index: int, control_fd: int, config_path: str) -> int:
    """Entry of a supervised worker process (`python -m tollhouse _worker`)."""
    sock = socket.socket(fileno=control_fd)

    async def main():
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection(sock=sock)
        first = orjson.loads(await reader.readline())
        config, errors = load_text(first["text"])
        if errors:
            for e in errors:
                log.error("%s", e)
            return 1
        worker = Worker(config, config_path or None, loop, index)
        await worker.start(reuse_port=True)
        install_signals(loop, lambda: loop.create_task(worker.drain()))
        writer.write(b'{"ready":true}\n')
        await writer.drain()
        control = loop.create_task(_serve_control(worker, reader, writer))
        await worker.wait_stopped()
        control.cancel()
        return 0

    return run_loop(main())


async def _serve_control(worker: Worker, reader, writer):
    while True:
        line = await reader.readline()
        if not line:
            await worker.drain()  # the supervisor is gone: do not run unsupervised
            return
        msg = orjson.loads(line)
        op = msg.get("op")
        if op == "snapshot":
            result = worker.snapshot()
        elif op == "status":
            result = worker.status()
        elif op == "dashboard":
            result = worker.dashboard_sample()
        elif op == "reload":
            result = worker.reload_text(msg["text"])
        elif op == "purge":
            try:
                result = await worker.purge_cache(msg["route"], msg["prefix"], msg["tag"])
            except Exception:  # noqa: BLE001 - reported to the admin as a failed purge
                log.exception("cache purge failed")
                result = None
        elif op == "admin":
            result = await worker.admin(msg["kind"], msg["method"], msg["path"], msg["body"], msg.get("request"))
        elif op == "health":
            worker.set_health(msg["upstream"], msg["url"], msg["healthy"])
            result = True
        else:
            result = None
        writer.write(orjson.dumps({"id": msg.get("id"), "result": result}) + b"\n")
        await writer.drain()


def run_loop(coro) -> int:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def run_gateway(config, config_path: str | None, text: str) -> int:
    if config.workers > 1:
        return run_loop(serve_supervised(config, config_path, text))
    return run_loop(serve_single(config, config_path))
