"""A supergraph SDL read: the subgraphs, who resolves what, and the API schema.

Input is a Federation v2 supergraph as composition tools write it (the join spec
v0.2–v0.5 and `@link`): `@join__graph` names each subgraph and its URL;
`@join__type` says which subgraphs define a type and with which keys;
`@join__field` which subgraphs resolve a field (and `external`, `requires`,
`provides`, `override`, `usedOverridden`); `@join__implements`,
`@join__unionMember` and `@join__enumValue` say the same of interfaces, unions
and enum values.

The API schema is what clients see: the supergraph without the join and link
machinery and without anything marked `@inaccessible`. Parsing is graphql-core's.
"""
from __future__ import annotations

from graphql import (DocumentNode, GraphQLError, GraphQLSchema, build_ast_schema, parse)
from graphql.language import ast as gast

_MACHINERY_DIRECTIVES = ("join__", "link", "inaccessible", "tag", "core", "authenticated", "requiresScopes",
                         "policy", "composeDirective")
_KEPT_DIRECTIVES = frozenset(("deprecated", "specifiedBy", "oneOf"))
_SCALARS = frozenset(("String", "Int", "Float", "Boolean", "ID"))


class SupergraphError(ValueError):
    """A supergraph that cannot be used: `line` is where, when known."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


class Subgraph:
    __slots__ = ("enum", "name", "url")

    def __init__(self, enum: str, name: str, url: str):
        self.enum = enum      # the join__Graph value (PRODUCTS)
        self.name = name      # its name (products): in errors, metrics and config
        self.url = url

    def __repr__(self) -> str:
        return f"Subgraph({self.name!r})"


class Key:
    __slots__ = ("fields", "selections", "resolvable")

    def __init__(self, fields: str, resolvable: bool):
        self.fields = fields
        self.selections = field_set(fields)
        self.resolvable = resolvable


class FieldIn:
    """A field as one subgraph has it."""

    __slots__ = ("external", "requires", "provides", "overridden", "type")

    def __init__(self, external=False, requires=None, provides=None, overridden=False, type_=None):
        self.external = external
        self.requires = requires       # the parsed field set, or None
        self.provides = provides
        self.overridden = overridden   # usedOverridden: another subgraph resolves it now
        self.type = type_


class FieldInfo:
    __slots__ = ("name", "graphs", "everywhere", "type_name")

    def __init__(self, name: str, type_name: str):
        self.name = name
        self.type_name = type_name   # the named (innermost) type
        self.graphs: dict[str, FieldIn] = {}
        self.everywhere = True       # no @join__field with a graph: every subgraph of the type has it


class TypeInfo:
    __slots__ = ("name", "kind", "graphs", "keys", "fields", "implements", "members", "interface_objects",
                 "interfaces", "enum_values")

    def __init__(self, name: str, kind: str):
        self.name = name
        self.kind = kind   # object, interface, union, enum, input, scalar
        self.graphs: list[str] = []                 # the subgraphs that define it (join__type), in order
        self.keys: dict[str, list[Key]] = {}        # subgraph -> its keys
        self.fields: dict[str, FieldInfo] = {}
        self.implements: dict[str, set] = {}        # subgraph -> interfaces it implements there
        self.members: dict[str, set] = {}           # union: subgraph -> members there
        self.interface_objects: set[str] = set()    # subgraphs where an interface is an @interfaceObject
        self.interfaces: list[str] = []             # interfaces (all subgraphs)
        self.enum_values: dict[str, set] = {}

    @property
    def entity(self) -> bool:
        return any(self.keys.values())


def field_set(text: str) -> gast.SelectionSetNode:
    """A join__FieldSet ("id", "id organization { id }") as a selection set."""
    try:
        return parse("{" + text + "}", no_location=True).definitions[0].selection_set
    except GraphQLError as e:
        raise SupergraphError(f"the field set {text!r} does not parse: {e.message}") from None


def _arguments(directive: gast.DirectiveNode) -> dict:
    out = {}
    for arg in directive.arguments:
        value = arg.value
        if isinstance(value, gast.StringValueNode):
            out[arg.name.value] = value.value
        elif isinstance(value, gast.BooleanValueNode):
            out[arg.name.value] = value.value
        elif isinstance(value, gast.EnumValueNode):
            out[arg.name.value] = value.value
        else:
            out[arg.name.value] = None
    return out


def _named(type_node) -> str:
    while not isinstance(type_node, gast.NamedTypeNode):
        type_node = type_node.type
    return type_node.name.value


def _line(node) -> int | None:
    return node.loc.source.get_location(node.loc.start).line if node.loc is not None else None


def _machinery(name: str) -> bool:
    return name.startswith(("join__", "link__")) or name in ("link", "inaccessible", "tag")


class Supergraph:
    """What planning needs to know (see the module's doc)."""

    def __init__(self, sdl: str):
        try:
            document = parse(sdl)
        except GraphQLError as e:
            raise SupergraphError(e.message, e.locations[0].line if e.locations else None) from None
        self.subgraphs: dict[str, Subgraph] = {}   # by join__Graph value
        self.types: dict[str, TypeInfo] = {}
        self.roots = {"query": "Query", "mutation": "Mutation", "subscription": "Subscription"}
        self._read(document)
        if not self.subgraphs:
            raise SupergraphError("no join__Graph enum: not a Federation supergraph")
        self.by_name = {s.name: s for s in self.subgraphs.values()}
        self.api_schema = self._api_schema(document)

    # --- reading ------------------------------------------------------------------------
    def _read(self, document: DocumentNode) -> None:
        for definition in document.definitions:
            if isinstance(definition, gast.SchemaDefinitionNode):
                for op in definition.operation_types:
                    self.roots[op.operation.value] = op.type.name.value
                continue
            if isinstance(definition, gast.EnumTypeDefinitionNode) and definition.name.value == "join__Graph":
                for value in definition.values:
                    for d in value.directives:
                        if d.name.value == "join__graph":
                            args = _arguments(d)
                            self.subgraphs[value.name.value] = Subgraph(value.name.value, args.get("name") or
                                                                        value.name.value.lower(), args.get("url") or "")
                continue
            kind = {gast.ObjectTypeDefinitionNode: "object", gast.InterfaceTypeDefinitionNode: "interface",
                    gast.UnionTypeDefinitionNode: "union", gast.EnumTypeDefinitionNode: "enum",
                    gast.InputObjectTypeDefinitionNode: "input",
                    gast.ScalarTypeDefinitionNode: "scalar"}.get(type(definition))
            if kind is None or _machinery(definition.name.value):
                continue
            info = TypeInfo(definition.name.value, kind)
            self.types[info.name] = info
            for d in definition.directives:
                name = d.name.value
                args = _arguments(d)
                graph = args.get("graph")
                if name == "join__type" and graph:
                    if graph not in info.graphs:
                        info.graphs.append(graph)
                    keys = info.keys.setdefault(graph, [])
                    if args.get("key"):
                        try:
                            keys.append(Key(args["key"], args.get("resolvable", True) is not False))
                        except SupergraphError as e:
                            raise SupergraphError(str(e), _line(d)) from None
                    if args.get("isInterfaceObject"):
                        info.interface_objects.add(graph)
                elif name == "join__implements" and graph:
                    info.implements.setdefault(graph, set()).add(args.get("interface"))
                elif name == "join__unionMember" and graph:
                    info.members.setdefault(graph, set()).add(args.get("member"))
            if kind in ("object", "interface"):
                info.interfaces = [i.name.value for i in definition.interfaces or ()]
                for field in definition.fields:
                    self._read_field(info, field)
            elif kind == "union":
                if not info.members:
                    for graph in info.graphs:
                        info.members[graph] = {t.name.value for t in definition.types}
                info.interfaces = [t.name.value for t in definition.types]   # all members, for the API
            elif kind == "enum":
                for value in definition.values:
                    info.enum_values[value.name.value] = {_arguments(d).get("graph") for d in value.directives
                                                          if d.name.value == "join__enumValue"}

    def _read_field(self, info: TypeInfo, field: gast.FieldDefinitionNode) -> None:
        f = FieldInfo(field.name.value, _named(field.type))
        info.fields[f.name] = f
        for d in field.directives:
            if d.name.value != "join__field":
                continue
            args = _arguments(d)
            graph = args.get("graph")
            f.everywhere = False   # a bare @join__field: no subgraph of the type has it (an @interfaceObject's)
            if not graph:
                continue
            try:
                f.graphs[graph] = FieldIn(external=bool(args.get("external")),
                                          requires=field_set(args["requires"]) if args.get("requires") else None,
                                          provides=field_set(args["provides"]) if args.get("provides") else None,
                                          overridden=bool(args.get("usedOverridden")), type_=args.get("type"))
            except SupergraphError as e:
                raise SupergraphError(str(e), _line(d)) from None

    # --- the API schema -------------------------------------------------------------------
    def _api_schema(self, document: DocumentNode) -> GraphQLSchema:
        inaccessible = self._inaccessible_names(document)
        definitions = []
        for definition in document.definitions:
            if isinstance(definition, gast.DirectiveDefinitionNode):
                if not _machinery(definition.name.value) and definition.name.value not in _MACHINERY_DIRECTIVES:
                    definitions.append(definition)
                continue
            if isinstance(definition, gast.SchemaDefinitionNode):
                definitions.append(_copy(definition, directives=()))
                continue
            name = getattr(definition, "name", None)
            if name is None or _machinery(name.value) or _has(definition, "inaccessible"):
                continue
            definitions.append(_clean(definition, inaccessible))
        try:
            return build_ast_schema(DocumentNode(definitions=tuple(definitions)), assume_valid_sdl=False)
        except (GraphQLError, TypeError) as e:
            raise SupergraphError(f"the API schema cannot be built: {e}") from None

    @staticmethod
    def _inaccessible_names(document: DocumentNode) -> set:
        return {d.name.value for d in document.definitions
                if getattr(d, "name", None) is not None and _has(d, "inaccessible")}

    # --- questions of the planner -----------------------------------------------------------
    def type_in(self, type_name: str, graph: str) -> bool:
        info = self.types.get(type_name)
        if info is None:
            return type_name in _SCALARS or type_name.startswith("__")
        return not info.graphs or graph in info.graphs

    def field_in(self, type_name: str, field_name: str, graph: str) -> bool:
        """Whether `graph` resolves the field (not external there, not overridden away)."""
        if field_name == "__typename":
            return True
        info = self.types.get(type_name)
        if info is None:
            return False
        field = info.fields.get(field_name)
        if field is None:
            return False
        if field.everywhere:
            return not info.graphs or graph in info.graphs
        there = field.graphs.get(graph)
        return there is not None and not there.external and not there.overridden

    def field_graph(self, type_name: str, field_name: str, graph: str) -> FieldIn | None:
        info = self.types.get(type_name)
        field = info.fields.get(field_name) if info is not None else None
        return field.graphs.get(graph) if field is not None else None

    def resolvers(self, type_name: str, field_name: str) -> list[str]:
        """The subgraphs that resolve a field, in the supergraph's order: of the type, or of an
        interface it implements that a subgraph has as an @interfaceObject."""
        found = [g for g in self.subgraphs if self.field_in(type_name, field_name, g)]
        if found:
            return found
        info = self.types.get(type_name)
        for interface in info.interfaces if info is not None else ():
            owner = self.types.get(interface)
            if owner is None:
                continue
            found += [g for g in owner.interface_objects if self.field_in(interface, field_name, g) and g not in found]
        return found

    def keys(self, type_name: str, graph: str) -> list[Key]:
        info = self.types.get(type_name)
        return [k for k in info.keys.get(graph, ()) if k.resolvable] if info is not None else []

    def all_keys(self, type_name: str, graph: str) -> list[Key]:
        info = self.types.get(type_name)
        return list(info.keys.get(graph, ())) if info is not None else []

    def possible_types(self, type_name: str, graph: str | None = None) -> list[str]:
        """The object types an abstract type may be (in `graph`, when given)."""
        info = self.types.get(type_name)
        if info is None:
            return []
        if info.kind == "object":
            return [type_name]
        if info.kind == "union":
            if graph is None:
                return sorted({m for members in info.members.values() for m in members})
            return sorted(info.members.get(graph, ()))
        found = []
        for other in self.types.values():
            if other.kind != "object":
                continue
            if graph is None:
                if type_name in other.interfaces:
                    found.append(other.name)
            elif graph in other.graphs and (type_name in other.implements.get(graph, ()) or (
                    not other.implements and type_name in other.interfaces)):
                found.append(other.name)
        return sorted(found)

    def is_abstract(self, type_name: str) -> bool:
        info = self.types.get(type_name)
        return info is not None and info.kind in ("interface", "union")

    def composite(self, type_name: str) -> bool:
        info = self.types.get(type_name)
        return info is not None and info.kind in ("object", "interface", "union")


def _has(node, directive: str) -> bool:
    return any(d.name.value == directive for d in getattr(node, "directives", None) or ())


def _copy(node, **changes):
    values = {key: getattr(node, key) for key in node.keys}
    values.update(changes)
    return type(node)(**values)


def _kept_directives(node) -> tuple:
    return tuple(d for d in node.directives or () if d.name.value in _KEPT_DIRECTIVES)


def _clean(definition, inaccessible: set):
    """A type definition for the API schema: no join/link directives, nothing inaccessible."""
    changes = {"directives": _kept_directives(definition)}
    if isinstance(definition, (gast.ObjectTypeDefinitionNode, gast.InterfaceTypeDefinitionNode)):
        changes["interfaces"] = tuple(i for i in definition.interfaces or () if i.name.value not in inaccessible)
        changes["fields"] = tuple(
            _copy(f, directives=_kept_directives(f), arguments=tuple(
                _copy(a, directives=_kept_directives(a)) for a in f.arguments or () if not _has(a, "inaccessible")))
            for f in definition.fields if not _has(f, "inaccessible") and _named(f.type) not in inaccessible)
    elif isinstance(definition, gast.InputObjectTypeDefinitionNode):
        changes["fields"] = tuple(_copy(f, directives=_kept_directives(f)) for f in definition.fields
                                  if not _has(f, "inaccessible"))
    elif isinstance(definition, gast.EnumTypeDefinitionNode):
        changes["values"] = tuple(_copy(v, directives=_kept_directives(v)) for v in definition.values
                                  if not _has(v, "inaccessible"))
    elif isinstance(definition, gast.UnionTypeDefinitionNode):
        changes["types"] = tuple(t for t in definition.types if t.name.value not in inaccessible)
    return _copy(definition, **changes)
