"""Query planning over a supergraph (docs/graphql.md, "Planning").

An operation becomes a graph of fetches, each one GraphQL operation sent to one
subgraph:

- the root fields are grouped by the subgraph that resolves them (preferring a
  subgraph already chosen), one fetch per group: run in parallel for a query, in
  order for a mutation;
- walking a fetch's selections, a field its subgraph cannot resolve (not there,
  `@external` unless `@provides` says so, overridden away) is fetched from a
  subgraph that can, through `_entities`: the object's `@key` fields (and the
  field's `@requires` fields) are added to the parent fetch, and an entity fetch
  for the object's path runs after it. All fields of one object that one subgraph
  resolves go into one entity fetch;
- an interface field that its subgraph cannot resolve as a whole is asked per
  possible type (`... on T`), with `__typename`.

Paths are absolute (response keys from the operation's root; lists are walked
through), so an entity fetch finds its objects in the merged data wherever they
came from. Fields the planner adds (keys, requirements) are aliased `__th_*` so
they never collide with what the client asked for; the client's own aliases and
arguments go to the subgraphs as written, with the variables they use.
"""
from __future__ import annotations

from graphql import print_ast
from graphql.language import ast as gast

from .supergraph import Supergraph

INTERNAL = "__th_"
_TYPENAME = gast.FieldNode(name=gast.NameNode(value="__typename"), arguments=(), directives=())


class PlanningError(Exception):
    """The operation cannot be planned over this supergraph (a composition gap)."""


class Fetch:
    """One operation sent to one subgraph. `path`: where its objects are (entity fetches);
    `typenames`: the object types it is for there; `entity`: the __typename of the
    representations (an @interfaceObject's interface, else the object type)."""

    __slots__ = ("graph", "selections", "path", "typenames", "entity", "keys", "requires", "after", "document",
                 "variables", "index")

    def __init__(self, graph: str, path: tuple = (), typenames: frozenset = frozenset(), entity: str | None = None,
                 keys=None):
        self.graph = graph
        self.selections: list = []      # the client's selections this fetch answers (planned into `document`)
        self.path = path
        self.typenames = typenames
        self.entity = entity
        self.keys = keys                # the key's selection set (entity fetches)
        self.requires: list = []        # the required field sets (entity fetches)
        self.after: list[Fetch] = []    # fetches that must be done first
        self.document = ""
        self.variables: tuple = ()
        self.index = 0


class Plan:
    """The fetches of an operation, in an order where each comes after what it needs;
    `sequential`: a mutation's root fetches, one at a time."""

    __slots__ = ("fetches", "operation", "fragments", "sequential", "introspection", "root_type")

    def __init__(self, operation, fragments: dict, root_type: str):
        self.fetches: list[Fetch] = []
        self.operation = operation
        self.fragments = fragments
        self.sequential = operation.operation == gast.OperationType.MUTATION
        self.introspection: list = []   # root selections answered from the API schema (__schema, __type)
        self.root_type = root_type


def _name(node: gast.FieldNode) -> str:
    return node.name.value


def response_key(node: gast.FieldNode) -> str:
    return node.alias.value if node.alias is not None else node.name.value


def _aliased(node: gast.FieldNode, alias: str) -> gast.FieldNode:
    return gast.FieldNode(alias=gast.NameNode(value=alias), name=node.name, arguments=node.arguments or (),
                          directives=(), selection_set=node.selection_set)


def _with_selections(node, selections: list):
    values = {key: getattr(node, key) for key in node.keys}
    values["selection_set"] = gast.SelectionSetNode(selections=tuple(selections))
    return type(node)(**values)


class Planner:
    def __init__(self, supergraph: Supergraph, schema_types: dict):
        self.sg = supergraph
        self.types = schema_types   # the API schema's type map (field return types)

    # --- helpers --------------------------------------------------------------------------
    def _field_type(self, type_name: str, field_name: str) -> str:
        info = self.sg.types.get(type_name)
        field = info.fields.get(field_name) if info is not None else None
        if field is None:
            raise PlanningError(f"{type_name}.{field_name} is not in the supergraph")
        return field.type_name

    def _inline(self, selections, fragments: dict) -> list:
        """Fragment spreads as inline fragments (their directives kept)."""
        out = []
        for sel in selections:
            if isinstance(sel, gast.FragmentSpreadNode):
                fragment = fragments[sel.name.value]
                out.append(gast.InlineFragmentNode(type_condition=fragment.type_condition,
                                                   directives=sel.directives or (),
                                                   selection_set=fragment.selection_set))
            else:
                out.append(sel)
        return out

    def _resolvable(self, type_name: str, selections, graph: str) -> bool:
        """Whether `graph` resolves every field of a field set at `type_name`."""
        for sel in selections.selections:
            if not self.sg.field_in(type_name, _name(sel), graph):
                return False
            if sel.selection_set is not None and not self._resolvable(
                    self._field_type(type_name, _name(sel)), sel.selection_set, graph):
                return False
        return True

    # --- planning -------------------------------------------------------------------------
    def plan(self, operation: gast.OperationDefinitionNode, fragments: dict) -> Plan:
        root_type = self.sg.roots[operation.operation.value]
        plan = Plan(operation, fragments, root_type)
        groups: list[Fetch] = []
        for sel in self._root_fields(operation.selection_set.selections, fragments, root_type):
            if isinstance(sel, gast.FieldNode) and _name(sel) in ("__schema", "__type"):
                plan.introspection.append(sel)
                continue
            if isinstance(sel, gast.FieldNode) and _name(sel) == "__typename":
                continue   # answered at shaping
            candidates = self.sg.resolvers(root_type, _name(sel))
            if not candidates:
                raise PlanningError(f"no subgraph resolves {root_type}.{_name(sel)}")
            if plan.sequential:
                # A mutation's fields run in order: a new fetch unless the last one's subgraph resolves it.
                if groups and groups[-1].graph in candidates:
                    groups[-1].selections.append(sel)
                else:
                    fetch = Fetch(candidates[0])
                    fetch.selections.append(sel)
                    groups.append(fetch)
                continue
            chosen = next((g for g in groups if g.graph in candidates), None)
            if chosen is None:
                chosen = Fetch(candidates[0])
                groups.append(chosen)
            chosen.selections.append(sel)
        operation_type = operation.operation.value
        variables = {v.variable.name.value: v for v in operation.variable_definitions or ()}
        pending: list[Fetch] = []
        for fetch in groups:
            dependents: list[Fetch] = []
            selections = self._build(root_type, fetch.selections, fetch.graph, (), None, dependents, fragments)
            fetch.document, fetch.variables = self._document(operation_type, selections, variables, None)
            plan.fetches.append(fetch)
            pending.extend(dependents)
        # Entity fetches, breadth first: each planned in its subgraph, which may need more.
        while pending:
            fetch = pending.pop(0)
            dependents = []
            selections = []
            for type_name in sorted(fetch.typenames):
                # An @interfaceObject's subgraph knows the interface, not the object type.
                inner = self._build(fetch.entity or type_name, fetch.selections, fetch.graph, fetch.path, None,
                                    dependents, fragments, entity_root=True)
                selections.append(gast.InlineFragmentNode(
                    type_condition=gast.NamedTypeNode(name=gast.NameNode(value=fetch.entity or type_name)),
                    directives=(), selection_set=gast.SelectionSetNode(selections=tuple(inner))))
                if fetch.entity and fetch.entity != type_name:
                    break   # an @interfaceObject: one fragment on the interface serves every type
            fetch.document, fetch.variables = self._document("query", selections, variables, fetch)
            plan.fetches.append(fetch)
            for dependent in dependents:
                if fetch not in dependent.after:
                    dependent.after.append(fetch)
            pending.extend(dependents)
        for i, fetch in enumerate(plan.fetches):
            fetch.index = i
        return plan

    def _root_fields(self, selections, fragments, root_type) -> list:
        out = []
        for sel in self._inline(selections, fragments):
            if isinstance(sel, gast.InlineFragmentNode):
                # A fragment on the root type: its fields are root fields (its directives stay on each).
                for inner in self._root_fields(sel.selection_set.selections, fragments, root_type):
                    out.append(_with_directives(inner, sel.directives))
            else:
                out.append(sel)
        return out

    def _build(self, type_name: str, selections, graph: str, path: tuple, provided, dependents: list,
               fragments: dict, entity_root: bool = False) -> list:
        """The selections `graph` is asked for at an object of `type_name` at `path`; what it
        cannot resolve goes to entity fetches added to `dependents` (merged per path,
        subgraph and type)."""
        out: list = []
        abstract = self.sg.is_abstract(type_name)
        need_typename = False
        for sel in self._inline(selections, fragments):
            if isinstance(sel, gast.InlineFragmentNode):
                condition = sel.type_condition.name.value if sel.type_condition is not None else type_name
                out.extend(self._fragment(type_name, condition, sel, graph, path, provided, dependents, fragments))
                need_typename = True
                continue
            name = _name(sel)
            if name == "__typename":
                out.append(sel)
                continue
            if abstract and not self.sg.field_in(type_name, name, graph) and not _provided(provided, name):
                # Asked of each possible type in this subgraph.
                for concrete in self.sg.possible_types(type_name, graph):
                    inner = self._build(concrete, [sel], graph, path, provided, dependents, fragments)
                    if inner:
                        out.append(gast.InlineFragmentNode(
                            type_condition=gast.NamedTypeNode(name=gast.NameNode(value=concrete)), directives=(),
                            selection_set=gast.SelectionSetNode(selections=tuple(inner))))
                need_typename = True
                continue
            if self.sg.field_in(type_name, name, graph) or _provided(provided, name):
                if sel.selection_set is None or _provided(provided, name) or self._reachable(
                        self._field_type(type_name, name), sel.selection_set.selections, graph, fragments) or \
                        not self._hop_target(type_name, sel, graph, fragments):
                    out.append(self._field(type_name, sel, graph, path, provided, dependents, fragments))
                    continue
                # Here, but what it holds is not (a value type another subgraph completes): from there.
            # Another subgraph resolves it: an entity fetch for this object.
            self._hop(type_name, sel, graph, path, out, dependents, fragments)
            need_typename = True
        if (need_typename or abstract) and not entity_root:
            out.append(_TYPENAME)
        return out

    def _field(self, type_name, sel: gast.FieldNode, graph, path, provided, dependents, fragments):
        if sel.selection_set is None:
            return sel
        name = _name(sel)
        child_type = self._field_type(type_name, name)
        there = self.sg.field_graph(type_name, name, graph)
        inner_provided = None
        if there is not None and there.provides is not None:
            inner_provided = there.provides
        elif provided is not None:
            inner_provided = _provided_below(provided, name)
        inner = self._build(child_type, sel.selection_set.selections, graph, path + (response_key(sel),),
                            inner_provided, dependents, fragments)
        return _with_selections(sel, inner)

    def _fragment(self, type_name, condition, sel, graph, path, provided, dependents, fragments) -> list:
        sg = self.sg
        if condition == type_name:
            inner = self._build(type_name, sel.selection_set.selections, graph, path, provided, dependents, fragments)
            return [gast.InlineFragmentNode(type_condition=None, directives=sel.directives or (),
                                            selection_set=gast.SelectionSetNode(selections=tuple(inner)))]
        if not sg.is_abstract(type_name):
            # A concrete object in a fragment on one of its interfaces or unions: its own fields.
            if type_name not in sg.possible_types(condition):
                return []
            inner = self._build(type_name, sel.selection_set.selections, graph, path, provided, dependents, fragments)
            return [gast.InlineFragmentNode(type_condition=None, directives=sel.directives or (),
                                            selection_set=gast.SelectionSetNode(selections=tuple(inner)))]
        # An abstract type narrowed: to the condition's types this subgraph can return.
        if sg.is_abstract(condition):
            wanted = [t for t in sg.possible_types(condition) if t in sg.possible_types(type_name, graph)]
        else:
            wanted = [condition] if condition in sg.possible_types(type_name, graph) else []
        out = []
        for concrete in wanted:
            inner = self._build(concrete, sel.selection_set.selections, graph, path, provided, dependents, fragments)
            out.append(gast.InlineFragmentNode(type_condition=gast.NamedTypeNode(name=gast.NameNode(value=concrete)),
                                               directives=sel.directives or (),
                                               selection_set=gast.SelectionSetNode(selections=tuple(inner))))
        return out

    def _hop(self, type_name: str, sel: gast.FieldNode, graph: str, path: tuple, out: list, dependents: list,
             fragments: dict) -> None:
        """`sel` from another subgraph: the key (and requirements) added to `out`, the field
        to an entity fetch of this object."""
        sg = self.sg
        name = _name(sel)
        targets = sg.resolvers(type_name, name)
        if sel.selection_set is not None:
            # Prefer a subgraph that can answer all the field holds.
            child = self._field_type(type_name, name)
            targets = sorted((t for t in targets if t != graph),
                             key=lambda t: not self._reachable(child, sel.selection_set.selections, t, fragments))
        for target in targets:
            entity, key = self._entry(type_name, target, graph)
            if key is None:
                continue
            for field in key.selections.selections:
                _add(out, _aliased(field, INTERNAL + _name(field)))
            there = sg.field_graph(type_name, name, target)
            requires = there.requires if there is not None else None
            fetch = self._entity_fetch(dependents, target, path, type_name, entity, key)
            if requires is not None:
                before = len(dependents)
                required = [_aliased(f, INTERNAL + _name(f)) for f in requires.selections]
                for node in self._build(type_name, required, graph, path, None, dependents, fragments):
                    _add(out, node)
                for earlier in dependents[before:]:
                    if earlier is not fetch and earlier not in fetch.after:
                        fetch.after.append(earlier)
                fetch.requires.append(requires)
            fetch.selections.append(sel)
            return
        raise PlanningError(f"no subgraph can resolve {type_name}.{name} from {sg.subgraphs[graph].name}: no key to "
                            "reach it")

    def _reachable(self, type_name: str, selections, graph: str, fragments: dict) -> bool:
        """Whether `graph` can answer these selections, itself or through entity fetches it can start."""
        sg = self.sg
        if sg.is_abstract(type_name):
            return True   # asked per possible type (_build)
        for sel in self._inline(selections, fragments):
            if isinstance(sel, gast.InlineFragmentNode):
                condition = sel.type_condition.name.value if sel.type_condition is not None else type_name
                inner = type_name if sg.is_abstract(condition) or condition == type_name else condition
                if inner == type_name and not self._reachable(type_name, sel.selection_set.selections, graph,
                                                              fragments):
                    return False
                continue
            name = _name(sel)
            if sg.field_in(type_name, name, graph):
                if sel.selection_set is not None and not self._reachable(
                        self._field_type(type_name, name), sel.selection_set.selections, graph, fragments):
                    if not self._hop_target(type_name, sel, graph, fragments):
                        return False
                continue
            if not self._hop_target(type_name, sel, graph, fragments):
                return False
        return True

    def _hop_target(self, type_name: str, sel, graph: str, fragments: dict) -> bool:
        """Whether another subgraph resolves `sel` of this object and `graph` has a key to reach it there."""
        return any(self._entry(type_name, target, graph)[1] is not None
                   for target in self.sg.resolvers(type_name, _name(sel)) if target != graph)

    def _entry(self, type_name: str, target: str, graph: str):
        """(the __typename `target` knows the object by, the first of its resolvable keys `graph`
        has the fields of), or (type_name, None) when `graph` cannot reach the object there."""
        sg = self.sg
        entity, keys = type_name, sg.keys(type_name, target)
        if not keys:
            # An @interfaceObject there: the object is asked for as its interface.
            interface = next((i for i in sg.types[type_name].interfaces
                              if target in sg.types.get(i).interface_objects), None) \
                if type_name in sg.types else None
            if interface is None:
                return type_name, None
            entity, keys = interface, sg.keys(interface, target)
        return entity, next((k for k in keys if self._resolvable(type_name, k.selections, graph)), None)

    @staticmethod
    def _entity_fetch(dependents: list, graph: str, path: tuple, type_name: str, entity: str, key) -> Fetch:
        for fetch in dependents:
            if fetch.graph == graph and fetch.path == path and type_name in fetch.typenames and fetch.entity == entity:
                return fetch
        for fetch in dependents:
            if fetch.graph == graph and fetch.path == path and fetch.entity == entity == type_name \
                    and fetch.keys is key:
                fetch.typenames = fetch.typenames | {type_name}
                return fetch
        fetch = Fetch(graph, path, frozenset((type_name,)), entity, key.selections)
        dependents.append(fetch)
        return fetch

    def _document(self, operation_type: str, selections: list, variables: dict, entity: Fetch | None):
        used = set()
        for sel in selections:
            _variables_in(sel, used)
        definitions = [variables[name] for name in variables if name in used]
        if entity is not None:
            representations = gast.VariableDefinitionNode(
                variable=gast.VariableNode(name=gast.NameNode(value="representations")),
                type=gast.NonNullTypeNode(type=gast.ListTypeNode(type=gast.NonNullTypeNode(
                    type=gast.NamedTypeNode(name=gast.NameNode(value="_Any"))))), directives=())
            definitions.insert(0, representations)
            selections = [gast.FieldNode(
                name=gast.NameNode(value="_entities"), directives=(),
                arguments=(gast.ArgumentNode(name=gast.NameNode(value="representations"),
                                             value=gast.VariableNode(name=gast.NameNode(value="representations"))),),
                selection_set=gast.SelectionSetNode(selections=tuple(selections)))]
        operation = gast.OperationDefinitionNode(
            operation=gast.OperationType(operation_type), variable_definitions=tuple(definitions), directives=(),
            selection_set=gast.SelectionSetNode(selections=tuple(selections)))
        return print_ast(gast.DocumentNode(definitions=(operation,))), tuple(sorted(used))


def _with_directives(node, directives):
    if not directives:
        return node
    values = {key: getattr(node, key) for key in node.keys}
    values["directives"] = tuple(node.directives or ()) + tuple(directives)
    return type(node)(**values)


def _add(out: list, node) -> None:
    """A field the planner needs, unless the same (alias, name) is there already."""
    for existing in out:
        if isinstance(existing, gast.FieldNode) and response_key(existing) == response_key(node) and \
                _name(existing) == _name(node):
            return
    out.append(node)


def _provided(provided, name: str) -> bool:
    return provided is not None and any(isinstance(s, gast.FieldNode) and _name(s) == name
                                        for s in provided.selections)


def _provided_below(provided, name: str):
    for s in provided.selections:
        if isinstance(s, gast.FieldNode) and _name(s) == name:
            return s.selection_set
    return None


def _variables_in(node, used: set) -> None:
    if isinstance(node, gast.VariableNode):
        used.add(node.name.value)
        return
    if isinstance(node, gast.Node):
        for key in node.keys:
            value = getattr(node, key)
            if isinstance(value, (list, tuple)):
                for item in value:
                    _variables_in(item, used)
            elif isinstance(value, gast.Node):
                _variables_in(value, used)
