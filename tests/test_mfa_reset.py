"""Administrator MFA reset (R7; API.md `POST /api/v1/organizations/{org}/users/{id}/mfa/reset` ★ and
`twofold users reset-mfa USERNAME`): every method (pending ones too) and recovery code of the user is
deleted, every session and open login transaction ends, the reset is audited without a secret, the user
is told by email, and the next login forces a new enrollment. Only an administrator of the user's own
organization with a fresh step-up may do it."""

from __future__ import annotations

import os
from typing import Any

import pytest
from sqlalchemy import func, select

from twofold.cli.main import main
from twofold.container import Twofold
from twofold.storage import tables

from .conftest import PUBLIC_URL, SECRET_KEY
from .support.flows import bearer, create_organization, create_user, enroll, login, sign_in
from .support.methods import METHOD_TYPE
from .support.totp import code_at_step, current_step, enroll_totp
from .test_accounts import create_sso_user
from .test_admin_api import admin_session, assert_problem, expire_step_up
from .test_audit import all_events

RESET_SUBJECT = "Your multi-factor authentication was reset"


def reset(client: Any, org: str, token: str | None, user_id: str) -> Any:
    return client.post(f"/api/v1/organizations/{org}/users/{user_id}/mfa/reset", headers=bearer(token))


def method_rows(twofold: Twofold, user_id: str) -> list[Any]:
    """Every stored method of the user, active or pending."""
    with twofold.uow.engine.connect() as connection:
        return list(
            connection.execute(
                select(tables.verification_methods).where(tables.verification_methods.c.user_id == user_id)
            ).all()
        )


def recovery_code_count(twofold: Twofold, user_id: str) -> int:
    codes = tables.recovery_codes
    with twofold.uow.engine.connect() as connection:
        return int(
            connection.execute(select(func.count()).select_from(codes).where(codes.c.user_id == user_id)).scalar_one()
        )


def audit_rows(twofold: Twofold, event_type: str) -> list[Any]:
    with twofold.uow.engine.connect() as connection:
        return list(
            connection.execute(select(tables.audit_events).where(tables.audit_events.c.type == event_type)).all()
        )


def mails_to(twofold: Twofold, address: str, subject: str) -> list[str]:
    notifier: Any = twofold.notifier  # the LogNotifier of the tests keeps what it was given in `sent`
    return [body for to, sent_subject, body in notifier.sent if to == address and sent_subject == subject]


def verify(client: Any, transaction: str, code: str | None, verification_type: str = METHOD_TYPE) -> Any:
    return client.post(
        "/api/v1/login/verify", json={"transaction": transaction, "type": verification_type, "code": code}
    )


def test_reset_deletes_factors_ends_sessions_and_forces_enrollment(twofold, client):
    org, alice = admin_session(twofold, client)
    organization = twofold.accounts.root_by_name("Acme")
    bob = enroll(client, create_user(twofold, organization, "bob"))
    first_session = bob.token
    second_session = sign_in(client, bob)
    # A login that stopped after the password step: its transaction must die with the reset.
    open_transaction = login(client, bob).json()["transaction"]
    codes_before = recovery_code_count(twofold, bob.user.id)
    assert codes_before > 0 and len(method_rows(twofold, bob.user.id)) == 1

    response = reset(client, org, alice.token, bob.user.id)
    assert response.status_code == 204, response.text
    assert response.content == b""

    assert method_rows(twofold, bob.user.id) == []
    assert recovery_code_count(twofold, bob.user.id) == 0
    for token in (first_session, second_session):
        assert client.get("/api/v1/me", headers=bearer(token)).status_code == 401
    assert_problem(verify(client, open_transaction, bob.code), 410, "transaction_expired")
    after = login(client, bob)
    assert after.status_code == 200, after.text
    assert after.json()["status"] == "enrollment_required"
    assert METHOD_TYPE in after.json()["enrollable_types"]
    # The administrator's own session is untouched.
    assert client.get("/api/v1/me", headers=bearer(alice.token)).status_code == 200

    (event,) = all_events(client, org, str(alice.token), type="mfa.reset")
    assert event["actor_id"] == alice.user.id and event["subject_id"] == bob.user.id
    assert event["details"] == {
        "by": alice.user.id,
        "methods_deleted": 1,
        "method_types": [METHOD_TYPE],
        "recovery_codes_deleted": codes_before,
        "sessions_ended": 2,
    }
    # Nothing secret reaches the audit trail.
    assert bob.code is not None and bob.code not in str(event)
    assert bob.password not in str(event)

    (mail,) = mails_to(twofold, "bob@example.com", RESET_SUBJECT)
    assert "register a verification method" in mail
    assert bob.code not in mail

    # The user enrolls afresh and signs in with the new factor only.
    old_code = bob.code
    enroll(client, bob)
    assert bob.code != old_code
    assert client.get("/api/v1/me", headers=bearer(bob.token)).status_code == 200


def test_reset_is_refused_without_permission_step_up_or_a_full_session(twofold, client):
    org, alice = admin_session(twofold, client)
    acme = twofold.accounts.root_by_name("Acme")
    bob = enroll(client, create_user(twofold, acme, "bob"))
    carol = enroll(client, create_user(twofold, acme, "carol"))
    globex, gina = admin_session(twofold, client, "Globex", "gina")
    gus = enroll(client, create_user(twofold, twofold.accounts.root_by_name("Globex"), "gus"))
    protected = {account.user.id: len(method_rows(twofold, account.user.id)) for account in (carol, gus, bob)}

    # A user of the same organization without the administrator role.
    assert_problem(reset(client, org, bob.token, carol.user.id), 403, "forbidden")
    # Another organization's administrator: the organization does not exist for her.
    assert_problem(reset(client, org, gina.token, carol.user.id), 404, "not_found")
    # A user of another organization, named through the administrator's own organization.
    assert_problem(reset(client, org, alice.token, gus.user.id), 404, "not_found")
    # Another organization's URL, with a user that belongs there.
    assert_problem(reset(client, globex, alice.token, gus.user.id), 404, "not_found")
    assert_problem(reset(client, org, alice.token, "no-such-user"), 404, "not_found")
    # No session, or a password-only login transaction presented as a bearer token.
    assert reset(client, org, None, carol.user.id).status_code == 401
    half = login(client, alice).json()
    assert half["status"] == "mfa_required"
    assert reset(client, org, half["transaction"], carol.user.id).status_code == 401

    # A stale step-up: refused, and nothing is deleted.
    expire_step_up(twofold, str(alice.token))
    assert_problem(reset(client, org, alice.token, carol.user.id), 403, "step_up_required")

    for user_id, count in protected.items():
        assert len(method_rows(twofold, user_id)) == count == 1
    assert recovery_code_count(twofold, carol.user.id) > 0
    assert client.get("/api/v1/me", headers=bearer(carol.token)).status_code == 200
    assert login(client, carol).json()["status"] == "mfa_required"
    assert audit_rows(twofold, "mfa.reset") == []
    assert not any(mails_to(twofold, f"{name}@example.com", RESET_SUBJECT) for name in ("bob", "carol", "gus"))

    # A step-up restores the right (the refusal was about freshness, not the role).
    stepped = client.post(
        "/api/v1/me/step-up", json={"type": METHOD_TYPE, "code": alice.code}, headers=bearer(alice.token)
    )
    assert stepped.status_code == 200, stepped.text
    assert reset(client, org, alice.token, carol.user.id).status_code == 204


def test_reset_of_an_authenticator_app_deletes_recovery_codes_and_pending_enrollments(product_twofold, product_client):
    client = product_client
    organization, alice_account = create_organization(product_twofold)
    org = organization.id
    alice = enroll_totp(client, alice_account)
    bob = enroll_totp(client, create_user(product_twofold, organization, "bob"))
    assert len(bob.recovery_codes) > 0
    # Bob started adding a second app from his account and never finished.
    started = client.post("/api/v1/me/methods", json={"type": "totp", "name": "Tablet"}, headers=bearer(bob.token))
    assert started.status_code == 201, started.text
    statuses = sorted(row.status for row in method_rows(product_twofold, bob.account.user.id))
    assert statuses == ["active", "pending"]
    # Carol has no method yet and stopped in the middle of her forced enrollment.
    carol = create_user(product_twofold, organization, "carol")
    first = login(client, carol).json()
    assert first["status"] == "enrollment_required"
    forced = client.post(
        "/api/v1/login/enroll", json={"transaction": first["transaction"], "type": "totp", "name": "Phone"}
    )
    assert forced.status_code == 200, forced.text
    assert [row.status for row in method_rows(product_twofold, carol.user.id)] == ["pending"]

    for user in (bob.account.user, carol.user):
        response = reset(client, org, alice.token, user.id)
        assert response.status_code == 204, response.text

    assert method_rows(product_twofold, bob.account.user.id) == []
    assert method_rows(product_twofold, carol.user.id) == []
    assert recovery_code_count(product_twofold, bob.account.user.id) == 0
    # Carol's unfinished enrollment cannot be completed on the transaction that started it.
    completed = client.post(
        "/api/v1/login/enroll/complete",
        json={
            "transaction": first["transaction"],
            "enrollment_id": forced.json()["enrollment_id"],
            "code": code_at_step(forced.json()["secret"], current_step()),
        },
    )
    assert_problem(completed, 410, "transaction_expired")
    assert bob.token is not None
    assert client.get("/api/v1/me", headers=bearer(bob.token)).status_code == 401

    # After the reset an old recovery code opens nothing: the login insists on a new enrollment.
    after = login(client, bob.account)
    assert after.json()["status"] == "enrollment_required", after.text
    old_code = verify(client, after.json()["transaction"], bob.recovery_codes[0], "recovery_code")
    assert_problem(old_code, 403, "forbidden")
    again = login(client, bob.account).json()
    assert again["status"] == "enrollment_required"
    assert "recovery_codes_available" not in again

    events = {e["subject_id"]: e for e in all_events(client, org, str(alice.token), type="mfa.reset")}
    assert events[bob.account.user.id]["details"] == {
        "by": alice.account.user.id,
        "methods_deleted": 1,  # the pending app is deleted but was never an active method
        "method_types": ["totp"],
        "recovery_codes_deleted": len(bob.recovery_codes),
        "sessions_ended": 1,
    }
    assert events[carol.user.id]["details"]["methods_deleted"] == 0
    assert events[carol.user.id]["details"]["method_types"] == []
    for event in events.values():
        assert event["actor_id"] == alice.account.user.id
        text_of_event = str(event)
        assert bob.secret not in text_of_event and forced.json()["secret"] not in text_of_event
        assert not any(code in text_of_event for code in bob.recovery_codes)
    assert mails_to(product_twofold, "bob@example.com", RESET_SUBJECT)
    assert mails_to(product_twofold, "carol@example.com", RESET_SUBJECT)

    # A fresh authenticator app, with a fresh set of recovery codes none of which is an old one.
    renewed = enroll_totp(client, bob.account, name="New phone")
    assert renewed.recovery_codes and not set(renewed.recovery_codes) & set(bob.recovery_codes)
    # Bob's unfinished second app went with the rest: not even his new session can complete it.
    stale = client.post(
        f"/api/v1/me/methods/{started.json()['enrollment_id']}/complete",
        json={"code": code_at_step(started.json()["secret"], current_step())},
        headers=bearer(renewed.token),
    )
    assert_problem(stale, 404, "not_found")
    assert [row.name for row in method_rows(product_twofold, bob.account.user.id)] == ["New phone"]


def test_reset_of_a_single_sign_on_account_is_refused(twofold, client):
    org, alice = admin_session(twofold, client)
    sam = create_sso_user(twofold, twofold.accounts.root_by_name("Acme"), "sam")
    assert_problem(reset(client, org, alice.token, sam.user.id), 422, "validation_error")
    assert audit_rows(twofold, "mfa.reset") == []


# -- the operator's command ------------------------------------------------------------------------


@pytest.fixture
def operator_env(database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """The environment `twofold` reads, pointed at the test database (no .env file in the directory)."""
    for name in list(os.environ):
        if name.startswith("TWOFOLD_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TWOFOLD_DATABASE_URL", database_url)
    monkeypatch.setenv("TWOFOLD_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("TWOFOLD_PUBLIC_URL", PUBLIC_URL)
    monkeypatch.setenv("TWOFOLD_ENV", "prod")
    monkeypatch.chdir(tmp_path)


def test_operator_resets_mfa_from_the_command_line(twofold, client, operator_env, capsys):
    organization, _ = create_organization(twofold)
    bob = enroll(client, create_user(twofold, organization, "bob"))
    transaction = login(client, bob).json()["transaction"]

    assert main(["users", "reset-mfa", "BOB"]) == 0
    out, err = capsys.readouterr()
    assert "Reset the multi-factor authentication of bob" in out
    assert err == ""

    assert method_rows(twofold, bob.user.id) == []
    assert recovery_code_count(twofold, bob.user.id) == 0
    assert client.get("/api/v1/me", headers=bearer(bob.token)).status_code == 401
    assert_problem(verify(client, transaction, bob.code), 410, "transaction_expired")
    assert login(client, bob).json()["status"] == "enrollment_required"
    (event,) = audit_rows(twofold, "mfa.reset")
    assert event.actor_id is None and event.subject_id == bob.user.id
    assert event.details["by"] == "operator"
    assert event.details["methods_deleted"] == 1 and event.details["sessions_ended"] == 1


def test_operator_reset_of_an_unknown_or_sso_user_fails(twofold, operator_env, capsys):
    organization, _ = create_organization(twofold)
    create_sso_user(twofold, organization, "sam")

    assert main(["users", "reset-mfa", "nobody"]) != 0
    out, err = capsys.readouterr()
    assert "nobody" in err and "Traceback" not in err
    assert out == ""

    assert main(["users", "reset-mfa", "sam"]) != 0
    _, err = capsys.readouterr()
    assert "single sign-on" in err
    assert audit_rows(twofold, "mfa.reset") == []
