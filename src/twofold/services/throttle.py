"""Throttling that holds across processes: every counter lives in the database and changes only by
compare-and-set, so parallel requests cannot slip past a limit (DESIGN.md §3, SECURITY.md).

- Password step: per-username exponential back-off (unknown usernames too), and a per-IP failure
  budget. Soft: both delay, neither locks for good. An attempt reserves a failure before the
  password is checked and gives it back when the password was right.
- Second factor: consecutive failures per account across every method, with back-off, and a hard
  lock at ``mfa_lock_threshold`` (100, NIST SP 800-63B) that only an unlock lifts.
- Only a completed authentication resets the counters.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from twofold.config import Settings
from twofold.domain.clock import as_utc
from twofold.domain.errors import RateLimited
from twofold.domain.ports import UnitOfWork

_CAS_RETRIES = 64


@dataclass(frozen=True)
class Reservation:
    key: str
    failures: int
    previous_failures: int
    previous_blocked_until: datetime | None


def _backoff(failures: int, *, free: int, base: float, maximum: float) -> float:
    if failures <= free:
        return 0.0
    return float(min(maximum, base * 2 ** min(failures - free - 1, 40)))


def password_key(username_key: str) -> str:
    return f"pw:{username_key}"


def ip_key(ip: str) -> str:
    return f"ip:{ip}"


def mfa_key(user_id: str) -> str:
    return f"mfa:{user_id}"


class Throttle:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # -- password step ---------------------------------------------------------------------------

    def check_ip(self, uow: UnitOfWork, ip: str, *, now: datetime) -> None:
        state = uow.throttles.get(ip_key(ip))
        if state is None or state.window_start is None:
            return
        window_end = as_utc(state.window_start) + timedelta(seconds=self.settings.ip_failure_window_seconds)
        if state.failures >= self.settings.ip_failure_budget and window_end > now:
            raise RateLimited(
                "too many failed sign-ins from this address", retry_after=(window_end - now).total_seconds()
            )

    def record_ip_failure(self, uow: UnitOfWork, ip: str, *, now: datetime) -> None:
        window = timedelta(seconds=self.settings.ip_failure_window_seconds)
        for _ in range(_CAS_RETRIES):
            state = uow.throttles.get(ip_key(ip))
            if state is None or state.window_start is None or as_utc(state.window_start) + window <= now:
                failures, start = 1, now
            else:
                failures, start = state.failures + 1, as_utc(state.window_start)
            if uow.throttles.compare_and_set(
                ip_key(ip),
                expected_failures=None if state is None else state.failures,
                failures=failures,
                blocked_until=None,
                window_start=start,
            ):
                return

    def reserve_password_attempt(self, uow: UnitOfWork, username_key: str, *, now: datetime) -> Reservation:
        s = self.settings
        return self._reserve(
            uow,
            password_key(username_key),
            now=now,
            free=s.password_free_attempts,
            base=s.password_backoff_base_seconds,
            maximum=s.password_backoff_max_seconds,
            message="too many sign-in attempts for this username",
        )

    def refund(self, uow: UnitOfWork, reservation: Reservation) -> None:
        """A right password is not a failure: give back the reserved one, unless others moved on since."""
        uow.throttles.compare_and_set(
            reservation.key,
            expected_failures=reservation.failures,
            failures=reservation.previous_failures,
            blocked_until=reservation.previous_blocked_until,
            window_start=None,
        )

    # -- second factor ---------------------------------------------------------------------------

    def reserve_mfa_attempt(self, uow: UnitOfWork, user_id: str, *, now: datetime) -> Reservation:
        """Count one second-factor attempt as failed before checking it; success resets the count.
        Once the count has reached the lock threshold nothing more is reserved, so a parallel request
        that read the account before the lock was written still cannot get one more code checked."""
        s = self.settings
        return self._reserve(
            uow,
            mfa_key(user_id),
            now=now,
            free=s.mfa_free_attempts,
            base=s.mfa_backoff_base_seconds,
            maximum=s.mfa_backoff_max_seconds,
            message="too many failed verifications",
            limit=s.mfa_lock_threshold,
        )

    def mfa_lock_reached(self, reservation: Reservation) -> bool:
        return reservation.failures >= self.settings.mfa_lock_threshold

    def reset_after_authentication(self, uow: UnitOfWork, *, user_id: str, username_key: str) -> None:
        uow.throttles.delete(mfa_key(user_id))
        uow.throttles.delete(password_key(username_key))

    def mfa_failures(self, uow: UnitOfWork, user_id: str) -> int:
        state = uow.throttles.get(mfa_key(user_id))
        return 0 if state is None else state.failures

    def _reserve(
        self,
        uow: UnitOfWork,
        key: str,
        *,
        now: datetime,
        free: int,
        base: float,
        maximum: float,
        message: str,
        limit: int | None = None,
    ) -> Reservation:
        for _ in range(_CAS_RETRIES):
            state = uow.throttles.get(key)
            failures = 0 if state is None else state.failures
            if limit is not None and failures >= limit:
                # Decided on the same read the compare-and-set below guards: the count cannot overshoot.
                raise RateLimited(message, retry_after=maximum)
            blocked_until = None if state is None or state.blocked_until is None else as_utc(state.blocked_until)
            if blocked_until is not None and blocked_until > now:
                raise RateLimited(message, retry_after=(blocked_until - now).total_seconds())
            delay = _backoff(failures + 1, free=free, base=base, maximum=maximum)
            if uow.throttles.compare_and_set(
                key,
                expected_failures=None if state is None else failures,
                failures=failures + 1,
                blocked_until=now + timedelta(seconds=delay) if delay else None,
                window_start=None,
            ):
                return Reservation(key, failures + 1, failures, blocked_until)
        raise RateLimited(message, retry_after=1)
