"""Administration: the organization tree, users, unlock, administrator grants, audit queries.

Every call checks its permission first: objects of another organization are ``NotFound`` (404) so
that nothing about them leaks; missing permission in one's own organization is ``Forbidden`` (403).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from twofold.config import Settings
from twofold.domain.clock import as_utc, utcnow
from twofold.domain.entities import (
    ORGANIZATION_ADMINISTRATOR,
    AuditEvent,
    Exemption,
    IdentityProvider,
    Organization,
    Permission,
    User,
    UserStatus,
    VerificationMethodRecord,
)
from twofold.domain.errors import Conflict, Forbidden, NotFound, ValidationFailed
from twofold.domain.ports import Notifier, UnitOfWork, UnitOfWorkFactory
from twofold.domain.rules import (
    clean_display_name,
    clean_email,
    exemption_applies,
    exemption_until_applies,
    username_key,
)

from . import audit
from .context import Actor, AppPrincipal, Principal, RequestContext
from .sessions import SessionService
from .throttle import Throttle

MAX_PAGE = 200
OPERATOR = "operator"


def encode_cursor(*parts: str) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, length: int) -> list[str]:
    try:
        parts = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise ValidationFailed("cursor is not one this server gave out") from None
    if not isinstance(parts, list) or len(parts) != length or not all(isinstance(p, str) for p in parts):
        raise ValidationFailed("cursor is not one this server gave out")
    return parts


@dataclass
class UserView:
    user: User
    identity_provider: IdentityProvider | None
    exemption: Exemption | None
    exemption_in_force: bool
    methods: list[VerificationMethodRecord]
    locked_until: datetime | None
    is_admin: bool
    # A push this user denied as "this wasn't me" (kept 30 days): someone may know their password.
    reported_not_me: bool = False


@dataclass
class MfaReport:
    """Users of an organization by MFA state, and active methods by type (the coverage report)."""

    users: int
    enrolled: int
    pending_enrollment: int
    exempt: int
    sso: int
    locked: int
    disabled: int
    # method type -> (active methods, users holding one)
    methods_by_type: dict[str, tuple[int, int]]


@dataclass
class Attention:
    """What an administrator should look at: locked accounts, cloned authenticators, disabled accounts."""

    locked: list[UserView]
    cloned_authenticator: list[UserView]
    push_denied_not_me: list[UserView]
    disabled: list[UserView]


@dataclass
class Page:
    items: list[Any]
    next_cursor: str | None


class AdminService:
    def __init__(
        self,
        *,
        settings: Settings,
        uow: UnitOfWorkFactory,
        sessions: SessionService,
        throttle: Throttle,
        notifier: Notifier,
        deferred_audit: audit.DeferredAuditTrail | None = None,
    ) -> None:
        self.settings = settings
        self.uow = uow
        self.sessions = sessions
        self.throttle = throttle
        self.notifier = notifier
        self.deferred_audit = deferred_audit

    # -- permission checks -----------------------------------------------------------------------

    def authorize(
        self, uow: UnitOfWork, principal: Actor, organization_id: str, scope: str, *, step_up: bool = False
    ) -> Organization:
        organization = uow.organizations.get(organization_id) if isinstance(organization_id, str) else None
        if organization is None or organization.root_id != principal.organization_id:
            raise NotFound("no such organization")
        if isinstance(principal, AppPrincipal):
            # A connected app never exceeds its scopes nor its organization, and needs no step-up.
            if scope not in principal.scopes:
                raise Forbidden(f"this app was not granted {scope}")
            return organization
        if uow.permissions.find(principal.user.id, organization.root_id, ORGANIZATION_ADMINISTRATOR) is None:
            raise Forbidden("only an Organization Administrator may do this")
        if step_up:
            self.sessions.require_step_up(principal)
        return organization

    def _user_in(self, uow: UnitOfWork, organization: Organization, user_id: str) -> User:
        user = uow.users.get(user_id)
        if user is None or user.organization_id != organization.root_id:
            raise NotFound("no such user")
        return user

    def self_view(self, principal: Principal) -> UserView:
        """The signed-in user's own view (no permission needed to see oneself)."""
        with self.uow(read_only=True) as uow:
            organization = uow.organizations.get(principal.user.organization_id)
            user = uow.users.get(principal.user.id)
            if organization is None or user is None:
                raise NotFound("no such user")
            return self._views(uow, organization, [user])[0]

    def is_administrator(self, principal: Principal) -> bool:
        with self.uow(read_only=True) as uow:
            return bool(
                uow.permissions.find(principal.user.id, principal.user.organization_id, ORGANIZATION_ADMINISTRATOR)
            )

    # -- organizations ---------------------------------------------------------------------------

    def organization_tree(self, principal: Actor, organization_id: str) -> tuple[Organization, list[Organization]]:
        with self.uow(read_only=True) as uow:
            organization = self.authorize(uow, principal, organization_id, "users:read")
            return organization, list(uow.organizations.in_tree(organization.root_id))

    def create_business_group(
        self, principal: Actor, organization_id: str, *, name: str, parent_id: str | None, context: RequestContext
    ) -> Organization:
        with self.uow() as uow:
            organization = self.authorize(uow, principal, organization_id, "users:write")
            parent = uow.organizations.get(parent_id or organization.id)
            if parent is None or parent.root_id != organization.root_id:
                raise NotFound("no such parent business group")
            clean = clean_display_name(name, field="name", maximum=200)
            siblings = [o for o in uow.organizations.in_tree(organization.root_id) if o.parent_id == parent.id]
            if any(o.name.casefold() == clean.casefold() for o in siblings):
                raise Conflict("a business group of this name already exists here")
            group = Organization(name=clean, parent_id=parent.id, root_id=organization.root_id)
            uow.organizations.add(group)
            audit.record(
                uow,
                "business_group.created",
                organization_id=organization.root_id,
                actor_id=principal.user_id,
                ip=context.ip,
                details={"id": group.id, "name": clean, "parent_id": parent.id},
            )
            return group

    def identity_providers(self, principal: Actor, organization_id: str) -> list[IdentityProvider]:
        with self.uow(read_only=True) as uow:
            organization = self.authorize(uow, principal, organization_id, "users:read")
            return list(uow.identity_providers.for_organization(organization.root_id))

    # -- users -----------------------------------------------------------------------------------

    def authorize_user_write(self, principal: Actor, organization_id: str) -> Organization:
        with self.uow(read_only=True) as uow:
            return self.authorize(uow, principal, organization_id, "users:write")

    def list_users(
        self, principal: Actor, organization_id: str, *, query: str | None, limit: int, cursor: str | None
    ) -> Page:
        if not 1 <= limit <= MAX_PAGE:
            raise ValidationFailed(f"limit must be between 1 and {MAX_PAGE}")
        after = decode_cursor(cursor, 1)[0] if cursor else None
        with self.uow(read_only=True) as uow:
            organization = self.authorize(uow, principal, organization_id, "users:read")
            search = username_key(query.strip()) if query and query.strip() else None
            users = list(uow.users.page(organization.root_id, query=search, limit=limit + 1, after=after))
            more = len(users) > limit
            users = users[:limit]
            views = self._views(uow, organization, users)
        return Page(views, encode_cursor(users[-1].username_key) if more else None)

    def get_user(self, principal: Actor, organization_id: str, user_id: str) -> UserView:
        with self.uow(read_only=True) as uow:
            organization = self.authorize(uow, principal, organization_id, "users:read")
            user = self._user_in(uow, organization, user_id)
            return self._views(uow, organization, [user])[0]

    def user_by_username(self, principal: Actor, organization_id: str, username: str) -> User:
        with self.uow(read_only=True) as uow:
            organization = self.authorize(uow, principal, organization_id, "users:read")
            user = uow.users.by_username_key(username_key(username.strip())) if username.strip() else None
            if user is None or user.organization_id != organization.root_id:
                raise NotFound(f"no user named {username.strip()!r} in this organization")
            return user

    def _views(self, uow: UnitOfWork, organization: Organization, users: Sequence[User]) -> list[UserView]:
        ids = [u.id for u in users]
        now = utcnow()
        exemptions = uow.exemptions.for_users(ids)
        methods = uow.methods.active_for_users(ids)
        providers = {p.id: p for p in uow.identity_providers.for_organization(organization.root_id)}
        admins = set(uow.permissions.holders(organization.root_id, ORGANIZATION_ADMINISTRATOR))
        not_me = uow.push_challenges.users_with_not_me(ids)
        views = []
        for user in users:
            exemption = exemptions.get(user.id)
            state = uow.throttles.get(f"mfa:{user.id}")
            blocked = as_utc(state.blocked_until) if state and state.blocked_until else None
            views.append(
                UserView(
                    user=user,
                    identity_provider=providers.get(user.identity_provider_id),
                    exemption=exemption,
                    exemption_in_force=exemption_applies(
                        user, exemption, now=now, cutoff=self.settings.user_exemption_cutoff
                    ),
                    methods=methods.get(user.id, []),
                    locked_until=blocked if blocked and blocked > now else None,
                    is_admin=user.id in admins,
                    reported_not_me=user.id in not_me,
                )
            )
        return views

    def update_user(
        self, principal: Actor, organization_id: str, user_id: str, changes: dict[str, Any], context: RequestContext
    ) -> UserView:
        with self.uow() as uow:
            organization = self.authorize(uow, principal, organization_id, "users:write")
            user = self._user_in(uow, organization, user_id)
            before: dict[str, Any] = {}
            if "display_name" in changes:
                value = changes["display_name"]
                before["display_name"] = user.display_name
                user.display_name = clean_display_name(value, field="display_name", maximum=200) if value else None
            if "email" in changes:
                before["email"] = user.email
                user.email = clean_email(changes["email"] or "")
            if "status" in changes:
                status = changes["status"]
                if status not in {s.value for s in UserStatus}:
                    raise ValidationFailed("status must be 'active' or 'disabled'")
                if status != user.status:
                    if status == UserStatus.DISABLED.value and user.id == principal.user_id:
                        raise Conflict("you cannot disable your own account")
                    if status == UserStatus.DISABLED.value:
                        self._keep_an_active_administrator(uow, organization, leaving=user.id)
                    before["status"] = user.status
                    user.status = status
                    if status == UserStatus.DISABLED.value:
                        self.sessions.end_all(uow, user.id, now=utcnow())
            audit.record(
                uow,
                "user.updated",
                organization_id=organization.root_id,
                actor_id=principal.user_id,
                subject_id=user.id,
                ip=context.ip,
                details={"changed": sorted(before), **({"status": user.status} if "status" in before else {})},
            )
            uow.flush()
            return self._views(uow, organization, [user])[0]

    def _keep_an_active_administrator(self, uow: UnitOfWork, organization: Organization, *, leaving: str) -> None:
        """Locked like a revocation, so two administrators disabling each other cannot leave none."""
        holders = uow.permissions.holders(organization.root_id, ORGANIZATION_ADMINISTRATOR, lock=True)
        if leaving not in holders:
            return
        others = [uow.users.get_for_update(user_id) for user_id in holders if user_id != leaving]
        if not any(other is not None and other.is_active for other in others):
            raise Conflict("the organization must keep at least one active Organization Administrator")

    # -- MFA reset (R7) ---------------------------------------------------------------------------

    def reset_mfa(self, principal: Actor, organization_id: str, user_id: str, context: RequestContext) -> None:
        """R7: every method and recovery code of the user is deleted, every session and open login
        transaction ends, the user is told, and the next login forces enrollment (R3). The
        administrator never sees or sets a factor."""
        with self.uow() as uow:
            organization = self.authorize(uow, principal, organization_id, "mfa:reset", step_up=True)
            user = uow.users.get_for_update(user_id) if isinstance(user_id, str) else None
            if user is None or user.organization_id != organization.root_id:
                raise NotFound("no such user")
            if user.is_federated:
                raise ValidationFailed(
                    "single sign-on accounts have no local verification methods: their MFA is reset at "
                    "their identity provider"
                )
            self._reset(uow, user, actor_id=principal.user_id, context=context)
        self._tell_reset(user)

    def reset_mfa_by_operator(self, username: str) -> User:
        """`twofold users reset-mfa`: the operator's break-glass on the server, audited as such."""
        with self.uow() as uow:
            found = uow.users.by_username_key(username_key(username.strip()))
            user = uow.users.get_for_update(found.id) if found is not None else None
            if user is None:
                raise NotFound(f"no user named {username!r}")
            if user.is_federated:
                raise ValidationFailed(f"{user.username} signs in through single sign-on and has no local methods")
            self._reset(uow, user, actor_id=None, context=RequestContext(ip=None))
        self._tell_reset(user)
        return user

    def _reset(self, uow: UnitOfWork, user: User, *, actor_id: str | None, context: RequestContext) -> None:
        now = utcnow()
        deleted = uow.methods.delete_all_for_user(user.id)
        codes = uow.recovery_codes.delete_for_user(user.id)
        sessions_ended = self.sessions.end_all(uow, user.id, now=now)
        audit.record(
            uow,
            "mfa.reset",
            organization_id=user.organization_id,
            actor_id=actor_id,
            subject_id=user.id,
            ip=context.ip,
            details={
                "by": actor_id or OPERATOR,
                "methods_deleted": sum(1 for m in deleted if m.is_active),
                "method_types": sorted({m.type for m in deleted if m.is_active}),
                "recovery_codes_deleted": codes,
                "sessions_ended": sessions_ended,
            },
        )

    def _tell_reset(self, user: User) -> None:
        if user.email:
            self.notifier.notify(
                to=user.email,
                subject="Your multi-factor authentication was reset",
                body=(
                    f"Hello {user.display_name or user.username},\n\n"
                    "An administrator reset the multi-factor authentication of your Twofold account: your "
                    "verification methods and recovery codes were removed and you were signed out everywhere.\n"
                    "The next time you sign in, you will be asked to register a verification method.\n\n"
                    "If you did not ask for this, contact your administrator at once.\n"
                ),
            )

    # -- what needs attention, coverage ---------------------------------------------------------

    def attention(self, principal: Actor, organization_id: str) -> Attention:
        with self.uow(read_only=True) as uow:
            organization = self.authorize(uow, principal, organization_id, "users:read")
            picked = list(uow.users.needing_attention(organization.root_id))
            views = self._views(uow, organization, picked)
        return Attention(
            locked=[v for v in views if v.user.locked_at is not None],
            cloned_authenticator=[v for v in views if any(m.cloned_at is not None for m in v.methods)],
            push_denied_not_me=[v for v in views if v.reported_not_me],
            disabled=[v for v in views if not v.user.is_active],
        )

    def mfa_report(self, principal: Actor, organization_id: str) -> MfaReport:
        now = utcnow()
        cutoff = self.settings.user_exemption_cutoff
        with self.uow(read_only=True) as uow:
            organization = self.authorize(uow, principal, organization_id, "users:read")
            facts = list(uow.users.mfa_facts(organization.root_id))
            by_type = uow.methods.count_active_by_type(organization.root_id)
        counts = {"enrolled": 0, "pending_enrollment": 0, "exempt": 0, "sso": 0}
        for user in facts:
            if user.is_federated:
                counts["sso"] += 1
            elif exemption_until_applies(user, user.exemption_expires_at, now=now, cutoff=cutoff):
                counts["exempt"] += 1
            elif user.has_method:
                counts["enrolled"] += 1
            else:
                counts["pending_enrollment"] += 1
        return MfaReport(
            users=len(facts),
            locked=sum(1 for u in facts if u.locked_at is not None),
            disabled=sum(1 for u in facts if not u.is_active),
            methods_by_type=dict(sorted(by_type.items())),
            **counts,
        )

    # -- unlock ----------------------------------------------------------------------------------

    def update_webauthn_policy(
        self, principal: Actor, organization_id: str, *, changes: dict[str, Any], context: RequestContext
    ) -> Organization:
        """The root organization's WebAuthn attestation policy: "none", or "direct" with an optional
        allow-list of authenticator models (AAGUIDs). It applies to registrations from now on."""
        with self.uow() as uow:
            organization = self.authorize(uow, principal, organization_id, "users:write", step_up=True)
            if not organization.is_root:
                raise ValidationFailed("the WebAuthn policy belongs to the root organization")
            if "webauthn_attestation" in changes and changes["webauthn_attestation"] is not None:
                organization.webauthn_attestation = changes["webauthn_attestation"]
            if "webauthn_allowed_aaguids" in changes:
                allowed = changes["webauthn_allowed_aaguids"]
                organization.webauthn_allowed_aaguids = (
                    sorted({aaguid.lower() for aaguid in allowed}) if allowed else None
                )
            if organization.webauthn_allowed_aaguids and organization.webauthn_attestation != "direct":
                raise ValidationFailed(
                    'an allow-list of models needs attestation "direct": without it, a model is unproven'
                )
            audit.record(
                uow,
                "organization.webauthn_policy_changed",
                organization_id=organization.id,
                actor_id=principal.user_id,
                ip=context.ip,
                details={
                    "webauthn_attestation": organization.webauthn_attestation,
                    "webauthn_allowed_aaguids": organization.webauthn_allowed_aaguids,
                },
            )
            return organization

    def unlock(self, principal: Actor, organization_id: str, user_id: str, context: RequestContext) -> None:
        with self.uow() as uow:
            organization = self.authorize(uow, principal, organization_id, "users:write", step_up=True)
            user = self._user_in(uow, organization, user_id)
            self._unlock(uow, user, actor_id=principal.user_id, context=context)

    def unlock_by_operator(self, username: str) -> User:
        """`twofold users unlock`: the operator's break-glass on the server, audited as such."""
        with self.uow() as uow:
            user = uow.users.by_username_key(username_key(username.strip()))
            if user is None:
                raise NotFound(f"no user named {username!r}")
            self._unlock(uow, user, actor_id=None, context=RequestContext(ip=None))
            return user

    def _unlock(self, uow: UnitOfWork, user: User, *, actor_id: str | None, context: RequestContext) -> None:
        was_locked = user.locked_at is not None
        user.locked_at = None
        self.throttle.reset_after_authentication(uow, user_id=user.id, username_key=user.username_key)
        audit.record(
            uow,
            "account.unlocked",
            organization_id=user.organization_id,
            actor_id=actor_id,
            subject_id=user.id,
            ip=context.ip,
            details={"was_locked": was_locked, "by": actor_id or OPERATOR},
        )

    # -- administrator grants ---------------------------------------------------------------------

    def grant_administrator(
        self, principal: Actor, organization_id: str, user_id: str, context: RequestContext
    ) -> None:
        with self.uow() as uow:
            organization = self.authorize(uow, principal, organization_id, "users:write", step_up=True)
            user = uow.users.get_for_update(user_id)
            if user is None or user.organization_id != organization.root_id:
                raise NotFound("no such user")
            exemption = uow.exemptions.for_user(user.id)
            if exemption is not None and as_utc(exemption.expires_at) > utcnow():
                # R4: an exempt account never holds administrator permissions.
                raise ValidationFailed("an account exempt from MFA cannot be an Organization Administrator")
            if not user.is_active:
                raise ValidationFailed("a disabled account cannot be made an administrator")
            if uow.permissions.find(user.id, organization.root_id, ORGANIZATION_ADMINISTRATOR) is None:
                uow.permissions.add(
                    Permission(
                        user_id=user.id,
                        organization_id=organization.root_id,
                        name=ORGANIZATION_ADMINISTRATOR,
                        granted_by=principal.user_id,
                    )
                )
                audit.record(
                    uow,
                    "permission.granted",
                    organization_id=organization.root_id,
                    actor_id=principal.user_id,
                    subject_id=user.id,
                    ip=context.ip,
                    details={"permission": ORGANIZATION_ADMINISTRATOR},
                )

    def revoke_administrator(
        self, principal: Actor, organization_id: str, user_id: str, context: RequestContext
    ) -> None:
        with self.uow() as uow:
            organization = self.authorize(uow, principal, organization_id, "users:write", step_up=True)
            user = self._user_in(uow, organization, user_id)
            permission = uow.permissions.find(user.id, organization.root_id, ORGANIZATION_ADMINISTRATOR)
            if permission is None:
                return
            # Locked: administrators revoking each other at the same moment must not leave none.
            holders = uow.permissions.holders(organization.root_id, ORGANIZATION_ADMINISTRATOR, lock=True)
            if user.id not in holders:
                return  # revoked meanwhile by a concurrent request
            if len(holders) <= 1:
                raise Conflict("the organization must keep at least one Organization Administrator")
            uow.permissions.delete(permission)
            audit.record(
                uow,
                "permission.revoked",
                organization_id=organization.root_id,
                actor_id=principal.user_id,
                subject_id=user.id,
                ip=context.ip,
                details={"permission": ORGANIZATION_ADMINISTRATOR},
            )

    # -- audit -----------------------------------------------------------------------------------

    def audit_events(
        self,
        principal: Actor,
        organization_id: str,
        *,
        type: str | None,
        user_id: str | None,
        since: datetime | None,
        limit: int,
        cursor: str | None,
    ) -> Page:
        if not 1 <= limit <= 1000:
            raise ValidationFailed("limit must be between 1 and 1000")
        after = None
        if cursor:
            at_text, event_id = decode_cursor(cursor, 2)
            try:
                after = (as_utc(datetime.fromisoformat(at_text)), event_id)
            except ValueError:
                raise ValidationFailed("cursor is not one this server gave out") from None
        if self.deferred_audit is not None:
            self.deferred_audit.flush()  # what this process granted a moment ago is part of the answer
        with self.uow(read_only=True) as uow:
            organization = self.authorize(uow, principal, organization_id, "audit:read")
            events: list[AuditEvent] = list(
                uow.audit.page(
                    organization.root_id, type=type, user_id=user_id, since=since, limit=limit + 1, after=after
                )
            )
        more = len(events) > limit
        events = events[:limit]
        next_cursor = encode_cursor(as_utc(events[-1].at).isoformat(), events[-1].id) if more else None
        return Page(events, next_cursor)
