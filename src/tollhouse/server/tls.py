"""TLS termination: the listener's SSLContext from `tls` (docs/configuration.md, "TLS").

Profiles follow Mozilla's server-side TLS guidelines (version 5.7):
`intermediate` (the default) is TLS 1.2 with AEAD ECDHE suites only, and
TLS 1.3; `modern` is TLS 1.3 only. `min_version`, `ciphers` and `curves`
override a profile's choice.
"""
from __future__ import annotations

import ctypes
import logging
import ssl

from ..config.schema import Field, Kind, ListOf, OneOf, Schema, Str, error_at, is_map
from ..registry import Section

log = logging.getLogger("tollhouse.tls")

#: Mozilla "intermediate": forward secrecy and AEAD only (no CBC, no RSA key exchange).
INTERMEDIATE_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384", "DHE-RSA-CHACHA20-POLY1305"))
#: The key-exchange groups of both profiles (OpenSSL's default adds x448, P-521 and FFDHE).
PROFILE_CURVES = ("X25519", "prime256v1", "secp384r1")
PROFILES = {
    "intermediate": (ssl.TLSVersion.TLSv1_2, INTERMEDIATE_CIPHERS),
    "modern": (ssl.TLSVersion.TLSv1_3, INTERMEDIATE_CIPHERS),   # TLS 1.3 suites are all AEAD
}
VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

_SSL_CTRL_SET_GROUPS_LIST = 92   # OpenSSL's SSL_CTX_set1_groups_list() is this SSL_CTX_ctrl()


def server_context(tls, load_cert: bool = True, http2: bool = False) -> ssl.SSLContext | None:
    """The listener's context for `tls`, or None without it; raises ValueError
    ("tls.KEY: what is wrong") on settings OpenSSL refuses. ALPN offers `tls.alpn`,
    without h2 unless `http2` is served."""
    if tls is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    minimum, ciphers = PROFILES[tls.profile]
    ctx.minimum_version = VERSIONS[tls.min_version] if tls.min_version else minimum
    try:
        ctx.set_ciphers(tls.ciphers or ciphers)
    except ssl.SSLError:
        raise ValueError(f"tls.ciphers: OpenSSL accepts none of {tls.ciphers!r}") from None
    set_groups(ctx, tuple(tls.curves) or PROFILE_CURVES)
    if load_cert:
        try:
            ctx.load_cert_chain(tls.cert, tls.key)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"tls.cert: cannot load {tls.cert} with {tls.key}: {e}") from None
    if tls.client_ca:
        # Client certificates are asked for, not required: a route decides (an `mtls`
        # provider answers 401 without one). One that does not verify fails the handshake.
        ctx.verify_mode = ssl.CERT_OPTIONAL
        try:
            ctx.load_verify_locations(tls.client_ca)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"tls.client_ca: cannot load {tls.client_ca}: {e}") from None
    ctx.set_alpn_protocols([p for p in tls.alpn if p != "h2" or http2] or ["http/1.1"])
    return ctx


def set_groups(ctx: ssl.SSLContext, names: tuple[str, ...]) -> None:
    """Restrict the key-exchange groups. Python's ssl module only offers one curve
    (`set_ecdh_curve`) before 3.13's `set_groups`; for several, OpenSSL's own
    SSL_CTX_set1_groups_list is called on the context, found through the pointer
    CPython keeps first in its SSLContext object and checked before use."""
    if hasattr(ctx, "set_groups"):
        ctx.set_groups(":".join(names))
        return
    if len(names) == 1:
        try:
            ctx.set_ecdh_curve(names[0])
        except ValueError:
            raise ValueError(f"tls.curves: unknown curve {names[0]!r}") from None
        return
    libssl, pointer = _openssl_handle(ctx)
    if libssl is None:
        log.warning("tls.curves: cannot restrict to %s with this Python's ssl module; using %s only",
                    ", ".join(names), names[0])
        set_groups(ctx, names[:1])
        return
    if libssl.SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, ":".join(names).encode()) != 1:
        raise ValueError(f"tls.curves: OpenSSL refuses {':'.join(names)!r}")


def _openssl_handle(ctx: ssl.SSLContext):
    """(libssl, SSL_CTX pointer) when both can be found and agree with `ctx`, else (None, None)."""
    try:
        import _ssl

        libssl = ctypes.CDLL(_ssl.__file__)   # its symbols include the libssl it is linked with
        libssl.SSL_CTX_ctrl.restype = ctypes.c_long
        libssl.SSL_CTX_ctrl.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p)
        libssl.SSL_CTX_get_options.restype = ctypes.c_uint64
        libssl.SSL_CTX_get_options.argtypes = (ctypes.c_void_p,)
        pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
        # The pointer is the context's only if OpenSSL reports the options Python set.
        if pointer and libssl.SSL_CTX_get_options(pointer) == int(ctx.options):
            return libssl, pointer
    except (OSError, AttributeError, ValueError):
        pass
    return None, None


class Tls(Schema):
    cert = Field(Str(), doc="PEM certificate chain file")
    key = Field(Str(), doc="PEM private key file")
    profile = Field(Str(choices=("intermediate", "modern")), "intermediate",
                    "Mozilla's server profile: intermediate (TLS 1.2 AEAD suites and TLS 1.3) or modern (TLS 1.3 only)")
    min_version = Field(Str(choices=("1.2", "1.3")), "", "lowest TLS version accepted (default: the profile's)")
    ciphers = Field(Str(), "", "OpenSSL cipher list for TLS 1.2 (default: the profile's)")
    alpn = Field(ListOf(Str(choices=("h2", "http/1.1"))), ("h2", "http/1.1"), "protocols offered by ALPN, "
                 "in order of preference (h2 only where HTTP/2 is served: docs/http2.md)")
    curves = Field(ListOf(Str()), (), "key-exchange groups, e.g. [X25519, prime256v1] "
                   "(default: X25519, prime256v1, secp384r1)")
    client_ca = Field(Str(), "", "PEM file of the CAs whose client certificates are accepted: enables "
                           "client certificates (asked for, verified; `mtls` auth providers use them)")

    def check(self, path, lines, line, errors):
        try:   # ciphers, curves and the client CAs as OpenSSL takes them (cert and key: when the listener starts)
            server_context(self, load_cert=False)
        except ValueError as e:
            error_at(errors, path, str(e).split(":", 1)[0].split(".")[-1], lines, line, str(e).split(": ", 1)[1])


#: The listener's `tls:` section (installed by tollhouse.builtins).
SECTION = Section("tls", Field(OneOf((lambda v: v is None, Kind()), (is_map, Tls)), None,
                               "TLS termination: {cert, key, profile, min_version, ciphers, curves, alpn, "
                               "client_ca}"))


def follow_reloads(listener: ssl.SSLContext, current) -> None:
    """A reload's new context (its certificate, key and client CAs read again) serves new
    connections without rebinding: the listener's context hands each handshake over to
    `current()` as it starts (OpenSSL's servername callback runs for every ClientHello,
    with or without SNI). What cannot change this way is whether client certificates
    are asked for at all: that is set when the connection is made (docs/auth.md)."""

    def hand_over(ssl_object, server_name, context):
        now = current()
        if now is not None and now is not context:
            ssl_object.context = now

    listener.sni_callback = hand_over
