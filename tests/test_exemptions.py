"""The local identity provider's exempt list (R4; API.md "exempt-accounts"): only local test-automation
and RPA service accounts (a human only before the cut-off date), never an SSO account or an Organization
Administrator; every exemption expires (default 90 days, at most a year) and an expired one no longer
applies; removing one ends the account's sessions; an exempt account cannot become an administrator,
not even when both requests race."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from twofold.container import Twofold
from twofold.domain.clock import utcnow
from twofold.domain.entities import ORGANIZATION_ADMINISTRATOR
from twofold.storage import tables

from .support.flows import (
    Account,
    bearer,
    create_organization,
    create_user,
    enroll,
    login,
    run_together,
)
from .test_accounts import create_sso_user
from .test_admin_api import admin_session, assert_problem, client_for, expire_step_up
from .test_audit import all_events, parse
from .test_mfa_reset import audit_rows

ROOT = "/api/v1/organizations/{org}/identity-providers/local/exempt-accounts"


def exempt_url(org: str, user_id: str | None = None) -> str:
    return ROOT.format(org=org) + (f"/{user_id}" if user_id else "")


def put_exemption(client: Any, org: str, token: str | None, user_id: str, body: Any = None) -> Any:
    if body is None:
        return client.put(exempt_url(org, user_id), headers=bearer(token))
    return client.put(exempt_url(org, user_id), json=body, headers=bearer(token))


def remove_exemption(client: Any, org: str, token: str | None, user_id: str) -> Any:
    return client.delete(exempt_url(org, user_id), headers=bearer(token))


def exempt_list(client: Any, org: str, token: str | None) -> list[dict[str, Any]]:
    response = client.get(exempt_url(org), headers=bearer(token))
    assert response.status_code == 200, response.text
    return list(response.json())


def candidate_names(client: Any, org: str, token: str | None) -> list[str]:
    response = client.get(exempt_url(org) + "/candidates", headers=bearer(token))
    assert response.status_code == 200, response.text
    return [item["username"] for item in response.json()]


def grant_admin(client: Any, org: str, token: str | None, user_id: str) -> Any:
    return client.put(
        f"/api/v1/organizations/{org}/users/{user_id}/permissions/{ORGANIZATION_ADMINISTRATOR}", headers=bearer(token)
    )


def service(twofold: Twofold, name: str, service_type: str = "rpa", organization: str = "Acme") -> Account:
    return create_user(
        twofold, twofold.accounts.root_by_name(organization), name, kind="service", service_type=service_type
    )


def exemption_row(twofold: Twofold, user_id: str) -> Any:
    with twofold.uow.engine.connect() as connection:
        return connection.execute(select(tables.exemptions).where(tables.exemptions.c.user_id == user_id)).first()


def holds_admin(twofold: Twofold, user_id: str) -> bool:
    with twofold.uow.engine.connect() as connection:
        return (
            connection.execute(
                select(tables.permissions).where(
                    tables.permissions.c.user_id == user_id, tables.permissions.c.name == ORGANIZATION_ADMINISTRATOR
                )
            ).first()
            is not None
        )


def expire_exemption(twofold: Twofold, user_id: str) -> None:
    """Move an exemption's expiry into the past (storage-level set-up: no waiting 90 days)."""
    with twofold.uow.engine.begin() as connection:
        connection.execute(
            update(tables.exemptions)
            .where(tables.exemptions.c.user_id == user_id)
            .values(expires_at=utcnow() - timedelta(minutes=1))
        )


def rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def test_exempt_list_renew_and_remove(twofold, client):
    org, alice = admin_session(twofold, client)
    robot = service(twofold, "robot", "rpa")
    tester = service(twofold, "tester", "test_automation")
    assert exempt_list(client, org, alice.token) == []
    assert candidate_names(client, org, alice.token) == ["robot", "tester"]

    # Without a body the exemption lasts the default 90 days.
    before = utcnow()
    added = put_exemption(client, org, alice.token, robot.user.id)
    assert added.status_code == 204, added.text
    after = utcnow()
    explicit = (utcnow() + timedelta(days=30)).replace(microsecond=0)
    added = put_exemption(client, org, alice.token, tester.user.id, {"expires_at": rfc3339(explicit)})
    assert added.status_code == 204, added.text

    listed = {item["username"]: item for item in exempt_list(client, org, alice.token)}
    assert set(listed) == {"robot", "tester"}
    first = listed["robot"]
    assert first["user_id"] == robot.user.id and first["service_type"] == "rpa" and first["kind"] == "service"
    assert first["exempted_by"] == alice.user.id and first["exempted_by_username"] == "alice"
    assert before + timedelta(days=90) <= parse(first["expires_at"]) <= after + timedelta(days=90)
    assert before - timedelta(seconds=1) <= parse(first["exempted_at"]) <= after
    assert first["days_left"] == 90 and first["in_force"] is True
    assert parse(listed["tester"]["expires_at"]) == explicit
    assert listed["tester"]["service_type"] == "test_automation"
    assert candidate_names(client, org, alice.token) == []

    # An exempt service account signs in with its password alone.
    signed_in = login(client, robot)
    assert signed_in.status_code == 200, signed_in.text
    assert signed_in.json()["status"] == "authenticated" and signed_in.json()["amr"] == ["pwd"]
    robot.token = signed_in.json()["token"]
    me = client.get("/api/v1/me", headers=bearer(robot.token))
    assert me.status_code == 200 and me.json()["mfa_exempt"] is True

    # A second PUT renews the expiry; the account stays listed once.
    renewed_until = (utcnow() + timedelta(days=200)).replace(microsecond=0)
    renewed = put_exemption(client, org, alice.token, robot.user.id, {"expires_at": rfc3339(renewed_until)})
    assert renewed.status_code == 204, renewed.text
    listed = {item["username"]: item for item in exempt_list(client, org, alice.token)}
    assert len(listed) == 2 and parse(listed["robot"]["expires_at"]) == renewed_until

    # Removing the exemption ends the password-only session at once.
    removed = remove_exemption(client, org, alice.token, robot.user.id)
    assert removed.status_code == 204, removed.text
    assert client.get("/api/v1/me", headers=bearer(robot.token)).status_code == 401
    assert [item["username"] for item in exempt_list(client, org, alice.token)] == ["tester"]
    assert login(client, robot).json()["status"] == "enrollment_required"
    assert_problem(remove_exemption(client, org, alice.token, robot.user.id), 404, "not_found")
    assert candidate_names(client, org, alice.token) == ["robot"]

    events = all_events(client, org, str(alice.token))
    ours = [e for e in events if e["type"].startswith("exemption.")]
    assert sorted((e["type"], e["subject_id"]) for e in ours) == sorted(
        [
            ("exemption.added", robot.user.id),
            ("exemption.added", tester.user.id),
            ("exemption.renewed", robot.user.id),
            ("exemption.removed", robot.user.id),
        ]
    )
    assert all(e["actor_id"] == alice.user.id for e in ours)
    by_type = {(e["type"], e["subject_id"]): e["details"] for e in ours}
    assert parse(by_type[("exemption.added", tester.user.id)]["expires_at"]) == explicit
    assert parse(by_type[("exemption.renewed", robot.user.id)]["expires_at"]) == renewed_until
    assert by_type[("exemption.removed", robot.user.id)]["sessions_ended"] == 1


def test_expiry_must_be_in_the_future_and_within_a_year(twofold, client):
    org, alice = admin_session(twofold, client)
    robot = service(twofold, "robot")
    now = utcnow()
    for body in (
        {"expires_at": rfc3339(now + timedelta(days=366))},
        {"expires_at": rfc3339(now + timedelta(days=3650))},
        {"expires_at": rfc3339(now - timedelta(minutes=5))},
        {"expires_at": "not a date"},
        {"expires_at": "2030-02-31T00:00:00Z"},
        {"expires_at": 12.5e300},
        {"until": rfc3339(now + timedelta(days=10))},
    ):
        assert_problem(put_exemption(client, org, alice.token, robot.user.id, body), 422, "validation_error")
    assert exempt_list(client, org, alice.token) == []
    assert audit_rows(twofold, "exemption.added") == []
    assert login(client, robot).json()["status"] == "enrollment_required"

    # Just under a year is allowed.
    within = (utcnow() + timedelta(days=364)).replace(microsecond=0)
    allowed = put_exemption(client, org, alice.token, robot.user.id, {"expires_at": rfc3339(within)})
    assert allowed.status_code == 204, allowed.text
    assert parse(exempt_list(client, org, alice.token)[0]["expires_at"]) == within


def test_refusals_name_the_reason_and_are_audited(twofold, client):
    org, alice = admin_session(twofold, client)
    acme = twofold.accounts.root_by_name("Acme")
    bob = create_user(twofold, acme, "bob")
    sam = create_sso_user(twofold, acme, "sam")
    operator = service(twofold, "operator-bot")
    granted = grant_admin(client, org, alice.token, operator.user.id)
    assert granted.status_code == 204, granted.text
    create_organization(twofold, "Globex", "gina")
    gus = service(twofold, "gus", organization="Globex")

    refusals = {
        bob.user.id: "2023-08-01",  # a human after the (default) cut-off
        alice.user.id: "Organization Administrator",
        operator.user.id: "Organization Administrator",  # a service account, but an administrator
        sam.user.id: "single sign-on",
    }
    for user_id, reason in refusals.items():
        body = assert_problem(put_exemption(client, org, alice.token, user_id), 422, "not_exemptable")
        assert reason in body["detail"], body
    assert_problem(put_exemption(client, org, alice.token, "no-such-user"), 404, "not_found")
    assert_problem(put_exemption(client, org, alice.token, gus.user.id), 404, "not_found")

    assert exempt_list(client, org, alice.token) == []
    refused = all_events(client, org, str(alice.token), type="exemption.refused")
    assert sorted(e["subject_id"] for e in refused) == sorted(refusals)
    for event in refused:
        assert event["actor_id"] == alice.user.id
        assert refusals[event["subject_id"]] in event["details"]["reason"]
    assert audit_rows(twofold, "exemption.added") == []
    # The refused accounts still need MFA.
    assert login(client, bob).json()["status"] == "enrollment_required"
    assert login(client, operator).json()["status"] == "enrollment_required"


def test_a_human_may_be_exempted_only_before_the_cut_off(make_twofold):
    before_cutoff = make_twofold(user_exemption_cutoff=date.today() + timedelta(days=365))
    with client_for(before_cutoff) as client:
        org, alice = admin_session(before_cutoff, client)
        bob = create_user(before_cutoff, before_cutoff.accounts.root_by_name("Acme"), "bob")
        assert candidate_names(client, org, alice.token) == ["bob"]
        added = put_exemption(client, org, alice.token, bob.user.id)
        assert added.status_code == 204, added.text
        signed_in = login(client, bob).json()
        assert signed_in["status"] == "authenticated" and signed_in["amr"] == ["pwd"]
        assert candidate_names(client, org, alice.token) == []

    # The same database once the cut-off has passed: the old exemption no longer applies.
    after_cutoff = make_twofold(user_exemption_cutoff=date.today() - timedelta(days=1))
    with client_for(after_cutoff) as client:
        assert login(client, bob).json()["status"] == "enrollment_required"
        (listed,) = exempt_list(client, org, alice.token)
        assert listed["username"] == "bob" and listed["in_force"] is False
        assert candidate_names(client, org, alice.token) == []
        # Renewing it is refused now.
        body = assert_problem(put_exemption(client, org, alice.token, bob.user.id), 422, "not_exemptable")
        assert (date.today() - timedelta(days=1)).isoformat() in body["detail"]


def test_an_expired_exemption_no_longer_applies(twofold, client):
    org, alice = admin_session(twofold, client)
    robot = service(twofold, "robot")
    assert put_exemption(client, org, alice.token, robot.user.id).status_code == 204
    assert login(client, robot).json()["status"] == "authenticated"

    expire_exemption(twofold, robot.user.id)
    assert login(client, robot).json()["status"] == "enrollment_required"
    (listed,) = exempt_list(client, org, alice.token)
    assert listed["in_force"] is False and listed["days_left"] == 0
    user = client.get(f"/api/v1/organizations/{org}/users/{robot.user.id}", headers=bearer(alice.token)).json()
    assert user["mfa_exempt"] is False

    # A renewal puts it back in force.
    assert put_exemption(client, org, alice.token, robot.user.id).status_code == 204
    assert login(client, robot).json()["status"] == "authenticated"
    assert [e["subject_id"] for e in all_events(client, org, str(alice.token), type="exemption.renewed")] == [
        robot.user.id
    ]


def test_an_enrolled_account_whose_exemption_expired_is_asked_for_mfa(twofold, client):
    org, alice = admin_session(twofold, client)
    robot = enroll(client, service(twofold, "robot"))
    assert put_exemption(client, org, alice.token, robot.user.id).status_code == 204
    assert login(client, robot).json()["status"] == "authenticated"
    expire_exemption(twofold, robot.user.id)
    assert login(client, robot).json()["status"] == "mfa_required"


def test_candidates_are_only_exemptable_accounts_not_yet_listed(twofold, client):
    org, alice = admin_session(twofold, client)
    acme = twofold.accounts.root_by_name("Acme")
    service(twofold, "robot", "rpa")
    service(twofold, "tester", "test_automation")
    create_user(twofold, acme, "bob")  # a human after the cut-off
    create_sso_user(twofold, acme, "sam")
    disabled = service(twofold, "dormant")
    patched = client.patch(
        f"/api/v1/organizations/{org}/users/{disabled.user.id}",
        json={"status": "disabled"},
        headers=bearer(alice.token),
    )
    assert patched.status_code == 200, patched.text
    already = service(twofold, "already")
    assert put_exemption(client, org, alice.token, already.user.id).status_code == 204
    administrator = service(twofold, "admin-bot")
    assert grant_admin(client, org, alice.token, administrator.user.id).status_code == 204
    create_organization(twofold, "Globex", "gina")
    service(twofold, "globex-bot", organization="Globex")

    response = client.get(exempt_url(org) + "/candidates", headers=bearer(alice.token))
    assert response.status_code == 200, response.text
    assert [(c["username"], c["kind"], c["service_type"]) for c in response.json()] == [
        ("robot", "service", "rpa"),
        ("tester", "service", "test_automation"),
    ]
    assert set(response.json()[0]) == {"user_id", "username", "display_name", "kind", "service_type"}


def test_an_exempt_account_cannot_be_made_an_administrator(twofold, client):
    org, alice = admin_session(twofold, client)
    robot = service(twofold, "robot")
    assert put_exemption(client, org, alice.token, robot.user.id).status_code == 204
    assert_problem(grant_admin(client, org, alice.token, robot.user.id), 422, "validation_error")
    assert not holds_admin(twofold, robot.user.id)
    user = client.get(f"/api/v1/organizations/{org}/users/{robot.user.id}", headers=bearer(alice.token)).json()
    assert user["is_organization_administrator"] is False and user["mfa_exempt"] is True


def test_exempt_list_needs_an_administrator_of_the_organization_and_a_fresh_step_up(twofold, client):
    org, alice = admin_session(twofold, client)
    robot = service(twofold, "robot")
    listed = service(twofold, "listed")
    assert put_exemption(client, org, alice.token, listed.user.id).status_code == 204
    listed.token = login(client, listed).json()["token"]
    bob = enroll(client, create_user(twofold, twofold.accounts.root_by_name("Acme"), "bob"))
    _, gina = admin_session(twofold, client, "Globex", "gina")

    calls = {
        "list": lambda token: client.get(exempt_url(org), headers=bearer(token)),
        "candidates": lambda token: client.get(exempt_url(org) + "/candidates", headers=bearer(token)),
        "put": lambda token: put_exemption(client, org, token, robot.user.id),
        "delete": lambda token: remove_exemption(client, org, token, listed.user.id),
    }
    for name, call in calls.items():
        assert_problem(call(bob.token), 403, "forbidden")
        assert_problem(call(gina.token), 404, "not_found")
        assert call(None).status_code == 401, name

    expire_step_up(twofold, str(alice.token))
    assert_problem(put_exemption(client, org, alice.token, robot.user.id), 403, "step_up_required")
    assert_problem(remove_exemption(client, org, alice.token, listed.user.id), 403, "step_up_required")
    # Reading needs no step-up.
    assert [item["username"] for item in exempt_list(client, org, alice.token)] == ["listed"]
    assert candidate_names(client, org, alice.token) == ["robot"]

    assert exemption_row(twofold, robot.user.id) is None
    assert exemption_row(twofold, listed.user.id) is not None
    assert client.get("/api/v1/me", headers=bearer(listed.token)).status_code == 200
    assert audit_rows(twofold, "exemption.removed") == []
    assert [row.subject_id for row in audit_rows(twofold, "exemption.added")] == [listed.user.id]


def exempt_and_grant(org: str, token: str | None, user_id: str) -> list[Callable[[Any], Any]]:
    """The two requests R4 forbids from both succeeding, each for a client of its own."""
    return [
        lambda own: put_exemption(own, org, token, user_id),
        lambda own: grant_admin(own, org, token, user_id),
    ]


def test_an_exemption_and_an_administrator_grant_never_both_hold(twofold, client):
    org, alice = admin_session(twofold, client)
    for round_number in range(6):
        user_id = service(twofold, f"robot-{round_number}").user.id
        calls = exempt_and_grant(org, alice.token, user_id)
        if round_number % 2:
            calls.reverse()  # start the two in both orders
        responses = run_together(calls, lambda: client_for(twofold))
        assert sorted(response.status_code for response in responses) == [204, 422], [r.text for r in responses]
        exempt, admin = exemption_row(twofold, user_id) is not None, holds_admin(twofold, user_id)
        assert exempt != admin, (exempt, admin)
        # The loser's refusal is the one R4 names for its side.
        refused = next(response for response in responses if response.status_code == 422)
        assert refused.json()["code"] == ("validation_error" if exempt else "not_exemptable"), refused.text
