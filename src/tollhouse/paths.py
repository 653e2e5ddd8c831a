"""Request-path normalisation: one spelling per resource before routing.

Routing on the raw path would let `/public/../admin`, `/%61dmin`, `//admin`
or `/public/..;/admin` reach the admin upstream while matching a different
route's policies. So the path is normalised once, the route is chosen on the
normal form, and the upstream receives the normal form (nothing else).

Rules (RFC 3986 §6.2.2 plus what upstream servers are known to interpret):
- percent-encodings of unreserved characters are decoded (`%61` -> `a`,
  `%2e` -> `.`); other encodings are kept, with upper-case hex;
- `;params` are removed from every segment (Tomcat/Spring read `..;` as `..`);
- empty segments (`//`) are merged;
- `.` and `..` segments are resolved (RFC 3986 §5.2.4), never above `/`;
- encoded `/` (`%2F`), `\\` and `%5C`, `%00` and non-ASCII are refused
  (400): upstreams disagree about what they mean.
"""
from __future__ import annotations

import re

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_SUSPECT = re.compile(rb"%|/\.|//|;|\\")


class BadPath(ValueError):
    """The path cannot be given one safe meaning."""


def normalise_path(raw: bytes) -> bytes:
    """Return the normal form of an origin-form path (no query)."""
    if not raw.startswith(b"/"):
        raise BadPath("the path must start with /")
    # Fast path: nearly every real request is already normal. (One regex
    # search: `bytes in bytes` raises and clears a TypeError internally.)
    if _SUSPECT.search(raw) is None:
        return raw
    if raw.find(b"\\") >= 0:
        raise BadPath("backslash in path")
    decoded = _decode_unreserved(raw)
    segments = []
    for seg in decoded.split(b"/")[1:]:
        semi = seg.find(b";")
        if semi >= 0:
            seg = seg[:semi]
        if seg == b"" or seg == b".":
            continue
        if seg == b"..":
            if segments:
                segments.pop()
            continue
        segments.append(seg)
    out = b"/" + b"/".join(segments)
    # A trailing slash is part of the resource's name; keep it.
    if len(out) > 1 and (decoded.endswith(b"/") or decoded.endswith(b"/.") or decoded.endswith(b"/..")):
        out += b"/"
    return out


def _decode_unreserved(raw: bytes) -> bytes:
    if raw.find(b"%") < 0:
        return raw
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c != 0x25:  # '%'
            out.append(c)
            i += 1
            continue
        hexpair = raw[i + 1:i + 3]
        if len(hexpair) != 2 or hexpair[0] not in _HEX or hexpair[1] not in _HEX:
            raise BadPath("malformed percent-encoding")
        value = int(hexpair, 16)
        if value in _UNRESERVED:
            out.append(value)
        elif value in (0x2F, 0x5C):
            raise BadPath("encoded slash or backslash in path")
        elif value == 0:
            raise BadPath("encoded NUL in path")
        else:
            out += b"%" + hexpair.upper()
        i += 3
    return bytes(out)
