"""GraphQL federation through the real gateway (docs/graphql.md): four real subgraphs
(graphql-core over HTTP: accounts, products, inventory, reviews; tests/support/
shop_subgraphs.py) behind the supergraph tests/support/graphql/shop.graphql. Every
expected answer is worked out by hand from the subgraphs' data."""
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.support.processes import ROOT, wait_for
from tests.support.shop_subgraphs import Shop
from tests.support.subgraphs import CALLS, entities_sent

CONFIG = """
access_log: true
consumers:
  - {{id: alice, api_keys: [alice-key]}}
auth:
  providers:
    keys: {{type: api_key, header: X-API-Key}}
routes:
  - name: graph
    match: {{path: /graphql}}
    auth: {{providers: [keys], optional: true}}
    graphql:
      supergraph: {supergraph}
      limits: {{max_depth: 6, max_aliases: 3, max_root_fields: 4, max_tokens: 400}}
      persisted_queries: {{mode: apq}}
  - name: closed
    match: {{path: /closed}}
    graphql: {{supergraph: {supergraph}, introspection: false}}
  - name: trusted
    match: {{path: /trusted}}
    graphql: {{supergraph: {supergraph}, persisted_queries: {{mode: only, documents: {documents}}}}}
  - name: per-operation
    match: {{path: /per-operation}}
    graphql: {{supergraph: {supergraph}}}
    rate_limits: [{{limit: 2, window: 1m, key: graphql_operation}}]
  - name: costed
    match: {{path: /costed}}
    graphql:
      supergraph: {supergraph}
      limits: {{max_cost: 100}}
      cost: {{default_list_size: 4, weights: {{Query.me: 3}}}}
    rate_limits: [{{limit: 40, window: 1m, key: route, cost: graphql_cost}}]
"""

TRUSTED = "query Me { me { name } }"


@pytest.fixture(scope="module")
def shop():
    s = Shop().start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def gw(shop, tmp_path_factory):
    from tests.support.processes import Gateway
    import hashlib

    d = tmp_path_factory.mktemp("graph")
    (d / "shop.graphql").write_text(shop.supergraph())
    (d / "trusted.json").write_text(json.dumps({hashlib.sha256(TRUSTED.encode()).hexdigest(): TRUSTED}))
    g = Gateway(CONFIG.format(supergraph=d / "shop.graphql", documents=d / "trusted.json")).start()
    g.dir_graph = d
    yield g
    g.cleanup()


@pytest.fixture(autouse=True)
def fresh(shop):
    shop.reset()
    yield


def post(g, query, variables=None, path="/graphql", accept="application/graphql-response+json", extensions=None,
         headers=None, operation=None):
    body = {"query": query} if query is not None else {}
    if variables is not None:
        body["variables"] = variables
    if extensions is not None:
        body["extensions"] = extensions
    if operation is not None:
        body["operationName"] = operation
    req = urllib.request.Request(g.url(path), data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "Accept": accept, **(headers or {})})
    return _send(req)


def get(g, params, path="/graphql", accept="application/graphql-response+json"):
    req = urllib.request.Request(g.url(path) + "?" + urllib.parse.urlencode(params), headers={"Accept": accept})
    return _send(req)


def _send(req):
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("content-type"), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type"), json.loads(e.read())


def data(g, query, variables=None):
    status, _, body = post(g, query, variables)
    assert status == 200 and "errors" not in body, body
    return body["data"]


# --- planning across subgraphs ----------------------------------------------------------------

def test_an_entity_join_across_subgraphs(gw, shop):
    assert data(gw, "{ topProducts { name price inStock } }") == {"topProducts": [
        {"name": "Table", "price": 899, "inStock": True}, {"name": "Couch", "price": 1299, "inStock": False},
        {"name": "Chair", "price": 54, "inStock": True}]}
    # One _entities fetch for the three products.
    assert [len(reps) for reps in entities_sent(shop.inventory)] == [3]


def test_requires_sends_the_required_fields_from_another_subgraph(gw, shop):
    assert data(gw, "{ topProducts(first: 2) { name shippingEstimate } }") == {"topProducts": [
        {"name": "Table", "shippingEstimate": 50}, {"name": "Couch", "shippingEstimate": 0}]}
    assert entities_sent(shop.inventory) == [[{"__typename": "Product", "upc": "1", "price": 899, "weight": 100},
                                             {"__typename": "Product", "upc": "2", "price": 1299, "weight": 1000}]]


def test_provides_saves_a_fetch(gw, shop):
    assert data(gw, "{ topProducts(first: 1) { reviews { body author { username } } } }") == {"topProducts": [
        {"reviews": [{"body": "Love it!", "author": {"username": "@ada"}},
                     {"body": "Prefer something else.", "author": {"username": "@complete"}}]}]}
    assert shop.accounts.operations == []   # username came with the reviews (@provides)


def test_three_levels_nested_and_parallel_entity_fetches(gw, shop):
    assert data(gw, "{ me { name reviews { body product { name inStock } } } }") == {"me": {
        "name": "Ada Lovelace", "reviews": [{"body": "Love it!", "product": {"name": "Table", "inStock": True}},
                                           {"body": "Too expensive.", "product": {"name": "Couch", "inStock": False}}]}}
    assert [len(r) for r in entities_sent(shop.products)] == [2] and [len(r) for r in entities_sent(shop.inventory)] == [2]


def test_representations_are_deduplicated(gw, shop):
    assert data(gw, "{ topProducts { reviews { author { name } } } }") == {"topProducts": [
        {"reviews": [{"author": {"name": "Ada Lovelace"}}, {"author": {"name": "Alan Turing"}}]},
        {"reviews": [{"author": {"name": "Ada Lovelace"}}]},
        {"reviews": [{"author": {"name": "Alan Turing"}}]}]}
    assert entities_sent(shop.accounts) == [[{"__typename": "User", "id": "1"}, {"__typename": "User", "id": "2"}]]


def test_aliases_fragments_variables_and_conditions(gw):
    query = """query Item($upc: String!, $withStock: Boolean!) {
      item: product(upc: $upc) { ...Basics title: name stock: inStock @include(if: $withStock) }
    }
    fragment Basics on Product { upc price }"""
    assert data(gw, query, {"upc": "3", "withStock": True}) == {
        "item": {"upc": "3", "price": 54, "title": "Chair", "stock": True}}
    assert data(gw, query, {"upc": "3", "withStock": False}) == {"item": {"upc": "3", "price": 54, "title": "Chair"}}


def test_unions_and_interfaces(gw):
    assert data(gw, '{ search(text: "ta") { __typename ... on Product { name inStock } ... on Book { title } } }') == {
        "search": [{"__typename": "Product", "name": "Table", "inStock": True},
                   {"__typename": "Book", "title": "Database Design"}]}
    assert data(gw, "{ media { __typename title ... on Movie { minutes } ... on Song { seconds } } }") == {
        "media": [{"__typename": "Movie", "title": "Hackers", "minutes": 105},
                  {"__typename": "Song", "title": "Blue Monday", "seconds": 449}]}


def test_mutations_run_in_order(gw, shop):
    CALLS.clear()
    result = data(gw, """mutation {
      a: setPrice(upc: "3", price: 60) { price }
      r: addReview(upc: "3", body: "Sturdy") { body product { name } }
      b: setPrice(upc: "3", price: 70) { price shippingEstimate }
    }""")
    assert result == {"a": {"price": 60}, "r": {"body": "Sturdy", "product": {"name": "Chair"}},
                      "b": {"price": 70, "shippingEstimate": 25}}
    # The root fields' fetches went out one after another, in the document's order.
    assert [name for name, query in CALLS if query.lstrip().startswith("mutation")] == ["products", "reviews", "products"]


def test_typename_and_the_root_typename(gw):
    assert data(gw, '{ __typename product(upc: "1") { __typename name } }') == {
        "__typename": "Query", "product": {"__typename": "Product", "name": "Table"}}


# --- the API schema ---------------------------------------------------------------------------

def test_inaccessible_fields_cannot_be_asked_for_or_seen(gw):
    status, _, body = post(gw, '{ product(upc: "1") { internalCode } }')
    assert status == 400 and body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    fields = data(gw, '{ __type(name: "User") { fields { name } } }')["__type"]["fields"]
    assert {f["name"] for f in fields} == {"id", "name", "username", "reviews"}
    assert data(gw, "{ __schema { queryType { name } mutationType { name } } }") == {
        "__schema": {"queryType": {"name": "Query"}, "mutationType": {"name": "Mutation"}}}


def test_introspection_can_be_turned_off(gw):
    status, _, body = post(gw, "{ __schema { queryType { name } } }", path="/closed")
    assert status == 400 and body["errors"][0]["extensions"]["code"] == "INTROSPECTION_DISABLED"
    status, _, body = post(gw, '{ product(upc: "2") { name } }', path="/closed")
    assert status == 200 and body["data"] == {"product": {"name": "Couch"}}


# --- errors -----------------------------------------------------------------------------------

def test_documents_that_fail_are_refused_before_any_subgraph_is_called(gw, shop):
    cases = [("{ me { name ", "GRAPHQL_PARSE_FAILED"), ("{ me { nickname } }", "GRAPHQL_VALIDATION_FAILED"),
             ("{ me { reviews { product { reviews { author { reviews { body } } } } } } }", "MAX_DEPTH_EXCEEDED"),
             ("{ a: me { id } b: me { id } c: me { id } d: me { id } }", "MAX_ALIASES_EXCEEDED"),
             ('{ me { id } user(id: "1") { id } topProducts { upc } product(upc: "1") { upc } media { id } }',
              "MAX_ROOT_FIELDS_EXCEEDED"),
             ("{ " + "me { id } " * 110 + "}", "MAX_TOKENS_EXCEEDED")]
    for query, code in cases:
        status, ctype, body = post(gw, query)
        assert status == 400 and body["errors"][0]["extensions"]["code"] == code, (query, body)
        assert ctype.startswith("application/graphql-response+json")
    assert all(not s.operations for s in shop.all.values())
    # With application/json, the same refusal is a 200 carrying the errors (as servers answered before the spec).
    status, ctype, body = post(gw, "{ me { name ", accept="application/json")
    assert status == 200 and ctype.startswith("application/json") and body["errors"]


def test_a_failing_subgraph_gives_partial_data_with_its_name(gw, shop):
    shop.products.fail = "status"
    status, _, body = post(gw, "{ latestReview { body product { name } } me { name } }")
    assert status == 200
    assert body["data"] == {"latestReview": {"body": "Prefer something else.", "product": {"name": None}},
                            "me": {"name": "Ada Lovelace"}}
    assert body["errors"] == [{"message": "subgraph products answered HTTP 500", "path": ["latestReview", "product", "name"],
                               "extensions": {"code": "SUBREQUEST_HTTP_ERROR", "serviceName": "products"}}]


def test_garbage_from_a_subgraph_is_an_error_for_its_fields_only(gw, shop):
    shop.inventory.fail = "garbage"
    status, _, body = post(gw, "{ topProducts(first: 1) { name inStock } }")
    assert body["data"] == {"topProducts": [{"name": "Table", "inStock": None}]}
    assert body["errors"][0]["path"] == ["topProducts", 0, "inStock"]
    assert body["errors"][0]["extensions"] == {"code": "SUBREQUEST_MALFORMED_RESPONSE", "serviceName": "inventory"}


def test_nulls_propagate_as_the_spec_says(gw, shop):
    shop.reviews.fail = "status"
    status, _, body = post(gw, "{ me { name } latestReview { body } }")
    assert body["data"] is None   # latestReview is non-null at the root: the whole data is null
    assert [e["path"] for e in body["errors"]] == [["latestReview"]]
    status, _, body = post(gw, "{ topProducts(first: 1) { name reviews { rating } } }")
    assert body["data"] == {"topProducts": [{"name": "Table", "reviews": None}]}


def test_a_subgraphs_errors_are_passed_on(gw):
    status, _, body = post(gw, '{ user(id: "99") { name } }')
    assert status == 200 and body["data"] == {"user": None}
    assert body["errors"][0]["message"] == "no user 99" and body["errors"][0]["path"] == ["user"]
    assert body["errors"][0]["extensions"]["serviceName"] == "accounts"


# --- GraphQL over HTTP ------------------------------------------------------------------------

def test_get_serves_queries_only(gw):
    status, _, body = get(gw, {"query": "query($u: String!) { product(upc: $u) { name } }",
                               "variables": json.dumps({"u": "2"})})
    assert status == 200 and body["data"] == {"product": {"name": "Couch"}}
    status, _, body = get(gw, {"query": 'mutation { setPrice(upc: "1", price: 1) { price } }'})
    assert status == 405


def test_the_answer_follows_accept(gw):
    status, ctype, _ = post(gw, "{ me { name } }", accept="application/json")
    assert status == 200 and ctype.startswith("application/json")
    status, ctype, _ = post(gw, "{ me { name } }")
    assert ctype.startswith("application/graphql-response+json")


def test_bad_requests_are_4xx(gw):
    req = urllib.request.Request(gw.url("/graphql"), data=b"{not json", headers={"Content-Type": "application/json"})
    assert _send(req)[0] == 400
    req = urllib.request.Request(gw.url("/graphql"), data=b"query", headers={"Content-Type": "text/plain"})
    assert _send(req)[0] == 415
    status, _, body = post(gw, "query($u: String!) { product(upc: $u) { name } }", {"u": 5})
    assert status == 400 and body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    status, _, body = post(gw, "query A { me { id } } query B { me { name } }")
    assert status == 400
    assert post(gw, "query A { me { id } } query B { me { name } }", operation="B")[2]["data"] == {
        "me": {"name": "Ada Lovelace"}}


# --- persisted queries, policies, records -----------------------------------------------------

def test_automatic_persisted_queries(gw):
    import hashlib

    query = '{ product(upc: "1") { name } }'
    sha = hashlib.sha256(query.encode()).hexdigest()
    ext = {"persistedQuery": {"version": 1, "sha256Hash": sha}}
    status, _, body = post(gw, None, extensions=ext)
    assert body["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"
    assert post(gw, query, extensions=ext)[2]["data"] == {"product": {"name": "Table"}}
    assert post(gw, None, extensions=ext)[2]["data"] == {"product": {"name": "Table"}}
    bad = {"persistedQuery": {"version": 1, "sha256Hash": "0" * 64}}
    assert post(gw, query, extensions=bad)[2]["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_HASH_MISMATCH"


def test_only_trusted_documents(gw):
    import hashlib

    assert post(gw, TRUSTED, path="/trusted")[2]["data"] == {"me": {"name": "Ada Lovelace"}}
    sha = hashlib.sha256(TRUSTED.encode()).hexdigest()
    assert post(gw, None, path="/trusted", extensions={"persistedQuery": {"version": 1, "sha256Hash": sha}})[2][
        "data"] == {"me": {"name": "Ada Lovelace"}}
    status, _, body = post(gw, "{ me { id } }", path="/trusted")
    assert status == 400 and body["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_IN_LIST"


def test_identity_headers_reach_the_subgraphs(gw, shop):
    post(gw, "{ me { name } }", headers={"X-API-Key": "alice-key"})
    assert shop.accounts.last_headers["x-consumer-id"] == "alice"
    assert "x-api-key" not in shop.accounts.last_headers


def test_metrics_and_the_access_log_name_the_operation(gw):
    post(gw, "query Storefront { topProducts(first: 1) { name inStock } }")
    wait_for(lambda: '"graphql_operation":"Storefront"' in gw.stdout())
    status, text = gw.get_admin("/metrics")
    text = text.decode()
    assert 'tollhouse_graphql_operations_total{operation="Storefront",outcome="ok",route="graph"}' in text
    assert 'tollhouse_graphql_subgraph_fetch_seconds_count{route="graph",subgraph="inventory"}' in text


def _remaining(g, query, path):
    req = urllib.request.Request(g.url(path), data=json.dumps({"query": query}).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("ratelimit-remaining"), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("ratelimit-remaining"), json.loads(e.read())


def test_rate_limits_count_by_operation(gw):
    a, b = "query A { me { name } }", "query B { me { name } }"
    assert [_remaining(gw, a, "/per-operation")[0] for _ in range(3)] == [200, 200, 429]
    assert _remaining(gw, b, "/per-operation")[0] == 200          # another operation: its own count
    status, _, body = _remaining(gw, a, "/per-operation")
    assert status == 429 and body["status"] == 429                 # problem+json, as every limit answers
    # The access log names the operation of a request the limit refused.
    wait_for(lambda: any('"graphql_operation":"A"' in line and '"status":429' in line
                         for line in gw.stdout().splitlines()))


def test_rate_limits_weigh_an_operation_by_its_estimated_cost(gw, shop):
    # topProducts 1; 2 products × (reviews 1 + 4 reviews (default_list_size) × author 1): 11.
    query = "query Costly { topProducts(first: 2) { name reviews { body author { name } } } }"
    seen = [_remaining(gw, query, "/costed")[:2] for _ in range(4)]
    assert seen[:3] == [(200, "29"), (200, "18"), (200, "7")]
    assert seen[3] == (429, "7")                                   # 11 more than the 7 left; nothing taken
    assert _remaining(gw, "{ me { name } }", "/costed")[:2] == (200, "4")   # Query.me weighs 3
    wait_for(lambda: '"graphql_operation":"Costly","graphql_cost":11' in gw.stdout())


def test_costs_are_counted_in_redis_too(shop, redis, tmp_path):
    """The store's script weighs requests as memory does: requests of different costs in one
    batch are different profiles."""
    import concurrent.futures

    from tests.support.processes import Gateway

    (tmp_path / "shop.graphql").write_text(shop.supergraph())
    g = Gateway(f"""
store: {redis.url}
routes:
  - name: costed
    match: {{path: /costed}}
    graphql: {{supergraph: {tmp_path / "shop.graphql"}, cost: {{default_list_size: 4}}}}
    rate_limits: [{{limit: 40, window: 1m, key: route, cost: graphql_cost}}]
""").start()
    try:
        costly = "{ topProducts(first: 2) { reviews { author { name } } } }"   # 1 + 2 × (1 + 4) = 11
        cheap = "{ me { name } }"                                              # 1
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda q: _remaining(g, q, "/costed")[0], [costly] * 3 + [cheap] * 3))
        assert answers == [200] * 6                     # 33 + 3 = 36 of 40
        assert _remaining(g, costly, "/costed")[:2] == (429, "4")   # 4 left: a cheaper operation may pass
        assert _remaining(g, cheap, "/costed")[:2] == (200, "3")
    finally:
        g.cleanup()


def test_an_operation_over_max_cost_is_refused_before_any_subgraph_is_called(gw, shop):
    query = "{ topProducts(first: 100) { reviews { author { name } } } }"   # 1 + 100 × (1 + 4) = 501
    status, _, body = post(gw, query, path="/costed")
    assert status == 400 and body["errors"][0]["extensions"]["code"] == "COST_LIMIT_EXCEEDED", body
    assert "501" in body["errors"][0]["message"]
    assert shop.products.operations == []


def test_a_bad_supergraph_is_a_config_error_naming_file_and_line(tmp_path, shop):
    bad = tmp_path / "bad.graphql"
    bad.write_text(shop.supergraph().replace("type Review\n", "type Review {{\n", 1))
    config = tmp_path / "g.yaml"
    config.write_text(f"routes:\n  - {{name: g, match: {{path: /graphql}}, graphql: {{supergraph: {bad}}}}}\n")
    out = subprocess.run([sys.executable, "-m", "tollhouse", "check", "-c", str(config)], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": os.path.join(ROOT, "src")})
    text = out.stdout + out.stderr
    line = shop.supergraph().splitlines().index("type Review") + 1
    assert out.returncode != 0 and "routes[0].graphql.supergraph" in text and f"{bad}:{line}" in text


def test_a_reload_swaps_the_supergraph(gw, shop):
    path = gw.dir_graph / "shop.graphql"
    original = path.read_text()
    try:
        path.write_text(original.replace("  media: [Media] @join__field(graph: PRODUCTS)\n", ""))
        gw.signal(signal.SIGHUP)
        wait_for(lambda: post(gw, "{ media { title } }")[0] == 400, timeout=5)
    finally:
        path.write_text(original)
        gw.signal(signal.SIGHUP)
        wait_for(lambda: post(gw, "{ media { title } }")[0] == 200, timeout=5)
