"""The GraphQL route's handler (docs/graphql.md): GraphQL over HTTP in, a planned
federated execution, the response out.

- `POST` with a JSON body, or `GET` with `query`, `variables`, `operationName` and
  `extensions` parameters (queries only: a mutation by GET is 405).
- The answer is `application/graphql-response+json` when the client accepts it
  (then a request that cannot be executed is a 4xx, as the GraphQL-over-HTTP spec
  says), else `application/json` (200 with `errors`, as servers answered before it).
- A document is parsed (with the token limit), validated against the API schema
  and checked against `limits` before anything is planned or called; documents,
  their checks and plans are cached, so a repeated operation costs none of it.
- Persisted queries: Apollo's APQ (`extensions.persistedQuery.sha256Hash`), or
  `only` the trusted documents of a file.
- All of that happens in the `operation` phase, after auth and before rate limits:
  the operation's name and estimated cost (cost.py) go in `exchange.vars` for rate
  limits with `key: graphql_operation` or `cost: graphql_cost`, and `respond` (the
  route's answer, once every policy has passed) plans and executes what was prepared.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import urllib.parse
from time import perf_counter

import orjson
from graphql import GraphQLError, parse, validate
from graphql.execution import execute
from graphql.execution.values import get_variable_values
from graphql.language import ast as gast
from graphql.validation import specified_rules

from ...exchange.subrequest import start_subrequest, subrequests
from ...pipeline import Policy, Reply, with_body
from .cost import CostModel
from .executor import Execution, FetchFailed
from .planner import Planner, PlanningError
from .schema import load_documents, load_supergraph

log = logging.getLogger("tollhouse.graphql")

_CACHED = 2048    # documents (and plans) kept per route
GRAPHQL_RESPONSE = "application/graphql-response+json"


class _Refusal(Exception):
    """A request that is not executed: (HTTP status with graphql-response+json, code, message)."""

    def __init__(self, status: int, code: str, message: str, locations=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.locations = locations


class _Document:
    __slots__ = ("document", "operations", "fragments", "introspective", "plans", "costs")

    def __init__(self, document):
        self.document = document
        self.operations = {}
        self.fragments = {}
        for d in document.definitions:
            if isinstance(d, gast.OperationDefinitionNode):
                self.operations[d.name.value if d.name else None] = d
            elif isinstance(d, gast.FragmentDefinitionNode):
                self.fragments[d.name.value] = d
        self.introspective = _introspective(document)
        self.plans: dict = {}
        self.costs: dict = {}   # (operation name, its integer variables) -> estimated cost


class _Prepared:
    """What the operation phase made of a request: for the rate limits and `respond`."""

    __slots__ = ("modern", "name", "document", "operation", "variables", "cost", "refusal")

    def __init__(self, modern: bool):
        self.modern = modern
        self.name = ""
        self.document = self.operation = self.variables = self.refusal = None
        self.cost = 1


class GraphqlPolicy(Policy):
    """Answers its route itself (`terminal`); its outcome is ok, partial or refused."""

    phase = "operation"
    outcome = "graphql"
    terminal = True
    default_methods = ("GET", "POST")
    log_fields = ("graphql_operation", "graphql_cost")

    def __init__(self, config, context):
        super().__init__(config, context)
        self.route_name = context.route_name
        self.supergraph = load_supergraph(config.supergraph)
        self.schema = self.supergraph.api_schema
        self.planner = Planner(self.supergraph, self.schema.type_map)
        self.costs = CostModel(self.schema, config.cost)
        self.documents: dict[str, _Document] = {}
        self.apq: dict[str, str] = {}
        self.trusted = load_documents(config.persisted_queries.documents) \
            if config.persisted_queries.mode == "only" else None
        self.names = {enum: s.name for enum, s in self.supergraph.subgraphs.items()}
        self.pools: dict = {}     # join__Graph value -> a pool name (the config's) or an UpstreamPool (its URL's)
        self.targets: dict = {}   # join__Graph value -> the path the subgraph answers at
        self.stats = context.stats
        self.timeout = context.route.timeout if context.route is not None else None
        for outcome in ("ok", "partial", "refused"):
            self.stats.declare("graphql_operations", (("outcome", outcome), ("operation", ""), ("route", self.route_name)))

    def outcome_of(self, value):
        return value[0] if value.__class__ is tuple else None

    def log_values(self, value) -> tuple:
        if value.__class__ is tuple:
            return value[1], value[2]
        return (value.name or None, value.cost) if value.__class__ is _Prepared else (None, None)

    # --- transport ----------------------------------------------------------------------------
    def _pool(self, graph: str):
        pool = self.pools.get(graph)
        if pool is None:
            subgraph = self.supergraph.subgraphs[graph]
            mapped = self.config.subgraphs.get(subgraph.name)
            url = urllib.parse.urlsplit(subgraph.url)
            self.targets[graph] = (url.path or "/").encode() + (b"?" + url.query.encode() if url.query else b"")
            if mapped is not None:
                pool = mapped.upstream
            else:
                from ...config.model import gateway_schema
                from ...registry import protocol_named
                from ...upstream.pool import UpstreamPool

                errors: list = []
                settings = gateway_schema()._fields["upstreams"].kind.item.validate(
                    {"targets": [f"{url.scheme}://{url.netloc}"]}, f"subgraph {subgraph.name}", None, errors)
                protocol = protocol_named(settings.protocol)
                pool = UpstreamPool(f"graphql-{self.route_name}-{subgraph.name}", settings, asyncio.get_running_loop(),
                                    protocol.codec if protocol is not None else None,
                                    protocol.target_pool if protocol is not None else None)
            self.pools[graph] = pool
        return pool

    def close(self) -> None:
        for pool in self.pools.values():
            if not isinstance(pool, str):
                pool.close()

    def _sender(self, exchange):
        identity = exchange.identity
        lines = [b"content-type: application/json\r\n", b"accept: application/json\r\n"]
        if identity is not None:
            lines.extend(identity.upstream_lines)

        async def send(fetch, document: str, variables: dict, step):
            graph = fetch.graph
            pool = self._pool(graph)
            name = self.names[graph]
            body = orjson.dumps({"query": document, "variables": variables} if variables else {"query": document})
            started = perf_counter()
            try:
                call = start_subrequest(exchange.worker, pool, b"POST", self.targets[graph], headers=lines, body=body,
                                        timeout=self.timeout, parent=exchange, span=f"subgraph {name}", step=step)
            except KeyError:
                raise FetchFailed(f"subgraph {name}: its upstream is gone", "SUBREQUEST_HTTP_ERROR") from None
            answer = (await subrequests([call]))[0]
            self.stats.observe("graphql_subgraph_fetch_seconds", (("route", self.route_name), ("subgraph", name)),
                               perf_counter() - started)
            if answer.local or answer.status >= 300 and not answer.body.startswith(b"{"):
                raise FetchFailed(f"subgraph {name} answered HTTP {answer.status}", "SUBREQUEST_HTTP_ERROR")
            try:
                decoded = orjson.loads(answer.body)
            except orjson.JSONDecodeError:
                raise FetchFailed(f"subgraph {name} answered something that is not JSON",
                                  "SUBREQUEST_MALFORMED_RESPONSE") from None
            if not isinstance(decoded, dict) or ("data" not in decoded and "errors" not in decoded):
                raise FetchFailed(f"subgraph {name} answered JSON that is not a GraphQL response",
                                  "SUBREQUEST_MALFORMED_RESPONSE")
            return decoded

        return send

    # --- the request ----------------------------------------------------------------------------
    def on_request(self, exchange):
        """The operation phase: the request read, parsed, checked and costed (nothing is
        refused here, so the rate limits count refused documents too)."""
        if exchange.chunked or exchange.content_length:
            return with_body(exchange, lambda: self._prepare(exchange))
        return self._prepare(exchange)

    def _prepare(self, exchange) -> None:
        accept = exchange.header("accept") or ""
        prepared = _Prepared(GRAPHQL_RESPONSE in accept or not accept or accept.startswith("*/*")
                             and "json" not in accept)
        try:
            params = self._params(exchange, b"".join(exchange.body_chunks or ()))
            prepared.name = params.get("operationName") or ""
            document = self._document(params)
            operation = self._operation(document, params, exchange)
            prepared.name = prepared.name or (operation.name.value if operation.name else "")
            variables = self._variables(operation, params)
            cost = self._cost(document, prepared.name, operation, variables)
            max_cost = self.config.limits.max_cost
            if max_cost and cost > max_cost:
                raise _Refusal(400, "COST_LIMIT_EXCEEDED", f"the operation's estimated cost is {cost}; the limit is "
                                                           f"{max_cost}")
            prepared.document, prepared.operation, prepared.variables, prepared.cost = document, operation, variables, cost
        except _Refusal as e:
            prepared.refusal = e
        exchange.remember(self.slot, prepared)
        found = exchange.vars
        if found is None:
            found = exchange.vars = {}
        found["graphql_operation"] = prepared.name or "(anonymous)"
        found["graphql_cost"] = prepared.cost
        return None

    def _cost(self, document: _Document, name: str, operation, variables: dict) -> int:
        """The operation's estimated cost, cached per document: only integer variables (list
        sizes) change it."""
        key = (name, tuple(sorted((k, v) for k, v in variables.items() if v.__class__ is int)))
        found = document.costs.get(key)
        if found is None:
            if len(document.costs) >= _CACHED:
                document.costs.clear()
            found = document.costs[key] = self.costs.estimate(operation, document.fragments, variables)
        return found

    async def respond(self, exchange, body: bytes):
        prepared = exchange.recall(self.slot)   # on_request, in the operation phase, made it
        modern, operation_name, cost = prepared.modern, prepared.name, prepared.cost
        e = prepared.refusal
        if e is not None:
            self._count(exchange, "refused", operation_name, cost)
            error = {"message": str(e), "extensions": {"code": e.code}}
            if e.locations:
                error["locations"] = e.locations
            status = e.status if modern or e.status in (405, 415) or e.code in ("BAD_REQUEST",) else 200
            return self._answer(exchange, status, {"errors": [error]}, modern, allow=e.status == 405)
        document, operation, variables = prepared.document, prepared.operation, prepared.variables
        plan = document.plans.get(operation_name)
        if plan is None:
            try:
                plan = self.planner.plan(operation, document.fragments)
            except PlanningError as e:
                self._count(exchange, "refused", operation_name, cost)
                return self._answer(exchange, 500 if modern else 200,
                                    {"errors": [{"message": str(e), "extensions": {"code": "QUERY_PLANNING_FAILED"}}]},
                                    modern)
            document.plans[operation_name] = plan
        execution = Execution(plan, variables, self._sender(exchange), self.names, exchange.tracer)
        await execution.run()
        extra = self._introspect(document, operation, plan, variables, execution) if plan.introspection else None
        data = execution.shape(self.schema, plan.root_type, operation.selection_set.selections, document.fragments,
                               extra)
        result = {"data": data}
        if execution.errors:
            result["errors"] = execution.errors
        self._count(exchange, "partial" if execution.errors else "ok", operation_name, cost)
        return self._answer(exchange, 200, result, modern)

    def _answer(self, exchange, status: int, result: dict, modern: bool, allow: bool = False):
        headers = [("content-type", GRAPHQL_RESPONSE + "; charset=utf-8" if modern else "application/json"),
                   ("cache-control", "no-store")]
        if allow:
            headers.append(("allow", "POST"))
        return Reply(status, orjson.dumps(result), headers)

    def _count(self, exchange, outcome: str, operation: str, cost: int) -> None:
        exchange.remember(self.slot, (outcome, operation or None, cost))
        self.stats.inc("graphql_operations", (("outcome", outcome), ("operation", operation[:64]),
                                              ("route", self.route_name)))

    def _params(self, exchange, body: bytes) -> dict:
        if exchange.method == b"GET":
            query = exchange.query[1:].decode("latin-1") if exchange.query else ""
            params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
            for name in ("variables", "extensions"):
                if params.get(name):
                    try:
                        params[name] = orjson.loads(params[name])
                    except orjson.JSONDecodeError:
                        raise _Refusal(400, "BAD_REQUEST", f"{name} is not JSON") from None
            return params
        if exchange.method != b"POST":
            raise _Refusal(405, "BAD_REQUEST", "GraphQL takes GET and POST")
        ctype = (exchange.header("content-type") or "").split(";")[0].strip().lower()
        if ctype not in ("application/json", "application/graphql-response+json"):
            raise _Refusal(415, "BAD_REQUEST", "a POST body must be application/json")
        try:
            params = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _Refusal(400, "BAD_REQUEST", "the body is not JSON") from None
        if not isinstance(params, dict):
            raise _Refusal(400, "BAD_REQUEST", "the body must be a JSON object")
        for name, kind in (("query", str), ("operationName", str), ("variables", dict), ("extensions", dict)):
            if params.get(name) is not None and not isinstance(params[name], kind):
                raise _Refusal(400, "BAD_REQUEST", f"{name} must be a {'string' if kind is str else 'JSON object'}")
        return params

    def _document(self, params: dict) -> _Document:
        query = params.get("query")
        persisted = (params.get("extensions") or {}).get("persistedQuery")
        mode = self.config.persisted_queries.mode
        if self.trusted is not None:
            sha = persisted.get("sha256Hash") if isinstance(persisted, dict) else None
            if query and sha is None:
                sha = hashlib.sha256(query.encode()).hexdigest()
            known = self.trusted.get((sha or "").lower())
            if known is None:
                raise _Refusal(400, "PERSISTED_QUERY_NOT_IN_LIST", "only trusted documents are served here")
            query = known
        elif mode == "apq" and isinstance(persisted, dict):
            sha = str(persisted.get("sha256Hash", "")).lower()
            if query:
                if hashlib.sha256(query.encode()).hexdigest() != sha:
                    raise _Refusal(400, "PERSISTED_QUERY_HASH_MISMATCH", "the query's sha256Hash does not match it")
                if len(self.apq) >= _CACHED:
                    self.apq.clear()
                self.apq[sha] = query
            else:
                query = self.apq.get(sha)
                if query is None:
                    raise _Refusal(200, "PERSISTED_QUERY_NOT_FOUND", "PersistedQueryNotFound")
        if not query:
            raise _Refusal(400, "BAD_REQUEST", "no query")
        found = self.documents.get(query)
        if found is None:
            found = self._checked(query)
            if len(self.documents) >= _CACHED:
                self.documents.clear()
            self.documents[query] = found
        if isinstance(found, _Refusal):
            raise found
        return found

    def _checked(self, query: str):
        """A parsed, validated document within the limits, or the _Refusal (cached either way)."""
        limits = self.config.limits
        try:
            document = parse(query, max_tokens=limits.max_tokens or None)
        except GraphQLError as e:
            code = "GRAPHQL_PARSE_FAILED" if "token" not in e.message.lower() or not limits.max_tokens else \
                "MAX_TOKENS_EXCEEDED"
            return _Refusal(400, code, e.message, _locations(e))
        errors = validate(self.schema, document, specified_rules)
        if errors:
            return _Refusal(400, "GRAPHQL_VALIDATION_FAILED", errors[0].message, _locations(errors[0]))
        found = _Document(document)
        if found.introspective and not self.config.introspection:
            return _Refusal(400, "INTROSPECTION_DISABLED", "introspection is turned off on this route")
        for definition in found.operations.values():
            refusal = _over_limits(definition, found.fragments, limits)
            if refusal is not None:
                return refusal
        return found

    def _operation(self, document: _Document, params: dict, exchange):
        name = params.get("operationName") or None
        if name is None and len(document.operations) != 1:
            raise _Refusal(400, "BAD_REQUEST", "the document has several operations: name one (operationName)")
        operation = document.operations.get(name) if name else next(iter(document.operations.values()), None)
        if operation is None:
            raise _Refusal(400, "BAD_REQUEST", f"no operation named {name!r} in the document")
        if exchange.method == b"GET" and operation.operation != gast.OperationType.QUERY:
            raise _Refusal(405, "BAD_REQUEST", "only queries may be sent with GET")
        if operation.operation == gast.OperationType.SUBSCRIPTION:
            raise _Refusal(400, "BAD_REQUEST", "subscriptions are not served")
        return operation

    def _variables(self, operation, params: dict) -> dict:
        inputs = params.get("variables") or {}
        if not isinstance(inputs, dict):
            raise _Refusal(400, "BAD_REQUEST", "variables must be a JSON object")
        coerced = get_variable_values(self.schema, operation.variable_definitions or (), inputs)
        if isinstance(coerced, list):
            raise _Refusal(400, "BAD_USER_INPUT", coerced[0].message, _locations(coerced[0]))
        # The subgraphs get the client's own values (coerced ones are Python objects).
        out = dict(inputs)
        for definition in operation.variable_definitions or ():
            name = definition.variable.name.value
            if name not in out and definition.default_value is not None:
                out[name] = coerced.get(name)
        return out

    def _introspect(self, document: _Document, operation, plan, variables, execution) -> dict:
        """__schema and __type from the API schema (graphql-core answers them)."""
        only = gast.OperationDefinitionNode(operation=gast.OperationType.QUERY, name=None,
                                            variable_definitions=operation.variable_definitions, directives=(),
                                            selection_set=gast.SelectionSetNode(selections=tuple(plan.introspection)))
        definitions = (only,) + tuple(document.fragments.values())
        result = execute(self.schema, gast.DocumentNode(definitions=definitions), variable_values=variables)
        for error in result.errors or ():
            execution.errors.append(error.formatted)
        return result.data or {}


def _locations(error: GraphQLError):
    return [{"line": loc.line, "column": loc.column} for loc in error.locations or ()] or None


def _introspective(document) -> bool:
    for d in document.definitions:
        for sel in d.selection_set.selections if d.selection_set is not None else ():
            if isinstance(sel, gast.FieldNode) and sel.name.value in ("__schema", "__type"):
                return True
    return False


def _over_limits(operation, fragments: dict, limits):
    depth, aliases = _measure(operation.selection_set, fragments, 0, set())
    roots = len(operation.selection_set.selections)
    if limits.max_depth and depth > limits.max_depth:
        return _Refusal(400, "MAX_DEPTH_EXCEEDED", f"the operation is {depth} deep; the limit is {limits.max_depth}")
    if limits.max_aliases and aliases > limits.max_aliases:
        return _Refusal(400, "MAX_ALIASES_EXCEEDED", f"the operation has {aliases} aliases; the limit is "
                                                     f"{limits.max_aliases}")
    if limits.max_root_fields and roots > limits.max_root_fields:
        return _Refusal(400, "MAX_ROOT_FIELDS_EXCEEDED", f"the operation has {roots} root fields; the limit is "
                                                         f"{limits.max_root_fields}")
    return None


def _measure(selection_set, fragments: dict, depth: int, seen: set) -> tuple[int, int]:
    """(deepest field nesting, aliases) of a selection set, fragments followed once."""
    deepest, aliases = depth, 0
    for sel in selection_set.selections:
        if isinstance(sel, gast.FieldNode):
            if sel.alias is not None:
                aliases += 1
            if sel.selection_set is not None:
                d, a = _measure(sel.selection_set, fragments, depth + 1, seen)
            else:
                d, a = depth + 1, 0
        elif isinstance(sel, gast.InlineFragmentNode):
            d, a = _measure(sel.selection_set, fragments, depth, seen)
        else:
            name = sel.name.value
            if name in seen or name not in fragments:
                continue
            d, a = _measure(fragments[name].selection_set, fragments, depth, seen | {name})
        deepest, aliases = max(deepest, d), aliases + a
    return deepest, aliases
