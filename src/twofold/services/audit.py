"""Audit events (R9): every login step, failure, lock and admin change; never a secret."""

from __future__ import annotations

import logging
from typing import Any

from twofold.domain.entities import AuditEvent
from twofold.domain.ports import UnitOfWork

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
