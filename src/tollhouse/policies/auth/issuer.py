"""The built-in OAuth 2.0 server: token endpoint, revocation (RFC 7009), JWKS.

- `client_credentials` (RFC 6749 §4.4) with `client_secret_basic` or
  `client_secret_post`; requested scopes must be a subset of the consumer's.
- Access tokens are JWTs signed with the configured key (RS256 or EdDSA) and
  carrying `kid`; routes accept them through the provider `self`.
- With `refresh_ttl`, a refresh token is issued too. It is stored only as its
  SHA-256 in the store, rotated on every use; presenting an already used one
  revokes its whole family (RFC 9700 §4.14.2 reuse detection).
- Every token response carries `Cache-Control: no-store` (RFC 6749 §5.1).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
import urllib.parse

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from ...pipeline import Reply
from ...store.base import Script

_NO_STORE = [("cache-control", "no-store"), ("pragma", "no-cache")]
REFRESH_PREFIX = "th:rt:v1:"
FAMILY_PREFIX = "th:rtf:v1:"


def _claim_refresh(store, keys, args, now):
    """Memory twin of claim_refresh.lua: take an unused refresh token, or report reuse."""
    record = store.read(keys[0])
    if record is None:
        return None
    data = json.loads(record)
    if data.get("used"):
        return b"reused:" + data["family"].encode()
    data["used"] = True
    ttl = store.expiry.get(keys[0], now + 1) - now
    store.write(keys[0], json.dumps(data).encode(), max(ttl, 0.001))
    return record


CLAIM_REFRESH = Script("claim_refresh", """
local record = redis.call('GET', KEYS[1])
if not record then return false end
local data = cjson.decode(record)
if data['used'] then return 'reused:' .. data['family'] end
data['used'] = true
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 1 then ttl = 1 end
redis.call('SET', KEYS[1], cjson.encode(data), 'PX', ttl)
return record
""", _claim_refresh)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenIssuer:
    def __init__(self, cfg, consumers, store):
        self.cfg = cfg
        self.store = store
        self.by_client = {c.client_id: c for c in consumers if c.client_id}
        with open(cfg.signing_key, "rb") as f:
            self.private_key = serialization.load_pem_private_key(f.read(), password=None)
        public = self.private_key.public_key()
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            self.algorithm = "RS256"
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))
        elif isinstance(self.private_key, ed25519.Ed25519PrivateKey):
            self.algorithm = "EdDSA"
            jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(public))
        else:
            raise ValueError("auth.token_endpoint.signing_key must be an RSA or Ed25519 private key")
        der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.kid = cfg.kid or _b64(hashlib.sha256(der).digest())[:16]
        self.public_key = public
        jwk.update({"kid": self.kid, "alg": self.algorithm, "use": "sig"})
        self.jwks = json.dumps({"keys": [jwk]}).encode()

    # --- endpoints -----------------------------------------------------------------------
    def jwks_endpoint(self, exchange, body: bytes) -> Reply:
        return Reply(200, self.jwks, [("cache-control", "public, max-age=300")], "application/json")

    async def token_endpoint(self, exchange, body: bytes) -> Reply:
        form = _form(exchange, body)
        if form is None:
            return _oauth_error(400, "invalid_request", "the body must be application/x-www-form-urlencoded")
        consumer = self._client(exchange, form)
        if isinstance(consumer, Reply):
            return consumer
        grant = form.get("grant_type")
        if grant == "client_credentials":
            allowed = set(consumer.scopes)
            wanted = set(form["scope"].split()) if form.get("scope") else allowed
            if not wanted <= allowed:
                return _oauth_error(400, "invalid_scope", "the requested scope exceeds the client's")
            return await self._tokens(consumer, sorted(wanted), family=None)
        if grant == "refresh_token" and self.cfg.refresh_ttl:
            return await self._refresh(consumer, form)
        return _oauth_error(400, "unsupported_grant_type", f"grant_type {grant!r} is not supported")

    async def revoke_endpoint(self, exchange, body: bytes) -> Reply:
        form = _form(exchange, body)
        if form is None or "token" not in form:
            return _oauth_error(400, "invalid_request", "token is required")
        consumer = self._client(exchange, form)
        if isinstance(consumer, Reply):
            return consumer
        # Refresh tokens are revoked with their family. Access tokens are
        # short-lived JWTs and are not tracked (RFC 7009 §2.2 allows this);
        # unknown tokens get 200 too (§2.2).
        key = REFRESH_PREFIX + hashlib.sha256(form["token"].encode()).hexdigest()
        record = await self.store.get(key)
        if record is not None:
            data = json.loads(record)
            if data.get("client") == consumer.client_id:
                await self._revoke_family(data["family"])
        return Reply(200, b"", list(_NO_STORE))

    # --- internals --------------------------------------------------------------------------
    def _client(self, exchange, form):
        """client_secret_basic or client_secret_post (RFC 6749 §2.3.1)."""
        client_id = secret = None
        auth = exchange.header("authorization")
        if auth and auth[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(auth[6:].strip(), validate=True).decode()
                user, _, password = decoded.partition(":")
                client_id, secret = urllib.parse.unquote_plus(user), urllib.parse.unquote_plus(password)
            except (ValueError, UnicodeDecodeError):
                pass
        elif "client_id" in form:
            client_id, secret = form.get("client_id"), form.get("client_secret", "")
        consumer = self.by_client.get(client_id or "")
        presented = "sha256:" + hashlib.sha256((secret or "").encode()).hexdigest()
        expected = consumer.client_secret if consumer is not None and consumer.client_secret else "sha256:" + "0" * 64
        if consumer is None or not hmac.compare_digest(presented.encode(), expected.encode()):
            reply = _oauth_error(401, "invalid_client", "client authentication failed")
            reply.headers.append(("www-authenticate", 'Basic realm="tollhouse"'))
            return reply
        return consumer

    async def _tokens(self, consumer, scopes: list[str], family: str | None) -> Reply:
        now = int(time.time())
        claims = {"iss": self.cfg.issuer, "sub": consumer.id, "iat": now, "nbf": now,
                  "exp": now + int(self.cfg.access_ttl), "jti": _b64(os.urandom(12)), "client_id": consumer.client_id,
                  "scope": " ".join(scopes)}
        if consumer.tier:
            claims["tier"] = consumer.tier
        if consumer.roles:
            claims["roles"] = list(consumer.roles)
        if self.cfg.audience:
            claims["aud"] = self.cfg.audience
        access = jwt.encode(claims, self.private_key, algorithm=self.algorithm, headers={"kid": self.kid})
        payload = {"access_token": access, "token_type": "Bearer", "expires_in": int(self.cfg.access_ttl),
                   "scope": " ".join(scopes)}
        if self.cfg.refresh_ttl:
            family = family or _b64(os.urandom(12))
            refresh = _b64(os.urandom(32))
            record = json.dumps({"family": family, "consumer": consumer.id, "client": consumer.client_id,
                                 "scopes": scopes, "used": False}).encode()
            await self.store.set(REFRESH_PREFIX + hashlib.sha256(refresh.encode()).hexdigest(), record,
                                 self.cfg.refresh_ttl)
            payload["refresh_token"] = refresh
        return Reply.json(200, payload, headers=list(_NO_STORE))

    async def _refresh(self, consumer, form) -> Reply:
        token = form.get("refresh_token")
        if not token:
            return _oauth_error(400, "invalid_request", "refresh_token is required")
        key = REFRESH_PREFIX + hashlib.sha256(token.encode()).hexdigest()
        claimed = await self.store.run(CLAIM_REFRESH, [key], [])
        if claimed is None:
            return _oauth_error(400, "invalid_grant", "the refresh token is not valid")
        if isinstance(claimed, str):
            claimed = claimed.encode()
        if claimed.startswith(b"reused:"):
            await self._revoke_family(claimed[len(b"reused:"):].decode())
            return _oauth_error(400, "invalid_grant", "the refresh token was already used; its family is revoked")
        data = json.loads(claimed)
        if data.get("client") != consumer.client_id:
            return _oauth_error(400, "invalid_grant", "the refresh token belongs to another client")
        if await self.store.get(FAMILY_PREFIX + data["family"]) is not None:
            return _oauth_error(400, "invalid_grant", "the refresh token's family is revoked")
        scopes = data["scopes"]
        if form.get("scope"):
            wanted = form["scope"].split()
            if not set(wanted) <= set(scopes):
                return _oauth_error(400, "invalid_scope", "the requested scope exceeds the original grant")
            scopes = sorted(wanted)
        return await self._tokens(consumer, scopes, data["family"])

    async def _revoke_family(self, family: str) -> None:
        await self.store.set(FAMILY_PREFIX + family, b"revoked", self.cfg.refresh_ttl or 86400)


def _form(exchange, body: bytes) -> dict | None:
    ctype = (exchange.header("content-type") or "").split(";")[0].strip().lower()
    if body and ctype != "application/x-www-form-urlencoded":
        return None
    try:
        pairs = urllib.parse.parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        return None
    return dict(pairs)


def _oauth_error(status: int, error: str, description: str) -> Reply:
    """RFC 6749 §5.2 error body (not problem+json: OAuth clients expect this shape)."""
    return Reply.json(status, {"error": error, "error_description": description}, headers=list(_NO_STORE))
