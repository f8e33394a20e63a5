"""Sign-in at an upstream OpenID Connect provider (OpenID Connect Core 1.0, code flow with PKCE, RFC 7636).

Discovery (OpenID Connect Discovery 1.0 §4), the authorization URL, the code exchange on authlib's client,
and the ID token's checks (Core §3.1.3.7): signature by a key of the provider's JWKS, ``iss`` exactly the
provider's issuer, ``aud`` holding our client id (and ``azp`` when there are several), ``exp``/``iat`` within
a minute of skew, ``nonce`` exactly ours. Everything else the protocol needs is the caller's: the state's
single use and browser binding, and what to do with the claims.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
from authlib.integrations.httpx_client import OAuth2Client
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, import_key

ID_TOKEN_ALGORITHMS = ["ES256", "RS256", "PS256", "EdDSA", "ES384", "RS384", "PS384", "ES512", "RS512", "PS512"]
HTTP_TIMEOUT = 10.0
LEEWAY = 60  # seconds of clock skew tolerated between us and the provider


class UpstreamError(Exception):
    """The provider could not be used, or what it sent cannot be trusted; the message says which, for the
    audit log and the administrator (never a secret or a token)."""


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str

    def as_dict(self) -> dict[str, str]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": self.authorization_endpoint,
            "token_endpoint": self.token_endpoint,
            "jwks_uri": self.jwks_uri,
        }


def fetch_metadata(issuer: str, *, http: httpx.Client) -> ProviderMetadata:
    """The provider's discovery document; its ``issuer`` must be exactly the one configured (Discovery §4.3)."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    document = _get_json(http, url, "discovery document")
    if document.get("issuer") != issuer:
        raise UpstreamError(f"the discovery document names issuer {document.get('issuer')!r}, not {issuer!r}")
    values = {}
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        value = document.get(name)
        if not isinstance(value, str) or not value.startswith(("https://", "http://")):
            raise UpstreamError(f"the discovery document has no usable {name}")
        values[name] = value
    if "code" not in (document.get("response_types_supported") or ["code"]):
        raise UpstreamError("the provider does not offer the authorization code flow")
    return ProviderMetadata(issuer=issuer, **values)


def fetch_keys(jwks_uri: str, *, http: httpx.Client) -> KeySet:
    document = _get_json(http, jwks_uri, "key set")
    try:
        return KeySet.import_key_set(document)  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError, KeyError) as error:
        raise UpstreamError(f"the provider's key set cannot be read ({error.__class__.__name__})") from None


def code_challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")


def authorization_url(
    metadata: ProviderMetadata,
    *,
    client_id: str,
    redirect_uri: str,
    scopes: list[str],
    state: str,
    nonce: str,
    code_verifier: str,
    reauthenticate: bool = False,
) -> str:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": " ".join(scopes),
        "state": state,
        "nonce": nonce,
        "code_challenge": code_challenge(code_verifier),
        "code_challenge_method": "S256",
    }
    if reauthenticate:  # a step-up: the user signs in again, whatever session the provider holds (Core §3.1.2.1)
        params.update({"prompt": "login", "max_age": "0"})
    separator = "&" if "?" in metadata.authorization_endpoint else "?"
    return f"{metadata.authorization_endpoint}{separator}{urlencode(params)}"


def exchange_code(
    metadata: ProviderMetadata,
    *,
    client_id: str,
    auth_method: str,
    client_secret: str | None,
    private_jwk: dict[str, Any] | None,
    code: str,
    redirect_uri: str,
    code_verifier: str,
    transport: httpx.BaseTransport | None = None,
) -> dict[str, Any]:
    """The token endpoint's answer for our code (authlib's client does the client authentication)."""
    if auth_method == "private_key_jwt":
        if private_jwk is None:
            raise UpstreamError("no private key is configured for private_key_jwt")
        signing = PrivateKeyJWT(
            metadata.token_endpoint, alg=_jwk_alg(private_jwk), headers={"kid": str(private_jwk.get("kid", ""))}
        )
        client = OAuth2Client(
            client_id,
            client_secret=import_key(private_jwk),  # authlib signs with a key object (a dict is taken for RSA)
            token_endpoint_auth_method=signing,
            timeout=HTTP_TIMEOUT,
            transport=transport,
        )
    else:
        client = OAuth2Client(
            client_id,
            client_secret=client_secret,
            token_endpoint_auth_method=auth_method,
            timeout=HTTP_TIMEOUT,
            transport=transport,
        )
    try:
        with client:
            token = client.fetch_token(
                metadata.token_endpoint,
                grant_type="authorization_code",
                code=code,
                redirect_uri=redirect_uri,
                code_verifier=code_verifier,
            )
    except httpx.HTTPError as error:
        raise UpstreamError(f"the token endpoint could not be reached ({error.__class__.__name__})") from None
    except Exception as error:  # authlib's OAuthError and friends: the provider refused the code
        raise UpstreamError(
            f"the token endpoint refused the code ({getattr(error, 'error', None) or error.__class__.__name__})"
        ) from None
    if not isinstance(token, dict) or not isinstance(token.get("id_token"), str):
        raise UpstreamError("the token endpoint gave no ID token")
    return dict(token)


def validate_id_token(
    id_token: str, *, keys: KeySet, issuer: str, client_id: str, nonce: str, now: float | None = None
) -> dict[str, Any]:
    """OpenID Connect Core §3.1.3.7; raises UpstreamError naming the first check that failed."""
    try:
        decoded = jwt.decode(id_token, keys, algorithms=ID_TOKEN_ALGORITHMS)
    except (JoseError, ValueError, TypeError) as error:
        raise UpstreamError(f"the ID token's signature does not verify ({error.__class__.__name__})") from None
    claims = dict(decoded.claims)
    moment = time.time() if now is None else now
    if claims.get("iss") != issuer:
        raise UpstreamError("the ID token comes from another issuer")
    audience = claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else audience if isinstance(audience, list) else []
    if client_id not in audiences:
        raise UpstreamError("the ID token is not for this client")
    if len(audiences) > 1 and claims.get("azp") != client_id:
        raise UpstreamError("the ID token has several audiences and another authorized party")
    expires, issued = claims.get("exp"), claims.get("iat")
    if not isinstance(expires, int | float) or expires + LEEWAY < moment:
        raise UpstreamError("the ID token has expired")
    if not isinstance(issued, int | float) or issued - LEEWAY > moment:
        raise UpstreamError("the ID token was issued in the future")
    if claims.get("nonce") != nonce:
        raise UpstreamError("the ID token's nonce is not the one sent")
    subject = claims.get("sub")
    if not isinstance(subject, str) or not 1 <= len(subject) <= 255:
        raise UpstreamError("the ID token has no usable subject")
    return claims


def _get_json(http: httpx.Client, url: str, what: str) -> dict[str, Any]:
    try:
        response = http.get(url, timeout=HTTP_TIMEOUT, headers={"Accept": "application/json"})
    except httpx.HTTPError as error:
        raise UpstreamError(f"the {what} at {url} could not be fetched ({error.__class__.__name__})") from None
    if response.status_code != 200:
        raise UpstreamError(f"the {what} at {url} answered HTTP {response.status_code}")
    try:
        document = response.json()
    except ValueError:
        raise UpstreamError(f"the {what} at {url} is not JSON") from None
    if not isinstance(document, dict):
        raise UpstreamError(f"the {what} at {url} is not a JSON object")
    return document


def _jwk_alg(jwk: dict[str, Any] | None) -> str:
    return {"EC": "ES256", "RSA": "RS256", "OKP": "EdDSA"}.get(str((jwk or {}).get("kty")), "ES256")
