"""Wake-ups for long polls, across server processes (DESIGN.md §6).

A long poll (a device waiting for challenges, a sign-in page waiting for the device's answer) reads the
database, and when there is nothing yet, sleeps until a wake-up for one of its keys or a short
interval passes, then reads again. The database stays the only truth: a lost wake-up costs one
interval, never a wrong answer.

- PostgreSQL: ``NOTIFY`` inside the writing transaction (delivered on commit, to every process), and
  one ``LISTEN`` connection per process and event loop that wakes the waiters of a key.
- SQLite: no cross-process signal exists, so waiters re-read every ``interval`` (a short internal
  poll). A write in the same process still wakes its waiters at once, after it commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Iterable
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.orm import Session as OrmSession

logger = logging.getLogger("twofold.wakeups")

CHANNEL = "twofold_wakeup"


class Subscription:
    """The keys a waiter listens to; ``wait`` returns when any is woken or the timeout passes."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.event = asyncio.Event()

    def wake(self) -> None:
        self.loop.call_soon_threadsafe(self.event.set)

    async def wait(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
        except TimeoutError:
            return False
        finally:
            self.event.clear()
        return True


class _Waiters:
    """Subscriptions by key, shared by every thread of the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[str, set[Subscription]] = {}

    def add(self, keys: Iterable[str], subscription: Subscription) -> None:
        with self._lock:
            for key in keys:
                self._by_key.setdefault(key, set()).add(subscription)

    def remove(self, keys: Iterable[str], subscription: Subscription) -> None:
        with self._lock:
            for key in keys:
                found = self._by_key.get(key)
                if found is not None:
                    found.discard(subscription)
                    if not found:
                        del self._by_key[key]

    def wake(self, key: str) -> None:
        with self._lock:
            found = list(self._by_key.get(key, ()))
        for subscription in found:
            subscription.wake()


class Wakeups:
    """Shared by both backends: waiters, and waking this process's waiters after a commit."""

    #: the longest a waiter sleeps between two reads of the database
    interval = 0.25

    def __init__(self) -> None:
        self.waiters = _Waiters()

    def notify(self, uow: Any, key: str) -> None:
        """Wake the waiters of ``key`` once the unit of work commits (never before: they would read the
        database and find nothing new)."""
        session = uow.session
        pending: set[str] = session.info.setdefault("twofold_wakeups", set())
        if not pending:
            event.listen(session, "after_commit", self._after_commit, once=True)
            event.listen(session, "after_rollback", self._after_rollback, once=True)
        pending.add(key)

    def _after_commit(self, session: OrmSession) -> None:
        for key in session.info.pop("twofold_wakeups", ()):
            self.waiters.wake(key)

    @staticmethod
    def _after_rollback(session: OrmSession) -> None:
        session.info.pop("twofold_wakeups", None)

    @contextlib.asynccontextmanager
    async def subscribe(self, keys: Iterable[str]) -> AsyncIterator[Subscription]:
        """Listen before reading: a wake-up between the read and the wait is then not lost."""
        keys = list(keys)
        subscription = Subscription(asyncio.get_running_loop())
        self.waiters.add(keys, subscription)
        try:
            await self._listening()
            yield subscription
        finally:
            self.waiters.remove(keys, subscription)

    async def _listening(self) -> None:
        return None

    async def stop_listening(self) -> None:
        """End this event loop's listener (the app's shutdown)."""
        return None

    def close(self) -> None:
        return None


class PostgresWakeups(Wakeups):
    """``NOTIFY`` in the writing transaction, and one ``LISTEN`` connection per process and event loop."""

    interval = 5.0  # a safety net only: a NOTIFY normally arrives within milliseconds

    #: how long a first waiter waits for the LISTEN to be in place (a NOTIFY before it would be missed)
    READY_TIMEOUT = 2.0

    def __init__(self, conninfo: str) -> None:
        super().__init__()
        self.conninfo = conninfo
        self._listeners: dict[asyncio.AbstractEventLoop, tuple[asyncio.Task[None], asyncio.Event]] = {}
        self._lock = threading.Lock()

    def notify(self, uow: Any, key: str) -> None:
        uow.session.execute(text("SELECT pg_notify(:channel, :key)"), {"channel": CHANNEL, "key": key})

    async def _listening(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            found = self._listeners.get(loop)
            if found is None or found[0].done():
                ready = asyncio.Event()
                found = (loop.create_task(self._listen(ready), name="twofold-wakeups"), ready)
                self._listeners[loop] = found
        if not found[1].is_set():
            # The first waiters wait (briefly) for the LISTEN: a NOTIFY sent before it would be missed.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(found[1].wait(), self.READY_TIMEOUT)

    async def stop_listening(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            found = self._listeners.pop(loop, None)
        if found is not None:
            found[0].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await found[0]

    async def _listen(self, ready: asyncio.Event) -> None:
        import psycopg

        delay = 0.5
        while True:
            try:
                connection = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
                async with connection:
                    await connection.execute(f"LISTEN {CHANNEL}")
                    ready.set()
                    delay = 0.5
                    async for notice in connection.notifies():
                        self.waiters.wake(notice.payload)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the database went away: waiters fall back to their interval
                logger.warning("wake-up listener lost its connection (%s); retrying", error.__class__.__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    def close(self) -> None:
        with self._lock:
            listeners, self._listeners = self._listeners, {}
        for loop, (task, _) in listeners.items():
            if not loop.is_closed():
                loop.call_soon_threadsafe(task.cancel)


def wakeups_for(database_url: str) -> Wakeups:
    if database_url.startswith(("postgresql", "postgres")):
        return PostgresWakeups(_libpq_conninfo(database_url))
    return Wakeups()


def _libpq_conninfo(database_url: str) -> str:
    """psycopg takes a libpq URL: SQLAlchemy's ``postgresql+psycopg://`` without the driver suffix."""
    return "postgresql://" + database_url.partition("://")[2]
