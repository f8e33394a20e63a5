"""A TOTP code and a recovery code are accepted once even when the parallel submissions land on different
server processes (issue 3: "a code accepted once, including N parallel submissions → exactly one
success"; DESIGN.md §6). A real `twofold serve --workers 2` on the test database: single use is settled by
conditional UPDATEs in the database, which every worker shares, never in a process's memory."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from twofold.container import Twofold
from twofold.methods.registry import default_registry
from twofold.storage import tables

from .conftest import SECRET_KEY
from .support.flows import Account, create_organization, create_user, login, run_together
from .support.servers import running_server
from .support.totp import enroll_totp

PARALLEL = 8
TRANSACTION_ATTEMPTS = 5
# `twofold serve` as shipped (the product's method registry), with two worker processes behind one port;
# running_server appends the port.
SERVE_WITH_TWO_WORKERS = [sys.executable, "-m", "twofold.cli.main", "serve", "--workers", "2", "--port"]


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[str]:
    env = {"TWOFOLD_ENV": "prod", "TWOFOLD_DATABASE_URL": database_url, "TWOFOLD_SECRET_KEY": SECRET_KEY}
    with running_server(env, command=SERVE_WITH_TWO_WORKERS) as base_url:
        yield base_url


@pytest.fixture
def shared(make_twofold: Callable[..., Twofold], server: str) -> Twofold:
    """A container on the server's database, to create users and read what the server stored."""
    return make_twofold(registry=default_registry())


def start_mfa(client: httpx.Client, account: Account) -> str:
    response = login(client, account)
    assert response.status_code == 200 and response.json()["status"] == "mfa_required", response.text
    return str(response.json()["transaction"])


def submit_in_parallel(server: str, transactions: list[str], verification_type: str, code: str) -> list[Any]:
    """The same code on every transaction at once, each on a connection of its own (so on either worker)."""

    def submit(client: httpx.Client, transaction: str) -> httpx.Response:
        return client.post(
            f"{server}/api/v1/login/verify",
            json={"transaction": transaction, "type": verification_type, "code": code},
        )

    calls = [(lambda client, t=transaction: submit(client, t)) for transaction in transactions]
    return run_together(calls, lambda: httpx.Client(timeout=60))


def assert_one_success(responses: list[Any]) -> Any:
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 1, [(r.status_code, r.text) for r in responses]
    for response in responses:
        if response.status_code != 200:
            assert response.status_code == 401, response.text
            assert response.json()["code"] == "invalid_code"
            assert response.json()["attempts_left"] == TRANSACTION_ATTEMPTS - 1
    return next(r for r in responses if r.status_code == 200)


def test_one_totp_code_sent_in_parallel_to_two_worker_processes_succeeds_once(shared, server):
    organization, _ = create_organization(shared)
    account = create_user(shared, organization, "bob")
    with httpx.Client(base_url=server, timeout=60) as http:
        bob = enroll_totp(http, account)
        transactions = [start_mfa(http, account) for _ in range(PARALLEL)]
    code = bob.next_code()

    winner = assert_one_success(submit_in_parallel(server, transactions, "totp", code))
    assert winner.json()["amr"] == ["pwd", "otp", "mfa"]
    columns = tables.verification_methods.c
    with shared.uow.engine.connect() as connection:
        counters = list(connection.execute(select(columns.counter).where(columns.user_id == account.user.id)))
    assert [row.counter for row in counters] == [bob.last_step]


def test_one_recovery_code_sent_in_parallel_to_two_worker_processes_succeeds_once(shared, server):
    organization, _ = create_organization(shared)
    account = create_user(shared, organization, "bob")
    with httpx.Client(base_url=server, timeout=60) as http:
        bob = enroll_totp(http, account)
        transactions = [start_mfa(http, account) for _ in range(PARALLEL)]

    winner = assert_one_success(submit_in_parallel(server, transactions, "recovery_code", bob.recovery_codes[0]))
    assert winner.json()["amr"] == ["pwd", "mfa"]
    assert winner.json()["recovery_codes_remaining"] == len(bob.recovery_codes) - 1
    with shared.uow(read_only=True) as uow:
        assert uow.recovery_codes.count_unused(account.user.id) == len(bob.recovery_codes) - 1
