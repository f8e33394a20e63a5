"""The login state machine (DESIGN.md §3): one implementation behind the pages, the JSON API and,
later, the OAuth 2.0 authorization endpoint.

    start ─ unknown / SSO / disabled / wrong password ─► InvalidCredentials (same answer, same work)
      │ password ok
      ├─ exempt service account, exemption in force ─► authenticated (amr ["pwd"])
      ├─ no active method ─► enrollment_required ─ enroll one (proven) ─► authenticated
      └─ mfa_required ─ verify any ─► authenticated (amr ["pwd", …, "mfa"])

Password verification never runs inside a write transaction: argon2 takes tens of milliseconds and
SQLite has one writer at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from twofold.config import Settings
from twofold.domain.clock import as_utc, utcnow
from twofold.domain.entities import (
    Challenge,
    LoginTransaction,
    MethodStatus,
    Organization,
    PushStatus,
    TransactionState,
    User,
    VerificationMethodRecord,
)
from twofold.domain.errors import (
    CodeAlreadyUsed,
    Conflict,
    Forbidden,
    InvalidCode,
    InvalidCredentials,
    MethodCloned,
    NotFound,
    ProofPending,
    RateLimited,
    TransactionExpired,
    UnknownCredential,
    ValidationFailed,
    VerificationError,
)
from twofold.domain.ports import Notifier, UnitOfWork, UnitOfWorkFactory
from twofold.domain.rules import clean_display_name, exemption_applies, mfa_amr, username_key
from twofold.domain.verification import EnrollmentStart, MethodContext, VerificationMethod, VerificationResult
from twofold.methods import recovery_codes
from twofold.methods.registry import MethodRegistry

from . import audit
from .context import RequestContext
from .crypto import hash_token, new_token
from .passwords import Passwords
from .sessions import IssuedSession, SessionService
from .throttle import Throttle

TRANSACTION_TOKEN_PREFIX = "tft"
ENROLLMENT_LIFETIME = timedelta(minutes=10)
# A WebAuthn ceremony's challenge: the options' timeout (2 minutes), never beyond its login transaction.
CHALLENGE_LIFETIME = timedelta(minutes=2)
MAX_OPEN_CHALLENGES = 20
PUSH = "push"  # the verification type of the push method (API.md)


@dataclass
class LoginOutcome:
    status: str  # "authenticated" | "mfa_required" | "enrollment_required"
    expires_at: datetime
    session: IssuedSession | None = None
    transaction_token: str | None = None
    methods: list[VerificationMethodRecord] = field(default_factory=list)
    recovery_codes_available: bool = False
    enrollable_types: list[str] = field(default_factory=list)
    recovery_codes: list[str] = field(default_factory=list)
    # Set when a recovery code made this session: how many unused ones the user has left.
    recovery_codes_remaining: int | None = None

    @property
    def amr(self) -> list[str]:
        return list(self.session.session.amr) if self.session else []


@dataclass(frozen=True)
class Proven:
    """A second factor that held: what it adds to ``amr``, and which method (None for a recovery code)."""

    verification_type: str
    amr: tuple[str, ...]
    method_id: str | None = None
    recovery_codes_remaining: int | None = None


@dataclass
class EnrollmentStarted:
    enrollment_id: str
    type: str
    name: str
    expires_at: datetime
    client_data: dict[str, Any]


class LoginService:
    def __init__(
        self,
        *,
        settings: Settings,
        uow: UnitOfWorkFactory,
        passwords: Passwords,
        throttle: Throttle,
        sessions: SessionService,
        registry: MethodRegistry,
        method_context: Any,
        notifier: Notifier,
    ) -> None:
        self.settings = settings
        self.notifier = notifier
        self.uow = uow
        self.passwords = passwords
        self.throttle = throttle
        self.sessions = sessions
        self.registry = registry
        # A callable (organization, RequestContext) -> MethodContext, from the composition root.
        self.method_context = method_context

    # -- password step ---------------------------------------------------------------------------

    def start(self, *, username: str, password: str, context: RequestContext) -> LoginOutcome:
        key = username_key(username.strip())
        ip = context.ip or "unknown"
        with self.uow(read_only=True) as uow:
            user = uow.users.by_username_key(key)
            usable_hash = user.password_hash if user and user.is_active and not user.is_federated else None
            user_id = user.id if user else None

        now = utcnow()
        with self.uow() as uow:
            self.throttle.check_ip(uow, ip, now=now)
            reservation = self.throttle.reserve_password_attempt(uow, key, now=now)

        # Unknown, disabled and SSO users get the same argon2 work against a dummy hash (R2, §7).
        password_ok = self.passwords.verify(usable_hash, password)
        upgraded_hash = None
        if password_ok and usable_hash and self.passwords.needs_rehash(usable_hash):
            upgraded_hash = self.passwords.hash(password)  # new parameters; outside the write transaction

        now = utcnow()
        with self.uow() as uow:
            user = uow.users.get(user_id) if user_id else None
            if not password_ok or user is None or not user.is_active or user.is_federated:
                self.throttle.record_ip_failure(uow, ip, now=now)
                reason = (
                    "unknown_user"
                    if user is None
                    else "sso_user"
                    if user.is_federated
                    else "disabled"
                    if not user.is_active
                    else "wrong_password"
                )
                audit.record(
                    uow,
                    "login.failed",
                    organization_id=user.organization_id if user else None,
                    subject_id=user.id if user else None,
                    ip=context.ip,
                    details={"step": "password", "reason": reason, "username": username[:128]},
                )
                uow.commit()
                raise InvalidCredentials()
            self.throttle.refund(uow, reservation)
            if upgraded_hash is not None and user.password_hash == usable_hash:
                user.password_hash = upgraded_hash
            if user.locked_at is not None:
                self._refuse_locked(uow, user, now=now, context=context)
            return self._after_password(uow, user, now=now, context=context)

    def _refuse_locked(self, uow: UnitOfWork, user: User, *, now: datetime, context: RequestContext) -> None:
        uow.transactions.end_all_for_user(user.id, now=now)
        audit.record(
            uow, "login.refused_locked", organization_id=user.organization_id, subject_id=user.id, ip=context.ip
        )
        uow.commit()
        raise RateLimited(
            "this account is locked after too many failed verifications; an administrator can unlock it",
            retry_after=self.settings.mfa_backoff_max_seconds,
        )

    def _after_password(self, uow: UnitOfWork, user: User, *, now: datetime, context: RequestContext) -> LoginOutcome:
        exemption = uow.exemptions.for_user(user.id)
        if exemption_applies(user, exemption, now=now, cutoff=self.settings.user_exemption_cutoff):
            issued = self.sessions.issue(uow, user, amr=["pwd"], now=now, context=context)
            self._completed(uow, user, now=now, context=context, amr=["pwd"], details={"exempt": True})
            return LoginOutcome(status="authenticated", expires_at=issued.expires_at, session=issued)

        methods = list(uow.methods.active_for_user(user.id))
        token = new_token(TRANSACTION_TOKEN_PREFIX)
        if methods:
            state, lifetime = TransactionState.MFA_REQUIRED, self.settings.transaction_mfa_seconds
        else:
            state, lifetime = TransactionState.ENROLLMENT_REQUIRED, self.settings.transaction_enroll_seconds
        transaction = LoginTransaction(
            user_id=user.id,
            token_hash=hash_token(token),
            state=state.value,
            expires_at=now + timedelta(seconds=lifetime),
            ip=context.ip,
            user_agent=(context.user_agent or "")[:512] or None,
        )
        uow.transactions.add(transaction)
        audit.record(
            uow,
            "login.password_verified",
            organization_id=user.organization_id,
            subject_id=user.id,
            ip=context.ip,
            details={"next": state.value},
        )
        outcome = LoginOutcome(status=state.value, expires_at=transaction.expires_at, transaction_token=token)
        if methods:
            outcome.methods = methods
            outcome.recovery_codes_available = uow.recovery_codes.count_unused(user.id) > 0
        else:
            outcome.enrollable_types = self.enrollable_types(uow, user, context)
        return outcome

    def enrollable_types(self, uow: UnitOfWork, user: User, context: RequestContext) -> list[str]:
        organization = uow.organizations.get(user.organization_id)
        method_context = self.method_context(organization, context)
        return [m.method_type for m in self.registry if m.available(method_context)]

    def _completed(
        self,
        uow: UnitOfWork,
        user: User,
        *,
        now: datetime,
        context: RequestContext,
        amr: list[str],
        details: dict[str, Any] | None = None,
    ) -> None:
        self.throttle.reset_after_authentication(uow, user_id=user.id, username_key=user.username_key)
        user.last_login_at = now
        audit.record(
            uow,
            "login.succeeded",
            organization_id=user.organization_id,
            subject_id=user.id,
            actor_id=user.id,
            ip=context.ip,
            details={"amr": amr, **(details or {})},
        )

    # -- transactions ----------------------------------------------------------------------------

    def open_transaction(self, uow: UnitOfWork, token: str, *, now: datetime) -> tuple[LoginTransaction, User]:
        """The open transaction behind a token; unknown, used, expired: all the same 410."""
        if not isinstance(token, str) or not token.startswith(TRANSACTION_TOKEN_PREFIX + "_") or len(token) > 200:
            raise TransactionExpired()
        transaction = uow.transactions.by_token_hash(hash_token(token))
        if transaction is None or not transaction.is_open(now):
            raise TransactionExpired()
        user = uow.users.get(transaction.user_id)
        if user is None or not user.is_active:
            raise TransactionExpired()
        return transaction, user

    def transaction_view(self, token: str) -> tuple[LoginTransaction, User, list[VerificationMethodRecord]]:
        """What the pages need to draw the next step."""
        with self.uow(read_only=True) as uow:
            transaction, user = self.open_transaction(uow, token, now=utcnow())
            return transaction, user, list(uow.methods.active_for_user(user.id))

    def _claim(
        self, uow: UnitOfWork, transaction: LoginTransaction, user: User, *, now: datetime, context: RequestContext
    ) -> tuple[int, Any]:
        """Count the attempt before checking it, atomically, on the transaction and on the account."""
        if user.locked_at is not None:
            self._refuse_locked(uow, user, now=now, context=context)
        # The transaction's row first, then the account's counters: the order in which a success ends
        # the transaction and then resets the counters, so parallel submissions never deadlock.
        attempts = uow.transactions.claim_attempt(
            transaction.id, now=now, maximum=self.settings.transaction_max_failures
        )
        if attempts is None:
            raise TransactionExpired()
        reservation = self.throttle.reserve_mfa_attempt(uow, user.id, now=now)
        uow.commit()
        return attempts, reservation

    def _failed(
        self,
        uow: UnitOfWork,
        transaction: LoginTransaction,
        user: User,
        *,
        attempts: int,
        reservation: Any,
        now: datetime,
        context: RequestContext,
        error: VerificationError,
        step: str,
    ) -> InvalidCode:
        attempts_left = max(0, self.settings.transaction_max_failures - attempts)
        if attempts_left == 0:
            uow.transactions.end(transaction.id, now=now)
        audit.record(
            uow,
            "login.failed",
            organization_id=user.organization_id,
            subject_id=user.id,
            ip=context.ip,
            details={"step": step, "reason": error.detail[:200], "attempts_left": attempts_left},
        )
        if self.throttle.mfa_lock_reached(reservation):
            self.lock_account(uow, user, now=now, context=context)
        uow.commit()
        return InvalidCode(error.detail, attempts_left=attempts_left)

    def lock_account(self, uow: UnitOfWork, user: User, *, now: datetime, context: RequestContext) -> None:
        if user.locked_at is None:
            user.locked_at = now
            uow.transactions.end_all_for_user(user.id, now=now)
            audit.record(
                uow,
                "account.locked",
                organization_id=user.organization_id,
                subject_id=user.id,
                ip=context.ip,
                details={"failures": self.settings.mfa_lock_threshold},
            )

    # -- second factor ---------------------------------------------------------------------------

    def verify(
        self, *, transaction_token: str, verification_type: str, proof: Mapping[str, Any], context: RequestContext
    ) -> LoginOutcome:
        self.check_verification_type(verification_type)
        now = utcnow()
        with self.uow() as uow:
            transaction, user = self.open_transaction(uow, transaction_token, now=now)
            if transaction.state != TransactionState.MFA_REQUIRED.value:
                raise Forbidden("this login must enroll a verification method first")
            self.raise_if_push_pending(
                uow, user, verification_type, proof, login_transaction_id=transaction.id, now=now
            )
            attempts, reservation = self._claim(uow, transaction, user, now=now, context=context)
            try:
                proven = self.prove(
                    uow,
                    user,
                    verification_type=verification_type,
                    proof=proof,
                    context=context,
                    now=now,
                    login_transaction_id=transaction.id,
                )
            except VerificationError as error:
                raise self._failed(
                    uow,
                    transaction,
                    user,
                    attempts=attempts,
                    reservation=reservation,
                    now=now,
                    context=context,
                    error=error,
                    step=verification_type,
                ) from None
            uow.transactions.end(transaction.id, now=now)
            amr = mfa_amr(proven.amr)
            issued = self.sessions.issue(uow, user, amr=amr, now=now, context=context)
            self._completed(uow, user, now=now, context=context, amr=amr, details={"method": verification_type})
        self.after_proof(user, proven)
        return LoginOutcome(
            status="authenticated",
            expires_at=issued.expires_at,
            session=issued,
            recovery_codes_remaining=proven.recovery_codes_remaining,
        )

    def verification_options(
        self, *, transaction_token: str, method_type: str | None, context: RequestContext
    ) -> dict[str, Any]:
        """WebAuthn request options for an mfa_required login; the challenge is kept, bound to it."""
        now = utcnow()
        with self.uow() as uow:
            transaction, user = self.open_transaction(uow, transaction_token, now=now)
            if transaction.state != TransactionState.MFA_REQUIRED.value:
                raise Forbidden("this login must enroll a verification method first")
            return self.issue_challenge(
                uow,
                user,
                method_type=method_type,
                context=context,
                expires_at=min(now + CHALLENGE_LIFETIME, as_utc(transaction.expires_at)),
                login_transaction_id=transaction.id,
            )

    def issue_challenge(
        self,
        uow: UnitOfWork,
        user: User,
        *,
        method_type: str | None,
        context: RequestContext,
        expires_at: datetime,
        login_transaction_id: str | None = None,
        session_id: str | None = None,
    ) -> dict[str, Any]:
        methods = self.registry.for_verification_type("webauthn")
        if method_type is not None:
            methods = [m for m in methods if m.method_type == method_type]
            if not methods:
                raise ValidationFailed(f"{method_type!r} is not a WebAuthn method type")
        method = methods[0]
        records = [r for r in uow.methods.active_for_user(user.id) if r.type in {m.method_type for m in methods}]
        if not records:
            raise NotFound("this account has no such authenticator registered")
        organization = uow.organizations.get(user.organization_id)
        started = method.begin_verification(
            user=user,
            methods=records,
            options={"any_type": method_type is None},
            context=self.method_context(organization, context),
        )
        if started.challenge is not None:
            # Each options call stores a challenge: a login or session gets a bounded number at a time.
            now = utcnow()
            if (
                uow.challenges.count_open(login_transaction_id=login_transaction_id, session_id=session_id, now=now)
                >= MAX_OPEN_CHALLENGES
            ):
                raise RateLimited("too many authenticator requests at once; finish or wait for one", retry_after=30)
            uow.challenges.add(
                Challenge(
                    user_id=user.id,
                    challenge_hash=hash_token(started.challenge.hex()),
                    expires_at=expires_at,
                    login_transaction_id=login_transaction_id,
                    session_id=session_id,
                    method_type=method_type,
                )
            )
        return started.client_data

    @staticmethod
    def raise_if_push_pending(
        uow: UnitOfWork,
        user: User,
        verification_type: str,
        proof: Mapping[str, Any],
        *,
        login_transaction_id: str | None = None,
        session_id: str | None = None,
        now: datetime,
    ) -> None:
        """A push not answered yet is "202 pending", not a failed attempt: the page asks until the device
        answers, and that must not spend the transaction's five attempts."""
        if verification_type != PUSH:
            return
        challenge = uow.push_challenges.get(str(proof.get("challenge_id") or ""))
        if (
            challenge is not None
            and challenge.user_id == user.id
            and challenge.status == PushStatus.PENDING.value
            and as_utc(challenge.expires_at) > now
            and (challenge.login_transaction_id, challenge.session_id) == (login_transaction_id, session_id)
        ):
            raise ProofPending("waiting for your device to answer")

    def check_verification_type(self, verification_type: str) -> None:
        """422 for a ``type`` no registered method (nor the recovery codes) answers to."""
        if verification_type != recovery_codes.VERIFICATION_TYPE:
            self.registry.for_verification_type(verification_type)

    def prove(
        self,
        uow: UnitOfWork,
        user: User,
        *,
        verification_type: str,
        proof: Mapping[str, Any],
        context: RequestContext,
        now: datetime,
        login_transaction_id: str | None = None,
        session_id: str | None = None,
    ) -> Proven:
        """Check a second factor of ``user`` (login and step-up alike); raise VerificationError if it fails.

        Single use is settled here, in the database, not in the method: a recovery code is marked used
        and a TOTP step recorded by conditional UPDATEs, so of N parallel submissions exactly one wins.
        """
        if verification_type == recovery_codes.VERIFICATION_TYPE:
            return self._prove_recovery_code(uow, user, proof=proof, context=context, now=now)
        if verification_type == PUSH:
            # The proof of a push is the approval the device signed, consumed here once for this very
            # login or step-up; nothing the client sends besides the challenge id counts.
            challenge_id = proof.get("challenge_id")
            approved_by = uow.push_challenges.consume_approval(
                challenge_id if isinstance(challenge_id, str) else "",
                user_id=user.id,
                login_transaction_id=login_transaction_id,
                session_id=session_id,
                now=now,
            )
            if approved_by is None:
                raise VerificationError("the push notification was denied, expired or not sent for this sign-in")
            proof = {"approved_by": approved_by}
        candidates = self.registry.for_verification_type(verification_type)
        records = list(uow.methods.active_for_user(user.id))
        organization = uow.organizations.get(user.organization_id)
        method_context = self.method_context(organization, context)
        try:
            result = self._verify_with(candidates, user, records, proof, method_context)
        except MethodCloned as error:
            # A signed response with a stale counter is a clone only if it answers a challenge issued
            # to this login or session and unused: a replayed response is refused as a replay.
            challenge_hex = error.extra.get("challenge")
            if not isinstance(challenge_hex, str) or not uow.challenges.consume(
                hash_token(challenge_hex),
                user_id=user.id,
                login_transaction_id=login_transaction_id,
                session_id=session_id,
                now=now,
            ):
                raise VerificationError("this challenge is unknown, expired or already used; start again") from None
            method_id = error.extra.get("method_id")
            if isinstance(method_id, str):
                uow.methods.mark_cloned(method_id, now=now)
            audit.record(
                uow,
                "authenticator.cloned",
                organization_id=user.organization_id,
                subject_id=user.id,
                ip=context.ip,
                details={"method_id": method_id, "reason": error.detail[:200]},
            )
            raise VerificationError(error.detail) from None
        # A challenge-response proof answers a challenge issued to this very login or session, once,
        # with one of the credentials those options offered (allowCredentials).
        if result.challenge is not None:
            issued = uow.challenges.consume(
                hash_token(result.challenge.hex()),
                user_id=user.id,
                login_transaction_id=login_transaction_id,
                session_id=session_id,
                now=now,
            )
            if issued is None:
                raise VerificationError("this challenge is unknown, expired or already used; start again")
            record = uow.methods.get(result.method_id)
            if issued.method_type is not None and (record is None or record.type != issued.method_type):
                raise VerificationError("this credential was not among those offered for this request")
        if result.counter is None:
            self._mark_used(uow, result, now=now)
        elif not uow.methods.advance_counter(result.method_id, result.counter, now=now):
            raise CodeAlreadyUsed()
        return Proven(verification_type=verification_type, amr=result.amr, method_id=result.method_id)

    def _prove_recovery_code(
        self, uow: UnitOfWork, user: User, *, proof: Mapping[str, Any], context: RequestContext, now: datetime
    ) -> Proven:
        normalized = recovery_codes.normalize(proof.get("code"))  # type: ignore[arg-type]
        if normalized is None or not uow.recovery_codes.consume(user.id, recovery_codes.hash_code(normalized), now=now):
            raise VerificationError("the recovery code does not match or was already used")
        remaining = uow.recovery_codes.count_unused(user.id)
        audit.record(
            uow,
            "recovery_code.used",
            organization_id=user.organization_id,
            subject_id=user.id,
            actor_id=user.id,
            ip=context.ip,
            details={"remaining": remaining},
        )
        return Proven(
            verification_type=recovery_codes.VERIFICATION_TYPE,
            amr=recovery_codes.AMR,
            recovery_codes_remaining=remaining,
        )

    def after_proof(self, user: User, proven: Proven) -> None:
        """Notices sent once the transaction that used the proof has committed."""
        if proven.recovery_codes_remaining is not None and user.email:
            remaining = proven.recovery_codes_remaining
            self.notifier.notify(
                to=user.email,
                subject="A recovery code was used to sign in to Twofold",
                body=(
                    f"Hello {user.display_name or user.username},\n\n"
                    f"a recovery code was just used to sign in to your account. {remaining} unused "
                    f"recovery code{'s' if remaining != 1 else ''} remain.\n\n"
                    "If this was you, consider registering a new verification method and generating new "
                    "recovery codes. If it was not you, change your password and contact your administrator.\n"
                ),
            )

    def issue_recovery_codes(self, uow: UnitOfWork, user: User, *, context: RequestContext) -> list[str]:
        """A fresh set of recovery codes for ``user``, replacing any earlier set; shown once."""
        codes = recovery_codes.generate_codes()
        uow.recovery_codes.replace_for_user(user.id, [recovery_codes.hash_code(code) for code in codes])
        audit.record(
            uow,
            "recovery_codes.generated",
            organization_id=user.organization_id,
            subject_id=user.id,
            actor_id=user.id,
            ip=context.ip,
            details={"count": len(codes)},
        )
        return codes

    @staticmethod
    def _verify_with(
        candidates: Sequence[VerificationMethod],
        user: User,
        records: Sequence[VerificationMethodRecord],
        proof: Mapping[str, Any],
        method_context: MethodContext,
    ) -> VerificationResult:
        last_error: VerificationError | None = None
        for method in candidates:
            own = [r for r in records if r.type == method.method_type]
            if not own:
                continue
            try:
                return method.verify(user=user, methods=own, proof=proof, context=method_context)
            except VerificationError as error:
                # The method that knew the credential has the telling error; "not mine" is the weakest.
                if last_error is None or not isinstance(error, UnknownCredential):
                    last_error = error
        raise last_error or VerificationError("no verification method of this type is registered")

    @staticmethod
    def _mark_used(uow: UnitOfWork, result: VerificationResult, *, now: datetime) -> None:
        record = uow.methods.get(result.method_id)
        if record is not None:
            record.last_used_at = now

    # -- forced enrollment (R3) ------------------------------------------------------------------

    def _enrollment_transaction(self, uow: UnitOfWork, token: str, *, now: datetime) -> tuple[LoginTransaction, User]:
        transaction, user = self.open_transaction(uow, token, now=now)
        if transaction.state != TransactionState.ENROLLMENT_REQUIRED.value:
            # A half-authenticated user never adds a method to an account that has one (Keycloak bypass).
            raise Forbidden("this login must be finished with a registered verification method")
        return transaction, user

    def begin_enrollment(
        self, *, transaction_token: str, method_type: str, name: str, context: RequestContext
    ) -> EnrollmentStarted:
        self.registry.method(method_type)  # an unknown type is a 422 before anything else
        with self.uow(read_only=True) as uow:
            _, user = self._enrollment_transaction(uow, transaction_token, now=utcnow())
            organization = uow.organizations.get(user.organization_id)
        started = self.prepare_enrollment(user, organization, method_type=method_type, name=name, context=context)
        now = utcnow()
        with self.uow() as uow:
            transaction, user = self._enrollment_transaction(uow, transaction_token, now=now)
            return self.store_pending(
                uow,
                user,
                started,
                expires_at=min(now + ENROLLMENT_LIFETIME, as_utc(transaction.expires_at)),
                login_transaction_id=transaction.id,
                context=context,
            )

    def prepare_enrollment(
        self,
        user: User,
        organization: Organization | None,
        *,
        method_type: str,
        name: str,
        context: RequestContext,
        existing: Sequence[VerificationMethodRecord] = (),
    ) -> EnrollmentStart:
        """The first phase of an enrollment, made before any write transaction: secrets, QR codes and
        options take tens of milliseconds, and SQLite has one writer at a time."""
        method = self.registry.method(method_type)
        method_context = self.method_context(organization, context)
        if not method.available(method_context):
            raise Forbidden(f"{method.display_name} is not offered by this server")
        return method.begin_enrollment(
            user=user,
            name=self.new_method_name(name, method.display_name, existing),
            context=method_context,
            existing=existing,
        )

    @staticmethod
    def new_method_name(name: str, default: str, existing: Sequence[VerificationMethodRecord]) -> str:
        """Names are unique per user (API.md): a name given twice is refused; without one, the type's
        name is numbered ("Authenticator app 2") so that two of a kind can be told apart."""
        taken = {m.name.casefold() for m in existing}
        if name and name.strip():
            clean = clean_display_name(name)
            if clean.casefold() in taken:
                raise Conflict(f"you already have a verification method named {clean!r}")
            return clean
        candidate, number = default, 1
        while candidate.casefold() in taken:
            number += 1
            candidate = f"{default} {number}"
        return candidate

    @staticmethod
    def store_pending(
        uow: UnitOfWork,
        user: User,
        started: EnrollmentStart,
        *,
        expires_at: datetime,
        login_transaction_id: str | None,
        context: RequestContext,
    ) -> EnrollmentStarted:
        """Keep a prepared enrollment as a pending method until its proof arrives (or it expires)."""
        record = started.record
        record.status = MethodStatus.PENDING.value
        record.expires_at = expires_at
        record.login_transaction_id = login_transaction_id
        uow.methods.add(record)
        audit.record(
            uow,
            "enrollment.started",
            organization_id=user.organization_id,
            subject_id=user.id,
            actor_id=user.id,
            ip=context.ip,
            details={"method_type": record.type, "during_login": login_transaction_id is not None},
        )
        return EnrollmentStarted(record.id, record.type, record.name, record.expires_at, started.client_data)

    def complete_enrollment(
        self, *, transaction_token: str, enrollment_id: str, proof: Mapping[str, Any], context: RequestContext
    ) -> LoginOutcome:
        now = utcnow()
        with self.uow() as uow:
            transaction, user = self._enrollment_transaction(uow, transaction_token, now=now)
            record = uow.methods.get(enrollment_id) if isinstance(enrollment_id, str) else None
            if (
                record is None
                or record.user_id != user.id
                or record.status != MethodStatus.PENDING.value
                or record.login_transaction_id != transaction.id
                or (record.expires_at is not None and as_utc(record.expires_at) <= now)
            ):
                raise NotFound("no such enrollment in this login")
            attempts, _ = self._claim_enrollment(uow, transaction, now=now)
            # Under the per-user lock, check again that the user still has no active method (R3).
            user = uow.users.get_for_update(user.id) or user
            if uow.methods.count_active(user.id) > 0:
                raise Conflict("this account already has an active verification method")
            method = self.registry.method(record.type)
            organization = uow.organizations.get(user.organization_id)
            method_context = self.method_context(organization, context)
            try:
                result = method.complete_enrollment(user=user, record=record, proof=proof, context=method_context)
                self.refuse_registered_elsewhere(uow, record)
            except ProofPending:
                # Not an attempt: the device has not paired yet, and the page asks again until it has.
                uow.transactions.release_attempt(transaction.id)
                uow.commit()
                raise
            except VerificationError as error:
                attempts_left = max(0, self.settings.transaction_max_failures - attempts)
                if attempts_left == 0:
                    uow.transactions.end(transaction.id, now=now)
                audit.record(
                    uow,
                    "enrollment.failed",
                    organization_id=user.organization_id,
                    subject_id=user.id,
                    ip=context.ip,
                    details={"method_type": record.type, "attempts_left": attempts_left},
                )
                uow.commit()
                raise VerificationError(error.detail, attempts_left=attempts_left) from None
            if not uow.methods.activate(record.id, counter=result.counter, now=now):
                raise NotFound("no such enrollment in this login")
            uow.transactions.end_all_for_user(user.id, now=now)
            amr = mfa_amr(result.amr)
            issued = self.sessions.issue(uow, user, amr=amr, now=now, context=context)
            audit.record(
                uow,
                "method.enrolled",
                organization_id=user.organization_id,
                subject_id=user.id,
                actor_id=user.id,
                ip=context.ip,
                details={"method_id": record.id, "method_type": record.type, "during_login": True},
            )
            codes = self.issue_recovery_codes(uow, user, context=context)
            self._completed(uow, user, now=now, context=context, amr=amr, details={"enrolled": record.type})
            return LoginOutcome(
                status="authenticated", expires_at=issued.expires_at, session=issued, recovery_codes=codes
            )

    @staticmethod
    def refuse_registered_elsewhere(uow: UnitOfWork, record: VerificationMethodRecord) -> None:
        """A credential id already registered to anyone is refused (WebAuthn §7.1 step 22); the unique
        index settles a race between two registrations of one credential."""
        if record.lookup_key is None:
            return
        other = uow.methods.by_lookup_key(record.lookup_key)
        if other is not None and other.id != record.id:
            record.lookup_key = None  # the pending record keeps nothing that would collide when saved
            raise VerificationError("this authenticator is already registered")

    def pending_enrollment(self, transaction_token: str, enrollment_id: str) -> VerificationMethodRecord | None:
        """A pending enrollment of this login, for the pages to show its form again after a wrong code."""
        with self.uow(read_only=True) as uow:
            transaction, user = self._enrollment_transaction(uow, transaction_token, now=utcnow())
            record = uow.methods.get(enrollment_id)
            if record is None or record.user_id != user.id or record.login_transaction_id != transaction.id:
                return None
            return record if record.status == MethodStatus.PENDING.value else None

    def _claim_enrollment(self, uow: UnitOfWork, transaction: LoginTransaction, *, now: datetime) -> tuple[int, None]:
        attempts = uow.transactions.claim_attempt(
            transaction.id, now=now, maximum=self.settings.transaction_max_failures
        )
        if attempts is None:
            raise TransactionExpired()
        uow.commit()
        return attempts, None
