"""A real identity provider for tests: JWKS document and RFC 7662 introspection over HTTP."""
from __future__ import annotations

import base64
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class IdP:
    def __init__(self):
        self.jwks: dict = {"keys": []}
        self.jwks_fetches = 0
        self.introspections = 0
        self.active_tokens: dict[str, dict] = {}
        self.client = ("gw", "gw-secret")
        self.last_auth = None
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                if self.path == "/jwks.json":
                    idp.jwks_fetches += 1
                    self._json(200, idp.jwks)
                else:
                    self._json(404, {})

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                if self.path != "/introspect":
                    return self._json(404, {})
                idp.introspections += 1
                idp.last_auth = self.headers.get("Authorization")
                expected = "Basic " + base64.b64encode(":".join(idp.client).encode()).decode()
                if idp.last_auth != expected:
                    return self._json(401, {"error": "invalid_client"})
                claims = idp.active_tokens.get(form.get("token"))
                self._json(200, {"active": True, **claims} if claims else {"active": False})

            def _json(self, status, payload):
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "IdP":
        self.thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
