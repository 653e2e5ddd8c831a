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


def answer(g, query, variables=None) -> dict:
    req = urllib.request.Request(g.url("/graphql"), data=json.dumps({"query": query, "variables": variables}).encode(),
                                 headers={"Content-Type": "application/json", "Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def data(g, query, variables=None):
    body = answer(g, query, variables)
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


def test_an_output_enum_has_every_subgraphs_values_and_never_a_hidden_one(gw, library):
    # Format: PRINT (both), EBOOK (catalog's), AUDIO (stock's); LEGACY is @inaccessible.
    body = answer(gw, "{ books { id format formats } }")
    assert body["data"] == {"books": [{"id": "b1", "format": "EBOOK", "formats": ["PRINT", "AUDIO"]},
                                      {"id": "b2", "format": None, "formats": ["PRINT"]}]}
    # catalog answered LEGACY for b2: not a value of the API schema, so null with an error there.
    (error,) = body["errors"]
    assert error["path"] == ["books", 1, "format"] and "LEGACY" in error["message"]
    names = {v["name"] for v in data(gw, '{ __type(name: "Format") { enumValues { name } } }')["__type"]["enumValues"]}
    assert names == {"PRINT", "EBOOK", "AUDIO"}


def test_input_enums_and_input_objects_take_only_what_every_subgraph_shares(gw, library):
    # Sort: TITLE only (catalog also has PRICE, stock COPIES); BookFilter: titleContains only.
    assert data(gw, '{ findBooks(filter: {titleContains: "S"}, sort: TITLE) { id } }') == {"findBooks": [{"id": "b1"}]}
    assert library.catalog_arguments == {"filter": {"titleContains": "S"}, "sort": "TITLE"}
    # As variables too: the subgraph gets the client's values.
    assert data(gw, "query Q($f: BookFilter, $s: Sort) { findBooks(filter: $f, sort: $s) { id } }",
                {"f": {"titleContains": "TA"}, "s": "TITLE"}) == {"findBooks": [{"id": "b2"}]}
    assert library.catalog_arguments == {"filter": {"titleContains": "TA"}, "sort": "TITLE"}
    library.catalog_arguments = None
    for query in ("{ findBooks(sort: PRICE) { id } }", "{ findBooks(filter: {maxPrice: 5}) { id } }"):
        body = answer(gw, query)
        assert body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED", body
    assert answer(gw, "query Q($s: Sort) { findBooks(sort: $s) { id } }", {"s": "COPIES"})["errors"][0][
        "extensions"]["code"] == "BAD_USER_INPUT"
    assert library.catalog_arguments is None   # none of them reached the subgraph


def test_a_nested_requires_sends_the_nested_fields_it_names(gw, library):
    # stock's Book.shippingClass @requires(fields: "shelf { code room { id } }"): catalog's shelf.
    assert data(gw, "{ books { title shippingClass } }") == {"books": [
        {"title": "SICP", "shippingClass": "A/r1"}, {"title": "TAOCP", "shippingClass": "B/r2"}]}
    assert entities_sent(library.stock) == [[
        {"__typename": "Book", "isbn": "111", "shelf": {"code": "A", "room": {"id": "r1"}}},
        {"__typename": "Book", "isbn": "222", "shelf": {"code": "B", "room": {"id": "r2"}}}]]
