"""Request-level dependencies: the container, who is asking, from where, and the CSRF rules."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from twofold.container import Twofold
from twofold.domain.errors import Forbidden, Unauthenticated
from twofold.services.context import Actor, Principal, RequestContext

from .netutil import client_address

SESSION_COOKIE = "__Host-twofold_session"
LOGIN_COOKIE = "__Host-twofold_login"
CSRF_COOKIE = "__Host-twofold_csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def container(request: Request) -> Twofold:
    return request.app.state.twofold  # type: ignore[no-any-return]


App = Annotated[Twofold, Depends(container)]


def request_context(request: Request) -> RequestContext:
    twofold: Twofold = request.app.state.twofold
    peer = request.client.host if request.client else None
    ip = client_address(peer, request.headers.get("x-forwarded-for"), twofold.settings.trusted_proxy_networks)
    return RequestContext(ip=ip, user_agent=(request.headers.get("user-agent") or "")[:512] or None)


Context = Annotated[RequestContext, Depends(request_context)]


def api_csrf_token(twofold: Twofold, session_id: str) -> str:
    return twofold.mac.sign(f"api-csrf:{session_id}")


def origin_allowed(twofold: Twofold, request: Request) -> bool:
    origin = request.headers.get("origin")
    return origin is not None and hmac.compare_digest(origin, twofold.settings.public_origin)


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("use Authorization: Bearer <token>")
    return token.strip()


def principal(request: Request) -> Principal:
    """A bearer token, or the session cookie with Origin and X-CSRF-Token on state-changing calls."""
    twofold: Twofold = request.app.state.twofold
    token = bearer_token(request)
    if token is not None:
        return twofold.sessions.authenticate(token)
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        raise Unauthenticated()
    found = twofold.sessions.authenticate(cookie)
    if request.method not in SAFE_METHODS:
        assert found.session is not None
        sent = request.headers.get(CSRF_HEADER, "")
        if not origin_allowed(twofold, request) or not twofold.mac.verify(f"api-csrf:{found.session.id}", sent):
            raise Forbidden("a cookie-authenticated change needs the page's Origin and X-CSRF-Token")
    return found


CurrentPrincipal = Annotated[Principal, Depends(principal)]


def actor(request: Request) -> Actor:
    """For the administration API: an administrator's session as above, or a connected app's access
    token (a JWT: three dot-separated parts) for what its scopes allow."""
    token = bearer_token(request)
    if token is not None and token.count(".") == 2:
        twofold: Twofold = request.app.state.twofold
        return twofold.oauth.app_principal(token)
    return principal(request)


CurrentActor = Annotated[Actor, Depends(actor)]
