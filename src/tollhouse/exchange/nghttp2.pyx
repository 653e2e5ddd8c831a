# cython: language_level=3
"""HTTP/2 framing by nghttp2 (the C library, Debian's libnghttp2): a thin binding.

`Session` wraps one nghttp2 session, server or client side. nghttp2 parses
and writes frames, keeps HPACK state and flow-control windows, and checks
RFC 9113 §8's rules on messages (pseudo-headers, connection-specific
headers, `te`, lower-case names, content-length against DATA); what it
finds it hands to an owner object by stream id:

    owner.h2_headers(stream_id, category, headers, end_stream, oversize, method, path, authority)
        a complete header block: a list of (name, value) bytes pairs;
        category is REQUEST / RESPONSE / HEADERS (trailers, 1xx finals);
        oversize: the block passed `max_header_list_size` (its fields are
        not all kept); on a server, a request's :method, :path and
        :authority come as the last three (None when absent), not in `headers`
    owner.h2_data(stream_id, data)     a piece of a stream's body
    owner.h2_end(stream_id)            the peer ended the stream (after DATA)
    owner.h2_closed(stream_id, code)   the stream is closed (code: RST or 0)
    owner.h2_drained(stream_id)        a stream's queued body fell below LOW
    owner.h2_goaway(last_stream_id, code)   (a client session's peer said GOAWAY)
    owner.h2_settings()                the peer's SETTINGS arrived

Bytes leave through `pending()`, which the owner writes to its transport.
Bodies to send are queued per stream (`send_data`, `end_data`) and pulled
by nghttp2 as the peer's windows allow. Nothing here is written in Python
the library does itself: no frame, no HPACK, no window arithmetic.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memchr, memcmp, memcpy
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

cdef extern from "nghttp2/nghttp2.h":
    # nghttp2_session is declared in nghttp2.pxd.
    ctypedef struct nghttp2_session_callbacks
    ctypedef struct nghttp2_option

    ctypedef struct nghttp2_nv:
        uint8_t *name
        uint8_t *value
        size_t namelen
        size_t valuelen
        uint8_t flags

    ctypedef struct nghttp2_frame_hd:
        size_t length
        int32_t stream_id
        uint8_t type
        uint8_t flags

    ctypedef struct nghttp2_headers:
        nghttp2_frame_hd hd
        int cat

    ctypedef struct nghttp2_rst_stream:
        nghttp2_frame_hd hd
        uint32_t error_code

    ctypedef struct nghttp2_goaway:
        nghttp2_frame_hd hd
        int32_t last_stream_id
        uint32_t error_code

    ctypedef union nghttp2_frame:
        nghttp2_frame_hd hd
        nghttp2_headers headers
        nghttp2_rst_stream rst_stream
        nghttp2_goaway goaway

    ctypedef union nghttp2_data_source:
        int fd
        void *ptr

    ctypedef ssize_t (*nghttp2_data_source_read_callback)(
        nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
        uint32_t *data_flags, nghttp2_data_source *source, void *user_data)

    ctypedef struct nghttp2_data_provider:
        nghttp2_data_source source
        nghttp2_data_source_read_callback read_callback

    ctypedef struct nghttp2_settings_entry:
        int32_t settings_id
        uint32_t value

    ctypedef int (*nghttp2_on_frame_recv_callback)(nghttp2_session *, const nghttp2_frame *, void *)
    ctypedef int (*nghttp2_on_data_chunk_recv_callback)(nghttp2_session *, uint8_t, int32_t, const uint8_t *,
                                                         size_t, void *)
    ctypedef int (*nghttp2_on_stream_close_callback)(nghttp2_session *, int32_t, uint32_t, void *)
    ctypedef int (*nghttp2_on_begin_headers_callback)(nghttp2_session *, const nghttp2_frame *, void *)
    ctypedef int (*nghttp2_on_frame_send_callback)(nghttp2_session *, const nghttp2_frame *, void *)
    ctypedef int (*nghttp2_on_header_callback)(nghttp2_session *, const nghttp2_frame *, const uint8_t *, size_t,
                                               const uint8_t *, size_t, uint8_t, void *)

    enum:
        NGHTTP2_ERR_DEFERRED
        NGHTTP2_ERR_CALLBACK_FAILURE
        NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
        NGHTTP2_DATA_FLAG_EOF
        NGHTTP2_DATA_FLAG_NO_END_STREAM
        NGHTTP2_FLAG_NONE
        NGHTTP2_FLAG_END_STREAM
        NGHTTP2_NV_FLAG_NONE
        NGHTTP2_NV_FLAG_NO_INDEX
        NGHTTP2_DATA
        NGHTTP2_HEADERS
        NGHTTP2_RST_STREAM
        NGHTTP2_SETTINGS
        NGHTTP2_GOAWAY
        NGHTTP2_HCAT_REQUEST
        NGHTTP2_HCAT_RESPONSE
        NGHTTP2_HCAT_HEADERS
        NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS
        NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
        NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE
        NGHTTP2_SETTINGS_ENABLE_PUSH
        NGHTTP2_SETTINGS_MAX_FRAME_SIZE
        NGHTTP2_NO_ERROR
        NGHTTP2_PROTOCOL_ERROR
        NGHTTP2_INTERNAL_ERROR
        NGHTTP2_REFUSED_STREAM
        NGHTTP2_CANCEL
        NGHTTP2_ENHANCE_YOUR_CALM

    int nghttp2_session_callbacks_new(nghttp2_session_callbacks **)
    void nghttp2_session_callbacks_del(nghttp2_session_callbacks *)
    void nghttp2_session_callbacks_set_on_frame_recv_callback(nghttp2_session_callbacks *, nghttp2_on_frame_recv_callback)
    void nghttp2_session_callbacks_set_on_data_chunk_recv_callback(nghttp2_session_callbacks *,
                                                                   nghttp2_on_data_chunk_recv_callback)
    void nghttp2_session_callbacks_set_on_stream_close_callback(nghttp2_session_callbacks *,
                                                                nghttp2_on_stream_close_callback)
    void nghttp2_session_callbacks_set_on_begin_headers_callback(nghttp2_session_callbacks *,
                                                                 nghttp2_on_begin_headers_callback)
    void nghttp2_session_callbacks_set_on_header_callback(nghttp2_session_callbacks *, nghttp2_on_header_callback)
    void nghttp2_session_callbacks_set_on_frame_send_callback(nghttp2_session_callbacks *,
                                                              nghttp2_on_frame_send_callback)

    int nghttp2_option_new(nghttp2_option **)
    void nghttp2_option_del(nghttp2_option *)
    void nghttp2_option_set_no_auto_window_update(nghttp2_option *, int)
    void nghttp2_option_set_peer_max_concurrent_streams(nghttp2_option *, uint32_t)
    void nghttp2_option_set_no_recv_client_magic(nghttp2_option *, int)
    void nghttp2_option_set_stream_reset_rate_limit(nghttp2_option *, uint64_t, uint64_t)
    void nghttp2_option_set_max_continuations(nghttp2_option *, size_t)
    void nghttp2_option_set_max_settings(nghttp2_option *, size_t)

    int nghttp2_session_server_new2(nghttp2_session **, const nghttp2_session_callbacks *, void *,
                                    const nghttp2_option *)
    int nghttp2_session_client_new2(nghttp2_session **, const nghttp2_session_callbacks *, void *,
                                    const nghttp2_option *)
    void nghttp2_session_del(nghttp2_session *)
    ssize_t nghttp2_session_mem_recv(nghttp2_session *, const uint8_t *, size_t)
    ssize_t nghttp2_session_mem_send(nghttp2_session *, const uint8_t **)
    int nghttp2_session_want_read(nghttp2_session *)
    int nghttp2_session_want_write(nghttp2_session *)
    int nghttp2_session_resume_data(nghttp2_session *, int32_t)
    int nghttp2_session_consume_connection(nghttp2_session *, size_t)
    int nghttp2_session_consume_stream(nghttp2_session *, int32_t, size_t)
    int nghttp2_session_terminate_session(nghttp2_session *, uint32_t)
    int nghttp2_session_terminate_session2(nghttp2_session *, int32_t, uint32_t)
    int32_t nghttp2_session_get_last_proc_stream_id(nghttp2_session *)
    uint32_t nghttp2_session_get_remote_settings(nghttp2_session *, int)
    int nghttp2_session_get_stream_remote_close(nghttp2_session *, int32_t)
    int nghttp2_session_get_stream_local_close(nghttp2_session *, int32_t)
    int nghttp2_session_check_request_allowed(nghttp2_session *)
    int nghttp2_submit_settings(nghttp2_session *, uint8_t, const nghttp2_settings_entry *, size_t)
    int nghttp2_submit_response(nghttp2_session *, int32_t, const nghttp2_nv *, size_t, const nghttp2_data_provider *)
    int32_t nghttp2_submit_request(nghttp2_session *, const void *, const nghttp2_nv *, size_t,
                                   const nghttp2_data_provider *, void *)
    int32_t nghttp2_submit_headers(nghttp2_session *, uint8_t, int32_t, const void *, const nghttp2_nv *, size_t,
                                   void *)
    int nghttp2_submit_trailer(nghttp2_session *, int32_t, const nghttp2_nv *, size_t)
    int nghttp2_submit_rst_stream(nghttp2_session *, uint8_t, int32_t, uint32_t)
    int nghttp2_submit_goaway(nghttp2_session *, uint8_t, int32_t, uint32_t, const uint8_t *, size_t)
    int nghttp2_submit_shutdown_notice(nghttp2_session *)
    const char *nghttp2_strerror(int)

# Header block categories, as the owner sees them.
REQUEST = NGHTTP2_HCAT_REQUEST
RESPONSE = NGHTTP2_HCAT_RESPONSE
HEADERS = NGHTTP2_HCAT_HEADERS
# Error codes (RFC 9113 §7).
NO_ERROR = NGHTTP2_NO_ERROR
PROTOCOL_ERROR = NGHTTP2_PROTOCOL_ERROR
INTERNAL_ERROR = NGHTTP2_INTERNAL_ERROR
REFUSED_STREAM = NGHTTP2_REFUSED_STREAM
CANCEL = NGHTTP2_CANCEL
ENHANCE_YOUR_CALM = NGHTTP2_ENHANCE_YOUR_CALM

#: The client connection preface (RFC 9113 §3.4): how a cleartext HTTP/2 client is told apart.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# A stream's queued body: the owner is told when it falls below LOW after passing HIGH.
cdef Py_ssize_t HIGH = 256 * 1024
cdef Py_ssize_t LOW = 64 * 1024


cdef dict _STATUSES = {}


cdef bytes _status(int status):
    """`:status` as bytes, made once per code."""
    cdef bytes text = _STATUSES.get(status)
    if text is None:
        text = _STATUSES[status] = str(status).encode()
    return text


class Http2Error(Exception):
    """The session cannot go on (a connection error); the owner closes the connection."""


cdef class Outgoing:
    """A stream's body waiting for the peer's window: chunks, how much, whether it ended."""
    cdef list chunks
    cdef Py_ssize_t offset, size
    cdef bint ended, deferred, full
    cdef object trailers
    cdef int32_t stream_id

    def __cinit__(self, int32_t stream_id):
        self.chunks = []
        self.stream_id = stream_id


cdef ssize_t _read_body(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                        uint32_t *data_flags, nghttp2_data_source *source, void *user_data) noexcept:
    cdef Session self = <Session>user_data
    cdef Outgoing out = <Outgoing>source.ptr
    cdef size_t copied = 0
    cdef Py_ssize_t take
    cdef bytes chunk
    while copied < length and out.chunks:
        chunk = <bytes>out.chunks[0]
        take = PyBytes_GET_SIZE(chunk) - out.offset
        if <size_t>take > length - copied:
            take = length - copied
        memcpy(buf + copied, PyBytes_AS_STRING(chunk) + out.offset, take)
        copied += take
        out.offset += take
        if out.offset == PyBytes_GET_SIZE(chunk):
            del out.chunks[0]
            out.offset = 0
    out.size -= copied
    if not out.chunks:
        if out.ended:
            data_flags[0] |= NGHTTP2_DATA_FLAG_EOF
            if out.trailers is not None:
                data_flags[0] |= NGHTTP2_DATA_FLAG_NO_END_STREAM
                self._submit_trailer(stream_id, out.trailers)
        elif copied == 0:
            out.deferred = True
            return NGHTTP2_ERR_DEFERRED
    if out.full and out.size < LOW:
        out.full = False
        try:
            self.owner.h2_drained(stream_id)
        except BaseException as e:  # noqa
            return self._failed(e)
    return copied


cdef int _on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) noexcept:
    cdef Session self = <Session>user_data
    self.block = []
    self.block_size = 0
    self.block_oversize = False
    self.pseudo_method = self.pseudo_path = self.pseudo_authority = None
    return 0


cdef int _on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                    const uint8_t *value, size_t valuelen, uint8_t flags, void *user_data) noexcept:
    cdef Session self = <Session>user_data
    # RFC 9113 §6.5.2: a field's size is its name's and value's lengths plus 32.
    self.block_size += namelen + valuelen + 32
    if self.block_size > self.max_header_list_size:
        self.block_oversize = True
        return 0
    if self.server and namelen and name[0] == b':':
        # A request's :method, :path and :authority go to the owner as arguments of their
        # own (nghttp2 has checked there is one of each and nothing unknown).
        if namelen == 7 and memcmp(name, b":method", 7) == 0:
            self.pseudo_method = PyBytes_FromStringAndSize(<char *>value, valuelen)
            return 0
        if namelen == 5 and memcmp(name, b":path", 5) == 0:
            self.pseudo_path = PyBytes_FromStringAndSize(<char *>value, valuelen)
            return 0
        if namelen == 10 and memcmp(name, b":authority", 10) == 0:
            self.pseudo_authority = PyBytes_FromStringAndSize(<char *>value, valuelen)
            return 0
    self.block.append((PyBytes_FromStringAndSize(<char *>name, namelen),
                       PyBytes_FromStringAndSize(<char *>value, valuelen)))
    return 0


cdef int _on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) noexcept:
    cdef Session self = <Session>user_data
    cdef int kind = frame.hd.type
    cdef bint end_stream = (frame.hd.flags & NGHTTP2_FLAG_END_STREAM) != 0
    if kind == NGHTTP2_HEADERS:
        block = self.block
        self.block = None
        if block is None:
            block = []
        # Called directly, not through _call: no argument tuple on the path of every request.
        try:
            self.owner.h2_headers(frame.hd.stream_id, frame.headers.cat, block, end_stream, self.block_oversize,
                                  self.pseudo_method, self.pseudo_path, self.pseudo_authority)
        except BaseException as e:  # noqa
            return self._failed(e)
        return 0
    if kind == NGHTTP2_DATA:
        if end_stream:
            try:
                self.owner.h2_end(frame.hd.stream_id)
            except BaseException as e:  # noqa
                return self._failed(e)
        return 0
    if kind == NGHTTP2_RST_STREAM:
        self.resets_received += 1
        if self.max_resets_per_second:
            # Rapid reset (CVE-2023-44487): counted here, as each frame is parsed, so a burst
            # in one read is cut off at the limit and not after the whole read.
            now = _monotonic()
            if now - self.reset_window >= 1.0:
                self.reset_window = now
                self.resets_in_window = 0
            self.resets_in_window += 1
            if self.resets_in_window > self.max_resets_per_second and not self.calmed:
                self.calmed = True
                nghttp2_session_terminate_session(session, NGHTTP2_ENHANCE_YOUR_CALM)
        return 0
    if kind == NGHTTP2_GOAWAY:
        try:
            self.owner.h2_goaway(frame.goaway.last_stream_id, frame.goaway.error_code)
        except BaseException as e:  # noqa
            return self._failed(e)
        return 0
    if kind == NGHTTP2_SETTINGS:
        try:
            self.owner.h2_settings()
        except BaseException as e:  # noqa
            return self._failed(e)
    return 0


cdef int _on_data(nghttp2_session *session, uint8_t flags, int32_t stream_id, const uint8_t *data, size_t length,
                  void *user_data) noexcept:
    cdef Session self = <Session>user_data
    # The connection's window is given back at once; the stream's when the owner has
    # used the bytes (consume): a paused stream holds its own window, not its neighbours'.
    nghttp2_session_consume_connection(session, length)
    try:
        self.owner.h2_data(stream_id, PyBytes_FromStringAndSize(<char *>data, length))
    except BaseException as e:  # noqa
        return self._failed(e)
    return 0


cdef int _on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) noexcept:
    cdef Session self = <Session>user_data
    if (frame.hd.flags & NGHTTP2_FLAG_END_STREAM) and self.reset_after_end \
            and frame.hd.stream_id in self.reset_after_end:
        self.reset_after_end.discard(frame.hd.stream_id)
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame.hd.stream_id, NGHTTP2_NO_ERROR)
    return 0


cdef double _monotonic() noexcept:
    cdef timespec now
    clock_gettime(CLOCK_MONOTONIC, &now)
    return now.tv_sec + now.tv_nsec * 1e-9


cdef int _on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                          void *user_data) noexcept:
    cdef Session self = <Session>user_data
    self.outgoing.pop(stream_id, None)
    self.reset_after_end.discard(stream_id)
    try:
        self.owner.h2_closed(stream_id, error_code)
    except BaseException as e:  # noqa
        return self._failed(e)
    return 0


cdef nghttp2_session_callbacks *_CALLBACKS = NULL


cdef nghttp2_session_callbacks *_callbacks():
    global _CALLBACKS
    if _CALLBACKS == NULL:
        nghttp2_session_callbacks_new(&_CALLBACKS)
        nghttp2_session_callbacks_set_on_frame_recv_callback(_CALLBACKS, _on_frame_recv)
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(_CALLBACKS, _on_data)
        nghttp2_session_callbacks_set_on_stream_close_callback(_CALLBACKS, _on_stream_close)
        nghttp2_session_callbacks_set_on_begin_headers_callback(_CALLBACKS, _on_begin_headers)
        nghttp2_session_callbacks_set_on_header_callback(_CALLBACKS, _on_header)
        nghttp2_session_callbacks_set_on_frame_send_callback(_CALLBACKS, _on_frame_send)
    return _CALLBACKS


cdef bint _connection_specific(const char *name, Py_ssize_t length) noexcept:
    """Connection-specific fields (RFC 9113 §8.2.2, `name` lower case): never sent in HTTP/2,
    whatever a response from an HTTP/1.1 upstream carried."""
    if length == 10:
        return memcmp(name, b"connection", 10) == 0 or memcmp(name, b"keep-alive", 10) == 0
    if length == 7:
        return memcmp(name, b"upgrade", 7) == 0
    if length == 16:
        return memcmp(name, b"proxy-connection", 16) == 0
    if length == 17:
        return memcmp(name, b"transfer-encoding", 17) == 0
    return False


cdef class SessionOwner:
    """What a session calls back: each call does nothing unless its owner's class says
    otherwise (the calls are C calls, not lookups by name)."""

    cpdef h2_headers(self, int stream_id, int category, list headers, bint end_stream, bint oversize, method, path,
                     authority):
        pass

    cpdef h2_data(self, int stream_id, data):
        pass

    cpdef h2_end(self, int stream_id):
        pass

    cpdef h2_closed(self, int stream_id, int code):
        pass

    cpdef h2_drained(self, int stream_id):
        pass

    cpdef h2_goaway(self, int last_stream_id, int code):
        pass

    cpdef h2_settings(self):
        pass


#: A closed session's owner: nothing left to call back (and no cycle to its old owner).
cdef SessionOwner _NO_OWNER = SessionOwner()


cdef class Session:
    """One HTTP/2 connection's state, server or client side (see the module's doc)."""

    def __cinit__(self, SessionOwner owner not None, bint server, dict settings):
        """`settings`: max_concurrent_streams, initial_window_size, max_header_list_size,
        max_resets_per_second (a server's), all optional."""
        cdef nghttp2_option *option
        cdef nghttp2_settings_entry entries[4]
        cdef int count = 0
        cdef int rc
        self.server = server
        self.outgoing = {}
        self.reset_after_end = set()
        self.owner = owner
        self.max_header_list_size = settings.get("max_header_list_size", 65536)
        nghttp2_option_new(&option)
        nghttp2_option_set_no_auto_window_update(option, 1)
        # CONTINUATION floods (CVE-2024-28182): a header block in at most this many frames.
        nghttp2_option_set_max_continuations(option, 8)
        nghttp2_option_set_max_settings(option, 32)
        resets = settings.get("max_resets_per_second")
        if resets:
            # GOAWAY ENHANCE_YOUR_CALM past `resets` in a second (_on_frame_recv); the
            # library's own limit (GOAWAY INTERNAL_ERROR) stays behind it as a backstop.
            self.max_resets_per_second = resets
            nghttp2_option_set_stream_reset_rate_limit(option, 4 * resets + 1000, 2 * resets)
        if server:
            rc = nghttp2_session_server_new2(&self.session, _callbacks(), <void *>self, option)
        else:
            rc = nghttp2_session_client_new2(&self.session, _callbacks(), <void *>self, option)
        nghttp2_option_del(option)
        if rc != 0:
            raise MemoryError("nghttp2: cannot make a session")
        if "max_concurrent_streams" in settings:
            entries[count].settings_id = NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS
            entries[count].value = settings["max_concurrent_streams"]
            count += 1
        if "initial_window_size" in settings:
            entries[count].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
            entries[count].value = settings["initial_window_size"]
            count += 1
        if "max_header_list_size" in settings:
            entries[count].settings_id = NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE
            entries[count].value = settings["max_header_list_size"]
            count += 1
        if not server:
            entries[count].settings_id = NGHTTP2_SETTINGS_ENABLE_PUSH
            entries[count].value = 0
            count += 1
        nghttp2_submit_settings(self.session, NGHTTP2_FLAG_NONE, entries, count)

    def __dealloc__(self):
        if self.session != NULL:
            nghttp2_session_del(self.session)
            self.session = NULL

    cdef int _failed(self, e) noexcept:
        # An owner's exception ends the session (kept, raised by receive()); it must
        # not unwind through C.
        if self.failure is None:
            self.failure = e
        return NGHTTP2_ERR_CALLBACK_FAILURE

    def close(self):
        """Break the owner's cycle; the session is unusable after."""
        self.owner = _NO_OWNER
        self.outgoing = {}
        if self.session != NULL:
            nghttp2_session_del(self.session)
            self.session = NULL

    # ---------------------------------------------------------------- reading
    cpdef receive(self, bytes data):
        """Feed bytes read from the peer. Raises Http2Error when the connection must end
        (nghttp2 has queued its GOAWAY: write `pending()` before closing)."""
        cdef ssize_t rc
        if self.session == NULL:
            return
        rc = nghttp2_session_mem_recv(self.session, <const uint8_t *>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure
        if rc < 0:
            raise Http2Error(nghttp2_strerror(<int>rc).decode())

    cpdef consume(self, int32_t stream_id, size_t length):
        """The owner used `length` bytes of a stream's body: its window may open again."""
        if self.session != NULL and length:
            nghttp2_session_consume_stream(self.session, stream_id, length)

    # ---------------------------------------------------------------- writing
    cpdef bytes pending(self):
        """What the session has to send now (b"" when nothing)."""
        cdef const uint8_t *data
        cdef ssize_t n
        if self.session == NULL:
            return b""
        parts = None
        first = b""
        while True:
            n = nghttp2_session_mem_send(self.session, &data)
            if n <= 0:
                break
            piece = PyBytes_FromStringAndSize(<char *>data, n)
            if parts is not None:
                parts.append(piece)
            elif first:
                parts = [first, piece]
            else:
                first = piece
        if parts is not None:
            return b"".join(parts)
        return first

    cpdef bint wants(self):
        """Whether the session has anything left to read or write (False: close)."""
        if self.session == NULL:
            return False
        return nghttp2_session_want_read(self.session) or nghttp2_session_want_write(self.session)

    cpdef bint respond(self, int32_t stream_id, int status, list lines, bytes request_id, bytes body, bint more):
        """Submit a response head: `lines` are HTTP/1-style header lines (b"Name: value\\r\\n"),
        then X-Request-ID; `body` (may be empty) is queued at once, and with `more` the body
        goes on (`send_data`, `end_data`), else the response ends with it. One call per
        response: each call from Python costs a lookup and a dispatch."""
        cdef Outgoing out = None
        cdef nghttp2_data_provider provider
        cdef bint has_body = more or PyBytes_GET_SIZE(body) > 0
        cdef int rc
        if has_body:
            out = Outgoing(stream_id)
            self.outgoing[stream_id] = out
            provider.source.ptr = <void *>out
            provider.read_callback = _read_body
            if PyBytes_GET_SIZE(body):
                out.chunks.append(body)
                out.size = PyBytes_GET_SIZE(body)
            out.ended = not more
        rc = self._submit_lines(stream_id, _status(status), lines, [(b"x-request-id", request_id)],
                                &provider if has_body else NULL, 0)
        if rc != 0:
            self.outgoing.pop(stream_id, None)
        return rc == 0

    cpdef interim(self, int32_t stream_id, int status):
        """A 1xx head (100 Continue)."""
        self._submit_lines(stream_id, _status(status), [], [], NULL, 1)

    def request(self, list pairs, list lines, bint has_body):
        """Submit a request (client side): `pairs` the pseudo-headers and any (name, value),
        then HTTP/1-style `lines`. The new stream's id, or a negative nghttp2 error."""
        cdef Outgoing out = None
        cdef nghttp2_data_provider provider
        cdef int32_t stream_id
        if has_body:
            out = Outgoing(0)
            provider.source.ptr = <void *>out
            provider.read_callback = _read_body
        stream_id = self._submit_lines(0, None, lines, pairs, &provider if has_body else NULL, 2)
        if stream_id > 0 and has_body:
            out.stream_id = stream_id
            self.outgoing[stream_id] = out
        return stream_id

    cdef int _submit_lines(self, int32_t stream_id, bytes status, list lines, list pairs, void *data_provider,
                           int how):
        """how: 0 a response, 1 an interim head, 2 a request (returns its stream id), 3 trailers.
        An item of `lines` may hold several header lines (a policy's, joined)."""
        cdef Py_ssize_t count = len(pairs) + 1, n = 0, size, start, end, at, colon, names = 0, i
        cdef const char *text
        cdef const char *found
        cdef char *lower
        cdef char *lowered = NULL
        cdef char c
        cdef bytes line, name, value
        cdef nghttp2_nv *nva
        cdef const nghttp2_data_provider *provider = <const nghttp2_data_provider *>data_provider
        cdef int rc
        for line in lines:
            size = PyBytes_GET_SIZE(line)
            names += size
            text = PyBytes_AS_STRING(line)
            at = 0
            while at < size:
                found = <const char *>memchr(text + at, b'\n', size - at)
                count += 1
                if found == NULL:
                    break
                at = found - text + 1
        nva = <nghttp2_nv *>malloc(count * sizeof(nghttp2_nv))
        # The lower-cased names, side by side in one buffer (nghttp2 copies them on submit).
        lowered = <char *>malloc(names + 1)
        if nva == NULL or lowered == NULL:
            free(nva)
            free(lowered)
            raise MemoryError()
        lower = lowered
        try:
            if status is not None:
                nva[n].name = <uint8_t *>b":status"
                nva[n].namelen = 7
                nva[n].value = <uint8_t *>PyBytes_AS_STRING(status)
                nva[n].valuelen = PyBytes_GET_SIZE(status)
                nva[n].flags = NGHTTP2_NV_FLAG_NONE
                n += 1
            for name, value in pairs:
                nva[n].name = <uint8_t *>PyBytes_AS_STRING(name)
                nva[n].namelen = PyBytes_GET_SIZE(name)
                nva[n].value = <uint8_t *>PyBytes_AS_STRING(value)
                nva[n].valuelen = PyBytes_GET_SIZE(value)
                # A request id is new on every message: kept out of the HPACK table, where it
                # would only push out the fields that repeat (and lengthen every lookup).
                nva[n].flags = NGHTTP2_NV_FLAG_NO_INDEX if name == b"x-request-id" else NGHTTP2_NV_FLAG_NONE
                n += 1
            for line in lines:
                text = PyBytes_AS_STRING(line)
                size = PyBytes_GET_SIZE(line)
                at = 0
                while at < size and n < count:
                    found = <const char *>memchr(text + at, b'\n', size - at)
                    end = size if found == NULL else found - text
                    start = at
                    at = end + 1
                    found = <const char *>memchr(text + start, b':', end - start)
                    if found == NULL:
                        continue
                    colon = found - text
                    if colon == start:
                        continue
                    for i in range(colon - start):
                        c = text[start + i]
                        lower[i] = c + 32 if b'A' <= c <= b'Z' else c
                    if _connection_specific(lower, colon - start):
                        continue
                    nva[n].name = <uint8_t *>lower
                    nva[n].namelen = colon - start
                    lower += colon - start
                    colon += 1
                    while colon < end and (text[colon] == b' ' or text[colon] == b'\t'):
                        colon += 1
                    while end > colon and (text[end - 1] == b'\r' or text[end - 1] == b' ' or text[end - 1] == b'\t'):
                        end -= 1
                    nva[n].value = <uint8_t *>(text + colon)
                    nva[n].valuelen = end - colon
                    nva[n].flags = NGHTTP2_NV_FLAG_NONE
                    n += 1
            if how == 0:
                rc = nghttp2_submit_response(self.session, stream_id, nva, n, provider)
            elif how == 1:
                rc = nghttp2_submit_headers(self.session, NGHTTP2_FLAG_NONE, stream_id, NULL, nva, n, NULL)
            elif how == 2:
                rc = nghttp2_submit_request(self.session, NULL, nva, n, provider, NULL)
            else:
                rc = nghttp2_submit_trailer(self.session, stream_id, nva, n)
        finally:
            free(nva)
            free(lowered)
        return rc

    cdef _submit_trailer(self, int32_t stream_id, list lines):
        self._submit_lines(stream_id, None, lines, [], NULL, 3)

    cpdef bint send_data(self, int32_t stream_id, bytes chunk):
        """Queue a piece of a stream's body. True when the queue passed HIGH: the owner
        pauses the body's source until `h2_drained`."""
        cdef Outgoing out = self.outgoing.get(stream_id)
        if out is None or out.ended:
            return False
        out.chunks.append(chunk)
        out.size += PyBytes_GET_SIZE(chunk)
        if out.deferred:
            out.deferred = False
            nghttp2_session_resume_data(self.session, stream_id)
        if out.size > HIGH and not out.full:
            out.full = True
            return True
        return False

    cpdef end_data(self, int32_t stream_id, trailers=None):
        """The body ends (with `trailers`, HTTP/1-style lines, when given)."""
        cdef Outgoing out = self.outgoing.get(stream_id)
        if out is None or out.ended:
            return
        out.ended = True
        out.trailers = trailers or None
        if out.deferred:
            out.deferred = False
            nghttp2_session_resume_data(self.session, stream_id)

    cpdef Py_ssize_t queued(self, int32_t stream_id):
        """Bytes of a stream's body still waiting for the peer's window."""
        cdef Outgoing out = self.outgoing.get(stream_id)
        return out.size if out is not None else 0

    cpdef reset_when_ended(self, int32_t stream_id):
        """RST_STREAM NO_ERROR once the response has ended (END_STREAM sent): the peer
        stops sending a request body nobody reads (RFC 9113 §8.1)."""
        if self.session == NULL:
            return
        if nghttp2_session_get_stream_local_close(self.session, stream_id) == 1:
            nghttp2_submit_rst_stream(self.session, NGHTTP2_FLAG_NONE, stream_id, NGHTTP2_NO_ERROR)
        else:
            self.reset_after_end.add(stream_id)

    cpdef reset(self, int32_t stream_id, uint32_t code):
        """RST_STREAM: the stream ends now, for both sides."""
        if self.session != NULL:
            nghttp2_submit_rst_stream(self.session, NGHTTP2_FLAG_NONE, stream_id, code)

    cpdef goaway(self, uint32_t code, bint graceful=True):
        """GOAWAY. Graceful (a drain): streams already begun finish. Otherwise the session
        ends: no stream is processed after the last one begun."""
        if self.session == NULL:
            return
        if graceful:
            nghttp2_submit_goaway(self.session, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(self.session),
                                  code, NULL, 0)
        else:
            nghttp2_session_terminate_session(self.session, code)

    def remote_setting(self, int setting_id):
        return nghttp2_session_get_remote_settings(self.session, setting_id) if self.session != NULL else 0

    @property
    def peer_max_concurrent_streams(self):
        return self.remote_setting(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS)

    def request_allowed(self):
        """A client session may open another stream (no GOAWAY received)."""
        return self.session != NULL and nghttp2_session_check_request_allowed(self.session) != 0

    cpdef bint remote_closed(self, int32_t stream_id):
        """The peer has ended its side of the stream."""
        return self.session != NULL and nghttp2_session_get_stream_remote_close(self.session, stream_id) == 1

