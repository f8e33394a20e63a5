"""Push verification with the Twofold Authenticator companion (R8 ``push``, API.md "Push companion").

Pairing: a pending ``push`` enrollment is found by its single-use code's hash; the device sends its P-256
public key, which is sealed into the method's payload, and the code is spent. Device calls are signed
(``Twofold-Device`` JWS; each ``jti`` accepted once across processes). A challenge belongs to one login
transaction or session, lives 60 s, carries its context and a two-digit number; the device's answer is a
JWS over ``{challenge_id, decision, number, not_me}``, recorded once by a conditional UPDATE. A wrong
number denies the challenge and suspends push for the user for 15 minutes (they are told); at most three
prompts per user per ten minutes, so a flood of prompts cannot wear anyone down (MFA fatigue).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from joserfc.jwk import ECKey

from twofold.config import Settings
from twofold.domain.clock import as_utc, utcnow
from twofold.domain.entities import (
    MethodStatus,
    Organization,
    PushChallenge,
    PushStatus,
    TransactionState,
    User,
    VerificationMethodRecord,
)
from twofold.domain.errors import Conflict, Forbidden, NotFound, RateLimited, Unauthenticated, ValidationFailed
from twofold.domain.ports import Notifier, UnitOfWork, UnitOfWorkFactory, Wakeups
from twofold.domain.rules import clean_display_name
from twofold.domain.verification import MethodContext
from twofold.methods.push import device as device_keys
from twofold.methods.push.method import device_payload, seal_context
from twofold.methods.push.numbers import choices_for, new_number
from twofold.methods.push.pairing import pairing_lookup_key

from . import audit
from .context import Principal, RequestContext
from .login import LoginService
from .push_gateway import PushGateway
from .sessions import SessionService

METHOD_TYPE = "push"
CHALLENGE_LIFETIME = timedelta(seconds=60)
PROMPT_LIMIT = 3
PROMPT_WINDOW = timedelta(minutes=10)
SUSPENSION = timedelta(minutes=15)
AUTH_SCHEME = "twofold-device"


def suspension_key(user_id: str) -> str:
    return f"push-suspended:{user_id}"


def user_key(user_id: str) -> str:
    """The wake-up key of a user's devices: a new challenge waits."""
    return f"user:{user_id}"


def enrollment_key(enrollment_id: str) -> str:
    """The wake-up key of an enrollment page: its device has paired."""
    return f"enrollment:{enrollment_id}"


def challenge_key(challenge_id: str) -> str:
    """The wake-up key of a sign-in page: its challenge was answered."""
    return f"challenge:{challenge_id}"


@dataclass(frozen=True)
class Device:
    """A paired companion, authenticated by the request it signed."""

    record: VerificationMethodRecord
    user: User
    key: ECKey


@dataclass(frozen=True)
class PushStarted:
    challenge_id: str
    number: int
    expires_at: datetime


class PushService:
    def __init__(
        self,
        *,
        settings: Settings,
        uow: UnitOfWorkFactory,
        login: LoginService,
        sessions: SessionService,
        notifier: Notifier,
        gateway: PushGateway,
        wakeups: Wakeups,
        method_context: Callable[[Organization | None, RequestContext], MethodContext],
    ) -> None:
        self.settings = settings
        self.uow = uow
        self.login = login
        self.sessions = sessions
        self.notifier = notifier
        self.gateway = gateway
        self.wakeups = wakeups
        self.method_context = method_context

    # -- pairing ---------------------------------------------------------------------------------

    def pair(
        self, *, pairing_code: str, public_key: Any, device_name: str, platform: str, context: RequestContext
    ) -> str:
        """The device's half of a ``push`` enrollment; returns its ``device_id`` (the method's id)."""
        key = device_keys.public_key_from_jwk(public_key)
        name = clean_display_name(device_name, field="device_name")
        platform_name = clean_display_name(platform, field="platform", maximum=32)
        now = utcnow()
        with self.uow() as uow:
            record = (
                uow.methods.by_lookup_key(pairing_lookup_key(pairing_code))
                if isinstance(pairing_code, str) and 20 <= len(pairing_code) <= 128
                else None
            )
            if (
                record is None
                or record.type != METHOD_TYPE
                or record.status != MethodStatus.PENDING.value
                or (record.expires_at is not None and as_utc(record.expires_at) <= now)
            ):
                raise NotFound("this pairing code is unknown, used or expired; start the pairing again")
            user = uow.users.get(record.user_id)
            if user is None or not user.is_active:
                raise NotFound("this pairing code is unknown, used or expired; start the pairing again")
            payload = {
                "public_jwk": device_keys.public_jwk(key),
                "device_name": name,
                "platform": platform_name,
                "paired_at": now.isoformat(),
            }
            organization = uow.organizations.get(user.organization_id)
            sealer = self.method_context(organization, context).sealer
            record.payload_encrypted = sealer.seal(json.dumps(payload).encode(), context=seal_context(record))
            record.lookup_key = None  # the code is spent
            if _is_default_name(record.name):
                others = [m for m in uow.methods.active_for_user(user.id) if m.id != record.id]
                record.name = self.login.new_method_name("", name, others)
            audit.record(
                uow,
                "push.device_paired",
                organization_id=user.organization_id,
                subject_id=user.id,
                ip=context.ip,
                details={
                    "method_id": record.id,
                    "device_name": name,
                    "platform": platform_name,
                    "key_thumbprint": device_keys.thumbprint(key),
                },
            )
            device_id = record.id
            self.wakeups.notify(uow, enrollment_key(record.id))
        self._tell(
            user,
            "Your Twofold account was paired with Twofold Authenticator on the device "
            f"{name!r} ({platform_name}). It can now approve your sign-ins.",
        )
        return device_id

    def pairing_status(self, enrollment_id: str, *, user_id: str, login_transaction_id: str | None) -> str:
        """What an enrollment page shows while it waits: pending, paired, or expired (also used or unknown)."""
        now = utcnow()
        with self.uow(read_only=True) as uow:
            record = uow.methods.get(enrollment_id) if isinstance(enrollment_id, str) else None
            if record is None or record.user_id != user_id or record.type != METHOD_TYPE:
                raise NotFound("no such enrollment")
            if record.login_transaction_id != login_transaction_id:
                raise NotFound("no such enrollment")
            if record.status == MethodStatus.ACTIVE.value:
                return "paired"
            if record.expires_at is not None and as_utc(record.expires_at) <= now:
                return "expired"
            return "paired" if record.lookup_key is None else "pending"

    # -- device authentication -------------------------------------------------------------------

    def authenticate_device(self, authorization: str | None, *, method: str, path: str) -> Device:
        """The device behind ``Authorization: Twofold-Device <JWS>``: signature by its key, this method
        and URL, ``iat`` within a minute, and a ``jti`` never seen before (in any process)."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != AUTH_SCHEME or not token.strip():
            raise Unauthenticated("this call needs Authorization: Twofold-Device <signed request>")
        token = token.strip()
        now = utcnow()
        try:
            device_id = device_keys.claimed_device_id(token)
            with self.uow() as uow:
                record = uow.methods.get(device_id)
                user = uow.users.get(record.user_id) if record is not None else None
                if record is None or record.type != METHOD_TYPE or not record.is_active or user is None:
                    raise Unauthenticated("this device is not paired (or was removed)")
                if not user.is_active:
                    raise Unauthenticated("this account is disabled")
                organization = uow.organizations.get(user.organization_id)
                payload = device_payload(record, self.method_context(organization, RequestContext()))
                key = device_keys.public_key_from_jwk(payload.get("public_jwk") or {})
                request = device_keys.verify_device_request(
                    token,
                    key,
                    expected_device_id=device_id,
                    expected_htm=method.upper(),
                    expected_htu=self.settings.public_url + path,
                    now=now,
                )
                jti_hash = hashlib.sha256(f"{device_id}:{request.jti}".encode()).hexdigest()
                keep_until = datetime.fromtimestamp(request.iat, tz=now.tzinfo) + timedelta(
                    seconds=2 * device_keys.IAT_LEEWAY_SECONDS
                )
                if not uow.device_request_ids.remember(jti_hash, expires_at=keep_until):
                    raise device_keys.DeviceProofError("this request was already used (replayed jti)")
                return Device(record=record, user=user, key=key)
        except (device_keys.DeviceProofError, ValidationFailed) as error:
            raise Unauthenticated(error.detail) from None

    # -- challenges ------------------------------------------------------------------------------

    def start_for_login(self, *, transaction_token: str, method_id: str | None, context: RequestContext) -> PushStarted:
        now = utcnow()
        with self.uow() as uow:
            transaction, user = self.login.open_transaction(uow, transaction_token, now=now)
            if transaction.state != TransactionState.MFA_REQUIRED.value:
                raise Forbidden("this login must enroll a verification method first")
            started, devices = self._start(
                uow,
                user,
                method_id=method_id,
                context=context,
                now=now,
                expires_at=min(now + CHALLENGE_LIFETIME, as_utc(transaction.expires_at)),
                login_transaction_id=transaction.id,
            )
        self.gateway.wake(user_id=user.id, device_ids=devices, challenge_id=started.challenge_id)
        return started

    def start_for_step_up(self, principal: Principal, *, method_id: str | None, context: RequestContext) -> PushStarted:
        self.sessions.require_mfa_session(principal)
        assert principal.session is not None
        now = utcnow()
        with self.uow() as uow:
            user = uow.users.get(principal.user.id)
            assert user is not None
            started, devices = self._start(
                uow,
                user,
                method_id=method_id,
                context=context,
                now=now,
                expires_at=now + CHALLENGE_LIFETIME,
                session_id=principal.session.id,
            )
        self.gateway.wake(user_id=user.id, device_ids=devices, challenge_id=started.challenge_id)
        return started

    def _start(
        self,
        uow: UnitOfWork,
        user: User,
        *,
        method_id: str | None,
        context: RequestContext,
        now: datetime,
        expires_at: datetime,
        login_transaction_id: str | None = None,
        session_id: str | None = None,
    ) -> tuple[PushStarted, list[str]]:
        # The user's row lock makes the prompt count exact under parallel requests and processes.
        locked = uow.users.get_for_update(user.id)
        assert locked is not None
        devices = [m for m in uow.methods.active_for_user(user.id) if m.type == METHOD_TYPE]
        if method_id is not None:
            devices = [m for m in devices if m.id == method_id]
            if not devices:
                raise NotFound("no such paired device")
        if not devices:
            raise Forbidden("no Twofold Authenticator is paired with this account")
        suspended = uow.throttles.get(suspension_key(user.id))
        if suspended is not None and suspended.blocked_until is not None and as_utc(suspended.blocked_until) > now:
            raise RateLimited(
                "push notifications are suspended for this account after a wrong number was picked; use another method",
                retry_after=_seconds(as_utc(suspended.blocked_until) - now),
            )
        recent = uow.push_challenges.created_since(user.id, now - PROMPT_WINDOW)
        if len(recent) >= PROMPT_LIMIT:
            audit.record(
                uow,
                "push.limited",
                organization_id=user.organization_id,
                subject_id=user.id,
                ip=context.ip,
                details={"prompts": len(recent)},
            )
            uow.commit()
            oldest = as_utc(recent[-PROMPT_LIMIT])
            raise RateLimited(
                f"at most {PROMPT_LIMIT} push notifications in {PROMPT_WINDOW.seconds // 60} minutes; "
                "use another method or wait",
                retry_after=_seconds(oldest + PROMPT_WINDOW - now),
            )
        organization = uow.organizations.get(user.organization_id)
        number = new_number()
        challenge = PushChallenge(
            user_id=user.id,
            number=number,
            choices=choices_for(number),
            expires_at=expires_at,
            login_transaction_id=login_transaction_id,
            session_id=session_id,
            method_id=method_id,
            app=f"Twofold · {organization.name}" if organization else "Twofold",
            ip=context.ip,
            user_agent=context.user_agent,
            created_at=now,
        )
        uow.push_challenges.add(challenge)
        audit.record(
            uow,
            "push.sent",
            organization_id=user.organization_id,
            subject_id=user.id,
            ip=context.ip,
            details={"challenge_id": challenge.id, "devices": len(devices), "step_up": session_id is not None},
        )
        uow.flush()
        self.wakeups.notify(uow, user_key(user.id))
        return PushStarted(challenge.id, number, expires_at), [m.id for m in devices]

    def challenges_for(self, device: Device) -> list[PushChallenge]:
        with self.uow(read_only=True) as uow:
            return list(uow.push_challenges.for_device(device.user.id, device.record.id, now=utcnow()))

    def respond(self, device: Device, challenge_id: str, response: str, context: RequestContext) -> str:
        """Record the device's signed answer; returns the status it gave the challenge."""
        answer = device_keys.verify_answer(response, device.key, expected_challenge_id=challenge_id)
        now = utcnow()
        user = device.user
        with self.uow() as uow:
            challenge = uow.push_challenges.get(challenge_id)
            if (
                challenge is None
                or challenge.user_id != user.id
                or (challenge.method_id is not None and challenge.method_id != device.record.id)
            ):
                raise NotFound("no such challenge for this device")
            if challenge.status != PushStatus.PENDING.value or as_utc(challenge.expires_at) <= now:
                raise Conflict("this challenge was already answered or has expired")
            wrong_number = answer.decision == "approve" and answer.number != challenge.number
            status = PushStatus.APPROVED.value if answer.decision == "approve" and not wrong_number else "denied"
            if not uow.push_challenges.decide(
                challenge.id,
                status=status,
                decided_by=device.record.id,
                now=now,
                not_me=answer.not_me,
                wrong_number=wrong_number,
            ):
                raise Conflict("this challenge was already answered or has expired")
            if wrong_number:
                self._suspend(uow, user.id, now=now)
            audit.record(
                uow,
                "push.wrong_number" if wrong_number else f"push.{'approved' if status != 'denied' else 'denied'}",
                organization_id=user.organization_id,
                subject_id=user.id,
                actor_id=user.id,
                ip=context.ip,
                details={
                    "challenge_id": challenge.id,
                    "method_id": device.record.id,
                    **({"not_me": True} if answer.not_me else {}),
                },
            )
            self.wakeups.notify(uow, challenge_key(challenge.id))
        if wrong_number:
            self._tell(
                user,
                "A sign-in to your account was denied because the wrong number was picked in Twofold "
                f"Authenticator. Push notifications are suspended for {SUSPENSION.seconds // 60} minutes. "
                "If you did not try to sign in, change your password.",
            )
        elif answer.not_me:
            self._tell(
                user,
                "You reported a sign-in request you did not make. Your administrator can see the report. "
                "Change your password: someone may know it.",
            )
        return status

    @staticmethod
    def _suspend(uow: UnitOfWork, user_id: str, *, now: datetime) -> None:
        key = suspension_key(user_id)
        until = now + SUSPENSION
        current = uow.throttles.get(key)
        if current is None:
            if uow.throttles.compare_and_set(
                key, expected_failures=None, failures=1, blocked_until=until, window_start=now
            ):
                return
            current = uow.throttles.get(key)
        if current is not None:
            uow.throttles.compare_and_set(
                key,
                expected_failures=current.failures,
                failures=current.failures + 1,
                blocked_until=until,
                window_start=current.window_start,
            )

    def status(
        self, challenge_id: str, *, user_id: str, login_transaction_id: str | None = None, session_id: str | None = None
    ) -> str:
        """What a sign-in page shows while it waits: pending, approved, denied or expired."""
        now = utcnow()
        with self.uow(read_only=True) as uow:
            challenge = uow.push_challenges.get(challenge_id)
            if (
                challenge is None
                or challenge.user_id != user_id
                or (challenge.login_transaction_id, challenge.session_id) != (login_transaction_id, session_id)
            ):
                raise NotFound("no such push notification for this sign-in")
            if challenge.status == PushStatus.PENDING.value and as_utc(challenge.expires_at) <= now:
                return "expired"
            return challenge.status

    def _tell(self, user: User, what: str) -> None:
        if user.email:
            self.notifier.notify(
                to=user.email,
                subject="Security notice from Twofold",
                body=f"Hello {user.display_name or user.username},\n\n{what}\n",
            )


def _is_default_name(name: str) -> bool:
    head, _, number = name.rpartition(" ")
    return name == "Twofold Authenticator" or (head == "Twofold Authenticator" and number.isdigit())


def _seconds(delta: timedelta) -> int:
    return max(1, math.ceil(delta.total_seconds()))
