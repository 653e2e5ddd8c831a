"""Client certificates as credentials: the `mtls` provider (docs/auth.md, "Client certificates").

The listener asks for a client certificate when `tls.client_ca` is set and lets
OpenSSL verify it against those CAs: one from another CA fails the handshake, so
any certificate seen here is verified. The provider maps it to a consumer id
(`consumer_from`); a consumer of that id in the config file lends it its tier,
scopes, roles and limits. A certificate is read once per connection.
"""
from __future__ import annotations

import hashlib
import weakref

from ...identity import Identity

_IDENTITIES_KEPT = 10000


class ClientCertificate:
    """What a verified client certificate says: its SHA-256 fingerprint (hex, of the DER
    form), subject CN, SAN DNS names and SAN URIs."""

    __slots__ = ("fingerprint", "subject_cn", "san_dns", "san_uri")

    def __init__(self, der: bytes, info: dict):
        self.fingerprint = hashlib.sha256(der).hexdigest()
        self.subject_cn = next((value for rdn in info.get("subject", ()) for name, value in rdn
                                if name == "commonName"), None)
        sans = info.get("subjectAltName", ())
        self.san_dns = tuple(value for kind, value in sans if kind == "DNS")
        self.san_uri = tuple(value for kind, value in sans if kind == "URI")


# ssl object -> its ClientCertificate (None: none presented), read once per connection.
_READ: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def client_certificate(conn) -> ClientCertificate | None:
    """The verified client certificate of an exchange's connection (`exchange.conn`: a
    client connection, or an HTTP/2 stream whose `connection` holds the socket)."""
    owner = getattr(conn, "connection", None)
    transport = (owner if owner is not None else conn).transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    try:
        return _READ[ssl_object]
    except KeyError:
        pass
    der = ssl_object.getpeercert(binary_form=True)
    certificate = ClientCertificate(der, ssl_object.getpeercert() or {}) if der else None
    _READ[ssl_object] = certificate
    return certificate


class MtlsProvider:
    kind = "mtls"

    def __init__(self, name: str, cfg, consumers: dict):
        self.name = name
        self.source = cfg.consumer_from
        self.consumers = consumers
        self.identities: dict[str, Identity] = {}   # fingerprint -> Identity

    def consumer_of(self, certificate: ClientCertificate) -> str | None:
        source = self.source
        if source == "subject_cn":
            return certificate.subject_cn
        if source == "san_dns":
            return certificate.san_dns[0] if certificate.san_dns else None
        if source == "san_uri":
            return certificate.san_uri[0] if certificate.san_uri else None
        return certificate.fingerprint

    def identify(self, certificate: ClientCertificate) -> Identity | None:
        """The caller a verified certificate names, or None when it lacks the field read."""
        identity = self.identities.get(certificate.fingerprint)
        if identity is not None:
            return identity
        consumer = self.consumer_of(certificate)
        if not consumer:
            return None
        known = self.consumers.get(consumer)
        if known is not None:
            identity = Identity(consumer, known.tier or None, frozenset(known.scopes), frozenset(known.roles),
                                provider=self.name, credential="mtls")
            identity.set_rate_limits(tuple(known.rate_limits))
        else:
            identity = Identity(consumer, None, frozenset(), frozenset(), provider=self.name, credential="mtls")
        if len(self.identities) >= _IDENTITIES_KEPT:
            self.identities.clear()
        self.identities[certificate.fingerprint] = identity
        return identity
