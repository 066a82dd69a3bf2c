"""What every request and answer of the web view goes through: host, token, headers.

- **Host.** Served on a loopback address without a token, only requests naming a
  loopback host (``127.0.0.1``, ``localhost``, ``[::1]``) are answered: a web page
  elsewhere that rebinds its own name to 127.0.0.1 (DNS rebinding) gets a 400, not
  the journal.
- **Token.** With a token, every request carries it: ``Authorization: Bearer <token>``,
  the cookie the view sets, or ``?token=`` in the URL; a page opened with ``?token=``
  sets the cookie (HttpOnly, SameSite=Strict) and is redirected to its URL without
  it, so the token stays out of the history and of the page's links. Compared in
  constant time.
- **Headers.** A Content-Security-Policy that allows scripts, styles and images from
  the view itself only (no inline script, no inline style, nothing from elsewhere),
  no framing, no referrer, no caching, no MIME sniffing.
- **Read-only.** Only GET and HEAD are answered (405 otherwise), before any route.
"""

from __future__ import annotations

import hmac
import json
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CONTENT_SECURITY_POLICY", "COOKIE", "LOOPBACK_HOSTS", "Guard"]

COOKIE = "aumai_token"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


def _host_name(headers: dict[bytes, bytes]) -> str:
    """The host part of the Host header, lower-case, without port or brackets."""
    host = headers.get(b"host", b"").decode("latin-1").strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Guard:
    """ASGI middleware enforcing the rules of the module docstring."""

    def __init__(self, app: ASGIApp, *, token: str | None, loopback_only: bool) -> None:
        self.app = app
        self.token = token
        self.loopback_only = loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_HEADERS]
            await send(message)

        refusal = self._refusal(scope)
        if refusal is not None:
            await _answer(send_with_headers, *refusal)
            return
        await self.app(scope, receive, send_with_headers)

    def _refusal(self, scope: Scope) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        """Why the request is not answered (status, message, extra headers), or None."""
        headers = dict(scope.get("headers", []))
        if scope["method"] not in ("GET", "HEAD"):
            return (
                405,
                "This view is read-only: only GET and HEAD are answered.",
                [(b"allow", b"GET, HEAD")],
            )
        if self.loopback_only and _host_name(headers) not in LOOPBACK_HOSTS:
            return (
                400,
                (
                    "This view answers only requests for 127.0.0.1 or localhost (the Host "
                    "header names another host); serve it with --host and a token to reach "
                    "it from elsewhere."
                ),
                [],
            )
        if self.token is None:
            return None
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        in_query = [value for name, value in query if name == "token"]
        if in_query and self._matches(in_query[0]):
            if scope["path"].startswith("/api/"):
                return None  # a script's request: answered as it is
            rest = urlencode([(name, value) for name, value in query if name != "token"])
            cookie = f"{COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/"
            # One leading slash: "//elsewhere" would send the browser to another site.
            location = "/" + scope["path"].lstrip("/") + (f"?{rest}" if rest else "")
            return (
                303,
                "Signed in; the page is at its address without the token.",
                [
                    (b"location", location.encode("latin-1")),
                    (b"set-cookie", cookie.encode("latin-1")),
                ],
            )
        if self._matches(_bearer(headers)) or self._matches(_cookie(headers)):
            return None
        return (
            401,
            (
                "This view needs its token: open the address `aumai-transactions serve` "
                "printed (it ends in ?token=...), or send the header Authorization: Bearer <token>."
            ),
            [(b"www-authenticate", b'Bearer realm="aumai-transactions"')],
        )

    def _matches(self, given: str | None) -> bool:
        if given is None or self.token is None:
            return False
        return hmac.compare_digest(given.encode(), self.token.encode())


def _bearer(headers: dict[bytes, bytes]) -> str | None:
    scheme, _, value = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def _cookie(headers: dict[bytes, bytes]) -> str | None:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(headers.get(b"cookie", b"").decode("latin-1"))
    except Exception:  # noqa: BLE001 - a malformed cookie header carries no token
        return None
    morsel = jar.get(COOKIE)
    return None if morsel is None else morsel.value


async def _answer(send: Any, status: int, message: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
