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
    assert {"tollhouse.exchange", "tollhouse.server.protocol", "tollhouse.upstream.pool"} <= set(modules)
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
