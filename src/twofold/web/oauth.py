"""OAuth 2.0 / OpenID Connect endpoints (API.md): discovery, the token endpoint, the signing keys.

The token endpoint takes ``application/x-www-form-urlencoded`` (RFC 6749 §4.4.2) and answers JSON with
``Cache-Control: no-store``; errors are RFC 6749 §5.2 objects (``invalid_client``, ``invalid_scope``,
``unsupported_grant_type`` …), not problem+json, since OAuth clients read those.
"""

from __future__ import annotations

from typing import Any

from authlib.oauth2.rfc6749.errors import OAuth2Error
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from twofold.domain.errors import TwofoldError
from twofold.oauth.scopes import ADMIN_SCOPES, USER_SCOPES

from .deps import App, request_context

# Described by the discovery document, not by the /api/v1 OpenAPI document.
router = APIRouter(include_in_schema=False)

FORM_LIMIT = 16 * 1024


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
    if int(request.headers.get("content-length") or 0) > FORM_LIMIT:
        return _oauth_error(400, "invalid_request", "the request is too large")
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return _oauth_error(400, "invalid_request", "send the parameters as application/x-www-form-urlencoded")
    # A chunked body has no Content-Length: its size is known once read (the form parser reuses it).
    if len(await request.body()) > FORM_LIMIT:
        return _oauth_error(400, "invalid_request", "the request is too large")
    try:
        form = await request.form(max_files=0, max_fields=20)
    except Exception:  # a body that is not a form is a client's error
        return _oauth_error(400, "invalid_request", "the body is not a valid form")
    if any(len(form.getlist(key)) > 1 for key in form):
        return _oauth_error(400, "invalid_request", "a parameter was sent more than once")  # RFC 6749 §3.2
    return {key: value for key, value in form.items() if isinstance(value, str)}


async def _caller(request: Request, twofold: Any, fields: dict[str, str], endpoint: str) -> Any:
    try:
        return await run_in_threadpool(
            twofold.oauth.authenticate_caller,
            uri=f"{twofold.settings.public_url}{request.url.path}",
            headers=request.headers,
            form=fields,
            endpoint=endpoint,
        )
    except OAuth2Error as error:
        return _oauth_error(401, "invalid_client", error.description or "the client could not be authenticated")


@router.post("/oauth2/introspect")
async def introspect(request: Request, twofold: App) -> JSONResponse:
    """RFC 7662: an app of the organization asks whether a token is active."""
    fields = await _client_form(request)
    if isinstance(fields, JSONResponse):
        return fields
    caller = await _caller(request, twofold, fields, "introspection")
    if isinstance(caller, JSONResponse):
        return caller
    answer = await run_in_threadpool(twofold.oauth.introspect, caller, fields.get("token", ""))
    return JSONResponse(answer, headers={"Cache-Control": "no-store"})


@router.post("/oauth2/revoke")
async def revoke(request: Request, twofold: App) -> JSONResponse:
    """RFC 7009: 200 for any token, known or not (§2.2); a refresh token ends with its family."""
    fields = await _client_form(request)
    if isinstance(fields, JSONResponse):
        return fields
    caller = await _caller(request, twofold, fields, "revocation")
    if isinstance(caller, JSONResponse):
        return caller
    await run_in_threadpool(twofold.oauth.revoke, caller, fields.get("token", ""))
    return JSONResponse({}, headers={"Cache-Control": "no-store"})


@router.post("/oauth2/token")
async def token(request: Request, twofold: App) -> JSONResponse:
    fields = await _client_form(request)
    if isinstance(fields, JSONResponse):
        return fields
    if not fields.get("grant_type"):
        return _oauth_error(400, "invalid_request", "grant_type is missing")  # RFC 6749 §5.2
    status, body, headers = await run_in_threadpool(
        twofold.oauth.token_endpoint,
        uri=f"{twofold.settings.public_url}/oauth2/token",
        headers=request.headers,
        form=fields,
        context=request_context(request),
    )
    response = JSONResponse(body, status_code=status)
    for name, value in headers:
        response.headers[name] = value
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=status, headers={"Cache-Control": "no-store"}
    )
