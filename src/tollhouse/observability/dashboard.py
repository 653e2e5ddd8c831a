"""The live dashboard's figures (docs/operations.md "Live dashboard").

Every second the admin side samples its workers (`controller.samples()`:
each worker's metrics snapshot, and the per-consumer and per-client counts
it took since the last sample), turns the difference from the previous
sample into a one-second summary and publishes it to the store: a list per
instance, trimmed to `KEEP` seconds, with a TTL, and an index of instances
by last report. `/dashboard/data` reads every instance's list back and
adds them up. With Redis every gateway sharing it shows the whole fleet;
with the memory store, the one instance. Nothing here runs on the request
path: the workers only count consumers and refusals while folding their
ended exchanges (observability/metrics.py).
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque

import orjson

from ..store import Script
from .anomaly import AnomalyScores
from .metrics import BUCKETS, merge

log = logging.getLogger("tollhouse.dashboard")

KEEP = 300          # seconds of summaries kept per instance (the longest window)
TTL = KEEP + 30     # an instance that stops reporting leaves the fleet after this
RECENT = 5          # seconds averaged for the "requests per second now" figure
TOP = 10            # rows in the top consumers / denied clients tables
# One hash tag: every key in one Redis Cluster slot, so both scripts may touch them all.
PREFIX = "tollhouse:{dashboard}:"
INDEX = PREFIX + "instances"

_PUBLISH_LUA = """
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[4]), -1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[2]) - tonumber(ARGV[3]))
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""

_READ_LUA = """
local out = {}
for _, name in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')) do
  out[#out + 1] = name
  out[#out + 1] = redis.call('LRANGE', ARGV[2] .. name, -tonumber(ARGV[3]), -1)
end
return out
"""


def _publish_python(store, keys, args, now):
    summary, at, ttl, keep, name = args
    items = store.read(keys[0]) or []
    items.append(summary)
    store.write(keys[0], items[-int(keep):], float(ttl))
    index = {k: v for k, v in (store.read(keys[1]) or {}).items() if v > float(at) - float(ttl)}
    index[name] = float(at)
    store.write(keys[1], index, float(ttl))
    return 1


def _read_python(store, keys, args, now):
    since, prefix, count = args
    out = []
    for name, at in sorted((store.read(keys[0]) or {}).items(), key=lambda kv: kv[1]):
        if at >= float(since):
            out += [name, (store.read(prefix + name) or [])[-int(count):]]
    return out


PUBLISH = Script("dashboard_publish", _PUBLISH_LUA, _publish_python)
READ = Script("dashboard_read", _READ_LUA, _read_python)


def quantile(q: float, counts: list) -> float | None:
    """The q-quantile in seconds of histogram bucket counts, interpolated inside
    the bucket as Prometheus's histogram_quantile does; None without samples."""
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    running = 0
    for i, n in enumerate(counts):
        if running + n >= rank and n:
            lower = BUCKETS[i - 1] if i else 0.0
            if i == len(BUCKETS):   # the +Inf bucket: the last finite bound is all that is known
                return BUCKETS[-1]
            return lower + (BUCKETS[i] - lower) * (rank - running) / n
        running += n
    return BUCKETS[-1]


def _add(into: list, counts: list) -> None:
    for i, n in enumerate(counts):
        into[i] += n


def _diff(now: list, before: list | None) -> list:
    if before is None:
        return list(now)
    # A counter that went down (a worker restarted) counts from zero again.
    return [a - b if a >= b else a for a, b in zip(now, before)]


class Summariser:
    """Turns successive merged snapshots into one-second summaries."""

    def __init__(self):
        self.previous: dict | None = None

    def summary(self, merged: dict, consumers: dict, denied: dict, second: int) -> dict:
        before = self.previous or {"requests": {}, "request_duration": {}, "counters": {}}
        self.previous = merged
        status = {"2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0}
        routes: dict[str, dict] = {}
        total = 0
        for (route, _method, code), n in merged["requests"].items():
            delta = n - before["requests"].get((route, _method, code), 0)
            if delta < 0:
                delta = n
            if not delta:
                continue
            total += delta
            cls = f"{code // 100}xx"
            status[cls] = status.get(cls, 0) + delta
            row = routes.setdefault(route or "(unrouted)", {"requests": 0, "errors": 0, "latency": None})
            row["requests"] += delta
            if code >= 500:
                row["errors"] += delta
        latency = [0] * (len(BUCKETS) + 1)
        for route, (counts, _sum) in merged["request_duration"].items():
            prev = before["request_duration"].get(route)
            delta = _diff(counts, prev[0] if prev else None)
            row = routes.get(route or "(unrouted)")
            if row is not None:
                row["latency"] = delta
            _add(latency, delta)
        cache: dict[str, int] = {}
        splits: dict[str, dict] = {}   # route -> side -> [requests, rollbacks]
        limited = auth_failures = http2 = 0
        for (name, labels), v in merged["counters"].items():
            delta = v - before["counters"].get((name, labels), 0)
            if delta <= 0:
                continue
            if name == "http2_requests":
                http2 += int(delta)
            elif name == "cache_results":
                result = dict(labels).get("result", "")
                cache[result] = cache.get(result, 0) + int(delta)
            elif name == "ratelimit_rejections":
                limited += int(delta)
            elif name == "auth_failures":
                auth_failures += int(delta)
            elif name == "split_requests" or name == "split_rollbacks":
                pairs = dict(labels)
                side = splits.setdefault(pairs["route"], {}).setdefault(pairs["upstream"], [0, 0])
                side[0 if name == "split_requests" else 1] += int(delta)
        upstreams: dict[str, dict] = {}
        for (name, labels), v in merged["gauges"].items():
            pairs = dict(labels)
            if name == "circuit_state":
                upstreams.setdefault(pairs["upstream"], {"circuit": 0, "targets": {}})["circuit"] = int(v)
            elif name == "upstream_target_healthy":
                up = upstreams.setdefault(pairs["upstream"], {"circuit": 0, "targets": {}})
                up["targets"][pairs["target"]] = bool(v)
        return {"t": second, "requests": total, "status": status, "latency": latency, "routes": routes,
                "cache": cache, "limited": limited, "auth_failures": auth_failures, "http2": http2, "splits": splits,
                "consumers": _top(consumers, TOP * 5), "denied": _top(denied, TOP * 5),
                "upstreams": upstreams, "connections": merged["active_connections"]}


def _top(counts: dict, n: int) -> dict:
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n])


def _sum_into(into: dict, counts: dict) -> None:
    for k, v in counts.items():
        into[k] = into.get(k, 0) + v


_CIRCUITS = {0: "closed", 1: "open", 2: "half_open"}
_CIRCUIT_RANK = {0: 0, 2: 1, 1: 2}   # open is the worst, then half-open


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def aggregate(instances: dict[str, list[dict]], window: int, now: int) -> dict:
    """The fleet's figures over the last `window` whole seconds, from each instance's summaries."""
    first = now - window + 1
    buckets = len(BUCKETS) + 1
    series = {t: {"t": t, "requests": 0, "errors": 0, "latency": [0] * buckets} for t in range(first, now + 1)}
    status: dict[str, int] = {"2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0}
    latency = [0] * buckets
    routes: dict[str, dict] = {}
    cache: dict[str, int] = {}
    consumers: dict[str, int] = {}
    denied: dict[str, int] = {}
    upstreams: dict[str, dict] = {}
    splits: dict[str, dict] = {}
    limited = auth_failures = http2 = 0
    rows = []
    for name, summaries in sorted(instances.items()):
        mine = [s for s in summaries if first <= s["t"] <= now]
        last = max(summaries, key=lambda s: s["t"]) if summaries else None
        inst_latency = [0] * buckets
        inst_requests = inst_errors = 0
        for s in mine:
            point = series[s["t"]]
            point["requests"] += s["requests"]
            point["errors"] += s["status"].get("5xx", 0)
            _add(point["latency"], s["latency"])
            _add(latency, s["latency"])
            _add(inst_latency, s["latency"])
            _sum_into(status, s["status"])
            _sum_into(cache, s["cache"])
            _sum_into(consumers, s["consumers"])
            _sum_into(denied, s["denied"])
            limited += s["limited"]
            auth_failures += s["auth_failures"]
            http2 += s.get("http2", 0)
            for route, sides in s.get("splits", {}).items():
                for side, (requests, rollbacks) in sides.items():
                    total = splits.setdefault(route, {}).setdefault(side, [0, 0])
                    total[0] += requests
                    total[1] += rollbacks
            inst_requests += s["requests"]
            inst_errors += s["status"].get("5xx", 0)
            for route, r in s["routes"].items():
                row = routes.setdefault(route, {"route": route, "requests": 0, "errors": 0, "latency": [0] * buckets})
                row["requests"] += r["requests"]
                row["errors"] += r["errors"]
                if r["latency"]:
                    _add(row["latency"], r["latency"])
        if last is not None:
            _merge_upstreams(upstreams, last["upstreams"])
        rows.append({"instance": name, "last_report": last["t"] if last else None,
                     "rps": round(inst_requests / window, 2), "requests": inst_requests,
                     "error_ratio": round(inst_errors / inst_requests, 4) if inst_requests else 0.0,
                     "p99_ms": _ms(quantile(0.99, inst_latency)),
                     "connections": last["connections"] if last else 0})
    recent = [p["requests"] for p in series.values()][-RECENT:]
    return {
        "now": now,
        "window_seconds": window,
        "instances": rows,
        "fleet": {**_fleet(status, latency, cache, window, recent), "rate_limited": limited,
                  "auth_failures": auth_failures, "http2_requests": http2,
                  "http2_share": round(http2 / sum(status.values()), 4) if sum(status.values()) else None},
        "series": [{"t": p["t"], "requests": p["requests"], "errors": p["errors"],
                    "p50_ms": _ms(quantile(0.5, p["latency"])), "p99_ms": _ms(quantile(0.99, p["latency"]))}
                   for p in series.values()],
        "routes": [{"route": r["route"], "requests": r["requests"], "rps": round(r["requests"] / window, 2),
                    "error_ratio": round(r["errors"] / r["requests"], 4) if r["requests"] else 0.0,
                    "p50_ms": _ms(quantile(0.5, r["latency"])), "p99_ms": _ms(quantile(0.99, r["latency"]))}
                   for r in sorted(routes.values(), key=lambda r: (-r["requests"], r["route"]))],
        "splits": _split_rows(splits),
        "top_consumers": [{"consumer": k, "requests": v} for k, v in _top(consumers, TOP).items()],
        "top_denied": [{"client_ip": k, "refusals": v} for k, v in _top(denied, TOP).items()],
        "upstreams": [{"upstream": u["upstream"], "circuit": _CIRCUITS.get(u["circuit"], "closed"),
                       "targets": [{"url": t, "healthy": h} for t, h in sorted(u["targets"].items())]}
                      for _, u in sorted(upstreams.items())],
    }


def _split_rows(splits: dict) -> list:
    """Each split route's sides: their requests over the window, their share, their rollbacks."""
    rows = []
    for route, sides in sorted(splits.items()):
        total = sum(requests for requests, _ in sides.values())
        rows.append({"route": route, "sides": [
            {"upstream": side, "requests": requests, "share": round(requests / total, 4) if total else 0.0,
             "rollbacks": rollbacks} for side, (requests, rollbacks) in sorted(sides.items())]})
    return rows


def _merge_upstreams(into: dict, reported: dict) -> None:
    """One instance's view of the upstreams into the fleet's: the worst circuit state, and a
    target healthy only when every instance sees it healthy."""
    for name, up in reported.items():
        cur = into.setdefault(name, {"upstream": name, "circuit": 0, "targets": {}})
        if _CIRCUIT_RANK.get(up["circuit"], 0) > _CIRCUIT_RANK.get(cur["circuit"], 0):
            cur["circuit"] = up["circuit"]
        for target, healthy in up["targets"].items():
            cur["targets"][target] = cur["targets"].get(target, True) and healthy


def _fleet(status: dict, latency: list, cache: dict, window: int, recent: list) -> dict:
    """The fleet's request figures over the window."""
    total = sum(status.values())
    lookups = sum(cache.values())
    hits = cache.get("HIT", 0) + cache.get("STALE", 0)
    return {
        "requests": total,
        "rps": round(total / window, 2),
        "rps_now": round(sum(recent) / len(recent), 2),
        "status": status,
        "error_ratio": round(status.get("5xx", 0) / total, 4) if total else 0.0,
        "p50_ms": _ms(quantile(0.5, latency)),
        "p99_ms": _ms(quantile(0.99, latency)),
        "cache": {**cache, "hit_ratio": round(hits / lookups, 4) if lookups else None},
    }


def parse_window(text: str | None, default: int = 60) -> int:
    """`60`, `60s`, `5m`: whole seconds between 1 and KEEP."""
    if not text:
        return default
    text = text.strip().lower()
    scale = 60 if text.endswith("m") else 1
    number = text[:-1] if text[-1:] in ("s", "m") else text
    if not number.isdigit() or not 1 <= int(number) * scale <= KEEP:
        raise ValueError(f"window must be 1s to {KEEP}s (like 60s or 5m), not {text!r}")
    return int(number) * scale


class Dashboard:
    """The sampler and publisher of one instance, and the reader of the fleet."""

    def __init__(self, controller, instance: str | None = None, interval: float = 1.0, anomaly_z: float = 3.0):
        self.controller = controller
        self.instance = instance or socket.gethostname()
        self.interval = interval
        self.summariser = Summariser()
        self.anomalies = AnomalyScores()          # this instance's routes against their own baselines
        self.anomaly_z = anomaly_z
        self.local: deque = deque(maxlen=KEEP)   # this instance's summaries, when the store fails
        self.store_up = True
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def _run(self) -> None:
        await self.sample()   # the baseline: counts from before the first second are not "now"
        self.local.clear()
        while True:
            # Sample just after each wall-clock second, so instances' seconds line up.
            await asyncio.sleep(self.interval - time.time() % self.interval + 0.01)
            try:
                await self.sample()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the dashboard never stops the gateway
                log.exception("dashboard sample failed")

    async def sample(self) -> dict:
        samples = await self.controller.samples()
        merged = merge([s["snapshot"] for s in samples])
        consumers: dict = {}
        denied: dict = {}
        for s in samples:
            _sum_into(consumers, s["consumers"])
            _sum_into(denied, s["denied"])
        second = int(time.time()) - 1   # the second that just ended
        summary = self.summariser.summary(merged, consumers, denied, second)
        self.local.append(summary)
        self.anomalies.add(summary)
        try:
            await asyncio.wait_for(self.controller.store.run(
                PUBLISH, [PREFIX + self.instance, INDEX],
                [orjson.dumps(summary), second, TTL, KEEP, self.instance]), 2)
            self.store_up = True
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the store is down: this instance's own figures still show
            if self.store_up:
                log.warning("dashboard: cannot publish to the store (%s); showing this instance only",
                            type(e).__name__)
            self.store_up = False
        return summary

    async def data(self, window: int) -> dict:
        now = int(time.time()) - 1
        fleet = True
        try:
            found = await asyncio.wait_for(self.controller.store.run(
                READ, [INDEX], [now - KEEP, PREFIX, window + 1]), 2)
            instances = {_text(found[i]): [orjson.loads(s) for s in found[i + 1]] for i in range(0, len(found), 2)}
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001
            instances, fleet = {}, False
        if not instances.get(self.instance):
            instances[self.instance] = list(self.local)
        data = aggregate(instances, window, now)
        data["instance"] = self.instance
        # This instance's marks: routes whose last minute left their own baseline.
        scores = self.anomalies.scores()
        data["anomaly_z"] = self.anomaly_z
        data["anomalies"] = {route: signals for route, signals in scores.items()
                             if any(abs(v) > self.anomaly_z for v in signals.values())}
        for row in data.get("routes", ()):
            row["anomaly"] = data["anomalies"].get(row["route"])
        data["fleet_wide"] = fleet and getattr(self.controller.store, "kind", "memory") != "memory"
        data["store_up"] = fleet and self.store_up
        return data


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value
