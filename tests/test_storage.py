"""Storage (issue 2 items 3 and 12; DESIGN.md §6): migrations once and under a lock, the constraints the
rules rely on (kind and service type immutable, federated subjects and usernames unique), housekeeping."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text, update
from sqlalchemy.exc import DBAPIError

from twofold.domain.clock import utcnow
from twofold.domain.entities import (
    AuditEvent,
    IdentityProvider,
    LoginTransaction,
    OneTimeToken,
    Session,
    User,
    VerificationMethodRecord,
)
from twofold.domain.errors import Conflict
from twofold.domain.rules import username_key
from twofold.services.crypto import hash_token, new_token
from twofold.storage import tables as t
from twofold.storage.migrate import upgrade
from twofold.storage.tables import ImmutableFieldChanged

from .conftest import POSTGRES_URL
from .support.databases import postgres_database
from .support.flows import create_organization, create_user

TABLES = {
    "organizations", "identity_providers", "users", "permissions", "exemptions", "verification_methods",
    "login_transactions", "sessions", "one_time_tokens", "audit_events", "throttles", "recovery_codes",
}


@contextlib.contextmanager
def fresh_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """An empty database of the backend under test, never migrated; dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / f'fresh-{uuid.uuid4().hex[:8]}.db'}"
        return
    assert POSTGRES_URL is not None
    with postgres_database(POSTGRES_URL, "twofold_fresh") as url:
        yield url


def schema_of(url: str) -> tuple[set[str], list[str]]:
    engine = create_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
        with engine.connect() as connection:
            versions = [row[0] for row in connection.execute(text("SELECT version_num FROM alembic_version"))]
    finally:
        engine.dispose()
    return tables, versions


def test_migrations_apply_on_a_fresh_database_and_again(backend, tmp_path):
    with fresh_database(backend, tmp_path) as url:
        upgrade(url)
        tables, versions = schema_of(url)
        assert tables >= TABLES
        assert len(versions) == 1
        upgrade(url)  # a second start changes nothing and does not fail
        assert schema_of(url) == (tables, versions)


def test_concurrent_upgrades_of_a_fresh_database(backend, tmp_path):
    """Several processes starting at once (`twofold serve` on two machines): one migrates, the others wait."""
    script = "import sys\nfrom twofold.storage.migrate import upgrade\nupgrade(sys.argv[1])\nprint('done')\n"
    with fresh_database(backend, tmp_path) as url:
        processes = [
            subprocess.Popen([sys.executable, "-c", script, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
            for _ in range(4)
        ]
        results = [(p.wait(timeout=120), *p.communicate()) for p in processes]
        for code, out, err in results:
            assert code == 0, err
            assert out.strip() == "done"
        tables, versions = schema_of(url)
        assert tables >= TABLES and len(versions) == 1


# -- constraints ----------------------------------------------------------------------------------


def raw_user(twofold, user_id):  # type: ignore[no-untyped-def]
    with twofold.uow.engine.connect() as connection:
        return connection.execute(
            text("SELECT kind, service_type, display_name FROM users WHERE id = :id"), {"id": user_id}
        ).one()


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE users SET kind = 'service', service_type = 'rpa' WHERE id = :id",
        "UPDATE users SET kind = 'service' WHERE id = :id",
        "UPDATE users SET service_type = 'rpa' WHERE id = :id",
        "UPDATE users SET display_name = 'x', kind = 'service', service_type = 'test_automation' WHERE id = :id",
    ],
)
def test_kind_of_a_human_cannot_change_even_in_raw_sql(twofold, statement):
    _, admin = create_organization(twofold)
    with pytest.raises(DBAPIError), twofold.uow.engine.begin() as connection:
        connection.execute(text(statement), {"id": admin.user.id})
    assert tuple(raw_user(twofold, admin.user.id)) == ("user", None, None)


def test_kind_and_service_type_of_a_service_account_cannot_change(twofold):
    organization, _ = create_organization(twofold)
    robot = create_user(twofold, organization, "robot", kind="service", service_type="rpa")
    for statement in (
        "UPDATE users SET service_type = 'test_automation' WHERE id = :id",
        "UPDATE users SET service_type = NULL WHERE id = :id",
        "UPDATE users SET kind = 'user', service_type = NULL WHERE id = :id",
    ):
        with pytest.raises(DBAPIError), twofold.uow.engine.begin() as connection:
            connection.execute(text(statement), {"id": robot.user.id})
    # A core UPDATE (no ORM events) meets the same trigger.
    with pytest.raises(DBAPIError), twofold.uow.engine.begin() as connection:
        connection.execute(update(t.users).where(t.users.c.id == robot.user.id).values(kind="user"))
    assert tuple(raw_user(twofold, robot.user.id)) == ("service", "rpa", None)
    # Other columns change as usual, and writing the same kind is no change.
    with twofold.uow.engine.begin() as connection:
        connection.execute(
            text("UPDATE users SET display_name = 'Robot', kind = 'service', service_type = 'rpa' WHERE id = :id"),
            {"id": robot.user.id},
        )
    assert tuple(raw_user(twofold, robot.user.id)) == ("service", "rpa", "Robot")


def test_kind_cannot_change_through_the_orm(twofold):
    organization, admin = create_organization(twofold)
    robot = create_user(twofold, organization, "robot", kind="service", service_type="test_automation")
    for user_id, changes in (
        (admin.user.id, {"kind": "service", "service_type": "rpa"}),
        (robot.user.id, {"service_type": "rpa"}),
        (robot.user.id, {"kind": "user", "service_type": None}),
    ):
        with pytest.raises((ImmutableFieldChanged, DBAPIError)), twofold.uow() as uow:
            user = uow.users.get(user_id)
            assert user is not None
            for name, value in changes.items():
                setattr(user, name, value)
            user.display_name = "changed"
    assert tuple(raw_user(twofold, admin.user.id)) == ("user", None, None)
    assert tuple(raw_user(twofold, robot.user.id)) == ("service", "test_automation", None)


def _federated(organization_id: str, provider_id: str, username: str, subject: str | None) -> User:
    return User(
        organization_id=organization_id,
        identity_provider_id=provider_id,
        username=username,
        username_key=username_key(username),
        email=f"{username}@example.com",
        external_subject=subject,
    )


def test_federated_subject_is_unique_per_identity_provider(twofold):
    organization, _ = create_organization(twofold)
    with twofold.uow() as uow:
        first = IdentityProvider(organization_id=organization.id, type="oidc", name="A", issuer="https://a.example")
        second = IdentityProvider(organization_id=organization.id, type="oidc", name="B", issuer="https://b.example")
        uow.identity_providers.add(first)
        uow.identity_providers.add(second)
        uow.flush()
        uow.users.add(_federated(organization.id, first.id, "sam", "subject-1"))
        # The same subject at another provider is another person.
        uow.users.add(_federated(organization.id, second.id, "sam2", "subject-1"))
    # The unit of work reports a unique-constraint violation as a Conflict (409), not a server fault.
    with pytest.raises(Conflict), twofold.uow() as uow:
        uow.users.add(_federated(organization.id, first.id, "samuel", "subject-1"))
    with twofold.uow(read_only=True) as uow:
        assert uow.users.by_username_key("samuel") is None
    # Local users (no subject) are many on the same provider.
    for name in ("l1", "l2"):
        create_user(twofold, organization, name)


def test_username_key_is_unique_in_the_database(twofold):
    organization, admin = create_organization(twofold)
    with pytest.raises(Conflict), twofold.uow() as uow:
        uow.users.add(_federated(organization.id, admin.user.identity_provider_id, "ALICE", None))
    with twofold.uow.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM users")).scalar() == 1


# -- housekeeping ---------------------------------------------------------------------------------


def test_housekeeping_purges_expired_rows_and_keeps_live_ones(make_twofold):
    twofold = make_twofold(audit_retention_days=30)
    organization, admin = create_organization(twofold)
    user_id = admin.user.id
    now = utcnow()
    past, future = now - timedelta(minutes=1), now + timedelta(minutes=5)

    def transaction(expires_at):  # type: ignore[no-untyped-def]
        return LoginTransaction(user_id=user_id, token_hash=hash_token(new_token("tft")), state="mfa_required",
                                expires_at=expires_at)

    def session(expires_at, revoked_at=None):  # type: ignore[no-untyped-def]
        return Session(user_id=user_id, token_hash=hash_token(new_token("tfs")), amr=["pwd", "mfa"], acr="x",
                       auth_time=now, expires_at=expires_at, last_seen_at=now, revoked_at=revoked_at)

    def method(status, expires_at):  # type: ignore[no-untyped-def]
        return VerificationMethodRecord(user_id=user_id, type="test_code", name=f"m{uuid.uuid4().hex[:6]}",
                                        status=status, expires_at=expires_at)

    def token(expires_at):  # type: ignore[no-untyped-def]
        return OneTimeToken(user_id=user_id, token_hash=hash_token(new_token("tfu")), purpose="setup",
                            expires_at=expires_at)

    live = {
        "transaction": transaction(future),
        "session": session(now + timedelta(hours=1)),
        "pending": method("pending", future),
        "active": method("active", None),
        "token": token(future),
        "recent_event": AuditEvent(organization_id=organization.id, type="test.recent", at=now - timedelta(days=29)),
    }
    dead = {
        "transaction": transaction(past),
        "session": session(past),
        "revoked_session": session(now + timedelta(hours=1), revoked_at=now),
        "pending": method("pending", past),
        "token": token(past),
        "old_event": AuditEvent(organization_id=organization.id, type="test.old", at=now - timedelta(days=31)),
        "old_global_event": AuditEvent(organization_id=None, type="test.old", at=now - timedelta(days=90)),
    }
    with twofold.uow() as uow:
        for row in [*live.values(), *dead.values()]:
            uow.session.add(row)  # type: ignore[attr-defined]
        for key, blocked in (
            (f"mfa:{user_id}", None),  # second-factor failures count until a completed sign-in
            ("pw:stale", None),
            ("ip:192.0.2.1", None),
            ("pw:still-blocked", now + timedelta(hours=1)),
            ("pw:fresh", None),
        ):
            assert uow.throttles.compare_and_set(key, expected_failures=None, failures=7, blocked_until=blocked,
                                                 window_start=None)
    with twofold.uow.engine.begin() as connection:
        connection.execute(
            update(t.throttles).where(t.throttles.c.key != "pw:fresh").values(updated_at=now - timedelta(days=2))
        )

    counts = twofold.maintenance.housekeeping()
    assert counts["login_transactions"] == 1
    assert counts["sessions"] == 2
    assert counts["pending_methods"] == 1
    assert counts["one_time_tokens"] == 1
    assert counts["audit_events"] == 2
    assert counts["throttles"] == 2

    def ids(table):  # type: ignore[no-untyped-def]
        with twofold.uow.engine.connect() as connection:
            return {row[0] for row in connection.execute(text(f"SELECT id FROM {table}"))}

    assert ids("login_transactions") == {live["transaction"].id}
    assert ids("sessions") == {live["session"].id}
    assert ids("verification_methods") == {live["pending"].id, live["active"].id}
    assert ids("one_time_tokens") == {live["token"].id}
    events = ids("audit_events")
    assert live["recent_event"].id in events
    assert dead["old_event"].id not in events and dead["old_global_event"].id not in events
    assert len(events) >= 3  # init's own events stay
    with twofold.uow.engine.connect() as connection:
        keys = {row[0] for row in connection.execute(text("SELECT key FROM throttles"))}
    assert keys == {f"mfa:{user_id}", "pw:still-blocked", "pw:fresh"}
    with twofold.uow(read_only=True) as uow:
        assert uow.users.get(user_id) is not None
    # Nothing left to purge: a second run is a no-op.
    assert not any(twofold.maintenance.housekeeping().values())


def test_default_audit_retention_is_400_days(make_twofold):
    twofold = make_twofold()
    organization, _ = create_organization(twofold)
    now = utcnow()
    kept = AuditEvent(organization_id=organization.id, type="test.kept", at=now - timedelta(days=399))
    purged = AuditEvent(organization_id=organization.id, type="test.purged", at=now - timedelta(days=401))
    with twofold.uow() as uow:
        uow.audit.add(kept)
        uow.audit.add(purged)
    assert twofold.maintenance.housekeeping()["audit_events"] == 1
    with twofold.uow.engine.connect() as connection:
        types = {row[0] for row in connection.execute(text("SELECT type FROM audit_events"))}
    assert "test.kept" in types and "test.purged" not in types


def test_migrations_build_exactly_the_schema_the_code_maps(database_url):
    """Every migration, applied in order, yields the tables, columns, types and constraints of
    `storage/tables.py`: a hand-written migration that drifts from the mapping fails here."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, t.metadata) == []
    finally:
        engine.dispose()
