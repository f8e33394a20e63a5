"""A unit of work: one database transaction with every repository on it. Services open them."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.orm import sessionmaker

from twofold.domain.errors import Conflict, Unavailable
from twofold.domain.ports import WouldBlock, waiting_allowed

from . import repositories as r
from .tables import map_entities


class SqlUnitOfWork:
    def __init__(
        self,
        factory: sessionmaker[OrmSession],
        *,
        read_only: bool,
        write_lock: threading.RLock | None = None,
        lock_timeout: float = 5.0,
    ) -> None:
        self._factory = factory
        self._read_only = read_only
        self._write_lock = None if read_only else write_lock
        self._lock_timeout = lock_timeout

    def __enter__(self) -> SqlUnitOfWork:
        # SQLite has one writer at a time, and its busy handler lets waiting writers sleep ever longer
        # (up to 100 ms a try) while newcomers take the lock ahead of them: a few requests wait seconds.
        # Writers of one process queue on a lock of their own instead, so the wait is short and fair;
        # the busy timeout is left to settle the rare contention between processes.
        if self._write_lock is not None and not self._write_lock.acquire(timeout=self._lock_timeout):
            raise Unavailable("the database is busy; try again")
        try:
            return self._open()
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        if self._write_lock is not None:
            self._write_lock.release()

    def _open(self) -> SqlUnitOfWork:
        session = self._factory()
        if self._read_only:
            session.connection(execution_options={"read_only": True})
        self.session = session
        self.organizations = r.OrganizationRepository(session)
        self.identity_providers = r.IdentityProviderRepository(session)
        self.users = r.UserRepository(session)
        self.permissions = r.PermissionRepository(session)
        self.exemptions = r.ExemptionRepository(session)
        self.methods = r.MethodRepository(session)
        self.recovery_codes = r.RecoveryCodeRepository(session)
        self.challenges = r.ChallengeRepository(session)
        self.push_challenges = r.PushChallengeRepository(session)
        self.device_request_ids = r.DeviceRequestIdRepository(session)
        self.connected_apps = r.ConnectedAppRepository(session)
        self.client_secrets = r.ClientSecretRepository(session)
        self.signing_keys = r.SigningKeyRepository(session)
        self.authorization_codes = r.AuthorizationCodeRepository(session)
        self.refresh_tokens = r.RefreshTokenRepository(session)
        self.consents = r.ConsentRepository(session)
        self.sso_requests = r.SsoRequestRepository(session)
        self.transactions = r.TransactionRepository(session)
        self.sessions = r.SessionRepository(session)
        self.tokens = r.OneTimeTokenRepository(session)
        self.audit = r.AuditRepository(session)
        self.throttles = r.ThrottleRepository(session)
        self.housekeeping = r.Housekeeping(session)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is not None:
                self.session.rollback()
            elif not self._read_only:
                self._commit()
            # A read-only unit just closes: what it loaded stays readable (a rollback would expire it).
        finally:
            try:
                self.session.close()
            finally:
                self._release()

    def commit(self) -> None:
        """Commit what is done so far and go on in a new transaction (used to persist a failure count
        before raising, so the rollback on the way out does not undo it)."""
        self._commit()

    def flush(self) -> None:
        try:
            self.session.flush()
        except IntegrityError:
            self.session.rollback()
            raise Conflict("this conflicts with data written at the same moment; try again") from None

    def _commit(self) -> None:
        # A unique constraint that a concurrent request won (two `init`s of one name, two users of one
        # username) is a conflict for the caller, not a server fault.
        try:
            self.session.commit()
        except IntegrityError:
            self.session.rollback()
            raise Conflict("this conflicts with data written at the same moment; try again") from None


class SqlUnitOfWorkFactory:
    def __init__(self, engine: Engine, *, lock_timeout_ms: int = 5000) -> None:
        map_entities()
        self.engine = engine
        self._sessions = sessionmaker(bind=engine, expire_on_commit=False, autoflush=True)
        # Re-entrant, so that a unit of work opened inside another by the same thread never deadlocks here.
        self._write_lock = threading.RLock() if engine.dialect.name == "sqlite" else None
        self._lock_timeout = lock_timeout_ms / 1000

    def __call__(self, *, read_only: bool = False) -> SqlUnitOfWork:
        if not waiting_allowed():
            raise WouldBlock("a unit of work was opened inside no_waiting()")
        return SqlUnitOfWork(
            self._sessions, read_only=read_only, write_lock=self._write_lock, lock_timeout=self._lock_timeout
        )
