"""Response compression (docs/contract.md §2 route `compress`): gzip and brotli.

The coding is negotiated from Accept-Encoding with q-values (RFC 9110
§12.5.3; brotli preferred on a tie). Only compressible media types are
compressed, only at or above `min_bytes` (a response of unknown length is
compressed), never a response that already has a Content-Encoding, a 206,
or one marked `Cache-Control: no-transform`. The body is compressed chunk by
chunk as it streams (the response becomes chunked), so memory stays flat for
any size. `Vary: Accept-Encoding` goes on every response of a compressible
type, compressed or not, and a strong ETag becomes weak (the bytes differ).
Cached entries hold the upstream's uncompressed body; hits are compressed
per client.
"""
from __future__ import annotations

import zlib

import brotli

from ..config.schema import Field, Int, ListOf, Schema, Size, Str, section_or_true
from ..pipeline import Policy
from ..registry import PolicyKind

COMPRESSIBLE = ("text/", "application/json", "application/javascript", "application/xml", "application/xhtml+xml",
                "application/problem+json", "application/x-www-form-urlencoded", "image/svg+xml",
                "application/wasm", "application/graphql-response+json")
NEVER = ("text/event-stream",)   # streamed events must not wait in a compressor's buffer


class Compress(Schema):
    min_bytes = Field(Size(), 1024, "smaller responses (by Content-Length) are sent as they are")
    types = Field(ListOf(Str(pattern=r"[A-Za-z0-9!#$&^_.+-]+/?[A-Za-z0-9!#$&^_.+-]*")), (),
                  "media types (or prefixes like text/) to compress; default: text, JSON, JavaScript, XML, SVG")
    codings = Field(ListOf(Str(choices=("br", "gzip"))), ("br", "gzip"), "codings offered, in order of preference")
    gzip_level = Field(Int(min=1, max=9), 5, "zlib level")
    brotli_quality = Field(Int(min=0, max=11), 4, "brotli quality (4 is close to gzip 5 in speed, smaller)")


class GzipStream:
    __slots__ = ("z",)

    def __init__(self, level: int):
        self.z = zlib.compressobj(level, zlib.DEFLATED, 31)   # 31: the gzip container

    def feed(self, chunk: bytes) -> bytes:
        return self.z.compress(chunk)

    def finish(self) -> bytes:
        return self.z.flush()


class BrotliStream:
    __slots__ = ("c",)

    def __init__(self, quality: int):
        self.c = brotli.Compressor(quality=quality)

    def feed(self, chunk: bytes) -> bytes:
        return self.c.process(chunk)

    def finish(self) -> bytes:
        return self.c.finish()


def negotiate(accept_encoding: str | None, offered: tuple[str, ...]) -> str | None:
    """The offered coding the client rates highest (q > 0), ties going to the earlier offered."""
    if not accept_encoding:
        return None
    q_of: dict[str, float] = {}
    for item in accept_encoding.split(","):
        name, _, params = item.strip().partition(";")
        name = name.strip().lower()
        if not name:
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        q_of[name] = q
    best, best_q = None, 0.0
    for coding in offered:
        q = q_of.get(coding, q_of.get("*", 0.0))
        if q > best_q:
            best, best_q = coding, q
    return best


class CompressPolicy(Policy):
    phase = "transform"
    Config = Compress

    def __init__(self, config: Compress, context):
        super().__init__(config, context)
        self.types = tuple(t.lower() for t in config.types) or COMPRESSIBLE
        self.codings = tuple(config.codings)

    def compressible(self, content_type: str | None) -> bool:
        if not content_type:
            return False
        base = content_type.split(";", 1)[0].strip().lower()
        if base.startswith(NEVER):
            return False
        return base.startswith(self.types) or base.endswith(("+json", "+xml"))

    def on_response(self, exchange) -> None:
        status = exchange.status
        if status < 200 or status in (204, 206, 304) or exchange.method == b"HEAD":
            return
        if not self.compressible(exchange.response_header("content-type")):
            return
        exchange.response_headers.append(b"vary: Accept-Encoding\r\n")
        if exchange.response_header("content-encoding") is not None:
            return
        cache_control = exchange.response_header("cache-control")
        if cache_control and "no-transform" in cache_control.lower():
            return
        length = exchange.response_header("content-length")
        size = int(length) if length and length.isdigit() else None
        if size is not None and size < self.config.min_bytes:
            return
        coding = negotiate(exchange.header("accept-encoding"), self.codings)
        if coding is None:
            return
        exchange.add_body_filter(BrotliStream(self.config.brotli_quality) if coding == "br"
                                 else GzipStream(self.config.gzip_level))
        exchange.response_headers.append(b"content-encoding: %s\r\n" % coding.encode())
        etag = exchange.response_header("etag")
        if etag and not etag.startswith("W/"):
            exchange.set_response_header("etag", "W/" + etag)


KIND = PolicyKind("compress", phase=CompressPolicy.phase, key="compress",
                  build=lambda config, context, services: CompressPolicy(config, context) if config is not None else None,
                  field=Field(section_or_true(Compress), None, "gzip/brotli by Accept-Encoding: true or "
                              "{min_bytes, types, codings, gzip_level, brotli_quality}"))
