"""The GraphQL cost model (policies/graphql/cost.py, docs/graphql.md "Cost"), worked out by hand."""
from graphql import build_schema, parse

from tollhouse.policies.graphql.cost import CostModel
from tollhouse.policies.graphql.schema import Cost

SCHEMA = build_schema("""
type Query { products(first: Int, last: Int): [Product!]! top(limit: Int = 3): [Product] me: User
             search(text: String): [Result] }
type Product { upc: ID! name: String reviews(first: Int): [Review] seller: User tags: [String] }
type Review { body: String author: User }
type User { name: String }
type Book { title: String }
union Result = Product | Book
type Mutation { buy(upc: ID!): Product }
""")


def cost(query: str, variables=None, **settings) -> int:
    document = parse(query)
    operation = next(d for d in document.definitions if d.kind == "operation_definition")
    fragments = {d.name.value: d for d in document.definitions if d.kind == "fragment_definition"}
    config = Cost.validate(settings, "cost", None, errors := [])
    assert errors == []
    return CostModel(SCHEMA, config).estimate(operation, fragments, variables or {})


def test_objects_weigh_one_and_lists_multiply_what_is_under_them():
    # products 1; 2 products × (reviews 1 + 10 reviews × author 1) = 22; total 23. Scalars are free.
    assert cost("{ products(first: 2) { name tags reviews { body author { name } } } }") == 1 + 2 * (1 + 10 * 1)
    # The reviews' own first, and last instead of first.
    assert cost("{ products(last: 2) { reviews(first: 3) { author { name } } } }") == 1 + 2 * (1 + 3)


def test_sizes_come_from_variables_and_schema_defaults_else_the_default_list_size():
    q = "query Q($n: Int) { products(first: $n) { seller { name } } }"
    assert cost(q, {"n": 7}) == 1 + 7
    assert cost(q, {}) == 1 + 10                          # no value: default_list_size
    assert cost(q, {}, default_list_size=4) == 1 + 4
    assert cost("{ top { seller { name } } }") == 1 + 3  # the argument's default in the schema


def test_weights_fragments_and_unions():
    assert cost("{ me { name } }", weights={"Query.me": 5}) == 5
    assert cost("{ products(first: 2) { ...P } } fragment P on Product { seller { name } }") == 1 + 2
    assert cost('{ search(text: "a") { __typename ... on Product { seller { name } } ... on Book { title } } }') \
        == 1 + 10
    assert cost("{ products(first: 5) { name } }", weights={"Product.name": 2}) == 1 + 5 * 2


def test_an_operation_costs_at_least_one_and_mutations_count_their_fields():
    assert cost("{ __typename }") == 1
    assert cost('mutation { buy(upc: "1") { seller { name } } }', weights={"Mutation.buy": 10}) == 10 + 1
