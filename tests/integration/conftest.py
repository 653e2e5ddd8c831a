import pytest

from tests.support.processes import Gateway
from tests.support.upstream import Upstream


@pytest.fixture(scope="module")
def upstream():
    u = Upstream().start()
    yield u
    u.stop()


@pytest.fixture(scope="module")
def shared_redis():
    """A real redis-server shared by a module's tests (the root `redis` is one per test)."""
    from tests.support.processes import RedisServer

    r = RedisServer().start()
    yield r
    r.cleanup()


@pytest.fixture
def gateway_factory():
    started = []

    def make(config: str, workers=None, env=None, start=True) -> Gateway:
        g = Gateway(config, workers=workers, env=env)
        started.append(g)
        return g.start() if start else g

    yield make
    for g in started:
        g.cleanup()


# One consumer, alice, whose API key "alice-key" goes in X-API-Key; routes name the provider `keys`.
ALICE_API_KEY = """consumers:
  - {id: alice, api_keys: [alice-key]}
auth:
  providers:
    keys: {type: api_key, header: X-API-Key}
"""


def basic_config(upstream_url: str, extra_routes: str = "", extra: str = "", upstream_extra: str = "") -> str:
    return f"""
trusted_proxies: [10.0.0.0/8]
{extra}
upstreams:
  app:
    targets: ["{upstream_url}"]
    connect_timeout: 1s
    read_timeout: 2s
{upstream_extra}
routes:
{extra_routes}
  - name: api
    match: {{prefix: /api}}
    upstream: app
    strip_prefix: true
  - name: admin-area
    match: {{prefix: /admin}}
    upstream: app
  - name: user
    match: {{path: "/users/{{id}}", methods: [GET, PUT]}}
    upstream: app
    rewrite: "/v2/users/{{id}}"
  - name: exact
    match: {{path: /exact}}
    upstream: app
  - name: slowroute
    match: {{prefix: /slow}}
    upstream: app
    timeout: 300ms
  - name: rest
    match: {{prefix: /}}
    upstream: app
"""


def upstream_config(targets, upstream_extra: str = "", route_extra: str = "", connect_timeout: str = "500ms",
                    read_timeout: str = "2s") -> str:
    """One upstream `app` over `targets` and one catch-all route `all`; extra
    lines go under the upstream and the route (indent them by 4 spaces)."""
    quoted = ", ".join(f'"{t}"' for t in targets)
    return f"""
upstreams:
  app:
    targets: [{quoted}]
    connect_timeout: {connect_timeout}
    read_timeout: {read_timeout}
{upstream_extra}
routes:
  - name: all
    match: {{prefix: /}}
    upstream: app
{route_extra}
"""
