from tollhouse.routing import RouteTable, RouteTarget, host_of


def table(*routes):
    return RouteTable([RouteTarget(name, i, **kw) for i, (name, kw) in enumerate(routes)])


def name(result):
    route, _ = result
    return route.name if route else None


def test_exact_before_template_before_longest_prefix():
    t = table(("root", {"prefix": "/"}), ("api", {"prefix": "/api"}), ("users", {"prefix": "/api/users"}),
              ("one", {"path": "/api/users/{id}"}), ("me", {"path": "/api/users/me"}))
    assert name(t.match("h", b"/api/users/me", b"GET")) == "me"
    assert name(t.match("h", b"/api/users/7", b"GET")) == "one"
    assert name(t.match("h", b"/api/users/7/orders", b"GET")) == "users"
    assert name(t.match("h", b"/api/usersX", b"GET")) == "api"      # prefixes match whole segments
    assert name(t.match("h", b"/other", b"GET")) == "root"


def test_template_params():
    t = table(("o", {"path": "/u/{uid}/orders/{oid}"}))
    route, params = t.match("", b"/u/1/orders/2", b"GET")
    assert params == {"uid": b"1", "oid": b"2"}
    assert t.match("", b"/u/1/orders", b"GET")[0] is None


def test_host_first():
    t = table(("any", {"prefix": "/"}), ("exact", {"host": "api.example.com", "prefix": "/x"}),
              ("wild", {"host": "*.example.com", "prefix": "/"}))
    assert name(t.match("api.example.com", b"/x/1", b"GET")) == "exact"
    assert name(t.match("api.example.com", b"/y", b"GET")) == "wild"
    assert name(t.match("www.example.com", b"/x", b"GET")) == "wild"
    assert name(t.match("other.org", b"/x", b"GET")) == "any"


def test_methods_share_a_path_and_405_lists_allow():
    t = table(("read", {"path": "/items", "methods": ["GET", "HEAD"]}), ("write", {"path": "/items", "methods": ["POST"]}),
              ("fallback", {"prefix": "/"}))
    assert name(t.match("", b"/items", b"POST")) == "write"
    route, allowed = t.match("", b"/items", b"DELETE")
    assert route is None and allowed == {b"GET", b"HEAD", b"POST"}   # no fall-through to the catch-all


def test_404_when_nothing_matches():
    t = table(("a", {"prefix": "/a"}))
    assert t.match("", b"/b", b"GET") == (None, None)


def test_upstream_paths():
    strip = RouteTarget("s", 0, prefix="/api/users", strip_prefix=True)
    assert strip.upstream_path(b"/api/users/7", None) == b"/7"
    assert strip.upstream_path(b"/api/users", None) == b"/"
    rw = RouteTarget("r", 0, path="/users/{id}", rewrite="/v2/users/{id}")
    assert rw.upstream_path(b"/users/9", {"id": b"9"}) == b"/v2/users/9"


def test_host_of():
    assert host_of(b"API.Example.com:8080") == "api.example.com"
    assert host_of(b"[::1]:80") == "[::1]"
