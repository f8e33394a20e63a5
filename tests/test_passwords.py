"""Passwords (issue 2 item 4): argon2id with OWASP's parameters, rehash on login when they change, and the
NIST SP 800-63B policy (length only, no composition rules, breached passwords refused, not the username)."""

from __future__ import annotations

from typing import Any

import pytest

from twofold.domain.errors import ValidationFailed
from twofold.services.passwords import Passwords, is_common_password

from .support.flows import USER_PASSWORD, bearer, create_organization, create_user, enroll, login
from .test_admin_api import admin_session, assert_problem, new_user

ARGON2_PREFIX = "$argon2id$v=19$m=19456,t=2,p=1$"


def stored_hash(twofold: Any, user_id: str) -> str:
    with twofold.uow(read_only=True) as uow:
        user = uow.users.get(user_id)
        assert user is not None and user.password_hash is not None
        return user.password_hash


def store_hash(twofold: Any, user_id: str, password_hash: str) -> None:
    with twofold.uow() as uow:
        user = uow.users.get(user_id)
        assert user is not None
        user.password_hash = password_hash


def test_argon2id_parameters_are_in_the_stored_hash(twofold, client):
    org, admin = admin_session(twofold, client)
    assert stored_hash(twofold, admin.user.id).startswith(ARGON2_PREFIX)
    created = new_user(client, org, admin.token, "bob", password=USER_PASSWORD).json()
    bob_hash = stored_hash(twofold, created["id"])
    assert bob_hash.startswith(ARGON2_PREFIX)
    assert USER_PASSWORD not in bob_hash
    # Salted: the same password never gives the same hash twice.
    assert twofold.passwords.hash(USER_PASSWORD) != twofold.passwords.hash(USER_PASSWORD)
    assert twofold.passwords.verify(bob_hash, USER_PASSWORD)
    assert not twofold.passwords.verify(bob_hash, USER_PASSWORD + "x")


@pytest.mark.parametrize("weaker", [{"time_cost": 1}, {"memory_kib": 8192}, {"parallelism": 2}])
def test_hash_is_upgraded_at_login_when_parameters_change(twofold, client, weaker):
    organization, _ = create_organization(twofold)
    bob = create_user(twofold, organization, "bob")
    old = Passwords(**weaker).hash(bob.password)
    assert not old.startswith(ARGON2_PREFIX)
    store_hash(twofold, bob.user.id, old)

    # A wrong password changes nothing.
    assert login(client, bob, password="not the right passphrase").status_code == 401
    assert stored_hash(twofold, bob.user.id) == old

    response = login(client, bob)
    assert response.status_code == 200 and response.json()["status"] == "enrollment_required"
    upgraded = stored_hash(twofold, bob.user.id)
    assert upgraded != old and upgraded.startswith(ARGON2_PREFIX)
    assert login(client, bob).json()["status"] == "enrollment_required"
    assert stored_hash(twofold, bob.user.id) == upgraded  # no rehash when nothing changed


def test_corrupt_stored_hash_fails_like_a_wrong_password(twofold, client):
    organization, _ = create_organization(twofold)
    bob = create_user(twofold, organization, "bob")
    wrong = login(client, bob, password="not the right passphrase")
    store_hash(twofold, bob.user.id, "$argon2id$garbage")
    response = login(client, bob)
    assert response.status_code == 401 and response.json() == wrong.json()


# -- policy --------------------------------------------------------------------------------------

LONG_PASSPHRASE = "the quick brown fox jumps over the lazy dog while seven wizards quietly hex a jovial bat by the seas"


def test_policy_through_the_admin_api(twofold, client):
    org, admin = admin_session(twofold, client)
    token = admin.token
    assert len(LONG_PASSPHRASE) == 100

    def refused(username: str, password: str, **fields: Any) -> None:
        assert_problem(new_user(client, org, token, username, password=password, **fields), 422, "validation_error")

    def accepted(username: str, password: str, **fields: Any) -> None:
        response = new_user(client, org, token, username, password=password, **fields)
        assert response.status_code == 201, (password, response.text)
        answer = client.post("/api/v1/login", json={"username": username, "password": password})
        assert answer.status_code == 200, (password, answer.text)
        assert answer.json()["status"] == "enrollment_required"

    # Humans: at least 8 characters (with MFA).
    refused("u7", "k3#xq9z")
    accepted("u8", "k3#xq9zr")
    # Services: at least 15 (the password may be an exempt account's only factor).
    refused("s14", "k3#xq9zr-abcde", kind="service", service_type="test_automation")
    accepted("s15", "k3#xq9zr-abcdef", kind="service", service_type="test_automation")
    # Long passphrases are welcome; at most 128.
    accepted("long", LONG_PASSPHRASE)
    accepted("max", "p" * 127 + "!")
    refused("toolong", "p" * 129)
    refused("huge", "p" * 1000)
    # No composition rules: all lowercase, no digits, no symbols is fine when long enough.
    accepted("lower", "correcthorsebatterystaple")
    accepted("unicode", "пароль для входа 日本語")
    # Breached/common passwords, whatever the case.
    assert is_common_password("iloveyou1") and is_common_password("qwertyuiop123")
    refused("common1", "iloveyou1")
    refused("common2", "ILOVEYOU1")
    refused("common3", "qwertyuiop123", kind="service", service_type="rpa")
    # Not the username (compared like usernames are).
    refused("quintessa", "quintessa")
    refused("Quintessa", "QUINTESSA")
    accepted("quintessa", "quintessa's own passphrase")


def test_policy_messages_are_generic_and_echo_nothing(twofold, client):
    org, admin = admin_session(twofold, client)
    body = assert_problem(new_user(client, org, admin.token, "bob", password="iloveyou1"), 422, "validation_error")
    assert "iloveyou1" not in str(body)
    body = assert_problem(new_user(client, org, admin.token, "bob", password="tiny"), 422, "validation_error")
    assert "tiny" not in str(body) and "8" in body["detail"]


def test_policy_is_a_rule_of_the_service(twofold):
    passwords = twofold.passwords
    passwords.check_policy("k3#xq9zr", kind="user", username="bob")
    passwords.check_policy("k3#xq9zr-abcdef", kind="service", username="robot")
    passwords.check_policy("x" * 64, kind="user", username="bob")
    passwords.check_policy("y" * 128, kind="service", username="robot")
    for password, kind, username in (
        ("k3#xq9z", "user", "bob"),
        ("k3#xq9zr-abcde", "service", "robot"),
        ("z" * 129, "user", "bob"),
        ("password123", "user", "bob"),
        ("Sunshine1", "user", "bob"),
        ("bob-the-builder", "user", "Bob-The-Builder"),
    ):
        with pytest.raises(ValidationFailed):
            passwords.check_policy(password, kind=kind, username=username)


def test_policy_applies_to_password_change(twofold, client):
    organization, _ = create_organization(twofold)
    bob = enroll(client, create_user(twofold, organization, "bob"))
    url = "/api/v1/me/password"
    for weak in ("short", "iloveyou1", "bob", "q" * 129):
        response = client.post(url, json={"current_password": bob.password, "new_password": weak},
                               headers=bearer(bob.token))
        assert_problem(response, 422, "validation_error")
    assert login(client, bob).status_code == 200  # the old password still works
    wrong = client.post(url, json={"current_password": "not my password", "new_password": LONG_PASSPHRASE},
                        headers=bearer(bob.token))
    assert wrong.status_code == 400 and wrong.json()["code"] == "invalid_credentials"
    assert client.post(url, json={"current_password": bob.password, "new_password": LONG_PASSPHRASE},
                       headers=bearer(bob.token)).status_code == 204
    assert login(client, bob).status_code == 401
    assert login(client, bob, password=LONG_PASSPHRASE).json()["status"] == "mfa_required"
