"""The built-in policy kinds, registered in the order of their route keys in the
config reference (each kind is declared beside its handler and schema)."""
from __future__ import annotations

from ..registry import register
from . import aggregate, auth, cache, compress, cors, grpc, headers, ip, ratelimit, request, websocket

KINDS = tuple(register(module.KIND) for module in (auth, ratelimit, cache, ip, cors, request, compress, headers,
                                                   aggregate, websocket, grpc))
