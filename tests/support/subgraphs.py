"""Real GraphQL subgraphs for tests: graphql-core executing a subgraph schema (with the
Federation subgraph spec's `_entities` and `_service`), served over HTTP on a free port.

    sub = Subgraph("products", SDL, resolvers={"Query.topProducts": fn, ...},
                   references={"Product": lambda rep: ...}).start()

`resolvers` maps "Type.field" to `fn(parent, info, **args)`; `references` maps an
entity type to `fn(representation) -> object or None`. Every operation received is
kept in `.operations` (query, variables); `.fail` makes the next answers fail
("status" 500, "garbage" not JSON, "shape" JSON of the wrong shape), `.delay` slows them.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from graphql import build_schema, graphql_sync

from .processes import free_port

#: (subgraph name, operation text) of every call any subgraph received, in order.
CALLS: list[tuple[str, str]] = []

_FEDERATION = """
scalar _Any
scalar FieldSet
scalar link__Import
enum link__Purpose { SECURITY EXECUTION }
type _Service { sdl: String }
directive @key(fields: FieldSet!, resolvable: Boolean = true) repeatable on OBJECT | INTERFACE
directive @requires(fields: FieldSet!) on FIELD_DEFINITION
directive @provides(fields: FieldSet!) on FIELD_DEFINITION
directive @external on OBJECT | FIELD_DEFINITION
directive @shareable repeatable on OBJECT | FIELD_DEFINITION
directive @inaccessible on FIELD_DEFINITION | OBJECT | INTERFACE | UNION | ARGUMENT_DEFINITION | SCALAR | ENUM
  | ENUM_VALUE | INPUT_OBJECT | INPUT_FIELD_DEFINITION
directive @override(from: String!) on FIELD_DEFINITION
directive @interfaceObject on OBJECT
directive @extends on OBJECT | INTERFACE
directive @link(url: String!, as: String, import: [link__Import], for: link__Purpose) repeatable on SCHEMA
"""


class Subgraph:
    def __init__(self, name: str, sdl: str, resolvers: dict | None = None, references: dict | None = None,
                 entities: tuple = ()):
        self.name = name
        self.sdl = sdl
        self.port = free_port()
        self.operations: list[dict] = []
        self.fail: str | None = None
        self.delay = 0.0
        self.last_headers: dict = {}
        entity_union = f"union _Entity = {' | '.join(entities)}\n" if entities else ""
        query_extra = "_service: _Service!\n" + ("_entities(representations: [_Any!]!): [_Entity]!\n" if entities else "")
        text = _FEDERATION + entity_union + sdl
        if "type Query" in sdl:
            text = text.replace("type Query {", "type Query {\n" + query_extra, 1)
        else:
            text += "\ntype Query {\n" + query_extra + "}\n"
        self.schema = build_schema(text)
        references = references or {}
        for key, fn in (resolvers or {}).items():
            type_name, field = key.split(".")
            self.schema.get_type(type_name).fields[field].resolve = fn
        query = self.schema.get_type("Query")
        query.fields["_service"].resolve = lambda *_: {"sdl": sdl}
        if entities:
            def entities_resolver(_, info, representations):
                out = []
                for rep in representations:
                    fn = references.get(rep["__typename"])
                    found = fn(rep) if fn is not None else None
                    if isinstance(found, dict):
                        found = {"__typename": rep["__typename"], **found}
                    out.append(found)
                return out

            query.fields["_entities"].resolve = entities_resolver
            self.schema.get_type("_Entity").resolve_type = lambda obj, *_: obj["__typename"]
        for type_ in self.schema.type_map.values():
            if hasattr(type_, "resolve_type") and not type_.name.startswith("_") and type_.resolve_type is None \
                    and type_.__class__.__name__ in ("GraphQLInterfaceType", "GraphQLUnionType"):
                type_.resolve_type = lambda obj, *_: obj.get("__typename")
        self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/graphql"

    def start(self) -> "Subgraph":
        subgraph = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                request = json.loads(self.rfile.read(length))
                subgraph.operations.append(request)
                CALLS.append((subgraph.name, request["query"]))
                subgraph.last_headers = {k.lower(): v for k, v in self.headers.items()}
                if subgraph.delay:
                    time.sleep(subgraph.delay)
                if subgraph.fail == "status":
                    return self._send(500, b"upstream trouble", "text/plain")
                if subgraph.fail == "garbage":
                    return self._send(200, b"<html>not json</html>", "text/html")
                if subgraph.fail == "shape":
                    return self._send(200, b'{"data": [1, 2, 3]}', "application/json")
                result = graphql_sync(subgraph.schema, request["query"], variable_values=request.get("variables"))
                body = {"data": result.data}
                if result.errors:
                    body["errors"] = [e.formatted for e in result.errors]
                self._send(200, json.dumps(body).encode(), "application/json")

            def _send(self, status, body, ctype):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def entities_sent(subgraph: Subgraph) -> list[list]:
    """The representations of each `_entities` operation the subgraph received."""
    return [op["variables"]["representations"] for op in subgraph.operations
            if "_entities" in op["query"] and op.get("variables")]
