"""Safety by default: who may call the API, from where, with how large a body.

- With a token, every ``/api`` route needs it: ``Authorization: Bearer T`` or the
  HttpOnly, SameSite=Strict cookie that ``POST /api/session`` sets for the web page.
  Tokens are compared in constant time.
- Without a token the server must be local: requests must name a loopback host in their
  ``Host`` header (this defeats DNS-rebinding pages that would read a local server).
- A request from another site's page (an ``Origin`` that is not this server) may not
  change anything (no POST/PUT/DELETE): no cross-site request can start an indexing run.
- Request bodies over the limit are refused with 413 and a JSON message, before they are
  read when the client declares their length, and as soon as they pass it otherwise.
- Every response says ``nosniff``, may not be framed, and the page may load nothing
  from elsewhere (Content-Security-Policy).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "imagespace_token"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        b"connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
]


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """``example.org:8000`` -> ``example.org``; ``[::1]:8000`` -> ``::1``."""
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")] if "]" in host_header else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def token_matches(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


_bearer = HTTPBearer(auto_error=False, description="The server's token (imagespace serve --token).")


def require_token(token: str | None):
    """A FastAPI dependency: the request carries the token (a no-op when there is none)."""

    def check(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
        if token is None:
            return
        given = creds.credentials if creds is not None else request.cookies.get(COOKIE)
        if not token_matches(given, token):
            raise HTTPException(
                401,
                "this server needs its token: send 'Authorization: Bearer TOKEN' "
                "(or open the page and enter it)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check


class _TooLarge(HTTPException):
    """Raised from ``receive``; an HTTPException so that FastAPI's body parsing lets it through."""

    def __init__(self, limit: int):
        super().__init__(413, too_large_message(limit))


def too_large_message(limit: int) -> str:
    return f"the request body is over the limit of {limit:,} bytes ({limit / 1e6:.1f} MB); send a smaller image"


class GuardMiddleware:
    """Host check, cross-site write check, body limit and security headers, in pure ASGI."""

    def __init__(self, app: ASGIApp, *, max_body: int, allowed_hosts: tuple[str, ...] | None):
        self.app = app
        self.max_body = max_body
        self.allowed_hosts = allowed_hosts  # None: any host (a token protects the API)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                nonlocal started
                started = True
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        started = False
        refusal = self._refusal(scope, headers, host)
        if refusal is not None:
            return await _json(send_with_headers, *refusal)

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _TooLarge(self.max_body)
            return message

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except _TooLarge as e:
            if started:
                raise
            await _json(send_with_headers, 413, e.detail)

    def _refusal(self, scope: Scope, headers: dict[str, str], host: str) -> tuple[int, str] | None:
        if self.allowed_hosts is not None and host_name(host).lower() not in self.allowed_hosts:
            return 400, (
                f"host {host!r} is not served: this server answers only on its local address; "
                "to serve others, start it with --host and --token"
            )
        origin = headers.get("origin")
        if scope["method"] not in SAFE_METHODS and origin is not None and urlsplit(origin).netloc != host:
            return 403, "requests from other sites may not change anything here"
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return 413, too_large_message(self.max_body)
        return None


async def _json(send: Send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
