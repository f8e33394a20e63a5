"""An organization's external identity providers (R2; API.md "identity-providers"): OpenID Connect now.

A provider's settings are sealed at rest as one JSON document (they hold the client secret or the private key
for ``private_key_jwt``); the row keeps the issuer in clear. Creating an OIDC provider reads its discovery
document first, so a typo in the issuer is a 422 at once rather than a broken sign-in later. Only an
organization's administrators change providers, with a fresh step-up; connected apps never can (a provider
can create users).
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from joserfc.jwk import ECKey

from twofold.config import Settings
from twofold.domain.entities import IdentityProvider, IdentityProviderType
from twofold.domain.errors import Conflict, NotFound, ValidationFailed
from twofold.domain.ports import Sealer, UnitOfWork, UnitOfWorkFactory
from twofold.domain.rules import clean_display_name
from twofold.sso import mfa, oidc

from . import audit
from .admin import AdminService
from .context import Actor, RequestContext

#: Not among the scopes a connected app can hold (oauth/scopes.py): only administrators' sessions pass.
SCOPE = "identity_providers:write"
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt")
DEFAULT_SCOPES = ["openid", "profile", "email"]
DEFAULT_CLAIMS = {"username": "preferred_username", "email": "email", "name": "name"}
MAX_LIST = 50


@dataclass
class OidcSettings:
    """What a sign-in at an OpenID Connect provider needs, sealed as JSON in ``settings_encrypted``."""

    client_id: str
    auth_method: str
    endpoints: dict[str, str]
    client_secret: str | None = None
    private_jwk: dict[str, Any] | None = None
    scopes: list[str] = field(default_factory=lambda: list(DEFAULT_SCOPES))
    claims: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_CLAIMS))
    jit_provisioning: bool = True
    allowed_email_domains: list[str] = field(default_factory=list)
    require_mfa: bool = True
    accepted_amr: list[str] = field(default_factory=lambda: list(mfa.DEFAULT_ACCEPTED_AMR))

    @property
    def metadata(self) -> oidc.ProviderMetadata:
        return oidc.ProviderMetadata(**self.endpoints)

    def public_jwks(self) -> dict[str, Any] | None:
        if self.private_jwk is None:
            return None
        public = {k: v for k, v in self.private_jwk.items() if k not in {"d", "p", "q", "dp", "dq", "qi"}}
        return {"keys": [public]}


@dataclass(frozen=True)
class ProviderView:
    provider: IdentityProvider
    oidc: OidcSettings | None
    public_url: str
    users: int = 0

    @property
    def login_url(self) -> str:
        return f"{self.public_url}/login/sso/{self.provider.id}"

    @property
    def redirect_uri(self) -> str:
        return f"{self.public_url}/sso/oidc/{self.provider.id}/callback"


def settings_context(provider_id: str) -> str:
    return f"identity_provider:{provider_id}"


def open_oidc_settings(sealer: Sealer, provider: IdentityProvider) -> OidcSettings:
    if provider.type != IdentityProviderType.OIDC.value or not provider.settings_encrypted:
        raise NotFound("no such OpenID Connect provider")
    values = json.loads(sealer.open(provider.settings_encrypted, context=settings_context(provider.id)))
    return OidcSettings(**values)


def seal_settings(sealer: Sealer, provider_id: str, settings: OidcSettings) -> str:
    return sealer.seal(json.dumps(settings.__dict__).encode(), context=settings_context(provider_id))


def check_issuer(issuer: Any) -> str:
    """An https URL (http only on a loopback address, as for redirect URIs), without query or fragment."""
    if not isinstance(issuer, str) or not 1 <= len(issuer) <= 500 or not issuer.isprintable() or " " in issuer:
        raise ValidationFailed("issuer must be an https URL of at most 500 characters")
    parts = urlsplit(issuer)
    if parts.query or parts.fragment or not parts.hostname:
        raise ValidationFailed("issuer must be an https URL without query or fragment")
    if parts.scheme == "https":
        return issuer
    if parts.scheme == "http":
        try:
            loopback = ipaddress.ip_address(parts.hostname).is_loopback
        except ValueError:
            loopback = parts.hostname == "localhost"
        if loopback:
            return issuer
    raise ValidationFailed("issuer must use https (http only for a loopback address)")


def _string_list(value: Any, name: str, *, maximum: int = MAX_LIST, item_max: int = 255) -> list[str]:
    if not isinstance(value, list) or len(value) > maximum:
        raise ValidationFailed(f"{name} must be a list of at most {maximum} strings")
    items = []
    for item in value:
        if not isinstance(item, str) or not 1 <= len(item.strip()) <= item_max or not item.isprintable():
            raise ValidationFailed(f"{name} must hold non-empty printable strings of at most {item_max} characters")
        items.append(item.strip())
    return list(dict.fromkeys(items))


def _domains(value: Any) -> list[str]:
    domains = list(dict.fromkeys(d.lower().lstrip("@") for d in _string_list(value, "allowed_email_domains")))
    for domain in domains:
        if "." not in domain or any(ch in domain for ch in "/:@ ") or domain.startswith("."):
            raise ValidationFailed(f"{domain!r} is not an email domain (like example.com)")
    return domains


def _claims(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not set(value) <= set(DEFAULT_CLAIMS):
        raise ValidationFailed("claim_mapping may name claims for username, email and name")
    claims = dict(DEFAULT_CLAIMS)
    for key, claim in value.items():
        if not isinstance(claim, str) or not 1 <= len(claim) <= 100 or not claim.isprintable():
            raise ValidationFailed("claim_mapping values must be claim names")
        claims[key] = claim
    return claims


class IdentityProviderService:
    def __init__(
        self,
        *,
        settings: Settings,
        uow: UnitOfWorkFactory,
        admin: AdminService,
        sealer: Sealer,
        http: Callable[[], httpx.Client] = httpx.Client,
    ) -> None:
        self.settings = settings
        self.uow = uow
        self.admin = admin
        self.sealer = sealer
        self.http = http

    def _view(self, uow: UnitOfWork, provider: IdentityProvider) -> ProviderView:
        is_oidc = provider.type == IdentityProviderType.OIDC.value
        settings = open_oidc_settings(self.sealer, provider) if is_oidc else None
        return ProviderView(provider, settings, self.settings.public_url, uow.users.count_for_provider(provider.id))

    def _external_in(self, uow: UnitOfWork, organization_id: str, provider_id: str) -> IdentityProvider:
        provider = uow.identity_providers.get(provider_id) if isinstance(provider_id, str) else None
        if provider is None or provider.organization_id != organization_id or provider.type == "local":
            raise NotFound("no such external identity provider")
        return provider

    def get(self, principal: Actor, organization_id: str, provider_id: str) -> ProviderView:
        with self.uow(read_only=True) as uow:
            organization = self.admin.authorize(uow, principal, organization_id, "users:read")
            return self._view(uow, self._external_in(uow, organization.root_id, provider_id))

    def list_external(self, principal: Actor, organization_id: str) -> list[ProviderView]:
        with self.uow(read_only=True) as uow:
            organization = self.admin.authorize(uow, principal, organization_id, "users:read")
            return [
                self._view(uow, provider)
                for provider in uow.identity_providers.for_organization(organization.root_id)
                if provider.type != "local"
            ]

    def create(
        self, principal: Actor, organization_id: str, body: Mapping[str, Any], context: RequestContext
    ) -> ProviderView:
        kind = body.get("type")
        if kind == IdentityProviderType.SAML.value:
            raise ValidationFailed("SAML 2.0 providers are not offered by this server yet; use type oidc")
        if kind != IdentityProviderType.OIDC.value:
            raise ValidationFailed("type must be 'oidc' or 'saml'")
        name = clean_display_name(str(body.get("name") or ""), field="name", maximum=200)
        issuer = check_issuer(body.get("issuer"))
        client_id = body.get("client_id")
        if not isinstance(client_id, str) or not 1 <= len(client_id) <= 255 or not client_id.isprintable():
            raise ValidationFailed("client_id must be 1 to 255 printable characters")
        auth_method = body.get("token_endpoint_auth_method") or "client_secret_basic"
        if auth_method not in AUTH_METHODS:
            raise ValidationFailed(f"token_endpoint_auth_method must be one of {', '.join(AUTH_METHODS)}")
        secret = body.get("client_secret")
        private_jwk = None
        if auth_method == "private_key_jwt":
            if secret is not None:
                raise ValidationFailed("client_secret is not used with private_key_jwt")
            key = ECKey.generate_key("P-256", private=True)
            private_jwk = {**key.as_dict(private=True), "kid": str(key.thumbprint()), "alg": "ES256", "use": "sig"}
        elif not isinstance(secret, str) or not 1 <= len(secret) <= 1000 or not secret.isprintable():
            raise ValidationFailed("client_secret is required: 1 to 1000 printable characters")
        settings = self._apply_options(
            OidcSettings(
                client_id=client_id,
                auth_method=auth_method,
                endpoints={},
                client_secret=secret if auth_method != "private_key_jwt" else None,
                private_jwk=private_jwk,
            ),
            body,
        )
        # Who may add a provider is settled before the issuer named in the body is fetched: nobody else can
        # make the server call out to a URL of their choosing. (Checked again below, in the writing transaction.)
        with self.uow(read_only=True) as uow:
            self.admin.authorize(uow, principal, organization_id, SCOPE, step_up=True)
        settings.endpoints = self._discover(issuer)
        with self.uow() as uow:
            organization = self.admin.authorize(uow, principal, organization_id, SCOPE, step_up=True)
            provider = IdentityProvider(
                organization_id=organization.root_id, type=IdentityProviderType.OIDC.value, name=name, issuer=issuer
            )
            provider.settings_encrypted = seal_settings(self.sealer, provider.id, settings)
            uow.identity_providers.add(provider)
            audit.record(
                uow,
                "identity_provider.created",
                organization_id=organization.root_id,
                actor_id=principal.user_id,
                ip=context.ip,
                details={"identity_provider_id": provider.id, "type": provider.type, "name": name, "issuer": issuer},
            )
            uow.flush()
            return self._view(uow, provider)

    def update(
        self, principal: Actor, organization_id: str, provider_id: str, body: Mapping[str, Any], context: RequestContext
    ) -> ProviderView:
        with self.uow() as uow:
            organization = self.admin.authorize(uow, principal, organization_id, SCOPE, step_up=True)
            provider = self._external_in(uow, organization.root_id, provider_id)
            settings = open_oidc_settings(self.sealer, provider)
            changed = sorted(k for k in body if body.get(k) is not None)
            if body.get("name") is not None:
                provider.name = clean_display_name(str(body["name"]), field="name", maximum=200)
            if body.get("client_id") is not None:
                client_id = body["client_id"]
                if not isinstance(client_id, str) or not 1 <= len(client_id) <= 255 or not client_id.isprintable():
                    raise ValidationFailed("client_id must be 1 to 255 printable characters")
                settings.client_id = client_id
            if body.get("client_secret") is not None:
                secret = body["client_secret"]
                if settings.auth_method == "private_key_jwt":
                    raise ValidationFailed("client_secret is not used with private_key_jwt")
                if not isinstance(secret, str) or not 1 <= len(secret) <= 1000 or not secret.isprintable():
                    raise ValidationFailed("client_secret must be 1 to 1000 printable characters")
                settings.client_secret = secret
            unknown = set(body) - {"name", "client_id", "client_secret", *self.OPTIONS}
            if unknown:
                raise ValidationFailed(f"these cannot be changed: {', '.join(sorted(unknown))}")
            settings = self._apply_options(settings, body)
            provider.settings_encrypted = seal_settings(self.sealer, provider.id, settings)
            audit.record(
                uow,
                "identity_provider.updated",
                organization_id=organization.root_id,
                actor_id=principal.user_id,
                ip=context.ip,
                details={"identity_provider_id": provider.id, "changed": changed},  # names only, never a value
            )
            return self._view(uow, provider)

    def delete(self, principal: Actor, organization_id: str, provider_id: str, context: RequestContext) -> None:
        with self.uow() as uow:
            organization = self.admin.authorize(uow, principal, organization_id, SCOPE, step_up=True)
            provider = self._external_in(uow, organization.root_id, provider_id)
            users = uow.users.count_for_provider(provider.id)
            if users:
                raise Conflict(f"{users} user(s) sign in through this provider; disable or delete them first")
            uow.identity_providers.delete(provider)
            audit.record(
                uow,
                "identity_provider.deleted",
                organization_id=organization.root_id,
                actor_id=principal.user_id,
                ip=context.ip,
                details={"identity_provider_id": provider.id, "name": provider.name},
            )

    OPTIONS = (
        "scopes",
        "claim_mapping",
        "jit_provisioning",
        "allowed_email_domains",
        "require_mfa",
        "accepted_amr",
    )

    @staticmethod
    def _apply_options(settings: OidcSettings, body: Mapping[str, Any]) -> OidcSettings:
        if body.get("scopes") is not None:
            scopes = _string_list(body["scopes"], "scopes", item_max=100)
            if "openid" not in scopes or any(" " in s for s in scopes):
                raise ValidationFailed("scopes must include openid (and no spaces within a scope)")
            settings.scopes = scopes
        if body.get("claim_mapping") is not None:
            settings.claims = _claims(body["claim_mapping"])
        for flag in ("jit_provisioning", "require_mfa"):
            if body.get(flag) is not None:
                if not isinstance(body[flag], bool):
                    raise ValidationFailed(f"{flag} must be true or false")
                setattr(settings, flag, body[flag])
        if body.get("allowed_email_domains") is not None:
            settings.allowed_email_domains = _domains(body["allowed_email_domains"])
        if body.get("accepted_amr") is not None:
            accepted = _string_list(body["accepted_amr"], "accepted_amr", item_max=32)
            if not accepted:
                raise ValidationFailed('accepted_amr must name at least one value (the default is ["mfa"])')
            settings.accepted_amr = accepted
        return settings

    def _discover(self, issuer: str) -> dict[str, str]:
        try:
            with self.http() as http:
                return oidc.fetch_metadata(issuer, http=http).as_dict()
        except oidc.UpstreamError as error:
            raise ValidationFailed(f"the provider cannot be used: {error}") from None


def new_state() -> str:
    return secrets.token_urlsafe(32)
