"""The shape the core keeps (docs/architecture.md, "Where does X live"): checked, not hoped for."""
import ast
import os

import tollhouse

SRC = os.path.dirname(tollhouse.__file__)


def _modules():
    for folder, _, files in os.walk(SRC):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, SRC), ast.parse(open(path, encoding="utf-8").read())


def _imports(tree, module: str) -> set[str]:
    """Absolute names of the tollhouse modules `tree` imports (relative imports resolved)."""
    package = ["tollhouse", *module.split(os.sep)[:-1]]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_no_class_is_longer_than_400_lines():
    long = [(module, node.name, node.end_lineno - node.lineno + 1) for module, tree in _modules()
            for node in ast.walk(tree) if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno >= 400]
    assert long == []


def test_the_core_never_imports_a_policy():
    """server/ and upstream/ know policies only through the registry and the pipeline's interfaces."""
    offenders = [(module, sorted(n for n in _imports(tree, module) if n.startswith("tollhouse.policies")))
                 for module, tree in _modules() if module.startswith(("server", "upstream"))]
    assert [o for o in offenders if o[1]] == []


def test_no_core_object_has_a_field_named_after_a_policy():
    from tollhouse.flow import WorkerCore
    from tollhouse.request import Request
    from tollhouse.registry import policy_kinds

    names = {kind.name for kind in policy_kinds()} | {kind.key for kind in policy_kinds()} | {"capture", "cache_status"}
    names.discard("headers")   # the request's own header lines (HTTP's), not the headers policy's state
    for cls in (Request, WorkerCore):
        assert not names & set(cls.__slots__), (cls.__name__, names & set(cls.__slots__))
