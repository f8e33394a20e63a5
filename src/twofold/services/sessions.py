"""Sessions: 256-bit tokens stored hashed, idle and absolute lifetimes, step-up (API.md "Self-service")."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from twofold.config import Settings
from twofold.domain.clock import as_utc, utcnow
from twofold.domain.entities import Session, User
from twofold.domain.errors import Forbidden, StepUpRequired, Unauthenticated
from twofold.domain.ports import UnitOfWork, UnitOfWorkFactory
from twofold.domain.rules import acr_for, exemption_applies

from . import audit
from .context import Principal, RequestContext
from .crypto import hash_token, new_token

SESSION_TOKEN_PREFIX = "tfs"
# last_seen_at is written at most this often: the idle timeout is exact to within this much.
_TOUCH_INTERVAL = timedelta(seconds=30)


@dataclass(frozen=True)
class IssuedSession:
    token: str
    session: Session

    @property
    def expires_at(self) -> datetime:
        return self.session.expires_at


@dataclass(frozen=True)
class UpstreamAuthentication:
    """What an upstream identity provider asserted about a sign-in, and whether its MFA policy accepted it."""

    acr: str
    auth_time: datetime
    mfa_verified: bool


class SessionService:
    def __init__(self, settings: Settings, uow: UnitOfWorkFactory) -> None:
        self.settings = settings
        self.uow = uow

    def issue(
        self,
        uow: UnitOfWork,
        user: User,
        *,
        amr: list[str],
        now: datetime,
        context: RequestContext,
        upstream: UpstreamAuthentication | None = None,
    ) -> IssuedSession:
        """A new session after a completed authentication; always a new token (DESIGN.md §3). A sign-in at
        an upstream provider keeps what the provider asserted (amr, acr, auth_time) verbatim."""
        token = new_token(SESSION_TOKEN_PREFIX)
        has_mfa = upstream.mfa_verified if upstream is not None else "mfa" in amr
        session = Session(
            user_id=user.id,
            token_hash=hash_token(token),
            amr=list(amr),
            acr=upstream.acr if upstream is not None else acr_for(amr),
            auth_time=upstream.auth_time if upstream is not None else now,
            mfa_verified=has_mfa,
            expires_at=now + timedelta(seconds=self.settings.session_absolute_seconds),
            last_seen_at=now,
            step_up_until=now + timedelta(seconds=self.settings.step_up_seconds) if has_mfa else None,
            ip=context.ip,
            user_agent=(context.user_agent or "")[:512] or None,
        )
        uow.sessions.add(session)
        return IssuedSession(token, session)

    def idle_deadline(self, session: Session) -> datetime:
        return as_utc(session.last_seen_at) + timedelta(seconds=self.settings.session_idle_seconds)

    def authenticate(self, token: str | None) -> Principal:
        """The principal behind a session token, or Unauthenticated (401 always means a dead session)."""
        if not token or not token.startswith(SESSION_TOKEN_PREFIX + "_") or len(token) > 200:
            raise Unauthenticated()
        now = utcnow()
        with self.uow(read_only=True) as uow:
            session = uow.sessions.by_token_hash(hash_token(token))
            if session is None or session.revoked_at is not None:
                raise Unauthenticated()
            if as_utc(session.expires_at) <= now or self.idle_deadline(session) <= now:
                raise Unauthenticated("the session has expired")
            user = uow.users.get(session.user_id)
            if user is None or not user.is_active:
                raise Unauthenticated()
            if not session.mfa_verified and not user.is_federated:
                # A password-only session lives on its exemption (R4): once that expires, or stops
                # applying at the cut-off, the session ends with it instead of running out its 12 hours.
                exemption = uow.exemptions.for_user(user.id)
                if not exemption_applies(user, exemption, now=now, cutoff=self.settings.user_exemption_cutoff):
                    raise Unauthenticated("the account's exemption from MFA no longer applies")
        if now - as_utc(session.last_seen_at) >= _TOUCH_INTERVAL:
            with self.uow() as uow:
                uow.sessions.touch(session.id, now=now)
            session.last_seen_at = now
        return Principal(user=user, session=session)

    def require_step_up(self, principal: Principal) -> None:
        """The ★ rule: admin writes and method changes need an MFA within the last 10 minutes."""
        session = principal.session
        if session is None:
            return  # connected apps are exempt from step-up; their scopes are checked instead
        if session.step_up_until is None or as_utc(session.step_up_until) <= utcnow():
            raise StepUpRequired()

    def require_mfa_session(self, principal: Principal) -> None:
        if principal.session is None or not principal.session.mfa_verified:
            raise Forbidden("this session was not made with multi-factor authentication")

    def logout(self, principal: Principal, context: RequestContext) -> None:
        assert principal.session is not None
        now = utcnow()
        with self.uow() as uow:
            uow.sessions.revoke(principal.session.id, now=now)
            audit.record(
                uow,
                "session.logout",
                organization_id=principal.user.organization_id,
                actor_id=principal.user.id,
                subject_id=principal.user.id,
                ip=context.ip,
            )

    def revoke_others(self, principal: Principal, context: RequestContext) -> int:
        assert principal.session is not None
        now = utcnow()
        with self.uow() as uow:
            count = uow.sessions.revoke_all_for_user(principal.user.id, now=now, except_id=principal.session.id)
            audit.record(
                uow,
                "session.revoked_others",
                organization_id=principal.user.organization_id,
                actor_id=principal.user.id,
                subject_id=principal.user.id,
                ip=context.ip,
                details={"count": count},
            )
        return count

    def end_all(self, uow: UnitOfWork, user_id: str, *, now: datetime) -> int:
        """Every session, open login transaction and refresh token of a user ends (disable, reset, lock,
        password change, exemption removed): an app signed in as the user keeps nothing either (R7)."""
        uow.transactions.end_all_for_user(user_id, now=now)
        uow.refresh_tokens.revoke_for_user(user_id, now=now)
        return uow.sessions.revoke_all_for_user(user_id, now=now)

    def renew_step_up(self, uow: UnitOfWork, session: Session, *, now: datetime) -> datetime:
        until = now + timedelta(seconds=self.settings.step_up_seconds)
        stored = uow.sessions.by_token_hash(session.token_hash)
        if stored is not None:
            stored.step_up_until = until
        session.step_up_until = until
        return until
