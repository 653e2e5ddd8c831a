"""HTTP/1.1: the request head's validation (RFC 9112), the framing of responses
towards the client (`Http1Codec`, one object, `HTTP1`, for every HTTP/1.1 client
connection), and the request head sent to an HTTP/1.1 upstream (`Http1Upstream`).
The client connection (server.protocol) parses; this frames.
"""
from __future__ import annotations

import re
from http import HTTPStatus

from ..paths import BadPath, normalise_path
from ..pipeline import Reply
from ..registry import UpstreamProtocol
from .codec import Codec, UpstreamCodec
from .request import CHUNKED, RAW, tokens, without

STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}


def status_line(status: int) -> bytes:
    line = STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % status


_SANE_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
# Host = uri-host [ ":" port ] (RFC 9110 §7.2, RFC 3986 §3.2.2): an IP literal or a
# reg-name (unreserved, pct-encoded, sub-delims), no userinfo, at most one port.
_SANE_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|\[v[0-9A-Fa-f]+\.[A-Za-z0-9._~!$&'()*+,;=:-]+\]"
                        rb"|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]*)?")
_SANE_HOSTS: dict[bytes, bool] = {}
_NORMAL_PATHS: dict[bytes, bytes] = {}
LAST_CHUNK = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Http1Codec(Codec):
    """HTTP/1.1 towards the client: what turns an exchange's response into bytes."""

    __slots__ = ()

    def finalise_head(self, ex, limits) -> None:
        """Validate what only the whole head can tell (RFC 9112 §3.2, §6). A refused
        request keeps its id and its path as sent: the answer and the log line carry both."""
        keep_request_id(ex)
        error = _framing_error(ex, limits)
        if error is None:
            error = target_error(ex)
        if error is not None:
            ex.error = error
            ex.keep_alive = False
            if not ex.path:
                ex.path = ex.raw_target.split(b"?", 1)[0]
            return
        if ex.connection_tokens:
            drop = tokens(ex.connection_tokens) - {b"close", b"keep-alive"}
            if drop:
                ex.headers = without(ex.headers, drop)

    def frame_relayed(self, ex, content_length, chunked: bool) -> None:
        if content_length is not None and not chunked:
            ex.mode = RAW
            return
        if content_length is not None:
            ex.response_headers = without(ex.response_headers, {b"content-length"})
        _length_unknown(ex)

    def frame_unknown_length(self, ex) -> None:
        ex.response_headers = without(ex.response_headers, {b"content-length"})
        _length_unknown(ex)

    def write_head(self, ex, body: bytes) -> None:
        line = STATUS_LINES.get(ex.status) or status_line(ex.status)
        parts = [line, *ex.response_headers, b"x-request-id: ", ex.request_id, b"\r\n"]
        if ex.mode == CHUNKED:
            parts.append(b"transfer-encoding: chunked\r\n")
        if not ex.keep_alive:
            parts.append(b"connection: close\r\n\r\n")
        elif ex.version == "1.0":
            parts.append(b"connection: keep-alive\r\n\r\n")
        else:
            parts.append(b"\r\n")
        if body:
            parts.append(body)
        ex.conn.write(b"".join(parts))

    def write_body(self, ex, chunk: bytes) -> None:
        if ex.mode == CHUNKED:
            ex.conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            ex.conn.write(chunk)

    def end_body(self, ex) -> None:
        if ex.mode == CHUNKED:
            ex.conn.write(LAST_CHUNK)

    def write_continue(self, ex) -> None:
        ex.conn.write(CONTINUE)


#: The codec of every HTTP/1.x client connection.
HTTP1 = Http1Codec()


class Http1Upstream(UpstreamCodec):
    """HTTP/1.1 towards an upstream: the request head (one builder for proxied requests
    and WebSocket handshakes) and the request body's framing."""

    __slots__ = ()

    def request_head(self, ex, target, method: bytes, path: bytes) -> list:
        """The request line and headers up to X-Request-ID, without framing or the blank
        line: the client's lines, X-Forwarded-* (the client's own kept only from a trusted
        proxy) and the request id."""
        route = ex.route
        pool = target
        parts = [method, b" ", path, ex.query, b" HTTP/1.1\r\nhost: ",
                 ex.host if route.preserve_host else pool.host_header, b"\r\n"]
        parts += ex.headers
        client = ex.conn
        if client.peer_trusted:
            peer = client.peer_ip_bytes
            parts += (b"x-forwarded-for: ", ex.xff + b", " + peer if ex.xff else peer,
                      b"\r\nx-forwarded-proto: ", ex.xfp or client.scheme,
                      b"\r\nx-forwarded-host: ", ex.xfh or ex.host, b"\r\nx-request-id: ", ex.request_id, b"\r\n")
        else:
            # "x-forwarded-for: <peer>\r\nx-forwarded-proto: <scheme>\r\nx-forwarded-host: ", once per connection
            parts += (client.forwarded, ex.host, b"\r\nx-request-id: ", ex.request_id, b"\r\n")
        return parts

    def frame_body(self, ex, parts: list, chunks) -> None:
        """End the head in `parts` with the body's framing, then the body read so far."""
        if ex.chunked:
            parts.append(b"transfer-encoding: chunked\r\n\r\n")
        elif ex.content_length is not None:
            parts.append(b"content-length: %d\r\n\r\n" % ex.content_length)
        else:
            parts.append(b"\r\n")
        if chunks:
            if ex.chunked:
                for c in chunks:
                    parts += (b"%x\r\n" % len(c), c, b"\r\n")
            else:
                parts += chunks
        if ex.chunked and ex.body_done:
            parts.append(last_chunk(ex))

    def write_body(self, ex, outgoing, chunk: bytes) -> None:
        if ex.chunked:
            outgoing.write(b"%x\r\n" % len(chunk))
            outgoing.write(chunk)
            outgoing.write(b"\r\n")
        else:
            outgoing.write(chunk)

    def end_body(self, ex, outgoing) -> None:
        if ex.chunked:
            outgoing.write(last_chunk(ex))


def last_chunk(ex) -> bytes:
    """The chunked body's end, with the trailer fields an HTTP/2 client sent (RFC 9112 §7.1.2)."""
    trailers = ex.request_trailers
    if trailers is None:
        return LAST_CHUNK
    return b"0\r\n" + b"".join(trailers) + b"\r\n"


#: The codec of every HTTP/1.1 upstream connection.
HTTP1_UPSTREAM = Http1Upstream()

#: Upstreams of http:// and https:// targets (installed by tollhouse.builtins).
PROTOCOL = UpstreamProtocol("http1", ("http", "https"), codec=HTTP1_UPSTREAM)


def forwarded_prefix(peer_ip: bytes, scheme: bytes) -> bytes:
    """X-Forwarded-For and -Proto for a client that is not a trusted proxy, up to the
    value of X-Forwarded-Host: made once per client connection, completed per request
    by `Http1Upstream.request_head`."""
    return b"x-forwarded-for: " + peer_ip + b"\r\nx-forwarded-proto: " + scheme + b"\r\nx-forwarded-host: "


def _length_unknown(ex) -> None:
    if ex.version == "1.1":
        ex.mode = CHUNKED
    else:
        ex.mode = RAW   # HTTP/1.0: delimited by closing the connection
        ex.keep_alive = False


def _framing_error(ex, limits):
    """Why the head's version, Host, framing or method cannot be served, or None."""
    if ex.version not in ("1.1", "1.0"):
        return Reply.problem(505, "HTTP Version Not Supported", "only HTTP/1.0 and HTTP/1.1 are served")
    if ex.host_count > 1 or (ex.host_count == 0 and ex.version == "1.1"):
        return Reply.problem(400, "Bad Request", "exactly one Host header is required")
    if ex.duplicate is not None:
        return Reply.problem(400, "Bad Request", f"more than one {ex.duplicate.decode('latin-1')} header")
    if ex.te is not None:
        if ex.te.strip().lower() != b"chunked" or ex.version == "1.0":
            # llhttp already refuses most bad codings; this catches "gzip, chunked" (RFC 9112 §6.1).
            return Reply.problem(501, "Not Implemented", "only Transfer-Encoding: chunked is supported")
        ex.chunked = True
    if ex.method == b"CONNECT":
        return Reply.problem(405, "Method Not Allowed", "CONNECT is not supported")
    if ex.upgrade and (ex.chunked or ex.content_length):
        return Reply.problem(400, "Bad Request", "an Upgrade request cannot carry a body")
    max_body = limits.max_body_bytes
    if max_body and ex.content_length is not None and ex.content_length > max_body:
        return Reply.problem(413, "Content Too Large", f"the body exceeds {max_body} bytes")
    return None


def keep_request_id(ex) -> None:
    """The client's X-Request-ID when it is sane, else a new one."""
    rid = ex.request_id
    if not rid or not _SANE_ID.fullmatch(rid):
        ex.request_id = ex.worker.next_request_id()


def target_error(ex):
    """Split the request target into the normalised path and the query (the authority of
    an absolute-form target replaces Host); why it cannot be served, or None."""
    target = ex.raw_target
    if not target.startswith(b"/"):
        if target.startswith((b"http://", b"https://")):
            # absolute-form (RFC 9112 §3.2.2): the authority replaces Host.
            rest = target.split(b"://", 1)[1]
            slash = rest.find(b"/")
            authority, target = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
            ex.host = authority
        else:
            return Reply.problem(400, "Bad Request", "unsupported request target")
    if not _sane_host(ex.host):
        return Reply.problem(400, "Bad Request", "invalid Host: expected host[:port]")
    q = target.find(b"?")
    raw_path = target if q < 0 else target[:q]
    ex.query = b"" if q < 0 else target[q:]
    hash_at = raw_path.find(b"#")
    if hash_at >= 0:
        raw_path = raw_path[:hash_at]
    path = _NORMAL_PATHS.get(raw_path)
    if path is None:
        try:
            path = normalise_path(raw_path)
        except BadPath as e:
            return Reply.problem(400, "Bad Request", f"invalid path: {e}")
        if len(_NORMAL_PATHS) >= 8192:
            _NORMAL_PATHS.clear()   # bounded: unique paths cannot grow it
        _NORMAL_PATHS[raw_path] = path
    ex.path = path
    return None


def _sane_host(host: bytes) -> bool:
    known = _SANE_HOSTS.get(host)
    if known is None:
        known = _SANE_HOST.fullmatch(host) is not None
        if len(_SANE_HOSTS) >= 4096:
            _SANE_HOSTS.clear()   # bounded: made-up hosts cannot grow it
        _SANE_HOSTS[host] = known
    return known
