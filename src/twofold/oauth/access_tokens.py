"""Access tokens as JWTs in the RFC 9068 profile (``typ: at+jwt``), signed ES256.

A token is checked by its signature, issuer, audience and expiry, and then against the app it names:
an app disabled, deleted or narrowed after the token's ``iat`` has killed it (``tokens_valid_after``),
so no row per token is needed and revocation still takes effect at once.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet

from .signing_keys import ALGORITHM

TOKEN_TYPE = "at+jwt"
CLOCK_LEEWAY = 30  # seconds


class InvalidAccessToken(Exception):
    pass


@dataclass(frozen=True)
class AccessToken:
    token: str
    jti: str
    expires_in: int


def issue(
    key: ECKey,
    kid: str,
    *,
    issuer: str,
    audience: str,
    subject: str,
    client_id: str,
    scope: str,
    now: datetime,
    lifetime: int,
    extra: dict[str, Any] | None = None,
) -> AccessToken:
    issued = int(now.timestamp())
    jti = secrets.token_urlsafe(16)
    claims = {
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "client_id": client_id,
        "scope": scope,
        "iat": issued,
        "exp": issued + lifetime,
        "jti": jti,
        **(extra or {}),
    }
    token = jwt.encode({"alg": ALGORITHM, "typ": TOKEN_TYPE, "kid": kid}, claims, key)
    return AccessToken(token=token, jti=jti, expires_in=lifetime)


def read(token: str, keys: KeySet, *, issuer: str, audience: str, now: datetime) -> dict[str, Any]:
    """The claims of a valid access token, or InvalidAccessToken (RFC 9068 §4)."""
    try:
        decoded = jwt.decode(token, keys, algorithms=[ALGORITHM])
    except (JoseError, ValueError, TypeError):
        raise InvalidAccessToken("the token's signature does not verify") from None
    if decoded.header.get("typ", "").lower() not in {TOKEN_TYPE, f"application/{TOKEN_TYPE}"}:
        raise InvalidAccessToken("not an access token")
    claims = dict(decoded.claims)
    registry = jwt.JWTClaimsRegistry(
        now=int(now.timestamp()),
        leeway=CLOCK_LEEWAY,
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": audience},
        exp={"essential": True},
        iat={"essential": True},
        client_id={"essential": True},
    )
    try:
        registry.validate(claims)
    except JoseError as error:
        raise InvalidAccessToken(f"the token is not valid here: {error.error}") from None
    return claims
