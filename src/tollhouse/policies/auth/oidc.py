"""Browser logins: an OpenID Connect relying party (docs/auth.md, "Browser logins").

`OidcProvider` runs the authorization code flow with PKCE (S256), driven by the
provider's discovery document:

1. A navigation (a GET whose Accept names text/html) without a session is sent to
   the provider's authorization endpoint with a fresh `state`, `nonce` and PKCE
   challenge. The login under way is kept in the store under its state (ten
   minutes, used once); a cookie binds the state to this browser.
2. The callback (`redirect_path`) takes that login back: the state must match the
   cookie's and be known, `iss` (RFC 9207) the issuer's; the code is exchanged at
   the token endpoint with the PKCE verifier; the ID token is verified (signature
   against the provider's JWKS, `iss`, `aud`, `exp`, and the `nonce` of this login).
   Any mismatch is a 4xx and no session.
3. The session lives in the store (Redis: shared by the fleet, surviving restarts)
   under a random id, the only thing the `Secure; HttpOnly; SameSite=Lax` cookie
   holds. It ends after `session.ttl`, or `session.idle` without a request.
4. Tokens are refreshed in the background before the access token expires (one
   instance of the fleet at a time); the upstream gets the access token in
   `X-Forwarded-Access-Token`.
5. `logout_path` ends the session and, where the provider offers it, sends the
   browser on to its end-session endpoint (RP-initiated logout).

Requests that are not navigations get 401, not a redirect: API clients on the same
route use the route's other providers (a bearer token).
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import secrets
import time
import urllib.parse

import orjson

from ...identity import Identity
from ...pipeline import Reply
from ...registry import noted_index
from . import records
from .providers import AuthFailure, JwtProvider, StoreUnavailable, http_get_json, http_post_form, identity_from_claims

log = logging.getLogger("tollhouse.auth")

LOGIN_TTL = 600.0         # seconds a login under way may take
REFRESH_LEAD = 60.0       # refresh when the access token has less than this left (or a third of its life)
DISCOVERY_RETRY = 5.0
_SESSION_IDS_KEPT = 10000
ACCESS_HEADER = b"x-forwarded-access-token"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def cookie_value(header: str, name: str) -> str | None:
    """The value of cookie `name` in a Cookie header, or None."""
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def is_navigation(exchange) -> bool:
    """A browser loading a page: GET or HEAD asking for HTML (what gets a login redirect)."""
    if exchange.method not in (b"GET", b"HEAD"):
        return False
    accept = exchange.header("accept")
    return bool(accept) and "text/html" in accept


def _origin(exchange) -> str:
    """https://host of this request, as the browser sees it (TLS, or a trusted proxy's X-Forwarded-Proto)."""
    scheme = exchange.conn.scheme.decode() if exchange.conn.scheme else "http"
    forwarded = exchange.header("x-forwarded-proto") if exchange.conn.peer_trusted else None
    if forwarded in ("http", "https"):
        scheme = forwarded
    return f"{scheme}://{exchange.host.decode('latin-1')}"


class _IdTokenConfig:
    """The ID token's verifier: a JwtProvider on the provider's discovered JWKS."""

    def __init__(self, jwks_url: str, issuer: str, audience: str, algorithms, timeout: float):
        self.algorithms = tuple(algorithms)
        self.jwks_url = jwks_url
        self.jwks_refresh = 300.0
        self.issuer = issuer
        self.audience = audience
        self.leeway = 30.0
        self.secret = ""
        self.public_key = ""
        self.timeout = timeout


_SIGNING = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")


class OidcProvider:
    kind = "oidc"

    def __init__(self, name: str, cfg, claims, consumers: dict, directory):
        self.name = name
        self.cfg = cfg
        self.claims = claims
        self.consumers = consumers
        self.directory = directory
        self.issuer = cfg.issuer.rstrip("/")
        self.discovery: dict | None = None
        self.verifier: JwtProvider | None = None
        self.task: asyncio.Task | None = None
        self.ready: asyncio.Future | None = None
        self.refreshing: set[str] = set()
        self.session_ids: dict[str, str] = {}   # Cookie header -> the session id in it ("" none)
        self.cookie = noted_index("cookie")
        self.last = None   # (made, entry) of the session `session` last answered from the cache
        self.state_cookie = cfg.session.cookie + "_state"
        # Last seen is written at most this often: a quarter of the idle time, at most a minute.
        self.seen_every = min(60.0, cfg.session.idle / 4)

    # --- discovery ----------------------------------------------------------------------
    def start(self) -> None:
        if self.task is None:
            self.ready = asyncio.get_running_loop().create_future()
            self.task = asyncio.get_running_loop().create_task(self._discover())

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.verifier is not None:
            self.verifier.close()

    async def _discover(self) -> None:
        loop = asyncio.get_running_loop()
        url = self.issuer + "/.well-known/openid-configuration"
        while True:
            try:
                doc = await loop.run_in_executor(None, http_get_json, url, self.cfg.timeout)
                if doc.get("issuer", "").rstrip("/") != self.issuer:
                    raise ValueError(f"the document names issuer {doc.get('issuer')!r}")
                for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                    if not isinstance(doc.get(key), str):
                        raise ValueError(f"the document has no {key}")
                algorithms = [a for a in doc.get("id_token_signing_alg_values_supported", ["RS256"]) if a in _SIGNING]
                self.verifier = JwtProvider(self.name, _IdTokenConfig(doc["jwks_uri"], doc["issuer"], self.cfg.client_id,
                                                                      algorithms or ["RS256"], self.cfg.timeout),
                                            self.claims, self.consumers)
                self.verifier.start()
                self.discovery = doc
                self.ready.set_result(None)
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the provider may come up later
                log.warning("%s: OpenID discovery from %s failed (%s); retrying in %gs", self.name, url, e,
                            DISCOVERY_RETRY)
                await asyncio.sleep(DISCOVERY_RETRY)

    async def _discovered(self) -> dict:
        self.start()
        if self.discovery is None:
            try:
                await asyncio.wait_for(asyncio.shield(self.ready), self.cfg.timeout)
            except asyncio.TimeoutError:
                raise AuthFailure("provider_unavailable", "the OpenID provider cannot be reached") from None
        return self.discovery

    # --- the request path -----------------------------------------------------------------
    def session(self, exchange, now: float):
        """The Identity of this browser's session, None without one, or an awaitable of either."""
        self.last = None
        header = exchange.noted_value(self.cookie)
        if not header:
            return None
        header = header.decode("latin-1")
        session_id = self.session_ids.get(header)
        if session_id is None:
            session_id = cookie_value(header, self.cfg.session.cookie) or ""
            if len(self.session_ids) >= _SESSION_IDS_KEPT:
                self.session_ids.clear()
            self.session_ids[header] = session_id
        if not session_id:
            return None
        entry = self.directory.session(session_id, now)
        if entry.__class__ is list:
            made = entry[2]
            if made is None or now >= made[1]:
                identity = self._judge(session_id, entry, now)
                made = entry[2]
                if identity is None:
                    return None
            self.last = (made, entry)   # for the policy's shortcut (admitted.py)
            return made[0]
        return self._after_fetch(session_id, entry)

    async def _after_fetch(self, session_id, pending):
        return self._judge(session_id, await pending, time.time())

    def _judge(self, session_id: str, entry: list, now: float) -> Identity | None:
        """Whether the session still holds, what is due (a refresh, a last-seen write), and
        until when the answer stands without looking again (kept in the cache entry)."""
        record = entry[0]
        if record is None:
            return None
        idle_until = record["last_seen"] + self.cfg.session.idle
        if now > idle_until or now >= record["expires"]:
            entry[1] = 0.0
            self._end_later(session_id, record)
            return None
        access_expires = record.get("access_expires")
        if access_expires and now >= access_expires and session_id not in self.refreshing:
            # The access token ran out and could not be refreshed in time: log in again.
            entry[1] = 0.0
            self._end_later(session_id, record)
            return None
        look_again = min(idle_until, record["expires"], record["last_seen"] + self.seen_every)
        if access_expires:
            refresh_at = access_expires - min(REFRESH_LEAD, (access_expires - record["issued"]) / 3)
            if record.get("refresh_token") and session_id not in self.refreshing and now >= refresh_at:
                self._later(self._refresh(session_id, record))
            look_again = min(look_again, access_expires if now >= refresh_at else refresh_at)
        if now - record["last_seen"] >= self.seen_every and session_id not in self.refreshing:
            record["last_seen"] = now   # also in the cached copy: written once
            look_again = min(look_again, now + self.seen_every)
            self._later(self.directory.replace_session(session_id, record))
        made = entry[2]
        identity = made[0] if made is not None and made[2] == record.get("access_token") else \
            self._make_identity(record)
        entry[2] = (identity, max(look_again, now + 0.001), record.get("access_token"))
        return identity

    def _make_identity(self, record: dict) -> Identity:
        """The session's caller: the ID token's claims (as `auth.claims` maps them), the
        scopes granted, and the access token for the upstream."""
        base = identity_from_claims(record["claims"], self.claims, self.consumers, self.name, "oidc")
        identity = Identity(base.consumer, base.tier, base.scopes | frozenset((record.get("scope") or "").split()),
                            base.roles, provider=self.name, credential="oidc", claims=record["claims"])
        identity.rate_limits, identity.limits_key = base.rate_limits, base.limits_key
        if record.get("access_token"):
            identity.upstream_lines += (ACCESS_HEADER + b": " + record["access_token"].encode("latin-1", "replace")
                                        + b"\r\n",)
        return identity

    def _later(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        task.add_done_callback(_report)

    def _end_later(self, session_id: str, record: dict) -> None:
        self._later(self.directory.end_session(session_id, record["consumer"]))

    async def login(self, exchange) -> Reply:
        """The redirect of a navigation without a session."""
        try:
            doc = await self._discovered()
        except AuthFailure as e:
            return Reply.problem(503, "Service Unavailable", e.detail, headers=[("retry-after", "5")])
        state, nonce, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(48)
        redirect_uri = _origin(exchange) + self.cfg.redirect_path
        target = exchange.raw_target.decode("latin-1")
        pending = {"nonce": nonce, "verifier": verifier, "redirect_uri": redirect_uri,
                   "return_to": target if target.startswith("/") and not target.startswith("//") else "/"}
        try:
            await self.directory.store.set(records.login_key(state), orjson.dumps(pending), LOGIN_TTL)
        except Exception as e:  # noqa: BLE001
            return Reply.problem(503, "Service Unavailable", f"the session store is unavailable ({type(e).__name__})")
        query = urllib.parse.urlencode({
            "response_type": "code", "client_id": self.cfg.client_id, "redirect_uri": redirect_uri,
            "scope": " ".join(self.cfg.scopes), "state": state, "nonce": nonce,
            "code_challenge": _b64(hashlib.sha256(verifier.encode()).digest()), "code_challenge_method": "S256"})
        separator = "&" if "?" in doc["authorization_endpoint"] else "?"
        return Reply(302, b"", [("location", doc["authorization_endpoint"] + separator + query),
                                ("set-cookie", self._cookie(self.state_cookie, state, LOGIN_TTL, self.cfg.redirect_path)),
                                ("cache-control", "no-store")])

    def _cookie(self, name: str, value: str, max_age: float, path: str = "/") -> str:
        return f"{name}={value}; Path={path}; Max-Age={int(max_age)}; Secure; HttpOnly; SameSite=Lax"

    # --- the callback -----------------------------------------------------------------------
    async def callback(self, exchange, body: bytes) -> Reply:
        params = dict(urllib.parse.parse_qsl(exchange.query[1:].decode("latin-1") if exchange.query else ""))
        clear_state = ("set-cookie", self._cookie(self.state_cookie, "", 0, self.cfg.redirect_path))
        if "error" in params:
            return Reply.problem(403, "Forbidden", f"the provider refused the login: {params['error']}",
                                 headers=[clear_state])
        state, code = params.get("state"), params.get("code")
        if not state or not code:
            return Reply.problem(400, "Bad Request", "the callback needs code and state", headers=[clear_state])
        if cookie_value(exchange.header("cookie") or "", self.state_cookie) != state:
            return Reply.problem(400, "Bad Request", "the state does not match this browser's login",
                                 headers=[clear_state])
        try:
            raw = await self.directory.store.run(records.TAKE, [records.login_key(state)], [])
        except Exception as e:  # noqa: BLE001
            return Reply.problem(503, "Service Unavailable", f"the session store is unavailable ({type(e).__name__})")
        if not raw:
            return Reply.problem(400, "Bad Request", "unknown or expired login state", headers=[clear_state])
        pending = orjson.loads(raw)
        try:
            doc = await self._discovered()
            if "iss" in params and params["iss"].rstrip("/") != self.issuer:
                raise AuthFailure("wrong_issuer", "the callback names another issuer")
            tokens = await self._token_request({"grant_type": "authorization_code", "code": code,
                                                "redirect_uri": pending["redirect_uri"],
                                                "code_verifier": pending["verifier"]}, doc)
            claims = await self._verified_claims(tokens.get("id_token"))
            if claims.get("nonce") != pending["nonce"]:
                raise AuthFailure("nonce", "the ID token's nonce is not this login's")
        except AuthFailure as e:
            return Reply.problem(401, "Unauthorized", e.detail, headers=[clear_state])
        now = time.time()
        session_id = secrets.token_urlsafe(32)
        record = {"consumer": claims[self.claims.consumer] if isinstance(claims.get(self.claims.consumer), str)
                  else claims.get("sub"), "claims": claims, "created": now, "last_seen": now,
                  "expires": now + self.cfg.session.ttl}
        self._take_tokens(record, tokens, now)
        try:
            await self.directory.save_session(session_id, record, self.cfg.session.ttl)
        except Exception as e:  # noqa: BLE001
            return Reply.problem(503, "Service Unavailable", f"the session store is unavailable ({type(e).__name__})")
        return Reply(302, b"", [("location", pending["return_to"]),
                                ("set-cookie", self._cookie(self.cfg.session.cookie, session_id, self.cfg.session.ttl)),
                                clear_state, ("cache-control", "no-store")])

    async def _token_request(self, form: dict, doc: dict) -> dict:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, http_post_form, doc["token_endpoint"], form,
                                              (self.cfg.client_id, self.cfg.client_secret), self.cfg.timeout)
        except Exception as e:  # noqa: BLE001 - the provider's refusal or trouble
            detail = getattr(e, "code", None)
            raise AuthFailure("token_request", f"the token request failed ({detail or type(e).__name__})") from None

    async def _verified_claims(self, id_token) -> dict:
        if not isinstance(id_token, str):
            raise AuthFailure("id_token", "the provider returned no ID token")
        result = self.verifier.verify(id_token, hashlib.sha256(id_token.encode()).digest(), time.time())
        if result.__class__ is not Identity:
            result = await result
        return result.claims

    @staticmethod
    def _take_tokens(record: dict, tokens: dict, now: float) -> None:
        record["access_token"] = tokens.get("access_token")
        record["scope"] = tokens.get("scope", record.get("scope", ""))
        if tokens.get("refresh_token"):
            record["refresh_token"] = tokens["refresh_token"]
        if tokens.get("id_token"):
            record["id_token"] = tokens["id_token"]
        expires_in = tokens.get("expires_in")
        record["issued"] = now
        record["access_expires"] = now + float(expires_in) if isinstance(expires_in, (int, float)) else None

    async def _refresh(self, session_id: str, record: dict) -> None:
        """New tokens before the access token runs out; one instance of the fleet at a time."""
        self.refreshing.add(session_id)
        store = self.directory.store
        lease = None
        try:
            lease = await store.lock(records.PREFIX + "refresh:" + session_id, 10.0)
            if lease is None:
                return   # another instance refreshes it; its change reaches this one
            doc = await self._discovered()
            tokens = await self._token_request({"grant_type": "refresh_token",
                                                "refresh_token": record["refresh_token"]}, doc)
            updated = dict(record)
            self._take_tokens(updated, tokens, time.time())
            if tokens.get("id_token"):
                updated["claims"] = await self._verified_claims(tokens["id_token"])
            await self.directory.replace_session(session_id, updated)
        except AuthFailure as e:
            log.info("%s: session refresh failed (%s); the session ends when its access token does", self.name,
                     e.detail)
        finally:
            self.refreshing.discard(session_id)
            if lease is not None:
                await store.unlock(records.PREFIX + "refresh:" + session_id, lease)

    # --- logout -----------------------------------------------------------------------------
    async def logout(self, exchange, body: bytes) -> Reply:
        session_id = cookie_value(exchange.header("cookie") or "", self.cfg.session.cookie)
        landing = _origin(exchange) + self.cfg.logout_redirect
        location = self.cfg.logout_redirect
        if session_id:
            try:
                entry = self.directory.session(session_id, time.time())
                if entry.__class__ is not list:
                    entry = await entry
                record = entry[0]
                if record is not None:
                    await self.directory.end_session(session_id, record["consumer"])
                    doc = self.discovery
                    if doc is not None and doc.get("end_session_endpoint"):
                        # RP-initiated logout: the provider ends its own session, then sends the browser back.
                        query = {"client_id": self.cfg.client_id, "post_logout_redirect_uri": landing}
                        if record.get("id_token"):
                            query["id_token_hint"] = record["id_token"]
                        location = doc["end_session_endpoint"] + "?" + urllib.parse.urlencode(query)
            except StoreUnavailable as e:
                return Reply.problem(503, "Service Unavailable", e.detail)
        return Reply(302, b"", [("location", location),
                                ("set-cookie", self._cookie(self.cfg.session.cookie, "", 0)),
                                ("cache-control", "no-store")])

    def local_routes(self) -> list:
        return [("GET", self.cfg.redirect_path, self.callback), ("GET", self.cfg.logout_path, self.logout),
                ("POST", self.cfg.logout_path, self.logout)]


def _report(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("oidc: background work failed: %s", task.exception())
