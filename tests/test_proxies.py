"""Trusted proxies: X-Forwarded-For is believed only from TWOFOLD_TRUSTED_PROXIES, a malformed one is treated as
absent and never skips a step, and a forged one cannot dodge the per-IP failure budget (DESIGN.md §3; SECURITY.md
"MFA bypass", the headers line, and "Per-IP limits")."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from twofold.container import Twofold
from twofold.storage.tables import audit_events, throttles
from twofold.web.app import create_app
from twofold.web.netutil import client_address

from .conftest import PUBLIC_URL, SECRET_KEY
from .support.flows import create_organization, create_user, enroll
from .support.servers import running_server

FORWARDED = "203.0.113.7"
MALFORMED = [
    "garbage",
    "1.2.3.4, nonsense",
    ", ".join(f"198.51.100.{i}" for i in range(1, 41)),  # 40 hops
    " , ",
    "1.2.3.4,,5.6.7.8",
    "1.2.3.4:8080",
    "[2001:db8::1]",
    "unknown",
]
# Not sendable over HTTP as such (httpx refuses them), so only for the unit test of the rule.
MALFORMED_OFF_THE_WIRE = ["203.0.113.7\u0000", "２０３.０.１１３.７"]  # a NUL; fullwidth digits
# Headers an attacker might hope a debug mode or a sloppy proxy honours; none of them may skip a step.
DEBUG_HEADERS = {"X-Debug": "1", "X-Twofold-Skip-MFA": "1", "X-Forwarded-User": "alice", "X-Real-IP": FORWARDED}


def nets(*values: str) -> tuple[Any, ...]:
    return tuple(ipaddress.ip_network(value, strict=False) for value in values)


# -- the rule itself ------------------------------------------------------------------------------


def test_forwarded_for_is_ignored_from_an_untrusted_peer():
    assert client_address("192.0.2.10", FORWARDED, ()) == "192.0.2.10"
    assert client_address("192.0.2.10", FORWARDED, nets("127.0.0.1", "10.0.0.0/8")) == "192.0.2.10"
    assert client_address("testclient", FORWARDED, nets("127.0.0.1")) == "testclient"
    assert client_address(None, FORWARDED, nets("127.0.0.1")) == "unknown"


def test_forwarded_for_is_believed_from_a_trusted_peer():
    trusted = nets("127.0.0.1", "10.0.0.0/8")
    assert client_address("127.0.0.1", FORWARDED, trusted) == FORWARDED
    assert client_address("127.0.0.1", f"{FORWARDED}, 10.1.2.3", trusted) == FORWARDED  # through a second proxy
    # A client may prepend anything: the rightmost address not of a trusted proxy counts.
    assert client_address("127.0.0.1", f"1.1.1.1, {FORWARDED}", trusted) == FORWARDED
    assert client_address("127.0.0.1", "10.9.9.9, 10.1.2.3", trusted) == "10.9.9.9"  # all trusted: the first
    assert client_address("::1", "2001:db8::5", nets("::1")) == "2001:db8::5"
    assert client_address("10.0.0.1", FORWARDED, nets("10.0.0.0/8")) == FORWARDED


@pytest.mark.parametrize("header", MALFORMED + MALFORMED_OFF_THE_WIRE)
def test_a_malformed_forwarded_for_is_treated_as_absent(header):
    assert client_address("127.0.0.1", header, nets("127.0.0.1")) == "127.0.0.1"


# -- through the app ------------------------------------------------------------------------------


@contextlib.contextmanager
def app_client(twofold: Twofold, peer: str = "testclient") -> Iterator[TestClient]:
    with TestClient(create_app(twofold, housekeeping=False), base_url=PUBLIC_URL, client=(peer, 50000)) as client:
        yield client


def failed_login_ips(twofold: Twofold) -> list[str]:
    with twofold.uow(read_only=True) as uow:
        query = select(audit_events.c.ip).where(audit_events.c.type == "login.failed").order_by(audit_events.c.at)
        return list(uow.session.execute(query).scalars())  # type: ignore[attr-defined]


def counted_addresses(twofold: Twofold) -> set[str]:
    with twofold.uow(read_only=True) as uow:
        keys = uow.session.execute(select(throttles.c.key)).scalars()  # type: ignore[attr-defined]
        return {key.removeprefix("ip:") for key in keys if key.startswith("ip:")}


def fail(client: Any, forwarded: str | None, username: str = "nobody", **headers: str) -> Any:
    extra = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
    return client.post(
        "/api/v1/login", json={"username": username, "password": "wrong password"}, headers={**extra, **headers}
    )


def test_the_audited_address_is_the_forwarded_one_only_from_a_trusted_peer(make_twofold):
    twofold = make_twofold(trusted_proxies="127.0.0.1")
    with app_client(twofold, "127.0.0.1") as proxied, app_client(twofold) as direct:
        assert fail(proxied, FORWARDED).status_code == 401
        assert fail(direct, "198.51.100.9").status_code == 401
        assert fail(proxied, None).status_code == 401
    untrusting = make_twofold()
    with app_client(untrusting, "127.0.0.1") as proxied:
        assert fail(proxied, "198.51.100.10").status_code == 401
    assert failed_login_ips(twofold) == [FORWARDED, "testclient", "127.0.0.1", "127.0.0.1"]


def test_a_malformed_forwarded_for_never_skips_a_step(make_twofold):
    twofold = make_twofold(trusted_proxies="127.0.0.1")
    organization, admin = create_organization(twofold)
    with app_client(twofold, "127.0.0.1") as client:
        bob = enroll(client, create_user(twofold, organization, "bob"))
        for i, header in enumerate(MALFORMED):
            headers = {"X-Forwarded-For": header, **DEBUG_HEADERS}
            # Another unknown name each time: the per-username back-off is not what this test is about.
            wrong = fail(client, header, f"nobody{i}", **DEBUG_HEADERS)
            assert wrong.status_code == 401, (header, wrong.text)
            assert wrong.json()["code"] == "invalid_credentials"
            credentials = {"username": admin.user.username, "password": admin.password}
            right = client.post("/api/v1/login", json=credentials, headers=headers)
            assert right.status_code == 200, (header, right.text)
            assert right.json()["status"] == "enrollment_required"
            assert "token" not in right.json()
            enrolled = client.post("/api/v1/login", json={"username": "bob", "password": bob.password}, headers=headers)
            assert enrolled.json()["status"] == "mfa_required"
            assert "token" not in enrolled.json()
            refused = client.get(
                "/api/v1/me", headers={**headers, "Authorization": f"Bearer {right.json()['transaction']}"}
            )
            assert refused.status_code == 401
    # Treated as absent: the peer's own address is what was recorded and counted.
    assert set(failed_login_ips(twofold)) == {"127.0.0.1"}
    assert counted_addresses(twofold) == {"127.0.0.1"}


def test_a_forged_forwarded_for_cannot_dodge_the_per_ip_budget(make_twofold):
    twofold = make_twofold(ip_failure_budget=3)
    _, admin = create_organization(twofold)
    with app_client(twofold) as client:
        for i in range(3):
            # A new username each time, so only the per-IP budget can stop this (not the per-account back-off).
            assert fail(client, f"198.51.100.{i}", f"guess{i}").status_code == 401
        for i in range(3, 6):
            limited = fail(client, f"198.51.100.{i}", f"guess{i}")
            assert limited.status_code == 429, limited.text
            assert limited.json()["code"] == "rate_limited"
            assert int(limited.headers["retry-after"]) > 0
        # Refused from this address whatever the header says, even with the right password.
        right = client.post(
            "/api/v1/login",
            json={"username": admin.user.username, "password": admin.password},
            headers={"X-Forwarded-For": "192.0.2.200"},
        )
        assert right.status_code == 429
    assert counted_addresses(twofold) == {"testclient"}


def test_behind_a_trusted_proxy_each_client_has_its_own_budget(make_twofold):
    # Per-IP limits count failures only and per client: one noisy client behind the proxy does not lock out
    # another one (SECURITY.md "Per-IP limits ... one busy office behind one address can still sign in").
    twofold = make_twofold(ip_failure_budget=3, trusted_proxies="127.0.0.1")
    _, admin = create_organization(twofold)
    with app_client(twofold, "127.0.0.1") as client:
        for i in range(3):
            assert fail(client, FORWARDED, f"guess{i}").status_code == 401
        assert fail(client, FORWARDED, "guess9").status_code == 429
        credentials = {"username": admin.user.username, "password": admin.password}
        other = client.post("/api/v1/login", json=credentials, headers={"X-Forwarded-For": "192.0.2.44"})
        assert other.status_code == 200
        assert other.json()["status"] == "enrollment_required"
        assert client.post("/api/v1/login", json=credentials, headers={"X-Forwarded-For": FORWARDED}).status_code == 429
    assert counted_addresses(twofold) == {FORWARDED}


# -- a real server: the peer is the TCP peer, not something uvicorn took from the headers -----------


def server_env(database_url: str, **settings: str) -> dict[str, str]:
    return {
        "TWOFOLD_DATABASE_URL": database_url,
        "TWOFOLD_SECRET_KEY": SECRET_KEY,
        "TWOFOLD_ENV": "prod",
        **{f"TWOFOLD_{name.upper()}": value for name, value in settings.items()},
    }


def test_a_real_server_believes_no_forwarded_for_without_trusted_proxies(twofold, database_url):
    # The TCP peer of a real uvicorn server is 127.0.0.1, which uvicorn's own proxy-header handling trusts by
    # default: that handling must be off, so that only TWOFOLD_TRUSTED_PROXIES decides (here: nobody), and a
    # forged header neither changes the recorded address nor dodges the per-IP budget.
    _, admin = create_organization(twofold)
    credentials = {"username": admin.user.username, "password": admin.password}
    with (
        running_server(server_env(database_url, ip_failure_budget="3")) as base_url,
        httpx.Client(base_url=base_url, timeout=30) as client,
    ):
        right = client.post("/api/v1/login", json=credentials, headers={"X-Forwarded-For": FORWARDED, **DEBUG_HEADERS})
        assert right.status_code == 200
        assert right.json()["status"] == "enrollment_required"
        answers = [fail(client, f"198.51.100.{i}", f"guess{i}").status_code for i in range(5)]
        assert answers == [401, 401, 401, 429, 429]
        assert (
            client.post("/api/v1/login", json=credentials, headers={"X-Forwarded-For": "192.0.2.1"}).status_code == 429
        )
    assert failed_login_ips(twofold) == ["127.0.0.1"] * 3
    assert counted_addresses(twofold) == {"127.0.0.1"}
