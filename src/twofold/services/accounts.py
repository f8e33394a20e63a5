"""Organizations and accounts: creation, set-up links, password change and reset."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from twofold.config import Settings
from twofold.domain.clock import as_utc, utcnow
from twofold.domain.entities import (
    ORGANIZATION_ADMINISTRATOR,
    IdentityProvider,
    IdentityProviderType,
    OneTimeToken,
    Organization,
    Permission,
    TokenPurpose,
    User,
)
from twofold.domain.errors import Conflict, InvalidCredentials, NotFound, ValidationFailed
from twofold.domain.ports import Notifier, UnitOfWork, UnitOfWorkFactory
from twofold.domain.rules import clean_display_name, clean_email, clean_username, username_key, validate_kind

from . import audit
from .context import Principal, RequestContext
from .crypto import hash_token, new_token
from .passwords import Passwords
from .sessions import SessionService
from .throttle import Throttle

SETUP_TOKEN_PREFIX = "tfu"
OPERATOR = "operator"


@dataclass
class CreatedUser:
    user: User
    setup_url: str | None = None


class AccountService:
    def __init__(
        self,
        *,
        settings: Settings,
        uow: UnitOfWorkFactory,
        passwords: Passwords,
        sessions: SessionService,
        throttle: Throttle,
        notifier: Notifier,
    ) -> None:
        self.settings = settings
        self.uow = uow
        self.passwords = passwords
        self.sessions = sessions
        self.throttle = throttle
        self.notifier = notifier

    # -- organizations ---------------------------------------------------------------------------

    def init_organization(
        self, *, organization_name: str, admin_username: str, admin_email: str, admin_password: str | None
    ) -> tuple[Organization, CreatedUser]:
        """`twofold init`: a root organization, its local identity provider and first administrator."""
        name = clean_display_name(organization_name, field="organization name", maximum=200)
        password_hash = self._hash_new_password(admin_password, kind="user", service_type=None, username=admin_username)
        with self.uow() as uow:
            if uow.organizations.get_root_by_name(name) is not None:
                raise Conflict(f"organization {name!r} already exists")
            organization = Organization(name=name)
            uow.organizations.add(organization)
            uow.flush()  # the provider's foreign key needs the organization row first
            local = IdentityProvider(
                organization_id=organization.id, type=IdentityProviderType.LOCAL.value, name=f"{name} (local)"
            )
            uow.identity_providers.add(local)
            uow.flush()
            created = self._create_user(
                uow,
                organization=organization,
                username=admin_username,
                email=admin_email,
                display_name=None,
                kind="user",
                service_type=None,
                password_hash=password_hash,
                actor_id=None,
                context=RequestContext(ip=None),
            )
            uow.permissions.add(
                Permission(user_id=created.user.id, organization_id=organization.id, name=ORGANIZATION_ADMINISTRATOR)
            )
            audit.record(
                uow, "organization.created", organization_id=organization.id, details={"name": name, "by": OPERATOR}
            )
            audit.record(
                uow,
                "permission.granted",
                organization_id=organization.id,
                subject_id=created.user.id,
                details={"permission": ORGANIZATION_ADMINISTRATOR, "by": OPERATOR},
            )
            return organization, created

    def root_by_name(self, name: str) -> Organization:
        with self.uow(read_only=True) as uow:
            organization = uow.organizations.get_root_by_name(name.strip())
            if organization is None:
                raise NotFound(f"no organization named {name!r}")
            return organization

    # -- users -----------------------------------------------------------------------------------

    def create_user(
        self,
        *,
        organization_id: str,
        username: str,
        email: str,
        kind: str,
        service_type: str | None,
        display_name: str | None = None,
        password: str | None = None,
        actor_id: str | None,
        context: RequestContext,
    ) -> CreatedUser:
        password_hash = self._hash_new_password(password, kind=kind, service_type=service_type, username=username)
        with self.uow() as uow:
            organization = uow.organizations.get(organization_id)
            if organization is None:
                raise NotFound("no such organization")
            return self._create_user(
                uow,
                organization=organization,
                username=username,
                email=email,
                display_name=display_name,
                kind=kind,
                service_type=service_type,
                password_hash=password_hash,
                actor_id=actor_id,
                context=context,
            )

    def _hash_new_password(
        self, password: str | None, *, kind: str, service_type: str | None, username: str
    ) -> str | None:
        """Policy check and argon2 before any write transaction opens: argon2 takes tens of
        milliseconds, and SQLite has one writer at a time."""
        if password is None:
            return None
        kind, _ = validate_kind(kind, service_type)
        self.passwords.check_policy(password, kind=kind, username=clean_username(username))
        return self.passwords.hash(password)

    def _create_user(
        self,
        uow: UnitOfWork,
        *,
        organization: Organization,
        username: str,
        email: str,
        display_name: str | None,
        kind: str,
        service_type: str | None,
        password_hash: str | None,
        actor_id: str | None,
        context: RequestContext,
    ) -> CreatedUser:
        root = uow.organizations.get(organization.root_id) or organization
        clean_name = clean_username(username)
        kind, service_type = validate_kind(kind, service_type)
        local = uow.identity_providers.local_for(root.id)
        if local is None:
            raise NotFound("the organization has no local identity provider")
        key = username_key(clean_name)
        if uow.users.by_username_key(key) is not None:
            raise Conflict("this username is taken")
        now = utcnow()
        user = User(
            organization_id=root.id,
            identity_provider_id=local.id,
            username=clean_name,
            username_key=key,
            email=clean_email(email),
            display_name=clean_display_name(display_name, field="display_name", maximum=200) if display_name else None,
            kind=kind,
            service_type=service_type,
            password_hash=password_hash,
            password_changed_at=now if password_hash is not None else None,
        )
        uow.users.add(user)
        uow.flush()
        created = CreatedUser(user)
        if password_hash is None:
            created.setup_url = self._issue_link(uow, user, TokenPurpose.SETUP, now=now)
        audit.record(
            uow,
            "user.created",
            organization_id=root.id,
            actor_id=actor_id,
            subject_id=user.id,
            ip=context.ip,
            details={
                "username": clean_name,
                "kind": kind,
                "service_type": service_type,
                "by": actor_id or OPERATOR,
                "setup_link": password_hash is None,
            },
        )
        return created

    def _issue_link(self, uow: UnitOfWork, user: User, purpose: TokenPurpose, *, now: datetime) -> str:
        uow.tokens.void_for_user(user.id, purpose.value, now=now)
        token = new_token(SETUP_TOKEN_PREFIX)
        lifetime = (
            self.settings.setup_link_seconds if purpose is TokenPurpose.SETUP else self.settings.password_reset_seconds
        )
        uow.tokens.add(
            OneTimeToken(
                user_id=user.id,
                token_hash=hash_token(token),
                purpose=purpose.value,
                expires_at=now + timedelta(seconds=lifetime),
            )
        )
        path = "setup" if purpose is TokenPurpose.SETUP else "password-reset"
        return f"{self.settings.public_url}/{path}/{token}"

    def new_setup_link(self, user_id: str, *, actor_id: str | None, context: RequestContext) -> str:
        with self.uow() as uow:
            user = uow.users.get(user_id)
            if user is None:
                raise NotFound("no such user")
            url = self._issue_link(uow, user, TokenPurpose.SETUP, now=utcnow())
            audit.record(
                uow,
                "user.setup_link_issued",
                organization_id=user.organization_id,
                actor_id=actor_id,
                subject_id=user.id,
                ip=context.ip,
            )
            return url

    # -- set-up and reset links (neither signs anyone in, neither touches MFA) ---------------------

    def redeem_link(self, *, token: str, password: str, purpose: TokenPurpose, context: RequestContext) -> None:
        now = utcnow()
        with self.uow(read_only=True) as uow:
            record, user = self._link_owner(uow, token, purpose, now=now)
        self.passwords.check_policy(password, kind=user.kind, username=user.username)
        password_hash = self.passwords.hash(password)  # outside the write transaction
        now = utcnow()
        with self.uow() as uow:
            record, user = self._link_owner(uow, token, purpose, now=now)
            if not uow.tokens.redeem(record.id, now=now):
                raise NotFound("this link is invalid, used or expired")
            user.password_hash = password_hash
            user.password_changed_at = now
            if purpose is TokenPurpose.PASSWORD_RESET:
                # The old password may be known to someone else: end what it opened (MFA stays as it is).
                self.sessions.end_all(uow, user.id, now=now)
            audit.record(
                uow,
                "password.set" if purpose is TokenPurpose.SETUP else "password.reset",
                organization_id=user.organization_id,
                actor_id=user.id,
                subject_id=user.id,
                ip=context.ip,
            )

    @staticmethod
    def _link_owner(uow: UnitOfWork, token: str, purpose: TokenPurpose, *, now: datetime) -> tuple[OneTimeToken, User]:
        record = uow.tokens.by_hash(hash_token(token)) if token.startswith(SETUP_TOKEN_PREFIX + "_") else None
        if (
            record is None
            or record.purpose != purpose.value
            or record.used_at is not None
            or as_utc(record.expires_at) <= now
        ):
            raise NotFound("this link is invalid, used or expired")
        user = uow.users.get(record.user_id)
        if user is None or not user.is_active or user.is_federated:
            raise NotFound("this link is invalid, used or expired")
        return record, user

    def request_password_reset(self, *, username: str, context: RequestContext) -> None:
        """Always the same answer; a link is sent only when a local, active account exists."""
        now = utcnow()
        with self.uow() as uow:
            user = uow.users.by_username_key(username_key(username.strip()))
            if user is None or not user.is_active or user.is_federated:
                return
            url = self._issue_link(uow, user, TokenPurpose.PASSWORD_RESET, now=now)
            audit.record(
                uow, "password.reset_requested", organization_id=user.organization_id, subject_id=user.id, ip=context.ip
            )
            email = user.email
        self.notifier.notify(
            to=email,
            subject="Reset your Twofold password",
            body=f"Someone asked to reset your password. If it was you, open {url} within the hour.\n"
            "Your verification methods stay as they are.",
        )

    def change_password(
        self, principal: Principal, *, current_password: str, new_password: str, context: RequestContext
    ) -> None:
        user = principal.user
        if user.is_federated or user.password_hash is None:
            raise ValidationFailed("this account signs in through its identity provider and has no password here")
        # Before the throttle: a refused new password is no failed sign-in, and raising after the refund
        # below would roll the refund back and count it as one.
        self.passwords.check_policy(new_password, kind=user.kind, username=user.username)
        now = utcnow()
        with self.uow() as uow:
            reservation = self.throttle.reserve_password_attempt(uow, user.username_key, now=now)
        ok = self.passwords.verify(user.password_hash, current_password)
        new_hash = self.passwords.hash(new_password) if ok else None  # outside the write transaction
        with self.uow() as uow:
            if new_hash is None:
                audit.record(
                    uow,
                    "password.change_failed",
                    organization_id=user.organization_id,
                    actor_id=user.id,
                    subject_id=user.id,
                    ip=context.ip,
                )
                uow.commit()
                raise InvalidCredentials("the current password is wrong", status=400)
            self.throttle.refund(uow, reservation)
            stored = uow.users.get(user.id)
            assert stored is not None
            stored.password_hash = new_hash
            stored.password_changed_at = now
            assert principal.session is not None
            uow.transactions.end_all_for_user(user.id, now=now)
            uow.sessions.revoke_all_for_user(user.id, now=now, except_id=principal.session.id)
            audit.record(
                uow,
                "password.changed",
                organization_id=user.organization_id,
                actor_id=user.id,
                subject_id=user.id,
                ip=context.ip,
            )
