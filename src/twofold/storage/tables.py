"""Tables, and the imperative mapping of the domain's dataclasses onto them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    event,
)
from sqlalchemy.orm import registry

from twofold.domain import entities as e
from twofold.domain.clock import as_utc

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on the way out, whatever the backend stores."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else as_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else as_utc(value)


ID = String(32)

organizations = Table(
    "organizations",
    metadata,
    Column("id", ID, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("parent_id", ID, ForeignKey("organizations.id", ondelete="CASCADE"), nullable=True),
    Column("root_id", ID, nullable=False, index=True),
    Column("webauthn_attestation", String(16), nullable=False, server_default="none"),
    Column("webauthn_allowed_aaguids", JSON, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
)
# One root organization per name: `twofold init` refuses to run twice for the same organization.
Index(
    "uq_organizations_root_name",
    organizations.c.name,
    unique=True,
    sqlite_where=organizations.c.parent_id.is_(None),
    postgresql_where=organizations.c.parent_id.is_(None),
)

identity_providers = Table(
    "identity_providers",
    metadata,
    Column("id", ID, primary_key=True),
    Column("organization_id", ID, ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("type", String(16), nullable=False),
    Column("name", String(200), nullable=False),
    Column("issuer", String(500), nullable=True),
    Column("settings_encrypted", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
)
Index(
    "uq_identity_providers_local",
    identity_providers.c.organization_id,
    unique=True,
    sqlite_where=identity_providers.c.type == "local",
    postgresql_where=identity_providers.c.type == "local",
)

users = Table(
    "users",
    metadata,
    Column("id", ID, primary_key=True),
    Column("organization_id", ID, ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False),
    Column("identity_provider_id", ID, ForeignKey("identity_providers.id"), nullable=False),
    Column("external_subject", String(500), nullable=True),
    Column("username", String(128), nullable=False),
    Column("username_key", String(256), nullable=False, unique=True),
    Column("email", String(254), nullable=False),
    Column("display_name", String(200), nullable=True),
    Column("kind", String(16), nullable=False),
    Column("service_type", String(32), nullable=True),
    Column("password_hash", String(255), nullable=True),
    Column("status", String(16), nullable=False),
    Column("locked_at", UTCDateTime, nullable=True),
    Column("last_login_at", UTCDateTime, nullable=True),
    Column("password_changed_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("identity_provider_id", "external_subject", name="uq_users_idp_subject"),
)
Index("ix_users_org_username", users.c.organization_id, users.c.username_key)

permissions = Table(
    "permissions",
    metadata,
    Column("id", ID, primary_key=True),
    Column("user_id", ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("organization_id", ID, ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("granted_by", ID, nullable=True),
    Column("granted_at", UTCDateTime, nullable=False),
    UniqueConstraint("user_id", "organization_id", "name", name="uq_permissions_grant"),
)

exemptions = Table(
    "exemptions",
    metadata,
    Column("id", ID, primary_key=True),
    Column("identity_provider_id", ID, ForeignKey("identity_providers.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, unique=True),
    Column("exempted_by", ID, nullable=True),
    Column("exempted_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
)

verification_methods = Table(
    "verification_methods",
    metadata,
    Column("id", ID, primary_key=True),
    Column("user_id", ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("type", String(32), nullable=False),
    Column("name", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("payload_encrypted", Text, nullable=True),
    Column("lookup_key", String(255), nullable=True, unique=True),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("login_transaction_id", ID, nullable=True),
    Column("last_used_at", UTCDateTime, nullable=True),
    Column("counter", BigInteger, nullable=True),
    Column("cloned_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
)

challenges = Table(
    "challenges",
    metadata,
    Column("id", ID, primary_key=True),
    Column("user_id", ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("challenge_hash", String(64), nullable=False, unique=True),
    Column("login_transaction_id", ID, nullable=True),
    Column("session_id", ID, nullable=True),
    Column("method_type", String(32), nullable=True),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("used_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
)

push_challenges = Table(
    "push_challenges",
    metadata,
    Column("id", ID, primary_key=True),
    Column("user_id", ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("login_transaction_id", ID, nullable=True),
    Column("session_id", ID, nullable=True),
    Column("method_id", ID, nullable=True),
    Column("number", Integer, nullable=False),
    Column("choices", JSON, nullable=False),
    Column("app", String(200), nullable=False),
    Column("ip", String(64), nullable=True),
    Column("user_agent", String(512), nullable=True),
    Column("status", String(16), nullable=False),
    Column("decided_by", ID, nullable=True),
    Column("decided_at", UTCDateTime, nullable=True),
    Column("not_me", Boolean, nullable=False),
    Column("wrong_number", Boolean, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

connected_apps = Table(
    "connected_apps",
    metadata,
    Column("id", ID, primary_key=True),
    Column("organization_id", ID, ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("client_id", String(64), nullable=False, unique=True),
    Column("grant_type", String(32), nullable=False),
    Column("scopes", JSON, nullable=False),
    Column("redirect_uris", JSON, nullable=False),
    Column("first_party", Boolean, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("auth_method", String(32), nullable=False),
    Column("jwks", JSON, nullable=True),
    Column("tokens_valid_after", UTCDateTime, nullable=False),
    Column("created_by", ID, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

client_secrets = Table(
    "client_secrets",
    metadata,
    Column("id", ID, primary_key=True),
    Column("app_id", ID, ForeignKey("connected_apps.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("digest", String(80), nullable=False, unique=True),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
)

authorization_codes = Table(
    "authorization_codes",
    metadata,
    Column("code_hash", String(64), primary_key=True),
    Column("app_id", ID, ForeignKey("connected_apps.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("session_id", ID, nullable=False),
    Column("redirect_uri", String(2000), nullable=False),
    Column("scope", String(500), nullable=False),
    Column("code_challenge", String(128), nullable=False),
    Column("nonce", String(500), nullable=True),
    Column("auth_time", UTCDateTime, nullable=False),
    Column("amr", JSON, nullable=False),
    Column("acr", String(255), nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("used_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
)

refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("family_id", ID, nullable=False, index=True),
    Column("app_id", ID, ForeignKey("connected_apps.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("session_id", ID, nullable=True),
    Column("scope", String(500), nullable=False),
    Column("auth_time", UTCDateTime, nullable=False),
    Column("amr", JSON, nullable=False),
    Column("acr", String(255), nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("used_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
)

oauth_consents = Table(
    "oauth_consents",
    metadata,
    Column("user_id", ID, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("app_id", ID, ForeignKey("connected_apps.id", ondelete="CASCADE"), primary_key=True, index=True),
    Column("scopes", JSON, nullable=False),
    Column("granted_at", UTCDateTime, nullable=False),
)

signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("algorithm", String(16), nullable=False),
    Column("private_key_sealed", Text, nullable=False),
    Column("public_jwk", JSON, nullable=False),
    Column("retired_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
)

# Each device request's JWS id (``jti``), kept until its ``iat`` is out of the accepted window.
device_request_ids = Table(
    "device_request_ids",
    metadata,
    Column("jti_hash", String(64), primary_key=True),
    Column("expires_at", UTCDateTime, nullable=False, index=True),
)

recovery_codes = Table(
    "recovery_codes",
    metadata,
    Column("id", ID, primary_key=True),
    Column("user_id", ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("code_hash", String(64), nullable=False),
    Column("used_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("user_id", "code_hash", name="uq_recovery_codes_user_id_code_hash"),
)

login_transactions = Table(
    "login_transactions",
    metadata,
    Column("id", ID, primary_key=True),
    Column("user_id", ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("state", String(32), nullable=False),
    Column("failed_attempts", Integer, nullable=False, default=0),
    Column("ip", String(64), nullable=True),
    Column("user_agent", String(512), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False, index=True),
    Column("ended_at", UTCDateTime, nullable=True),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", ID, primary_key=True),
    Column("user_id", ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("amr", JSON, nullable=False),
    Column("acr", String(255), nullable=False),
    Column("auth_time", UTCDateTime, nullable=False),
    Column("step_up_until", UTCDateTime, nullable=True),
    Column("ip", String(64), nullable=True),
    Column("user_agent", String(512), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_seen_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False, index=True),
    Column("revoked_at", UTCDateTime, nullable=True),
    Column("mfa_verified", Boolean, nullable=False),
)

sso_requests = Table(
    "sso_requests",
    metadata,
    Column("state_hash", String(64), primary_key=True),
    Column(
        "identity_provider_id", ID, ForeignKey("identity_providers.id", ondelete="CASCADE"), nullable=False
    ),
    Column("nonce", String(128), nullable=False),
    Column("code_verifier_sealed", Text, nullable=True),
    Column("saml_request_id", String(128), nullable=True),
    Column("browser_hash", String(64), nullable=True),
    Column("step_up_session_id", ID, nullable=True),
    Column("return_to", String(2000), nullable=True),
    Column("expires_at", UTCDateTime, nullable=False, index=True),
    Column("used_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
)

one_time_tokens = Table(
    "one_time_tokens",
    metadata,
    Column("id", ID, primary_key=True),
    Column("user_id", ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("purpose", String(32), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False, index=True),
    Column("used_at", UTCDateTime, nullable=True),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("id", ID, primary_key=True),
    Column("organization_id", ID, nullable=True),
    Column("at", UTCDateTime, nullable=False),
    Column("type", String(64), nullable=False),
    Column("actor_id", ID, nullable=True),
    Column("subject_id", ID, nullable=True),
    Column("ip", String(64), nullable=True),
    Column("details", JSON, nullable=False),
)
Index("ix_audit_org_at", audit_events.c.organization_id, audit_events.c.at, audit_events.c.id)
Index("ix_audit_at", audit_events.c.at)

throttles = Table(
    "throttles",
    metadata,
    Column("key", String(300), primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("blocked_until", UTCDateTime, nullable=True),
    Column("window_start", UTCDateTime, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False, index=True),
)

mapper_registry = registry(metadata=metadata)
_MAPPED = False


def map_entities() -> None:
    global _MAPPED
    if _MAPPED:
        return
    mapper_registry.map_imperatively(e.Organization, organizations)
    mapper_registry.map_imperatively(e.IdentityProvider, identity_providers)
    mapper_registry.map_imperatively(e.User, users)
    mapper_registry.map_imperatively(e.Permission, permissions)
    mapper_registry.map_imperatively(e.Exemption, exemptions)
    mapper_registry.map_imperatively(e.VerificationMethodRecord, verification_methods)
    mapper_registry.map_imperatively(e.RecoveryCode, recovery_codes)
    mapper_registry.map_imperatively(e.Challenge, challenges)
    mapper_registry.map_imperatively(e.PushChallenge, push_challenges)
    mapper_registry.map_imperatively(e.ConnectedApp, connected_apps)
    mapper_registry.map_imperatively(e.ClientSecret, client_secrets)
    mapper_registry.map_imperatively(e.SigningKey, signing_keys)
    mapper_registry.map_imperatively(e.AuthorizationCode, authorization_codes)
    mapper_registry.map_imperatively(e.RefreshToken, refresh_tokens)
    mapper_registry.map_imperatively(e.Consent, oauth_consents)
    mapper_registry.map_imperatively(e.SsoRequest, sso_requests)
    mapper_registry.map_imperatively(e.LoginTransaction, login_transactions)
    mapper_registry.map_imperatively(e.Session, sessions)
    mapper_registry.map_imperatively(e.OneTimeToken, one_time_tokens)
    mapper_registry.map_imperatively(e.AuditEvent, audit_events)
    event.listen(e.User, "before_update", _kind_is_immutable)
    _MAPPED = True


class ImmutableFieldChanged(Exception):
    pass


def _kind_is_immutable(mapper: Any, connection: Any, target: e.User) -> None:
    """An account's kind and service type are fixed at creation (R4)."""
    from sqlalchemy import inspect

    state = inspect(target)
    for name in ("kind", "service_type"):
        history = state.attrs[name].history
        if history.deleted and history.deleted[0] != getattr(target, name):
            raise ImmutableFieldChanged(f"users.{name} never changes after creation")
