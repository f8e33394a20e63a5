"""The login transaction lifecycle (API.md "Transaction lifecycle", DESIGN.md §3, SECURITY.md
"Throttling and lockout" and "MFA bypass"): 5 attempts, 410 for anything used, unknown or expired,
fixed lifetimes, enrollment only when there is nothing to verify, and a transaction is never a
session."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient

from twofold.container import Twofold
from twofold.domain.clock import utcnow
from twofold.web.app import create_app

from .conftest import PUBLIC_URL
from .support.flows import Account, bearer, create_organization, create_user, enroll, login, sign_in
from .support.methods import METHOD_TYPE

WRONG_CODE = "not-the-code"


@contextlib.contextmanager
def app_client(twofold: Twofold) -> Iterator[TestClient]:
    with TestClient(create_app(twofold, housekeeping=False), base_url=PUBLIC_URL) as test_client:
        yield test_client


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def start_mfa(client: Any, account: Account) -> str:
    response = login(client, account)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "mfa_required", response.json()
    return str(response.json()["transaction"])


def start_enrollment(client: Any, account: Account) -> str:
    response = login(client, account)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "enrollment_required", response.json()
    return str(response.json()["transaction"])


def verify(client: Any, transaction: str, code: str | None) -> Any:
    return client.post("/api/v1/login/verify", json={"transaction": transaction, "type": METHOD_TYPE, "code": code})


def begin_enroll(client: Any, transaction: str) -> Any:
    return client.post("/api/v1/login/enroll", json={"transaction": transaction, "type": METHOD_TYPE, "name": "Code"})


def complete_enroll(client: Any, transaction: str, enrollment_id: str, code: str) -> Any:
    return client.post(
        "/api/v1/login/enroll/complete",
        json={"transaction": transaction, "enrollment_id": enrollment_id, "code": code},
    )


def assert_expired(response: Any) -> dict[str, Any]:
    assert response.status_code == 410, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["code"] == "transaction_expired"
    return body


def active_method_count(twofold: Twofold, account: Account) -> int:
    with twofold.uow(read_only=True) as uow:
        return uow.methods.count_active(account.user.id)


# -- attempts ------------------------------------------------------------------------------------


def test_five_failed_codes_end_the_transaction(twofold, client):
    _, admin = create_organization(twofold)
    enroll(client, admin)
    transaction = start_mfa(client, admin)
    for expected_left in (4, 3, 2, 1, 0):
        response = verify(client, transaction, WRONG_CODE)
        assert response.status_code == 401, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == "invalid_code"
        assert response.json()["attempts_left"] == expected_left
    # Dead after the fifth failure: even the right code is refused, and so is a sixth wrong one.
    assert_expired(verify(client, transaction, admin.code))
    assert_expired(verify(client, transaction, WRONG_CODE))
    # A new login works, and the right code signs in.
    assert verify(client, start_mfa(client, admin), admin.code).status_code == 200


def test_unknown_used_and_expired_transactions_all_get_the_same_410(twofold, client):
    _, admin = create_organization(twofold)
    enroll(client, admin)
    used = start_mfa(client, admin)
    assert verify(client, used, admin.code).status_code == 200
    used_body = assert_expired(verify(client, used, admin.code))
    for garbage in ("tft_" + "A" * 43, "tft_", "garbage", "x" * 300, "sess_abc", " "):
        assert assert_expired(verify(client, garbage, admin.code)) == used_body
    assert assert_expired(begin_enroll(client, "tft_unknown")) == used_body
    assert assert_expired(complete_enroll(client, "tft_unknown", "whatever", "123")) == used_body


def test_transaction_dies_after_its_lifetime(make_twofold):
    # 1 s and 2 s: the enrollment below must still start inside its lifetime on a slow machine.
    twofold = make_twofold(transaction_mfa_seconds=1, transaction_enroll_seconds=2)
    organization, admin = create_organization(twofold)
    newcomer = create_user(twofold, organization, "bob")
    with app_client(twofold) as client:
        enroll(client, admin)
        mfa = start_mfa(client, admin)
        enrolling = start_enrollment(client, newcomer)
        started = begin_enroll(client, enrolling)
        assert started.status_code == 200, started.text
        garbage_body = assert_expired(verify(client, "tft_" + "B" * 43, admin.code))
        time.sleep(2.2)
        assert assert_expired(verify(client, mfa, admin.code)) == garbage_body
        assert (
            assert_expired(complete_enroll(client, enrolling, started.json()["enrollment_id"], started.json()["code"]))
            == garbage_body
        )
        assert assert_expired(begin_enroll(client, enrolling)) == garbage_body
        # Nothing was enrolled past expiry: the next login still asks for enrollment.
        start_enrollment(client, newcomer)
    assert active_method_count(twofold, newcomer) == 0


def test_lifetimes_are_five_and_fifteen_minutes_and_never_move(twofold, client):
    organization, admin = create_organization(twofold)
    newcomer = create_user(twofold, organization, "bob")
    enroll(client, admin)

    before = utcnow()
    response = login(client, admin)
    after = utcnow()
    assert response.json()["status"] == "mfa_required"
    mfa_expires = parse_time(response.json()["expires_at"])
    assert before + timedelta(minutes=5) - timedelta(seconds=2) <= mfa_expires <= after + timedelta(minutes=5)

    before = utcnow()
    response = login(client, newcomer)
    after = utcnow()
    assert response.json()["status"] == "enrollment_required"
    enroll_expires = parse_time(response.json()["expires_at"])
    assert before + timedelta(minutes=15) - timedelta(seconds=2) <= enroll_expires <= after + timedelta(minutes=15)

    # Failures and enrollment starts do not extend either transaction.
    mfa = start_mfa(client, admin)
    first = twofold.login.transaction_view(mfa)[0].expires_at
    time.sleep(0.05)  # any refresh would now give a later expiry
    assert verify(client, mfa, WRONG_CODE).status_code == 401
    assert twofold.login.transaction_view(mfa)[0].expires_at == first

    enrolling = start_enrollment(client, newcomer)
    first = twofold.login.transaction_view(enrolling)[0].expires_at
    started = begin_enroll(client, enrolling).json()
    assert parse_time(started["expires_at"]) <= parse_time(login(client, newcomer).json()["expires_at"])
    assert complete_enroll(client, enrolling, started["enrollment_id"], WRONG_CODE).status_code == 400
    assert twofold.login.transaction_view(enrolling)[0].expires_at == first


# -- which step a transaction may take -----------------------------------------------------------


def test_mfa_required_transaction_cannot_enroll(twofold, client):
    _, admin = create_organization(twofold)
    enroll(client, admin)
    transaction = start_mfa(client, admin)
    response = begin_enroll(client, transaction)
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "forbidden"
    # Nor complete someone else's pending enrollment through it.
    response = complete_enroll(client, transaction, "any-enrollment", "123456")
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "forbidden"
    assert active_method_count(twofold, admin) == 1
    # The refusals are not code failures: the transaction still works.
    assert verify(client, transaction, admin.code).status_code == 200


def test_enrollment_required_transaction_cannot_verify(twofold, client):
    _, admin = create_organization(twofold)
    transaction = start_enrollment(client, admin)
    for code in (WRONG_CODE, "000000"):
        response = verify(client, transaction, code)
        assert response.status_code == 403, response.text
        assert response.json()["code"] == "forbidden"
    assert begin_enroll(client, transaction).status_code == 200


def test_success_ends_the_transaction(twofold, client):
    organization, admin = create_organization(twofold)
    enroll(client, admin)
    transaction = start_mfa(client, admin)
    assert verify(client, transaction, admin.code).status_code == 200
    assert_expired(verify(client, transaction, admin.code))

    newcomer = create_user(twofold, organization, "bob")
    enrolling = start_enrollment(client, newcomer)
    started = begin_enroll(client, enrolling).json()
    done = complete_enroll(client, enrolling, started["enrollment_id"], started["code"])
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "authenticated"
    assert_expired(complete_enroll(client, enrolling, started["enrollment_id"], started["code"]))
    assert_expired(begin_enroll(client, enrolling))
    assert active_method_count(twofold, newcomer) == 1


def test_wrong_enrollment_code_leaves_nothing_enrolled(twofold, client):
    _, admin = create_organization(twofold)
    transaction = start_enrollment(client, admin)
    started = begin_enroll(client, transaction).json()
    for expected_left in (4, 3, 2, 1, 0):
        response = complete_enroll(client, transaction, started["enrollment_id"], WRONG_CODE)
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "invalid_code"
        assert response.json()["attempts_left"] == expected_left
    assert_expired(complete_enroll(client, transaction, started["enrollment_id"], started["code"]))
    assert active_method_count(twofold, admin) == 0
    # The next login still forces enrollment.
    start_enrollment(client, admin)


def test_restarting_the_login_never_skips_enrollment(twofold, client):
    _, admin = create_organization(twofold)
    first = start_enrollment(client, admin)
    assert begin_enroll(client, first).status_code == 200  # a pending method is not a method
    second = start_enrollment(client, admin)
    # The pending enrollment belongs to the first transaction only.
    started = begin_enroll(client, first).json()
    response = complete_enroll(client, second, started["enrollment_id"], started["code"])
    assert response.status_code == 404, response.text
    start_enrollment(client, admin)
    assert active_method_count(twofold, admin) == 0


def test_completing_forced_enrollment_ends_the_other_open_transactions(twofold, client):
    _, admin = create_organization(twofold)
    winner = start_enrollment(client, admin)
    other = start_enrollment(client, admin)
    other_started = begin_enroll(client, other).json()
    started = begin_enroll(client, winner).json()
    assert complete_enroll(client, winner, started["enrollment_id"], started["code"]).status_code == 200
    assert_expired(complete_enroll(client, other, other_started["enrollment_id"], other_started["code"]))
    assert_expired(begin_enroll(client, other))
    assert_expired(verify(client, other, started["code"]))
    assert active_method_count(twofold, admin) == 1


def test_transaction_token_is_not_a_bearer_token(twofold, client):
    organization, admin = create_organization(twofold)
    enroll(client, admin)
    newcomer = create_user(twofold, organization, "bob")
    mfa = start_mfa(client, admin)
    enrolling = start_enrollment(client, newcomer)
    org = organization.id
    for transaction in (mfa, enrolling):
        for method, path in (
            ("GET", "/api/v1/me"),
            ("GET", "/api/v1/me/methods"),
            ("POST", "/api/v1/me/step-up"),
            ("POST", "/api/v1/me/sessions/revoke"),
            ("POST", "/api/v1/logout"),
            ("GET", f"/api/v1/organizations/{org}"),
            ("GET", f"/api/v1/organizations/{org}/users"),
            ("GET", f"/api/v1/organizations/{org}/audit-events"),
            ("GET", f"/api/v1/organizations/{org}/users/{newcomer.user.id}"),
            ("POST", f"/api/v1/organizations/{org}/users/{newcomer.user.id}/unlock"),
        ):
            body = {"type": METHOD_TYPE, "name": "x", "code": admin.code} if method == "POST" else None
            response = client.request(method, path, headers=bearer(transaction), json=body)
            assert response.status_code == 401, (path, response.status_code, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")
    # The transactions themselves are still usable: being refused as a bearer token is not a use.
    assert verify(client, mfa, admin.code).status_code == 200


# -- parallel forced enrollments -----------------------------------------------------------------


def test_parallel_forced_enrollments_end_with_exactly_one_method(twofold):
    organization, _ = create_organization(twofold)
    for round_number in range(3):
        account = create_user(twofold, organization, f"racer{round_number}")
        with app_client(twofold) as client:
            pending = []
            for _ in range(4):
                transaction = start_enrollment(client, account)
                pending.append((transaction, begin_enroll(client, transaction).json()))
        results: list[Any] = [None] * len(pending)
        barrier = threading.Barrier(len(pending))

        def complete(index: int) -> None:
            transaction, started = pending[index]
            with app_client(twofold) as own_client:
                barrier.wait()
                results[index] = complete_enroll(own_client, transaction, started["enrollment_id"], started["code"])

        threads = [threading.Thread(target=complete, args=(i,)) for i in range(len(pending))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        statuses = sorted(r.status_code for r in results)
        assert statuses.count(200) == 1, [r.text for r in results]
        # The losers either passed the transaction check before the winner committed (then the
        # per-user lock answers 409 conflict) or came after it ended their transaction (410).
        for response in results:
            if response.status_code == 409:
                assert response.json()["code"] == "conflict"
            elif response.status_code == 410:
                assert response.json()["code"] == "transaction_expired"
            else:
                assert response.status_code == 200, response.text
        assert active_method_count(twofold, account) == 1
        # The one method that is active is the winner's, and it signs in.
        winner = next(i for i, r in enumerate(results) if r.status_code == 200)
        account.code = pending[winner][1]["code"]
        with app_client(twofold) as client:
            assert sign_in(client, account)
