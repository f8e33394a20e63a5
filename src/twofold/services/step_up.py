"""Step-up: a fresh second factor inside a session renews ``step_up_until`` (API.md "Step-up")."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from twofold.domain.clock import utcnow
from twofold.domain.errors import Forbidden, VerificationError
from twofold.domain.ports import UnitOfWorkFactory
from twofold.methods.registry import MethodRegistry

from . import audit
from .context import Principal, RequestContext
from .login import CHALLENGE_LIFETIME, LoginService
from .sessions import SessionService
from .throttle import Throttle


class StepUpService:
    def __init__(
        self,
        *,
        uow: UnitOfWorkFactory,
        registry: MethodRegistry,
        sessions: SessionService,
        throttle: Throttle,
        login: LoginService,
    ) -> None:
        self.uow = uow
        self.registry = registry
        self.sessions = sessions
        self.throttle = throttle
        self.login = login

    def verification_options(
        self, principal: Principal, *, method_type: str | None, context: RequestContext
    ) -> dict[str, Any]:
        """WebAuthn request options for a step-up; the challenge is kept, bound to this session."""
        self.sessions.require_mfa_session(principal)
        assert principal.session is not None
        now = utcnow()
        with self.uow() as uow:
            user = uow.users.get(principal.user.id)
            assert user is not None
            return self.login.issue_challenge(
                uow,
                user,
                method_type=method_type,
                context=context,
                expires_at=now + CHALLENGE_LIFETIME,
                session_id=principal.session.id,
            )

    def step_up(
        self, principal: Principal, *, verification_type: str, proof: Mapping[str, Any], context: RequestContext
    ) -> datetime:
        self.login.check_verification_type(verification_type)
        self.sessions.require_mfa_session(principal)
        assert principal.session is not None
        now = utcnow()
        with self.uow() as uow:
            user = uow.users.get(principal.user.id)
            assert user is not None
            if user.is_federated or uow.methods.count_active(user.id) == 0:
                raise Forbidden("this account has no verification method to step up with")
            if user.locked_at is not None:
                self.login._refuse_locked(uow, user, now=now, context=context)
            self.login.raise_if_push_pending(
                uow, user, verification_type, proof, session_id=principal.session.id, now=now
            )
            reservation = self.throttle.reserve_mfa_attempt(uow, user.id, now=now)
            uow.commit()
            try:
                proven = self.login.prove(
                    uow,
                    user,
                    verification_type=verification_type,
                    proof=proof,
                    context=context,
                    now=now,
                    session_id=principal.session.id,
                )
            except VerificationError as error:
                audit.record(
                    uow,
                    "step_up.failed",
                    organization_id=user.organization_id,
                    actor_id=user.id,
                    subject_id=user.id,
                    ip=context.ip,
                    details={"type": verification_type, "reason": error.detail[:200]},
                )
                if self.throttle.mfa_lock_reached(reservation):
                    self.login.lock_account(uow, user, now=now, context=context)
                    self.sessions.end_all(uow, user.id, now=now)
                uow.commit()
                raise VerificationError(error.detail) from None
            self.throttle.reset_after_authentication(uow, user_id=user.id, username_key=user.username_key)
            until = self.sessions.renew_step_up(uow, principal.session, now=now)
            audit.record(
                uow,
                "step_up.succeeded",
                organization_id=user.organization_id,
                actor_id=user.id,
                subject_id=user.id,
                ip=context.ip,
                details={"type": verification_type},
            )
        self.login.after_proof(user, proven)
        return until
