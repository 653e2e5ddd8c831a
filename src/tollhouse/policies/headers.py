"""Header rewriting (docs/contract.md §2 route `headers`).

`request` changes what the upstream receives, `response` what the client
receives: `remove` (names), then `set` (replace any of that name), then
`add` (append another). Values may hold `{consumer}`, `{request_id}` and
`{client_ip}`, filled per request (the brace syntax of path templates;
`${VAR}` stays the environment's, substituted at load). Runs in the
`transform` phase, after authentication, so `{consumer}` is known; an
anonymous caller's `{consumer}` is empty.
"""
from __future__ import annotations

import re

from ..config.schema import Field, ListOf, MapOf, Schema, Str, error_at
from ..pipeline import Policy
from ..registry import PolicyKind

_NAME = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
PLACEHOLDERS = ("consumer", "request_id", "client_ip")
# The gateway writes these itself; rewriting them would break framing or routing.
RESERVED_REQUEST = frozenset(("host", "content-length", "transfer-encoding", "connection", "keep-alive", "te",
                              "upgrade", "x-request-id"))
RESERVED_RESPONSE = frozenset(("content-length", "transfer-encoding", "connection", "keep-alive", "x-request-id"))


class HeaderEdits(Schema):
    set = Field(MapOf(Str(), key_pattern=_NAME), {}, "name -> value, replacing any header of that name")
    add = Field(MapOf(Str(), key_pattern=_NAME), {}, "name -> value, appended")
    remove = Field(ListOf(Str(pattern=_NAME)), (), "names removed")


def _check_edits(edits, path, lines, line, errors, reserved):
    if edits is None:
        return
    for key in ("set", "add"):
        for name, value in getattr(edits, key).items():
            if name.lower() in reserved:
                error_at(errors, f"{path}.{key}", name, lines, line, f"{name} is written by the gateway itself")
            for var in _PLACEHOLDER.findall(value):
                if var not in PLACEHOLDERS:
                    error_at(errors, f"{path}.{key}", name, lines, line,
                             f"unknown placeholder {{{var}}}; use {', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
    for name in edits.remove:
        if name.lower() in reserved:
            error_at(errors, path, "remove", lines, line, f"{name} is written by the gateway itself")


class Headers(Schema):
    request = Field(HeaderEdits, None, "edits of the request sent upstream")
    response = Field(HeaderEdits, None, "edits of the response sent to the client")

    def check(self, path, lines, line, errors):
        _check_edits(self.request, f"{path}.request", lines, line, errors, RESERVED_REQUEST)
        _check_edits(self.response, f"{path}.response", lines, line, errors, RESERVED_RESPONSE)


class _Value:
    """A header value, pre-split around its placeholders."""

    __slots__ = ("parts", "constant")

    def __init__(self, text: str):
        pieces = _PLACEHOLDER.split(text)   # literal, name, literal, name, ...
        self.parts = [(i % 2 == 1, p) for i, p in enumerate(pieces) if p]
        self.constant = None if any(is_var for is_var, _ in self.parts) else text

    def render(self, exchange) -> str:
        if self.constant is not None:
            return self.constant
        out = []
        for is_var, piece in self.parts:
            if not is_var:
                out.append(piece)
            elif piece == "consumer":
                out.append(exchange.consumer or "")
            elif piece == "request_id":
                out.append(exchange.request_id.decode("latin-1"))
            else:
                out.append(exchange.client_ip)
        # A value from the request (a consumer id) must not smuggle a line break.
        return "".join(out).replace("\r", "").replace("\n", "")


def _compile(edits):
    if edits is None:
        return None
    return ([n for n in edits.remove], [(n, _Value(v)) for n, v in edits.set.items()],
            [(n, _Value(v)) for n, v in edits.add.items()])


class HeadersPolicy(Policy):
    phase = "transform"
    Config = Headers

    def __init__(self, config: Headers, context):
        super().__init__(config, context)
        self.request = _compile(config.request)
        self.response = _compile(config.response)

    def on_request(self, exchange):
        if self.request is not None:
            _apply(self.request, exchange, exchange.remove_header, exchange.set_header, "headers")
        return None

    def on_response(self, exchange) -> None:
        if self.response is not None:
            _apply(self.response, exchange, exchange.remove_response_header, exchange.set_response_header,
                   "response_headers")


def _apply(edits, exchange, remove_header, set_header, lines_attr: str) -> None:
    """remove, then set, then add (appended to the exchange's current list of lines)."""
    remove, set_, add = edits
    for name in remove:
        remove_header(name)
    for name, value in set_:
        set_header(name, value.render(exchange))
    if add:
        lines = getattr(exchange, lines_attr)   # remove/set may have replaced the list
        for name, value in add:
            lines.append(b"%s: %s\r\n" % (name.encode(), value.render(exchange).encode("latin-1")))


KIND = PolicyKind("headers", phase=HeadersPolicy.phase, key="headers",
                  build=lambda config, context, services: HeadersPolicy(config, context) if config is not None else None,
                  field=Field(Headers, None, "{request: {set, add, remove}, response: {...}} with {consumer}, "
                              "{request_id}, {client_ip}"))
