"""Password hashing (argon2id) and the NIST SP 800-63B policy check."""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from functools import lru_cache
from typing import Any

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from twofold.domain.rules import PASSWORD_MAX, check_password_policy


class Passwords:
    def __init__(self, *, memory_kib: int = 19 * 1024, time_cost: int = 2, parallelism: int = 1) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism, hash_len=32, salt_len=16, type=Type.ID
        )
        self._dummy_hash: str | None = None
        self._dummy_lock = threading.Lock()
        # argon2-cffi releases the GIL, so every request thread can be inside argon2 at once. More of
        # them than cores only time-slice, and a request holding the SQLite write lock then gets a
        # sliver of CPU: writers queue for seconds, up to the busy timeout (503; bench/README.md).
        # One hash per core at a time; the others wait here (in the login path, outside any
        # transaction). The dummy verification waits the same way: equal work, DESIGN.md §7.
        self._slots = _FairSlots(_cores())
        self.dummy_verifications = 0  # observable, so tests can assert the dummy work runs

    def hash(self, password: str) -> str:
        with self._slots:
            return self._hasher.hash(password)

    def _dummy(self) -> str:
        with self._dummy_lock:
            if self._dummy_hash is None:
                self._dummy_hash = self._hasher.hash("twofold dummy password for equal work")
            return self._dummy_hash

    def verify(self, password_hash: str | None, password: str) -> bool:
        """Check a password. Without a hash (unknown, disabled or SSO user) the same argon2 work is done
        against a dummy hash, so timing does not tell the cases apart (DESIGN.md §7)."""
        candidate = password[: PASSWORD_MAX * 4]
        if password_hash is None:
            self.dummy_verifications += 1
            with self._slots, contextlib.suppress(VerificationError):
                self._hasher.verify(self._dummy(), candidate)
            return False
        try:
            with self._slots:
                return self._hasher.verify(password_hash, candidate)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(password_hash)
        except InvalidHashError:
            return True

    def check_policy(self, password: str, *, kind: str, username: str) -> None:
        check_password_policy(password, kind=kind, username=username, is_common=is_common_password(password))


class _FairSlots:
    """A counting semaphore that serves waiters first come, first served: threading.Semaphore lets a
    newcomer take a freed slot ahead of the threads already waiting, which stretches the latency tail."""

    def __init__(self, slots: int) -> None:
        self._lock = threading.Lock()
        self._free = slots
        self._waiters: deque[threading.Lock] = deque()

    def __enter__(self) -> None:
        with self._lock:
            if self._free > 0:
                self._free -= 1
                return
            gate = threading.Lock()
            gate.acquire()
            self._waiters.append(gate)
        gate.acquire()  # released by the holder that hands its slot over

    def __exit__(self, *_: Any) -> None:
        with self._lock:
            if self._waiters:
                self._waiters.popleft().release()  # the slot passes straight to the oldest waiter
            else:
                self._free += 1


def _cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


@lru_cache(maxsize=1)
def _common_passwords() -> frozenset[str]:
    # zxcvbn ships a frequency list of the 30,000 most common passwords seen in breaches.
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(p.casefold() for p in FREQUENCY_LISTS["passwords"])


def is_common_password(password: str) -> bool:
    return password.casefold() in _common_passwords()
