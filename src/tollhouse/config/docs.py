"""Generate docs/configuration.md from the schema declarations.

    python -m tollhouse.config.docs > docs/configuration.md

tests/unit/test_config_docs.py fails when the file is out of step.
"""
from __future__ import annotations

from .model import gateway_schema
from .schema import MISSING, Duration, ListOf, MapOf, OneOf, Schema, Size

INTRO = """# Configuration reference

Generated from the schema (`python -m tollhouse.config.docs > docs/configuration.md`);
a test keeps it in step. YAML, with `${VAR}` and `${VAR:-default}` taken from the
environment (an unset variable without a default is an error). Durations:
`250ms`, `10s`, `5m`, `1h`, `1d`. Sizes: `512`, `16KiB`, `10MiB`. Unknown keys are
errors, and so are keys of capabilities that have not landed yet: a typo or a
missing feature never silently disables a policy. `tollhouse check -c FILE`
prints every error with its key path and line.

`${VAR}`, template variables inside values (`/users/{id}`) and `?` inside
values (`/orders?owner={consumer}`) may stand in flow mappings too, as in
docs/contract.md's examples; a value that *starts* with `{` must be quoted.
"""


def _default(field) -> str:
    if field.default is MISSING:
        return "required"
    d = field.default
    if isinstance(d, Schema):
        return "(section)"
    if d is None:
        return "-"
    if isinstance(d, tuple) and d and isinstance(d[0], tuple):
        return ", ".join(f"{h}:{p}" for h, p in d)
    if isinstance(d, tuple) and len(d) == 2 and isinstance(d[1], int) and isinstance(d[0], str):
        return f"{d[0]}:{d[1]}"
    if d in ((), {}):
        return "empty"
    if isinstance(d, bool):
        return str(d).lower()
    if isinstance(field.kind, Duration):
        return f"`{d:g}s`"
    if isinstance(field.kind, Size) and d:
        for unit, n in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if d % n == 0:
                return f"`{d // n}{unit}`"
    if d == "":
        return "empty"
    return f"`{d}`"


def _nested(kind):
    if isinstance(kind, type) and issubclass(kind, Schema):
        return kind
    if isinstance(kind, (ListOf, MapOf)):
        return _nested(kind.item)
    if isinstance(kind, OneOf):
        for _, k in kind.options:
            n = _nested(k)
            if n is not None:
                return n
    return None


def _section(title: str, schema: type[Schema], out: list, seen: set) -> None:
    out += [f"## {title}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
    later = []
    for name, field in schema._fields.items():
        kind = field.kind
        label = kind.label if not (isinstance(kind, type) and issubclass(kind, Schema)) else "mapping"
        out.append(f"| `{name}` | {label} | {_default(field)} | {field.doc.replace('|', '/')} |")
        nested = _nested(kind)
        if nested is not None and nested not in seen:
            seen.add(nested)
            later.append((f"{title}.{name}" if title != "Top level" else name, nested))
    out.append("")
    for sub_title, sub in later:
        _section(sub_title, sub, out, seen)


def render() -> str:
    out = [INTRO]
    gateway = gateway_schema()
    _section("Top level", gateway, out, {gateway})
    return "\n".join(out)


if __name__ == "__main__":
    from ..builtins import install

    install()
    print(render(), end="")
