"""Federation v2 features beyond the shop (docs/graphql.md, "Planning"): an entity reached
through its second key, a nested compound key, `@override`, `resolvable: false`,
`@shareable` value types and `@interfaceObject`, over four real subgraphs
(tests/support/shop_subgraphs.py: Library) and tests/support/graphql/library.graphql.
Expected answers are worked out by hand from LIBRARY."""
import json
import urllib.request

import pytest

from tests.support.shop_subgraphs import Library
from tests.support.subgraphs import entities_sent


@pytest.fixture(scope="module")
def library():
    lib = Library().start()
    yield lib
    lib.stop()


@pytest.fixture(scope="module")
def gw(library, tmp_path_factory):
    from tests.support.processes import Gateway

    d = tmp_path_factory.mktemp("library")
    (d / "library.graphql").write_text(library.supergraph())
    g = Gateway(f"routes:\n  - {{name: g, match: {{path: /graphql}}, graphql: {{supergraph: {d}/library.graphql}}}}\n")
    yield g.start()
    g.cleanup()


@pytest.fixture(autouse=True)
def fresh(library):
    for s in library.all.values():
        s.operations.clear()


def data(g, query):
    req = urllib.request.Request(g.url("/graphql"), data=json.dumps({"query": query}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        body = json.loads(r.read())
    assert "errors" not in body, body
    return body["data"]


def test_an_entity_is_reached_through_the_key_the_other_subgraph_has(gw, library):
    assert data(gw, "{ books { title copies } }") == {"books": [{"title": "SICP", "copies": 3},
                                                                {"title": "TAOCP", "copies": 0}]}
    assert entities_sent(library.stock) == [[{"__typename": "Book", "isbn": "111"},
                                             {"__typename": "Book", "isbn": "222"}]]


def test_an_overridden_field_comes_from_its_new_subgraph(gw, library):
    assert data(gw, "{ books { title price } }") == {"books": [{"title": "SICP", "price": 45},
                                                               {"title": "TAOCP", "price": 180}]}
    assert "price" not in library.catalog.operations[0]["query"]


def test_an_unresolvable_reference_is_resolved_where_it_lives(gw, library):
    assert data(gw, "{ books { featuredAuthor { name } } }") == {"books": [{"featuredAuthor": {"name": "Abelson"}},
                                                                           {"featuredAuthor": {"name": "Knuth"}}]}
    assert not any("on Author" in op["query"] for op in library.pricing.operations)
    assert entities_sent(library.catalog) == [[{"__typename": "Author", "id": "a1"},
                                               {"__typename": "Author", "id": "a2"}]]


def test_a_nested_compound_key_both_ways(gw, library):
    assert data(gw, "{ shelves { label books { title } } }") == {"shelves": [
        {"label": "Lisp corner", "books": [{"title": "SICP"}]}, {"label": "Algorithms", "books": [{"title": "TAOCP"}]}]}
    assert entities_sent(library.catalog)[0] == [{"__typename": "Shelf", "code": "A", "room": {"id": "r1"}},
                                                 {"__typename": "Shelf", "code": "B", "room": {"id": "r2"}}]
    assert data(gw, "{ books { shelf { label room { id floor } } } }") == {"books": [
        {"shelf": {"label": "Lisp corner", "room": {"id": "r1", "floor": 1}}},
        {"shelf": {"label": "Algorithms", "room": {"id": "r2", "floor": 2}}}]}


def test_interface_object_fields_for_every_implementation(gw, library):
    assert data(gw, '{ node(id: "b2") { id ... on Book { title } likes } }') == {
        "node": {"id": "b2", "title": "TAOCP", "likes": 20}}
    assert entities_sent(library.social) == [[{"__typename": "Node", "id": "b2"}]]
    assert data(gw, '{ node(id: "a1") { ... on Author { name } likes } }') == {"node": {"name": "Abelson", "likes": 5}}
    assert data(gw, "{ books { title likes } }") == {"books": [{"title": "SICP", "likes": 10},
                                                               {"title": "TAOCP", "likes": 20}]}
