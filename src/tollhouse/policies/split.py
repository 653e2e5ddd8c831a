"""Traffic splitting (route `split`, `sticky`; docs/releases.md): a route's requests shared
between upstreams by weight, as a way of choosing the upstream (the route's chooser,
routing.RouteTarget.choose_pool), so every other policy of the route works unchanged.

- Each side is an upstream with its own pool, health checks and breaker.
- `force` sends a request carrying a header (or cookie) value to its side, whatever
  the weights: canary testers, internal traffic.
- `sticky` keeps a caller on one side while the weights stay the same: by consumer
  (anonymous callers by address), by client address, or by a cookie the gateway sets
  (`tollhouse-split-<route>`, naming the side).
- A side whose targets are all unhealthy gets no traffic while another side is healthy.
- `tollhouse_split_requests_total{route,upstream}` counts each side's requests.
- Weights change live through the admin listener (`GET`/`PUT /routes/{name}/split`,
  `SplitWeights`): with a Redis store every instance follows within a second; a reload
  keeps them unless the file's `split` for the route changed.
"""
from __future__ import annotations

import asyncio
import logging
import time
import zlib
from bisect import bisect_right
from random import random

import orjson

from ..clock import CLOCK
from ..config.loader import ConfigError
from ..config.schema import Duration, Field, Int, ListOf, Ratio, Schema, Str, error_at
from ..exchange.forwarding import any_healthy
from ..exchange.request import cookie_value
from ..observability.metrics import BUCKETS, bucket as latency_bucket   # (a local `bucket` is a second's figures)
from ..pipeline import Policy
from ..registry import PolicyKind

log = logging.getLogger("tollhouse.split")

COOKIE_PREFIX = "tollhouse-split-"
STORE_KEY = "tollhouse:split:v1:"   # + route name: the fleet's live weights (JSON)
FOLLOW_INTERVAL = 0.25              # seconds between looks at the store's weights
HEALTH_INTERVAL = 0.1               # seconds a choice of the sides with healthy targets is kept
STICKY_KEPT = 10000                 # callers whose side is remembered (forgotten all at once past it)


class Force(Schema):
    header = Field(Str(pattern=r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"), "", "a request header that sends the request here")
    cookie = Field(Str(pattern=r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"), "", "or a cookie that does")
    value = Field(Str(), doc="the value the header or cookie must have")

    def check(self, path, lines, line, errors):
        if bool(self.header) == bool(self.cookie):
            error_at(errors, path, "header", lines, line, "give one of header or cookie")


class Side(Schema):
    upstream = Field(Str(), doc="an upstream in `upstreams`")
    weight = Field(Int(min=0, max=10000), doc="its share, relative to the other sides' (0: none)")
    force = Field(Force, None, "{header | cookie, value}: requests that carry it go to this side")


class Rollback(Schema):
    error_ratio = Field(Ratio(), None, "a side whose share of 5xx answers (upstream failures included) passes "
                                       "this is rolled back: 5% or 0.05")
    p99 = Field(Duration(min=0.001), None, "a side whose p99 time to the response head passes this is rolled back")
    min_requests = Field(Int(min=1), 100, "a side is judged only with at least this many requests in the window")
    window = Field(Duration(min=1.0, max=3600.0), 60.0, "how far back requests count")
    to = Field(Str(), doc="the side that keeps the traffic (never rolled back itself)")

    def check(self, path, lines, line, errors):
        if self.error_ratio is None and self.p99 is None:
            error_at(errors, path, "error_ratio", lines, line, "give error_ratio, p99 or both")


def check_route(route, where: str, config, errors: list) -> None:
    """`split` replaces `upstream`; its sides name upstreams, and one has weight; `sticky`
    and `rollback` need `split`; rollback's `to` is one of the sides."""
    if route.split is None:
        for key in ("sticky", "rollback"):
            if getattr(route, key):
                errors.append(ConfigError(f"{where}.{key}", None, "needs split"))
        return
    if route.rollback is not None and route.rollback.to not in {side.upstream for side in route.split}:
        errors.append(ConfigError(f"{where}.rollback.to", None, f"{route.rollback.to!r} is not a side of split"))
    if route.upstream:
        errors.append(ConfigError(f"{where}.upstream", None, "a route with split names its upstreams in split"))
    if not route.split:
        errors.append(ConfigError(f"{where}.split", None, "needs at least one side"))
        return
    seen = set()
    for i, side in enumerate(route.split):
        if side.upstream not in config.upstreams:
            errors.append(ConfigError(f"{where}.split[{i}].upstream", None,
                                      f"no upstream named {side.upstream!r} in upstreams"))
        elif config.upstreams[side.upstream].protocol != "http1":
            errors.append(ConfigError(f"{where}.split[{i}].upstream", None, "a split side must be an HTTP upstream"))
        if side.upstream in seen:
            errors.append(ConfigError(f"{where}.split[{i}].upstream", None, f"{side.upstream!r} is a side already"))
        seen.add(side.upstream)
    if not any(side.weight for side in route.split):
        errors.append(ConfigError(f"{where}.split", None, "no side has weight"))


class SplitChooser:
    """Chooses each request's upstream pool among a route's sides (see the module doc)."""

    __slots__ = ("pools", "weights", "forced", "sticky", "cookie", "counters", "keys", "file", "source", "set_at",
                 "bounds", "total", "checked_at", "sides_of", "outcome")

    def __init__(self, sides, pools: dict, sticky: str, route_name: str, stats):
        self.pools = [pools[s.upstream] for s in sides]
        self.weights = [s.weight for s in sides]
        self.file = [[s.upstream, s.weight] for s in sides]   # the config file's sides, as JSON has them
        self.source = "file"   # who set the weights in force: file, operator, rollback
        self.set_at = time.time()
        # Worked out when the weights or the sides' health change, not per request: the
        # cumulative weights of the usable sides, their total, and sticky callers' sides.
        self.bounds: list = []
        self.total = 0
        self.checked_at = -1.0
        self.sides_of: dict = {}
        self.outcome = None   # the route's SplitSide policy: the side served is its outcome
        # (index, is a cookie, name, value) of the sides a request can be sent to by what it carries.
        self.forced = [(i, bool(s.force.cookie), s.force.cookie or s.force.header, s.force.value)
                       for i, s in enumerate(sides) if s.force is not None]
        self.sticky = sticky
        self.cookie = COOKIE_PREFIX + route_name
        self.counters = stats.counters
        self.keys = [("split_requests", (("route", route_name), ("upstream", s.upstream))) for s in sides]
        for key in self.keys:
            stats.declare(*key)

    def set_weights(self, weights: dict, source: str, set_at: float) -> None:
        """Weights by upstream name (sides not named keep theirs); one list swapped in whole."""
        self.weights = [weights.get(pool.name, w) for pool, w in zip(self.pools, self.weights)]
        self.source, self.set_at = source, set_at
        self.checked_at = -1.0   # worked out again at the next request

    def describe(self, route: str) -> dict:
        return {"route": route, "sides": [{"upstream": p.name, "weight": w} for p, w in zip(self.pools, self.weights)],
                "source": self.source, "set_at": self.set_at}

    def choose(self, exchange):
        i = self._forced(exchange) if self.forced else -1
        if i < 0:
            if CLOCK.now - self.checked_at > HEALTH_INTERVAL:
                self._work_out()
            sticky = self.sticky
            if not sticky:
                i = bisect_right(self.bounds, random() * self.total)
            elif sticky == "cookie":
                i = self._by_cookie(exchange)
            else:
                identity = exchange.identity if sticky == "consumer" else None
                if identity is not None:
                    caller = identity.consumer
                else:   # without X-Forwarded-For the client is the socket peer (no property call)
                    caller = exchange.conn.peer_ip if exchange.xff is None else exchange.client_ip
                i = self.sides_of.get(caller, -1)
                if i < 0:
                    i = self._place(caller)
        key = self.keys[i]
        counters = self.counters
        counters[key] = counters.get(key, 0) + 1
        pool = self.pools[i]
        if self.outcome is not None:
            exchange.remember(self.outcome.slot, pool.name)
        return pool

    def _forced(self, exchange) -> int:
        for i, is_cookie, name, value in self.forced:
            sent = cookie_value(exchange, name) if is_cookie else exchange.header(name)
            if sent == value:
                return i
        return -1

    def _by_cookie(self, exchange) -> int:
        named = cookie_value(exchange, self.cookie)
        if named is not None:
            for i, pool in enumerate(self.pools):
                if pool.name == named and self._usable(i):
                    return i
        return bisect_right(self.bounds, random() * self.total)

    def _place(self, caller: str) -> int:
        """A sticky caller's side: a stable hash (the same side on every worker and instance)
        into the weights, remembered until they change."""
        side = bisect_right(self.bounds, zlib.crc32(caller.encode()) % self.total)
        if len(self.sides_of) >= STICKY_KEPT:
            self.sides_of.clear()
        self.sides_of[caller] = side
        return side

    def _usable(self, i: int) -> bool:
        bounds = self.bounds
        return bounds[i] > (bounds[i - 1] if i else 0)

    def _work_out(self) -> None:
        """The cumulative weights of the usable sides: those with weight, less those with no
        healthy target while another side has one."""
        weights = self.weights
        usable = [w if w and any_healthy(pool.targets) else 0 for w, pool in zip(weights, self.pools)]
        if not any(usable):
            usable = weights
        bounds, total = [], 0
        for w in usable:
            total += w
            bounds.append(total)
        if bounds != self.bounds:
            self.sides_of = {}   # sticky callers are placed again by the new weights
        self.bounds, self.total, self.checked_at = bounds, total, CLOCK.now


class SplitSide(Policy):
    """The side that served each request of a split route is this policy's outcome (the
    access log's `split` field, the span's `tollhouse.split.upstream`): the chooser notes it
    in this policy's slot as it chooses. No hook of its own: nothing to call per request."""

    phase = "transform"
    outcome = "split"


class StickyCookie(SplitSide):
    """With `sticky: cookie`: sets the cookie when the request came without one naming the
    side that served it."""

    def __init__(self, config, context, *, cookie: str):
        super().__init__(config, context)
        self.cookie = cookie

    def on_response(self, exchange):
        pool = exchange.pool
        if pool is not None and cookie_value(exchange, self.cookie) != pool.name:
            exchange.response_headers.append(
                b"set-cookie: %s=%s; Path=/; HttpOnly; SameSite=Lax\r\n" % (self.cookie.encode(), pool.name.encode()))


class SplitWeights:
    """A worker's live split weights, kept across reloads: the admin's `GET`/`PUT
    /routes/{name}/split`, and, with a Redis store, the fleet's weights followed from it."""

    def __init__(self, store, worker):
        self.store = store
        self.shared = store.kind != "memory"
        self.loop = worker.loop
        self.choosers: dict[str, SplitChooser] = {}   # route name -> the current version's chooser
        self.live: dict[str, dict] = {}   # route name -> {"weights", "source", "set_at", "file"} set at run time
        self.watches: dict[str, RollbackWatch] = {}   # route name -> its rollback watch
        self.task = None
        self.judge = None

    def reconfigure(self, config) -> "SplitWeights":
        return self

    def attach(self, route: str, chooser: SplitChooser) -> None:
        """A config version's chooser for `route`: live weights carry over unless the file's sides changed."""
        self.choosers[route] = chooser
        record = self.live.get(route)
        if record is not None:
            if record["file"] == chooser.file:
                chooser.set_weights(record["weights"], record["source"], record["set_at"])
            else:
                del self.live[route]

    def watch(self, route: str, watch: "RollbackWatch") -> None:
        self.watches[route] = watch

    def start(self, config) -> None:
        routes = {r.name or f"route-{i}" for i, r in enumerate(config.routes) if r.split is not None}
        self.choosers = {name: c for name, c in self.choosers.items() if name in routes}
        watched = {r.name or f"route-{i}" for i, r in enumerate(config.routes) if r.rollback is not None}
        self.watches = {name: w for name, w in self.watches.items() if name in watched}
        if self.shared and self.task is None and self.choosers:
            self.task = self.loop.create_task(self._follow())
        if self.judge is None and self.watches:
            self.judge = self.loop.create_task(self._judge())

    async def _judge(self) -> None:
        """Rollback: each watched route's sides judged once a second, off the request path."""
        while True:
            await asyncio.sleep(1.0)
            now = time.time()
            for route, watch in list(self.watches.items()):
                chooser = self.choosers.get(route)
                if chooser is None:
                    continue
                for side, figures in watch.failing(chooser, now):
                    await self._roll_back(route, chooser, watch, side, figures)

    async def _roll_back(self, route: str, chooser: "SplitChooser", watch: "RollbackWatch", side: str,
                         figures: dict) -> None:
        weights = {side: 0}
        current = {p.name: w for p, w in zip(chooser.pools, chooser.weights)}
        if not any(w for name, w in current.items() if name != side):
            weights[watch.config.to] = 100   # the traffic needs somewhere to go
        record = {"weights": weights, "source": "rollback", "set_at": time.time(), "file": chooser.file}
        log.warning("route %s: side %s rolled back to %s: %s", route, side, watch.config.to, figures)
        watch.rolled_back(side)
        await self._publish(route, chooser, record)

    async def _follow(self) -> None:
        """The fleet's weights, looked at every FOLLOW_INTERVAL, off the request path."""
        while True:
            await asyncio.sleep(FOLLOW_INTERVAL)
            for route, chooser in list(self.choosers.items()):
                try:
                    raw = await self.store.get(STORE_KEY + route)
                except Exception as e:  # noqa: BLE001 - the store is down: keep the weights in force
                    log.debug("split weights of %s not read: %s", route, e)
                    continue
                if raw is None:
                    continue
                record = orjson.loads(raw)
                known = self.live.get(route)
                if record.get("file") == chooser.file and (known is None or known["set_at"] != record["set_at"]):
                    self._apply(route, chooser, record)

    def _apply(self, route: str, chooser: SplitChooser, record: dict) -> None:
        self.live[route] = record
        chooser.set_weights(record["weights"], record["source"], record["set_at"])
        log.info("route %s: split weights %s (%s)", route, record["weights"], record["source"])

    async def admin(self, method: str, path: str, body: str, request: dict | None = None):
        route = path.split("/")[2]
        chooser = self.choosers.get(route)
        if chooser is None:
            return 404, {"error": f"no route named {route!r} with a split"}
        if method == "GET":
            return 200, chooser.describe(route)
        weights, error = _weights_of(body, chooser)
        if error is not None:
            return 400, {"error": error}
        record = {"weights": weights, "source": "operator", "set_at": time.time(), "file": chooser.file}
        error = await self._publish(route, chooser, record)
        if error is not None:
            return 503, {"error": f"the store failed: {error}; the weights are unchanged"}
        return 200, chooser.describe(route)

    async def _publish(self, route: str, chooser: "SplitChooser", record: dict) -> str | None:
        """Weights in force here and, with Redis, fleet-wide; why not, when the store failed."""
        if self.shared:
            try:
                await self.store.set(STORE_KEY + route, orjson.dumps(record))
            except Exception as e:  # noqa: BLE001 - the fleet could not be told: change nothing
                return type(e).__name__
        self._apply(route, chooser, record)
        return None

    def close(self) -> None:
        for task in (self.task, self.judge):
            if task is not None:
                task.cancel()
        self.task = self.judge = None


def _weights_of(body: str, chooser: SplitChooser):
    """(weights by upstream, None) from a PUT body `{"weights": {upstream: weight}}`, or (None, why not)."""
    try:
        document = orjson.loads(body or b"null")
    except orjson.JSONDecodeError as e:
        return None, f"the body is not JSON: {e}"
    if not isinstance(document, dict) or not isinstance(document.get("weights"), dict):
        return None, 'weights: expected {"weights": {"<upstream>": <weight>, ...}}'
    sides = {pool.name for pool in chooser.pools}
    weights = {}
    for upstream, weight in document["weights"].items():
        if upstream not in sides:
            return None, f"weights.{upstream}: not a side of this route (sides: {', '.join(sorted(sides))})"
        if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= 10000:
            return None, f"weights.{upstream}: expected a whole number from 0 to 10000, got {weight!r}"
        weights[upstream] = weight
    unknown = set(document) - {"weights"}
    if unknown:
        return None, f"{sorted(unknown)[0]}: unknown key"
    if not any(weights.get(pool.name, w) for pool, w in zip(chooser.pools, chooser.weights)):
        return None, "weights: no side would have weight"
    return weights, None


class RollbackWatch(Policy):
    """Counts a split route's answers per side in one-second buckets (from `on_response`,
    which sees upstream answers and the gateway's own 502/503/504 alike); the split's
    service judges them once a second (`failing`)."""

    phase = "transform"

    def __init__(self, config: Rollback, context):
        super().__init__(config, context)
        self.buckets: dict[int, dict] = {}   # second -> side -> [requests, errors, latency bucket counts]
        self.keys = {}
        self.stats = context.stats
        self.route_name = context.route_name
        for side in context.route.split:
            key = ("split_rollbacks", (("route", context.route_name), ("upstream", side.upstream)))
            self.keys[side.upstream] = key
            context.stats.declare(*key)

    def on_response(self, exchange):
        pool = exchange.pool
        if pool is None:
            return
        second = int(time.time())
        bucket = self.buckets.get(second)
        if bucket is None:
            bucket = self.buckets[second] = {}
            horizon = second - int(self.config.window) - 1
            for old in [s for s in self.buckets if s < horizon]:
                del self.buckets[old]
        figures = bucket.get(pool.name)
        if figures is None:
            figures = bucket[pool.name] = [0, 0, [0] * (len(BUCKETS) + 1)]
        figures[0] += 1
        if exchange.status >= 500:
            figures[1] += 1
        figures[2][latency_bucket(time.perf_counter() - exchange.started)] += 1

    def failing(self, chooser, now: float) -> list:
        """(side, figures) of the sides with weight, other than `to`, past a threshold with at
        least min_requests in the window."""
        config = self.config
        first = int(now - config.window) + 1
        totals: dict[str, list] = {}
        for second, bucket in self.buckets.items():
            if second < first:
                continue
            for side, (requests, errors, latency) in bucket.items():
                total = totals.setdefault(side, [0, 0, [0] * (len(BUCKETS) + 1)])
                total[0] += requests
                total[1] += errors
                total[2] = [a + b for a, b in zip(total[2], latency)]
        found = []
        for pool, weight in zip(chooser.pools, chooser.weights):
            requests, errors, latency = totals.get(pool.name, (0, 0, None))
            if pool.name == config.to or not weight or requests < config.min_requests:
                continue
            ratio = errors / requests
            p99 = _quantile(0.99, latency)
            if (config.error_ratio is not None and ratio > config.error_ratio) or (
                    config.p99 is not None and p99 > config.p99):
                found.append((pool.name, {"requests": requests, "error_ratio": round(ratio, 4),
                                          "p99_seconds": p99, "window_seconds": config.window}))
        return found

    def rolled_back(self, side: str) -> None:
        key = self.keys[side]
        self.stats.counters[key] = self.stats.counters.get(key, 0) + 1
        for bucket in self.buckets.values():   # judged afresh if an operator sends it traffic again
            bucket.pop(side, None)


def _quantile(q: float, counts: list) -> float:
    """The upper bound of the latency bucket holding quantile `q` (+Inf's: the last bound, doubled)."""
    total = sum(counts)
    running = 0
    for i, n in enumerate(counts):
        running += n
        if running >= q * total:
            return BUCKETS[i] if i < len(BUCKETS) else BUCKETS[-1] * 2
    return 0.0


def _watch(config, context, services):
    if config is None or context.route is None or context.route.split is None:
        return None
    watch = RollbackWatch(config, context)
    weights = services.worker("split")
    if weights is not None:
        weights.watch(context.route_name, watch)
    return watch


def _chooser(sides, context, services, pools):
    route = context.route
    chooser = SplitChooser(sides, pools, route.sticky, context.route_name, context.stats)
    chooser.outcome = services.shared.get(_OUTCOME + context.route_name)
    weights = services.worker("split")
    if weights is not None:
        weights.attach(context.route_name, chooser)
    return chooser


def _build(sides, context, services):
    if sides is None or context.route is None:
        return None
    if context.route.sticky == "cookie":
        policy = StickyCookie(None, context, cookie=COOKIE_PREFIX + context.route_name)
    else:
        policy = SplitSide(None, context)
    services.shared[_OUTCOME + context.route_name] = policy   # for the route's chooser (_chooser)
    return policy


_OUTCOME = "split-outcome:"


KIND = PolicyKind("split", phase="transform", key="split", build=_build, chooser=_chooser, check=check_route,
                  outcome=SplitSide.outcome,
                  own_upstream=False, service=lambda config, store, stats, worker: SplitWeights(store, worker),
                  admin=((("GET", "PUT"), r"/routes/[A-Za-z0-9_.-]+/split"),),
                  field=Field(ListOf(Side), None, "instead of `upstream`: [{upstream, weight, force: {header | "
                                                  "cookie, value}}]: requests shared by weight; see docs/releases.md"))

ROLLBACK = PolicyKind("rollback", phase="transform", key="rollback", build=_watch,
                      field=Field(Rollback, None, "with split: {error_ratio, p99, min_requests, window, to}: a failing "
                                                  "side's weight goes to 0 fleet-wide; see docs/releases.md"))

STICKY = PolicyKind("sticky", phase="transform", key="sticky", build=lambda config, context, services: None,
                    field=Field(Str(choices=("consumer", "ip", "cookie")), "",
                                "with split: keep a caller on one side (consumer, ip, or a cookie the gateway sets)"))
