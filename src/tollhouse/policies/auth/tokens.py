"""Minting development tokens (`tollhouse token`, the demo, tests)."""
from __future__ import annotations

import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ...config.schema import parse_duration


def mint(*, subject: str, secret: str | None = None, key_file: str | None = None, scope: str = "", tier: str = "",
         ttl: str | float = "1h", issuer: str = "", audience: str = "", kid: str = "", algorithm: str = "",
         roles=()) -> str:
    now = int(time.time())
    claims = {"sub": subject, "iat": now, "nbf": now, "exp": now + int(parse_duration(ttl))}
    if scope:
        claims["scope"] = scope
    if tier:
        claims["tier"] = tier
    if roles:
        claims["roles"] = list(roles)
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    if secret is not None:
        key, alg = secret, algorithm or "HS256"
    else:
        with open(key_file, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        if isinstance(key, rsa.RSAPrivateKey):
            alg = algorithm or "RS256"
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            alg = algorithm or {"secp256r1": "ES256", "secp384r1": "ES384"}.get(key.curve.name, "ES256")
        elif isinstance(key, ed25519.Ed25519PrivateKey):
            alg = algorithm or "EdDSA"
        else:
            raise ValueError("unsupported key type")
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)
