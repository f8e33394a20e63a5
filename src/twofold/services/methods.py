"""Self-service enrollment of verification methods and recovery codes, from a full session (R6).

Adding a method needs a step-up within the last 10 minutes; exempt and SSO sessions may not add
methods (API.md "Self-service"). Enrollment is two-phase: ``begin`` stores a pending method that
expires, ``complete`` activates it once its proof holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from twofold.domain.clock import as_utc, utcnow
from twofold.domain.entities import MethodStatus, User, VerificationMethodRecord
from twofold.domain.errors import Conflict, Forbidden, LastMethod, NotFound, VerificationError
from twofold.domain.ports import Notifier, UnitOfWork, UnitOfWorkFactory
from twofold.domain.rules import clean_display_name
from twofold.methods.registry import MethodRegistry

from . import audit
from .context import Principal, RequestContext
from .login import ENROLLMENT_LIFETIME, EnrollmentStarted, LoginService
from .sessions import SessionService


@dataclass
class EnrollmentCompleted:
    method: VerificationMethodRecord
    # Only when this was the user's first set: recovery codes are handed out with the first method.
    recovery_codes: list[str] = field(default_factory=list)


class MethodService:
    def __init__(
        self,
        *,
        uow: UnitOfWorkFactory,
        registry: MethodRegistry,
        sessions: SessionService,
        login: LoginService,
        notifier: Notifier,
    ) -> None:
        self.uow = uow
        self.registry = registry
        self.sessions = sessions
        self.login = login
        self.notifier = notifier

    def _require_own_methods(self, principal: Principal) -> None:
        """Exempt sessions (no MFA) and SSO users (MFA at their provider) have no local methods to manage."""
        self.sessions.require_mfa_session(principal)
        if principal.user.is_federated:
            raise Forbidden("single sign-on accounts verify at their identity provider")

    def begin(self, principal: Principal, *, method_type: str, name: str, context: RequestContext) -> EnrollmentStarted:
        self.registry.method(method_type)  # an unknown type is a 422 before anything else
        self._require_own_methods(principal)
        self.sessions.require_step_up(principal)
        with self.uow(read_only=True) as uow:
            user = uow.users.get(principal.user.id)
            assert user is not None
            organization = uow.organizations.get(user.organization_id)
            existing = list(uow.methods.active_for_user(user.id))
        started = self.login.prepare_enrollment(
            user, organization, method_type=method_type, name=name, context=context, existing=existing
        )
        with self.uow() as uow:
            return self.login.store_pending(
                uow,
                user,
                started,
                expires_at=utcnow() + ENROLLMENT_LIFETIME,
                login_transaction_id=None,
                context=context,
            )

    def complete(
        self, principal: Principal, *, enrollment_id: str, proof: Mapping[str, Any], context: RequestContext
    ) -> EnrollmentCompleted:
        self._require_own_methods(principal)
        now = utcnow()
        with self.uow() as uow:
            user = uow.users.get(principal.user.id)
            assert user is not None
            record = self._own_pending(uow, user.id, enrollment_id, now=now)
            if record is None:
                raise NotFound("no such enrollment; start again")
            method = self.registry.method(record.type)
            organization = uow.organizations.get(user.organization_id)
            method_context = self.login.method_context(organization, context)
            try:
                result = method.complete_enrollment(user=user, record=record, proof=proof, context=method_context)
                self.login.refuse_registered_elsewhere(uow, record)
                # A method may name itself at completion (a WebAuthn model): keep names unique per user.
                others = [m for m in uow.methods.active_for_user(user.id) if m.id != record.id]
                record.name = self.login.new_method_name("", record.name, others)
            except VerificationError as error:
                audit.record(
                    uow,
                    "enrollment.failed",
                    organization_id=user.organization_id,
                    subject_id=user.id,
                    actor_id=user.id,
                    ip=context.ip,
                    details={"method_type": record.type, "during_login": False},
                )
                uow.commit()
                raise VerificationError(error.detail) from None
            if not uow.methods.activate(record.id, counter=result.counter, now=now):
                raise NotFound("no such enrollment; start again")
            audit.record(
                uow,
                "method.enrolled",
                organization_id=user.organization_id,
                subject_id=user.id,
                actor_id=user.id,
                ip=context.ip,
                details={"method_id": record.id, "method_type": record.type, "during_login": False},
            )
            codes = (
                []
                if uow.recovery_codes.has_set(user.id)
                else self.login.issue_recovery_codes(uow, user, context=context)
            )
            completed = EnrollmentCompleted(method=record, recovery_codes=codes)
        self._tell(user, f"A verification method was added to your account: {record.name}.")
        return completed

    def pending_enrollment(self, principal: Principal, enrollment_id: str) -> VerificationMethodRecord | None:
        """The user's own profile enrollment that still waits for its proof (for a second try of a code)."""
        with self.uow(read_only=True) as uow:
            return self._own_pending(uow, principal.user.id, enrollment_id, now=utcnow())

    @staticmethod
    def _own_pending(
        uow: UnitOfWork, user_id: str, enrollment_id: str, *, now: datetime
    ) -> VerificationMethodRecord | None:
        record = uow.methods.get(enrollment_id) if isinstance(enrollment_id, str) else None
        if (
            record is None
            or record.user_id != user_id
            or record.status != MethodStatus.PENDING.value
            or record.login_transaction_id is not None  # a login's enrollment belongs to its transaction
            or (record.expires_at is not None and as_utc(record.expires_at) <= now)
        ):
            return None
        return record

    def rename(
        self, principal: Principal, method_id: str, *, name: str, context: RequestContext
    ) -> VerificationMethodRecord:
        """Rename one of the user's active methods: 1–64 printable characters, trimmed, unique per user.
        A rename changes no factor, so it needs no step-up."""
        return self.save_changes(principal, renames={method_id: name}, removals=(), context=context)[0]

    def remove(self, principal: Principal, method_id: str, *, context: RequestContext) -> None:
        """Remove one of the user's methods (R6). Checked in API.md's order: 404, 409 last_method, 403
        step_up_required; under the per-user lock, so two parallel removals never take the last two."""
        self.save_changes(principal, renames={}, removals=(method_id,), context=context)

    def save_changes(
        self,
        principal: Principal,
        *,
        renames: Mapping[str, str],
        removals: Sequence[str],
        context: RequestContext,
    ) -> list[VerificationMethodRecord]:
        """Renames and removals as one change, as the "Manage Your Verification Methods" page stages them
        until "Save": all or nothing. Checked in API.md's order: an unknown method is 404, leaving no
        active method is 409 last_method (R6), a removal without a recent step-up is 403; then each new
        name must be valid and unique among the methods that remain. Returns the renamed methods."""
        self._require_own_methods(principal)
        clean_names = {method_id: clean_display_name(name) for method_id, name in renames.items()}
        with self.uow() as uow:
            # The per-user lock: two parallel saves never both see "another method remains".
            user = uow.users.get_for_update(principal.user.id)
            assert user is not None
            active = {m.id: m for m in uow.methods.active_for_user(user.id)}
            for method_id in [*clean_names, *removals]:
                if not isinstance(method_id, str) or method_id not in active:
                    raise NotFound("no such verification method")
            removed = [active[method_id] for method_id in dict.fromkeys(removals)]
            if removed and len(active) - len(removed) < 1:
                raise LastMethod("this is your last verification method: add another before removing it")
            if removed:
                self.sessions.require_step_up(principal)
            remaining = [m for m in active.values() if m.id not in removals]
            final = {m.id: clean_names.get(m.id, m.name) for m in remaining}
            seen: set[str] = set()
            for name in final.values():
                if name.casefold() in seen:
                    raise Conflict(f"you already have a verification method named {name!r}")
                seen.add(name.casefold())
            renamed = []
            for method_id, name in clean_names.items():
                record = active[method_id]
                if method_id in removals:
                    continue
                renamed.append(record)
                if record.name == name:
                    continue
                old_name, record.name = record.name, name
                audit.record(
                    uow,
                    "method.renamed",
                    organization_id=user.organization_id,
                    subject_id=user.id,
                    actor_id=user.id,
                    ip=context.ip,
                    details={"method_id": record.id, "method_type": record.type, "from": old_name, "to": name},
                )
            for record in removed:
                uow.methods.delete(record)
                audit.record(
                    uow,
                    "method.removed",
                    organization_id=user.organization_id,
                    subject_id=user.id,
                    actor_id=user.id,
                    ip=context.ip,
                    details={"method_id": record.id, "method_type": record.type, "name": record.name},
                )
        for record in removed:
            self._tell(user, f"A verification method was removed from your account: {record.name}.")
        return renamed

    def regenerate_recovery_codes(self, principal: Principal, *, context: RequestContext) -> list[str]:
        """A new set of recovery codes; the earlier ones stop working (API.md, needs step-up)."""
        self._require_own_methods(principal)
        self.sessions.require_step_up(principal)
        with self.uow() as uow:
            user = uow.users.get_for_update(principal.user.id)
            assert user is not None
            if uow.methods.count_active(user.id) == 0:
                raise Forbidden("register a verification method before generating recovery codes")
            codes = self.login.issue_recovery_codes(uow, user, context=context)
        self._tell(user, "New recovery codes were generated for your account; the earlier ones no longer work.")
        return codes

    def recovery_codes_remaining(self, user_id: str) -> int:
        with self.uow(read_only=True) as uow:
            return uow.recovery_codes.count_unused(user_id)

    def _tell(self, user: User, what: str) -> None:
        if user.email:
            self.notifier.notify(
                to=user.email,
                subject="Security notice from Twofold",
                body=(
                    f"Hello {user.display_name or user.username},\n\n{what}\n\n"
                    "If this was not you, change your password and contact your administrator.\n"
                ),
            )
