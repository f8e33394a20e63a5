"""An organization's external identity providers (R2; API.md "identity-providers"): OpenID Connect and SAML 2.0.

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
from twofold.sso import mfa, oidc, saml

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


SAML_ATTRIBUTES = {"username": "uid", "email": "mail", "name": "displayName"}


@dataclass
class SamlSettings:
    """A SAML 2.0 provider: its metadata (and where it came from), our key for signing requests, the policy."""

    idp_entity_id: str
    idp_metadata_xml: str
    sp_key_pem: str
    sp_cert_pem: str
    metadata_url: str | None = None
    claims: dict[str, str] = field(default_factory=lambda: dict(SAML_ATTRIBUTES))
    jit_provisioning: bool = True
    allowed_email_domains: list[str] = field(default_factory=list)
    require_mfa: bool = True
    accepted_authn_contexts: list[str] = field(default_factory=lambda: list(mfa.DEFAULT_ACCEPTED_AUTHN_CONTEXTS))


ProviderSettings = OidcSettings | SamlSettings


def service_provider(public_url: str, provider_id: str, settings: SamlSettings) -> saml.ServiceProvider:
    base = f"{public_url}/sso/saml/{provider_id}"
    return saml.ServiceProvider(f"{base}/metadata", f"{base}/acs", settings.sp_key_pem, settings.sp_cert_pem)


@dataclass(frozen=True)
class ProviderView:
    provider: IdentityProvider
    oidc: OidcSettings | None
    public_url: str
    users: int = 0
    saml: SamlSettings | None = None

    @property
    def acs_url(self) -> str:
        return f"{self.public_url}/sso/saml/{self.provider.id}/acs"

    @property
    def sp_metadata_url(self) -> str:
        return f"{self.public_url}/sso/saml/{self.provider.id}/metadata"

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


def open_saml_settings(sealer: Sealer, provider: IdentityProvider) -> SamlSettings:
    if provider.type != IdentityProviderType.SAML.value or not provider.settings_encrypted:
        raise NotFound("no such SAML provider")
    values = json.loads(sealer.open(provider.settings_encrypted, context=settings_context(provider.id)))
    return SamlSettings(**values)


def open_settings(sealer: Sealer, provider: IdentityProvider) -> ProviderSettings:
    if provider.type == IdentityProviderType.SAML.value:
        return open_saml_settings(sealer, provider)
    return open_oidc_settings(sealer, provider)


def seal_settings(sealer: Sealer, provider_id: str, settings: ProviderSettings) -> str:
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


def _claims(value: Any, defaults: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(value, Mapping) or not set(value) <= set(defaults):
        raise ValidationFailed("claim_mapping may name claims (SAML: attributes) for username, email and name")
    claims = dict(defaults)
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
        # A provider row without settings (made outside this service) is listed, and cannot sign anyone in.
        settings = open_settings(self.sealer, provider) if provider.settings_encrypted else None
        return ProviderView(
            provider,
            settings if isinstance(settings, OidcSettings) else None,
            self.settings.public_url,
            uow.users.count_for_provider(provider.id),
            saml=settings if isinstance(settings, SamlSettings) else None,
        )

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
            return self._create_saml(principal, organization_id, body, context)
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

    def _create_saml(
        self, principal: Actor, organization_id: str, body: Mapping[str, Any], context: RequestContext
    ) -> ProviderView:
        name = clean_display_name(str(body.get("name") or ""), field="name", maximum=200)
        for field_name in ("issuer", "client_id", "client_secret", "scopes", "accepted_amr"):
            if body.get(field_name) is not None:
                raise ValidationFailed(f"{field_name} is for OpenID Connect providers")
        with self.uow(read_only=True) as uow:  # who may add one is settled before any URL is fetched
            self.admin.authorize(uow, principal, organization_id, SCOPE, step_up=True)
        metadata_xml, metadata_url = self._saml_metadata(body)
        try:
            entity_id = saml.idp_entity_id(metadata_xml)
        except saml.SamlError as error:
            raise ValidationFailed(f"the provider's metadata cannot be used: {error}") from None
        key_pem, cert_pem = saml.new_key_pair("Twofold")
        settings = SamlSettings(
            idp_entity_id=entity_id,
            idp_metadata_xml=metadata_xml,
            sp_key_pem=key_pem,
            sp_cert_pem=cert_pem,
            metadata_url=metadata_url,
        )
        self._apply_options(settings, body)
        with self.uow() as uow:
            organization = self.admin.authorize(uow, principal, organization_id, SCOPE, step_up=True)
            provider = IdentityProvider(
                organization_id=organization.root_id, type=IdentityProviderType.SAML.value, name=name, issuer=entity_id
            )
            provider.settings_encrypted = seal_settings(self.sealer, provider.id, settings)
            uow.identity_providers.add(provider)
            audit.record(
                uow,
                "identity_provider.created",
                organization_id=organization.root_id,
                actor_id=principal.user_id,
                ip=context.ip,
                details={"identity_provider_id": provider.id, "type": provider.type, "name": name, "issuer": entity_id},
            )
            uow.flush()
            return self._view(uow, provider)

    def _saml_metadata(self, body: Mapping[str, Any]) -> tuple[str, str | None]:
        """The provider's metadata, given inline or fetched from its URL (https, or http on loopback)."""
        xml, url = body.get("metadata_xml"), body.get("metadata_url")
        if (xml is None) == (url is None):
            raise ValidationFailed("give the provider's metadata as metadata_xml or as metadata_url (one of them)")
        if xml is not None:
            if not isinstance(xml, str) or not 1 <= len(xml) <= 1_000_000:
                raise ValidationFailed("metadata_xml must be the provider's metadata document (at most 1 MB)")
            return xml, None
        url = check_issuer(url) if isinstance(url, str) else check_issuer(None)
        try:
            with self.http() as http:
                response = http.get(url, timeout=10.0)
        except httpx.HTTPError as error:
            raise ValidationFailed(f"the metadata at {url} could not be fetched ({error.__class__.__name__})") from None
        if response.status_code != 200 or len(response.content) > 1_000_000:
            raise ValidationFailed(f"the metadata at {url} answered HTTP {response.status_code}")
        return response.text, url

    def update(
        self, principal: Actor, organization_id: str, provider_id: str, body: Mapping[str, Any], context: RequestContext
    ) -> ProviderView:
        with self.uow() as uow:
            organization = self.admin.authorize(uow, principal, organization_id, SCOPE, step_up=True)
            provider = self._external_in(uow, organization.root_id, provider_id)
            settings = open_settings(self.sealer, provider)
            changed = sorted(k for k in body if body.get(k) is not None)
            if body.get("name") is not None:
                provider.name = clean_display_name(str(body["name"]), field="name", maximum=200)
            if isinstance(settings, SamlSettings):
                if body.get("metadata_xml") is not None:
                    try:
                        settings.idp_entity_id = saml.idp_entity_id(body["metadata_xml"])
                    except saml.SamlError as error:
                        raise ValidationFailed(f"the provider's metadata cannot be used: {error}") from None
                    settings.idp_metadata_xml, settings.metadata_url = body["metadata_xml"], None
                    provider.issuer = settings.idp_entity_id
                unknown = set(body) - {"name", "metadata_xml", *self.OPTIONS}
                if unknown:
                    raise ValidationFailed(f"these cannot be changed: {', '.join(sorted(unknown))}")
                self._apply_options(settings, body)
                provider.settings_encrypted = seal_settings(self.sealer, provider.id, settings)
                audit.record(
                    uow,
                    "identity_provider.updated",
                    organization_id=organization.root_id,
                    actor_id=principal.user_id,
                    ip=context.ip,
                    details={"identity_provider_id": provider.id, "changed": changed},
                )
                return self._view(uow, provider)
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
        "accepted_authn_contexts",
    )

    @staticmethod
    def _apply_options(settings: Any, body: Mapping[str, Any]) -> Any:
        is_saml = isinstance(settings, SamlSettings)
        for only_oidc in ("scopes", "accepted_amr"):
            if is_saml and body.get(only_oidc) is not None:
                raise ValidationFailed(f"{only_oidc} is for OpenID Connect providers")
        if not is_saml and body.get("accepted_authn_contexts") is not None:
            raise ValidationFailed("accepted_authn_contexts is for SAML providers")
        if body.get("accepted_authn_contexts") is not None:
            contexts = _string_list(body["accepted_authn_contexts"], "accepted_authn_contexts", item_max=255)
            if not contexts:
                raise ValidationFailed("accepted_authn_contexts must name at least one AuthnContextClassRef")
            settings.accepted_authn_contexts = contexts
        if body.get("scopes") is not None:
            scopes = _string_list(body["scopes"], "scopes", item_max=100)
            if "openid" not in scopes or any(" " in s for s in scopes):
                raise ValidationFailed("scopes must include openid (and no spaces within a scope)")
            settings.scopes = scopes
        if body.get("claim_mapping") is not None:
            settings.claims = _claims(body["claim_mapping"], SAML_ATTRIBUTES if is_saml else DEFAULT_CLAIMS)
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
