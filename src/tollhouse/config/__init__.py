"""Config loading: YAML + ${VAR} -> validated, frozen `Gateway` (docs/contract.md §2)."""
from __future__ import annotations

import re

from .loader import ConfigError, parse_yaml
from .schema import MISSING


__all__ = ["ConfigError", "load_text", "load_file", "warnings_of"]

_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _line_of(doc, path: str):
    """The line of the deepest node of `path` that the document has."""
    node, line = doc, getattr(doc, "line", None)
    for name, index in _STEP.findall(path):
        key = int(index) if index else name
        lines = getattr(node, "lines", None)
        try:
            line = lines[key] if lines is not None else line
            node = node[key]
        except (KeyError, IndexError, TypeError):
            break
    return line


def load_text(text: str):
    """Validate config text against the installed schema (config.model.gateway_schema);
    returns (config, []) or (None, every error)."""
    doc, errors = parse_yaml(text)
    if errors and doc is None:
        return None, errors
    if doc is None:
        doc = {}
    from .model import gateway_schema

    config = gateway_schema().validate(doc, "", 1, errors)
    for e in errors:
        if e.line is None and e.path:
            e.line = _line_of(doc, e.path)
    errors.sort(key=lambda e: (e.line or 0, e.path))
    if errors or config is MISSING:
        return None, errors
    return config, []


def load_file(path: str):
    """Read and validate a config file; returns (config, errors, text)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        return None, [ConfigError("", None, f"cannot read {path}: {e.strerror}")], ""
    config, errors = load_text(text)
    return config, errors, text


def warnings_of(config, text: str) -> list[ConfigError]:
    """What a valid config may not mean: each warning with its key path and line."""
    from ..routing import trailing_slash_shadows

    doc, _ = parse_yaml(text)
    found = []
    for index, message in trailing_slash_shadows(config.routes):
        path = f"routes[{index}].match.path"
        found.append(ConfigError(path, _line_of(doc, path) if doc is not None else None, message))
    return found
