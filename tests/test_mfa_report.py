"""The MFA coverage report and the accounts that need attention (API.md `GET …/mfa-report`; `GET …/attention`):
users counted by MFA state (enrolled, pending enrollment, exempt, SSO) with locked and disabled accounts, active
methods by type, and the lists of locked, cloned-authenticator and disabled accounts — for one organization only,
and only for its administrators."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import update

from twofold.container import Twofold
from twofold.domain.clock import utcnow
from twofold.storage import tables

from .support.flows import Account, bearer, create_user, enroll, login
from .support.methods import METHOD_TYPE
from .test_accounts import create_sso_user
from .test_admin_api import admin_session, assert_problem, expire_step_up
from .test_exemptions import expire_exemption, put_exemption, service


def report(client: Any, org: str, token: str | None) -> dict[str, Any]:
    response = client.get(f"/api/v1/organizations/{org}/mfa-report", headers=bearer(token))
    assert response.status_code == 200, response.text
    return dict(response.json())


def attention(client: Any, org: str, token: str | None) -> dict[str, list[str]]:
    """The attention lists, as usernames."""
    response = client.get(f"/api/v1/organizations/{org}/attention", headers=bearer(token))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"locked", "cloned_authenticator", "push_denied_not_me", "disabled"}
    return {name: [user["username"] for user in users] for name, users in body.items()}


def add_test_method(client: Any, account: Account, name: str) -> None:
    """A second method of the test type, added from the account (needs the fresh step-up of its sign-in)."""
    started = client.post("/api/v1/me/methods", json={"type": METHOD_TYPE, "name": name}, headers=bearer(account.token))
    assert started.status_code == 201, started.text
    done = client.post(
        f"/api/v1/me/methods/{started.json()['enrollment_id']}/complete",
        json={"code": started.json()["code"]},
        headers=bearer(account.token),
    )
    assert done.status_code == 200, done.text


def lock(twofold: Twofold, account: Account) -> None:
    """Storage-level set-up of a second-factor lock (the throttle that sets it is tested elsewhere)."""
    with twofold.uow.engine.begin() as connection:
        connection.execute(update(tables.users).where(tables.users.c.id == account.user.id).values(locked_at=utcnow()))


def flag_cloned(twofold: Twofold, account: Account) -> None:
    """Mark the account's methods as cloned, as a WebAuthn counter going backwards does."""
    with twofold.uow.engine.begin() as connection:
        connection.execute(
            update(tables.verification_methods)
            .where(tables.verification_methods.c.user_id == account.user.id)
            .values(cloned_at=utcnow() - timedelta(minutes=1))
        )


def build_organization(twofold: Twofold, client: Any) -> tuple[str, Account, dict[str, Account]]:
    """Acme with one account in every state; Globex next to it with accounts that must not be counted."""
    org, alice = admin_session(twofold, client)
    acme = twofold.accounts.root_by_name("Acme")
    accounts: dict[str, Account] = {}
    accounts["bob"] = enroll(client, create_user(twofold, acme, "bob"))
    add_test_method(client, accounts["bob"], "Second")  # two methods, one user
    # Carol started her forced enrollment and stopped: a pending method is not an enrolled one.
    accounts["carol"] = carol = create_user(twofold, acme, "carol")
    transaction = login(client, carol).json()["transaction"]
    started = client.post("/api/v1/login/enroll", json={"transaction": transaction, "type": METHOD_TYPE, "name": "X"})
    assert started.status_code == 200, started.text
    accounts["robot"] = robot = service(twofold, "robot")
    assert put_exemption(client, org, alice.token, robot.user.id).status_code == 204
    accounts["old-bot"] = old_bot = service(twofold, "old-bot", "test_automation")
    assert put_exemption(client, org, alice.token, old_bot.user.id).status_code == 204
    expire_exemption(twofold, old_bot.user.id)  # an expired exemption counts for nothing
    accounts["dave"] = dave = enroll(client, create_user(twofold, acme, "dave"))
    lock(twofold, dave)
    accounts["erin"] = erin = enroll(client, create_user(twofold, acme, "erin"))
    disabled = client.patch(
        f"/api/v1/organizations/{org}/users/{erin.user.id}", json={"status": "disabled"}, headers=bearer(alice.token)
    )
    assert disabled.status_code == 200, disabled.text
    accounts["frank"] = frank = enroll(client, create_user(twofold, acme, "frank"))
    flag_cloned(twofold, frank)
    accounts["sam"] = create_sso_user(twofold, acme, "sam")

    _, gina = admin_session(twofold, client, "Globex", "gina")
    globex = twofold.accounts.root_by_name("Globex")
    gus = enroll(client, create_user(twofold, globex, "gus"))
    lock(twofold, gus)
    flag_cloned(twofold, gus)
    create_user(twofold, globex, "gwen")
    accounts["gina"] = gina
    return org, alice, accounts


def test_report_counts_every_state_and_method_type(twofold, client):
    org, alice, _ = build_organization(twofold, client)

    assert report(client, org, alice.token) == {
        "users": 9,  # alice bob carol robot old-bot dave erin frank sam
        "by_state": {
            "enrolled": 5,  # alice bob dave erin frank: locked, disabled and cloned still hold a method
            "pending_enrollment": 2,  # carol (an unfinished enrollment) and old-bot (an expired exemption)
            "exempt": 1,  # robot
            "sso": 1,  # sam
        },
        "locked": 1,
        "disabled": 1,
        "methods_by_type": {METHOD_TYPE: {"methods": 6, "users": 5}},
    }
    assert attention(client, org, alice.token) == {
        "locked": ["dave"],
        "cloned_authenticator": ["frank"],
        "push_denied_not_me": [],
        "disabled": ["erin"],
    }
    response = client.get(f"/api/v1/organizations/{org}/attention", headers=bearer(alice.token)).json()
    (dave,) = response["locked"]
    assert dave["locked"] is True and "locked" in dave["flags"]
    (frank,) = response["cloned_authenticator"]
    assert "cloned_authenticator" in frank["flags"] and frank["methods"][0]["cloned_at"]
    (erin,) = response["disabled"]
    assert erin["status"] == "disabled"


def test_report_follows_reset_unlock_and_exemption_changes(twofold, client):
    org, alice, accounts = build_organization(twofold, client)
    headers = bearer(alice.token)

    # The cloned authenticator is dealt with by an MFA reset: frank is pending enrollment again.
    reset = client.post(f"/api/v1/organizations/{org}/users/{accounts['frank'].user.id}/mfa/reset", headers=headers)
    assert reset.status_code == 204, reset.text
    unlocked = client.post(f"/api/v1/organizations/{org}/users/{accounts['dave'].user.id}/unlock", headers=headers)
    assert unlocked.status_code == 204, unlocked.text
    removed = client.delete(
        f"/api/v1/organizations/{org}/identity-providers/local/exempt-accounts/{accounts['robot'].user.id}",
        headers=headers,
    )
    assert removed.status_code == 204, removed.text

    body = report(client, org, alice.token)
    assert body["users"] == 9
    assert body["by_state"] == {"enrolled": 4, "pending_enrollment": 4, "exempt": 0, "sso": 1}
    assert (body["locked"], body["disabled"]) == (0, 1)
    assert body["methods_by_type"] == {METHOD_TYPE: {"methods": 5, "users": 4}}
    assert attention(client, org, alice.token) == {
        "locked": [],
        "cloned_authenticator": [],
        "push_denied_not_me": [],
        "disabled": ["erin"],
    }


def test_report_and_attention_for_a_new_organization(twofold, client):
    org, alice = admin_session(twofold, client)
    assert report(client, org, alice.token) == {
        "users": 1,
        "by_state": {"enrolled": 1, "pending_enrollment": 0, "exempt": 0, "sso": 0},
        "locked": 0,
        "disabled": 0,
        "methods_by_type": {METHOD_TYPE: {"methods": 1, "users": 1}},
    }
    assert attention(client, org, alice.token) == {
        "locked": [],
        "cloned_authenticator": [],
        "push_denied_not_me": [],
        "disabled": [],
    }


def test_report_and_attention_are_for_the_organization_s_administrators(twofold, client):
    org, alice, accounts = build_organization(twofold, client)
    paths = [f"/api/v1/organizations/{org}/mfa-report", f"/api/v1/organizations/{org}/attention"]
    half = login(client, alice).json()["transaction"]  # password only: not a session
    for path in paths:
        assert_problem(client.get(path, headers=bearer(accounts["bob"].token)), 403, "forbidden")
        assert_problem(client.get(path, headers=bearer(accounts["gina"].token)), 404, "not_found")
        assert client.get(path).status_code == 401
        assert client.get(path, headers=bearer("not-a-token")).status_code == 401
        assert client.get(path, headers=bearer(half)).status_code == 401
        assert_problem(
            client.get(path.replace(org, "no-such-organization"), headers=bearer(alice.token)), 404, "not_found"
        )
    # Reading needs no fresh step-up.
    expire_step_up(twofold, str(alice.token))
    assert report(client, org, alice.token)["users"] == 9
    assert attention(client, org, alice.token)["locked"] == ["dave"]
