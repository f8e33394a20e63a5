"""Audit events (R9): every login step, failure, lock and admin change; never a secret."""

from __future__ import annotations

import contextvars
import logging
import threading
from typing import Any

from twofold.domain.entities import AuditEvent
from twofold.domain.ports import UnitOfWork, UnitOfWorkFactory

logger = logging.getLogger("twofold.audit")

# Details are for people reading the log; anything that could be a credential is dropped on the way in.
_SECRET_WORDS = ("password", "secret", "code", "token", "otp", "credential", "key", "seed", "assertion")


def _scrub(details: dict[str, Any]) -> dict[str, Any]:
    clean: dict[str, Any] = {}
    for name, value in details.items():
        lowered = name.lower()
        if any(word in lowered for word in _SECRET_WORDS) and name not in _ALLOWED_NAMES:
            continue
        clean[name] = _scrub(value) if isinstance(value, dict) else value
    return clean


# Names that contain a "secret word" but hold none.
_ALLOWED_NAMES = {"method_type", "enrollable_types", "code_slug", "recovery_codes_deleted", "key_thumbprint"}


def record(
    uow: UnitOfWork,
    type: str,
    *,
    organization_id: str | None,
    actor_id: str | None = None,
    subject_id: str | None = None,
    ip: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    event = AuditEvent(
        organization_id=organization_id,
        type=type,
        actor_id=actor_id,
        subject_id=subject_id,
        ip=ip,
        details=_scrub(details or {}),
    )
    uow.audit.add(event)
    logger.info("audit %s org=%s actor=%s subject=%s", type, organization_id, actor_id, subject_id)
    return event


class DeferredAuditTrail:
    """Audit events of frequent, state-free operations (token grants), written in batches by one thread.

    A grant changes nothing in the database, so a transaction of its own only to record it would be most
    of its cost (and, on SQLite, a turn at the single writer's lock). Events wait here at most
    ``max_delay`` seconds, or until ``max_batch`` are pending, and are then inserted together. Reads of the
    audit trail in this process call :meth:`flush` first, so they never miss one; a process that is killed
    (not stopped) loses what was pending, at most ``max_delay`` of grants. Changes of state are never
    deferred: they are audited in their own transaction (R9).
    """

    MAX_PENDING = 100_000  # while the database is unreachable; beyond it, the oldest are dropped (and counted)

    def __init__(self, uow: UnitOfWorkFactory, *, max_delay: float = 0.1, max_batch: int = 500) -> None:
        self.uow = uow
        self.max_delay = max_delay
        self.max_batch = max_batch
        self._pending: list[AuditEvent] = []
        self._condition = threading.Condition()
        self._flushing = threading.Lock()  # one writer at a time: events reach the table in order
        self._thread: threading.Thread | None = None
        self._closed = False
        self.dropped = 0

    def record(
        self,
        type: str,
        *,
        organization_id: str | None,
        actor_id: str | None = None,
        subject_id: str | None = None,
        ip: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        event = AuditEvent(
            organization_id=organization_id,
            type=type,
            actor_id=actor_id,
            subject_id=subject_id,
            ip=ip,
            details=_scrub(details or {}),
        )
        logger.info("audit %s org=%s actor=%s subject=%s", type, organization_id, actor_id, subject_id)
        with self._condition:
            self._pending.append(event)
            self._keep_within_cap()
            if self._thread is None and not self._closed:
                # A context of its own: the writer must not inherit the caller's (no_waiting() included).
                self._thread = threading.Thread(
                    target=contextvars.Context().run, args=(self._run,), name="twofold-audit", daemon=True
                )
                self._thread.start()
            if len(self._pending) == self.max_batch:  # once per full batch, not for every event past it
                self._condition.notify()

    def flush(self) -> None:
        """Write every pending event now, in the caller's thread."""
        with self._flushing:
            with self._condition:
                batch, self._pending = self._pending, []
            if not batch:
                return
            try:
                with self.uow() as uow:
                    uow.audit.add_many(batch)
            except Exception:
                with self._condition:  # kept for the next attempt, in order
                    self._pending[:0] = batch
                    self._keep_within_cap()
                raise

    def _keep_within_cap(self) -> None:
        """Called with the condition held. Beyond MAX_PENDING (the database away for long), the oldest events
        are dropped: counted, and said in the log, since the audit trail then has a gap (R9)."""
        excess = len(self._pending) - self.MAX_PENDING
        if excess > 0:
            del self._pending[:excess]
            before, self.dropped = self.dropped, self.dropped + excess
            if before == 0 or before // 10_000 != self.dropped // 10_000:
                logger.error("audit events dropped while the database is unreachable: %d so far", self.dropped)

    def close(self) -> None:
        """Stop the writer after a last flush (server shutdown)."""
        with self._condition:
            self._closed = True
            self._condition.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.flush()
        except Exception as error:  # shutting down: say what is lost instead of raising
            logger.error("audit events could not be written at shutdown: %s", error.__class__.__name__)

    def _run(self) -> None:
        failures = 0
        while True:
            with self._condition:
                # A full batch is written at once, unless the last attempt failed: then wait, longer each time.
                if not self._closed and (failures or len(self._pending) < self.max_batch):
                    self._condition.wait(self.max_delay * (1 + min(failures, 50)))
                if self._closed:
                    return
            try:
                self.flush()
                failures = 0
            except Exception as error:  # the database is away: keep the events and retry
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    logger.warning("audit events wait to be written: %s", error.__class__.__name__)
