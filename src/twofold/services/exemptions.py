"""The exempt list of an organization's local identity provider (R4).

Only local service accounts whose service type is ``test_automation`` or ``rpa`` may be added; a
human account only before the cut-off date (``TWOFOLD_USER_EXEMPTION_CUTOFF``); never an SSO account,
never an Organization Administrator. Every exemption expires (default 90 days, at most a year), and
removing one ends the account's sessions, so a password-only session does not outlive its waiver.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from twofold.config import Settings
from twofold.domain.clock import as_utc, utcnow
from twofold.domain.entities import (
    ORGANIZATION_ADMINISTRATOR,
    Exemption,
    ServiceType,
    User,
    UserKind,
    UserMfaFacts,
)
from twofold.domain.errors import NotExemptable, NotFound, ValidationFailed
from twofold.domain.ports import UnitOfWork, UnitOfWorkFactory
from twofold.domain.rules import exemption_applies

from . import audit
from .admin import AdminService
from .context import Actor, RequestContext
from .sessions import SessionService

DEFAULT_LIFETIME = timedelta(days=90)
MAXIMUM_LIFETIME = timedelta(days=365)
EXEMPTABLE_SERVICE_TYPES = frozenset(t.value for t in ServiceType)
SCOPE = "exempt_accounts:write"


@dataclass
class ExemptionView:
    exemption: Exemption
    user: User
    exempted_by: User | None
    in_force: bool

    @property
    def days_left(self) -> int:
        left = as_utc(self.exemption.expires_at) - utcnow()
        return max(0, left.days + (1 if left.seconds else 0))


def refusal(user: User | UserMfaFacts, *, is_admin: bool, now: datetime, cutoff: date) -> str | None:
    """Why this account cannot be exempted, in words an administrator can act on; None when it can."""
    if user.is_federated:
        return "single sign-on accounts do their MFA at their identity provider and cannot be exempted"
    if is_admin:
        return "an Organization Administrator cannot be exempted from MFA"
    if user.kind != UserKind.SERVICE.value:
        if now.date() >= cutoff:
            return (
                f"human user accounts cannot be exempted after {cutoff.isoformat()}: only test automation "
                "and RPA service accounts can"
            )
        return None
    if user.service_type not in EXEMPTABLE_SERVICE_TYPES:
        return "only test automation and RPA service accounts can be exempted"
    return None


class ExemptionService:
    def __init__(
        self, *, settings: Settings, uow: UnitOfWorkFactory, admin: AdminService, sessions: SessionService
    ) -> None:
        self.settings = settings
        self.uow = uow
        self.admin = admin
        self.sessions = sessions

    def _local_provider_id(self, uow: UnitOfWork, organization_id: str) -> str:
        provider = uow.identity_providers.local_for(organization_id)
        if provider is None:
            raise NotFound("this organization has no local identity provider")
        return provider.id

    def exempt_accounts(self, principal: Actor, organization_id: str) -> list[ExemptionView]:
        now = utcnow()
        with self.uow(read_only=True) as uow:
            organization = self.admin.authorize(uow, principal, organization_id, "users:read")
            exemptions = uow.exemptions.for_provider(self._local_provider_id(uow, organization.root_id))
            users = uow.users.by_ids(
                list({x.user_id for x in exemptions} | {x.exempted_by for x in exemptions if x.exempted_by})
            )
            cutoff = self.settings.user_exemption_cutoff
            return [
                ExemptionView(
                    exemption=x,
                    user=users[x.user_id],
                    exempted_by=users.get(x.exempted_by) if x.exempted_by else None,
                    in_force=exemption_applies(users[x.user_id], x, now=now, cutoff=cutoff),
                )
                for x in exemptions
                if x.user_id in users
            ]

    def candidates(self, principal: Actor, organization_id: str) -> list[User]:
        """Accounts that could be added now: never an SSO account or an administrator, never a human
        once the cut-off has passed; accounts already on the list are left out."""
        now = utcnow()
        with self.uow(read_only=True) as uow:
            organization = self.admin.authorize(uow, principal, organization_id, "users:read")
            admins = set(uow.permissions.holders(organization.root_id, ORGANIZATION_ADMINISTRATOR))
            cutoff = self.settings.user_exemption_cutoff
            picked = [
                facts.id
                for facts in uow.users.mfa_facts(organization.root_id)
                if facts.exemption_expires_at is None
                and facts.is_active
                and refusal(facts, is_admin=facts.id in admins, now=now, cutoff=cutoff) is None
            ]
            found = uow.users.by_ids(picked)
            return [found[user_id] for user_id in picked if user_id in found]

    def exempt(
        self,
        principal: Actor,
        organization_id: str,
        user_id: str,
        *,
        expires_at: datetime | None,
        context: RequestContext,
    ) -> Exemption:
        """Add an account to the exempt list, or set a new expiry on its exemption (★)."""
        now = utcnow()
        expiry = as_utc(expires_at) if expires_at is not None else now + DEFAULT_LIFETIME
        if expiry <= now:
            raise ValidationFailed("expires_at must be in the future")
        if expiry > now + MAXIMUM_LIFETIME:
            raise ValidationFailed("an exemption lasts at most one year: move the account to a connected app")
        with self.uow() as uow:
            organization = self.admin.authorize(uow, principal, organization_id, SCOPE, step_up=True)
            # The user row's lock orders this against a concurrent administrator grant (R4 both ways).
            user = uow.users.get_for_update(user_id) if isinstance(user_id, str) else None
            if user is None or user.organization_id != organization.root_id:
                raise NotFound("no such user")
            is_admin = uow.permissions.find(user.id, organization.root_id, ORGANIZATION_ADMINISTRATOR) is not None
            reason = refusal(user, is_admin=is_admin, now=now, cutoff=self.settings.user_exemption_cutoff)
            if reason is not None:
                audit.record(
                    uow,
                    "exemption.refused",
                    organization_id=organization.root_id,
                    actor_id=principal.user_id,
                    subject_id=user.id,
                    ip=context.ip,
                    details={"reason": reason},
                )
                uow.commit()
                raise NotExemptable(reason)
            existing = uow.exemptions.for_user(user.id)
            if existing is None:
                exemption = Exemption(
                    identity_provider_id=self._local_provider_id(uow, organization.root_id),
                    user_id=user.id,
                    expires_at=expiry,
                    exempted_by=principal.user_id,
                    exempted_at=now,
                )
                uow.exemptions.add(exemption)
            else:
                exemption = existing
                exemption.expires_at = expiry
                exemption.exempted_by = principal.user_id
            audit.record(
                uow,
                "exemption.added" if existing is None else "exemption.renewed",
                organization_id=organization.root_id,
                actor_id=principal.user_id,
                subject_id=user.id,
                ip=context.ip,
                details={"expires_at": expiry.isoformat(), "service_type": user.service_type, "kind": user.kind},
            )
            return exemption

    def remove(self, principal: Actor, organization_id: str, user_id: str, *, context: RequestContext) -> int:
        """Take an account off the exempt list (★); its sessions end. Returns how many ended."""
        now = utcnow()
        with self.uow() as uow:
            organization = self.admin.authorize(uow, principal, organization_id, SCOPE, step_up=True)
            user = uow.users.get_for_update(user_id) if isinstance(user_id, str) else None
            if user is None or user.organization_id != organization.root_id:
                raise NotFound("no such user")
            exemption = uow.exemptions.for_user(user.id)
            if exemption is None:
                raise NotFound("this account is not on the exempt list")
            uow.exemptions.delete(exemption)
            ended = self.sessions.end_all(uow, user.id, now=now)
            audit.record(
                uow,
                "exemption.removed",
                organization_id=organization.root_id,
                actor_id=principal.user_id,
                subject_id=user.id,
                ip=context.ip,
                details={"sessions_ended": ended, "expires_at": as_utc(exemption.expires_at).isoformat()},
            )
            return ended
