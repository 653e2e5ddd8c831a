"""Tollhouse: an API gateway in Python."""
from __future__ import annotations

import glob
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import warnings

__version__ = "0.1.0"

_HERE = os.path.dirname(os.path.abspath(__file__))


def compiled_modules() -> dict[str, str]:
    """The modules built as C extensions (setup.py): each has a .pxd beside its .py.
    Module name -> path of its .py. (exchange/nghttp2.pxd is a .pyx's: a binding, with
    no Python source to fall back to.)"""
    found = {}
    for pxd in glob.glob(os.path.join(_HERE, "**", "*.pxd"), recursive=True):
        if not os.path.exists(pxd[:-4] + ".py"):
            continue
        rel = os.path.relpath(pxd[:-4], os.path.dirname(_HERE))
        found[rel.replace(os.sep, ".")] = pxd[:-4] + ".py"
    return found


def _stale(modules: dict[str, str]) -> list[str]:
    """Compiled modules older than their .py or .pxd (edited since the last build)."""
    stale = []
    for name, source in modules.items():
        stem = source[:-3]
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            if os.path.exists(stem + suffix):
                if os.path.getmtime(stem + suffix) < max(os.path.getmtime(source), os.path.getmtime(stem + ".pxd")):
                    stale.append(name)
                break
    return stale


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Loads the compiled modules from their .py source instead of the extension."""

    def __init__(self, modules: dict[str, str]):
        self.modules = modules

    def find_spec(self, name, path=None, target=None):
        source = self.modules.get(name)
        return importlib.util.spec_from_file_location(name, source) if source is not None else None


def _choose_build() -> None:
    # All or none: a compiled module checks the C layout of the classes it
    # shares with the others, so pure and compiled modules cannot be mixed.
    modules = compiled_modules()
    if os.environ.get("TOLLHOUSE_PURE_PYTHON"):
        sys.meta_path.insert(0, _SourceFirst(modules))
        return
    # Only a source checkout (setup.py beside src/) is edited after a build; in an installed
    # package the files' times are those of the install, in no useful order.
    checkout = os.path.exists(os.path.join(_HERE, "..", "..", "setup.py"))
    stale = _stale(modules) if checkout else []
    if stale:
        warnings.warn(f"compiled modules older than their source ({', '.join(sorted(stale))}): running the "
                      "source instead; rebuild with 'make' or 'python setup.py build_ext --inplace'", stacklevel=2)
        sys.meta_path.insert(0, _SourceFirst(modules))


def is_compiled() -> bool:
    """Whether the request path runs as C extensions (see setup.py)."""
    from .exchange import lifecycle as exchange

    return not exchange.__file__.endswith(".py")


_choose_build()
