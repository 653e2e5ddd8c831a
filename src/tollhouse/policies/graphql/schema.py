"""Config of a GraphQL route (`graphql:`), checked at load: the supergraph is read and its
API schema built, so a bad file is an error naming the file and line."""
from __future__ import annotations

import json
import os

from ...config.loader import ConfigError
from ...config.schema import Bool, Field, Int, MapOf, Schema, Str, error_at
from .supergraph import Supergraph, SupergraphError

_LOADED: dict = {}   # (path, mtime, size) -> Supergraph: read once per file version


def load_supergraph(path: str) -> Supergraph:
    """The supergraph in `path` (cached per file version); SupergraphError or OSError."""
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_mtime_ns, stat.st_size)
    found = _LOADED.get(key)
    if found is None:
        with open(path, encoding="utf-8") as f:
            found = Supergraph(f.read())
        if len(_LOADED) > 16:
            _LOADED.clear()
        _LOADED[key] = found
    return found


def load_documents(path: str) -> dict:
    """A trusted-documents list: a JSON object of sha256 hex -> document (Apollo's and
    Relay's manifest form), or {"operations": [{"id"|"sha256Hash", "body"}]}."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, dict) and isinstance(data.get("operations"), list):
        data = {op.get("id") or op.get("sha256Hash"): op.get("body") for op in data["operations"]}
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError("expected a JSON object of sha256 hex -> document")
    return {k.lower(): v for k, v in data.items()}


class Limits(Schema):
    max_depth = Field(Int(min=0), 15, "deepest field nesting (0: no limit)")
    max_aliases = Field(Int(min=0), 30, "aliases in a document (0: no limit)")
    max_root_fields = Field(Int(min=0), 20, "fields at an operation's root (0: no limit)")
    max_tokens = Field(Int(min=0), 5000, "lexical tokens in a document (0: no limit)")
    max_cost = Field(Int(min=0), 0, "an operation's estimated cost (see `cost`; 0: no limit)")


class PersistedQueries(Schema):
    mode = Field(Str(choices=("off", "apq", "only")), "off", "off, apq (Apollo's automatic persisted queries) or "
                 "only (the trusted documents in `documents`, nothing else)")
    documents = Field(Str(), "", "only: a JSON file of sha256 hex -> document")

    def check(self, path, lines, line, errors):
        if self.mode == "only":
            if not self.documents:
                error_at(errors, path, "documents", lines, line, "mode only needs the trusted documents file")
                return
            try:
                load_documents(self.documents)
            except (OSError, ValueError) as e:
                error_at(errors, path, "documents", lines, line, f"cannot read {self.documents}: {e}")


class Cost(Schema):
    default_list_size = Field(Int(min=0), 10, "items assumed in a list without a first, last or limit argument")
    weights = Field(MapOf(Int(min=0), key_pattern=r"[_A-Za-z][_0-9A-Za-z]*\.[_A-Za-z][_0-9A-Za-z]*"), {},
                    "Type.field -> its weight (default: 1 for a field returning an object, interface or union, "
                    "0 for a scalar or enum)")


class SubgraphSettings(Schema):
    upstream = Field(Str(), doc="the upstream this subgraph's fetches go through (its path: the URL's)")


class Graphql(Schema):
    supergraph = Field(Str(), doc="the supergraph SDL file (Federation v2, as rover or Hive's composition write it)")
    subgraphs = Field(MapOf(SubgraphSettings), {}, "subgraph name -> {upstream}: fetches through a named upstream "
                      "(else to the @join__graph URL)")
    introspection = Field(Bool(), True, "answer __schema and __type (the API schema)")
    limits = Field(Limits, Limits(), "{max_depth, max_aliases, max_root_fields, max_tokens, max_cost}: refused "
                                     "before planning")
    cost = Field(Cost, Cost(), "{default_list_size, weights}: the cost model of `cost: graphql_cost` rate limits "
                               "and limits.max_cost")
    persisted_queries = Field(PersistedQueries, PersistedQueries(), "{mode: off | apq | only, documents}")

    def check(self, path, lines, line, errors):
        try:
            graph = load_supergraph(self.supergraph)
        except OSError as e:
            error_at(errors, path, "supergraph", lines, line, f"cannot read {self.supergraph}: {e.strerror}")
            return
        except SupergraphError as e:
            where = f"{self.supergraph}:{e.line}" if e.line else self.supergraph
            error_at(errors, path, "supergraph", lines, line, f"{where}: {e}")
            return
        types = graph.api_schema.type_map
        for name in self.cost.weights:
            type_name, _, field = name.partition(".")
            if field not in (getattr(types.get(type_name), "fields", None) or {}):
                error_at(errors, f"{path}.cost.weights", name, lines, line,
                         f"no field {name} in the API schema of {self.supergraph}")
        for name in self.subgraphs:
            if name not in graph.by_name:
                error_at(errors, f"{path}.subgraphs", name, lines, line,
                         f"no subgraph {name!r} in {self.supergraph} (it has {', '.join(sorted(graph.by_name))})")
        for subgraph in graph.subgraphs.values():
            if subgraph.name not in self.subgraphs and not subgraph.url.startswith(("http://", "https://")):
                error_at(errors, path, "subgraphs", lines, line,
                         f"subgraph {subgraph.name!r} has no http(s) URL in the supergraph: map it to an upstream")


def check_route(route, where: str, config, errors: list) -> None:
    g = route.graphql
    if g is None:
        return
    if route.upstream:
        errors.append(ConfigError(f"{where}.upstream", None, "a graphql route has no upstream of its own: its "
                                                              "subgraphs are called"))
    for name, sub in g.subgraphs.items():
        if sub.upstream not in config.upstreams:
            errors.append(ConfigError(f"{where}.graphql.subgraphs.{name}.upstream", None,
                                      f"no upstream named {sub.upstream!r} in upstreams"))
