"""Twofold's entities as plain dataclasses. ``storage`` maps them onto tables imperatively."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .clock import as_utc, utcnow


def new_id() -> str:
    return uuid.uuid4().hex


class UserKind(enum.StrEnum):
    USER = "user"
    SERVICE = "service"


class ServiceType(enum.StrEnum):
    TEST_AUTOMATION = "test_automation"
    RPA = "rpa"


class UserStatus(enum.StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"


class IdentityProviderType(enum.StrEnum):
    LOCAL = "local"
    OIDC = "oidc"
    SAML = "saml"


class MethodStatus(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"


class TransactionState(enum.StrEnum):
    MFA_REQUIRED = "mfa_required"
    ENROLLMENT_REQUIRED = "enrollment_required"


class TokenPurpose(enum.StrEnum):
    SETUP = "setup"
    PASSWORD_RESET = "password_reset"


ORGANIZATION_ADMINISTRATOR = "organization_administrator"


@dataclass(eq=False)
class Organization:
    name: str
    parent_id: str | None = None
    root_id: str = ""
    # WebAuthn attestation the organization asks for ("none" or "direct"), and with "direct" an optional
    # allow-list of authenticator models (AAGUIDs); None allows any model.
    webauthn_attestation: str = "none"
    webauthn_allowed_aaguids: list[str] | None = None
    id: str = field(default_factory=new_id)
    created_at: datetime = field(default_factory=utcnow)

    def __post_init__(self) -> None:
        if not self.root_id:
            self.root_id = self.id

    @property
    def is_root(self) -> bool:
        return self.parent_id is None


@dataclass(eq=False)
class IdentityProvider:
    organization_id: str
    type: str
    name: str
    issuer: str | None = None
    settings_encrypted: str | None = None
    id: str = field(default_factory=new_id)
    created_at: datetime = field(default_factory=utcnow)


@dataclass(eq=False)
class User:
    organization_id: str
    identity_provider_id: str
    username: str
    username_key: str
    email: str
    kind: str = UserKind.USER.value
    service_type: str | None = None
    display_name: str | None = None
    external_subject: str | None = None
    password_hash: str | None = None
    status: str = UserStatus.ACTIVE.value
    locked_at: datetime | None = None
    last_login_at: datetime | None = None
    password_changed_at: datetime | None = None
    id: str = field(default_factory=new_id)
    created_at: datetime = field(default_factory=utcnow)

    @property
    def is_federated(self) -> bool:
        return self.external_subject is not None

    @property
    def is_active(self) -> bool:
        return self.status == UserStatus.ACTIVE.value


@dataclass(frozen=True)
class UserMfaFacts:
    """What reports need of a user, without the whole account: kind, SSO or local, status, lock,
    whether an active method exists, and the exemption's expiry if one is recorded."""

    id: str
    username: str
    kind: str
    service_type: str | None
    external_subject: str | None
    status: str
    locked_at: datetime | None
    has_method: bool
    exemption_expires_at: datetime | None

    @property
    def is_federated(self) -> bool:
        return self.external_subject is not None

    @property
    def is_active(self) -> bool:
        return self.status == UserStatus.ACTIVE.value


@dataclass(eq=False)
class Permission:
    user_id: str
    organization_id: str
    name: str
    granted_by: str | None = None
    id: str = field(default_factory=new_id)
    granted_at: datetime = field(default_factory=utcnow)


@dataclass(eq=False)
class Exemption:
    """An MFA waiver on the local identity provider's exempt list (R4)."""

    identity_provider_id: str
    user_id: str
    expires_at: datetime
    exempted_by: str | None = None
    id: str = field(default_factory=new_id)
    exempted_at: datetime = field(default_factory=utcnow)


@dataclass(eq=False)
class VerificationMethodRecord:
    """A registered second factor. ``payload_encrypted`` is opaque to everyone but its method package."""

    user_id: str
    type: str
    name: str
    status: str = MethodStatus.PENDING.value
    payload_encrypted: str | None = None
    # Lookup key a method may need across users (e.g. a WebAuthn credential id); unique when set.
    lookup_key: str | None = None
    expires_at: datetime | None = None
    login_transaction_id: str | None = None
    last_used_at: datetime | None = None
    # The last counter a proof of this method was accepted at (a TOTP time step, a WebAuthn signature
    # count). It only moves forward, by a conditional UPDATE, which is what makes a proof single-use.
    counter: int | None = None
    # Set when a use showed the method was copied (a WebAuthn signature counter that went backwards).
    cloned_at: datetime | None = None
    id: str = field(default_factory=new_id)
    created_at: datetime = field(default_factory=utcnow)

    @property
    def is_active(self) -> bool:
        return self.status == MethodStatus.ACTIVE.value


@dataclass(eq=False)
class LoginTransaction:
    user_id: str
    token_hash: str
    state: str
    expires_at: datetime
    ip: str | None = None
    user_agent: str | None = None
    failed_attempts: int = 0
    ended_at: datetime | None = None
    id: str = field(default_factory=new_id)
    created_at: datetime = field(default_factory=utcnow)

    def is_open(self, now: datetime) -> bool:
        return self.ended_at is None and as_utc(self.expires_at) > now


@dataclass(eq=False)
class Session:
    user_id: str
    token_hash: str
    amr: list[str]
    acr: str
    auth_time: datetime
    expires_at: datetime
    last_seen_at: datetime
    step_up_until: datetime | None = None
    ip: str | None = None
    user_agent: str | None = None
    revoked_at: datetime | None = None
    # MFA was done: a second factor here, or an upstream sign-in that the provider's MFA policy accepted
    # (its amr is kept verbatim, so it need not say "mfa": "pwd" and "otp" pass too, sso/mfa.py).
    mfa_verified: bool = False
    id: str = field(default_factory=new_id)
    created_at: datetime = field(default_factory=utcnow)


@dataclass(eq=False)
class SsoRequest:
    """A sign-in sent to an upstream identity provider and not back yet: found by its state (OIDC) or
    RelayState (SAML), used once, within SSO_REQUEST_LIFETIME."""

    state_hash: str
    identity_provider_id: str
    nonce: str
    expires_at: datetime
    code_verifier_sealed: str | None = None
    saml_request_id: str | None = None
    browser_hash: str | None = None  # OIDC: the hash of a cookie set when the sign-in started
    step_up_session_id: str | None = None  # a re-authentication that renews this session's step-up
    return_to: str | None = None  # where the browser goes after a step-up
    used_at: datetime | None = None
    created_at: datetime = field(default_factory=utcnow)


@dataclass(eq=False)
class OneTimeToken:
    """A set-up link or password-reset link; only its hash is stored."""

    user_id: str
    token_hash: str
    purpose: str
    expires_at: datetime
    used_at: datetime | None = None
    id: str = field(default_factory=new_id)
    created_at: datetime = field(default_factory=utcnow)


@dataclass(eq=False)
class Challenge:
    """A server-issued challenge (WebAuthn), bound to a login transaction or a session, used once."""

    user_id: str
    challenge_hash: str
    expires_at: datetime
    login_transaction_id: str | None = None
    session_id: str | None = None
    # The method type whose credentials the options offered (allowCredentials); None offered them all.
    method_type: str | None = None
    used_at: datetime | None = None
    id: str = field(default_factory=new_id)
    created_at: datetime = field(default_factory=utcnow)


class GrantType(enum.StrEnum):
    """The two kinds of connected app (R5): one acting on its own behalf, one acting for a user."""

    CLIENT_CREDENTIALS = "client_credentials"
    AUTHORIZATION_CODE = "authorization_code"


@dataclass(eq=False)
class ConnectedApp:
    """An OAuth 2.0 client owned by an organization (R5)."""

    organization_id: str
    name: str
    client_id: str
    grant_type: str
    scopes: list[str]
    redirect_uris: list[str] = field(default_factory=list)
    first_party: bool = False
    enabled: bool = True
    # "client_secret_basic" / "client_secret_post" with a generated secret, or "private_key_jwt" with ``jwks``.
    auth_method: str = "client_secret_basic"
    jwks: dict[str, Any] | None = None
    # Tokens issued before this moment are dead (disabling, secret compromise): JWTs need no per-token row.
    tokens_valid_after: datetime = field(default_factory=utcnow)
    created_by: str | None = None
    id: str = field(default_factory=new_id)
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)


@dataclass(eq=False)
class ClientSecret:
    """A connected app's secret, as an HMAC-SHA-256 digest; a rotated one keeps working until ``expires_at``."""

    app_id: str
    digest: str
    expires_at: datetime | None = None
    id: str = field(default_factory=new_id)
    created_at: datetime = field(default_factory=utcnow)


@dataclass(eq=False)
class SigningKey:
    """A token-signing key (ES256). New tokens use the newest; older ones stay in the JWKS until the
    tokens they signed have expired."""

    kid: str
    algorithm: str
    private_key_sealed: str
    public_jwk: dict[str, Any]
    retired_at: datetime | None = None
    created_at: datetime = field(default_factory=utcnow)


@dataclass(eq=False)
class AuthorizationCode:
    """A code of the authorization-code grant (RFC 6749 §4.1): its hash, what it was issued for, once."""

    code_hash: str
    app_id: str
    user_id: str
    session_id: str
    redirect_uri: str
    scope: str
    code_challenge: str
    expires_at: datetime
    auth_time: datetime
    amr: list[str]
    acr: str
    nonce: str | None = None
    used_at: datetime | None = None
    created_at: datetime = field(default_factory=utcnow)


@dataclass(eq=False)
class RefreshToken:
    """A refresh token (hash). Each use rotates it; a used one presented again revokes its whole family
    (RFC 9700 §4.14.2), since one of the two presenters stole it."""

    token_hash: str
    family_id: str
    app_id: str
    user_id: str
    session_id: str | None
    scope: str
    auth_time: datetime
    amr: list[str]
    acr: str
    expires_at: datetime
    used_at: datetime | None = None
    revoked_at: datetime | None = None
    created_at: datetime = field(default_factory=utcnow)


@dataclass(eq=False)
class Consent:
    """What a user allowed an application that is not first-party (OpenID Connect Core §3.1.2.4): asked once,
    then remembered until the user withdraws it, which also ends the app's refresh tokens for the user."""

    user_id: str
    app_id: str
    scopes: list[str]
    granted_at: datetime = field(default_factory=utcnow)


class PushStatus(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    USED = "used"  # an approval that completed its login or step-up


@dataclass(eq=False)
class PushChallenge:
    """A push prompt (R8 ``push``): bound to a login transaction or a session, answered once by one of the
    user's paired devices within 60 s; the device must pick ``number`` among ``choices``."""

    user_id: str
    number: int
    choices: list[int]
    expires_at: datetime
    login_transaction_id: str | None = None
    session_id: str | None = None
    # Only this device is asked when set (API.md ``method_id``); else every paired device of the user.
    method_id: str | None = None
    app: str = "Twofold"
    ip: str | None = None
    user_agent: str | None = None
    status: str = PushStatus.PENDING.value
    decided_by: str | None = None
    decided_at: datetime | None = None
    not_me: bool = False
    wrong_number: bool = False
    id: str = field(default_factory=new_id)
    created_at: datetime = field(default_factory=utcnow)


@dataclass(eq=False)
class RecoveryCode:
    """One of a user's one-time recovery codes (R8); only its hash is stored."""

    user_id: str
    code_hash: str
    used_at: datetime | None = None
    id: str = field(default_factory=new_id)
    created_at: datetime = field(default_factory=utcnow)


@dataclass(eq=False)
class AuditEvent:
    organization_id: str | None
    type: str
    actor_id: str | None = None
    subject_id: str | None = None
    ip: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=new_id)
    at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class ThrottleState:
    key: str
    failures: int
    blocked_until: datetime | None
    window_start: datetime | None
