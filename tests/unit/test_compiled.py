"""The compiled build (setup.py): in use where it can be built, and never stale."""
import importlib.machinery
import os
import shutil

import tollhouse


def test_the_request_path_is_compiled_where_a_compiler_exists():
    if os.environ.get("TOLLHOUSE_PURE_PYTHON"):
        assert not tollhouse.is_compiled()
        return
    try:
        import Cython  # noqa: F401
    except ImportError:
        return   # the fallback: plain Python
    if shutil.which("cc") is None:
        return
    assert tollhouse.is_compiled(), "the compiled modules are missing or stale: run 'make' (setup.py build_ext --inplace)"


def test_every_module_with_a_pxd_is_listed():
    modules = tollhouse.compiled_modules()
    assert {"tollhouse.exchange.lifecycle", "tollhouse.exchange.http1", "tollhouse.server.protocol",
            "tollhouse.upstream.pool"} <= set(modules)
    assert all(os.path.exists(path) for path in modules.values())


def test_an_extension_older_than_its_source_is_stale(tmp_path):
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    for name in ("fresh", "edited"):
        for ext in (".py", ".pxd", suffix):
            (tmp_path / (name + ext)).write_text("")
    os.utime(tmp_path / ("edited" + suffix), (1, 1))   # built long before its source was edited
    modules = {name: str(tmp_path / (name + ".py")) for name in ("fresh", "edited", "never-built")}
    (tmp_path / "never-built.py").write_text("")
    (tmp_path / "never-built.pxd").write_text("")
    assert tollhouse._stale(modules) == ["edited"]


def _pxd_attributes(pxd: str) -> dict[str, set[str]]:
    """Class name -> the attributes its `cdef class` block declares (`cdef [public] TYPE a, b`)."""
    import re

    classes, current = {}, None
    for line in open(pxd, encoding="utf-8"):
        head = re.match(r"cdef class (\w+)(\(.*\))?:", line)
        if head:
            current = classes.setdefault(head.group(1), set())
            continue
        if current is not None and not line.startswith((" ", "\t", "\n", "#")):
            current = None   # the block ended
        field = re.match(r"\s+cdef (?:public |readonly )?(.+)$", line)
        if current is not None and field and not re.match(r"\s+cdef (class|[\w.]+ \w+\()", line):
            # "TYPE a, b" where TYPE may be several words ("long long"): the first name ends the first item.
            first, *rest = field.group(1).split("#")[0].split(",")
            current.update([first.split()[-1], *(name.strip() for name in rest)])
    return classes


def _slots(source: str) -> dict[str, set[str]]:
    """Class name -> its __slots__, read from the .py without importing it."""
    import ast

    found = {}
    for node in ast.walk(ast.parse(open(source, encoding="utf-8").read())):
        if isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if isinstance(stmt, ast.Assign) and any(getattr(t, "id", "") == "__slots__" for t in stmt.targets):
                    found[node.name] = set(ast.literal_eval(stmt.value))
    return found


def test_every_compiled_class_declares_exactly_its_slots():
    """One source for both builds: the plain build's __slots__ and the compiled build's
    C fields must name the same attributes, or one build has fields the other lacks."""
    checked = 0
    for module, source in tollhouse.compiled_modules().items():
        slots = _slots(source)
        for cls, declared in _pxd_attributes(source[:-3] + ".pxd").items():
            if cls not in slots:
                assert not declared, f"{module}.{cls} declares {sorted(declared)} but has no __slots__"
                continue
            assert declared == slots[cls], (f"{module}.{cls}: only in the .pxd {sorted(declared - slots[cls])}, "
                                            f"only in __slots__ {sorted(slots[cls] - declared)}")
            checked += 1
    assert checked >= 10


def test_an_installed_package_ships_the_pxd_files_so_the_plain_build_can_be_forced(tmp_path):
    """TOLLHOUSE_PURE_PYTHON=1 finds the compiled modules by their .pxd: an installed
    (non-editable) package must carry them. `build_py` lays out the package as
    `pip install .` and a wheel do (the same package_data)."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    target = tmp_path / "site"
    env = {**os.environ, "TOLLHOUSE_PURE_PYTHON": "1"}
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(target)], cwd=root, env=env,
                   check=True, capture_output=True)
    shipped = {str(p.relative_to(target))[:-4].replace(os.sep, ".") for p in target.rglob("*.pxd")}
    assert set(tollhouse.compiled_modules()) <= shipped
    out = subprocess.run([sys.executable, "-c", "import tollhouse, tollhouse.exchange.lifecycle as e; "
                          "print(len(tollhouse.compiled_modules()), e.__file__)"],
                         env={**env, "PYTHONPATH": str(target)}, cwd=str(tmp_path), capture_output=True, text=True,
                         check=True)
    count, loaded = out.stdout.split()
    assert int(count) == len(tollhouse.compiled_modules())
    assert loaded.startswith(str(target)) and loaded.endswith(".py")


def test_the_pipeline_knows_the_requests_waiting_state():
    from tollhouse import pipeline
    from tollhouse.exchange import request

    assert pipeline._WAITING == request.WAITING
