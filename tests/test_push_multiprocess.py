"""Push across server processes (issue 6; DESIGN.md §6): two real `twofold serve` servers on one database,
as behind one load balancer. A device long-polls one server while the sign-in happens on the other; the
poll is woken by PostgreSQL ``NOTIFY`` (or, on SQLite, its short internal poll) and returns the new
challenge; the approval sent to the first server completes the login on the second. A device request's
``jti`` is accepted once by the whole deployment, not once per process.

Both servers are given the same TWOFOLD_PUBLIC_URL (the load balancer's address): a device signs its
requests for that URL (``htu``), whichever server receives them.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from twofold.container import Twofold
from twofold.methods.registry import default_registry

from .conftest import SECRET_KEY
from .support.flows import create_organization, create_user, login
from .support.push import (
    CHALLENGES_PATH,
    PushDevice,
    add_push_device,
    approve,
    device_headers,
    list_challenges,
    new_jti,
    start_login_push,
    verify_push,
)
from .support.servers import running_server
from .support.totp import enroll_totp

PUSH_AMR = ["pwd", "swk", "mfa"]
# The one public address of both servers; nothing listens on it, it is what devices sign for.
SHARED_PUBLIC_URL = "http://twofold.localhost:8000"


@pytest.fixture(scope="module")
def servers(database_url: str) -> Iterator[tuple[str, str]]:
    """Servers A and B (`twofold serve` with the product's methods) on the test database."""
    env = {
        "TWOFOLD_ENV": "prod",
        "TWOFOLD_DATABASE_URL": database_url,
        "TWOFOLD_SECRET_KEY": SECRET_KEY,
        "TWOFOLD_PUBLIC_URL": SHARED_PUBLIC_URL,
    }
    with running_server(env) as server_a, running_server(env) as server_b:
        yield server_a, server_b


@pytest.fixture
def shared(make_twofold: Callable[..., Twofold], servers: tuple[str, str]) -> Twofold:
    """A container on the servers' database, to create the users."""
    return make_twofold(registry=default_registry())


def bob_with_a_device(shared: Twofold, server_a: str, server_b: str) -> tuple[Any, PushDevice]:
    """Bob enrolls an authenticator app on B, then pairs his phone through A (its pairing URI names the
    public address)."""
    organization, _ = create_organization(shared)
    account = create_user(shared, organization, "bob")
    with httpx.Client(base_url=server_b, timeout=60) as on_b:
        bob = enroll_totp(on_b, account)
    assert bob.token is not None
    with httpx.Client(base_url=server_a, timeout=60) as on_a:
        phone = add_push_device(on_a, bob.token, device_name="Bob's Pixel")
    assert phone.public_url == SHARED_PUBLIC_URL
    return account, phone


def test_a_device_polling_one_server_approves_a_sign_in_on_the_other(shared, servers):
    server_a, server_b = servers
    account, phone = bob_with_a_device(shared, server_a, server_b)
    polled: queue.Queue[Any] = queue.Queue()

    def long_poll() -> None:
        try:
            with httpx.Client(base_url=server_a, timeout=60) as device_on_a:
                polled.put(list_challenges(device_on_a, phone, wait=20))
        except BaseException as error:  # surfaces in the test's thread
            polled.put(error)

    poller = threading.Thread(target=long_poll)
    poller.start()
    time.sleep(1)  # the device is waiting on A, with nothing to see yet
    assert poller.is_alive() and polled.empty()

    with httpx.Client(base_url=server_b, timeout=60) as browser_on_b:
        response = login(browser_on_b, account)
        assert response.status_code == 200 and response.json()["status"] == "mfa_required", response.text
        transaction = response.json()["transaction"]
        started = start_login_push(browser_on_b, transaction)
        assert started.status_code == 200, started.text
        challenge_id, number = started.json()["challenge_id"], started.json()["number"]

        answer = polled.get(timeout=60)
        poller.join()
        assert not isinstance(answer, BaseException), answer
        assert answer.status_code == 200, answer.text
        [challenge] = answer.json()
        assert challenge["challenge_id"] == challenge_id and number in challenge["numbers"]

        pending = verify_push(browser_on_b, transaction, challenge_id)
        assert pending.status_code == 202, pending.text
        with httpx.Client(base_url=server_a, timeout=60) as device_on_a:
            assert approve(device_on_a, phone, challenge_id, number).status_code == 204
        done = verify_push(browser_on_b, transaction, challenge_id)
        assert done.status_code == 200, done.text
        assert done.json()["status"] == "authenticated" and done.json()["amr"] == PUSH_AMR


def test_a_request_replayed_on_the_other_server_is_refused(shared, servers):
    server_a, server_b = servers
    _, phone = bob_with_a_device(shared, server_a, server_b)
    jti = new_jti()
    headers = device_headers(phone, "GET", CHALLENGES_PATH, jti=jti)
    with httpx.Client(base_url=server_a, timeout=60) as on_a, httpx.Client(base_url=server_b, timeout=60) as on_b:
        assert on_a.get(CHALLENGES_PATH, headers=headers).status_code == 200
        replayed = on_b.get(CHALLENGES_PATH, headers=headers)
        assert replayed.status_code == 401, replayed.text
        assert replayed.json()["code"] == "unauthenticated"
        # B accepts the same device's fresh requests: it refused the jti, not the device.
        assert list_challenges(on_b, phone).status_code == 200
        # And the other way round.
        headers = device_headers(phone, "GET", CHALLENGES_PATH)
        assert on_b.get(CHALLENGES_PATH, headers=headers).status_code == 200
        assert on_a.get(CHALLENGES_PATH, headers=headers).status_code == 401
