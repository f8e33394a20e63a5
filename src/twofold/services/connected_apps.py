"""Connected apps (R5): OAuth 2.0 clients owned by an organization, managed by its administrators.

Two kinds: "acts on its own behalf" (client credentials, with admin-API scopes of its organization) and
"acts on behalf of a user" (authorization code with PKCE, exact redirect URIs, OpenID scopes). A client
secret is generated (256 bits), shown once and stored as an HMAC digest; rotating it keeps the old one
working for a grace period. Disabling an app, narrowing its scopes or deleting it kills the tokens it
holds (``tokens_valid_after``: access tokens are JWTs with no row to delete). Every change is audited.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from twofold.domain.clock import utcnow
from twofold.domain.entities import ClientSecret, ConnectedApp, GrantType
from twofold.domain.errors import Forbidden, NotFound, ValidationFailed
from twofold.domain.ports import UnitOfWork, UnitOfWorkFactory
from twofold.domain.rules import clean_display_name
from twofold.oauth.client_credentials import SecretDigests, new_client_id, new_client_secret
from twofold.oauth.scopes import ALLOWED

from . import audit
from .admin import AdminService
from .context import Actor, AppPrincipal, RequestContext

SCOPE = "connected_apps:write"
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt")
DEFAULT_SECRET_GRACE = timedelta(hours=24)
MAX_SECRET_GRACE = timedelta(days=7)
MAX_REDIRECT_URIS = 10


@dataclass
class AppView:
    app: ConnectedApp
    secrets: list[ClientSecret]


@dataclass
class CreatedApp:
    view: AppView
    client_secret: str | None  # shown this once (none for private_key_jwt)


def check_redirect_uri(uri: str) -> str:
    """Exact, absolute redirect URIs (RFC 6749 §3.1.2, RFC 9700 §2.1): https, or http on a loopback
    address for native apps (RFC 8252 §7.3), or a private-use scheme with a dot (RFC 8252 §7.1);
    no fragment, no wildcard."""
    if not isinstance(uri, str) or not 1 <= len(uri) <= 2000 or not uri.isprintable() or " " in uri:
        raise ValidationFailed("a redirect URI must be 1 to 2000 printable characters without spaces")
    parts = urlsplit(uri)
    if parts.fragment or "#" in uri:
        raise ValidationFailed(f"redirect URI {uri!r} must not have a fragment")
    if "*" in uri:
        raise ValidationFailed(f"redirect URI {uri!r} must be exact: no wildcards")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number from 0 to 65535
    except ValueError:
        raise ValidationFailed(f"redirect URI {uri!r} has an invalid port") from None
    if parts.scheme == "https" and parts.hostname:
        return uri
    if parts.scheme == "http" and parts.hostname:
        host = parts.hostname
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if loopback:
            return uri
        raise ValidationFailed(f"redirect URI {uri!r} must use https (http only for a loopback address)")
    if "." in parts.scheme and parts.path:
        return uri  # a native app's private-use scheme, e.g. com.example.app:/callback
    raise ValidationFailed(f"redirect URI {uri!r} is not an absolute https URL")


def check_jwks(jwks: Any) -> dict[str, Any]:
    """A registered JWK set for private_key_jwt: public keys only."""
    if not isinstance(jwks, Mapping) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise ValidationFailed('jwks must be a JWK set: {"keys": [...]}')
    for key in jwks["keys"]:
        if not isinstance(key, Mapping) or any(part in key for part in ("d", "p", "q", "dp", "dq", "qi", "k")):
            raise ValidationFailed("jwks must hold public keys only")
    try:
        KeySet.import_key_set(dict(jwks))  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError, KeyError):
        raise ValidationFailed("jwks holds a key that cannot be used") from None
    return dict(jwks)


class ConnectedAppService:
    def __init__(
        self,
        *,
        uow: UnitOfWorkFactory,
        admin: AdminService,
        digests: SecretDigests,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self.uow = uow
        self.admin = admin
        self.digests = digests
        # Told the client_id of an app once a change to it is committed (the token endpoint's cache).
        self.on_change = on_change or (lambda client_id: None)

    # -- rules -----------------------------------------------------------------------------------

    @staticmethod
    def _scopes(grant_type: str, scopes: Any, principal: Actor) -> list[str]:
        if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
            raise ValidationFailed("scopes must be a non-empty list of scope names")
        allowed = ALLOWED[grant_type]
        unknown = sorted(set(scopes) - allowed)
        if unknown:
            raise ValidationFailed(
                f"{', '.join(unknown)} cannot be granted to a {grant_type} app; allowed: {', '.join(sorted(allowed))}"
            )
        if isinstance(principal, AppPrincipal) and not set(scopes) <= principal.scopes:
            # An app may create apps, but never one with more power than its own.
            raise Forbidden("a connected app cannot grant scopes it does not hold")
        return sorted(set(scopes))

    @staticmethod
    def _redirect_uris(grant_type: str, uris: Any) -> list[str]:
        if grant_type == GrantType.CLIENT_CREDENTIALS.value:
            if uris:
                raise ValidationFailed("an app acting on its own behalf has no redirect URIs")
            return []
        if not isinstance(uris, list) or not uris:
            raise ValidationFailed("an app acting on behalf of users needs at least one redirect URI")
        if len(uris) > MAX_REDIRECT_URIS:
            raise ValidationFailed(f"at most {MAX_REDIRECT_URIS} redirect URIs")
        return list(dict.fromkeys(check_redirect_uri(uri) for uri in uris))

    # -- reads -----------------------------------------------------------------------------------

    def _view(self, uow: UnitOfWork, app: ConnectedApp) -> AppView:
        return AppView(app=app, secrets=list(uow.client_secrets.live_for_app(app.id, now=utcnow())))

    def _app_in(self, uow: UnitOfWork, organization_id: str, app_id: str) -> ConnectedApp:
        app = uow.connected_apps.get(app_id)
        if app is None or app.organization_id != organization_id:
            raise NotFound("no such connected app")
        return app

    def list_apps(self, principal: Actor, organization_id: str) -> list[AppView]:
        with self.uow(read_only=True) as uow:
            organization = self.admin.authorize(uow, principal, organization_id, SCOPE)
            return [self._view(uow, app) for app in uow.connected_apps.for_organization(organization.root_id)]

    def get(self, principal: Actor, organization_id: str, app_id: str) -> AppView:
        with self.uow(read_only=True) as uow:
            organization = self.admin.authorize(uow, principal, organization_id, SCOPE)
            return self._view(uow, self._app_in(uow, organization.root_id, app_id))

    # -- writes (★) ------------------------------------------------------------------------------

    def create(
        self,
        principal: Actor,
        organization_id: str,
        *,
        name: str,
        grant_type: str,
        scopes: Sequence[str],
        redirect_uris: Sequence[str] | None = None,
        first_party: bool = False,
        auth_method: str = "client_secret_basic",
        jwks: Mapping[str, Any] | None = None,
        context: RequestContext,
    ) -> CreatedApp:
        if grant_type not in ALLOWED:
            raise ValidationFailed("grant_type must be 'client_credentials' or 'authorization_code'")
        if auth_method not in AUTH_METHODS:
            raise ValidationFailed(f"token_endpoint_auth_method must be one of {', '.join(AUTH_METHODS)}")
        clean_name = clean_display_name(name, field="name", maximum=200)
        clean_scopes = self._scopes(grant_type, list(scopes), principal)
        uris = self._redirect_uris(grant_type, list(redirect_uris or []))
        registered = check_jwks(jwks) if auth_method == "private_key_jwt" else None
        if jwks is not None and auth_method != "private_key_jwt":
            raise ValidationFailed("jwks is for token_endpoint_auth_method private_key_jwt")
        with self.uow() as uow:
            organization = self.admin.authorize(uow, principal, organization_id, SCOPE, step_up=True)
            app = ConnectedApp(
                organization_id=organization.root_id,
                name=clean_name,
                client_id=new_client_id(),
                grant_type=grant_type,
                scopes=clean_scopes,
                redirect_uris=uris,
                first_party=bool(first_party) and grant_type == GrantType.AUTHORIZATION_CODE.value,
                auth_method=auth_method,
                jwks=registered,
                created_by=principal.user_id,
                # Whole seconds, like a token's iat: a token of the app's first second is valid.
                tokens_valid_after=utcnow().replace(microsecond=0),
            )
            uow.connected_apps.add(app)
            uow.flush()  # the app's row before its secret's (no ORM relationship orders them)
            secret = None
            if auth_method != "private_key_jwt":
                secret = new_client_secret()
                uow.client_secrets.add(ClientSecret(app_id=app.id, digest=self.digests.digest(secret)))
            audit.record(
                uow,
                "connected_app.created",
                organization_id=organization.root_id,
                actor_id=principal.user_id,
                ip=context.ip,
                details={
                    "app_id": app.id,
                    "client_id": app.client_id,
                    "name": clean_name,
                    "grant_type": grant_type,
                    "scopes": clean_scopes,
                    "auth_method": auth_method,
                },
            )
            uow.flush()
            return CreatedApp(view=self._view(uow, app), client_secret=secret)

    def update(
        self,
        principal: Actor,
        organization_id: str,
        app_id: str,
        changes: Mapping[str, Any],
        context: RequestContext,
    ) -> AppView:
        now = utcnow()
        with self.uow() as uow:
            organization = self.admin.authorize(uow, principal, organization_id, SCOPE, step_up=True)
            app = self._app_in(uow, organization.root_id, app_id)
            changed: dict[str, Any] = {}
            kill_tokens = False
            if changes.get("name") is not None:
                app.name = clean_display_name(changes["name"], field="name", maximum=200)
                changed["name"] = app.name
            if changes.get("scopes") is not None:
                scopes = self._scopes(app.grant_type, changes["scopes"], principal)
                kill_tokens |= not set(app.scopes) <= set(scopes)  # a narrowed app keeps no wider token
                for consent in uow.consents.for_app(app.id):  # nor users' consent to what it no longer has
                    consent.scopes = [scope for scope in consent.scopes if scope in scopes]
                app.scopes, changed["scopes"] = scopes, scopes
            if changes.get("redirect_uris") is not None:
                app.redirect_uris = self._redirect_uris(app.grant_type, changes["redirect_uris"])
                changed["redirect_uris"] = app.redirect_uris
            if changes.get("enabled") is not None and bool(changes["enabled"]) != app.enabled:
                app.enabled = bool(changes["enabled"])
                kill_tokens |= not app.enabled
                changed["enabled"] = app.enabled
            if kill_tokens:
                app.tokens_valid_after = now
            app.updated_at = now
            audit.record(
                uow,
                "connected_app.updated",
                organization_id=organization.root_id,
                actor_id=principal.user_id,
                ip=context.ip,
                details={
                    "app_id": app.id,
                    "client_id": app.client_id,
                    "changed": changed,
                    "access_revoked": kill_tokens,
                },
            )
            view = self._view(uow, app)
        self.on_change(app.client_id)
        return view

    def delete(self, principal: Actor, organization_id: str, app_id: str, context: RequestContext) -> None:
        with self.uow() as uow:
            organization = self.admin.authorize(uow, principal, organization_id, SCOPE, step_up=True)
            app = self._app_in(uow, organization.root_id, app_id)
            uow.connected_apps.delete(app)
            audit.record(
                uow,
                "connected_app.deleted",
                organization_id=organization.root_id,
                actor_id=principal.user_id,
                ip=context.ip,
                details={"app_id": app.id, "client_id": app.client_id, "name": app.name},
            )
        self.on_change(app.client_id)

    def rotate_secret(
        self,
        principal: Actor,
        organization_id: str,
        app_id: str,
        *,
        grace: timedelta | None,
        context: RequestContext,
    ) -> str:
        """A new secret; the ones before it keep working for ``grace`` (default 24 h, at most 7 days, 0 to
        stop them now), so a deployment can roll the new one out without downtime."""
        grace = DEFAULT_SECRET_GRACE if grace is None else grace
        if not timedelta(0) <= grace <= MAX_SECRET_GRACE:
            raise ValidationFailed("grace_seconds must be between 0 and 604800 (7 days)")
        now = utcnow()
        with self.uow() as uow:
            organization = self.admin.authorize(uow, principal, organization_id, SCOPE, step_up=True)
            app = self._app_in(uow, organization.root_id, app_id)
            if app.auth_method == "private_key_jwt":
                raise ValidationFailed("this app authenticates with private_key_jwt and has no secret")
            for old in uow.client_secrets.live_for_app(app.id, now=now):
                old.expires_at = now + grace if old.expires_at is None else min(old.expires_at, now + grace)
            secret = new_client_secret()
            uow.client_secrets.add(ClientSecret(app_id=app.id, digest=self.digests.digest(secret), created_at=now))
            audit.record(
                uow,
                "connected_app.secret_rotated",
                organization_id=organization.root_id,
                actor_id=principal.user_id,
                ip=context.ip,
                details={"app_id": app.id, "client_id": app.client_id, "grace_seconds": int(grace.total_seconds())},
            )
        self.on_change(app.client_id)
        return secret
