"""Throttling and lockout (SECURITY.md "Throttling and lockout", DESIGN.md §3): per-username back-off at
the password step that says nothing about whether the username exists, a per-IP budget that counts
failures only, second-factor back-off and the hard lock at 100 consecutive failures lifted only by
an unlock, counters that only a completed authentication resets, all atomic under parallel
requests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from twofold.container import Twofold
from twofold.web.app import create_app

from .conftest import PUBLIC_URL, SECRET_KEY
from .support.flows import (
    Account,
    bearer,
    create_organization,
    create_user,
    enroll,
    is_locked,
    login,
    mfa_failures,
    run_together,
    sign_in,
)
from .support.methods import METHOD_TYPE

WRONG_PASSWORD = "definitely not the password"
WRONG_CODE = "not-the-code"
LOCK_THRESHOLD = 100  # SECURITY.md: "after 100 consecutive failures the account is locked"
TRANSACTION_ATTEMPTS = 5  # API.md: "the fifth failure ends the transaction"
# The lock tests are about the lock: keep the back-offs (tested on their own below) out of the way.
NO_BACKOFF = {"mfa_free_attempts": 1000, "password_free_attempts": 1000}


@contextlib.contextmanager
def app_client(twofold: Twofold) -> Iterator[TestClient]:
    with TestClient(create_app(twofold, housekeeping=False), base_url=PUBLIC_URL) as test_client:
        yield test_client


def attempt(client: Any, username: str, password: str) -> Any:
    return client.post("/api/v1/login", json={"username": username, "password": password})


def verify(client: Any, transaction: str, code: str | None) -> Any:
    return client.post("/api/v1/login/verify", json={"transaction": transaction, "type": METHOD_TYPE, "code": code})


def start_mfa(client: Any, account: Account) -> str:
    response = login(client, account)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "mfa_required", response.json()
    return str(response.json()["transaction"])


def assert_rate_limited(response: Any) -> int:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "rate_limited"
    retry_after = int(response.headers["Retry-After"])
    assert retry_after >= 1
    return retry_after


def audit_events(client: Any, admin: Account, organization_id: str, event_type: str, subject: Account) -> list[Any]:
    response = client.get(
        f"/api/v1/organizations/{organization_id}/audit-events",
        params={"type": event_type, "user_id": subject.user.id},
        headers=bearer(admin.token),
    )
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def fail_codes(client: Any, account: Account, count: int) -> None:
    """``count`` consecutive wrong codes, logging in again whenever a transaction has used its 5."""
    while count > 0:
        transaction = start_mfa(client, account)
        for _ in range(min(count, TRANSACTION_ATTEMPTS)):
            response = verify(client, transaction, WRONG_CODE)
            assert response.status_code == 401, response.text
            assert response.json()["code"] == "invalid_code"
            count -= 1


def parallel(app: Any, calls: list[Callable[[TestClient], Any]]) -> list[Any]:
    """Run the calls at once, each on its own client and thread."""
    return run_together(calls, lambda: TestClient(app, base_url=PUBLIC_URL))


# -- password step ---------------------------------------------------------------------------------


def test_password_backoff_is_identical_for_existing_and_unknown_usernames(make_twofold):
    # Doubling from 2 s rather than 1 s, so that a slow machine still asks inside the first block.
    twofold = make_twofold(password_backoff_base_seconds=2)
    _, admin = create_organization(twofold)
    free = twofold.settings.password_free_attempts
    assert free == 5
    name, unknown_name = admin.user.username, "nobody-by-that-name"
    with app_client(twofold) as client:
        existing: list[Any] = []
        unknown: list[Any] = []
        # Interleaved, so both see the same clock: the free attempts, one more that starts the
        # back-off, then 429.
        for _ in range(free + 2):
            existing.append(attempt(client, name, WRONG_PASSWORD))
            unknown.append(attempt(client, unknown_name, WRONG_PASSWORD))
        assert [r.status_code for r in existing] == [401] * (free + 1) + [429]
        assert [r.status_code for r in unknown] == [r.status_code for r in existing]
        assert [r.json() for r in unknown] == [r.json() for r in existing]
        assert existing[0].json()["code"] == "invalid_credentials"
        for response in existing[: free + 1] + unknown[: free + 1]:
            assert "Retry-After" not in response.headers
        first_existing = assert_rate_limited(existing[-1])
        first_unknown = assert_rate_limited(unknown[-1])
        assert sorted(existing[-1].headers.keys()) == sorted(unknown[-1].headers.keys())

        # The right password inside the back-off is refused in exactly the same way.
        right = attempt(client, name, admin.password)
        assert_rate_limited(right)
        assert right.json() == existing[-1].json()

        # Once the back-off has passed one more failure is let through, and the next back-off is longer.
        time.sleep(max(first_existing, first_unknown) + 0.1)
        again_existing = attempt(client, name, WRONG_PASSWORD)
        again_unknown = attempt(client, unknown_name, WRONG_PASSWORD)
        assert again_existing.status_code == again_unknown.status_code == 401
        assert again_existing.json() == again_unknown.json()
        second_existing = assert_rate_limited(attempt(client, name, WRONG_PASSWORD))
        second_unknown = assert_rate_limited(attempt(client, unknown_name, WRONG_PASSWORD))
        assert second_existing > first_existing
        assert second_unknown > first_unknown


# A long back-off where only the count matters, so that no block can end before it is asked about.
LONG_PASSWORD_BACKOFF = {"password_backoff_base_seconds": 600}


def test_correct_password_alone_does_not_reset_the_password_counter(make_twofold):
    twofold = make_twofold(**LONG_PASSWORD_BACKOFF)
    _, admin = create_organization(twofold)
    free = twofold.settings.password_free_attempts
    with app_client(twofold) as client:
        enroll(client, admin)
        for _ in range(free):
            assert attempt(client, admin.user.username, WRONG_PASSWORD).status_code == 401
        start_mfa(client, admin)  # the right password, without finishing the login
        # Still counted from `free`: one more failure is let through, then the back-off starts.
        assert attempt(client, admin.user.username, WRONG_PASSWORD).status_code == 401
        assert_rate_limited(attempt(client, admin.user.username, WRONG_PASSWORD))
        assert_rate_limited(attempt(client, admin.user.username, admin.password))


def test_completed_authentication_resets_the_password_counter(make_twofold):
    twofold = make_twofold(**LONG_PASSWORD_BACKOFF)
    _, admin = create_organization(twofold)
    free = twofold.settings.password_free_attempts
    with app_client(twofold) as client:
        enroll(client, admin)
        for _ in range(free):
            assert attempt(client, admin.user.username, WRONG_PASSWORD).status_code == 401
        sign_in(client, admin)
        # Counted from zero again: all the free attempts and the one after them pass the gate.
        for _ in range(free + 1):
            assert attempt(client, admin.user.username, WRONG_PASSWORD).status_code == 401
        assert_rate_limited(attempt(client, admin.user.username, WRONG_PASSWORD))


def test_per_ip_budget_counts_failures_only(make_twofold):
    budget = 5
    twofold = make_twofold(ip_failure_budget=budget)
    organization, admin = create_organization(twofold)
    bob = create_user(twofold, organization, "bob")
    with app_client(twofold) as client:
        enroll(client, admin)
        # Failures under many usernames (each far from its own limit) use up the address's budget…
        for index in range(budget - 1):
            assert attempt(client, f"guess{index}", WRONG_PASSWORD).status_code == 401
        # …but successes never do: a busy office behind one address keeps signing in.
        for index in range(2 * budget):
            assert login(client, (admin, bob)[index % 2]).status_code == 200
        sign_in(client, admin)
        assert attempt(client, "guess-last", WRONG_PASSWORD).status_code == 401
        # The budget is spent: the next failure from this address is refused before any check,
        # for a fresh username too, and a forwarded header from an untrusted peer changes nothing.
        assert_rate_limited(attempt(client, "fresh-name", WRONG_PASSWORD))
        assert_rate_limited(
            client.post(
                "/api/v1/login",
                json={"username": "another-name", "password": WRONG_PASSWORD},
                headers={"X-Forwarded-For": "203.0.113.7"},
            )
        )


def test_parallel_wrong_passwords_do_not_slip_past_the_gate(make_twofold):
    # A long back-off, so that no block can end while the 20 requests are still arriving.
    twofold = make_twofold(**LONG_PASSWORD_BACKOFF)
    _, admin = create_organization(twofold)
    free = twofold.settings.password_free_attempts
    app = create_app(twofold, housekeeping=False)
    responses = parallel(app, [lambda c: attempt(c, admin.user.username, WRONG_PASSWORD) for _ in range(20)])
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {401, 429}, [r.text for r in responses]
    passed = statuses.count(401)
    assert 1 <= passed <= free + 1, statuses
    for response in responses:
        if response.status_code == 429:
            assert_rate_limited(response)
    with app_client(twofold) as client:
        assert_rate_limited(attempt(client, admin.user.username, admin.password))


# -- second factor: back-off -------------------------------------------------------------------------


def test_second_factor_backoff_after_the_free_attempts(twofold, client):
    _, admin = create_organization(twofold)
    free = twofold.settings.mfa_free_attempts
    assert free == 10
    enroll(client, admin)
    fail_codes(client, admin, free)
    transaction = start_mfa(client, admin)
    # The attempt after the free ones is verified, and starts the back-off.
    first = verify(client, transaction, WRONG_CODE)
    assert first.status_code == 401 and first.json()["attempts_left"] == TRANSACTION_ATTEMPTS - 1
    retry_after = assert_rate_limited(verify(client, transaction, WRONG_CODE))
    # The right code inside the back-off is refused too; a refused attempt costs no transaction attempt.
    assert_rate_limited(verify(client, transaction, admin.code))
    assert mfa_failures(twofold, admin) == free + 1
    time.sleep(retry_after + 0.1)
    assert verify(client, transaction, admin.code).status_code == 200
    assert mfa_failures(twofold, admin) == 0


# -- second factor: the lock at 100 ------------------------------------------------------------------


def lock_by_failures(twofold: Twofold, client: Any, account: Account) -> str:
    """Fail exactly as many codes as the lock threshold; returns a transaction opened before the last.

    The failures are spread over many logins, each a fresh password step and a fresh transaction, so
    this is also SECURITY.md's "failing 99 codes, signing in with the password again and failing
    more still ends in the lock": a right password resets nothing."""
    threshold = twofold.settings.mfa_lock_threshold
    fail_codes(client, account, threshold - 1)
    assert mfa_failures(twofold, account) == threshold - 1
    assert not is_locked(twofold, account)
    bystander = start_mfa(client, account)  # not locked yet: the password step still answers
    transaction = start_mfa(client, account)
    assert mfa_failures(twofold, account) == threshold - 1
    response = verify(client, transaction, WRONG_CODE)
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "invalid_code"
    assert is_locked(twofold, account)
    assert mfa_failures(twofold, account) == threshold
    return bystander


def assert_locked_out(twofold: Twofold, client: Any, account: Account, bystander: str) -> None:
    # The transaction that was open when the lock fell has ended, even for the right code…
    response = verify(client, bystander, account.code)
    assert response.status_code == 410, response.text
    assert response.json()["code"] == "transaction_expired"
    # …and the right password gives no new one.
    for _ in range(3):
        assert_rate_limited(login(client, account))
    assert is_locked(twofold, account)


def test_hundred_failures_lock_until_admin_unlock(make_twofold):
    """After exactly 100 consecutive failures, over 21 logins, the account is locked until unlocked."""
    twofold = make_twofold(**NO_BACKOFF)
    assert twofold.settings.mfa_lock_threshold == LOCK_THRESHOLD
    organization, admin = create_organization(twofold)
    bob = create_user(twofold, organization, "bob")
    with app_client(twofold) as client:
        enroll(client, admin)
        enroll(client, bob)
        bystander = lock_by_failures(twofold, client, bob)
        assert_locked_out(twofold, client, bob, bystander)
        locked = audit_events(client, admin, organization.id, "account.locked", bob)
        assert len(locked) == 1
        assert locked[0]["subject_id"] == bob.user.id
        listed = client.get(f"/api/v1/organizations/{organization.id}/users/{bob.user.id}", headers=bearer(admin.token))
        assert listed.status_code == 200 and "locked" in listed.json()["flags"]

        # The unlock needs an administrator with a fresh step-up (enroll() just gave one).
        unlock = f"/api/v1/organizations/{organization.id}/users/{bob.user.id}/unlock"
        assert client.post(unlock, headers=bearer(bob.token)).status_code == 403
        response = client.post(unlock, headers=bearer(admin.token))
        assert response.status_code == 204, response.text
        unlocked = audit_events(client, admin, organization.id, "account.unlocked", bob)
        assert len(unlocked) == 1 and unlocked[0]["actor_id"] == admin.user.id

        assert not is_locked(twofold, bob)
        assert mfa_failures(twofold, bob) == 0
        sign_in(client, bob)


# The exact count of 100 is tested above and in test_multiprocess; the two tests below are about the
# operator's unlock paths, so a lock at 10 failures keeps them quick.
UNLOCK_PATH = {"mfa_lock_threshold": 10, **NO_BACKOFF}


def test_operator_unlock_lifts_the_lock(make_twofold):
    twofold = make_twofold(**UNLOCK_PATH)
    organization, admin = create_organization(twofold)
    with app_client(twofold) as client:
        enroll(client, admin)
        bystander = lock_by_failures(twofold, client, admin)
        assert_locked_out(twofold, client, admin, bystander)
        twofold.admin.unlock_by_operator(admin.user.username.upper())
        assert not is_locked(twofold, admin)
        assert mfa_failures(twofold, admin) == 0
        sign_in(client, admin)
        events = audit_events(client, admin, organization.id, "account.unlocked", admin)
        assert len(events) == 1 and events[0]["actor_id"] is None


def test_cli_unlock_lifts_the_lock(make_twofold, database_url, tmp_path):
    twofold = make_twofold(**UNLOCK_PATH)
    organization, admin = create_organization(twofold)
    with app_client(twofold) as client:
        enroll(client, admin)
        bystander = lock_by_failures(twofold, client, admin)
        assert_locked_out(twofold, client, admin, bystander)

        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TWOFOLD_")},
            "TWOFOLD_DATABASE_URL": database_url,
            "TWOFOLD_SECRET_KEY": SECRET_KEY,
        }
        command = Path(sys.executable).with_name("twofold")
        # Run from an empty directory so that no .env file there can change the settings.
        done = subprocess.run(
            [str(command), "users", "unlock", admin.user.username],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert admin.user.username in done.stdout
        assert not is_locked(twofold, admin)
        assert mfa_failures(twofold, admin) == 0
        sign_in(client, admin)
        events = audit_events(client, admin, organization.id, "account.unlocked", admin)
        assert len(events) == 1 and events[0]["actor_id"] is None

        missing = subprocess.run(
            [str(command), "users", "unlock", "no-such-user"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert missing.returncode != 0


def test_only_a_completed_authentication_resets_the_second_factor_count(make_twofold):
    twofold = make_twofold(**NO_BACKOFF)
    _, admin = create_organization(twofold)
    with app_client(twofold) as client:
        enroll(client, admin)
        fail_codes(client, admin, LOCK_THRESHOLD - 1)
        # 20 password steps did not reset the count (lock_by_failures shows the 100th then locks)…
        assert mfa_failures(twofold, admin) == LOCK_THRESHOLD - 1
        # …a completed authentication does: counted from zero again, so a failure more is not a lock.
        sign_in(client, admin)
        assert mfa_failures(twofold, admin) == 0
        fail_codes(client, admin, TRANSACTION_ATTEMPTS)
        assert mfa_failures(twofold, admin) == TRANSACTION_ATTEMPTS
        assert not is_locked(twofold, admin)
        sign_in(client, admin)


def test_parallel_failures_cannot_overshoot_the_lock(make_twofold):
    # A small threshold, only because the mechanism under test is the atomic count, not the number.
    threshold = 10
    twofold = make_twofold(mfa_lock_threshold=threshold, **NO_BACKOFF)
    organization, admin = create_organization(twofold)
    bob = create_user(twofold, organization, "bob")
    app = create_app(twofold, housekeeping=False)
    with TestClient(app, base_url=PUBLIC_URL) as client:
        enroll(client, admin)
        enroll(client, bob)
        transactions = [start_mfa(client, bob) for _ in range(6)]
    calls = [
        (lambda c, t=transaction: verify(c, t, WRONG_CODE))
        for transaction in transactions
        for _ in range(TRANSACTION_ATTEMPTS)
    ]
    responses = parallel(app, calls)
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {401, 410, 429}, [r.text for r in responses]
    # Every attempt that was verified was counted first: no more than the threshold ever ran.
    assert statuses.count(401) == threshold, statuses
    assert mfa_failures(twofold, bob) == threshold
    assert is_locked(twofold, bob)
    with TestClient(app, base_url=PUBLIC_URL) as client:
        assert_rate_limited(login(client, bob))
        assert len(audit_events(client, admin, organization.id, "account.locked", bob)) == 1
