"""A small declarative schema: typed fields with defaults and descriptions.

Every config section is a `Schema` subclass whose class attributes are
`Field`s. Validation walks the located YAML, collects *every* error with its
key path and line, and returns frozen instances (lists become tuples). The
same declarations generate docs/configuration.md (`tollhouse.config.docs`).
"""
from __future__ import annotations

import ipaddress
import re
from types import MappingProxyType
from typing import Any, Callable

from .loader import ConfigError, LocatedDict, LocatedList

_MISSING = object()


class Kind:
    """How one value is checked and converted. `convert` raises ValueError."""

    label = "value"

    def validate(self, value, path: str, line: int | None, errors: list) -> Any:
        try:
            return self.convert(value)
        except ValueError as e:
            errors.append(ConfigError(path, line, str(e)))
            return _MISSING

    def convert(self, value):
        return value


class Str(Kind):
    def __init__(self, choices: tuple[str, ...] | None = None, pattern: str | None = None):
        self.choices = choices
        self.pattern = re.compile(pattern) if pattern else None
        self.label = "one of " + ", ".join(choices) if choices else "string"

    def convert(self, value):
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"expected a string, got {_show(value)}")
        value = str(value)
        if self.choices and value not in self.choices:
            raise ValueError(f"expected one of {', '.join(self.choices)}, got {value!r}")
        if self.pattern and not self.pattern.fullmatch(value):
            raise ValueError(f"{value!r} is not valid here")
        return value


class Int(Kind):
    def __init__(self, min: int | None = None, max: int | None = None):
        self.min, self.max = min, max
        self.label = "integer"

    def convert(self, value):
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {_show(value)}")
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise ValueError(f"expected an integer, got {value!r}") from None
        if not isinstance(value, int):
            raise ValueError(f"expected an integer, got {_show(value)}")
        _bounds(value, self.min, self.max)
        return value


class Float(Kind):
    def __init__(self, min: float | None = None, max: float | None = None):
        self.min, self.max = min, max
        self.label = "number"

    def convert(self, value):
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {_show(value)}")
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {_show(value)}") from None
        _bounds(value, self.min, self.max)
        return value


class Bool(Kind):
    label = "boolean"

    def convert(self, value):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
        raise ValueError(f"expected true or false, got {_show(value)}")


_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value) -> float:
    """'250ms', '10s', '5m', '1h', '1d' (or a bare number of seconds) -> seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        m = _DURATION.fullmatch(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError(f"expected a duration like 250ms, 10s, 5m, 1h, 1d, got {_show(value)}")


class Duration(Kind):
    label = "duration"

    def __init__(self, min: float | None = 0.0, max: float | None = None):
        self.min, self.max = min, max

    def convert(self, value):
        seconds = parse_duration(value)
        _bounds(seconds, self.min, self.max)
        return seconds


_SIZE = re.compile(r"\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB|k|K|M|G)?\s*")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3,
               "KB": 1000, "MB": 1000**2, "GB": 1000**3, "k": 1024, "K": 1024, "M": 1024**2, "G": 1024**3}


def parse_size(value) -> int:
    """'512', '16KiB', '10MiB' -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        m = _SIZE.fullmatch(value)
        if m:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    raise ValueError(f"expected a size like 512, 16KiB, 10MiB, got {_show(value)}")


class Size(Kind):
    label = "size"

    def __init__(self, min: int | None = 0, max: int | None = None):
        self.min, self.max = min, max

    def convert(self, value):
        size = parse_size(value)
        _bounds(size, self.min, self.max)
        return size


class Ratio(Kind):
    """'20%' or 0.2 -> 0.2."""

    label = "ratio"

    def convert(self, value):
        if isinstance(value, str) and value.strip().endswith("%"):
            try:
                value = float(value.strip()[:-1]) / 100
            except ValueError:
                raise ValueError(f"expected a percentage like 20%, got {value!r}") from None
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
        else:
            raise ValueError(f"expected a ratio like 20% or 0.2, got {_show(value)}")
        _bounds(value, 0.0, 1.0)
        return value


class Network(Kind):
    """A CIDR block or a single address."""

    label = "CIDR"

    def convert(self, value):
        try:
            return ipaddress.ip_network(str(value), strict=False)
        except ValueError:
            raise ValueError(f"expected an address or CIDR block like 10.0.0.0/8, got {_show(value)}") from None


class Address(Kind):
    """host:port -> (host, port); ':8080' and '8080' listen on all interfaces."""

    label = "host:port"

    def convert(self, value):
        text = str(value).strip()
        host, sep, port = text.rpartition(":")
        if not sep:
            host, port = "0.0.0.0", text
        host = host.strip("[]") or "0.0.0.0"
        if not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected host:port like 0.0.0.0:8080, got {_show(value)}")
        return (host, int(port))


class ListOf(Kind):
    def __init__(self, item: Kind, single: bool = False):
        self.item = item
        self.single = single   # a lone value is accepted as a one-item list
        self.label = f"list of {item.label}"

    def validate(self, value, path, line, errors):
        if not isinstance(value, list):
            if self.single and value is not None:
                value = LocatedList([value])
                value.line, value.lines = line, [line]
            else:
                errors.append(ConfigError(path, line, f"expected a list, got {_show(value)}"))
                return _MISSING
        lines = getattr(value, "lines", None) or [line] * len(value)
        out = []
        for i, item in enumerate(value):
            v = self.item.validate(item, f"{path}[{i}]", lines[i], errors)
            if v is not _MISSING:
                out.append(v)
        return tuple(out)


class MapOf(Kind):
    def __init__(self, item: Kind, key_pattern: str | None = None):
        self.item = item
        self.key_pattern = re.compile(key_pattern) if key_pattern else None
        self.label = f"map of {item.label}"

    def validate(self, value, path, line, errors):
        if not isinstance(value, dict):
            errors.append(ConfigError(path, line, f"expected a mapping, got {_show(value)}"))
            return _MISSING
        lines = getattr(value, "lines", {})
        out = {}
        for k, item in value.items():
            key_path = f"{path}.{k}" if path else str(k)
            if self.key_pattern and not self.key_pattern.fullmatch(str(k)):
                errors.append(ConfigError(key_path, lines.get(k, line), f"invalid name {k!r}"))
                continue
            v = self.item.validate(item, key_path, lines.get(k, line), errors)
            if v is not _MISSING:
                out[str(k)] = v
        return MappingProxyType(out)


class OneOf(Kind):
    """The first kind whose shape fits: `shape(value)` picks it without guessing."""

    def __init__(self, *options: tuple[Callable[[Any], bool], Kind]):
        self.options = options
        self.label = " or ".join(k.label for _, k in options)

    def validate(self, value, path, line, errors):
        for fits, kind in self.options:
            if fits(value):
                return kind.validate(value, path, line, errors)
        errors.append(ConfigError(path, line, f"expected {self.label}, got {_show(value)}"))
        return _MISSING


def is_map(v) -> bool:
    return isinstance(v, dict)


class Defaults(Kind):
    """`true` for a section: the section with its defaults (e.g. `compress: true`)."""

    label = "true"

    def __init__(self, schema):
        self.schema = schema

    def convert(self, value):
        return self.schema()


def section_or_true(schema) -> OneOf:
    """A route key that takes a mapping of `schema`, or `true` for its defaults."""
    return OneOf((lambda v: v is True, Defaults(schema)), (is_map, schema))


class Field:
    """One config key: its kind, default (absent = required) and description."""

    __slots__ = ("kind", "default", "doc", "name")

    def __init__(self, kind: Kind, default=_MISSING, doc: str = ""):
        self.kind = kind
        self.default = default
        self.doc = doc
        self.name = ""

    @property
    def required(self) -> bool:
        return self.default is _MISSING


class _SchemaMeta(type):
    def __new__(mcs, name, bases, ns):
        fields = {}
        for base in bases:
            fields.update(getattr(base, "_fields", {}))
        for key, value in list(ns.items()):
            if isinstance(value, Field):
                value.name = key
                fields[key.rstrip("_")] = value
                del ns[key]
        ns["_fields"] = fields
        return super().__new__(mcs, name, bases, ns)


class Schema(Kind, metaclass=_SchemaMeta):
    """A config section. Subclasses declare Fields; instances are frozen.

    `check(self, path, lines, errors)` may be overridden for rules that
    involve several fields. Field names ending in `_` map to YAML keys
    without it (`class_` -> `class`).
    """

    _fields: dict[str, Field] = {}
    _frozen = False
    label = "mapping"

    def __init__(self, **values):
        for key, field in self._fields.items():
            value = values.get(key, field.default)
            if value is _MISSING:
                raise TypeError(f"missing {key}")
            object.__setattr__(self, field.name, value)
        object.__setattr__(self, "_frozen", True)

    def __setattr__(self, name, value):
        if self._frozen:
            raise AttributeError(f"config is frozen: cannot set {name}")
        object.__setattr__(self, name, value)

    def __repr__(self):
        inner = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in self._fields.values())
        return f"{type(self).__name__}({inner})"

    @classmethod
    def validate(cls, value, path="", line=None, errors=None):
        if value is None:
            value = LocatedDict()
            value.line, value.lines = line, {}
        if not isinstance(value, dict):
            errors.append(ConfigError(path, line, f"expected a mapping, got {_show(value)}"))
            return _MISSING
        lines = getattr(value, "lines", {}) or {}
        here = getattr(value, "line", line)
        out = {}
        ok = True
        for key in value:
            if key not in cls._fields:
                key_path = f"{path}.{key}" if path else str(key)
                errors.append(ConfigError(key_path, lines.get(key, here), f"unknown key {key!r}{_suggest(key, cls._fields)}"))
                ok = False
        for key, field in cls._fields.items():
            key_path = f"{path}.{key}" if path else key
            if key not in value:
                if field.required:
                    errors.append(ConfigError(key_path, here, "is required"))
                    ok = False
                continue
            v = field.kind.validate(value[key], key_path, lines.get(key, here), errors)
            if v is _MISSING:
                ok = False
            else:
                out[key] = v
        if not ok:
            return _MISSING
        inst = cls(**out)
        object.__setattr__(inst, "_frozen", False)
        inst.check(path, lines, here, errors)
        object.__setattr__(inst, "_frozen", True)
        # Kept even when check() found problems, so that rules further up
        # (duplicate names, references) are reported in the same run.
        return inst

    def check(self, path: str, lines: dict, line: int | None, errors: list) -> None:
        """Cross-field rules; append ConfigError to errors."""


def error_at(errors: list, path: str, key: str, lines: dict, line, message: str) -> None:
    """Append an error about `key` of the mapping at `path`."""
    errors.append(ConfigError(f"{path}.{key}" if path else key, lines.get(key, line), message))


def _bounds(value, lo, hi):
    if lo is not None and value < lo:
        raise ValueError(f"must be at least {lo}, got {value}")
    if hi is not None and value > hi:
        raise ValueError(f"must be at most {hi}, got {value}")


def _show(value) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    return repr(value)


def _suggest(key, fields) -> str:
    import difflib

    close = difflib.get_close_matches(str(key), list(fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


MISSING = _MISSING
