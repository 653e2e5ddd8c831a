"""HTTP/1.1 framing of an exchange: the request head's validation (RFC 9112),
the response head, the response body's framing towards the client, and local
answers. The client connection (server.protocol) parses; this frames.
"""
from __future__ import annotations

import re
import time
from http import HTTPStatus

from ..paths import BadPath, normalise_path
from ..pipeline import Reply
from ..request import CHUNKED, COMPLETE, HEAD_SENT, NONE, RAW, WAITING, Request, tokens, without

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
_NO_BODY_STATUS = frozenset((204, 304))
_NORMAL_PATHS: dict[bytes, bytes] = {}
LAST_CHUNK = b"0\r\n\r\n"


class Http1Exchange(Request):
    """Framing: what turns a request's state into HTTP/1.1 bytes for the client."""

    __slots__ = ()

    def finalise_head(self, limits) -> None:
        """Validate what only the whole head can tell (RFC 9112 §3.2, §6). A refused
        request keeps its id and its path as sent: the answer and the log line carry both."""
        rid = self.request_id
        if not rid or not _SANE_ID.fullmatch(rid):
            self.request_id = self.worker.next_request_id()
        error = self.framing_error(limits)
        if error is None:
            error = self.target_error()
        if error is not None:
            self.error = error
            self.keep_alive = False
            if not self.path:
                self.path = self.raw_target.split(b"?", 1)[0]
            return
        if self.connection_tokens:
            drop = tokens(self.connection_tokens) - {b"close", b"keep-alive"}
            if drop:
                self.headers = without(self.headers, drop)

    def framing_error(self, limits):
        """Why the head's version, Host, framing or method cannot be served, or None."""
        if self.version not in ("1.1", "1.0"):
            return Reply.problem(505, "HTTP Version Not Supported", "only HTTP/1.0 and HTTP/1.1 are served")
        if self.host_count > 1 or (self.host_count == 0 and self.version == "1.1"):
            return Reply.problem(400, "Bad Request", "exactly one Host header is required")
        if self.duplicate is not None:
            return Reply.problem(400, "Bad Request", f"more than one {self.duplicate.decode('latin-1')} header")
        if self.te is not None:
            if self.te.strip().lower() != b"chunked" or self.version == "1.0":
                # llhttp already refuses most bad codings; this catches "gzip, chunked" (RFC 9112 §6.1).
                return Reply.problem(501, "Not Implemented", "only Transfer-Encoding: chunked is supported")
            self.chunked = True
        if self.method == b"CONNECT":
            return Reply.problem(405, "Method Not Allowed", "CONNECT is not supported")
        if self.upgrade and (self.chunked or self.content_length):
            return Reply.problem(400, "Bad Request", "an Upgrade request cannot carry a body")
        max_body = limits.max_body_bytes
        if max_body and self.content_length is not None and self.content_length > max_body:
            return Reply.problem(413, "Content Too Large", f"the body exceeds {max_body} bytes")
        return None

    def target_error(self):
        """Split the request target into the normalised path and the query (the authority of
        an absolute-form target replaces Host); why it cannot be served, or None."""
        target = self.raw_target
        if not target.startswith(b"/"):
            if target.startswith((b"http://", b"https://")):
                # absolute-form (RFC 9112 §3.2.2): the authority replaces Host.
                rest = target.split(b"://", 1)[1]
                slash = rest.find(b"/")
                authority, target = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
                self.host = authority
            else:
                return Reply.problem(400, "Bad Request", "unsupported request target")
        if not _sane_host(self.host):
            return Reply.problem(400, "Bad Request", "invalid Host: expected host[:port]")
        q = target.find(b"?")
        raw_path = target if q < 0 else target[:q]
        self.query = b"" if q < 0 else target[q:]
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
        self.path = path
        return None

    # ------------------------------------------------------------ the response
    def relay_head(self, status: int, headers: list, connection_tokens, content_length, chunked: bool) -> None:
        """An upstream's response head (hop-by-hop and framing removed by the upstream
        connection): pick the client's framing, let the observer and the response
        hooks see it, write it."""
        if connection_tokens is not None:
            headers = without(headers, tokens(connection_tokens))
        self.status = status
        self.response_headers = headers
        if self.method == b"HEAD" or status in _NO_BODY_STATUS:
            self.mode = NONE
        elif content_length is not None and not chunked:
            self.mode = RAW
        else:
            if content_length is not None:
                self.response_headers = headers = without(headers, {b"content-length"})
            if self.version == "1.1":
                self.mode = CHUNKED
            else:
                self.mode = RAW
                self.keep_alive = False
            if not chunked:
                # Close-delimited upstream response (RFC 9112 §6.3 rule 8).
                self.upstream_delimited = True
        observer = self.observer
        if observer is not None:
            # The observer sees the upstream's own head, before any policy changes it.
            substitute = observer.head(self, status, content_length)
            if substitute is not None:   # stale_if_error: a stored response instead of this failure
                self.abort_upstream()
                self.answer(substitute)
                return
        hooks = self.route.chain.response_hooks
        if hooks:
            for hook in hooks:
                hook(self)
            if self.body_filter is not None and self.mode != NONE:
                # The body changes length as it streams: chunked (or close-delimited for HTTP/1.0).
                self.response_headers = without(self.response_headers, {b"content-length"})
                if self.version == "1.1":
                    self.mode = CHUNKED
                else:
                    self.mode = RAW
                    self.keep_alive = False
        self.write_head()

    def not_modified(self, lines: list[bytes]) -> None:
        """Answer 304 with `lines` instead of the upstream's response, whose body still
        arrives (for the cache) but is not relayed."""
        self.status = 304
        lines.append(self.worker.date_line)   # RFC 9110 §6.6.1: an origin-like answer has Date
        self.response_headers = lines
        self.mode = NONE

    def write_head(self, body: bytes = b"") -> None:
        if self.tracer is not None:
            self.tracer.responding(self)   # its last word on the head (the debug header's Server-Timing)
        line = STATUS_LINES.get(self.status) or status_line(self.status)
        parts = [line, *self.response_headers, b"x-request-id: ", self.request_id, b"\r\n"]
        if self.mode == CHUNKED:
            parts.append(b"transfer-encoding: chunked\r\n")
        if not self.keep_alive:
            parts.append(b"connection: close\r\n\r\n")
        elif self.version == "1.0":
            parts.append(b"connection: keep-alive\r\n\r\n")
        else:
            parts.append(b"\r\n")
        if body:
            parts.append(body)
        self.response = HEAD_SENT
        self.conn.write(b"".join(parts))

    def upstream_body(self, chunk: bytes) -> None:
        if self.finished:
            return
        if self.observer is not None:
            self.observer.body(chunk)
        if self.body_filter is not None:
            chunk = self.body_filter.feed(chunk)
            if not chunk:
                return
        mode = self.mode
        if mode == RAW:
            self.conn.write(chunk)
        elif mode == CHUNKED:
            self.conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            return
        self.bytes_sent += len(chunk)

    def end_body(self) -> None:
        """The upstream's body ended: flush the body filter, end the chunked framing."""
        f = self.body_filter
        if f is not None and self.mode != NONE:
            tail = f.finish()
            if tail:
                self.upstream_body_out(tail)
        if self.mode == CHUNKED:
            self.conn.write(LAST_CHUNK)

    def upstream_body_out(self, chunk: bytes) -> None:
        if self.mode == CHUNKED:
            self.conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            self.conn.write(chunk)
        self.bytes_sent += len(chunk)

    # ------------------------------------------------------------- local answers
    def answer(self, reply: Reply) -> None:
        """Send a local reply (from a policy or the gateway itself)."""
        if self.finished:
            return
        if self.response != WAITING:
            self.conn.abort()
            return
        if self.upstream is not None:
            self.abort_upstream()
        observer = self.observer
        if observer is not None and reply.status >= 500:
            reply = observer.substitute(self, time.time()) or reply   # the cache's stale_if_error
        if reply.problem_fields is None:
            body, content_type = reply.body, None
        else:
            body, content_type = reply.render_body(self.request_id.decode() if self.request_id else "")
        self.status = reply.status
        headers = reply.lines if reply.lines is not None else []   # a reply is answered once: its list is ours
        if reply.headers:
            headers += [b"%s: %s\r\n" % (n.encode("latin-1"), v.encode("latin-1")) for n, v in reply.headers]
        if content_type:
            headers.append(b"content-type: %s\r\n" % content_type.encode())
        no_body = reply.status in _NO_BODY_STATUS
        if not no_body:
            # RFC 9110 §8.6: none on 204, and a 304's would describe the stored body.
            # A HEAD answer states the length the GET body would have (§9.3.2).
            headers.append(b"content-length: %d\r\n" % len(body))
        self.response_headers = headers
        if not self.body_done:
            # The request body is unread; closing is the only safe way on.
            self.keep_alive = False
        route = self.route
        if route is not None and route.chain.response_hooks:
            for hook in route.chain.response_hooks:
                hook(self)
            f = self.body_filter
            if f is not None and body and not no_body:
                body = f.feed(body) + f.finish()
                self.response_headers = without(self.response_headers, {b"content-length"})
                self.response_headers.append(b"content-length: %d\r\n" % len(body))
        headers = self.response_headers
        headers.append(self.worker.date_line)
        if no_body or self.method == b"HEAD":
            self.mode = NONE
            body = b""
        self.write_head(body)   # one write: head and body
        self.bytes_sent = len(body)
        self.response = COMPLETE
        self.finish()

    def abort_upstream(self) -> None:
        """Drop the upstream side (forwarding overrides this; framing alone has none)."""


def _sane_host(host: bytes) -> bool:
    known = _SANE_HOSTS.get(host)
    if known is None:
        known = _SANE_HOST.fullmatch(host) is not None
        if len(_SANE_HOSTS) >= 4096:
            _SANE_HOSTS.clear()   # bounded: made-up hosts cannot grow it
        _SANE_HOSTS[host] = known
    return known
