"""OAuth 2.0 / OpenID Connect endpoints (API.md): the published token-signing keys."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from .deps import App

# Described by OpenID discovery, not by the /api/v1 OpenAPI document.
router = APIRouter(include_in_schema=False)


@router.get("/oauth2/jwks", summary="The token-signing keys (JWK set, RFC 7517)")
def jwks(twofold: App) -> JSONResponse:
    # Cacheable for a few minutes: a rotated key is published a day before anything needs it gone.
    return JSONResponse(twofold.signing_keys.jwks(), headers={"Cache-Control": "public, max-age=300"})
