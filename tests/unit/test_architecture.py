"""The shape the core keeps (docs/architecture.md, "Which way the imports point"): checked, not hoped for.

Imports are read from the source (`import`, `from ... import`, relative ones resolved)
and from the compiled build's declarations (`cimport` in the .pxd files). An entry
point's `if __name__ == "__main__":` block is the top of the program, not the module's
dependency, and is left out."""
import ast
import os
import re

import tollhouse

SRC = os.path.dirname(tollhouse.__file__)


def _modules():
    for folder, _, files in os.walk(SRC):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, SRC), ast.parse(open(path, encoding="utf-8").read())


def _is_main_block(node) -> bool:
    test = getattr(node, "test", None)
    return (isinstance(node, ast.If) and isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
            and test.left.id == "__name__")


def _walk(tree):
    """ast.walk without the `if __name__ == "__main__":` blocks."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        todo.extend(child for child in ast.iter_child_nodes(node) if not _is_main_block(child))


def _imports(tree, module: str) -> set[str]:
    """Absolute names of the tollhouse modules `tree` imports (relative imports resolved)."""
    package = ["tollhouse", *module.split(os.sep)[:-1]]
    found = set()
    for node in _walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _cimports(pxd: str) -> set[str]:
    found = set()
    for line in open(pxd, encoding="utf-8"):
        m = re.match(r"\s*from\s+([\w.]+)\s+cimport\s+(.+)", line.split("#")[0])
        if m:
            found.add(m.group(1))
            found.update(f"{m.group(1)}.{n.strip()}" for n in m.group(2).split(","))
    return found


def _dependencies() -> dict[str, set[str]]:
    """Module path (relative to the package, e.g. "upstream/pool.py") -> the tollhouse names it
    imports or, for a compiled module, cimports."""
    deps = {}
    for module, tree in _modules():
        names = _imports(tree, module)
        pxd = os.path.join(SRC, module[:-3] + ".pxd")
        if os.path.exists(pxd):
            names |= _cimports(pxd)
        deps[module] = {n for n in names if n == "tollhouse" or n.startswith("tollhouse.")}
    return deps


def _offenders(where: tuple, forbidden: tuple) -> list:
    found = []
    for module, names in sorted(_dependencies().items()):
        if module.startswith(where):
            bad = sorted(n for n in names if n.startswith(forbidden))
            if bad:
                found.append((module, bad))
    return found


def test_the_checker_sees_imports_and_cimports():
    """The rules below could pass by seeing nothing: the checker must find what is there."""
    deps = _dependencies()
    assert "tollhouse.exchange.sink.ResponseSink" in deps["upstream/pool.py"]        # a cimport
    assert "tollhouse.flow.Gathered" in deps["upstream/pool.py"]                    # an import
    assert "tollhouse.config.schema" in deps["policies/ip.py"]                       # a relative import
    assert not any(n.startswith("tollhouse.builtins") for n in deps["config/docs.py"])   # only its __main__ does


def test_no_class_is_longer_than_400_lines():
    long = [(module, node.name, node.end_lineno - node.lineno + 1) for module, tree in _modules()
            for node in ast.walk(tree) if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno >= 400]
    assert long == []


def test_upstream_never_imports_the_server():
    assert _offenders(("upstream",), ("tollhouse.server",)) == []


def test_the_server_and_upstreams_never_import_a_policy():
    """server/ and upstream/ know policies only through the registry and the pipeline's interfaces."""
    assert _offenders(("server", "upstream"), ("tollhouse.policies",)) == []


def test_the_exchange_never_imports_the_server_or_a_policy():
    """The classes that make one request are what server/ and upstream/ build on."""
    assert _offenders(("exchange",), ("tollhouse.server", "tollhouse.policies")) == []


def test_config_never_imports_the_server_policies_or_observability():
    """The gateway's schema is assembled from what the registry was handed (config.model.gateway_schema)."""
    assert _offenders(("config",), ("tollhouse.server", "tollhouse.policies", "tollhouse.observability",
                                    "tollhouse.builtins")) == []


def test_the_registry_imports_nothing_it_holds():
    """The top hands the registry its kinds (tollhouse.builtins.install): no import circle."""
    assert _dependencies()["registry.py"] == set()


def test_only_the_top_imports_the_builtins():
    importers = sorted(m for m, names in _dependencies().items()
                       if any(n.startswith("tollhouse.builtins") for n in names))
    assert importers == ["cli.py"]


def test_no_core_object_has_a_field_named_after_a_policy():
    from tollhouse.exchange.request import Request
    from tollhouse.flow import WorkerCore
    from tollhouse.registry import policy_kinds

    names = {kind.name for kind in policy_kinds()} | {kind.key for kind in policy_kinds()} | {"capture", "cache_status"}
    names.discard("headers")   # the request's own header lines (HTTP's), not the headers policy's state
    # What policies used to keep on the request: who called (now `identity`), headers only
    # one kind reads (now noted by index), single-slot observers and body filters (now lists).
    names |= {"consumer", "tier", "authorization", "conditional", "cookie", "debug_token", "traceparent",
              "observer", "body_filter"}
    for cls in (Request, WorkerCore):
        assert not names & set(cls.__slots__), (cls.__name__, names & set(cls.__slots__))


def test_the_parser_knows_only_http_headers_and_compiles_the_kinds_declarations():
    """The auth, cache, trace and debug headers reach the parser's table from the kinds'
    declarations (registry.NotedHeader), not from the server's source."""
    from tollhouse.registry import installed
    from tollhouse.server import protocol

    policy_headers = {b"authorization", b"cookie", b"range", b"if-none-match", b"if-modified-since", b"traceparent",
                      b"x-tollhouse-debug"}
    assert policy_headers.isdisjoint(protocol._HTTP_HEADERS)
    protocol.compile_header_table(installed())
    assert {name for name, kind in protocol.header_table().items() if kind == protocol._NOTED} == policy_headers
