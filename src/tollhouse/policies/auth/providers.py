"""Credential providers: JWT (secret, PEM key or JWKS), API keys, RFC 7662 introspection.

Each provider's `verify(credential)` returns an Identity, raises AuthFailure
with a reason, or returns a coroutine when it must wait (a JWKS refetch for
an unknown `kid`, an introspection call not in cache). Verified results are
cached by the credential's SHA-256, never past the token's `exp`, so a
repeated token costs a hash and a dictionary lookup instead of a signature
check. Parsing and verification are PyJWT's (on `cryptography`).
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
import urllib.parse
import urllib.request

import jwt
from jwt import PyJWK

from ...identity import Identity
from jwt.exceptions import (DecodeError, InvalidAlgorithmError, InvalidAudienceError, InvalidIssuerError,
                            InvalidKeyError, InvalidSignatureError, InvalidTokenError, MissingRequiredClaimError,
                            PyJWKError)

log = logging.getLogger("tollhouse.auth")

CACHE_MAX = 20000
REFETCH_MIN_INTERVAL = 5.0     # an unknown kid refetches the JWKS at most this often
_FAMILY = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP", "HS": "oct"}


class AuthFailure(Exception):
    """A credential that does not authenticate; `reason` feeds metrics, `detail` the 401."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class StoreUnavailable(AuthFailure):
    """The store could not be asked: the caller gets 503, not 401 (the key may be fine)."""

    def __init__(self, error: BaseException):
        super().__init__("store_unavailable", f"the consumer store is unavailable ({type(error).__name__})")


def _words(value) -> frozenset:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, (list, tuple)):
        return frozenset(str(v) for v in value)
    return frozenset()


def identity_from_claims(claims: dict, names, consumers: dict, provider: str, credential: str) -> Identity:
    consumer = claims.get(names.consumer)
    if not isinstance(consumer, str) or not consumer:
        raise AuthFailure("missing_claim", f"the token has no {names.consumer} claim")
    scopes = _words(claims.get(names.scopes))
    if not scopes and names.scopes == "scope":
        scopes = _words(claims.get("scp"))   # Azure AD / Okta style list
    known = consumers.get(consumer)
    tier = claims.get(names.tier)
    if not isinstance(tier, str) or not tier:
        tier = known.tier if known is not None and known.tier else None
    exp = claims.get("exp")
    if exp is not None and not _numeric_date(exp):
        raise AuthFailure("invalid_claim", "the token's exp claim is not a number")
    identity = Identity(consumer, tier, scopes, _words(claims.get(names.roles)), provider=provider,
                        credential=credential, claims=claims, expires=float(exp) if exp is not None else None)
    if known is not None:
        identity.set_rate_limits(tuple(known.rate_limits))
    return identity


def _numeric_date(value) -> bool:
    """RFC 7519 §2: a NumericDate is a JSON number (a bool is an int to Python, not to JSON)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_time_claims(claims: dict, now: float, leeway: float) -> None:
    """exp, nbf and iat (RFC 7519 §4.1.4-6): each present one a NumericDate (else
    invalid_claim, before any time is compared), then compared with `now` within `leeway`."""
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if value is not None and not _numeric_date(value):
            raise AuthFailure("invalid_claim", f"the token's {name} claim is not a number")
    exp = claims.get("exp")
    if exp is not None and exp <= now - leeway:
        raise AuthFailure("expired", "the token has expired")
    nbf = claims.get("nbf")
    if nbf is not None and nbf > now + leeway:
        raise AuthFailure("not_yet_valid", "the token is not valid yet")
    iat = claims.get("iat")
    if iat is not None and iat > now + leeway:
        raise AuthFailure("not_yet_valid", "the token was issued in the future")


class VerifiedCache:
    """Token hash -> Identity until the token's expiry (bounded)."""

    __slots__ = ("entries",)

    def __init__(self):
        self.entries: dict[bytes, tuple[Identity | AuthFailure, float]] = {}

    def get(self, key: bytes, now: float):
        hit = self.entries.get(key)
        if hit is None:
            return None
        value, until = hit
        if now >= until:
            del self.entries[key]
            return None
        return value

    def lookup(self, key: bytes, now: float) -> Identity | None:
        """A cached identity; a cached failure is raised again; None when unknown."""
        hit = self.get(key, now)
        if isinstance(hit, AuthFailure):
            raise hit
        return hit

    def put(self, key: bytes, value, until: float) -> None:
        entries = self.entries
        if len(entries) >= CACHE_MAX:
            now = time.time()
            for k in [k for k, (_, u) in entries.items() if u <= now]:
                del entries[k]
            if len(entries) >= CACHE_MAX:
                entries.clear()
        entries[key] = (value, until)


def http_get_json(url: str, timeout: float) -> dict:
    """Blocking GET (run in an executor, off the event loop)."""
    req = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "tollhouse"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read(1 << 20))


def http_post_form(url: str, form: dict, basic: tuple[str, str] | None, timeout: float) -> dict:
    data = urllib.parse.urlencode(form).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={
        "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json", "User-Agent": "tollhouse"})
    if basic:
        user, password = (urllib.parse.quote(v, safe="") for v in basic)
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read(1 << 20))


class JwtProvider:
    """A JWT issuer: one key (secret or PEM) or a JWKS kept fresh in the background."""

    kind = "jwt"

    def __init__(self, name: str, cfg, claims, consumers: dict, static_key=None, issuer_override: str | None = None):
        self.name = name
        self.cfg = cfg
        self.claims = claims
        self.consumers = consumers
        self.algorithms = frozenset(cfg.algorithms)
        self.issuer = issuer_override if issuer_override is not None else (cfg.issuer or None)
        self.audience = cfg.audience or None
        self.leeway = cfg.leeway
        self.cache = VerifiedCache()
        self.keys: dict[str | None, PyJWK | object] = {}
        self.last_fetch = 0.0
        self.fetching: asyncio.Future | None = None
        self.refresher: asyncio.Task | None = None
        if static_key is not None:
            self.keys[None] = static_key
        elif cfg.secret:
            self.keys[None] = cfg.secret.encode()
        elif cfg.public_key:
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            with open(cfg.public_key, "rb") as f:
                self.keys[None] = load_pem_public_key(f.read())

    # --- JWKS -----------------------------------------------------------------------
    def start(self) -> None:
        if self.cfg.jwks_url and self.refresher is None:
            self.refresher = asyncio.get_running_loop().create_task(self._refresh_forever())

    def close(self) -> None:
        if self.refresher is not None:
            self.refresher.cancel()

    async def _refresh_forever(self):
        while True:
            await self.fetch_jwks()
            await asyncio.sleep(self.cfg.jwks_refresh)

    async def fetch_jwks(self) -> None:
        """Fetch once (concurrent callers share the fetch); on failure keep the cached keys."""
        if self.fetching is not None:
            await asyncio.shield(self.fetching)
            return
        loop = asyncio.get_running_loop()
        self.fetching = loop.create_future()
        self.last_fetch = time.monotonic()
        try:
            doc = await loop.run_in_executor(None, http_get_json, self.cfg.jwks_url, self.cfg.timeout)
            keys = {}
            for jwk in doc.get("keys", []):
                if jwk.get("use", "sig") != "sig":
                    continue
                try:
                    keys[jwk.get("kid")] = PyJWK(jwk)
                except (PyJWKError, InvalidKeyError, ValueError, TypeError) as e:
                    log.warning("%s: skipping a JWKS key (%s)", self.name, e)
            if keys:
                self.keys = keys
        except Exception as e:  # noqa: BLE001 - an IdP outage must not break cached keys
            log.warning("%s: JWKS fetch from %s failed (%s); keeping %d cached keys", self.name, self.cfg.jwks_url,
                        e, len(self.keys))
        finally:
            fut, self.fetching = self.fetching, None
            fut.set_result(None)

    # --- verification -------------------------------------------------------------------
    def verify(self, token: str, key: bytes, now: float):
        hit = self.cache.lookup(key, now)
        if hit is not None:
            return hit
        try:
            header = jwt.get_unverified_header(token)
        except (DecodeError, InvalidTokenError) as e:
            raise AuthFailure("malformed", f"malformed token: {e}") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            # Covers `none` in any casing and algorithms this provider does not accept.
            raise AuthFailure("algorithm", f"algorithm {alg!r} is not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthFailure("malformed", "kid must be a string")
        signing_key = self._key(kid, alg)
        if signing_key is None:
            if not self.cfg.jwks_url:
                raise AuthFailure("unknown_key", "no key for this token")
            return self._verify_after_refetch(token, key, kid, alg)
        return self._decode(token, key, signing_key, alg, now)

    def _key(self, kid, alg):
        if self.cfg.jwks_url:
            jwk = self.keys.get(kid)
            if jwk is None:
                return None
            family = _FAMILY.get(alg[:2])
            if jwk.key_type != family or (jwk.algorithm_name not in (None, alg) and "alg" in jwk._jwk_data):
                raise AuthFailure("algorithm", f"key {kid!r} is not a {alg} key")
            return jwk.key
        return self.keys.get(None)

    async def _verify_after_refetch(self, token, key, kid, alg):
        if time.monotonic() - self.last_fetch >= REFETCH_MIN_INTERVAL or self.fetching is not None:
            await self.fetch_jwks()
        signing_key = self._key(kid, alg)
        if signing_key is None:
            raise AuthFailure("unknown_key", f"unknown key id {kid!r}")
        return self._decode(token, key, signing_key, alg, time.time())

    def _decode(self, token, key, signing_key, alg, now):
        # PyJWT checks the signature, the issuer, the audience and that exp is present;
        # the time claims are checked below, after their types: PyJWT reads them with
        # int(), so "exp": true would be "expired" and "nbf": "123" or true would pass.
        try:
            claims = jwt.decode(token, signing_key, algorithms=[alg], audience=self.audience, issuer=self.issuer,
                                options={"require": ["exp"], "verify_aud": self.audience is not None,
                                         "verify_exp": False, "verify_nbf": False, "verify_iat": False})
        except InvalidIssuerError:
            raise AuthFailure("wrong_issuer", "the token's issuer is not accepted") from None
        except InvalidAudienceError:
            raise AuthFailure("wrong_audience", "the token's audience is not accepted") from None
        except InvalidSignatureError:
            raise AuthFailure("bad_signature", "the token's signature does not verify") from None
        except MissingRequiredClaimError as e:
            raise AuthFailure("missing_claim", f"the token has no {e.claim} claim") from None
        except (InvalidAlgorithmError, InvalidKeyError):
            raise AuthFailure("algorithm", "the token's algorithm does not fit the key") from None
        except DecodeError as e:
            raise AuthFailure("malformed", f"malformed token: {e}") from None
        except InvalidTokenError as e:
            raise AuthFailure("invalid", f"invalid token: {e}") from None
        check_time_claims(claims, now, self.leeway)
        identity = identity_from_claims(claims, self.claims, self.consumers, self.name, "jwt")
        self.cache.put(key, identity, identity.expires + self.leeway)
        return identity


class ApiKeyProvider:
    """Keys of the config file's consumers (by SHA-256), then the keys made at run time
    (`directory`, policies/auth/directory.py): a verify answers an Identity, raises
    AuthFailure, or returns an awaitable when the store must be asked."""

    kind = "api_key"

    def __init__(self, name: str, cfg, consumers, directory=None):
        self.name = name
        self.header = (cfg.header or ("" if cfg.query else "X-API-Key")).lower()
        self.query = cfg.query
        self.directory = directory
        # sha256 digest -> the config file's consumer; the lookup is by hash, the final check constant-time.
        self.by_hash: dict[bytes, object] = {}
        self.identities: dict[str, Identity] = {}
        for c in consumers:
            for hashed in c.api_keys:
                self.by_hash[bytes.fromhex(hashed[len("sha256:"):])] = c

    def verify(self, presented: str):
        digest = hashlib.sha256(presented.encode()).digest()
        consumer = self.by_hash.get(digest)
        if consumer is None:
            if self.directory is not None:
                return self.directory.lookup(digest, self.name, time.time())
            raise AuthFailure("invalid_key", "the API key is not valid")
        for hashed in consumer.api_keys:
            if hmac.compare_digest(bytes.fromhex(hashed[len("sha256:"):]), digest):
                return self._identity(consumer)
        raise AuthFailure("invalid_key", "the API key is not valid")

    def _identity(self, consumer) -> Identity:
        identity = self.identities.get(consumer.id)
        if identity is None:
            identity = Identity(consumer.id, consumer.tier or None, frozenset(consumer.scopes),
                                frozenset(consumer.roles), provider=self.name, credential="api_key")
            identity.set_rate_limits(tuple(consumer.rate_limits))
            self.identities[consumer.id] = identity
        return identity


class IntrospectionProvider:
    """RFC 7662: ask the authorisation server, cache by token hash."""

    kind = "introspection"

    def __init__(self, name: str, cfg, claims, consumers: dict):
        self.name = name
        self.cfg = cfg
        self.claims = claims
        self.consumers = consumers
        self.cache = VerifiedCache()

    def verify(self, token: str, key: bytes, now: float):
        hit = self.cache.lookup(key, now)
        if hit is not None:
            return hit
        return self._introspect(token, key)

    async def _introspect(self, token, key):
        cfg = self.cfg
        basic = (cfg.client_id, cfg.client_secret) if cfg.client_id else None
        try:
            answer = await asyncio.get_running_loop().run_in_executor(
                None, http_post_form, cfg.url, {"token": token, "token_type_hint": "access_token"}, basic, cfg.timeout)
        except Exception as e:  # noqa: BLE001 - the IdP's trouble is a 401 here, not a 500
            raise AuthFailure("introspection_error", f"token introspection failed: {type(e).__name__}") from None
        now = time.time()
        if not answer.get("active"):
            failure = AuthFailure("inactive", "the token is not active")
            self.cache.put(key, failure, now + cfg.inactive_ttl)
            raise failure
        if cfg.issuer and answer.get("iss") != cfg.issuer:
            raise AuthFailure("wrong_issuer", "the token's issuer is not accepted")
        if cfg.audience:
            aud = answer.get("aud")
            if cfg.audience not in (aud if isinstance(aud, list) else [aud]):
                raise AuthFailure("wrong_audience", "the token's audience is not accepted")
        if "sub" not in answer and "username" in answer:
            answer = {**answer, "sub": answer["username"]}
        identity = identity_from_claims(answer, self.claims, self.consumers, self.name, "introspection")
        until = now + cfg.cache_ttl
        if identity.expires is not None:
            until = min(until, identity.expires)
        if until > now:
            self.cache.put(key, identity, until)
        return identity
