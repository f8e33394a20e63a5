"""Housekeeping (DESIGN.md §6) and re-encryption of secrets at rest under a new key."""

from __future__ import annotations

import logging
from datetime import timedelta

from twofold.config import Settings
from twofold.domain.clock import utcnow
from twofold.domain.ports import Sealer, UnitOfWorkFactory
from twofold.oauth.signing_keys import seal_context

from . import audit

logger = logging.getLogger("twofold.housekeeping")


class MaintenanceService:
    def __init__(self, *, settings: Settings, uow: UnitOfWorkFactory, sealer: Sealer) -> None:
        self.settings = settings
        self.uow = uow
        self.sealer = sealer

    def housekeeping(self) -> dict[str, int]:
        """Purge expired transactions, enrollments, sessions, links and throttle rows; old audit events."""
        now = utcnow()
        with self.uow() as uow:
            counts = uow.housekeeping.purge(
                now=now, audit_before=now - timedelta(days=self.settings.audit_retention_days)
            )
        if any(counts.values()):
            logger.info("housekeeping purged %s", counts)
        return counts

    def rotate_secrets(self) -> int:
        """Re-seal every secret at rest under the current key; the old keys stay readable until done."""
        resealed = 0
        with self.uow() as uow:
            for record in uow.methods.all_sealed():
                sealed = record.payload_encrypted
                if sealed and self.sealer.needs_reseal(sealed):
                    context = f"method:{record.id}"
                    record.payload_encrypted = self.sealer.seal(
                        self.sealer.open(sealed, context=context), context=context
                    )
                    resealed += 1
            for provider in uow.identity_providers.all_sealed():
                sealed = provider.settings_encrypted
                if sealed and self.sealer.needs_reseal(sealed):
                    context = f"identity_provider:{provider.id}"
                    provider.settings_encrypted = self.sealer.seal(
                        self.sealer.open(sealed, context=context), context=context
                    )
                    resealed += 1
            for key in uow.signing_keys.all():
                if self.sealer.needs_reseal(key.private_key_sealed):
                    context = seal_context(key.kid)
                    key.private_key_sealed = self.sealer.seal(
                        self.sealer.open(key.private_key_sealed, context=context), context=context
                    )
                    resealed += 1
            audit.record(uow, "secrets.rotated", organization_id=None, details={"resealed": resealed, "by": "operator"})
        return resealed
