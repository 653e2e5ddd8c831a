"""YAML loading that remembers where every key came from and expands ${VAR}.

The schema needs line numbers for its errors, so mappings and sequences are
built as `LocatedDict` / `LocatedList`, which carry the line of each key or item.
"""
from __future__ import annotations

import os
import re

import yaml

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class LocatedDict(dict):
    """A mapping from YAML; `lines[key]` is the 1-based line of that key."""

    __slots__ = ("line", "lines")


class LocatedList(list):
    """A sequence from YAML; `lines[i]` is the 1-based line of item i."""

    __slots__ = ("line", "lines")


class ConfigError(Exception):
    """One problem in a config, with the key path and line it concerns."""

    def __init__(self, path: str, line: int | None, message: str):
        super().__init__(message)
        self.path = path
        self.line = line
        self.message = message

    def __str__(self) -> str:
        where = self.path or "(top level)"
        if self.line:
            where += f" (line {self.line})"
        return f"{where}: {self.message}"


def expand_env(text: str, env=os.environ) -> str:
    """Replace ${VAR} and ${VAR:-default}; an unset VAR without default is an error."""

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        value = env.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                raise KeyError(name)
            return default
        return value

    return _VAR.sub(sub, text)


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LocatedDict:
    loader.flatten_mapping(node)
    out = LocatedDict()
    out.line = node.start_mark.line + 1
    out.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, bool):
            # YAML 1.1 reads the key `on` (as in retries: {on: [...]}) as true:
            # keys are names here, so they keep their spelling.
            key = key_node.value
        line = key_node.start_mark.line + 1
        if not isinstance(key, (str, int, float, bool)):
            loader.problems.append(ConfigError("", line, "mapping keys must be scalars"))
            continue
        if key in out:
            loader.problems.append(ConfigError("", line, f"duplicate key {key!r}"))
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = line
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LocatedList:
    out = LocatedList(loader.construct_object(item, deep=True) for item in node.value)
    out.line = node.start_mark.line + 1
    out.lines = [item.start_mark.line + 1 for item in node.value]
    return out


_PLACEHOLDER = re.compile(r"__tollhouse_env_(\d+)__")
_TEMPLATE = re.compile(r"(?<=[^\s\[\]{},:])\{([A-Za-z_][A-Za-z0-9_]*)\}")
_BRACE = re.compile(r"__tollhouse_brace_([A-Za-z_][A-Za-z0-9_]*)__")
_QUESTION = re.compile(r"(?<=[^\s\[\]{},])\?(?=[^\s])")


def _construct_str(loader: _Loader, node: yaml.ScalarNode) -> str:
    value = loader.construct_scalar(node)
    if "__tollhouse_" not in value:
        return value
    # `?` first: in `{id}?x` the brace's placeholder is followed by the question's.
    if "__tollhouse_q__" in value:
        value = value.replace("__tollhouse_q__", "?")
    if "__tollhouse_brace_" in value:
        value = _BRACE.sub(r"{\1}", value)
    if "__tollhouse_env_" not in value:
        return value

    def sub(m: re.Match) -> str:
        name, default = loader.env_refs[int(m.group(1))]
        found = os.environ.get(name)
        if found is None or (found == "" and default is not None):
            if default is None:
                loader.problems.append(ConfigError(
                    "", node.start_mark.line + 1,
                    f"environment variable {name} is not set (use ${{{name}:-default}} for a default)"))
                return ""
            return default
        return found

    return _PLACEHOLDER.sub(sub, value)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)
_Loader.add_constructor("tag:yaml.org,2002:str", _construct_str)


def parse_yaml(text: str) -> tuple[object, list[ConfigError]]:
    """Parse YAML text into located containers; returns (document, problems)."""
    # ${VAR} is swapped for a plain-word placeholder before parsing, so that it
    # may stand anywhere a value can, flow mappings included
    # (`admin: {token: ${TOKEN:-}}` would otherwise be a YAML syntax error);
    # the str constructor puts the value back.
    refs: list[tuple[str, str | None]] = []

    def placeholder(m: re.Match) -> str:
        refs.append((m.group(1), m.group(2)))
        return f"__tollhouse_env_{len(refs) - 1}__"

    text = _VAR.sub(placeholder, text)
    # Template variables inside a value (`path: /users/{consumer}`, `{id}` in
    # routes) are braces YAML reads as flow mappings: hide them the same way.
    text = _TEMPLATE.sub(r"__tollhouse_brace_\1__", text)
    # PyYAML ends a plain scalar at `?` in flow context (YAML 1.2 would not):
    # `{path: /orders?owner=1}` keeps its `?` the same way.
    text = _QUESTION.sub("__tollhouse_q__", text)
    loader = _Loader(text)
    loader.problems = []
    loader.env_refs = refs
    try:
        doc = loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        return None, [ConfigError("", line, f"invalid YAML: {e.problem or e}")]
    except yaml.YAMLError as e:
        return None, [ConfigError("", None, f"invalid YAML: {e}")]
    finally:
        loader.dispose()
    return doc, loader.problems
