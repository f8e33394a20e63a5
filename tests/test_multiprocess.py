"""The limits hold across server processes (SECURITY.md "Throttling and lockout": "The limits hold
under parallel requests across several server processes"; DESIGN.md §6 "SQLite under several
processes never answers 500"). Two real uvicorn servers share one database; every counter lives
there, so alternating or splitting requests between them gains an attacker nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from twofold.container import Twofold

from .conftest import SECRET_KEY
from .support.flows import Account, create_organization, create_user, is_locked, mfa_failures, run_together
from .support.methods import METHOD_TYPE
from .support.servers import TEST_METHOD_SERVER, running_server

WRONG_PASSWORD = "definitely not the password"
WRONG_CODE = "not-the-code"
LOCK_THRESHOLD = 100  # SECURITY.md: "after 100 consecutive failures the account is locked"
TRANSACTION_ATTEMPTS = 5
# Settings shared by the two servers and by the test's own container (which only sets up and reads).
# The password back-off is long so that no block can end in the middle of a test; the second-factor
# back-off is out of the way so that the lock at 100 is reached quickly (it is tested in test_throttling).
SETTINGS = {"password_backoff_base_seconds": 600, "mfa_free_attempts": 1000}


@pytest.fixture(scope="module")
def servers(database_url: str) -> Iterator[tuple[str, str]]:
    env = {
        "TWOFOLD_ENV": "prod",
        "TWOFOLD_DATABASE_URL": database_url,
        "TWOFOLD_SECRET_KEY": SECRET_KEY,
        **{f"TWOFOLD_{name.upper()}": str(value) for name, value in SETTINGS.items()},
    }
    with (
        running_server(env, command=TEST_METHOD_SERVER) as first,
        running_server(env, command=TEST_METHOD_SERVER) as second,
    ):
        yield first, second


@pytest.fixture
def shared(make_twofold: Callable[..., Twofold], servers: tuple[str, str]) -> Twofold:
    return make_twofold(**SETTINGS)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    """One client, with its connections kept, for the sequential requests of a test."""
    with httpx.Client(timeout=60) as client:
        yield client


def attempt(client: httpx.Client, base_url: str, username: str, password: str) -> httpx.Response:
    return client.post(f"{base_url}/api/v1/login", json={"username": username, "password": password})


def verify(client: httpx.Client, base_url: str, transaction: str, code: str | None) -> httpx.Response:
    return client.post(
        f"{base_url}/api/v1/login/verify", json={"transaction": transaction, "type": METHOD_TYPE, "code": code}
    )


def enroll_over_http(client: httpx.Client, base_url: str, account: Account) -> None:
    response = attempt(client, base_url, account.user.username, account.password)
    assert response.status_code == 200 and response.json()["status"] == "enrollment_required", response.text
    transaction = response.json()["transaction"]
    started = client.post(
        f"{base_url}/api/v1/login/enroll", json={"transaction": transaction, "type": METHOD_TYPE, "name": "Code"}
    )
    assert started.status_code == 200, started.text
    account.code = started.json()["code"]
    done = client.post(
        f"{base_url}/api/v1/login/enroll/complete",
        json={"transaction": transaction, "enrollment_id": started.json()["enrollment_id"], "code": account.code},
    )
    assert done.status_code == 200, done.text


def start_mfa(client: httpx.Client, base_url: str, account: Account) -> str:
    response = attempt(client, base_url, account.user.username, account.password)
    assert response.status_code == 200 and response.json()["status"] == "mfa_required", response.text
    return str(response.json()["transaction"])


def assert_rate_limited(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["code"] == "rate_limited"
    assert int(response.headers["Retry-After"]) >= 1


def in_parallel(calls: list[Callable[[httpx.Client], Any]]) -> list[Any]:
    """Run the calls at once, each on its own connection and thread."""
    return run_together(calls, lambda: httpx.Client(timeout=60))


def test_password_backoff_holds_across_processes(shared, servers, http):
    _, admin = create_organization(shared)
    free = shared.settings.password_free_attempts
    for username in (admin.user.username, "nobody-by-that-name"):
        statuses = []
        for index in range(free + 2):
            statuses.append(attempt(http, servers[index % 2], username, WRONG_PASSWORD).status_code)
        # The same count as against one server: the free attempts, one that starts the back-off, then 429.
        assert statuses == [401] * (free + 1) + [429], (username, statuses)
        for base_url in servers:
            assert_rate_limited(attempt(http, base_url, username, WRONG_PASSWORD))
    # The right password is refused by either process while the back-off lasts.
    for base_url in servers:
        assert_rate_limited(attempt(http, base_url, admin.user.username, admin.password))


def test_parallel_wrong_passwords_across_processes_do_not_slip_past_the_gate(shared, servers):
    _, admin = create_organization(shared)
    free = shared.settings.password_free_attempts
    calls = [
        (lambda client, base_url=servers[index % 2]: attempt(client, base_url, admin.user.username, WRONG_PASSWORD))
        for index in range(20)
    ]
    responses = in_parallel(calls)
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {401, 429}, [r.text for r in responses]
    assert 1 <= statuses.count(401) <= free + 1, statuses
    for response in responses:
        if response.status_code == 429:
            assert_rate_limited(response)


def test_second_factor_lock_counts_across_processes(shared, servers, http):
    organization, admin = create_organization(shared)
    bob = create_user(shared, organization, "bob")
    enroll_over_http(http, servers[0], admin)
    enroll_over_http(http, servers[1], bob)
    # 99 failures, sent to the two servers in turn, over 20 transactions opened on either.
    remaining, index = LOCK_THRESHOLD - 1, 0
    while remaining:
        transaction = start_mfa(http, servers[index % 2], bob)
        for _ in range(min(remaining, TRANSACTION_ATTEMPTS)):
            response = verify(http, servers[index % 2], transaction, WRONG_CODE)
            assert response.status_code == 401, response.text
            remaining -= 1
            index += 1
    assert mfa_failures(shared, bob) == LOCK_THRESHOLD - 1
    assert not is_locked(shared, bob)

    # The 100th failure locks, however many parallel attempts race for it on the two processes.
    transactions = [start_mfa(http, servers[i % 2], bob) for i in range(6)]
    calls = [
        (lambda client, t=transaction, base_url=servers[i % 2]: verify(client, base_url, t, WRONG_CODE))
        for transaction in transactions
        for i in range(TRANSACTION_ATTEMPTS)
    ]
    responses = in_parallel(calls)
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {401, 410, 429}, [r.text for r in responses]
    assert statuses.count(401) == 1, statuses
    assert mfa_failures(shared, bob) == LOCK_THRESHOLD
    assert is_locked(shared, bob)
    for base_url in servers:
        assert_rate_limited(attempt(http, base_url, bob.user.username, bob.password))
    # An unlock written to the database is seen by both processes.
    shared.admin.unlock_by_operator(bob.user.username)
    for base_url in servers:
        transaction = start_mfa(http, base_url, bob)
        assert verify(http, base_url, transaction, bob.code).status_code == 200


def test_parallel_load_on_two_processes_never_answers_500(shared, servers, http):
    organization, admin = create_organization(shared)
    accounts = [admin] + [create_user(shared, organization, f"user{i}") for i in range(3)]
    for index, account in enumerate(accounts):
        enroll_over_http(http, servers[index % 2], account)

    def session(index: int) -> Callable[[httpx.Client], list[int]]:
        """Three logins, each password step on one process and its second factor on the other."""
        account = accounts[index % len(accounts)]

        def run(client: httpx.Client) -> list[int]:
            seen = []
            for round_number in range(3):
                here, there = servers[(index + round_number) % 2], servers[(index + round_number + 1) % 2]
                if index % 3 == 0:
                    seen.append(attempt(client, here, f"stranger{index}", WRONG_PASSWORD).status_code)
                    continue
                response = attempt(client, here, account.user.username, account.password)
                seen.append(response.status_code)
                if response.status_code != 200:
                    continue
                code = account.code if index % 3 == 1 else WRONG_CODE
                seen.append(verify(client, there, response.json()["transaction"], code).status_code)
            return seen

        return run

    results = in_parallel([session(i) for i in range(24)])
    statuses = [status for seen in results for status in seen]
    assert 500 not in statuses
    assert set(statuses) <= {200, 401, 429, 503}, statuses
    assert statuses.count(200) > 0
