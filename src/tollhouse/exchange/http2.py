"""HTTP/2 towards the client: a stream's request head checked as HTTP/1.1's is
(`finalise_head`), and its response framed by nghttp2 (`Http2Codec`, one object,
`HTTP2`, for every stream). The connection (server/http2.py) reads frames; the
stream it puts in the exchange's `conn` (server.http2.Http2Stream) submits what
this codec hands it. A body is always ended explicitly (END_STREAM), so the
codec chooses `CHUNKED` ("ended when it ends") for every relayed body.
"""
from __future__ import annotations

from ..pipeline import Reply
from .codec import Codec, UpstreamCodec
from .http1 import keep_request_id, target_error
from .request import CHUNKED, NONE, find_header, without

#: HTTP status -> gRPC status for a refusal of a gRPC call (gRPC's "HTTP to gRPC Status
#: Code Mapping", with 401, 403, 429, 503 and 504 as docs/http2.md lists them).
GRPC_STATUS = {400: 13, 401: 16, 403: 7, 404: 12, 408: 4, 413: 8, 429: 8, 431: 8, 502: 14, 503: 14, 504: 4}


def finalise_head(ex, authority, limits, count: int, oversize: bool):
    """Check a stream's request head as HTTP/1.1's is checked (the limits, Host, the
    target), with HTTP/2's own rules (RFC 9113 §8.3.1: `:authority` and a Host that
    disagrees are refused): the Reply that refuses it, or None."""
    keep_request_id(ex)
    if authority is not None:
        if ex.host_count and ex.host != authority:
            return _refused(ex, Reply.problem(400, "Bad Request", ":authority and Host disagree"))
        ex.host = authority
        ex.host_count = 1
    if oversize or count > limits.max_headers:
        return _refused(ex, Reply.problem(431, "Request Header Fields Too Large",
                                          f"at most {limits.max_headers} header fields and "
                                          f"{limits.max_header_bytes} bytes"))
    if len(ex.raw_target) > limits.max_uri_bytes:
        return _refused(ex, Reply.problem(414, "URI Too Long",
                                          f"the request target exceeds {limits.max_uri_bytes} bytes"))
    if ex.host_count != 1:
        return _refused(ex, Reply.problem(400, "Bad Request", "exactly one :authority or Host is required"))
    if ex.duplicate is not None:
        return _refused(ex, Reply.problem(400, "Bad Request", f"more than one {ex.duplicate.decode('latin-1')} header"))
    if ex.method == b"CONNECT":
        return _refused(ex, Reply.problem(405, "Method Not Allowed", "CONNECT is not supported"))
    max_body = limits.max_body_bytes
    if max_body and ex.content_length is not None and ex.content_length > max_body:
        return _refused(ex, Reply.problem(413, "Content Too Large", f"the body exceeds {max_body} bytes"))
    error = target_error(ex)
    if error is not None:
        return _refused(ex, error)
    return None


def _refused(ex, reply):
    if not ex.path:
        ex.path = ex.raw_target.split(b"?", 1)[0]   # as sent, for the log line
    if not ex.method:
        ex.method = b"GET"
    return reply


class Http2Codec(Codec):
    """HTTP/2 towards the client: what turns an exchange's response into a stream's frames."""

    __slots__ = ()

    def frame_relayed(self, ex, content_length, chunked: bool) -> None:
        up = ex.upstream
        if up is not None and up.head_only:
            ex.mode = NONE   # the upstream's head ended its stream (gRPC's trailers-only): so does ours
            return
        if content_length is not None and chunked:
            ex.response_headers = without(ex.response_headers, {b"content-length"})
        ex.mode = CHUNKED

    def frame_unknown_length(self, ex) -> None:
        ex.response_headers = without(ex.response_headers, {b"content-length"})
        ex.mode = CHUNKED

    def write_head(self, ex, body: bytes) -> None:
        ex.conn.respond(ex.status, ex.response_headers, ex.request_id, body, ex.mode != NONE)

    def write_answer(self, ex, body: bytes) -> None:
        content_type = find_header(ex.headers, b"content-type")
        if content_type is not None and content_type.startswith("application/grpc") and ex.status != 200:
            # A gRPC client reads a refusal from trailers-only (HEADERS with END_STREAM):
            # HTTP 200 and the gRPC status that matches the gateway's.
            message = find_header(ex.response_headers, b"content-type")
            detail = _detail(body) if message and "json" in message else ""
            code = GRPC_STATUS.get(ex.status, 2 if ex.status >= 500 else 13)
            kept = [line for line in ex.response_headers if line[:12].lower() in (b"retry-after:", b"www-authenti")]
            lines = kept + [b"content-type: application/grpc\r\n", b"grpc-status: %d\r\n" % code,
                            b"grpc-message: %s\r\n" % _percent(detail or str(ex.status)).encode()]
            ex.grpc_status = code   # the log line and metrics keep the gateway's HTTP status beside it
            ex.conn.respond(200, lines, ex.request_id, b"", False)
            return
        ex.conn.respond(ex.status, ex.response_headers, ex.request_id, body, False)

    def write_body(self, ex, chunk: bytes) -> None:
        ex.conn.send(chunk)

    def end_body(self, ex) -> None:
        if ex.mode != NONE:
            ex.conn.end(ex.trailers)

    def write_continue(self, ex) -> None:
        ex.conn.interim(100)


#: The codec of every HTTP/2 stream towards a client.
HTTP2 = Http2Codec()


def _detail(body: bytes) -> str:
    """The `detail` of a problem+json body."""
    import json

    try:
        return str(json.loads(body).get("detail", ""))
    except (ValueError, AttributeError):
        return ""


def _percent(text: str) -> str:
    """grpc-message is percent-encoded (gRPC over HTTP/2: Percent-Encoded)."""
    return "".join(c if " " <= c <= "~" and c != "%" else "".join(f"%{b:02X}" for b in c.encode()) for c in text)


class Http2Upstream(UpstreamCodec):
    """HTTP/2 towards an upstream (h2c, h2 over TLS, gRPC): the request as a header list
    for nghttp2 (upstream/http2.py submits it) instead of bytes. `request_head` makes
    the first part, (pseudo-header pairs, header lines); the body read so far follows."""

    __slots__ = ()

    def request_head(self, ex, target, method: bytes, path: bytes) -> list:
        route = ex.route
        pool = target
        pairs = [(b":method", method), (b":scheme", pool.scheme), (b":path", path + ex.query),
                 (b":authority", ex.host if route.preserve_host else pool.host_header)]
        if ex.content_length is not None:
            pairs.append((b"content-length", b"%d" % ex.content_length))
        client = ex.conn
        lines = list(ex.headers)
        if client.peer_trusted:
            peer = client.peer_ip_bytes
            lines += (b"x-forwarded-for: ", ex.xff + b", " + peer if ex.xff else peer,
                      b"\r\nx-forwarded-proto: ", ex.xfp or client.scheme,
                      b"\r\nx-forwarded-host: ", ex.xfh or ex.host, b"\r\n")
        else:
            lines += (client.forwarded, ex.host, b"\r\n")
        if pool.grpc or ex.te is not None:
            pairs.append((b"te", b"trailers"))   # gRPC asks for trailers (the client's te was hop-by-hop)
        pairs.append((b"x-request-id", ex.request_id))
        # The forwarded lines were written as parts of lines: one header line per item again.
        return [(pairs, b"".join(lines).split(b"\r\n")[:-1])]

    def frame_body(self, ex, parts: list, chunks) -> None:
        if chunks:
            parts += chunks

    def write_body(self, ex, outgoing, chunk: bytes) -> None:
        outgoing.write(chunk)

    def end_body(self, ex, outgoing) -> None:
        outgoing.end(ex.request_trailers)


#: The codec of every HTTP/2 upstream connection (h2c, http2, grpc).
HTTP2_UPSTREAM = Http2Upstream()
