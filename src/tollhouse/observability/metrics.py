"""Per-worker request statistics, cheap to record, merged across workers.

The request path records nothing here: a finished exchange is appended to
the worker's list of ended exchanges, and `Stats.fold` counts a whole batch
of them at once (every few milliseconds, and before every snapshot). In the
compiled build (metrics.pxd) that loop reads the exchanges' C fields.
Rendering to the Prometheus text format happens when /metrics is scraped,
over the merged snapshots of every worker (`merge`, `render`).
"""
from __future__ import annotations

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import generate_latest

#: Histogram bucket upper bounds in seconds (the last, +Inf, is implicit).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0)


#: Gauges that hold a state per worker; merged by maximum, not summed.
STATE_GAUGES = frozenset(("circuit_state", "ratelimit_fallback", "cache_bypass"))
#: Per-worker health views: a target is healthy when every worker sees it healthy.
MIN_GAUGES = frozenset(("upstream_target_healthy",))
#: Distinct consumers / client addresses counted between two dashboard samples
#: (`Stats.take_tops`); a flood of new addresses is not remembered past it.
TOP_KEYS = 10000


def bucket(value: float) -> int:
    """The index of `value`'s bucket: the first whose upper bound is >= value (bisect_left
    over BUCKETS; +Inf's index past them). A scan from the smallest: a request's duration sits
    in the first few buckets, and compiled this is a C loop, not a call into bisect."""
    i = 0
    for bound in BUCKETS:
        if value <= bound:
            return i
        i += 1
    return i


class Tally:
    """One counter's value, kept by the code that bumps it (Stats.tally)."""

    __slots__ = ("value",)

    def __init__(self):
        self.value = 0.0


class Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self):
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bucket(value)] += 1
        self.sum += value


class RouteStats:
    """A route's counters, held by the compiled route so the hot path does no lookups by name."""

    __slots__ = ("name", "counts", "duration", "upstream", "outcomes")

    def __init__(self, name: str, upstream: Histogram | None):
        self.name = name
        self.counts: dict[tuple[bytes, int], int] = {}
        self.duration = Histogram()
        self.upstream = upstream
        # Policy outcomes, counted from the ended exchanges rather than by the policies:
        # counter family (a policy's outcome_metric) -> label -> count.
        self.outcomes: dict[str, dict[str, int]] = {}

    def observe(self, method: bytes, status: int, duration: float) -> None:
        key = (method, status)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        self.duration.observe(duration)

    def declare(self, methods) -> None:
        """Export this route's request counter at 0 for each of `methods` (bytes) with status
        200, and so its duration histogram, from the first scrape: rate() and
        histogram_quantile() over a quiet route then read 0, not nothing."""
        for method in methods:
            self.counts.setdefault((method, 200), 0)

    def observe_upstream(self, duration: float) -> None:
        if self.upstream is not None:   # None for a route whose upstream is chosen per request (split)
            self.upstream.observe(duration)


_HTTP2_KEY = ("http2_requests", ())
_GRPC_CODES = tuple(str(i) for i in range(32))


class Stats:
    """One worker's counters. Keys are plain tuples; values plain numbers (a tally's, its cell's)."""

    __slots__ = ("routes", "upstream_duration", "unrouted", "counters", "active_connections", "active_requests",
                 "gauges", "derived", "consumers", "denied", "histograms", "tallies")

    def __init__(self):
        self.routes: dict[str, RouteStats] = {}
        self.upstream_duration: dict[str, Histogram] = {}
        self.unrouted = RouteStats("", None)
        self.counters: dict[tuple[str, tuple], float] = {}   # (metric name, label pairs) -> value
        self.active_connections = 0
        self.active_requests = 0
        self.gauges: dict[tuple[str, tuple], float] = {}
        self.derived: dict[tuple[str, str], str] = {}   # (outcome family, label) -> a per-route counter of its own
        # Requests per consumer, and refusals per client address, since the last dashboard sample.
        self.consumers: dict[str, int] = {}
        self.denied: dict[str, int] = {}
        self.histograms: dict[tuple[str, tuple], Histogram] = {}   # (name, label pairs) -> histogram
        self.tallies: dict[tuple[str, tuple], Tally] = {}   # (name, label pairs) -> a counter's cell (`tally`)

    def route(self, name: str, upstream: str | None) -> RouteStats:
        """The counters of a route (kept across reloads while the name stays)."""
        stats = self.routes.get(name)
        if stats is None:
            stats = self.routes[name] = RouteStats(name, None)
        if upstream is not None:
            stats.upstream = self.upstream_histogram(upstream)
        return stats

    def upstream_histogram(self, upstream: str) -> Histogram:
        """`tollhouse_upstream_duration_seconds{upstream}`'s histogram."""
        h = self.upstream_duration.get(upstream)
        if h is None:
            h = self.upstream_duration[upstream] = Histogram()
        return h

    def fold(self, exchanges: list) -> None:
        """Count a batch of ended exchanges (`route`, `method`, `status`,
        `started`/`ended` and `upstream_time` in perf_counter seconds, and the
        outcomes of the route's policies, read from what they remembered)."""
        # RouteStats.observe / Histogram.observe inlined: calling them per
        # exchange doubles this loop's cost (0.5 -> 1.1 µs compiled, 0.7 -> 1.8 plain).
        unrouted = self.unrouted
        consumers = self.consumers
        denied = self.denied
        counters = self.counters
        for ex in exchanges:
            route = ex.route
            stats = route.stats if route is not None else unrouted
            status = ex.status
            key = (ex.method, status)
            counts = stats.counts
            counts[key] = counts.get(key, 0) + 1
            duration = ex.ended - ex.started
            hist = stats.duration
            hist.counts[bucket(duration)] += 1
            hist.sum += duration
            # Time to the upstream's response head, for exchanges that got one.
            upstream = ex.upstream_time
            if upstream:
                hist = stats.upstream
                if hist is None:   # the route chooses its upstream per request (split): the pool's own
                    hist = self.upstream_histogram(ex.pool.name)
                hist.counts[bucket(upstream)] += 1
                hist.sum += upstream
            if ex.version == "2":   # HTTP/1.x is the rest: tollhouse_requests_total less these
                counters[_HTTP2_KEY] = counters.get(_HTTP2_KEY, 0) + 1
            if ex.grpc_status >= 0:
                grpc = ("grpc_responses", (("route", stats.name), ("grpc_status", _GRPC_CODES[ex.grpc_status & 31])))
                counters[grpc] = counters.get(grpc, 0) + 1
            identity = ex.identity
            if identity is not None:
                consumer = identity.consumer
                n = consumers.get(consumer, 0)
                if n or len(consumers) < TOP_KEYS:
                    consumers[consumer] = n + 1
            if status == 429 or status == 401 or status == 403:   # refused by a limit, auth or ip rules
                ip = ex.conn.peer_ip if ex.xff is None else ex.client_ip
                n = denied.get(ip, 0)
                if n or len(denied) < TOP_KEYS:
                    denied[ip] = n + 1
            slots = ex.slots
            if slots is not None:
                # The policies' outcomes, from what each remembered in its slot; the
                # labels stay on the exchange for the access log (`outcomes`).
                chain = route.chain
                labels = ex.outcomes = chain.labels(slots)
                metrics = chain.outcome_metrics
                for i in range(len(labels)):
                    label = labels[i]
                    metric = metrics[i]
                    if label is not None and metric is not None:   # an outcome may be for the log only
                        counts = stats.outcomes.get(metric)
                        if counts is None:
                            counts = stats.outcomes[metric] = {}
                        counts[label] = counts.get(label, 0) + 1

    def take_tops(self) -> tuple[dict, dict]:
        """The requests per consumer and refusals per client address counted since the
        last call (the dashboard's sampler is the only caller)."""
        tops = self.consumers, self.denied
        self.consumers, self.denied = {}, {}
        return tops

    def declare(self, name: str, labels: tuple = ()) -> None:
        """Export counter `tollhouse_<name>` at 0 until it counts something: a series
        that appears already non-zero loses its first increase(), and an alert cannot tell
        "none" from "missing"."""
        self.counters.setdefault((name, labels), 0)

    def declare_gauge(self, name: str, labels: tuple = (), value: float = 0) -> None:
        self.gauges.setdefault((name, labels), value)

    def declare_outcomes(self, route: str, metric: str, labels) -> None:
        """Export a route's outcome counter `tollhouse_<metric>_total{route,result}` at 0
        for each of `labels` (see `declare`)."""
        counts = self.route(route, None).outcomes.setdefault(metric, {})
        for label in labels:
            counts.setdefault(label, 0)

    def derive(self, metric: str, label: str, counter: str) -> None:
        """Also export the `label` count of outcome family `metric` as `tollhouse_<counter>_total{route}`."""
        self.derived[(metric, label)] = counter

    def observe(self, name: str, labels: tuple, seconds: float) -> None:
        """Add to histogram `tollhouse_<name>` (BUCKETS) with label pairs ((k, v), ...)."""
        self.histogram(name, labels).observe(seconds)

    def histogram(self, name: str, labels: tuple) -> Histogram:
        """Histogram `tollhouse_<name>` with label pairs ((k, v), ...), for a caller that
        observes it often and keeps it (it lives as long as the worker)."""
        key = (name, labels)
        h = self.histograms.get(key)
        if h is None:
            h = self.histograms[key] = Histogram()
        return h

    def inc(self, name: str, labels: tuple = (), by: float = 1) -> None:
        """Bump a counter `tollhouse_<name>` with label pairs ((k, v), ...)."""
        self.count((name, labels), by)

    def count(self, key: tuple, by: float = 1) -> None:
        """`inc` for a caller that keeps its counter's key, (name, label pairs), made once."""
        counters = self.counters
        counters[key] = counters.get(key, 0) + by

    def tally(self, name: str, labels: tuple = ()) -> Tally:
        """Counter `tollhouse_<name>` with label pairs ((k, v), ...) as a cell its caller keeps
        and bumps (`tally.value += 1`): no key hashed per count, for a counter bumped on every
        request. Exported at 0 until it counts (see `declare`), and added to `counters`' value
        under the same key."""
        key = (name, labels)
        cell = self.tallies.get(key)
        if cell is None:
            cell = self.tallies[key] = Tally()
        return cell

    def all_counters(self) -> dict:
        """Every counter: `counters`, the tallies added in, and the policies' outcomes."""
        counters = dict(self.counters)
        for key, cell in self.tallies.items():
            counters[key] = counters.get(key, 0) + cell.value
        counters.update(self.policy_counters())
        return counters

    def policy_counters(self) -> dict:
        """The counters of the policies' outcomes folded per route, keyed as `counters` is."""
        counters = {}
        derived = self.derived
        for r in self.routes.values():
            route = ("route", r.name)
            for metric, counts in r.outcomes.items():
                for result, n in counts.items():
                    counters[(metric, (route, ("result", result)))] = n
                    also = derived.get((metric, result))
                    if also is not None:
                        counters[(also, (route,))] = n
        return counters

    def snapshot(self) -> dict:
        """A JSON-able copy, for /metrics and /status across workers."""
        routes = [self.unrouted, *self.routes.values()]
        counters = self.all_counters()
        return {
            "requests": [[r.name, m.decode("latin-1"), s, n] for r in routes for (m, s), n in r.counts.items()],
            "request_duration": {r.name: [r.duration.counts, r.duration.sum] for r in routes if r.counts},
            "upstream_duration": {k: [h.counts, h.sum] for k, h in self.upstream_duration.items()},
            "counters": [[n, [list(p) for p in labels], v] for (n, labels), v in counters.items()],
            "gauges": [[n, [list(p) for p in labels], v] for (n, labels), v in self.gauges.items()],
            "histograms": [[n, [list(p) for p in labels], h.counts, h.sum] for (n, labels), h in self.histograms.items()],
            "active_connections": self.active_connections,
            "active_requests": self.active_requests,
        }


def _add_histogram(into: dict, key, counts: list, total: float) -> None:
    """Add one worker's histogram (bucket counts, sum) to `into[key]`."""
    cur = into.get(key)
    if cur is None:
        into[key] = [list(counts), total]
    else:
        cur[0] = [a + b for a, b in zip(cur[0], counts)]
        cur[1] += total


def merge(snapshots: list[dict]) -> dict:
    """Sum worker snapshots into one (gauges are summed too: they are per-worker counts)."""
    requests: dict[tuple, int] = {}
    hist: dict[str, dict[str, list]] = {"request_duration": {}, "upstream_duration": {}}
    counters: dict[tuple, float] = {}
    gauges: dict[tuple, float] = {}
    histograms: dict[tuple, list] = {}
    active_connections = active_requests = 0
    for snap in snapshots:
        for r, m, s, n in snap["requests"]:
            requests[(r, m, s)] = requests.get((r, m, s), 0) + n
        for kind in hist:
            for key, (counts, total) in snap[kind].items():
                _add_histogram(hist[kind], key, counts, total)
        for n, labels, v in snap["counters"]:
            key = (n, tuple(tuple(p) for p in labels))
            counters[key] = counters.get(key, 0) + v
        for n, labels, v in snap.get("gauges", ()):
            key = (n, tuple(tuple(p) for p in labels))
            # States (not counts) are not added up across workers: the worst one shows.
            if n in STATE_GAUGES:
                gauges[key] = max(gauges.get(key, 0), v)
            elif n in MIN_GAUGES:
                gauges[key] = min(gauges.get(key, v), v)
            else:
                gauges[key] = gauges.get(key, 0) + v
        for n, labels, counts, total in snap.get("histograms", ()):
            _add_histogram(histograms, (n, tuple(tuple(p) for p in labels)), counts, total)
        active_connections += snap["active_connections"]
        active_requests += snap["active_requests"]
    return {"requests": requests, **hist, "counters": counters, "gauges": gauges, "histograms": histograms,
            "active_connections": active_connections, "active_requests": active_requests}


class _Collector:
    def __init__(self, merged: dict, workers: int):
        self.merged = merged
        self.workers = workers

    def collect(self):
        m = self.merged
        c = CounterMetricFamily("tollhouse_requests", "Requests answered, by route, method and status",
                                labels=["route", "method", "status"])
        for (r, meth, s), n in sorted(m["requests"].items()):
            c.add_metric([r, meth, str(s)], n)
        yield c
        for kind, label, help_ in (("request_duration", "route", "Time from request head to response end"),
                                   ("upstream_duration", "upstream", "Time from sending upstream to its response head")):
            h = HistogramMetricFamily(f"tollhouse_{kind}_seconds", help_, labels=[label])
            for key, (counts, total) in sorted(m[kind].items()):
                h.add_metric([key], _cumulative(counts), total)
            yield h
        named: dict[str, HistogramMetricFamily] = {}
        for (name, labels), (counts, total) in sorted(m["histograms"].items()):
            fam = named.get(name)
            if fam is None:
                fam = named[name] = HistogramMetricFamily(f"tollhouse_{name}", name.replace("_", " "),
                                                          labels=[k for k, _ in labels])
            fam.add_metric([v for _, v in labels], _cumulative(counts), total)
        yield from named.values()
        families: dict[str, CounterMetricFamily] = {}
        for (name, labels), v in sorted(m["counters"].items()):
            fam = families.get(name)
            if fam is None:
                fam = families[name] = CounterMetricFamily(f"tollhouse_{name}", name.replace("_", " "),
                                                           labels=[k for k, _ in labels])
            fam.add_metric([v_ for _, v_ in labels], v)
        yield from families.values()
        gauges: dict[str, GaugeMetricFamily] = {}
        for (name, labels), v in sorted(m["gauges"].items()):
            fam = gauges.get(name)
            if fam is None:
                fam = gauges[name] = GaugeMetricFamily(f"tollhouse_{name}", name.replace("_", " "),
                                                       labels=[k for k, _ in labels])
            fam.add_metric([v_ for _, v_ in labels], v)
        yield from gauges.values()
        yield GaugeMetricFamily("tollhouse_active_connections", "Open client connections", value=m["active_connections"])
        yield GaugeMetricFamily("tollhouse_active_requests", "Requests in flight", value=m["active_requests"])
        yield GaugeMetricFamily("tollhouse_workers", "Worker processes reporting", value=self.workers)


def _cumulative(counts: list) -> list:
    """Per-bucket counts -> Prometheus's cumulative (le, count) pairs."""
    running, buckets = 0, []
    for bound, count in zip([*map(str, BUCKETS), "+Inf"], counts):
        running += count
        buckets.append((bound, running))
    return buckets


def render(snapshots: list[dict]) -> bytes:
    """Prometheus text exposition of the merged worker snapshots."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(merge(snapshots), len(snapshots)))
    return generate_latest(registry)
