"""A client connection stand-in for exchanges made without sockets."""
from tollhouse.exchange.http1 import HTTP1, forwarded_prefix


class Connection:
    """What an exchange reads of its client connection; `written` is what it was given."""

    worker = None
    codec = HTTP1
    peer_ip = "10.1.2.3"
    peer_ip_bytes = b"10.1.2.3"
    scheme = b"http"
    peer_trusted = False
    forwarded = forwarded_prefix(b"10.1.2.3", b"http")

    def __init__(self):
        self.written = []

    def write(self, data):
        self.written.append(data)
