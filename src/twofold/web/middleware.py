"""Plain ASGI middleware (no per-request task hand-off): body size limit and security headers."""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
]


class _TooLarge(HTTPException):
    # An HTTPException, so that FastAPI's body parsing passes it on as the 413 problem instead of
    # turning it into a 400 "error parsing the body" (a chunked body has no Content-Length to check).
    def __init__(self) -> None:
        super().__init__(413, "Request body too large")


class LimitsAndHeaders:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, hsts: bool) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.headers = list(SECURITY_HEADERS)
        if hsts:
            self.headers.append((b"strict-transport-security", b"max-age=31536000; includeSubDomains"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_large = int(value) > self.max_body_bytes
                except ValueError:
                    too_large = True
                if too_large:
                    await _reject(send, 413, "payload_too_large", "Request body too large")
                    return

        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _TooLarge
            return message

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in self.headers if h[0] not in present)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except _TooLarge:
            if not started:
                await _reject(send, 413, "payload_too_large", "Request body too large")


async def _reject(send: Send, status: int, code: str, title: str) -> None:
    body: dict[str, Any] = {
        "type": f"urn:twofold:problem:{code}",
        "title": title,
        "status": status,
        "detail": title,
        "code": code,
    }
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
                *SECURITY_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class ExactPaths:
    """Serves a few exact paths with plain ASGI apps before the framework's router, which tries every route
    in turn and solves dependencies: for the OAuth endpoints apps call all day long, that was most of the
    cost of a request. Everything else goes on to the application. The application's exception handlers
    still apply (the scope carries them, as the router's exception middleware would put them there)."""

    def __init__(self, app: ASGIApp, *, paths: dict[str, ASGIApp]) -> None:
        self.app = app
        self.paths = paths
        self._handlers: tuple[dict[Any, Any], dict[int, Any]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handler = self.paths.get(scope["path"])
            if handler is not None:
                if self._handlers is None:
                    registered = scope["app"].exception_handlers
                    self._handlers = (
                        {kind: h for kind, h in registered.items() if not isinstance(kind, int)},
                        {status: h for status, h in registered.items() if isinstance(status, int)},
                    )
                scope["starlette.exception_handlers"] = self._handlers
                await handler(scope, receive, send)
                return
        await self.app(scope, receive, send)
