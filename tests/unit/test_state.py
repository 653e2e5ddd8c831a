"""Building a config version's runtime objects (no gateway): routes, chains, pools, choosers."""
import asyncio

import pytest

from tollhouse import builtins, registry
from tollhouse.config import load_text
from tollhouse.config.schema import Field, ListOf, Str
from tollhouse.observability.metrics import Stats
from tollhouse.state import build_state
from tollhouse.store import MemoryStore

CONFIG = """
upstreams:
  blue: {targets: ["http://127.0.0.1:1"]}
  green: {targets: ["http://127.0.0.1:2"]}
routes:
  - {name: plain, match: {prefix: /plain}, upstream: blue, rate_limits: [{limit: 5, window: 1m}]}
  - {name: flip, match: {prefix: /flip}, upstream: blue%s}
"""


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _state(loop, text, previous=None):
    config, errors = load_text(text)
    assert not errors, errors
    return build_state(config, loop, Stats(), MemoryStore(), previous=previous)


def test_routes_get_their_chains_and_an_unchanged_pool_is_carried_over(loop):
    first = _state(loop, CONFIG % "")
    plain = first.table.lookup(b"a", b"/plain", b"GET")[0]
    assert [type(p).__name__ for p in plain.chain.policies] == ["RateLimitPolicy"]
    assert plain.choose_pool(None) is first.pools["blue"]
    second = _state(loop, CONFIG.replace('"http://127.0.0.1:2"', '"http://127.0.0.1:3"') % "", previous=first)
    assert second.pools["blue"] is first.pools["blue"]        # same settings: warm connections kept
    assert second.pools["green"] is not first.pools["green"]


class _Alternate:
    """Each request to the next pool of a list: a chooser as a traffic split would be one."""

    def __init__(self, pools):
        self.pools, self.next = pools, 0

    def choose(self, exchange):
        pool = self.pools[self.next % len(self.pools)]
        self.next += 1
        return pool


def test_a_kind_may_choose_each_requests_upstream(loop):
    kind = registry.PolicyKind(
        "alternate", phase="transform", key="alternate", field=Field(ListOf(Str()), None, "upstreams in turn"),
        build=lambda config, context, services: None,
        chooser=lambda names, context, services, pools: _Alternate([pools[n] for n in names]))
    registry.install((*builtins.KINDS, kind), builtins.SECTIONS, builtins.PROTOCOLS, builtins.PHASES)
    try:
        state = _state(loop, CONFIG % ", alternate: [blue, green]")
        flip = state.table.lookup(b"a", b"/flip", b"GET")[0]
        chosen = [flip.choose_pool(None).name for _ in range(4)]
        assert chosen == ["blue", "green", "blue", "green"]
        plain = state.table.lookup(b"a", b"/plain", b"GET")[0]
        assert plain.chooser is None and plain.choose_pool(None).name == "blue"
    finally:
        builtins.install()
