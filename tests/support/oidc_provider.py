"""A small, real OpenID Connect provider for the single sign-on tests (R2): an external party, not a part of Twofold.

It runs in a thread of the test (``http.server.ThreadingHTTPServer`` on 127.0.0.1, a port the system picks) and
speaks the authorization code flow of OpenID Connect Core 1.0 with PKCE (RFC 7636):

- ``/.well-known/openid-configuration`` (Discovery 1.0 §4) and ``/jwks`` (one ES256 key, written with joserfc);
- ``/authorize`` records the request's parameters and, with no user interface, answers 302 to the
  ``redirect_uri`` with ``code`` and ``state`` (or with ``error`` when the test says the user refused);
- ``/token`` checks the client's ``client_secret_basic`` credentials, the code (once), the ``redirect_uri`` and
  the PKCE S256 ``code_verifier``, and answers with an ID token.

What the next sign-in asserts is the test's: ``provider.next_sign_in = SignIn(sub=..., amr=[...], ...)``, including
deliberately wrong ``iss``/``aud``/``nonce``/``exp`` and a token signed by a key the JWKS does not hold.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from joserfc import jwt
from joserfc.jwk import ECKey

_UNSET: Any = object()


@dataclass(frozen=True)
class SignIn:
    """The user the provider signs in next, and how its ID token comes out.

    ``None`` leaves a claim out. ``issuer``, ``audience`` and ``nonce`` replace the right values when set;
    ``expires_in`` may be negative (an expired token); ``foreign_key`` signs with a key the JWKS does not
    publish (``kid`` may name the published one); ``error`` makes ``/authorize`` answer ``error=<value>``
    instead of a code."""

    sub: str = "upstream-user-1"
    email: str | None = "bob@corp.example"
    email_verified: bool | None = True
    preferred_username: str | None = "bob"
    name: str | None = "Bob Upstream"
    amr: list[str] | None = field(default_factory=lambda: ["pwd", "otp", "mfa"])
    acr: str | None = "urn:corp:acr:mfa"
    auth_time: int | None = None  # None: the moment of /authorize
    extra: dict[str, Any] = field(default_factory=dict)
    issuer: str | None = None
    audience: str | list[str] | None = None
    nonce: Any = _UNSET  # _UNSET: the nonce of the authorization request; None: no nonce claim
    expires_in: int = 300
    foreign_key: bool = False
    kid: str | None = None  # the header's kid when set (say, the published key's kid on a foreign signature)
    error: str | None = None

    def but(self, **changes: Any) -> SignIn:
        return replace(self, **changes)


@dataclass
class _Code:
    params: dict[str, str]
    sign_in: SignIn
    authorized_at: int
    used: bool = False


@dataclass
class TokenRequest:
    """What arrived at /token, and how the provider answered."""

    form: dict[str, str]
    authorization: str | None
    status: int
    answer: dict[str, Any]


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")


class OidcProvider:
    """``with OidcProvider() as provider:`` — ``provider.issuer`` is ``http://127.0.0.1:<port>``."""

    def __init__(self, *, client_id: str = "twofold-at-corp", client_secret: str | None = None) -> None:
        self.client_id = client_id
        self.client_secret = client_secret or "corp-client-secret-" + secrets.token_urlsafe(24)
        self.key = ECKey.generate_key("P-256", private=True, auto_kid=True)
        self.foreign = ECKey.generate_key("P-256", private=True, auto_kid=True)
        self.next_sign_in = SignIn()
        #: Discovery's "issuer" when set: a provider whose document names another issuer.
        self.discovery_issuer: str | None = None
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self.authorizations: list[dict[str, str]] = []
        self.token_requests: list[TokenRequest] = []
        self._codes: dict[str, _Code] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="oidc-provider", daemon=True)

    # -- life -------------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> OidcProvider:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))

    def paths(self) -> list[str]:
        with self._lock:
            return [path for _, path in self.requests]

    # -- what it serves ---------------------------------------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.discovery_issuer or self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid", "profile", "email"],
            "claims_supported": ["sub", "email", "email_verified", "preferred_username", "name", "amr", "acr"],
        }

    def jwks(self) -> dict[str, Any]:
        return {"keys": [{**self.key.as_dict(private=False), "use": "sig", "alg": "ES256"}]}

    def authorize(self, query: dict[str, str]) -> str:
        """The Location of the answer to an authorization request (after the user "signed in")."""
        with self._lock:
            self.authorizations.append(dict(query))
            sign_in = self.next_sign_in
        redirect_uri = query["redirect_uri"]
        back: dict[str, str] = {}
        if sign_in.error is not None:
            back["error"] = sign_in.error
        else:
            code = secrets.token_urlsafe(24)
            with self._lock:
                self._codes[code] = _Code(dict(query), sign_in, int(time.time()))
            back["code"] = code
        if "state" in query:
            back["state"] = query["state"]
        separator = "&" if "?" in redirect_uri else "?"
        return f"{redirect_uri}{separator}{urlencode(back)}"

    def token(self, form: dict[str, str], authorization: str | None) -> tuple[int, dict[str, Any]]:
        status, answer = self._token(form, authorization)
        with self._lock:
            self.token_requests.append(TokenRequest(dict(form), authorization, status, answer))
        return status, answer

    def _token(self, form: dict[str, str], authorization: str | None) -> tuple[int, dict[str, Any]]:
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if authorization != f"Basic {expected}":
            return 401, {"error": "invalid_client"}
        if form.get("grant_type") != "authorization_code":
            return 400, {"error": "unsupported_grant_type"}
        with self._lock:
            issued = self._codes.get(form.get("code", ""))
            if issued is None or issued.used:
                return 400, {"error": "invalid_grant", "error_description": "unknown or used code"}
            issued.used = True
        if form.get("redirect_uri") != issued.params.get("redirect_uri"):
            return 400, {"error": "invalid_grant", "error_description": "redirect_uri differs"}
        if issued.params.get("code_challenge_method") != "S256" or s256(
            form.get("code_verifier", "")
        ) != issued.params.get("code_challenge"):
            return 400, {"error": "invalid_grant", "error_description": "PKCE verification failed"}
        return 200, {
            "access_token": secrets.token_urlsafe(24),
            "token_type": "Bearer",
            "expires_in": 300,
            "id_token": self.id_token(issued),
        }

    def id_token(self, issued: _Code) -> str:
        sign_in, now = issued.sign_in, int(time.time())
        claims: dict[str, Any] = {
            "iss": sign_in.issuer or self.issuer,
            "sub": sign_in.sub,
            "aud": sign_in.audience if sign_in.audience is not None else self.client_id,
            "iat": now if sign_in.expires_in > 0 else now + sign_in.expires_in - 600,
            "exp": now + sign_in.expires_in,
            "auth_time": sign_in.auth_time if sign_in.auth_time is not None else issued.authorized_at,
        }
        nonce = issued.params.get("nonce") if sign_in.nonce is _UNSET else sign_in.nonce
        optional = {
            "nonce": nonce,
            "email": sign_in.email,
            "email_verified": sign_in.email_verified,
            "preferred_username": sign_in.preferred_username,
            "name": sign_in.name,
            "amr": sign_in.amr,
            "acr": sign_in.acr,
        }
        claims.update({name: value for name, value in optional.items() if value is not None})
        claims.update(sign_in.extra)
        key = self.foreign if sign_in.foreign_key else self.key
        return jwt.encode({"alg": "ES256", "typ": "JWT", "kid": sign_in.kid or key.kid}, claims, key)

    # -- HTTP -------------------------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _json(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                provider.record("GET", parts.path)
                if parts.path == "/.well-known/openid-configuration":
                    self._json(200, provider.discovery())
                elif parts.path == "/jwks":
                    self._json(200, provider.jwks())
                elif parts.path == "/authorize":
                    query = {key: values[0] for key, values in parse_qs(parts.query).items()}
                    if not query.get("redirect_uri"):
                        self._json(400, {"error": "invalid_request"})
                        return
                    self.send_response(302)
                    self.send_header("Location", provider.authorize(query))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self._json(404, {"error": "not_found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode()
                provider.record("POST", urlsplit(self.path).path)
                if urlsplit(self.path).path != "/token":
                    self._json(404, {"error": "not_found"})
                    return
                form = {key: values[0] for key, values in parse_qs(raw).items()}
                status, answer = provider.token(form, self.headers.get("Authorization"))
                self._json(status, answer)

        return Handler
