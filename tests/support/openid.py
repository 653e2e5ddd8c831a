"""A real OpenID provider for tests (the npm package oidc-provider, run by
tests/support/oidc/provider.js; `make test` installs it) and a scripted browser
that logs in through its development login and consent pages."""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
import urllib.parse
import http.client

from .processes import free_port, wait_for

OIDC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "oidc")


def available() -> bool:
    return shutil.which("node") is not None and os.path.isdir(os.path.join(OIDC_DIR, "node_modules", "oidc-provider"))


class OpenIdProvider:
    """`OpenIdProvider(redirect_uris, logout_uris, access_ttl).start()`; `.issuer`, `.token_requests()`."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.proc = None
        self.log = os.path.join(tempfile.mkdtemp(prefix="tollhouse-oidc-"), "provider.log")

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, redirect_uris: list[str], logout_uris: list[str], access_ttl: int = 3600) -> "OpenIdProvider":
        self.proc = subprocess.Popen(["node", "provider.js", str(self.port), ",".join(redirect_uris),
                                      ",".join(logout_uris), str(access_ttl)], cwd=OIDC_DIR,
                                     stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)
        wait_for(lambda: "ready" in self.output() or self.proc.poll() is not None, timeout=20)
        if self.proc.poll() is not None:
            raise RuntimeError(f"the OpenID provider did not start:\n{self.output()}")
        return self

    def output(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()

    def token_requests(self) -> list[dict]:
        return [json.loads(line) for line in self.output().splitlines() if line.startswith('{"token_request"')]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        if os.path.exists(self.log):
            os.unlink(self.log)


class Browser:
    """Cookies per host:port (path-scoped, `Secure` ignored on loopback as browsers do for
    localhost), no automatic redirects: each step is looked at."""

    def __init__(self):
        self.cookies: dict[tuple[str, str], tuple[str, str]] = {}   # (host:port, name) -> (value, path)

    def request(self, url: str, method: str = "GET", form: dict | None = None, headers: dict | None = None):
        """(status, headers as a list of pairs, body)."""
        parts = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(parts.netloc, timeout=10)
        path = parts.path or "/"
        target = path + ("?" + parts.query if parts.query else "")
        sent = {"Accept": "text/html,application/xhtml+xml", **(headers or {})}
        cookie = "; ".join(f"{name}={value}" for (host, name), (value, cpath) in self.cookies.items()
                           if host == parts.netloc and path.startswith(cpath))
        if cookie:
            sent["Cookie"] = cookie
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, target, body=body, headers=sent)
        r = conn.getresponse()
        data = r.read()
        pairs = r.getheaders()
        conn.close()
        for name, value in pairs:
            if name.lower() == "set-cookie":
                self._store(parts.netloc, value)
        return r.status, pairs, data

    def _store(self, host: str, header: str) -> None:
        first, *attributes = header.split(";")
        name, _, value = first.strip().partition("=")
        attrs = {a.strip().split("=", 1)[0].lower(): (a.strip().split("=", 1) + [""])[1] for a in attributes}
        if attrs.get("max-age") == "0" or "1970" in attrs.get("expires", "") or not value:
            self.cookies.pop((host, name), None)
            return
        self.cookies[(host, name)] = (value, attrs.get("path") or "/")

    def cookie(self, host: str, name: str) -> str | None:
        found = self.cookies.get((host, name))
        return found[0] if found else None

    def follow_provider(self, url: str, login: str) -> str:
        """From the provider's authorization URL through its login and consent pages to the
        redirect back to the relying party: that URL (with code and state)."""
        provider = urllib.parse.urlsplit(url).netloc
        for _ in range(12):
            status, headers, body = self.request(url)
            if status in (302, 303):
                url = urllib.parse.urljoin(url, location(headers))
                if urllib.parse.urlsplit(url).netloc != provider:
                    return url
                continue
            page = body.decode()
            action = html.unescape(re.search(r'<form[^>]*action="([^"]+)"', page).group(1))
            fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page))
            if 'name="login"' in page:
                fields.update({"prompt": "login", "login": login, "password": "any"})
            else:
                fields.setdefault("prompt", "consent")
            status, headers, _ = self.request(urllib.parse.urljoin(url, action), "POST", fields)
            url = urllib.parse.urljoin(url, location(headers))
            if urllib.parse.urlsplit(url).netloc != provider:
                return url
        raise AssertionError("the provider's pages did not lead back")


def location(headers) -> str:
    return dict((k.lower(), v) for k, v in headers)["location"]


def set_cookies(headers) -> list[str]:
    return [v for k, v in headers if k.lower() == "set-cookie"]
