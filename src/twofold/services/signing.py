"""Token-signing keys in use: the newest signs; retired ones stay published (JWKS) for a day, longer than
any token they signed lives, then they go. ``twofold keys rotate`` retires the current key."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

from joserfc.jwk import ECKey

from twofold.domain.clock import as_utc, utcnow
from twofold.domain.entities import SigningKey
from twofold.domain.ports import Sealer, UnitOfWork, UnitOfWorkFactory
from twofold.oauth.signing_keys import new_signing_key, private_key, public_key_set

from . import audit

#: how long a retired key stays published: more than the longest token lifetime (ID and access tokens)
PUBLISHED_AFTER_RETIREMENT = timedelta(days=1)


class SigningKeyService:
    def __init__(self, *, uow: UnitOfWorkFactory, sealer: Sealer) -> None:
        self.uow = uow
        self.sealer = sealer
        # Opening a sealed key (AES-GCM, JSON, key import) costs more than the read that finds the current
        # kid: the opened key is kept in the process, by kid, so every process still sees a rotation at once.
        self._opened: dict[str, ECKey] = {}
        self._lock = threading.Lock()

    def _published(self, uow: UnitOfWork) -> list[SigningKey]:
        cutoff = utcnow() - PUBLISHED_AFTER_RETIREMENT
        return [k for k in uow.signing_keys.all() if k.retired_at is None or as_utc(k.retired_at) > cutoff]

    def current(self) -> tuple[str, ECKey]:
        """The key new tokens are signed with (made on first use)."""
        with self.uow(read_only=True) as uow:
            live = [k for k in uow.signing_keys.all() if k.retired_at is None]
        if not live:
            with self.uow() as uow:
                live = [k for k in uow.signing_keys.all() if k.retired_at is None]
                if not live:
                    created = new_signing_key(self.sealer)
                    uow.signing_keys.add(created)
                    live = [created]
        newest = live[0]
        with self._lock:
            opened = self._opened.get(newest.kid)
            if opened is None:
                opened = private_key(newest, self.sealer)
                self._opened = {newest.kid: opened}  # only the current key is ever needed to sign
        return newest.kid, opened

    def jwks(self) -> dict[str, Any]:
        with self.uow(read_only=True) as uow:
            return public_key_set(self._published(uow))

    def rotate(self) -> str:
        """A new current key; the others are retired now and unpublished a day later."""
        now = utcnow()
        with self.uow() as uow:
            for key in uow.signing_keys.all():
                if key.retired_at is None:
                    key.retired_at = now
            removed = uow.signing_keys.delete_retired_before(now - PUBLISHED_AFTER_RETIREMENT)
            created = new_signing_key(self.sealer)
            uow.signing_keys.add(created)
            audit.record(
                uow,
                "signing_key.rotated",
                organization_id=None,
                details={"kid": created.kid, "unpublished": removed, "by": "operator"},
            )
            return created.kid
