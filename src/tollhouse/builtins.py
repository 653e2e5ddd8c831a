"""What the gateway is made of: the built-in policy kinds (in the order of their route
keys in the config reference), the top-level sections declared outside a kind, and the
upstream protocols. The top (the command line, a test's set-up) hands them to the
registry with `install()`; nothing below the top imports this module."""
from __future__ import annotations

from . import registry
from .observability import debug, tracing
from .policies import (aggregate, auth, cache, compress, cors, graphql, grpc, headers, ip, mirror, ratelimit, request,
                       split, waf, websocket)
from . import monitoring
from .exchange import http1
from .server import http2, tls
from .upstream import http2 as upstream_http2

KINDS = tuple(module.KIND for module in (auth, ratelimit, cache, ip, cors, request, compress, headers, aggregate,
                                          websocket, grpc, split)) + (split.STICKY, split.ROLLBACK, mirror.KIND, waf.KIND,
                                                                       graphql.KIND, monitoring.KIND)
#: The order request hooks run in; a kind may add a phase of its own (PolicyKind.new_phase).
#: `access` is the custom policies' default.
PHASES = ("ip", "inspect", "cors", "auth", "ratelimit", "validate", "cache", "access", "transform")
SECTIONS = (tls.SECTION, http2.SECTION, tracing.SECTION, debug.SECTION, monitoring.SECTION)
PROTOCOLS = (http1.PROTOCOL, upstream_http2.H2C, upstream_http2.HTTP2, grpc.PROTOCOL)


def install() -> registry.Installed:
    """Hand the registry the built-ins (again: the same result)."""
    return registry.install(KINDS, SECTIONS, PROTOCOLS, PHASES)
