"""The split's config rules (no gateway)."""
import pytest

from tollhouse.config import load_text

UPSTREAMS = """
upstreams:
  blue: {targets: ["http://127.0.0.1:9001"]}
  green: {targets: ["http://127.0.0.1:9002"]}
  rpc: {targets: ["grpc://127.0.0.1:9003"]}
routes:
"""


def errors(route: str) -> list[tuple[str, str]]:
    config, found = load_text(UPSTREAMS + route)
    return [(e.path, e.message) for e in found]


def test_a_split_route_names_its_upstreams_in_split():
    assert errors("  - {match: {prefix: /}, split: [{upstream: blue, weight: 90}, {upstream: green, weight: 10}], "
                  "sticky: consumer}\n") == []


@pytest.mark.parametrize("route, path, message", [
    ("{match: {prefix: /}, upstream: blue, split: [{upstream: blue, weight: 1}]}", "routes[0].upstream",
     "a route with split names its upstreams in split"),
    ("{match: {prefix: /}, split: [{upstream: teal, weight: 1}]}", "routes[0].split[0].upstream",
     "no upstream named 'teal' in upstreams"),
    ("{match: {prefix: /}, split: [{upstream: blue, weight: 0}, {upstream: green, weight: 0}]}", "routes[0].split",
     "no side has weight"),
    ("{match: {prefix: /}, split: [{upstream: blue, weight: 1}, {upstream: blue, weight: 2}]}",
     "routes[0].split[1].upstream", "'blue' is a side already"),
    ("{match: {prefix: /}, split: [{upstream: rpc, weight: 1}]}", "routes[0].split[0].upstream",
     "a split side must be an HTTP upstream"),
    ("{match: {prefix: /}, upstream: blue, sticky: ip}", "routes[0].sticky", "needs split"),
    ("{match: {prefix: /}, split: [{upstream: blue, weight: 1, force: {value: x}}]}",
     "routes[0].split[0].force.header", "give one of header or cookie"),
    ("{match: {prefix: /}, upstream: blue, rollback: {error_ratio: 5%, to: blue}}", "routes[0].rollback",
     "needs split"),
    ("{match: {prefix: /}, split: [{upstream: blue, weight: 1}], rollback: {error_ratio: 5%, to: green}}",
     "routes[0].rollback.to", "'green' is not a side of split"),
    ("{match: {prefix: /}, split: [{upstream: blue, weight: 1}], rollback: {to: blue}}",
     "routes[0].rollback.error_ratio", "give error_ratio, p99 or both"),
    ("{match: {prefix: /}, upstream: blue, mirror: {upstream: teal, percent: 5}}", "routes[0].mirror.upstream",
     "no upstream named 'teal' in upstreams"),
])
def test_a_bad_split_is_refused_with_its_key(route, path, message):
    assert (path, message) in errors(f"  - {route}\n")


def test_weights_must_be_whole_numbers():
    found = errors("  - {match: {prefix: /}, split: [{upstream: blue, weight: lots}]}\n")
    assert "routes[0].split[0].weight" in [p for p, _ in found]
