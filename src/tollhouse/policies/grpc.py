"""JSON-to-gRPC transcoding (docs/contract.md §2 route `grpc`, `grpc://` targets,
`descriptors`; §6; docs/protocols.md).

A route with `grpc: {method: pkg.Service/Method}` answers itself: after its
policies pass, the JSON body, the path parameters and the query fields fill
the method's request message (proto3 JSON mapping, protobuf's `json_format`),
the unary method is called with grpcio's asyncio client on a channel pooled
per target (chosen by the upstream's balancer, through its circuit breaker
and health), with the route's timeout as the deadline and allow-listed
headers plus the identity headers as metadata, and the response message is
answered as JSON. gRPC errors become problem+json with `grpc_status` and
`grpc_message`. Nothing here writes HTTP/2 or protobuf by hand.
"""
from __future__ import annotations

import logging
from urllib.parse import parse_qsl, urlsplit

import orjson

from ..config.loader import ConfigError
from ..config.schema import Field, ListOf, Schema, Str, error_at
from ..pipeline import Policy, Reply
from ..registry import PolicyKind, UpstreamProtocol
from ..exchange.forwarding import choose_target
from ..exchange.http2 import HTTP2_UPSTREAM
from ..upstream.http2 import Http2TargetPool

log = logging.getLogger("tollhouse.grpc")

#: gRPC status code -> HTTP status (docs/contract.md §6; the rest as grpc-gateway maps them).
HTTP_STATUS = {0: 200, 1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400, 10: 409, 11: 400,
               12: 501, 13: 500, 14: 503, 15: 500, 16: 401}
_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 409: "Conflict",
           429: "Too Many Requests", 499: "Client Closed Request", 500: "Internal Server Error",
           501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


class GrpcRoute(Schema):
    method = Field(Str(pattern=r"[A-Za-z_][\w.]*\.[A-Za-z_]\w*/[A-Za-z_]\w*"),
                   doc="the unary method to call: package.Service/Method")
    metadata = Field(ListOf(Str(pattern=r"[A-Za-z0-9-]+")), (),
                     "request headers passed as gRPC metadata (the identity headers always are)")


def load_descriptors(path: str):
    """A DescriptorPool from a FileDescriptorSet file; ValueError with the reason otherwise."""
    from google.protobuf import descriptor_pb2, descriptor_pool

    try:
        with open(path, "rb") as f:
            files = descriptor_pb2.FileDescriptorSet.FromString(f.read())
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    except Exception as e:  # noqa: BLE001 - DecodeError and friends: not a descriptor set
        raise ValueError(f"{path} is not a FileDescriptorSet ({type(e).__name__}); make it with "
                         "protoc --descriptor_set_out=FILE --include_imports") from None
    pool = descriptor_pool.DescriptorPool()
    for proto in files.file:
        try:
            pool.Add(proto)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{path}: {proto.name}: {e}") from None
    return pool


def find_method(pool, method: str):
    """The MethodDescriptor of `package.Service/Method`; ValueError when it is not unary or absent."""
    service, _, name = method.partition("/")
    try:
        desc = pool.FindServiceByName(service).methods_by_name[name]
    except KeyError:
        raise ValueError(f"no method {method} in the upstream's descriptors") from None
    if desc.client_streaming or desc.server_streaming:
        raise ValueError(f"{method} is a streaming method: only unary methods are transcoded")
    return desc


def check_route(route, where: str, config, errors: list) -> None:
    """Rules between a route's `grpc` and its upstream (the kind's `check`): a route to a
    gRPC upstream without `grpc` passes calls through unchanged (docs/http2.md); with it,
    it transcodes JSON to one unary method."""
    up = config.upstreams.get(route.upstream)
    if up is None or route.grpc is None:
        return   # no upstream, or an unknown one (reported with the route's upstream); or passthrough
    if up.protocol != "grpc":
        errors.append(ConfigError(f"{where}.upstream", None, f"upstream {route.upstream!r} has no grpc:// targets"))
        return
    if not up.descriptors:
        errors.append(ConfigError(f"upstreams.{route.upstream}.descriptors", None,
                                  "is required for a grpc route (a FileDescriptorSet)"))
        return
    try:
        find_method(load_descriptors(up.descriptors), route.grpc.method)
    except ValueError as e:
        errors.append(ConfigError(f"{where}.grpc.method", None, str(e)))


class Channels:
    """The worker's gRPC channels, one per target URL (the policy kind's per-worker service)."""

    def __init__(self):
        self.channels: dict[str, object] = {}

    def get(self, target):
        channel = self.channels.get(target.url)
        if channel is None:
            import grpc

            address = f"{target.host}:{target.port}"
            if target.url.startswith("grpcs://"):
                channel = grpc.aio.secure_channel(address, grpc.ssl_channel_credentials())
            else:
                channel = grpc.aio.insecure_channel(address)
            self.channels[target.url] = channel
        return channel

    def reconfigure(self, config) -> "Channels":
        return self

    def close(self) -> None:
        for channel in self.channels.values():
            try:
                channel.close()   # a coroutine on grpc.aio channels: the loop is ending, dropping it is enough
            except Exception:  # noqa: BLE001
                pass
        self.channels.clear()


class GrpcPolicy(Policy):
    """Answers its route by calling one unary gRPC method (`terminal`)."""

    __slots__ = ("method", "request_class", "response_class", "path", "metadata_names", "channels", "route_timeout",
                 "fields")

    phase = "transform"
    terminal = True
    default_methods = ("POST",)

    def __init__(self, config: GrpcRoute, context, channels: Channels, descriptors: str):
        from google.protobuf import message_factory

        super().__init__(config, context)
        desc = find_method(load_descriptors(descriptors), config.method)
        self.request_class = message_factory.GetMessageClass(desc.input_type)
        self.response_class = message_factory.GetMessageClass(desc.output_type)
        self.fields = {f.name: f for f in desc.input_type.fields} | {f.json_name: f for f in desc.input_type.fields}
        self.path = f"/{desc.containing_service.full_name}/{desc.name}"
        self.metadata_names = frozenset(n.lower().encode() for n in config.metadata)
        self.channels = channels
        self.route_timeout = context.route.timeout

    async def respond(self, exchange, body: bytes):
        from google.protobuf import json_format

        import grpc

        try:
            message = self.request_message(exchange, body, json_format)
        except ValueError as e:
            return Reply.problem(400, "Bad Request", str(e))
        pool = exchange.route.choose_pool(exchange)
        target = choose_target(pool, exchange)
        if isinstance(target, Reply):
            return target
        call = self.channels.get(target).unary_unary(self.path, request_serializer=self.request_class.SerializeToString,
                                                     response_deserializer=self.response_class.FromString)
        try:
            answer = await call(message, timeout=self.route_timeout, metadata=self.metadata(exchange))
        except grpc.aio.AioRpcError as e:
            code = e.code().value[0]
            # Only the server's own trouble counts against the target (not NOT_FOUND and the like).
            pool.attempt_ended(target, code not in (4, 13, 14, 15, 2))
            status = HTTP_STATUS.get(code, 500)
            return Reply.problem(status, _TITLES.get(status, "Error"), e.details() or e.code().name,
                                 grpc_status=code, grpc_message=e.details() or "")
        pool.attempt_ended(target, True)
        payload = orjson.dumps(json_format.MessageToDict(answer, always_print_fields_with_no_presence=True))
        exchange.respond(200, [b"content-type: application/json\r\n"], payload)
        return None

    def request_message(self, exchange, body: bytes, json_format):
        """The request message from the JSON body, then query fields, then path parameters
        (each later one wins); ValueError naming the field that does not fit."""
        values: dict = {}
        if body.strip():
            try:
                values = orjson.loads(body)
            except orjson.JSONDecodeError as e:
                raise ValueError(f"the body is not JSON: {e}") from None
            if not isinstance(values, dict):
                raise ValueError("the body must be a JSON object (the request message)")
        if exchange.query:
            for name, value in parse_qsl(exchange.query[1:].decode("latin-1"), keep_blank_values=True):
                field = self.fields.get(name)
                if field is None:
                    continue   # not a field: query parameters of the gateway's (an API key) or none
                if field.label == field.LABEL_REPEATED:
                    values.setdefault(name, []).append(value)
                else:
                    values[name] = value
        for name, value in (exchange.params or {}).items():
            name = name.decode() if isinstance(name, bytes) else name
            if name in self.fields:
                values[name] = value.decode("latin-1") if isinstance(value, bytes) else value
        message = self.request_class()
        try:
            json_format.ParseDict(values, message)
        except json_format.ParseError as e:
            raise ValueError(str(e)) from None
        return message

    def metadata(self, exchange) -> tuple:
        found = []
        for line in exchange.headers:
            colon = line.find(b":")
            name = line[:colon].strip().lower()
            if name in self.metadata_names or name.startswith(b"x-consumer-"):
                found.append((name.decode(), line[colon + 1:].strip().decode("latin-1")))
        found.append(("x-request-id", exchange.request_id.decode("latin-1")))
        return tuple(found)


KIND = PolicyKind(
    "grpc", phase=GrpcPolicy.phase, key="grpc",
    service=lambda config, store, stats, worker: Channels(), check=check_route,
    build=lambda config, context, services: None if config is None else GrpcPolicy(
        config, context, services.workers["grpc"], services.config.upstreams[context.route.upstream].descriptors),
    field=Field(GrpcRoute, None, "{method: package.Service/Method, metadata: [header names]}: JSON in and out, "
                                 "a unary gRPC call to the upstream's grpc:// targets; see docs/protocols.md"))


def check_upstream(upstream, used: bool, path, lines, line, errors) -> None:
    """An upstream of grpc:// targets: each with its port, no HTTP health checks; its
    `descriptors` file readable."""
    if used:
        for i, target in enumerate(upstream.targets):
            if PROTOCOL.speaks(target.url) and urlsplit(target.url).port is None:
                error_at(errors, f"{path}.targets[{i}]", "url", lines, line,
                         f"a grpc target needs its port: {target.url!r}")
        if upstream.health_check is not None:
            error_at(errors, path, "health_check", lines, line, "health checks are HTTP GETs: not for grpc targets "
                                                                "(outlier detection and the circuit breaker apply)")
    if upstream.descriptors:
        try:
            load_descriptors(upstream.descriptors)
        except ValueError as e:
            error_at(errors, path, "descriptors", lines, line, str(e))


#: Upstreams of grpc:// and grpcs:// targets: `grpc` routes call them with grpcio, other routes
#: pass calls through over HTTP/2 (installed by tollhouse.builtins).
PROTOCOL = UpstreamProtocol("grpc", ("grpc", "grpcs"), check=check_upstream, codec=HTTP2_UPSTREAM,
                            target_pool=Http2TargetPool, fields={
    "descriptors": Field(Str(), "", "grpc:// targets: a FileDescriptorSet file (protoc --descriptor_set_out "
                                    "--include_imports) describing their services")})
