"""The gateway's own anomaly scores (observability/anomaly.py), fed one-second summaries as
the dashboard's sampler makes them."""
from tollhouse.observability.anomaly import WARM_UP, AnomalyScores
from tollhouse.observability.metrics import BUCKETS


def second(routes: dict) -> dict:
    """A summary with, per route, (requests, errors) and every request in the 10ms bucket."""
    out = {}
    for route, (requests, errors) in routes.items():
        latency = [0] * (len(BUCKETS) + 1)
        latency[BUCKETS.index(0.01)] = requests
        out[route] = {"requests": requests, "errors": errors, "latency": latency}
    return {"routes": out}


def test_a_drop_and_a_surge_leave_the_band_and_steady_traffic_does_not():
    scores = AnomalyScores()
    for i in range(WARM_UP + 600):
        scores.add(second({"shop": (100 + (i % 7) - 3, 1)}))
    steady = scores.scores()["shop"]
    assert abs(steady["rate"]) < 3 and abs(steady["error_ratio"]) < 3
    for _ in range(60):
        scores.add(second({"shop": (5, 1)}))       # traffic falls away for a minute
    assert scores.scores()["shop"]["rate"] < -3
    for _ in range(120):
        scores.add(second({"shop": (100, 40)}))    # back, but 40% errors
    assert scores.scores()["shop"]["error_ratio"] > 3


def test_a_new_route_has_no_score_until_it_has_history():
    scores = AnomalyScores()
    for _ in range(WARM_UP - 1):
        scores.add(second({"new": (1000, 500)}))
    assert "new" not in scores.scores()
    scores.add(second({"new": (1000, 500)}))
    assert "new" in scores.scores()
    assert b'tollhouse_anomaly_score{route="new",signal="rate"}' in scores.exposition()


def test_the_exposition_escapes_route_names():
    scores = AnomalyScores()
    for _ in range(WARM_UP):
        scores.add(second({'we"ird': (10, 0)}))
    assert b'route="we\\"ird"' in scores.exposition()
