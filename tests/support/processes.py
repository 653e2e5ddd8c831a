"""Real processes for integration tests: the gateway and redis-server."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_REFUSING: list = []


def refused_port() -> int:
    """A port where connections are refused for the whole test run: bound, never listening.
    (A port `free_port` found free may be taken by another process a moment later.)"""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    _REFUSING.append(s)
    return s.getsockname()[1]


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception:  # noqa: BLE001 - keep polling until the deadline
            pass
        time.sleep(interval)
    raise TimeoutError("condition not met in time")


class Gateway:
    """`tollhouse run` as a subprocess on free ports; config text gets {port}, {admin_port} filled."""

    def __init__(self, config: str, workers: int | None = None, env: dict | None = None):
        self.port = free_port()
        self.admin_port = free_port()
        self.dir = tempfile.mkdtemp(prefix="tollhouse-test-")
        self.config_path = os.path.join(self.dir, "gateway.yaml")
        self.template = config
        self.write_config(config)
        self.workers = workers
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.stdout_path = os.path.join(self.dir, "stdout.log")
        self.stderr_path = os.path.join(self.dir, "stderr.log")

    def write_config(self, config: str) -> None:
        text = config.replace("{port}", str(self.port)).replace("{admin_port}", str(self.admin_port))
        if not re.search(r"(?m)^listen:", text):
            text = f"listen: 127.0.0.1:{self.port}\n" + text
        if not re.search(r"(?m)^admin:", text):
            text = f"admin: {{listen: '127.0.0.1:{self.admin_port}'}}\n" + text
        with open(self.config_path, "w") as f:
            f.write(text)

    def start(self, attempts: int = 3) -> "Gateway":
        cmd = [sys.executable, "-m", "tollhouse", "run", "-c", self.config_path]
        if self.workers:
            cmd += ["--workers", str(self.workers)]
        env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src") + os.pathsep + ROOT, **self.env}
        for attempt in range(attempts):
            self.proc = subprocess.Popen(cmd, stdout=open(self.stdout_path, "wb"),
                                         stderr=open(self.stderr_path, "wb"), env=env)
            try:
                wait_for(lambda: self.proc.poll() is not None or self._serving(), timeout=20)
            except TimeoutError:
                pass
            if self.proc.poll() is None and self._serving():
                return self
            self.stop()
            if "address already in use" in self.stderr().lower() and attempt + 1 < attempts:
                # free_port() only found the ports free: an outgoing connection of an earlier
                # test (its source port) can take one before the gateway binds. New ports.
                self.port, self.admin_port = free_port(), free_port()
                self.write_config(self.template)
                continue
            break
        raise RuntimeError(f"gateway did not start:\n{self.stderr()}")

    def _serving(self) -> bool:
        try:
            return self.get_admin("/healthz")[0] == 200 and self._port_open()
        except OSError:
            return False

    def _port_open(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True

    def get_admin(self, path: str, method: str = "GET", token: str | None = None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stdout(self) -> str:
        with open(self.stdout_path, errors="replace") as f:
            return f.read()

    def stderr(self) -> str:
        with open(self.stderr_path, errors="replace") as f:
            return f.read()

    def signal(self, sig) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisServer:
    """A real redis-server on an ephemeral port; `kill()` and `start()` again on the same port."""

    def __init__(self, *options: str):
        if not shutil.which("redis-server"):
            raise RuntimeError("redis-server is not installed (make test installs it when run as root)")
        self.options = options   # more redis-server arguments ("--requirepass", "secret")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="tollhouse-redis-")
        self.proc = None

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--dir", self.dir, *self.options],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close() or True)
        return self

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    import random

    for _ in range(200):
        port = random.randint(20000, 50000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a cluster node")


class RedisCluster:
    """Three real redis-server nodes in cluster mode, joined with redis-cli --cluster create."""

    def __init__(self, nodes: int = 3):
        if not shutil.which("redis-cli"):
            raise RuntimeError("redis-cli is not installed")
        self.ports = [_cluster_port() for _ in range(nodes)]
        self.dir = tempfile.mkdtemp(prefix="tollhouse-cluster-")
        self.procs = []

    def start(self) -> "RedisCluster":
        for port in self.ports:
            d = os.path.join(self.dir, str(port))
            os.makedirs(d)
            self.procs.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", os.path.join(d, "nodes.conf"), "--save", "", "--appendonly", "no",
                 "--dir", d], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in self.ports:
            wait_for(lambda port=port: socket.create_connection(("127.0.0.1", port), timeout=0.5).close() or True)
        subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)

        def ok():
            out = subprocess.run(["redis-cli", "-p", str(self.ports[0]), "cluster", "info"], capture_output=True,
                                 text=True).stdout
            return "cluster_state:ok" in out
        wait_for(ok, timeout=20, interval=0.2)
        return self

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def cleanup(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class RssWatch:
    """`with RssWatch(pid) as w: ...` then `w.growth_kib`: the peak resident memory over the start."""

    def __init__(self, pid: int):
        import threading

        self.pid = pid
        self.before = self.peak = self._rss_kib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss_kib())
            time.sleep(0.02)

    def __enter__(self) -> "RssWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_kib(self) -> int:
        return self.peak - self.before
