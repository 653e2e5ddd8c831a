"""Running a plan (docs/graphql.md, "Execution"): fetches, merging, the response.

- Root fetches of a query run in parallel, a mutation's one after another; an
  entity fetch runs once every fetch it comes after is done, in parallel with the
  others that are ready.
- An entity fetch collects its objects at its path in the merged data (of its
  types, with their keys), sends each distinct representation once, and merges
  each answer back into every object it stands for.
- A fetch that fails (transport, status, not JSON, wrong shape) is an error for its
  own fields only: they stay null, with an error naming the subgraph at each path.
  A subgraph's own errors are passed on, their paths mapped back to the operation's.
- The response is then shaped from the client's selections over the merged data:
  aliases, `@skip`/`@include`, fragments by runtime type, `__typename`, and null
  propagation as the GraphQL spec has it (a null in a non-null position nulls the
  nearest nullable parent, with an error unless one is there already).
"""
from __future__ import annotations

import asyncio

import orjson
from graphql import GraphQLEnumType, GraphQLList, GraphQLNonNull, GraphQLObjectType, GraphQLScalarType
from graphql.execution.values import get_directive_values
from graphql.language import ast as gast
from graphql.type import GraphQLIncludeDirective, GraphQLSkipDirective

from .planner import INTERNAL, Plan, response_key

_NULLED = object()   # a non-null field that came out null: its parent is null


class FetchFailed(Exception):
    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


def _walk(value, path: tuple, at: tuple, found: list) -> None:
    """Objects at `path` under `value` (lists walked through), with their concrete paths."""
    if value is None:
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _walk(item, path, at + (i,), found)
        return
    if not path:
        if isinstance(value, dict):
            found.append((value, at))
        return
    if isinstance(value, dict):
        _walk(value.get(path[0]), path[1:], at + (path[0],), found)


def _merge(target: dict, source: dict) -> None:
    for key, value in source.items():
        existing = target.get(key)
        if isinstance(existing, dict) and isinstance(value, dict):
            _merge(existing, value)
        elif isinstance(existing, list) and isinstance(value, list) and len(existing) == len(value):
            for i, item in enumerate(value):
                if isinstance(existing[i], dict) and isinstance(item, dict):
                    _merge(existing[i], item)
                else:
                    existing[i] = item
        else:
            target[key] = value


def _key_value(obj, selections):
    """A representation's fields (from the planner's `__th_` aliases, or the field itself)."""
    out = {}
    for field in selections.selections:
        name = field.name.value
        value = obj.get(INTERNAL + name, obj.get(name)) if isinstance(obj, dict) else None
        if field.selection_set is not None and value is not None:
            if isinstance(value, list):
                value = [_key_value(v, field.selection_set) for v in value]
            else:
                value = _key_value(value, field.selection_set)
        out[name] = value
    return out


def _complete_key(value) -> bool:
    if value is None:
        return False
    if isinstance(value, dict):
        return all(_complete_key(v) for v in value.values())
    if isinstance(value, list):
        return all(_complete_key(v) for v in value)
    return True


class Execution:
    """One operation's run over a plan: `send(fetch, document, variables)` is awaited for
    each subgraph call and returns the decoded answer (or raises FetchFailed)."""

    def __init__(self, plan: Plan, variables: dict, send, subgraph_names: dict, tracer=None):
        self.plan = plan
        self.tracer = tracer          # the request's, when traced: each plan step gets a span
        self.variables = variables
        self.send = send
        self.names = subgraph_names   # join__Graph value -> subgraph name
        self.data: dict = {}
        self.steps = 0
        self.errors: list = []
        self.failed_paths: set = set()

    async def run(self) -> None:
        plan = self.plan
        fetches = plan.fetches
        roots = [f for f in fetches if f.entity is None]
        done: dict = {}
        # Steps: the root fetches (in parallel, or one step each for a mutation's), then
        # each round of entity fetches whose inputs are in.
        steps = [[f] for f in roots] if plan.sequential else [roots] if roots else []
        for step in steps:
            await self._step(step, self._root)
            for fetch in step:
                done[fetch.index] = True
        waiting = [f for f in fetches if f.entity is not None]
        while waiting:
            ready = [f for f in waiting if all(a.index in done for a in f.after)]
            if not ready:
                break
            waiting = [f for f in waiting if f not in ready]
            await self._step(ready, self._entities)
            for fetch in ready:
                done[fetch.index] = True

    async def _step(self, fetches: list, run) -> None:
        """One plan step: its fetches in parallel, under a span of its own when traced."""
        self.steps += 1
        span = None
        if self.tracer is not None:
            span = self.tracer.step("graphql step", {
                "tollhouse.graphql.step": self.steps,
                "tollhouse.graphql.subgraphs": ",".join(sorted({self.names[f.graph] for f in fetches})),
                "tollhouse.graphql.kind": "entities" if fetches[0].entity is not None else "root"})
        try:
            if len(fetches) == 1:   # most steps: awaited in place (no task, no gathering future)
                await run(fetches[0], span)
            else:
                await asyncio.gather(*(run(f, span) for f in fetches))
        finally:
            if span is not None:
                span.end()

    def _variables(self, fetch) -> dict:
        return {name: self.variables[name] for name in fetch.variables if name in self.variables}

    async def _root(self, fetch, span) -> None:
        try:
            answer = await self.send(fetch, fetch.document, self._variables(fetch), span)
        except FetchFailed as e:
            for sel in fetch.selections:
                self._error(e.args[0], (response_key(sel),), fetch, e.code)
            return
        data = answer.get("data")
        if isinstance(data, dict):
            _merge(self.data, data)
        elif data is not None:
            for sel in fetch.selections:
                self._error("the subgraph answered data that is not an object", (response_key(sel),), fetch,
                            "SUBREQUEST_MALFORMED_RESPONSE")
        for error in answer.get("errors") or ():
            self._pass_on(error, fetch, None)

    async def _entities(self, fetch, span) -> None:
        found: list = []
        _walk(self.data, fetch.path, (), found)
        representations: list = []
        index: dict = {}
        owners: list[list] = []   # representation -> [(object, path)]
        for obj, at in found:
            typename = obj.get("__typename")
            if typename not in fetch.typenames:
                continue
            key = _key_value(obj, fetch.keys)
            if not _complete_key(key):
                continue   # no key to send (a null on the way): nothing to ask for
            rep = {"__typename": fetch.entity, **key}
            for requires in fetch.requires:
                rep.update(_key_value(obj, requires))
            marker = _freeze(rep)
            i = index.get(marker)
            if i is None:
                i = index[marker] = len(representations)
                representations.append(rep)
                owners.append([])
            owners[i].append((obj, at))
        if not representations:
            return
        variables = self._variables(fetch)
        variables["representations"] = representations
        try:
            answer = await self.send(fetch, fetch.document, variables, span)
        except FetchFailed as e:
            for group in owners:
                for _, at in group:
                    self._fields_failed(e.args[0], at, fetch, e.code)
            return
        data = answer.get("data")
        entities = data.get("_entities") if isinstance(data, dict) else None
        if not isinstance(entities, list) or len(entities) != len(representations):
            for group in owners:
                for _, at in group:
                    self._fields_failed("the subgraph's _entities answer does not match the representations sent",
                                        at, fetch, "SUBREQUEST_MALFORMED_RESPONSE")
        else:
            for i, entity in enumerate(entities):
                if isinstance(entity, dict):
                    entity.pop("__typename", None)   # an @interfaceObject's answer names the interface
                    for obj, _ in owners[i]:
                        _merge(obj, entity)
        for error in answer.get("errors") or ():
            self._pass_on(error, fetch, owners)

    def _fields_failed(self, message, at, fetch, code):
        for sel in fetch.selections:
            if isinstance(sel, gast.FieldNode):
                self._error(message, at + (response_key(sel),), fetch, code)

    def _error(self, message, path, fetch, code) -> None:
        self.failed_paths.add(path)
        self.errors.append({"message": message, "path": list(path),
                            "extensions": {"code": code, "serviceName": self.names[fetch.graph]}})

    def _pass_on(self, error, fetch, owners) -> None:
        """A subgraph's error, its path mapped back (entities: to each object it stands for)."""
        if not isinstance(error, dict):
            return
        extensions = dict(error.get("extensions") or {}) if isinstance(error.get("extensions"), dict) else {}
        extensions.setdefault("serviceName", self.names[fetch.graph])
        out = {"message": str(error.get("message", "subgraph error")), "extensions": extensions}
        path = error.get("path")
        if owners is not None and isinstance(path, list) and len(path) >= 2 and path[0] == "_entities" and \
                isinstance(path[1], int) and 0 <= path[1] < len(owners):
            for _, at in owners[path[1]]:
                mapped = list(at) + [p for p in path[2:] if not (isinstance(p, str) and p.startswith(INTERNAL))]
                self.failed_paths.add(tuple(mapped))
                self.errors.append({**out, "path": mapped})
            return
        if isinstance(path, list) and owners is None:
            out["path"] = path
            self.failed_paths.add(tuple(path))
        self.errors.append(out)

    # --- the response -----------------------------------------------------------------------
    def shape(self, schema, root_type: str, selections, fragments: dict, extra: dict | None = None):
        """The client's data from the merged data (None when a non-null root field is null)."""
        obj = dict(self.data)
        if extra:
            obj.update(extra)
        result = self._object(schema, schema.get_type(root_type), selections, fragments, obj, ())
        return None if result is _NULLED else result

    def _included(self, node) -> bool:
        if not node.directives:
            return True
        skip = get_directive_values(GraphQLSkipDirective, node, self.variables)
        if skip is not None and skip.get("if") is True:
            return False
        include = get_directive_values(GraphQLIncludeDirective, node, self.variables)
        return not (include is not None and include.get("if") is False)

    def _collect(self, schema, object_type, selections, fragments, fields: dict) -> None:
        for sel in selections:
            if not self._included(sel):
                continue
            if isinstance(sel, gast.FieldNode):
                fields.setdefault(response_key(sel), []).append(sel)
                continue
            if isinstance(sel, gast.FragmentSpreadNode):
                fragment = fragments.get(sel.name.value)
                if fragment is None:
                    continue
                condition, inner = fragment.type_condition, fragment.selection_set.selections
            else:
                condition, inner = sel.type_condition, sel.selection_set.selections
            if condition is not None and not _applies(schema, condition.name.value, object_type):
                continue
            self._collect(schema, object_type, inner, fragments, fields)

    def _object(self, schema, object_type, selections, fragments, obj: dict, path: tuple):
        fields: dict = {}
        self._collect(schema, object_type, selections, fragments, fields)
        out = {}
        for key, nodes in fields.items():
            node = nodes[0]
            name = node.name.value
            if name == "__typename":
                out[key] = object_type.name
                continue
            if name in ("__schema", "__type"):
                out[key] = obj.get(key)   # answered from the API schema (policy.py)
                continue
            definition = object_type.fields.get(name)
            if definition is None:
                continue
            sub = [s for n in nodes if n.selection_set is not None for s in n.selection_set.selections]
            value = self._value(schema, definition.type, sub, fragments, obj.get(key), path + (key,))
            if value is _NULLED:
                return _NULLED
            out[key] = value
        return out

    def _value(self, schema, type_, selections, fragments, raw, path: tuple):
        if isinstance(type_, GraphQLNonNull):
            value = self._value(schema, type_.of_type, selections, fragments, raw, path)
            if value is None or value is _NULLED:
                if not any(p[:len(path)] == path for p in self.failed_paths):
                    self.errors.append({"message": f"Cannot return null for non-nullable field at "
                                        f"{'.'.join(map(str, path))}", "path": list(path)})
                self.failed_paths.add(path)   # one error per null, not one per parent it nulls
                return _NULLED
            return value
        if raw is None:
            return None
        if isinstance(type_, GraphQLList):
            if not isinstance(raw, list):
                return None
            out = []
            for i, item in enumerate(raw):
                value = self._value(schema, type_.of_type, selections, fragments, item, path + (i,))
                if value is _NULLED:
                    return None   # a null item where none may be: the list is null
                out.append(value)
            return out
        if isinstance(type_, GraphQLEnumType):
            if raw.__class__ is str and raw in type_.values:
                return raw
            # A value the API schema does not have (an @inaccessible one, or a subgraph's
            # own that composition dropped) is never passed on: null, with an error there.
            self.errors.append({"message": f"Enum {type_.name} cannot represent value: {_short_json(raw)}",
                                "path": list(path)})
            self.failed_paths.add(path)
            return None
        if isinstance(type_, GraphQLScalarType):
            return raw
        if not isinstance(raw, dict):
            return None
        if isinstance(type_, GraphQLObjectType):
            runtime = type_
        else:
            runtime = schema.get_type(raw.get("__typename") or "")
            if not isinstance(runtime, GraphQLObjectType):
                return None
        value = self._object(schema, runtime, selections, fragments, raw, path)
        return None if value is _NULLED else value


def _short_json(value) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= 64 else text[:61] + "..."


def _applies(schema, condition: str, object_type) -> bool:
    if condition == object_type.name:
        return True
    abstract = schema.get_type(condition)
    return abstract is not None and not isinstance(abstract, GraphQLObjectType) and \
        schema.is_sub_type(abstract, object_type)


def _freeze(value):
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value
