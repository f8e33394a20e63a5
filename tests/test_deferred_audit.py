"""The deferred audit trail (R9; services/audit.py DeferredAuditTrail): the audit events of token grants are kept in
the process for a moment and written in batches. Whatever happens on the way, every event reaches the table once,
in order, without a secret in it: flush() writes what is pending; a flush that fails (the table away) raises and
keeps the events for the next one; a batch retried after it was in fact written is not written twice; close()
flushes; past MAX_PENDING while the database is away the oldest are dropped and counted; and reads of the audit log
through the API flush first, so a grant is in the log the moment it is answered.

Tests run on the real database of the `twofold` fixture. The table is made really unavailable by renaming it with
raw SQL (the same statement on SQLite and PostgreSQL) and renamed back in a `finally`. The trail's writer thread is
given a long ``max_delay``, so that only the test's own flush() calls write and nothing depends on timing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from twofold.container import Twofold
from twofold.domain.entities import AuditEvent
from twofold.services.audit import DeferredAuditTrail
from twofold.storage import tables

from .support.flows import bearer
from .test_admin_api import admin_session
from .test_oauth_client_credentials import new_app, token_for

QUIET = 3600.0  # seconds: the writer thread waits this long, so only explicit flushes write in these tests
TYPE = "test.deferred"


# -- helpers -----------------------------------------------------------------------------------------------


@pytest.fixture
def trail(twofold: Twofold) -> DeferredAuditTrail:
    """The container's own trail (the one token grants use), its writer thread kept quiet."""
    twofold.deferred_audit.max_delay = QUIET
    return twofold.deferred_audit


def record(trail: DeferredAuditTrail, *numbers: int, **details: Any) -> None:
    for n in numbers:
        trail.record(TYPE, organization_id=None, actor_id=None, ip="192.0.2.1", details={"n": n, **details})


def stored(twofold: Twofold, event_type: str = TYPE) -> list[Any]:
    """The rows of one event type, read straight from the table (never through the trail, which would flush), in
    the order they were inserted: SQLite's rowid, PostgreSQL's ctid (a table emptied before each test, only
    appended to)."""
    physical = "rowid" if twofold.uow.engine.dialect.name == "sqlite" else "ctid"
    c = tables.audit_events.c
    with twofold.uow.engine.connect() as connection:
        return list(
            connection.execute(select(tables.audit_events).where(c.type == event_type).order_by(text(physical))).all()
        )


def numbers(twofold: Twofold) -> list[int]:
    return [row.details["n"] for row in stored(twofold)]


def rename(twofold: Twofold, old: str, new: str) -> None:
    with twofold.uow.engine.begin() as connection:
        connection.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))


@contextlib.contextmanager
def audit_table_away(twofold: Twofold) -> Iterator[None]:
    """The audit table really unavailable (renamed), and back afterwards whatever happens."""
    rename(twofold, "audit_events", "audit_events_away")
    try:
        yield
    finally:
        rename(twofold, "audit_events_away", "audit_events")


def pending(trail: DeferredAuditTrail) -> list[AuditEvent]:
    """What the trail holds, unwritten (a copy)."""
    with trail._condition:
        return list(trail._pending)


# -- flush ---------------------------------------------------------------------------------------------------


def test_recorded_events_are_in_the_table_after_flush_in_order(twofold, trail):
    """Nothing is written before flush() (the writer is quiet); after it every event is there once, in the order
    recorded, with what was recorded."""
    record(trail, *range(20))
    assert stored(twofold) == []
    trail.flush()
    rows = stored(twofold)
    assert [row.details["n"] for row in rows] == list(range(20))
    assert all(row.ip == "192.0.2.1" and row.organization_id is None for row in rows)
    assert [row.at for row in rows] == sorted(row.at for row in rows)
    assert len({row.id for row in rows}) == 20
    assert pending(trail) == []
    # A flush with nothing pending writes nothing and does not fail.
    trail.flush()
    assert len(stored(twofold)) == 20


def test_events_are_scrubbed_of_secret_words_on_the_way_in(twofold, trail):
    """Codes, secrets, passwords and tokens never reach the audit log (SECURITY.md): details named after one are
    dropped, nested ones too; names on the allowed list stay."""
    trail.record(
        TYPE,
        organization_id=None,
        details={
            "n": 0,
            "client_id": "tfc_abc",
            "client_secret": "tfcs_leak",
            "password": "hunter2",
            "access_token": "eyJ.leak",
            "Refresh_Token": "leak",
            "code": "123456",
            "otp": "654321",
            "private_key": "leak",
            "client_assertion": "leak",
            "method_type": "totp",
            "scope": "users:read",
            "nested": {"seed": "leak", "kept": 1, "deeper": {"credential_id": "leak", "ok": True}},
        },
    )
    trail.flush()
    (row,) = stored(twofold)
    assert row.details == {
        "n": 0,
        "client_id": "tfc_abc",
        "method_type": "totp",
        "scope": "users:read",
        "nested": {"kept": 1, "deeper": {"ok": True}},
    }
    assert "leak" not in str(row.details) and "hunter2" not in str(row.details)


def test_a_flush_while_the_table_is_away_raises_keeps_the_events_and_the_next_writes_each_once(twofold, trail):
    """The database fails the batch: flush() raises (the writer thread retries it), nothing is lost, the events
    recorded meanwhile queue behind, and once the table is back one flush writes every event exactly once, in
    order."""
    record(trail, 0, 1)
    trail.flush()
    record(trail, 2, 3, 4)
    with audit_table_away(twofold):
        with pytest.raises(DBAPIError):
            trail.flush()
        assert [e.details["n"] for e in pending(trail)] == [2, 3, 4]
        record(trail, 5, 6)
        with pytest.raises(DBAPIError):
            trail.flush()
        assert [e.details["n"] for e in pending(trail)] == [2, 3, 4, 5, 6]
    assert numbers(twofold) == [0, 1]  # the failed batches left nothing behind
    trail.flush()
    assert numbers(twofold) == [0, 1, 2, 3, 4, 5, 6]
    assert pending(trail) == [] and trail.dropped == 0
    trail.flush()
    assert numbers(twofold) == [0, 1, 2, 3, 4, 5, 6]


def test_a_batch_that_was_already_written_is_not_written_again(twofold, trail):
    """A commit whose outcome the writer could not know (the connection dropped after it) makes it retry a batch
    that is in the table already: the retry writes only what is missing and does not fail."""
    record(trail, 0, 1, 2)
    batch = pending(trail)
    trail.flush()
    assert numbers(twofold) == [0, 1, 2]
    # The same batch back in the queue (as after an unknown outcome), with newer events behind it.
    record(trail, 3)
    with trail._condition:
        trail._pending[:0] = batch
    trail.flush()
    assert numbers(twofold) == [0, 1, 2, 3]
    assert pending(trail) == []


def test_the_same_events_added_twice_through_the_repository_are_stored_once(twofold):
    """AuditRepository.add_many skips rows it already has (by id), within one transaction and across two."""
    events = [AuditEvent(organization_id=None, type=TYPE, details={"n": n}) for n in range(3)]
    with twofold.uow() as uow:
        uow.audit.add_many(events[:2])
    with twofold.uow() as uow:
        uow.audit.add_many(events)
        uow.audit.add_many(events)
    with twofold.uow() as uow:
        uow.audit.add_many([])
    rows = stored(twofold)
    assert sorted(row.details["n"] for row in rows) == [0, 1, 2]
    assert {row.id for row in rows} == {event.id for event in events}


def test_close_flushes_what_is_pending(twofold, trail):
    record(trail, 0, 1, 2)
    assert stored(twofold) == []
    trail.close()
    assert numbers(twofold) == [0, 1, 2]
    assert pending(trail) == []


def test_close_while_the_table_is_away_does_not_raise(twofold, trail):
    """At shutdown a failed last flush is said in the log, not raised (the server stops either way)."""
    record(trail, 0)
    with audit_table_away(twofold):
        trail.close()
    assert stored(twofold) == []


def test_beyond_max_pending_the_oldest_are_dropped_and_counted(twofold, trail):
    """The database away for long: the trail keeps at most MAX_PENDING events, drops the oldest beyond that and
    counts them in ``dropped``; what it kept is written once the table is back, in order."""
    trail.MAX_PENDING = 5
    record(trail, 0, 1, 2)
    with audit_table_away(twofold):
        with pytest.raises(DBAPIError):
            trail.flush()
        assert trail.dropped == 0
        record(trail, 3, 4, 5, 6)
        assert trail.dropped == 2
        assert [e.details["n"] for e in pending(trail)] == [2, 3, 4, 5, 6]
        record(trail, 7)
        with pytest.raises(DBAPIError):
            trail.flush()
        assert trail.dropped == 3
        assert [e.details["n"] for e in pending(trail)] == [3, 4, 5, 6, 7]
    trail.flush()
    assert numbers(twofold) == [3, 4, 5, 6, 7]
    assert trail.dropped == 3


def test_a_trail_of_its_own_on_the_same_database_writes_the_same_way(twofold):
    """A trail built on the container's unit of work (as `build` does) with a small batch: a full batch wakes the
    writer, and flush() then finds nothing or the rest; either way each event is in the table once, in order
    (one writer at a time takes the oldest first)."""
    own = DeferredAuditTrail(twofold.uow, max_delay=QUIET, max_batch=3)
    try:
        record(own, *range(7))
        own.flush()
    finally:
        own.close()
    assert numbers(twofold) == list(range(7))


# -- the audit log through the API -----------------------------------------------------------------------------


def test_the_audit_log_shows_a_grant_the_moment_it_was_answered(twofold, client, trail):
    """GET /api/v1/organizations/{org}/audit-events flushes the trail first: the oauth.granted event of a grant
    just answered is listed, though the writer had not written it yet."""
    org_id, alice = admin_session(twofold, client)
    app = new_app(client, org_id, alice.token, ["users:read", "audit:read"])
    token = token_for(client, app)
    assert stored(twofold, "oauth.granted") == []  # deferred: not written yet
    listed = client.get(
        f"/api/v1/organizations/{org_id}/audit-events", params={"type": "oauth.granted"}, headers=bearer(alice.token)
    )
    assert listed.status_code == 200, listed.text
    (event,) = listed.json()["items"]
    assert event["type"] == "oauth.granted"
    assert event["actor_id"] == app["id"]
    assert event["details"] == {
        "client_id": app["client_id"],
        "grant_type": "client_credentials",
        "scope": "audit:read users:read",
    }
    assert len(stored(twofold, "oauth.granted")) == 1
    # The app reads its own grant as well, and reading again writes nothing again.
    by_app = client.get(
        f"/api/v1/organizations/{org_id}/audit-events", params={"type": "oauth.granted"}, headers=bearer(token)
    )
    assert by_app.status_code == 200, by_app.text
    assert [e["id"] for e in by_app.json()["items"]] == [event["id"]]
    assert len(stored(twofold, "oauth.granted")) == 1
