"""Request validation (docs/contract.md §2 route `request`): body size, content type, JSON Schema.

Checks run in the `validate` phase, after authentication and rate limiting.
`max_body_bytes` (413) applies on top of the global `limits.max_body_bytes`
(the smaller wins) and is enforced as the body streams, chunked bodies
included. `content_types` (415) is checked on requests that carry a body.
`json_schema` needs the whole body: it is buffered (at most max_body_bytes,
1 MiB unless set), parsed with orjson, validated with a schema compiled once
at load (jsonschema-rs), and then sent upstream byte for byte unchanged.
Failures are 400 problem+json listing each failing instance path.
"""
from __future__ import annotations

import os

import jsonschema_rs
import orjson

from ..config.schema import Field, ListOf, Schema, Size, Str, error_at
from ..pipeline import Policy, Reply, with_body
from ..registry import PolicyKind

DEFAULT_VALIDATION_LIMIT = 1024 * 1024
MAX_LISTED_ERRORS = 20


class RequestRules(Schema):
    max_body_bytes = Field(Size(), 0, "largest body on this route (413 beyond); 0 = the global limit only")
    content_types = Field(ListOf(Str(pattern=r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+*-]+")), (),
                          "media types a request body may have (415 otherwise); parameters such as charset ignored")
    json_schema = Field(Str(), "", "a JSON Schema file (relative to the working directory, like every path in the config)")

    def check(self, path, lines, line, errors):
        if not self.json_schema:
            return
        try:
            load_validator(self.json_schema)
        except (OSError, ValueError) as e:
            error_at(errors, path, "json_schema", lines, line, str(e))


_VALIDATORS: dict[str, object] = {}


def load_validator(file: str):
    """A compiled validator for a schema file (compiled once per file and process)."""
    full = os.path.abspath(file)
    validator = _VALIDATORS.get(full)
    if validator is None:
        try:
            with open(full, "rb") as f:
                schema = orjson.loads(f.read())
        except OSError as e:
            raise OSError(f"cannot read {file}: {e.strerror}") from None
        except orjson.JSONDecodeError as e:
            raise ValueError(f"{file} is not JSON: {e}") from None
        try:
            validator = jsonschema_rs.validator_for(schema)
        except (ValueError, jsonschema_rs.ValidationError) as e:
            raise ValueError(f"{file} is not a valid JSON Schema: {e}") from None
        _VALIDATORS[full] = validator
    return validator


class RequestPolicy(Policy):
    phase = "validate"
    Config = RequestRules

    def __init__(self, config: RequestRules, context):
        super().__init__(config, context)
        self.validator = load_validator(config.json_schema) if config.json_schema else None
        self.limit = config.max_body_bytes or (DEFAULT_VALIDATION_LIMIT if self.validator is not None else 0)
        self.content_types = frozenset(t.lower() for t in config.content_types)
        self.count_keys = {r: ("request_refusals", (("route", context.route_name), ("reason", r)))
                           for r in ("body_too_large", "content_type", "malformed_json", "schema")}
        self.counters = context.stats.counters
        for name, labels in self.count_keys.values():
            context.stats.declare(name, labels)

    def _refuse(self, reason: str, reply: Reply) -> Reply:
        key = self.count_keys[reason]
        self.counters[key] = self.counters.get(key, 0) + 1
        return reply

    def on_request(self, exchange):
        length = exchange.content_length
        has_body = exchange.chunked or bool(length)
        limit = self.limit
        if limit:
            if length is not None and length > limit:
                return self._refuse("body_too_large", Reply.problem(
                    413, "Content Too Large", f"the body exceeds {limit} bytes on this route"))
            if exchange.body_received > limit:
                return self._refuse("body_too_large", Reply.problem(
                    413, "Content Too Large", f"the body exceeds {limit} bytes on this route"))
            exchange.body_limit = limit   # checked as the rest of the body streams in
        if not has_body:
            return None
        if self.content_types:
            ctype = (exchange.header("content-type") or "").split(";", 1)[0].strip().lower()
            if ctype not in self.content_types:
                return self._refuse("content_type", Reply.problem(
                    415, "Unsupported Media Type",
                    f"content type {ctype or '(none)'} is not accepted; use {', '.join(sorted(self.content_types))}"))
        if self.validator is None:
            return None
        return with_body(exchange, lambda: self.validate(exchange))

    def validate(self, exchange) -> Reply | None:
        body = b"".join(exchange.body_chunks or ())
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            return self._refuse("malformed_json", Reply.problem(400, "Bad Request", f"the body is not valid JSON: {e}"))
        if self.validator.is_valid(document):
            return None
        errors = []
        for error in self.validator.iter_errors(document):
            errors.append({"path": "/" + "/".join(str(p) for p in error.instance_path), "message": error.message})
            if len(errors) >= MAX_LISTED_ERRORS:
                break
        reply = Reply.problem(400, "Bad Request", f"the body does not match the schema ({len(errors)} error"
                                                  f"{'s' if len(errors) != 1 else ''})")
        reply.problem_fields["errors"] = errors
        return self._refuse("schema", reply)


KIND = PolicyKind("request", phase=RequestPolicy.phase, key="request",
                  build=lambda config, context, services: RequestPolicy(config, context) if config is not None else None,
                  field=Field(RequestRules, None, "{max_body_bytes, content_types, json_schema}: 413, 415, 400"))
