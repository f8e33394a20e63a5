"""Token-signing keys in use (ES256). ``twofold keys rotate`` publishes a new key at once and lets it sign
only once every cached copy of the key set can have been refreshed; retired keys stay published for a day,
longer than any token they signed lives, then they go. ``--now`` is for a key that may have leaked: the new
key signs at once and the old ones are unpublished, so every token they signed is refused. Each process
keeps the keys it read for at most five seconds (reading them is most of a grant's cost otherwise), so that is
how long an immediate rotation takes to reach every process."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from joserfc.jwk import ECKey, KeySet

from twofold.domain.clock import as_utc, utcnow
from twofold.domain.entities import SigningKey
from twofold.domain.ports import Sealer, UnitOfWork, UnitOfWorkFactory, WouldBlock, waiting_allowed
from twofold.oauth.signing_keys import new_signing_key, private_key, public_key_set, verification_keys

from . import audit

#: how long a retired key stays published: more than the longest token lifetime (ID and access tokens)
PUBLISHED_AFTER_RETIREMENT = timedelta(days=1)
#: how long a new key is published before it signs: the JWKS answer's Cache-Control max-age (web/oauth.py),
#: so that relying parties holding the key set find the new kid in it (OpenID Connect Core §10.1.1)
PUBLISHED_BEFORE_SIGNING = timedelta(seconds=300)
#: how long a process signs with the key it read before reading again; a rotation is announced
#: PUBLISHED_BEFORE_SIGNING ahead, so every process switches keys at the announced moment
SIGNING_KEY_CACHE_SECONDS = 5.0
#: how long a process trusts the published keys it read; a token naming a key not among them makes it read
#: again, at most once a second (so that tokens with made-up kids cannot make every request a database read)
VERIFICATION_KEYS_CACHE_SECONDS = 5.0
UNKNOWN_KID_RELOAD_SECONDS = 1.0


@dataclass(frozen=True)
class _Signing:
    kid: str
    key: ECKey
    until: float  # time.monotonic() after which the database is asked again


@dataclass(frozen=True)
class _Verifying:
    keys: KeySet
    kids: frozenset[str]
    loaded: float
    until: float


class SigningKeyService:
    def __init__(self, *, uow: UnitOfWorkFactory, sealer: Sealer) -> None:
        self.uow = uow
        self.sealer = sealer
        # Opening a sealed key (AES-GCM, JSON, key import) and finding the current one cost more than signing:
        # the key in use is kept in the process for a few seconds, never past the moment it stops signing.
        self._signing: _Signing | None = None
        self._verifying: _Verifying | None = None
        self._lock = threading.Lock()

    def _published(self, uow: UnitOfWork) -> list[SigningKey]:
        cutoff = utcnow() - PUBLISHED_AFTER_RETIREMENT
        return [k for k in uow.signing_keys.all() if k.retired_at is None or as_utc(k.retired_at) > cutoff]

    def current(self) -> tuple[str, ECKey]:
        """The key new tokens are signed with (made on first use): the oldest key not yet retired."""
        signing = self._signing
        if signing is not None and time.monotonic() < signing.until:
            return signing.kid, signing.key
        if not waiting_allowed():
            # On the event loop: never wait for the lock another thread holds across a database read.
            raise WouldBlock("the signing key must be read from the database")
        with self._lock:
            signing = self._signing
            if signing is not None and time.monotonic() < signing.until:
                return signing.kid, signing.key
            now = utcnow()
            with self.uow(read_only=True) as uow:
                live = _signing_keys(uow.signing_keys.all(), now)
            if not live:
                with self.uow() as uow:
                    live = _signing_keys(uow.signing_keys.all(), now)
                    if not live:
                        created = new_signing_key(self.sealer)
                        uow.signing_keys.add(created)
                        live = [created]
            chosen = live[0]
            key = signing.key if signing is not None and signing.kid == chosen.kid else private_key(chosen, self.sealer)
            seconds = SIGNING_KEY_CACHE_SECONDS
            if chosen.retired_at is not None:
                seconds = min(seconds, (as_utc(chosen.retired_at) - now).total_seconds())
            self._signing = _Signing(chosen.kid, key, time.monotonic() + max(0.0, seconds))
            return chosen.kid, key

    def verification_keys(self, kid: str | None) -> KeySet:
        """The published keys, to verify a token signed with ``kid``."""
        if (fresh := self._fresh_verification_keys(kid)) is not None:
            return fresh
        with self._lock:
            if (fresh := self._fresh_verification_keys(kid)) is not None:
                return fresh
            with self.uow(read_only=True) as uow:
                published = self._published(uow)
            keys, loaded = verification_keys(published), time.monotonic()
            self._verifying = _Verifying(
                keys, frozenset(k.kid for k in published), loaded, loaded + VERIFICATION_KEYS_CACHE_SECONDS
            )
            return keys

    def _fresh_verification_keys(self, kid: str | None) -> KeySet | None:
        verifying, now = self._verifying, time.monotonic()
        if verifying is None or now >= verifying.until:
            return None
        if kid in verifying.kids or now < verifying.loaded + UNKNOWN_KID_RELOAD_SECONDS:
            return verifying.keys
        return None

    def forget(self) -> None:
        """Read the keys again on next use (after a rotation made by this process)."""
        with self._lock:
            self._signing = None
            self._verifying = None

    def jwks(self) -> dict[str, Any]:
        with self.uow(read_only=True) as uow:
            return public_key_set(self._published(uow))

    def rotate(self, *, immediately: bool = False) -> tuple[str, datetime]:
        """A new key, published now. It signs from PUBLISHED_BEFORE_SIGNING on, when the keys before it retire
        (they stay published a day after that); ``immediately`` makes it sign now and deletes the others,
        refusing every token they signed. Returns the new kid and the moment it starts signing."""
        now = utcnow()
        starts = now if immediately else now + PUBLISHED_BEFORE_SIGNING
        with self.uow() as uow:
            unpublished = 0
            for key in uow.signing_keys.all():
                if immediately:
                    uow.signing_keys.delete(key)
                    unpublished += 1
                elif key.retired_at is None:
                    key.retired_at = starts
            unpublished += uow.signing_keys.delete_retired_before(now - PUBLISHED_AFTER_RETIREMENT)
            created = new_signing_key(self.sealer)
            uow.signing_keys.add(created)
            audit.record(
                uow,
                "signing_key.rotated",
                organization_id=None,
                details={
                    "kid": created.kid,
                    "signs_from": starts.isoformat(),
                    "immediately": immediately,
                    "unpublished": unpublished,
                    "by": "operator",
                },
            )
        self.forget()
        return created.kid, starts


def _signing_keys(keys: Iterable[SigningKey], now: datetime) -> list[SigningKey]:
    """Keys that may sign at ``now``, the one that does first: the oldest not yet retired."""
    live = [k for k in keys if k.retired_at is None or as_utc(k.retired_at) > now]
    return sorted(live, key=lambda k: as_utc(k.created_at))
