"""Faults (SECURITY.md "Bad input and faults", DESIGN.md §6 "Operations").

- The database briefly unreachable gives 503s, and service resumes by itself: a TCP proxy in front of
  PostgreSQL is cut and restored under a real server (the machine's PostgreSQL is never stopped).
- SQLite under several processes never answers 500 for "database is locked".
- Killing the server in the middle of an enrollment or a login leaves the database consistent: no
  half-active method, no lost user, no session, no transaction resumable past its expiry.
- A database locked for longer than the busy timeout gives 503, then works again once released.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from twofold.web.app import create_app

from .conftest import POSTGRES_URL, PUBLIC_URL, SECRET_KEY
from .support.flows import USER_PASSWORD, Account, bearer, create_organization, create_user, enroll, login
from .support.methods import METHOD_TYPE
from .support.servers import ROOT, TEST_METHOD_SERVER, free_port, stop, wait_ready
from .support.tcp_proxy import TcpProxy

# Long enough that a hung request fails the test instead of the suite; a 503 must come well before.
REQUEST_TIMEOUT = 15.0


# -- real servers that can be killed -------------------------------------------------------------


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, no transaction gets to finish."""
        self.process.kill()
        self.process.wait(timeout=10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def real_server(env: dict[str, str], log_dir: Path, name: str) -> Iterator[Server]:
    """A uvicorn server with the test method, its output in a file (a full pipe would stall it)."""
    port = free_port()
    url = f"http://localhost:{port}"
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*TEST_METHOD_SERVER, str(port)],
            cwd=ROOT,
            env={**os.environ, "TWOFOLD_PUBLIC_URL": url, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        try:
            wait_ready(url, process)
        except RuntimeError as error:
            raise RuntimeError(f"{error}\n{log.read_text(errors='replace')}") from None
        yield Server(url, process, log)
    finally:
        stop(process)


def server_env(database_url: str, **settings: str) -> dict[str, str]:
    return {
        "TWOFOLD_ENV": "prod",
        "TWOFOLD_DATABASE_URL": database_url,
        "TWOFOLD_SECRET_KEY": SECRET_KEY,
        **{f"TWOFOLD_{name.upper()}": value for name, value in settings.items()},
    }


def assert_unavailable(response: httpx.Response | Any, what: str) -> None:
    assert response.status_code == 503, f"{what}: {response.status_code} {response.text[:300]}"
    assert response.headers["content-type"].startswith("application/problem+json"), what
    assert response.json()["code"] == "unavailable", what
    assert int(response.headers.get("retry-after", "0")) >= 1, f"{what}: no Retry-After"


def assert_no_internal_errors(server: Server) -> None:
    output = server.output()
    assert "unexpected error" not in output and "Traceback" not in output, output[-3000:]


# -- a. PostgreSQL briefly unreachable -----------------------------------------------------------

if POSTGRES_URL:

    @pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
    def test_postgres_briefly_unreachable_gives_503_and_service_resumes(
        make_twofold: Any, database_url: str, tmp_path: Path
    ) -> None:
        twofold = make_twofold()
        organization, admin = create_organization(twofold)
        bob = create_user(twofold, organization, "bob")
        url = make_url(database_url)
        with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
            proxied = url.set(host=proxy.host, port=proxy.port).render_as_string(hide_password=False)
            with (
                real_server(server_env(proxied), tmp_path, "postgres-proxied") as server,
                httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT) as http,
            ):
                enroll(http, admin)
                assert login(http, bob).json()["status"] == "enrollment_required"
                assert proxy.connections > 0  # the server really goes through the proxy

                proxy.cut()
                for _ in range(3):
                    # Every call answers, quickly enough for the client's timeout, with a 503.
                    assert_unavailable(http.get("/readyz"), "readyz during the outage")
                    assert_unavailable(login(http, bob), "login during the outage")
                    # A valid session is not "dead" because the database is away: 503, not 401.
                    assert_unavailable(http.get("/api/v1/me", headers=bearer(admin.token)), "me during the outage")
                    assert_unavailable(
                        http.get(f"/api/v1/organizations/{organization.id}/users", headers=bearer(admin.token)),
                        "admin list during the outage",
                    )
                assert proxy.refused > 0

                proxy.restore()  # the server is not restarted: its pool must heal by itself
                deadline = time.monotonic() + 30
                while True:
                    response = login(http, bob)
                    if response.status_code == 200 or time.monotonic() > deadline:
                        break
                    assert_unavailable(response, "login while reconnecting")
                    time.sleep(0.2)
                assert response.status_code == 200, response.text
                assert response.json()["status"] == "enrollment_required"
                assert http.get("/readyz").status_code == 200
                assert http.get("/api/v1/me", headers=bearer(admin.token)).status_code == 200
                assert login(http, admin).json()["status"] == "mfa_required"
            assert_no_internal_errors(server)


# -- b. SQLite under several processes -----------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sqlite_under_several_processes_never_answers_500(make_twofold: Any, database_url: str, tmp_path: Path) -> None:
    # Neither throttling nor argon2 is under test: failures must keep writing, not turn into early
    # 429s, and cheap password hashes leave the time to the database.
    cheap = {"argon2_memory_kib": "1024", "argon2_time_cost": "1"}
    twofold = make_twofold(**cheap)
    organization, admin = create_organization(twofold)
    users = [create_user(twofold, organization, f"user{i}") for i in range(4)]
    env = server_env(database_url, password_free_attempts="100000", ip_failure_budget="100000", **cheap)
    allowed = {200, 201, 401, 429, 503}
    statuses: Counter[int] = Counter()
    unexpected: list[str] = []
    lock = threading.Lock()

    with (
        real_server(env, tmp_path, "a") as first,
        real_server(
            # The second process waits for the write lock only briefly, so that "database is locked" happens.
            {**env, "TWOFOLD_DATABASE_LOCK_TIMEOUT_MS": "50"},
            tmp_path,
            "b",
        ) as second,
    ):
        with httpx.Client(base_url=first.url, timeout=30) as http:
            enroll(http, admin)
        users_path = f"/api/v1/organizations/{organization.id}/users"
        admin_headers = bearer(admin.token)

        def record(response: httpx.Response, what: str) -> None:
            with lock:
                statuses[response.status_code] += 1
                if response.status_code not in allowed:
                    unexpected.append(f"{what}: {response.status_code} {response.text[:200]}")
                elif response.status_code == 503:
                    try:
                        assert_unavailable(response, what)
                    except AssertionError as error:
                        unexpected.append(str(error))

        def worker(index: int) -> None:
            clients = [httpx.Client(base_url=s.url, timeout=60) for s in (first, second)]
            try:
                run_steps(index, clients)
            except Exception as error:  # a thread's exception would only be a warning: make it a failure
                with lock:
                    unexpected.append(f"worker {index}: {error!r}")
            finally:
                for client in clients:
                    client.close()

        def run_steps(index: int, clients: list[httpx.Client]) -> None:
            for step in range(16):
                http = clients[(index + step) % 2]
                account = users[(index + step) % len(users)]
                kind = (index + step) % 5
                if kind == 0:
                    record(login(http, account), "right password")
                elif kind == 1:
                    record(login(http, account, password="wrong password, long enough"), "wrong password")
                elif kind == 2:
                    record(http.get(users_path, headers=admin_headers, params={"q": "user"}), "list users")
                    record(
                        http.get(f"/api/v1/organizations/{organization.id}/audit-events", headers=admin_headers),
                        "audit events",
                    )
                elif kind == 3:
                    created = http.post(
                        users_path,
                        headers=admin_headers,
                        json={
                            "username": f"new-{index}-{step}",
                            "email": f"n{index}.{step}@example.com",
                            "kind": "user",
                        },
                    )
                    record(created, "create user")
                else:
                    record(
                        http.patch(
                            f"{users_path}/{account.user.id}",
                            headers=admin_headers,
                            json={"display_name": f"Name {index}.{step}"},
                        ),
                        "update user",
                    )

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert not unexpected, unexpected[:10]
        assert statuses[200] > 0 and statuses[201] > 0, statuses  # real work got done, not only refusals
        # Both processes still serve, and nothing was lost.
        for server in (first, second):
            with httpx.Client(base_url=server.url, timeout=30) as http:
                assert http.get(users_path, headers=admin_headers, params={"limit": 200}).status_code == 200
        assert_no_internal_errors(first)
        assert_no_internal_errors(second)


# -- c. killed in the middle of an enrollment or a login -----------------------------------------


@contextlib.contextmanager
def writes_blocked(database_url: str) -> Iterator[Any]:
    """Hold the database so that requests stop in the middle of their work until released.

    SQLite: the write lock, so a request waits at its first write. PostgreSQL: the sessions table,
    so a verification or an enrollment completion waits after it has changed the transaction and
    the method, just before its session row — the most inconsistent moment to die.
    """
    if database_url.startswith("sqlite"):
        connection = sqlite3.connect(make_url(database_url).database or "", isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield None
        finally:
            connection.rollback()
            connection.close()
        return
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            transaction = connection.begin()
            connection.execute(text("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE"))
            try:
                yield engine
            finally:
                transaction.rollback()
    finally:
        engine.dispose()


def wait_until_blocked(engine: Any, count: int, answered: dict[str, str]) -> None:
    """PostgreSQL: wait until `count` backends of this database wait for a lock."""
    if engine is None:
        time.sleep(1.0)  # SQLite: the requests reach their first write within milliseconds
        return
    deadline = time.monotonic() + 10
    with engine.connect() as connection:
        while time.monotonic() < deadline:
            waiting = connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
            ).scalar()
            if waiting >= count:
                return
            connection.rollback()  # pg_stat_activity is a snapshot per transaction
            time.sleep(0.05)
    raise AssertionError(f"the requests never reached the locked table: {answered}")


def row_being_changed(engine: Any, table: str, row_id: str) -> bool:
    """PostgreSQL: whether another (uncommitted) transaction has written this row."""
    with engine.connect() as connection:
        try:
            connection.execute(
                text(f"SELECT 1 FROM {table} WHERE id = :id FOR UPDATE NOWAIT"),
                {"id": row_id},
            )
        except OperationalError:
            return True
        finally:
            connection.rollback()
    return False


def end_orphaned_backends(engine: Any) -> None:
    """PostgreSQL: the dead server's backends would linger until their lock wait ends; end them."""
    if engine is None:
        return
    with engine.connect() as connection:
        connection.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
            )
        )


def snapshot(database_url: str) -> dict[str, Any]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:

            def rows(query: str) -> list[tuple[Any, ...]]:
                return [tuple(row) for row in connection.execute(text(query))]

            return {
                "users": sorted(rows("SELECT id, status FROM users")),
                "methods": sorted(rows("SELECT id, user_id, status FROM verification_methods")),
                "sessions": Counter(user_id for (user_id,) in rows("SELECT user_id FROM sessions")),
            }
    finally:
        engine.dispose()


def transaction_of(engine: Any, user_id: str) -> str:
    with engine.connect() as connection:
        return str(
            connection.execute(
                text("SELECT id FROM login_transactions WHERE user_id = :user ORDER BY created_at DESC LIMIT 1"),
                {"user": user_id},
            ).scalar_one()
        )


def parse_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def test_killing_the_server_mid_enrollment_and_mid_login_leaves_the_database_consistent(
    make_twofold: Any, database_url: str, tmp_path: Path
) -> None:
    # Transactions live 2 s, so what the kill leaves behind expires within the test; cheap password
    # hashes keep the steps before the kill well inside that lifetime on a busy machine.
    cheap = {"argon2_memory_kib": "1024", "argon2_time_cost": "1"}
    twofold = make_twofold(**cheap)
    organization, alice = create_organization(twofold)
    bob = create_user(twofold, organization, "bob")
    carol = create_user(twofold, organization, "carol")
    with TestClient(create_app(twofold, housekeeping=False), base_url=PUBLIC_URL) as client:
        enroll(client, bob)  # bob has an active method: his logins stop at mfa_required
    before = snapshot(database_url)
    env = server_env(database_url, transaction_enroll_seconds="2", transaction_mfa_seconds="2", **cheap)

    in_flight: dict[str, str] = {}

    def send(server: Server, path: str, body: dict[str, Any]) -> None:
        try:
            response = httpx.post(server.url + path, json=body, timeout=30)
            in_flight[path] = str(response.status_code)
        except httpx.HTTPError as error:  # the server died under it, as intended
            in_flight[path] = error.__class__.__name__

    with real_server(env, tmp_path, "killed") as server, httpx.Client(base_url=server.url, timeout=30) as http:
        # An enrollment begun: the pending method row exists.
        started = login(http, alice).json()
        assert started["status"] == "enrollment_required"
        enrollment = http.post(
            "/api/v1/login/enroll",
            json={"transaction": started["transaction"], "type": METHOD_TYPE, "name": "Phone"},
        ).json()
        pending_id, code = enrollment["enrollment_id"], enrollment["code"]
        # A login at its second step.
        challenged = login(http, bob).json()
        assert challenged["status"] == "mfa_required"

        with writes_blocked(database_url) as engine:
            requests = [
                (
                    "/api/v1/login/enroll/complete",
                    {"transaction": started["transaction"], "enrollment_id": pending_id, "code": code},
                ),
                (
                    "/api/v1/login/verify",
                    {"transaction": challenged["transaction"], "type": METHOD_TYPE, "code": bob.code},
                ),
                ("/api/v1/login", {"username": "carol", "password": USER_PASSWORD}),
            ]
            threads = [threading.Thread(target=send, args=(server, path, body)) for path, body in requests]
            for thread in threads:
                thread.start()
            wait_until_blocked(engine, 2, in_flight)  # the completion and the verification are mid-way
            if engine is not None:
                # Mid-transaction indeed: the method is being made active and the transaction ended,
                # uncommitted, when the server dies.
                assert row_being_changed(engine, "verification_methods", pending_id)
                transaction_id = transaction_of(engine, bob.user.id)
                assert row_being_changed(engine, "login_transactions", transaction_id)
            server.kill()
            for thread in threads:
                thread.join(timeout=30)
            end_orphaned_backends(engine)
        # The completion and the verification were cut off, not answered.
        assert not in_flight["/api/v1/login/enroll/complete"].isdigit(), in_flight
        assert not in_flight["/api/v1/login/verify"].isdigit(), in_flight

    after = snapshot(database_url)
    # No user lost, none changed.
    assert after["users"] == before["users"]
    # No half-active method: alice's enrollment is still pending, and she has no active method.
    methods = {row[0]: (row[1], row[2]) for row in after["methods"]}
    assert methods[pending_id] == (alice.user.id, "pending"), methods
    assert not [m for m, (user, status) in methods.items() if user == alice.user.id and status == "active"]
    # Neither the killed verification nor the killed completion left a session behind.
    assert after["sessions"] == before["sessions"], (before["sessions"], after["sessions"])

    with real_server(env, tmp_path, "restarted") as server, httpx.Client(base_url=server.url, timeout=30) as http:
        # The old transactions cannot be resumed past their expiry, even with the right proofs.
        expiry = max(parse_time(started["expires_at"]), parse_time(challenged["expires_at"]))
        time.sleep(max(0.0, expiry - time.time()) + 0.5)
        resumed = http.post(
            "/api/v1/login/enroll/complete",
            json={"transaction": started["transaction"], "enrollment_id": pending_id, "code": code},
        )
        assert resumed.status_code == 410 and resumed.json()["code"] == "transaction_expired", resumed.text
        resumed = http.post(
            "/api/v1/login/verify",
            json={"transaction": challenged["transaction"], "type": METHOD_TYPE, "code": bob.code},
        )
        assert resumed.status_code == 410 and resumed.json()["code"] == "transaction_expired", resumed.text

        # Alice must still enroll; doing so now gives her exactly one active method.
        again = enroll(http, Account(alice.user, alice.password))
        assert again.token
        final = snapshot(database_url)
        active = [m for (m, user, status) in final["methods"] if user == alice.user.id and status == "active"]
        assert len(active) == 1 and active[0] != pending_id, final["methods"]
        # Bob signs in as before; carol, killed at her password step, still has to enroll.
        challenged = login(http, bob).json()
        verified = http.post(
            "/api/v1/login/verify",
            json={"transaction": challenged["transaction"], "type": METHOD_TYPE, "code": bob.code},
        )
        assert verified.status_code == 200, verified.text
        assert login(http, carol).json()["status"] == "enrollment_required"
        assert_no_internal_errors(server)


# -- d. locked for longer than the busy timeout --------------------------------------------------


@contextlib.contextmanager
def database_locked(database_url: str) -> Iterator[None]:
    """Another client holds the lock a request needs: SQLite's write lock; PostgreSQL's users table."""
    if database_url.startswith("sqlite"):
        connection = sqlite3.connect(make_url(database_url).database or "", isolation_level=None)
        connection.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            connection.rollback()
            connection.close()
        return
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            transaction = connection.begin()
            connection.execute(text("LOCK TABLE users IN ACCESS EXCLUSIVE MODE"))
            try:
                yield
            finally:
                transaction.rollback()
    finally:
        engine.dispose()


def test_a_database_locked_longer_than_the_busy_timeout_gives_503_then_recovers(make_twofold: Any) -> None:
    twofold = make_twofold(database_lock_timeout_ms=200)
    organization, alice = create_organization(twofold)
    bob = create_user(twofold, organization, "bob")
    app = create_app(twofold, housekeeping=False)
    with TestClient(app, base_url=PUBLIC_URL, raise_server_exceptions=False) as client:
        enroll(client, alice)
        users_path = f"/api/v1/organizations/{organization.id}/users"
        with database_locked(twofold.settings.database_url):
            for _ in range(2):
                assert_unavailable(login(client, bob), "login while locked")
                assert_unavailable(
                    client.post(
                        users_path,
                        headers=bearer(alice.token),
                        json={"username": "dave", "email": "dave@example.com", "kind": "user"},
                    ),
                    "create user while locked",
                )
        # Released: everything works again, in the same process.
        assert login(client, bob).json()["status"] == "enrollment_required"
        created = client.post(
            users_path,
            headers=bearer(alice.token),
            json={"username": "dave", "email": "dave@example.com", "kind": "user"},
        )
        assert created.status_code == 201, created.text
        assert client.get(users_path, headers=bearer(alice.token)).status_code == 200
