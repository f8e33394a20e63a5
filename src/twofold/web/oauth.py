"""OAuth 2.0 / OpenID Connect endpoints (API.md): discovery, the token endpoint, the signing keys.

The token endpoint takes ``application/x-www-form-urlencoded`` (RFC 6749 §4.4.2) and answers JSON with
``Cache-Control: no-store``; errors are RFC 6749 §5.2 objects (``invalid_client``, ``invalid_scope``,
``unsupported_grant_type`` …), not problem+json, since OAuth clients read those.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from authlib.oauth2.rfc6749.errors import OAuth2Error
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.routing import request_response

from twofold.container import Twofold
from twofold.domain.errors import TwofoldError
from twofold.oauth.scopes import ADMIN_SCOPES, USER_SCOPES
from twofold.services.oauth import OAuthClient

from .deps import App, request_context

# Described by the discovery document, not by the /api/v1 OpenAPI document.
router = APIRouter(include_in_schema=False)

FORM_LIMIT = 16 * 1024
FORM_FIELDS = 20


@router.get("/.well-known/openid-configuration")
def discovery(twofold: App) -> JSONResponse:
    """What this server offers today (RFC 8414, OpenID Connect Discovery 1.0); it grows with the grants."""
    base = twofold.settings.public_url
    document: dict[str, Any] = {
        "issuer": base,
        "token_endpoint": f"{base}/oauth2/token",
        "jwks_uri": f"{base}/oauth2/jwks",
        "authorization_endpoint": f"{base}/oauth2/authorize",
        "userinfo_endpoint": f"{base}/oauth2/userinfo",
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "introspection_endpoint": f"{base}/oauth2/introspect",
        "revocation_endpoint": f"{base}/oauth2/revoke",
        "end_session_endpoint": f"{base}/oauth2/logout",
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": True,
        "claims_supported": [
            "sub",
            "iss",
            "aud",
            "auth_time",
            "amr",
            "acr",
            "nonce",
            "sid",
            "name",
            "preferred_username",
            "email",
        ],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES256", "RS256", "PS256", "EdDSA"],
        "scopes_supported": [*USER_SCOPES, *ADMIN_SCOPES],
        "response_types_supported": ["code"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "subject_types_supported": ["public"],
    }
    return JSONResponse(document, headers={"Cache-Control": "public, max-age=300"})


@router.get("/oauth2/jwks")
def jwks(twofold: App) -> JSONResponse:
    # Cacheable for a few minutes: a rotated key stays published a day after it signs its last token.
    return JSONResponse(twofold.signing_keys.jwks(), headers={"Cache-Control": "public, max-age=300"})


@router.api_route("/oauth2/userinfo", methods=["GET", "POST"])
def userinfo(request: Request, twofold: App) -> JSONResponse:
    header = request.headers.get("authorization") or ""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return JSONResponse(
            {"error": "invalid_token"}, status_code=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
        )
    try:
        info = twofold.oauth.user_info(token.strip())
    except TwofoldError as error:
        return JSONResponse(
            {"error": "invalid_token", "error_description": error.detail},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    return JSONResponse(info, headers={"Cache-Control": "no-store"})


async def _client_form(request: Request) -> dict[str, str] | JSONResponse:
    """The parameters of a client's POST (RFC 6749 §3.2): a small urlencoded form, each name once."""
    if request.method != "POST":
        return _oauth_error(405, "invalid_request", "use POST", headers={"Allow": "POST"})
    try:
        declared = int(request.headers.get("content-length") or 0)
    except ValueError:
        declared = FORM_LIMIT + 1
    if declared > FORM_LIMIT:
        return _oauth_error(400, "invalid_request", "the request is too large")
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return _oauth_error(400, "invalid_request", "send the parameters as application/x-www-form-urlencoded")
    body = bytearray()
    async for chunk in request.stream():  # a chunked body has no Content-Length: count as it comes
        body += chunk
        if len(body) > FORM_LIMIT:
            return _oauth_error(400, "invalid_request", "the request is too large")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=FORM_FIELDS)
    except (UnicodeDecodeError, ValueError):  # not UTF-8, or more fields than any request of ours has
        return _oauth_error(400, "invalid_request", "the body is not a valid form")
    form = dict(pairs)
    if len(form) < len(pairs):
        return _oauth_error(400, "invalid_request", "a parameter was sent more than once")  # RFC 6749 §3.2
    return form


async def _as_client(
    request: Request, endpoint: str, operation: Callable[[Twofold, OAuthClient, str], dict[str, Any]]
) -> JSONResponse:
    """Authenticate the calling app as at the token endpoint (RFC 7662 §2.1, RFC 7009 §2.1), then run
    ``operation`` on the ``token`` parameter, in one hand-off to a worker thread."""
    twofold = _twofold(request)
    fields = await _client_form(request)
    if isinstance(fields, JSONResponse):
        return fields

    def authenticated_operation() -> dict[str, Any]:
        caller = twofold.oauth.authenticate_caller(
            uri=f"{twofold.settings.public_url}{request.url.path}",
            headers=request.headers,
            form=fields,
            endpoint=endpoint,
        )
        return operation(twofold, caller, fields.get("token", ""))

    try:
        answer = await run_in_threadpool(authenticated_operation)
    except OAuth2Error as error:
        return _oauth_error(401, "invalid_client", error.description or "the client could not be authenticated")
    return JSONResponse(answer, headers={"Cache-Control": "no-store"})


async def introspect(request: Request) -> JSONResponse:
    """RFC 7662: an app of the organization asks whether a token is active."""
    return await _as_client(
        request, "introspection", lambda twofold, caller, token: twofold.oauth.introspect(caller, token)
    )


async def revoke(request: Request) -> JSONResponse:
    """RFC 7009: 200 for any token, known or not (§2.2); a refresh token ends with its family."""

    def revoke_token(twofold: Twofold, caller: OAuthClient, token: str) -> dict[str, Any]:
        twofold.oauth.revoke(caller, token)
        return {}

    return await _as_client(request, "revocation", revoke_token)


async def token(request: Request) -> JSONResponse:
    """RFC 6749 §3.2 (grants of §4.1.3, §4.4, §6), on authlib's grant classes."""
    twofold = _twofold(request)
    fields = await _client_form(request)
    if isinstance(fields, JSONResponse):
        return fields
    if not fields.get("grant_type"):
        return _oauth_error(400, "invalid_request", "grant_type is missing")  # RFC 6749 §5.2
    grant = {
        "uri": f"{twofold.settings.public_url}/oauth2/token",
        "headers": request.headers,
        "form": fields,
        "context": request_context(request),
    }
    answer = twofold.oauth.token_endpoint_from_memory(**grant)
    status, body, headers = answer or await run_in_threadpool(lambda: twofold.oauth.token_endpoint(**grant))
    response = JSONResponse(body, status_code=status)
    for name, value in headers:
        response.headers[name] = value
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


def _twofold(request: Request) -> Twofold:
    twofold: Twofold = request.app.state.twofold
    return twofold


def _oauth_error(status: int, error: str, description: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": error, "error_description": description},
        status_code=status,
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


#: The endpoints that apps call with client authentication, the busiest of the server (the token endpoint
#: above all), served before FastAPI's routing and dependency injection: see ``web.middleware.ExactPaths``.
CLIENT_ENDPOINTS = {
    "/oauth2/token": request_response(token),
    "/oauth2/introspect": request_response(introspect),
    "/oauth2/revoke": request_response(revoke),
}
