"""Sign-in through an organization's own identity provider (R2): the round trip, then a Twofold session.

The pending sign-in is stored server-side (``sso_requests``), found by the ``state`` the provider sends back,
spent once by a conditional UPDATE and bound to the browser that started it by a cookie whose hash it keeps
(OpenID Connect Core §3.1.2.1 ``state``; RFC 9700 §4.7). The ID token is checked by ``sso.oidc``; the
provider's MFA policy by ``sso.mfa``: a sign-in whose assertion shows no MFA is refused and audited
(``sso.mfa_missing``), never completed with a local second factor. Federated users are found by (provider,
subject) only, never by email or username; a new one is provisioned just in time when the provider allows it,
with a username made unique by a suffix.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from joserfc.jwk import KeySet

from twofold.config import Settings
from twofold.domain.clock import as_utc, utcnow
from twofold.domain.entities import IdentityProvider, IdentityProviderType, SsoRequest, User, UserKind
from twofold.domain.errors import ValidationFailed
from twofold.domain.ports import Sealer, UnitOfWork, UnitOfWorkFactory
from twofold.domain.rules import USERNAME_MAX, clean_display_name, clean_username, username_key
from twofold.sso import mfa, oidc, saml

from . import audit
from .context import Principal, RequestContext
from .crypto import hash_token
from .identity_providers import (
    OidcSettings,
    ProviderSettings,
    open_oidc_settings,
    open_saml_settings,
    open_settings,
    service_provider,
)
from .sessions import IssuedSession, SessionService, UpstreamAuthentication

logger = logging.getLogger("twofold.sso")

SSO_REQUEST_LIFETIME = timedelta(minutes=10)
KEYS_CACHE_SECONDS = 300.0  # a provider's JWKS is read again after this, or at once for an unknown kid


class SsoRefused(Exception):
    """The upstream sign-in did not give a Twofold session; ``reason`` is for the audit log and tests,
    ``message`` for the person at the browser."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclass(frozen=True)
class ProviderChoice:
    id: str
    name: str
    organization_name: str


@dataclass(frozen=True)
class SteppedUp:
    """A re-authentication at the provider renewed the signed-in session's step-up."""

    until: datetime
    return_to: str


@dataclass(frozen=True)
class StartedSignIn:
    redirect_url: str
    browser_secret: str  # goes into a cookie; the request keeps its hash


class SsoService:
    def __init__(
        self,
        *,
        settings: Settings,
        uow: UnitOfWorkFactory,
        sealer: Sealer,
        sessions: SessionService,
        http: Callable[[], httpx.Client] = httpx.Client,
    ) -> None:
        self.settings = settings
        self.uow = uow
        self.sealer = sealer
        self.sessions = sessions
        self.http = http
        self._keys: dict[str, tuple[float, KeySet]] = {}
        self._keys_lock = threading.Lock()

    # -- choosing a provider -------------------------------------------------------------------------

    def providers_for(self, *, organization: str | None = None, email: str | None = None) -> list[ProviderChoice]:
        """The external providers of an organization (by name, without regard to case), or those that
        accept an email address's domain."""
        wanted_org = (organization or "").strip().casefold()
        domain = (email or "").strip().rpartition("@")[2].lower() if email and "@" in email else ""
        if not wanted_org and not domain:
            return []
        choices = []
        with self.uow(read_only=True) as uow:
            for provider in uow.identity_providers.all_external():
                org = uow.organizations.get(provider.organization_id)
                if org is None:
                    continue
                by_name = bool(wanted_org) and org.name.casefold() == wanted_org
                by_domain = (
                    bool(domain)
                    and provider.settings_encrypted is not None
                    and domain in open_settings(self.sealer, provider).allowed_email_domains
                )
                if by_name or by_domain:
                    choices.append(ProviderChoice(provider.id, provider.name, org.name))
        return choices

    # -- OpenID Connect ---------------------------------------------------------------------------------

    def start(
        self,
        provider_id: str,
        context: RequestContext,
        *,
        step_up: Principal | None = None,
        return_to: str | None = None,
    ) -> StartedSignIn:
        """A sign-in at the provider; with ``step_up``, a re-authentication of that signed-in federated user at
        their own provider (it signs in again and must show MFA), which renews the session's step-up."""
        with self.uow(read_only=True) as uow:
            found = uow.identity_providers.get(provider_id) if isinstance(provider_id, str) else None
        if step_up is not None and (
            found is None or step_up.session is None or step_up.user.identity_provider_id != found.id
        ):
            raise SsoRefused("not_your_provider", "Verify at the provider you signed in with.")
        step_up_session = step_up.session.id if step_up is not None and step_up.session is not None else None
        if found is not None and found.type == IdentityProviderType.SAML.value and found.settings_encrypted:
            return self._start_saml(found, step_up_session=step_up_session, return_to=return_to)
        now = utcnow()
        with self.uow() as uow:
            provider, settings = self._oidc_provider(uow, provider_id)
            state, nonce, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(24), secrets.token_urlsafe(48)
            browser = secrets.token_urlsafe(32)
            state_hash = hash_token(state)
            uow.sso_requests.add(
                SsoRequest(
                    state_hash=state_hash,
                    identity_provider_id=provider.id,
                    nonce=nonce,
                    code_verifier_sealed=self.sealer.seal(verifier.encode(), context=f"sso:{state_hash}"),
                    browser_hash=hash_token(browser),
                    step_up_session_id=step_up_session,
                    return_to=return_to,
                    expires_at=now + SSO_REQUEST_LIFETIME,
                    created_at=now,
                )
            )
        url = oidc.authorization_url(
            settings.metadata,
            client_id=settings.client_id,
            redirect_uri=self.redirect_uri(provider.id),
            scopes=settings.scopes,
            state=state,
            nonce=nonce,
            code_verifier=verifier,
            reauthenticate=step_up_session is not None,
        )
        return StartedSignIn(url, browser)

    def redirect_uri(self, provider_id: str) -> str:
        return f"{self.settings.public_url}/sso/oidc/{provider_id}/callback"

    def finish_oidc(
        self,
        provider_id: str,
        *,
        state: str | None,
        code: str | None,
        error: str | None,
        browser_secret: str | None,
        context: RequestContext,
    ) -> IssuedSession | SteppedUp:
        now = utcnow()
        if not isinstance(state, str) or not 20 <= len(state) <= 200:
            with self.uow() as uow:
                self._refusal_at(uow, provider_id, "no_state", context)
            raise SsoRefused("no_state", "This sign-in link is incomplete. Start the sign-in again.")
        state_hash = hash_token(state)
        with self.uow() as uow:
            request = uow.sso_requests.by_state_hash(state_hash)
            if request is None or request.identity_provider_id != provider_id:
                self._refusal_at(uow, provider_id, "unknown_state", context)
                raise SsoRefused("unknown_state", "This sign-in is unknown here. Start the sign-in again.")
            provider, settings = self._oidc_provider(uow, provider_id)
            if request.browser_hash is None or hash_token(browser_secret or "") != request.browser_hash:
                # Not the browser that started it: a link or a code sent to someone else (login CSRF).
                self._refusal(uow, provider, "another_browser", context)
                raise SsoRefused("another_browser", "This sign-in was started in another browser. Start it again here.")
            if not uow.sso_requests.use(state_hash, now=now):
                self._refusal(uow, provider, "used_or_expired", context)  # a replayed callback, or a late one
                raise SsoRefused(
                    "used_or_expired", "This sign-in has already been used or has expired. Start it again."
                )
            verifier = self.sealer.open(request.code_verifier_sealed or "", context=f"sso:{state_hash}").decode()
            nonce = request.nonce
        if error is not None or not isinstance(code, str) or not 1 <= len(code) <= 2000:
            reason = error if isinstance(error, str) and error.isascii() and len(error) <= 64 else "no_code"
            with self.uow() as uow:
                self._refusal(uow, provider, "upstream_error", context, upstream_error=reason)
            raise SsoRefused("upstream_error", f"{provider.name} did not sign you in ({reason}).")

        try:
            token = oidc.exchange_code(
                settings.metadata,
                client_id=settings.client_id,
                auth_method=settings.auth_method,
                client_secret=settings.client_secret,
                private_jwk=settings.private_jwk,
                code=code,
                redirect_uri=self.redirect_uri(provider.id),
                code_verifier=verifier,
            )
            claims = self._validated(settings, token["id_token"], nonce=nonce)
        except oidc.UpstreamError as failure:
            logger.warning("sign-in at %s failed: %s", provider.issuer, failure)
            with self.uow() as uow:
                self._refusal(uow, provider, "invalid_response", context, detail=str(failure))
            raise SsoRefused("invalid_response", f"{provider.name} answered in a way that cannot be trusted.") from None

        amr = [value for value in claims.get("amr") or [] if isinstance(value, str)][:20]
        shows_mfa = mfa.amr_shows_mfa(amr, accepted=settings.accepted_amr)
        if settings.require_mfa and not shows_mfa:
            with self.uow() as uow:
                self._refusal(uow, provider, "mfa_missing", context, subject=str(claims["sub"]), amr=amr)
            raise SsoRefused(
                "mfa_missing",
                f"{provider.name} signed you in without multi-factor authentication, which this organization "
                f"requires. Sign in at {provider.name} with a second factor, then try again.",
            )
        auth_time = claims.get("auth_time")
        upstream = UpstreamAuthentication(
            acr=str(claims.get("acr") or "0")[:255],
            auth_time=datetime.fromtimestamp(auth_time, UTC) if isinstance(auth_time, int | float) else now,
            mfa_verified=shows_mfa,
        )
        if request.step_up_session_id is not None:
            return self._stepped_up(provider, request, str(claims["sub"]), upstream, now=now, context=context)
        return self._signed_in(provider, settings, claims, amr=amr, upstream=upstream, now=now, context=context)

    def _stepped_up(
        self,
        provider: IdentityProvider,
        request: SsoRequest,
        subject: str,
        upstream: UpstreamAuthentication,
        *,
        now: datetime,
        context: RequestContext,
    ) -> SteppedUp:
        """The step-up of a federated user: the same person (provider, subject) as the session's, signed in again
        since the request was made (auth_time), with MFA; then the session's step-up is renewed, no new session."""
        with self.uow() as uow:
            session = uow.sessions.get(request.step_up_session_id or "")
            user = uow.users.get(session.user_id) if session is not None else None
            alive = session is not None and session.revoked_at is None and as_utc(session.expires_at) > now
            if (
                not alive
                or user is None
                or user.identity_provider_id != provider.id
                or user.external_subject != subject
            ):
                self._refusal(uow, provider, "another_user", context, subject=subject)
                raise SsoRefused("another_user", "That sign-in was not yours. Sign in again as yourself.")
            if upstream.auth_time < as_utc(request.created_at) - timedelta(seconds=60):
                self._refusal(uow, provider, "not_reauthenticated", context, subject=subject)
                raise SsoRefused(
                    "not_reauthenticated", f"{provider.name} did not ask you to sign in again. Try once more."
                )
            if not upstream.mfa_verified:
                self._refusal(uow, provider, "mfa_missing", context, subject=subject)
                raise SsoRefused("mfa_missing", f"{provider.name} verified you without a second factor.")
            assert session is not None
            until = self.sessions.renew_step_up(uow, session, now=now)
            audit.record(
                uow,
                "step_up.succeeded",
                organization_id=user.organization_id,
                actor_id=user.id,
                subject_id=user.id,
                ip=context.ip,
                details={"method": "sso", "identity_provider_id": provider.id, "acr": upstream.acr},
            )
        return SteppedUp(until=until, return_to=request.return_to or "/")

    def _signed_in(
        self,
        provider: IdentityProvider,
        settings: ProviderSettings,
        claims: dict[str, Any],
        *,
        amr: list[str],
        upstream: UpstreamAuthentication,
        now: datetime,
        context: RequestContext,
    ) -> IssuedSession:
        with self.uow() as uow:
            user = self._federated_user(uow, provider, settings, claims, context)
            issued = self.sessions.issue(uow, user, amr=amr, now=now, context=context, upstream=upstream)
            user.last_login_at = now
            audit.record(
                uow,
                "login.succeeded",
                organization_id=user.organization_id,
                subject_id=user.id,
                actor_id=user.id,
                ip=context.ip,
                details={
                    "amr": amr,
                    "method": "sso",
                    "protocol": provider.type,
                    "identity_provider_id": provider.id,
                    "acr": upstream.acr,
                },
            )
        return issued

    # -- SAML 2.0 ------------------------------------------------------------------------------------------

    def _start_saml(
        self, provider: IdentityProvider, *, step_up_session: str | None, return_to: str | None
    ) -> StartedSignIn:
        """A signed AuthnRequest asking for MFA; RelayState carries the key of the pending sign-in. No browser
        cookie: the answer is a cross-site POST, which a SameSite=Lax cookie does not ride on, so the pending
        sign-in is found by RelayState and checked by InResponseTo, both single-use."""
        settings = open_saml_settings(self.sealer, provider)
        relay = secrets.token_urlsafe(32)
        try:
            request_id, url = saml.authn_request(
                service_provider(self.settings.public_url, provider.id, settings),
                settings.idp_metadata_xml,
                idp_entity=settings.idp_entity_id,
                relay_state=relay,
                mfa_classes=settings.accepted_authn_contexts if settings.require_mfa or step_up_session else [],
                force_authn=step_up_session is not None,
            )
        except saml.SamlError as failure:
            logger.warning("SAML request for %s failed: %s", provider.issuer, failure)
            raise SsoRefused("invalid_response", f"{provider.name} cannot be reached for sign-in right now.") from None
        now = utcnow()
        with self.uow() as uow:
            uow.sso_requests.add(
                SsoRequest(
                    state_hash=hash_token(relay),
                    identity_provider_id=provider.id,
                    nonce="-",  # SAML has none; InResponseTo binds the answer
                    saml_request_id=request_id,
                    step_up_session_id=step_up_session,
                    return_to=return_to,
                    expires_at=now + SSO_REQUEST_LIFETIME,
                    created_at=now,
                )
            )
        return StartedSignIn(url, "")

    def saml_metadata(self, provider_id: str) -> str | None:
        with self.uow(read_only=True) as uow:
            provider = uow.identity_providers.get(provider_id) if isinstance(provider_id, str) else None
        if provider is None or provider.type != IdentityProviderType.SAML.value:
            return None
        settings = open_saml_settings(self.sealer, provider)
        return saml.sp_metadata(service_provider(self.settings.public_url, provider.id, settings))

    def finish_saml(
        self, provider_id: str, *, saml_response: str | None, relay_state: str | None, context: RequestContext
    ) -> IssuedSession | SteppedUp:
        now = utcnow()
        if not isinstance(relay_state, str) or not 20 <= len(relay_state) <= 200 or not saml_response:
            with self.uow() as uow:
                self._refusal_at(uow, provider_id, "no_state", context)
            raise SsoRefused("no_state", "This sign-in answer is incomplete. Start the sign-in again.")
        state_hash = hash_token(relay_state)
        with self.uow() as uow:
            request = uow.sso_requests.by_state_hash(state_hash)
            if request is None or request.identity_provider_id != provider_id or request.saml_request_id is None:
                self._refusal_at(uow, provider_id, "unknown_state", context)
                raise SsoRefused("unknown_state", "This sign-in is unknown here. Start the sign-in again.")
            provider = uow.identity_providers.get(provider_id)
            assert provider is not None  # the request's foreign key
            settings = open_saml_settings(self.sealer, provider)
            if not uow.sso_requests.use(state_hash, now=now):
                self._refusal(uow, provider, "used_or_expired", context)
                raise SsoRefused(
                    "used_or_expired", "This sign-in has already been used or has expired. Start it again."
                )
            request_id = request.saml_request_id
        try:
            assertion = saml.parse_response(
                service_provider(self.settings.public_url, provider.id, settings),
                settings.idp_metadata_xml,
                saml_response,
                request_id=request_id,
                idp_entity=settings.idp_entity_id,
            )
        except saml.SamlError as failure:
            logger.warning("SAML response from %s refused: %s", provider.issuer, failure)
            with self.uow() as uow:
                self._refusal(uow, provider, "invalid_response", context, detail=str(failure))
            raise SsoRefused("invalid_response", f"{provider.name} answered in a way that cannot be trusted.") from None
        with self.uow() as uow:
            # An assertion is accepted once, in any process, until it would have expired anyway (SAML Profiles
            # §4.1.4.5); its request was single-use too, so this is the second lock on the same door.
            lifetime = max(assertion.not_on_or_after, now.timestamp() + 300)
            if not uow.device_request_ids.remember(
                hash_token(f"saml-assertion:{provider.id}:{assertion.assertion_id}"),
                expires_at=datetime.fromtimestamp(lifetime, UTC),
            ):
                self._refusal(uow, provider, "replayed", context)
                raise SsoRefused("replayed", "This sign-in answer was already used. Start the sign-in again.")
        shows_mfa = mfa.authn_context_shows_mfa(assertion.class_ref, accepted=settings.accepted_authn_contexts)
        if settings.require_mfa and not shows_mfa:
            with self.uow() as uow:
                self._refusal(
                    uow, provider, "mfa_missing", context, subject=assertion.subject, authn_context=assertion.class_ref
                )
            raise SsoRefused(
                "mfa_missing",
                f"{provider.name} signed you in without multi-factor authentication, which this organization "
                f"requires. Sign in at {provider.name} with a second factor, then try again.",
            )
        claims: dict[str, Any] = {name: values[0] for name, values in assertion.attributes.items() if values}
        claims["sub"] = assertion.subject
        upstream = UpstreamAuthentication(
            acr=(assertion.class_ref or "0")[:255],
            auth_time=assertion.authn_instant or now,
            mfa_verified=shows_mfa,
        )
        if request.step_up_session_id is not None:
            return self._stepped_up(provider, request, assertion.subject, upstream, now=now, context=context)
        return self._signed_in(provider, settings, claims, amr=[], upstream=upstream, now=now, context=context)

    # -- parts -------------------------------------------------------------------------------------------

    def _oidc_provider(self, uow: UnitOfWork, provider_id: str) -> tuple[IdentityProvider, OidcSettings]:
        provider = uow.identity_providers.get(provider_id) if isinstance(provider_id, str) else None
        if provider is None or provider.type != IdentityProviderType.OIDC.value or not provider.settings_encrypted:
            raise SsoRefused("unknown_provider", "This sign-in provider is unknown here.")
        return provider, open_oidc_settings(self.sealer, provider)

    def _validated(self, settings: OidcSettings, id_token: str, *, nonce: str) -> dict[str, Any]:
        jwks_uri = settings.endpoints["jwks_uri"]
        issuer = settings.endpoints["issuer"]
        try:
            return oidc.validate_id_token(
                id_token, keys=self._provider_keys(jwks_uri), issuer=issuer, client_id=settings.client_id, nonce=nonce
            )
        except oidc.UpstreamError:
            # The provider may have rotated its keys since they were read: read them once more, then decide.
            return oidc.validate_id_token(
                id_token,
                keys=self._provider_keys(jwks_uri, fresh=True),
                issuer=issuer,
                client_id=settings.client_id,
                nonce=nonce,
            )

    def _provider_keys(self, jwks_uri: str, *, fresh: bool = False) -> KeySet:
        with self._keys_lock:
            cached = self._keys.get(jwks_uri)
            if cached is not None and not fresh and time.monotonic() - cached[0] < KEYS_CACHE_SECONDS:
                return cached[1]
        with self.http() as http:
            keys = oidc.fetch_keys(jwks_uri, http=http)
        with self._keys_lock:
            self._keys[jwks_uri] = (time.monotonic(), keys)
        return keys

    def _federated_user(
        self,
        uow: UnitOfWork,
        provider: IdentityProvider,
        settings: ProviderSettings,
        claims: dict[str, Any],
        context: RequestContext,
    ) -> User:
        subject = str(claims["sub"])
        user = uow.users.by_external_subject(provider.id, subject)
        if user is not None:
            if not user.is_active:
                self._refusal(uow, provider, "account_disabled", context, subject=subject)
                raise SsoRefused("account_disabled", "Your account here is disabled. Ask your administrator.")
            return user
        email = claims.get(settings.claims["email"])
        email = email.strip() if isinstance(email, str) and "@" in email and len(email) <= 254 else None
        if not settings.jit_provisioning:
            self._refusal(uow, provider, "no_account", context, subject=subject)
            raise SsoRefused("no_account", "You have no account here yet. Ask your administrator to create one.")
        if settings.allowed_email_domains:
            domain = email.rpartition("@")[2].lower() if email else ""
            if domain not in settings.allowed_email_domains or claims.get("email_verified") is False:
                self._refusal(uow, provider, "email_domain_not_allowed", context, subject=subject)
                raise SsoRefused(
                    "email_domain_not_allowed",
                    "Your email address is not one this organization accepts for sign-in.",
                )
        username = self._free_username(uow, self._wanted_username(settings, claims, email, subject))
        name = claims.get(settings.claims["name"])
        try:
            display_name = clean_display_name(name, field="name", maximum=200) if isinstance(name, str) else None
        except ValidationFailed:
            display_name = None
        user = User(
            organization_id=provider.organization_id,
            identity_provider_id=provider.id,
            username=username,
            username_key=username_key(username),
            email=email or "",
            display_name=display_name,
            kind=UserKind.USER.value,
            external_subject=subject,
        )
        uow.users.add(user)
        uow.flush()
        audit.record(
            uow,
            "user.created",
            organization_id=provider.organization_id,
            subject_id=user.id,
            ip=context.ip,
            details={"username": username, "identity_provider_id": provider.id, "provisioning": "just_in_time"},
        )
        return user

    @staticmethod
    def _wanted_username(settings: ProviderSettings, claims: dict[str, Any], email: str | None, subject: str) -> str:
        for candidate in (claims.get(settings.claims["username"]), email, subject):
            if isinstance(candidate, str):
                try:
                    return clean_username(candidate[: USERNAME_MAX - 8])
                except ValidationFailed:
                    continue
        return f"user-{secrets.token_hex(4)}"

    @staticmethod
    def _free_username(uow: UnitOfWork, wanted: str) -> str:
        """Never merged with an existing account: a taken name gets a numbered suffix (issue: R2)."""
        if uow.users.by_username_key(username_key(wanted)) is None:
            return wanted
        for number in range(2, 1000):
            candidate = f"{wanted}-{number}"
            if uow.users.by_username_key(username_key(candidate)) is None:
                return candidate
        return f"{wanted}-{secrets.token_hex(4)}"

    @classmethod
    def _refusal_at(cls, uow: UnitOfWork, provider_id: str, reason: str, context: RequestContext) -> None:
        """A refusal at the callback of a provider named only by the URL: audited when it is a provider here."""
        provider = uow.identity_providers.get(provider_id) if isinstance(provider_id, str) else None
        if provider is not None and provider.type != "local":
            cls._refusal(uow, provider, reason, context)

    @staticmethod
    def _refusal(
        uow: UnitOfWork, provider: IdentityProvider, reason: str, context: RequestContext, **details: Any
    ) -> None:
        audit.record(
            uow,
            "sso.mfa_missing" if reason == "mfa_missing" else "sso.refused",
            organization_id=provider.organization_id,
            ip=context.ip,
            details={"identity_provider_id": provider.id, "reason": reason, **details},
        )
        uow.commit()  # the refusal is raised next: its audit event must outlive the rollback
