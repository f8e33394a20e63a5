"""The OAuth 2.0 token endpoint and the checking of access tokens (R5), on authlib's grant classes.

authlib does the protocol (client authentication, grant selection, error responses of RFC 6749 §5.2);
this module gives it our clients, our JWT access tokens (RFC 9068) and our audit trail. Grants offered
so far: ``client_credentials`` (no refresh token, RFC 6749 §4.4.3). A scope the app was not granted is
``invalid_scope``; a disabled or unknown app, or a wrong secret, is ``invalid_client``.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from authlib.oauth2.rfc6749 import AuthorizationServer, ClientMixin, OAuth2Request
from authlib.oauth2.rfc6749 import grants as authlib_grants
from authlib.oauth2.rfc6749.errors import InvalidScopeError
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6749.util import scope_to_list
from joserfc.jwk import KeySet

from twofold.config import Settings
from twofold.domain.clock import as_utc, utcnow
from twofold.domain.entities import ConnectedApp, GrantType
from twofold.domain.errors import Unauthenticated
from twofold.domain.ports import UnitOfWorkFactory
from twofold.oauth import access_tokens
from twofold.oauth.client_credentials import SecretDigests
from twofold.oauth.signing_keys import verification_keys

from . import audit
from .context import AppPrincipal, RequestContext
from .signing import SigningKeyService

APP_TOKEN_LIFETIME = 600  # seconds: short-lived, since a JWT cannot be recalled one by one


class FormRequest(OAuth2Request):  # type: ignore[misc]
    """An OAuth2Request over a parsed form (authlib reads ``form`` for client_secret_post)."""

    def __init__(self, uri: str, headers: Mapping[str, str], form: Mapping[str, str], context: RequestContext) -> None:
        super().__init__("POST", uri, headers=headers)
        self._form = dict(form)
        self.payload = BasicOAuth2Payload(self._form)
        self.twofold_context = context

    @property
    def form(self) -> dict[str, str]:
        return self._form

    @property
    def args(self) -> dict[str, str]:
        return {}


@dataclass
class OAuthClient(ClientMixin):  # type: ignore[misc]
    """authlib's view of a connected app, with the digests of its live secrets."""

    app: ConnectedApp
    secret_digests: list[str]
    digests: SecretDigests

    def get_client_id(self) -> str:
        return self.app.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.app.redirect_uris[0] if self.app.redirect_uris else None

    def get_allowed_scope(self, scope: str | None) -> str:
        if not scope:
            return " ".join(self.app.scopes)
        return " ".join(s for s in scope_to_list(scope) if s in self.app.scopes)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.app.redirect_uris  # exact, RFC 9700 §2.1

    def check_client_secret(self, client_secret: str) -> bool:
        candidates = self.digests.candidates(client_secret) if isinstance(client_secret, str) else []
        return any(hmac.compare_digest(c, d) for c in candidates for d in self.secret_digests)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if endpoint != "token":
            return True
        return method == self.app.auth_method

    def check_response_type(self, response_type: str) -> bool:
        return self.app.grant_type == GrantType.AUTHORIZATION_CODE.value and response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == self.app.grant_type


class ClientCredentialsGrant(authlib_grants.ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def validate_requested_scope(self) -> None:
        requested = set(scope_to_list(self.request.payload.scope) or [])
        if not requested <= set(self.request.client.app.scopes):
            raise InvalidScopeError(description="a scope was asked for that this app was not granted")


class _Server(AuthorizationServer):  # type: ignore[misc]
    """The thin framework shim authlib asks for: requests in, (status, body, headers) out."""

    def __init__(self, service: OAuthService) -> None:
        super().__init__()
        self.service = service
        self.register_grant(ClientCredentialsGrant)
        self.register_token_generator("client_credentials", service.generate_app_token)

    def query_client(self, client_id: str) -> OAuthClient | None:
        return self.service.client(client_id)

    def save_token(self, token: Mapping[str, Any], request: OAuth2Request) -> None:
        self.service.granted(token, request)

    def create_oauth2_request(self, request: OAuth2Request) -> OAuth2Request:
        return request

    def handle_response(self, status: int, body: Any, headers: Any) -> tuple[int, Any, list[tuple[str, str]]]:
        return status, body, list(headers)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None


class OAuthService:
    def __init__(
        self, *, settings: Settings, uow: UnitOfWorkFactory, keys: SigningKeyService, digests: SecretDigests
    ) -> None:
        self.settings = settings
        self.uow = uow
        self.keys = keys
        self.digests = digests
        self.server = _Server(self)
        self._key_set: KeySet | None = None
        self._known_kids: set[str] = set()
        self._lock = threading.Lock()

    @property
    def issuer(self) -> str:
        return self.settings.public_url

    @property
    def api_audience(self) -> str:
        """The resource the admin API is (RFC 8707 style), the ``aud`` of app tokens."""
        return f"{self.settings.public_url}/api/v1"

    # -- the token endpoint ----------------------------------------------------------------------

    def token_endpoint(
        self, *, uri: str, headers: Mapping[str, str], form: Mapping[str, str], context: RequestContext
    ) -> tuple[int, Any, list[tuple[str, str]]]:
        # ``headers`` must look names up without regard to case (authlib asks for "Authorization").
        request = FormRequest(uri, headers, form, context)
        status, body, response_headers = self.server.create_token_response(request)
        return status, body, response_headers

    def client(self, client_id: str) -> OAuthClient | None:
        if not isinstance(client_id, str) or not 1 <= len(client_id) <= 64:
            return None
        now = utcnow()
        with self.uow(read_only=True) as uow:
            app = uow.connected_apps.by_client_id(client_id)
            if app is None or not app.enabled:
                return None
            secrets = [s.digest for s in uow.client_secrets.live_for_app(app.id, now=now)]
        return OAuthClient(app=app, secret_digests=secrets, digests=self.digests)

    def generate_app_token(
        self,
        *,
        grant_type: str,
        client: OAuthClient,
        user: Any = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = False,
    ) -> dict[str, Any]:
        kid, key = self.keys.current()
        granted = client.get_allowed_scope(scope)
        issued = access_tokens.issue(
            key,
            kid,
            issuer=self.issuer,
            audience=self.api_audience,
            subject=client.app.client_id,  # RFC 9068 §2.2: no resource owner, the client itself
            client_id=client.app.client_id,
            scope=granted,
            now=utcnow(),
            lifetime=APP_TOKEN_LIFETIME,
        )
        return {
            "token_type": "Bearer",
            "access_token": issued.token,
            "expires_in": issued.expires_in,
            "scope": granted,
        }

    def granted(self, token: Mapping[str, Any], request: OAuth2Request) -> None:
        """Every grant is audited (R9)."""
        client: OAuthClient = request.client
        context: RequestContext = getattr(request, "twofold_context", RequestContext())
        with self.uow() as uow:
            audit.record(
                uow,
                "oauth.granted",
                organization_id=client.app.organization_id,
                actor_id=client.app.id,
                ip=context.ip,
                details={
                    "client_id": client.app.client_id,
                    "grant_type": request.payload.grant_type,
                    "scope": token.get("scope"),
                },
            )

    # -- checking app tokens ---------------------------------------------------------------------

    def _keys_for(self, token: str) -> KeySet:
        """Published keys, cached in the process and reloaded when a token names a key not seen yet."""
        from joserfc import jws

        try:
            kid = jws.extract_compact(token.encode()).protected.get("kid")
        except (ValueError, TypeError, Exception):
            raise Unauthenticated("the access token is malformed") from None
        with self._lock:
            if self._key_set is None or kid not in self._known_kids:
                with self.uow(read_only=True) as uow:
                    published = list(uow.signing_keys.all())
                self._key_set = verification_keys(published)
                self._known_kids = {k.kid for k in published}
            return self._key_set

    def app_principal(self, token: str) -> AppPrincipal:
        """The connected app behind an access token, with the scopes it still holds; 401 otherwise."""
        now = utcnow()
        try:
            claims = access_tokens.read(
                token, self._keys_for(token), issuer=self.issuer, audience=self.api_audience, now=now
            )
        except access_tokens.InvalidAccessToken as error:
            raise Unauthenticated(str(error)) from None
        with self.uow(read_only=True) as uow:
            app = uow.connected_apps.by_client_id(str(claims["client_id"]))
        if app is None or not app.enabled or app.grant_type != GrantType.CLIENT_CREDENTIALS.value:
            raise Unauthenticated("the app of this token is disabled or gone")
        # iat has whole seconds: a token of the very second of a revocation is refused too (it may be older).
        if int(claims["iat"]) < as_utc(app.tokens_valid_after).timestamp():
            raise Unauthenticated("this token was revoked")
        scopes = frozenset(str(claims.get("scope") or "").split()) & frozenset(app.scopes)
        return AppPrincipal(app=app, scopes=scopes)
