"""The OAuth 2.0 token endpoint and the checking of access tokens (R5), on authlib's grant classes.

authlib does the protocol (client authentication, grant selection, error responses of RFC 6749 §5.2);
this module gives it our clients, our JWT access tokens (RFC 9068) and our audit trail. Grants offered
so far: ``client_credentials`` (no refresh token, RFC 6749 §4.4.3). A scope the app was not granted is
``invalid_scope``; a disabled or unknown app, or a wrong secret, is ``invalid_client``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from authlib.oauth2.rfc6749 import AuthorizationServer, ClientMixin, OAuth2Request
from authlib.oauth2.rfc6749 import grants as authlib_grants
from authlib.oauth2.rfc6749.errors import InvalidClientError, InvalidScopeError
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6749.util import scope_to_list
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from joserfc.jwk import KeySet

from twofold.config import Settings
from twofold.domain.clock import as_utc, utcnow
from twofold.domain.entities import AuthorizationCode, ConnectedApp, Consent, GrantType, RefreshToken, User
from twofold.domain.errors import Conflict, NotFound, Unauthenticated
from twofold.domain.ports import UnitOfWork, UnitOfWorkFactory, WouldBlock, no_waiting
from twofold.oauth import access_tokens
from twofold.oauth.client_credentials import SecretDigests

from . import audit
from .audit import DeferredAuditTrail
from .context import AppPrincipal, Principal, RequestContext
from .crypto import hash_token
from .signing import SigningKeyService

APP_TOKEN_LIFETIME = 600  # seconds: short-lived, since a JWT cannot be recalled one by one
USER_TOKEN_LIFETIME = 600
ID_TOKEN_LIFETIME = 600
CODE_LIFETIME = timedelta(minutes=5)  # SECURITY.md: at most 10 minutes
REFRESH_LIFETIME = timedelta(days=30)
ID_TOKEN_TYPE = "JWT"
CLIENT_CACHE_SECONDS = 1.0  # how stale the token endpoint's view of an app may be in another process
CLIENT_CACHE_SIZE = 10_000


class AuthorizationError(Exception):
    """An authorization request that must not redirect back (unknown client, unregistered redirect URI):
    the page says so instead (RFC 6749 §4.1.2.1)."""


class AuthorizationRedirect(Exception):
    """An authorization request refused with an error sent back to the client's redirect URI."""

    def __init__(self, error: str, description: str, *, redirect_uri: str, state: str | None) -> None:
        super().__init__(description)
        self.error, self.description, self.redirect_uri, self.state = error, description, redirect_uri, state


@dataclass(frozen=True)
class AuthorizationRequest:
    app: ConnectedApp
    redirect_uri: str
    scopes: list[str]
    state: str | None
    nonce: str | None
    code_challenge: str
    prompt: frozenset[str] = frozenset()  # OpenID Connect Core §3.1.2.1: "none" or "consent" (or neither)


@dataclass(frozen=True)
class ConsentView:
    app_id: str
    client_id: str
    app_name: str
    scopes: list[str]
    granted_at: datetime


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
    secrets: list[tuple[str, datetime | None]]  # (digest, expires_at) of the secrets live when it was read
    digests: SecretDigests
    # Called with (this client, old digest, current digest) when a secret matched under an earlier server key.
    rekey: Callable[[OAuthClient, str, str], None] | None = None

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
        now = utcnow()
        live = [digest for digest, expires_at in self.secrets if expires_at is None or as_utc(expires_at) > now]
        for index, candidate in enumerate(candidates):
            for stored in live:
                if hmac.compare_digest(candidate, stored):
                    if index > 0 and self.rekey is not None:
                        # Matched under an old TWOFOLD_SECRET_KEY: store it under the current one now, while
                        # the secret is at hand, so that the old key can be dropped without breaking the app.
                        self.rekey(self, stored, candidates[0])
                    return True
        return False

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if endpoint != "token":
            return True
        return method == self.app.auth_method

    def check_response_type(self, response_type: str) -> bool:
        return self.app.grant_type == GrantType.AUTHORIZATION_CODE.value and response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        if self.app.grant_type == GrantType.AUTHORIZATION_CODE.value and grant_type == "refresh_token":
            return True
        return grant_type == self.app.grant_type


class ClientCredentialsGrant(authlib_grants.ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]

    def validate_requested_scope(self) -> None:
        requested = set(scope_to_list(self.request.payload.scope) or [])
        if not requested <= set(self.request.client.app.scopes):
            raise InvalidScopeError(description="a scope was asked for that this app was not granted")


@dataclass
class IssuedCode:
    """authlib's view of a redeemed authorization code (AuthorizationCodeMixin and PKCE's attributes)."""

    record: AuthorizationCode
    user: User
    code_challenge_method: str = "S256"

    @property
    def code_challenge(self) -> str:
        return self.record.code_challenge

    def get_redirect_uri(self) -> str:
        return self.record.redirect_uri

    def get_scope(self) -> str:
        return self.record.scope

    def get_nonce(self) -> str | None:
        return self.record.nonce

    def get_auth_time(self) -> int:
        return int(as_utc(self.record.auth_time).timestamp())


@dataclass
class HeldRefreshToken:
    """authlib's view of a refresh token that was just spent (rotated)."""

    record: RefreshToken
    user: User

    def check_client(self, client: OAuthClient) -> bool:
        return self.record.app_id == client.app.id

    def get_scope(self) -> str:
        return self.record.scope


class AuthorizationCodeGrant(authlib_grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]

    def query_authorization_code(self, code: str, client: OAuthClient) -> IssuedCode | None:
        issued: IssuedCode | None = self.server.service.redeem_code(code, client, self.request)
        if issued is not None:
            self.request.twofold_grant = issued
        return issued

    def delete_authorization_code(self, authorization_code: IssuedCode) -> None:
        return None  # redeemed (once) when it was looked up

    def authenticate_user(self, authorization_code: IssuedCode) -> User:
        return authorization_code.user


class RefreshTokenGrant(authlib_grants.RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotation (RFC 9700 §4.14.2)

    def authenticate_refresh_token(self, refresh_token: str) -> HeldRefreshToken | None:
        held: HeldRefreshToken | None = self.server.service.spend_refresh_token(refresh_token, self.request)
        if held is not None:
            self.request.twofold_grant = held
        return held

    def authenticate_user(self, refresh_token: HeldRefreshToken) -> User:
        return refresh_token.user

    def revoke_old_credential(self, refresh_token: HeldRefreshToken) -> None:
        return None  # spent when it was looked up


class PrivateKeyJwt(JWTBearerClientAssertion):  # type: ignore[misc]
    """``private_key_jwt`` (RFC 7523 §2.2, OpenID Connect Core §9): the app signs a short assertion with a
    key of its registered JWK set; each assertion is accepted once (its ``jti``, in any process)."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, service: OAuthService) -> None:
        super().__init__(validate_jti=True, leeway=30)
        self.service = service

    def get_audiences(self) -> list[str]:
        issuer = self.service.issuer
        return [f"{issuer}/oauth2/token", issuer, f"{issuer}/oauth2/introspect", f"{issuer}/oauth2/revoke"]

    def validate_jti(self, claims: Mapping[str, Any], jti: str) -> bool:
        return self.service.remember_assertion(str(claims.get("sub")), str(jti), claims.get("exp"))

    def resolve_client_public_key(self, client: OAuthClient) -> KeySet:
        if not client.app.jwks:
            raise InvalidClientError(description="this app has no registered keys")
        return KeySet.import_key_set(client.app.jwks)  # type: ignore[arg-type]


CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]


class _Server(AuthorizationServer):  # type: ignore[misc]
    """The thin framework shim authlib asks for: requests in, (status, body, headers) out."""

    def __init__(self, service: OAuthService) -> None:
        super().__init__()
        self.service = service
        self.register_client_auth_method(PrivateKeyJwt.CLIENT_AUTH_METHOD, PrivateKeyJwt(service))
        self.register_grant(ClientCredentialsGrant)
        self.register_grant(AuthorizationCodeGrant, [CodeChallenge(required=True)])
        self.register_grant(RefreshTokenGrant)
        self.register_token_generator("client_credentials", service.generate_app_token)
        self.register_token_generator("authorization_code", service.generate_user_tokens)
        self.register_token_generator("refresh_token", service.generate_user_tokens)

    def query_client(self, client_id: str) -> OAuthClient | None:
        return self.service.client(client_id)

    def authenticate_client(self, request: OAuth2Request, methods: list[str], endpoint: str = "token") -> OAuthClient:
        try:
            client: OAuthClient = super().authenticate_client(request, methods, endpoint)
        except ValueError:
            # authlib decodes HTTP Basic credentials without catching non-ASCII base64 or non-UTF-8 bytes.
            raise InvalidClientError(status_code=401, description="the client credentials cannot be read") from None
        return client

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
        self,
        *,
        settings: Settings,
        uow: UnitOfWorkFactory,
        keys: SigningKeyService,
        digests: SecretDigests,
        deferred_audit: DeferredAuditTrail,
    ) -> None:
        self.settings = settings
        self.uow = uow
        self.keys = keys
        self.digests = digests
        self.deferred_audit = deferred_audit
        self.server = _Server(self)
        # Apps as the token endpoint last read them, by client_id: (time.monotonic() when read, client).
        self._clients: dict[str, tuple[float, OAuthClient]] = {}
        self._clients_lock = threading.Lock()  # held for dictionary updates only, never across a read
        self._generation = 0  # moved by every forget_client
        # authlib's token generators get no request; the grant being served is kept per thread.
        self._local = threading.local()

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
        self._local.request = request
        try:
            status, body, response_headers = self.server.create_token_response(request)
        finally:
            self._local.request = None
        return status, body, response_headers

    def token_endpoint_from_memory(
        self, *, uri: str, headers: Mapping[str, str], form: Mapping[str, str], context: RequestContext
    ) -> tuple[int, Any, list[tuple[str, str]]] | None:
        """The token endpoint's answer when it needs no database, else None (call ``token_endpoint`` then,
        where waiting is fine). A client-credentials grant to an app read a moment ago, with the signing key
        in memory, only computes (an HMAC, an ES256 signature; its audit event is deferred), so the event
        loop answers it itself instead of handing it to a thread and back, a third of its cost."""
        if form.get("grant_type") != "client_credentials":
            return None
        try:
            with no_waiting():
                return self.token_endpoint(uri=uri, headers=headers, form=form, context=context)
        except WouldBlock:
            return None  # it stopped before reading or writing anything

    def _current_request(self) -> OAuth2Request:
        request = getattr(self._local, "request", None)
        assert request is not None, "token generation outside a token request"
        return request

    def client(self, client_id: str) -> OAuthClient | None:
        """The enabled app with this client_id and its secrets, as read at most CLIENT_CACHE_SECONDS ago.

        Client authentication (token, introspection and revocation endpoints) reads through this cache; every
        use of a token reads the app itself (``app_principal``, ``introspect``: enabled, not revoked since, and
        only the scopes it still holds), so an app disabled or narrowed is refused at once everywhere. A change
        made through this process is seen at once (``forget_client``); another server process may authenticate
        the app as it was for up to that second, and a token it grants then is judged by the app as it is.
        """
        if not isinstance(client_id, str) or not 1 <= len(client_id) <= 64:
            return None
        cached = self._clients.get(client_id)
        if cached is not None and time.monotonic() - cached[0] < CLIENT_CACHE_SECONDS:
            return cached[1]
        read_at, now, generation = time.monotonic(), utcnow(), self._generation
        with self.uow(read_only=True) as uow:
            app = uow.connected_apps.by_client_id(client_id)
            if app is None or not app.enabled:
                self._clients.pop(client_id, None)
                return None
            live = [(s.digest, s.expires_at) for s in uow.client_secrets.live_for_app(app.id, now=now)]
        client = OAuthClient(app=app, secrets=live, digests=self.digests, rekey=self._rekey_secret)
        if len(self._clients) >= CLIENT_CACHE_SIZE:
            self._clients.clear()  # many apps: start over rather than keep a least-recently-used order
        with self._clients_lock:
            # A change committed while this read was under way must not be covered by what it read.
            if generation == self._generation:
                self._clients[client_id] = (read_at, client)
        return client

    def forget_client(self, client_id: str) -> None:
        """The app changed (disabled, narrowed, deleted, secret rotated): read it again on next use."""
        with self._clients_lock:
            self._generation += 1
            self._clients.pop(client_id, None)

    def _rekey_secret(self, client: OAuthClient, old_digest: str, new_digest: str) -> None:
        with self.uow() as uow:
            uow.client_secrets.replace_digest(old_digest, new_digest)
        self.forget_client(client.app.client_id)

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
        now = _issue_moment(client.app)
        issued = access_tokens.issue(
            key,
            kid,
            issuer=self.issuer,
            audience=self.api_audience,
            subject=client.app.client_id,  # RFC 9068 §2.2: no resource owner, the client itself
            client_id=client.app.client_id,
            scope=granted,
            now=now,
            lifetime=APP_TOKEN_LIFETIME,
        )
        return {
            "token_type": "Bearer",
            "access_token": issued.token,
            "expires_in": issued.expires_in,
            "scope": granted,
        }

    def granted(self, token: Mapping[str, Any], request: OAuth2Request) -> None:
        """Every grant is audited (R9), in the deferred trail: a grant changes nothing to write at once."""
        client: OAuthClient = request.client
        context: RequestContext = getattr(request, "twofold_context", RequestContext())
        self.deferred_audit.record(
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

    # -- the authorization endpoint (the pages drive it) -----------------------------------------

    def check_authorization_request(self, params: Mapping[str, str]) -> AuthorizationRequest:
        """RFC 6749 §4.1.1 with PKCE S256 required (RFC 7636, RFC 9700 §2.1.1); only the code flow."""
        client_id, redirect_uri = params.get("client_id") or "", params.get("redirect_uri") or ""
        with self.uow(read_only=True) as uow:
            app = uow.connected_apps.by_client_id(client_id) if 1 <= len(client_id) <= 64 else None
        if app is None or not app.enabled or app.grant_type != GrantType.AUTHORIZATION_CODE.value:
            raise AuthorizationError("This application is unknown or disabled.")
        if redirect_uri not in app.redirect_uris:
            # Exact match only: never redirect to an address the app did not register (RFC 9700 §4.1).
            raise AuthorizationError("This application asked to return to an address it has not registered.")
        state = params.get("state") or None

        def refuse(error: str, description: str) -> AuthorizationRedirect:
            return AuthorizationRedirect(error, description, redirect_uri=redirect_uri, state=state)

        if params.get("response_type") != "code":
            raise refuse("unsupported_response_type", "only response_type=code is offered")
        challenge, method = params.get("code_challenge") or "", params.get("code_challenge_method") or ""
        if method != "S256":
            raise refuse("invalid_request", "PKCE with code_challenge_method=S256 is required")
        if not 43 <= len(challenge) <= 128 or not all(ch.isalnum() or ch in "-._~" for ch in challenge):
            raise refuse("invalid_request", "code_challenge must be a base64url SHA-256 of the verifier")
        scopes = scope_to_list(params.get("scope") or "") or []
        if not scopes or not set(scopes) <= set(app.scopes):
            raise refuse("invalid_scope", "a scope was asked for that this application was not granted")
        nonce = params.get("nonce") or None
        if nonce is not None and len(nonce) > 500:
            raise refuse("invalid_request", "nonce is too long")
        prompt = frozenset((params.get("prompt") or "").split())
        if not prompt <= {"none", "consent", "login", "select_account"} or ("none" in prompt and len(prompt) > 1):
            raise refuse("invalid_request", "prompt must be none, or any of consent, login, select_account")
        return AuthorizationRequest(
            app=app,
            redirect_uri=redirect_uri,
            scopes=list(dict.fromkeys(scopes)),
            state=state,
            nonce=nonce,
            code_challenge=challenge,
            prompt=prompt,
        )

    # -- consent (apps that are not first-party) -------------------------------------------------

    def needs_consent(self, principal: Principal, request: AuthorizationRequest) -> bool:
        """Whether to ask the user: an app that is not first-party, unless the user already allowed it every
        scope asked for (and the app did not ask with prompt=consent to be asked again)."""
        if request.app.first_party:
            return False
        if "consent" in request.prompt:
            return True
        with self.uow(read_only=True) as uow:
            return not _consent_holds(uow, request.app, principal.user.id, " ".join(request.scopes))

    def remember_consent(self, principal: Principal, request: AuthorizationRequest, context: RequestContext) -> None:
        """ "Allow": remembered, with the scopes allowed before, until the user withdraws it. A session without
        MFA never reaches an application (``issue_code``), so it has nothing to remember."""
        if principal.session is None or not principal.session.mfa_verified:
            return
        try:
            self._remember_consent(principal, request, context)
        except Conflict:  # "Allow" twice at once: the other click stored it; add these scopes to it
            self._remember_consent(principal, request, context)

    def _remember_consent(self, principal: Principal, request: AuthorizationRequest, context: RequestContext) -> None:
        now = utcnow()
        with self.uow() as uow:
            consent = uow.consents.get(principal.user.id, request.app.id, lock=True)
            if consent is None:
                consent = Consent(user_id=principal.user.id, app_id=request.app.id, scopes=[], granted_at=now)
                uow.consents.add(consent)
            consent.scopes = list(dict.fromkeys([*consent.scopes, *request.scopes]))
            consent.granted_at = now
            audit.record(
                uow,
                "oauth.consent_granted",
                organization_id=principal.user.organization_id,
                actor_id=principal.user.id,
                subject_id=principal.user.id,
                ip=context.ip,
                details={"client_id": request.app.client_id, "scope": " ".join(request.scopes)},
            )

    def consents(self, principal: Principal) -> list[ConsentView]:
        """The applications the user allowed, for "Connected applications" on their profile."""
        with self.uow(read_only=True) as uow:
            views = []
            for consent in uow.consents.for_user(principal.user.id):
                app = uow.connected_apps.get(consent.app_id)
                if app is not None:
                    views.append(ConsentView(app.id, app.client_id, app.name, list(consent.scopes), consent.granted_at))
        return views

    def application_name(self, principal: Principal, app_id: str) -> str | None:
        """The name of an application of the user's organization (for the page that says access was removed)."""
        if not _looks_like_id(app_id):
            return None
        with self.uow(read_only=True) as uow:
            app = uow.connected_apps.get(app_id)
        return app.name if app is not None and app.organization_id == principal.user.organization_id else None

    def withdraw_consent(self, principal: Principal, app_id: str, context: RequestContext) -> int:
        """The user takes back what they allowed an application; its refresh tokens for them end with it,
        and it asks again next time. Returns how many refresh tokens were revoked."""
        now = utcnow()
        with self.uow() as uow:
            consent = uow.consents.get(principal.user.id, app_id, lock=True) if _looks_like_id(app_id) else None
            app = uow.connected_apps.get(app_id) if consent is not None else None
            if consent is None or app is None:
                raise NotFound("no application with this id has your consent")
            uow.consents.delete(consent)
            revoked = uow.refresh_tokens.revoke_for_user(principal.user.id, now=now, app_id=app_id)
            uow.authorization_codes.expire_unredeemed(principal.user.id, app_id, now=now)
            audit.record(
                uow,
                "oauth.consent_withdrawn",
                organization_id=principal.user.organization_id,
                actor_id=principal.user.id,
                subject_id=principal.user.id,
                ip=context.ip,
                details={"client_id": app.client_id, "refresh_revoked": revoked},
            )
        return revoked

    def issue_code(self, principal: Principal, request: AuthorizationRequest, context: RequestContext) -> str:
        """A code for a signed-in user who did MFA; exempt accounts never reach applications (issue 7)."""
        session = principal.session
        if session is None or not session.mfa_verified:
            raise AuthorizationRedirect(
                "access_denied",
                "this account signs in without multi-factor authentication and cannot use applications",
                redirect_uri=request.redirect_uri,
                state=request.state,
            )
        code = secrets.token_urlsafe(32)
        now = utcnow()
        with self.uow() as uow:
            uow.authorization_codes.add(
                AuthorizationCode(
                    code_hash=hash_token(code),
                    app_id=request.app.id,
                    user_id=principal.user.id,
                    session_id=session.id,
                    redirect_uri=request.redirect_uri,
                    scope=" ".join(request.scopes),
                    code_challenge=request.code_challenge,
                    nonce=request.nonce,
                    auth_time=session.auth_time,
                    amr=list(session.amr),
                    acr=session.acr,
                    expires_at=now + CODE_LIFETIME,
                    created_at=now,
                )
            )
            audit.record(
                uow,
                "oauth.authorized",
                organization_id=principal.user.organization_id,
                actor_id=principal.user.id,
                subject_id=principal.user.id,
                ip=context.ip,
                details={"client_id": request.app.client_id, "scope": " ".join(request.scopes)},
            )
        return code

    def redeem_code(self, code: str, client: OAuthClient, request: OAuth2Request) -> IssuedCode | None:
        """Once (conditional UPDATE). A second redemption gets nothing and revokes what the first issued
        (RFC 6749 §4.1.2): the refresh tokens of the family the code started."""
        if not isinstance(code, str) or not 20 <= len(code) <= 200:
            return None
        code_hash, now = hash_token(code), utcnow()
        with self.uow() as uow:
            record = uow.authorization_codes.by_hash(code_hash)
            if record is None or record.app_id != client.app.id:
                return None
            if not uow.authorization_codes.redeem(code_hash, now=now):
                if record.used_at is not None:
                    revoked = uow.refresh_tokens.revoke_family(_family_of(code_hash), now=now)
                    audit.record(
                        uow,
                        "oauth.code_replayed",
                        organization_id=client.app.organization_id,
                        subject_id=record.user_id,
                        details={"client_id": client.app.client_id, "refresh_revoked": revoked},
                    )
                return None
            user = uow.users.get(record.user_id)
            session_alive = self._session_alive(uow, record.session_id, now)
            consented = _consent_holds(uow, client.app, record.user_id, record.scope)
        if user is None or not user.is_active or not session_alive or not consented:
            return None
        return IssuedCode(record=record, user=user)

    def spend_refresh_token(self, token: str, request: OAuth2Request) -> HeldRefreshToken | None:
        """Rotation: a refresh token is spent once; presenting a spent one again revokes its family."""
        if not isinstance(token, str) or not 20 <= len(token) <= 200:
            return None
        token_hash, now = hash_token(token), utcnow()
        with self.uow() as uow:
            record = uow.refresh_tokens.by_hash(token_hash)
            if record is None:
                return None
            client: OAuthClient | None = getattr(request, "client", None)
            if client is None or record.app_id != client.app.id:
                return None  # another app's: refused before it is spent, so its own app keeps it
            if record.session_id is not None and not self._session_alive(uow, record.session_id, now):
                return None  # the sign-in behind it ended (sign-out): so did what it gave apps
            if not _consent_holds(uow, client.app, record.user_id, record.scope):
                return None  # the user withdrew consent: what it gave the app ended with it
            if not uow.refresh_tokens.rotate(token_hash, now=now):
                if record.used_at is not None and record.revoked_at is None:
                    uow.refresh_tokens.revoke_family(record.family_id, now=now)
                    audit.record(
                        uow,
                        "oauth.refresh_replayed",
                        organization_id=None,
                        subject_id=record.user_id,
                        details={"family_id": record.family_id},
                    )
                return None
            user = uow.users.get(record.user_id)
        if user is None or not user.is_active:
            return None
        return HeldRefreshToken(record=record, user=user)

    @staticmethod
    def _session_alive(uow: UnitOfWork, session_id: str, now: datetime) -> bool:
        found = uow.sessions.get(session_id)
        return found is not None and found.revoked_at is None and as_utc(found.expires_at) > now

    def generate_user_tokens(
        self,
        *,
        grant_type: str,
        client: OAuthClient,
        user: User,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        """An access token (RFC 9068) for the user, an ID token when ``openid`` was granted (with the amr,
        acr and auth_time of the sign-in, the nonce of the request), and a rotated refresh token when
        ``offline_access`` was granted."""
        request: OAuth2Request = self._current_request()
        grant = getattr(request, "twofold_grant", None)
        assert isinstance(grant, IssuedCode | HeldRefreshToken)
        record = grant.record
        # Never a scope the app no longer holds (an app narrowed since the code or refresh token was issued).
        granted = " ".join(s for s in (scope or record.scope).split() if s in set(client.app.scopes))
        auth_time = int(as_utc(record.auth_time).timestamp())
        session_id = record.session_id
        kid, key = self.keys.current()
        now = _issue_moment(client.app)
        user_claims = {"auth_time": auth_time, "acr": record.acr, "amr": list(record.amr)}
        if session_id:
            user_claims["sid"] = session_id
        access = access_tokens.issue(
            key,
            kid,
            issuer=self.issuer,
            audience=self.issuer,
            subject=user.id,
            client_id=client.app.client_id,
            scope=granted,
            now=now,
            lifetime=USER_TOKEN_LIFETIME,
            extra=user_claims,
        )
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "access_token": access.token,
            "expires_in": access.expires_in,
            "scope": granted,
        }
        scopes = set(granted.split())
        if "openid" in scopes:
            body["id_token"] = self._id_token(
                key, kid, user=user, client=client, record=record, access_token=access.token, now=now
            )
        if include_refresh_token and "offline_access" in scopes:
            family = record.family_id if isinstance(record, RefreshToken) else _family_of(record.code_hash)
            refresh = secrets.token_urlsafe(32)
            with self.uow() as uow:
                if not _consent_holds(uow, client.app, user.id, granted, lock=True):
                    return body  # consent was withdrawn a moment ago: no refresh token outlives it
                uow.refresh_tokens.add(
                    RefreshToken(
                        token_hash=hash_token(refresh),
                        family_id=family,
                        app_id=client.app.id,
                        user_id=user.id,
                        session_id=session_id,
                        scope=granted,
                        auth_time=record.auth_time,
                        amr=list(record.amr),
                        acr=record.acr,
                        expires_at=now + REFRESH_LIFETIME,
                        created_at=now,
                    )
                )
            body["refresh_token"] = refresh
        return body

    def _id_token(
        self,
        key: Any,
        kid: str,
        *,
        user: User,
        client: OAuthClient,
        record: AuthorizationCode | RefreshToken,
        access_token: str,
        now: datetime,
    ) -> str:
        """OpenID Connect Core §2: iss exact, aud = the client, nonce echoed, amr/acr truthful (RFC 8176)."""
        from joserfc import jwt

        issued = int(now.timestamp())
        digest = hashlib.sha256(access_token.encode()).digest()
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": user.id,
            "aud": client.app.client_id,
            "iat": issued,
            "exp": issued + ID_TOKEN_LIFETIME,
            "auth_time": int(as_utc(record.auth_time).timestamp()),
            "amr": list(record.amr),
            "acr": record.acr,
            "at_hash": base64.urlsafe_b64encode(digest[:16]).decode().rstrip("="),
        }
        if isinstance(record, AuthorizationCode) and record.nonce:
            claims["nonce"] = record.nonce
        if record.session_id:
            claims["sid"] = record.session_id
        scopes = set(record.scope.split()) & set(client.app.scopes)  # not what the app has lost since
        if "profile" in scopes:
            claims["preferred_username"] = user.username
            if user.display_name:
                claims["name"] = user.display_name
        if "email" in scopes:
            claims["email"] = user.email
        return str(jwt.encode({"alg": "ES256", "typ": ID_TOKEN_TYPE, "kid": kid}, claims, key))

    def remember_assertion(self, client_id: str, jti: str, exp: Any) -> bool:
        """A client assertion's ``jti`` is good once, until the assertion expires."""
        now = utcnow()
        expires = now + timedelta(minutes=10)
        if isinstance(exp, int) and not isinstance(exp, bool):
            expires = min(expires, datetime.fromtimestamp(exp, tz=now.tzinfo) + timedelta(seconds=60))
        key = hashlib.sha256(f"client-assertion:{client_id}:{jti}".encode()).hexdigest()
        with self.uow() as uow:
            return uow.device_request_ids.remember(key, expires_at=expires)

    # -- introspection (RFC 7662), revocation (RFC 7009), logout ---------------------------------

    def authenticate_caller(
        self, *, uri: str, headers: Mapping[str, str], form: Mapping[str, str], endpoint: str
    ) -> OAuthClient:
        """The app calling introspection or revocation, authenticated like at the token endpoint."""
        request = FormRequest(uri, headers, form, RequestContext())
        client: OAuthClient = self.server.authenticate_client(request, CLIENT_AUTH_METHODS, endpoint)
        return client

    def introspect(self, caller: OAuthClient, token: str) -> dict[str, Any]:
        """RFC 7662 §2.2 for tokens of the caller's own organization; anything else is just inactive."""
        now = utcnow()
        inactive: dict[str, Any] = {"active": False}
        if not isinstance(token, str) or not 1 <= len(token) <= 4096:
            return inactive
        if token.count(".") == 2:
            try:
                claims = access_tokens.read(
                    token, self._keys_for(token), issuer=self.issuer, audience=_audience_of(token), now=now
                )
            except (access_tokens.InvalidAccessToken, Unauthenticated):
                return inactive
            with self.uow(read_only=True) as uow:
                app = uow.connected_apps.by_client_id(str(claims["client_id"]))
                sid = claims.get("sid")
                alive = sid is None or (isinstance(sid, str) and self._session_alive(uow, sid, now))
            if (
                app is None
                or not app.enabled
                or app.organization_id != caller.app.organization_id
                or int(claims["iat"]) < as_utc(app.tokens_valid_after).timestamp()
                or not alive
            ):
                return inactive
            keep = ("client_id", "sub", "exp", "iat", "iss", "aud", "jti", "auth_time", "acr", "amr")
            # The scopes the app still holds: a token granted from a moment-old view of a narrowed app
            # (another process's cache) never reports more than the app has now, as at the admin API.
            scope = " ".join(s for s in str(claims.get("scope") or "").split() if s in set(app.scopes))
            return {
                "active": True,
                "token_type": "Bearer",
                "scope": scope,
                **{k: claims[k] for k in keep if k in claims},
            }
        with self.uow(read_only=True) as uow:
            record = uow.refresh_tokens.by_hash(hash_token(token))
            app = uow.connected_apps.get(record.app_id) if record is not None else None
            # As at the token endpoint: a refresh token lives no longer than the sign-in it came from.
            alive = record is not None and (
                record.session_id is None or self._session_alive(uow, record.session_id, now)
            )
            # As at the token endpoint: the user's consent still holds, for scopes the app still has.
            consented = (
                record is not None
                and app is not None
                and _consent_holds(uow, app, record.user_id, record.scope)
                and set(record.scope.split()) <= set(app.scopes)
            )
        if (
            not alive
            or not consented
            or record is None
            or app is None
            or not app.enabled
            or app.organization_id != caller.app.organization_id
            or record.used_at is not None
            or record.revoked_at is not None
            or as_utc(record.expires_at) <= now
        ):
            return inactive
        return {
            "active": True,
            "token_type": "refresh_token",
            "scope": record.scope,
            "client_id": app.client_id,
            "sub": record.user_id,
            "exp": int(as_utc(record.expires_at).timestamp()),
            "iat": int(as_utc(record.created_at).timestamp()),
            "iss": self.issuer,
        }

    def revoke(self, caller: OAuthClient, token: str) -> None:
        """RFC 7009: a refresh token of the caller ends with its whole family. An access token is a JWT that
        lives ten minutes; the answer is 200 either way (§2.2), and an unknown token changes nothing."""
        if not isinstance(token, str) or not 1 <= len(token) <= 4096 or token.count(".") == 2:
            return
        now = utcnow()
        with self.uow() as uow:
            record = uow.refresh_tokens.by_hash(hash_token(token))
            if record is None or record.app_id != caller.app.id:
                return
            count = uow.refresh_tokens.revoke_family(record.family_id, now=now)
            audit.record(
                uow,
                "oauth.revoked",
                organization_id=caller.app.organization_id,
                actor_id=caller.app.id,
                subject_id=record.user_id,
                details={"client_id": caller.app.client_id, "refresh_revoked": count},
            )

    def logout_target(
        self, id_token_hint: str | None, post_logout_redirect_uri: str | None
    ) -> tuple[str | None, str | None]:
        """RP-initiated logout: (the user the hint names, where to go after). The hint is the app's own ID
        token (expired ones too); the address must be one of that app's registered redirect URIs."""
        if not id_token_hint:
            return None, None
        from joserfc import jwt

        try:
            decoded = jwt.decode(id_token_hint, self._keys_for(id_token_hint), algorithms=["ES256"])
        except Exception:
            return None, None
        claims = decoded.claims
        if claims.get("iss") != self.issuer or decoded.header.get("typ") == access_tokens.TOKEN_TYPE:
            return None, None  # an access token is not an ID token, whoever holds it
        with self.uow(read_only=True) as uow:
            app = uow.connected_apps.by_client_id(str(claims.get("aud")))
        target = post_logout_redirect_uri if app and post_logout_redirect_uri in app.redirect_uris else None
        return str(claims.get("sub")), target

    def user_info(self, token: str) -> dict[str, Any]:
        """OpenID Connect UserInfo (Core §5.3) for a user's access token whose session still stands."""
        now = utcnow()
        try:
            claims = access_tokens.read(token, self._keys_for(token), issuer=self.issuer, audience=self.issuer, now=now)
        except access_tokens.InvalidAccessToken as error:
            raise Unauthenticated(str(error)) from None
        with self.uow(read_only=True) as uow:
            app = uow.connected_apps.by_client_id(str(claims["client_id"]))
            user = uow.users.get(str(claims.get("sub")))
            sid = claims.get("sid")
            alive = isinstance(sid, str) and self._session_alive(uow, sid, now)
        if app is None or not app.enabled or int(claims["iat"]) < as_utc(app.tokens_valid_after).timestamp():
            raise Unauthenticated("the application of this token is disabled or gone")
        if user is None or not user.is_active or not alive:
            raise Unauthenticated("the sign-in behind this token has ended")
        scopes = set(str(claims.get("scope") or "").split())
        if "openid" not in scopes:
            raise Unauthenticated("this token was not granted openid")
        info: dict[str, Any] = {"sub": user.id}
        if "profile" in scopes:
            info["preferred_username"] = user.username
            if user.display_name:
                info["name"] = user.display_name
        if "email" in scopes:
            info["email"] = user.email
        return info

    # -- checking app tokens ---------------------------------------------------------------------

    def _keys_for(self, token: str) -> KeySet:
        """The published keys (cached by SigningKeyService, read again for a kid not seen yet)."""
        from joserfc import jws

        try:
            kid = jws.extract_compact(token.encode()).protected.get("kid")
        except (ValueError, TypeError, Exception):
            raise Unauthenticated("the access token is malformed") from None
        return self.keys.verification_keys(kid if isinstance(kid, str) else None)

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


def _issue_moment(app: ConnectedApp) -> datetime:
    """iat has whole seconds, and a token with iat before the app's tokens_valid_after is refused: one issued in
    the very second of a revocation (after it) is dated from the next second, or it would be dead on issue."""
    now, revoked = utcnow(), as_utc(app.tokens_valid_after)
    if now.replace(microsecond=0) < revoked:
        now = revoked.replace(microsecond=0) + timedelta(seconds=1 if revoked.microsecond else 0)
    return now


def _consent_holds(uow: UnitOfWork, app: ConnectedApp, user_id: str, scope: str, *, lock: bool = False) -> bool:
    """A first-party app needs none; any other needs the user's consent to every scope, as the app still holds
    them (a scope the app lost and got back is asked for again)."""
    if app.first_party:
        return True
    consent = uow.consents.get(user_id, app.id, lock=lock)
    return consent is not None and set(scope.split()) <= set(consent.scopes) & set(app.scopes)


def _looks_like_id(value: object) -> bool:
    """Ids are 32 lowercase hex digits (``new_id``): anything else names nothing, without asking the database."""
    return isinstance(value, str) and len(value) == 32 and all(ch in "0123456789abcdef" for ch in value)


def _family_of(code_hash: str) -> str:
    """The refresh-token family a code starts: derived from it, so that a replayed code finds it."""
    return code_hash[:32]


def _audience_of(token: str) -> str:
    """App tokens are for the admin API, user tokens for this issuer (userinfo): read which, unverified,
    then verify against exactly that audience."""
    from joserfc.util import urlsafe_b64decode

    try:
        claims = json.loads(urlsafe_b64decode(token.split(".")[1].encode()))
    except (ValueError, UnicodeDecodeError, IndexError):
        return ""
    audience = claims.get("aud") if isinstance(claims, dict) else None
    return audience if isinstance(audience, str) else ""
