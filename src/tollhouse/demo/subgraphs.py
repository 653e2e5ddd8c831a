"""The demo's services as GraphQL subgraphs (Federation v2, `_entities`), answered by
graphql-core at /graphql beside their JSON: users (`users`, `user`, User.name) and
orders (`orders`, Order.owner, User.orders). src/tollhouse/demo/supergraph.graphql is
their supergraph."""
from __future__ import annotations

import orjson
from graphql import build_schema, graphql_sync

from .services import ORDERS, USERS

_FEDERATION = """
scalar _Any
type _Service { sdl: String }
directive @key(fields: String!, resolvable: Boolean = true) repeatable on OBJECT | INTERFACE
"""

USERS_SDL = """
type Query { users: [User] user(id: ID!): User _entities(representations: [_Any!]!): [_Entity]! _service: _Service! }
type User @key(fields: "id") { id: ID! name: String }
union _Entity = User
"""

ORDERS_SDL = """
type Query { orders: [Order] _entities(representations: [_Any!]!): [_Entity]! _service: _Service! }
type Order { id: ID! item: String owner: User }
type User @key(fields: "id") { id: ID! orders: [Order] }
union _Entity = User
"""


def _order(o: dict) -> dict:
    return {"id": o["id"], "item": o["item"], "owner": {"__typename": "User", "id": o["owner"]}}


def _schema(sdl: str, fields: dict, entity):
    schema = build_schema(_FEDERATION + sdl)
    for key, fn in fields.items():
        type_name, field = key.split(".")
        schema.get_type(type_name).fields[field].resolve = fn
    schema.get_type("Query").fields["_entities"].resolve = lambda _, info, representations: [
        entity(rep) for rep in representations]
    schema.get_type("Query").fields["_service"].resolve = lambda *_: {"sdl": sdl}
    schema.get_type("_Entity").resolve_type = lambda obj, *_: "User"
    return schema


USERS_SCHEMA = _schema(USERS_SDL, {"Query.users": lambda *_: list(USERS.values()),
                                   "Query.user": lambda _, info, id: USERS.get(id)},
                       lambda rep: USERS.get(rep.get("id")))
ORDERS_SCHEMA = _schema(ORDERS_SDL, {"Query.orders": lambda *_: [_order(o) for o in ORDERS],
                                     "User.orders": lambda user, info: [_order(o) for o in ORDERS
                                                                        if o["owner"] == user["id"]]},
                        lambda rep: {"id": rep.get("id")})


def answer(schema, body: bytes) -> tuple[int, dict]:
    """A GraphQL POST body answered (200 with data and errors, 400 for a body that is not one)."""
    try:
        request = orjson.loads(body)
        query = request["query"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return 400, {"errors": [{"message": "expected a JSON body with a query"}]}
    result = graphql_sync(schema, query, variable_values=request.get("variables"))
    out: dict = {"data": result.data}
    if result.errors:
        out["errors"] = [e.formatted for e in result.errors]
    return 200, out
