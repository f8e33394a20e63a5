"""Audit events (R9; issue 2 items 8-9; API.md "audit-events"; SECURITY.md "Codes, seeds, passwords and
tokens never appear in logs or audit details")."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from sqlalchemy import text

from twofold.container import Twofold

from .support.flows import ADMIN_PASSWORD, USER_PASSWORD, bearer, create_user, enroll, login, sign_in
from .support.methods import METHOD_TYPE
from .test_admin_api import admin_session, assert_problem, client_for, new_user

WRONG_PASSWORD = "wrong-password-Zq81fe0c"
WRONG_CODE = "badc0de5eed"
NEW_PASSWORD = "brand new passphrase 7731"


def all_events(client: Any, org: str, token: str, **params: Any) -> list[dict[str, Any]]:
    """Every event, walking the cursor."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = client.get(f"/api/v1/organizations/{org}/audit-events", params=query, headers=bearer(token))
        assert response.status_code == 200, response.text
        items += response.json()["items"]
        cursor = response.json()["next_cursor"]
        if cursor is None:
            return items


def parse(at: str) -> datetime:
    return datetime.fromisoformat(at.replace("Z", "+00:00"))


def full_flow(twofold: Twofold, client: Any) -> dict[str, Any]:
    """Login steps, failures, a lock and admin changes; returns every secret that went over the wire."""
    secrets: list[str] = [ADMIN_PASSWORD, USER_PASSWORD, WRONG_PASSWORD, WRONG_CODE, NEW_PASSWORD]
    org, admin = admin_session(twofold, client)  # enrollment.started, method.enrolled, login.succeeded
    secrets += [admin.code, admin.token]
    headers = bearer(admin.token)

    group = client.post(f"/api/v1/organizations/{org}/business-groups", json={"name": "Ops"}, headers=headers)
    assert group.status_code == 201
    created = new_user(client, org, admin.token, "bob", password=USER_PASSWORD)
    assert created.status_code == 201
    bob_id = created.json()["id"]
    carol = new_user(client, org, admin.token, "carol")  # a set-up link
    setup_token = carol.json()["setup_url"].rsplit("/", 1)[1]
    secrets.append(setup_token)
    assert client.post("/api/v1/setup", json={"token": setup_token, "password": NEW_PASSWORD}).status_code == 204

    first = client.post("/api/v1/login", json={"username": "bob", "password": USER_PASSWORD}).json()
    secrets.append(first["transaction"])
    started = client.post("/api/v1/login/enroll", json={"transaction": first["transaction"], "type": METHOD_TYPE,
                                                        "name": "Phone"}).json()
    bob_code = started["code"]
    done = client.post("/api/v1/login/enroll/complete", json={"transaction": first["transaction"],
                                                              "enrollment_id": started["enrollment_id"],
                                                              "code": bob_code}).json()
    secrets += [bob_code, done["token"]]

    # Failures: a wrong password, an unknown user, wrong codes up to the (lowered) lock.
    assert client.post("/api/v1/login", json={"username": "bob", "password": WRONG_PASSWORD}).status_code == 401
    assert client.post("/api/v1/login", json={"username": "nobody", "password": WRONG_PASSWORD}).status_code == 401
    second = client.post("/api/v1/login", json={"username": "bob", "password": USER_PASSWORD}).json()
    secrets.append(second["transaction"])
    for _ in range(3):
        failed = client.post("/api/v1/login/verify",
                             json={"transaction": second["transaction"], "type": METHOD_TYPE, "code": WRONG_CODE})
        assert failed.status_code == 401
    assert client.post("/api/v1/login", json={"username": "bob", "password": USER_PASSWORD}).status_code == 429

    # Admin changes.
    unlock = client.post(f"/api/v1/organizations/{org}/users/{bob_id}/unlock", headers=headers)
    assert unlock.status_code == 204
    patched = client.patch(f"/api/v1/organizations/{org}/users/{bob_id}", json={"display_name": "Bob"},
                           headers=headers)
    assert patched.status_code == 200
    grant = f"/api/v1/organizations/{org}/users/{bob_id}/permissions/organization_administrator"
    assert client.put(grant, headers=headers).status_code == 204
    assert client.delete(grant, headers=headers).status_code == 204
    third = client.post("/api/v1/login", json={"username": "bob", "password": USER_PASSWORD}).json()
    secrets.append(third["transaction"])
    verified = client.post("/api/v1/login/verify",
                           json={"transaction": third["transaction"], "type": METHOD_TYPE, "code": bob_code})
    assert verified.status_code == 200
    secrets.append(verified.json()["token"])
    changed = client.post("/api/v1/me/password", json={"current_password": USER_PASSWORD,
                                                       "new_password": USER_PASSWORD + " v2"},
                          headers=bearer(verified.json()["token"]))
    assert changed.status_code == 204
    secrets.append(USER_PASSWORD + " v2")
    disabled = client.patch(f"/api/v1/organizations/{org}/users/{bob_id}", json={"status": "disabled"},
                            headers=headers)
    assert disabled.status_code == 200
    refused = client.post("/api/v1/login", json={"username": "bob", "password": USER_PASSWORD + " v2"})
    assert refused.status_code == 401
    assert client.post("/api/v1/password-reset", json={"username": "carol"}).status_code == 202
    reset_token = twofold.notifier.sent[-1][2].split("/password-reset/")[1].split()[0]  # type: ignore[attr-defined]
    secrets.append(reset_token)
    return {"org": org, "admin": admin, "bob_id": bob_id, "secrets": [s for s in secrets if s]}


def test_audit_records_login_steps_and_admin_changes(make_twofold):
    twofold = make_twofold(mfa_lock_threshold=3)  # the lock is the mechanism under test here, not its number
    with client_for(twofold) as client:
        flow = full_flow(twofold, client)
        org, admin, bob_id = flow["org"], flow["admin"], flow["bob_id"]
        events = all_events(client, org, admin.token)
    types = [e["type"] for e in events]
    for expected in (
        "organization.created",
        "user.created",
        "login.password_verified",
        "enrollment.started",
        "method.enrolled",
        "login.succeeded",
        "login.failed",
        "account.locked",
        "login.refused_locked",
        "business_group.created",
        "user.updated",
        "permission.granted",
        "permission.revoked",
        "account.unlocked",
        "password.set",
        "password.changed",
        "password.reset_requested",
    ):
        assert expected in types, (expected, types)
    for event in events:
        assert set(event) == {"id", "at", "type", "actor_id", "subject_id", "ip", "details"}
    bob_events = [e for e in events if e["subject_id"] == bob_id]
    reasons = [e["details"].get("reason") for e in bob_events if e["type"] == "login.failed"]
    assert "wrong_password" in reasons and "disabled" in reasons
    code_failures = [e for e in bob_events if e["type"] == "login.failed" and e["details"].get("step") == METHOD_TYPE]
    assert len(code_failures) == 3
    assert sorted(e["details"]["attempts_left"] for e in code_failures) == [2, 3, 4]
    locked = [e for e in bob_events if e["type"] == "account.locked"]
    assert len(locked) == 1
    # Admin changes name their actor; login steps come from an address.
    for kind in ("user.updated", "permission.granted", "permission.revoked", "account.unlocked"):
        found = [e for e in bob_events if e["type"] == kind]
        assert found and all(e["actor_id"] == admin.user.id for e in found), kind
    assert all(e["ip"] for e in bob_events if e["type"].startswith("login."))
    group_events = [e for e in events if e["type"] == "business_group.created"]
    assert group_events[0]["details"]["name"] == "Ops"
    # The unknown user's failure is recorded too, outside any organization.
    with twofold.uow.engine.connect() as connection:
        row = connection.execute(
            text("SELECT organization_id, details FROM audit_events WHERE type = 'login.failed' AND subject_id IS NULL")
        ).one()
    assert row.organization_id is None
    details = row.details if isinstance(row.details, dict) else json.loads(row.details)
    assert details["reason"] == "unknown_user"


def test_no_secret_in_audit_details_or_logs(make_twofold, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="twofold")
    twofold = make_twofold(mfa_lock_threshold=3)
    with client_for(twofold) as client:
        flow = full_flow(twofold, client)
        org, admin = flow["org"], flow["admin"]
        token = sign_in(client, admin)
        flow["secrets"].append(token)
        export = client.get(f"/api/v1/organizations/{org}/audit-events", headers={
            **bearer(token), "Accept": "application/x-ndjson"})
        assert export.status_code == 200
    with twofold.uow.engine.connect() as connection:
        stored = [
            (row.type, row.details if isinstance(row.details, str) else json.dumps(row.details))
            for row in connection.execute(text("SELECT type, details FROM audit_events"))
        ]
    assert len(stored) > 30
    logs = caplog.text
    assert "audit login.failed" in logs  # the audit logger did run at this level
    for secret in flow["secrets"]:
        assert secret not in export.text, secret
        assert secret not in logs, secret
        for event_type, details in stored:
            assert secret not in details, (secret, event_type)


def test_audit_filters_and_cursor_paging(make_twofold):
    twofold = make_twofold(mfa_lock_threshold=3)
    with client_for(twofold) as client:
        flow = full_flow(twofold, client)
        org, admin, bob_id = flow["org"], flow["admin"], flow["bob_id"]
        url = f"/api/v1/organizations/{org}/audit-events"
        headers = bearer(admin.token)
        everything = client.get(url, params={"limit": 1000}, headers=headers).json()
        assert everything["next_cursor"] is None
        events = everything["items"]
        assert len(events) > 20
        times = [parse(e["at"]) for e in events]
        assert times == sorted(times, reverse=True)  # newest first

        # limit + cursor: every event exactly once, in the same order.
        paged = all_events(client, org, admin.token, limit=3)
        assert [e["id"] for e in paged] == [e["id"] for e in events]
        assert len({e["id"] for e in paged}) == len(paged)
        first_page = client.get(url, params={"limit": 3}, headers=headers).json()
        assert len(first_page["items"]) == 3 and first_page["next_cursor"]

        failed = all_events(client, org, admin.token, type="login.failed", limit=2)
        assert failed and all(e["type"] == "login.failed" for e in failed)
        assert len(failed) == sum(1 for e in events if e["type"] == "login.failed")
        assert all_events(client, org, admin.token, type="no.such.type") == []

        for_bob = all_events(client, org, admin.token, user_id=bob_id, limit=4)
        assert for_bob and all(bob_id in (e["actor_id"], e["subject_id"]) for e in for_bob)
        assert len(for_bob) == sum(1 for e in events if bob_id in (e["actor_id"], e["subject_id"]))

        middle = events[len(events) // 2]
        since = all_events(client, org, admin.token, since=middle["at"], limit=5)
        assert since and all(parse(e["at"]) >= parse(middle["at"]) for e in since)
        assert len(since) == sum(1 for e in events if parse(e["at"]) >= parse(middle["at"]))
        assert all_events(client, org, admin.token, since="2999-01-01T00:00:00Z") == []
        combined = all_events(client, org, admin.token, type="user.updated", user_id=bob_id, since=middle["at"])
        assert all(e["type"] == "user.updated" for e in combined)

        for bad in ({"limit": 0}, {"limit": 1001}, {"since": "yesterday"}, {"cursor": "garbage!"},
                    {"cursor": "WyJ4Il0"}):
            assert_problem(client.get(url, params=bad, headers=headers), 422, "validation_error")


def test_ndjson_export_streams_every_page(make_twofold):
    twofold = make_twofold(mfa_lock_threshold=3)
    with client_for(twofold) as client:
        flow = full_flow(twofold, client)
        org, admin = flow["org"], flow["admin"]
        url = f"/api/v1/organizations/{org}/audit-events"
        headers = {**bearer(admin.token), "Accept": "application/x-ndjson"}
        expected = all_events(client, org, admin.token, limit=1000)
        exported = client.get(url, params={"limit": 2}, headers=headers)
        assert exported.status_code == 200
        assert exported.headers["content-type"].startswith("application/x-ndjson")
        lines = exported.text.splitlines()
        assert exported.text.endswith("\n")
        rows = [json.loads(line) for line in lines]
        # The request for the export came after `expected` was read: every earlier event is in it, once.
        ids = [r["id"] for r in rows]
        assert len(ids) == len(set(ids))
        assert set(e["id"] for e in expected) <= set(ids)
        assert all(set(r) == {"id", "at", "type", "actor_id", "subject_id", "ip", "details"} for r in rows)
        filtered = client.get(url, params={"type": "login.failed", "limit": 1}, headers=headers)
        filtered_rows = [json.loads(line) for line in filtered.text.splitlines()]
        assert len(filtered_rows) == sum(1 for e in expected if e["type"] == "login.failed")
        assert all(r["type"] == "login.failed" for r in filtered_rows)


def test_audit_of_another_organization_is_not_visible(twofold, client):
    org_a, admin_a = admin_session(twofold, client)
    org_b, admin_b = admin_session(twofold, client, "Globex", "gina")
    gina_id = admin_b.user.id
    assert_problem(
        client.get(f"/api/v1/organizations/{org_b}/audit-events", headers=bearer(admin_a.token)), 404, "not_found"
    )
    assert_problem(
        client.get(f"/api/v1/organizations/{org_b}/audit-events", headers={**bearer(admin_a.token),
                                                                           "Accept": "application/x-ndjson"}),
        404,
        "not_found",
    )
    mine = all_events(client, org_a, admin_a.token)
    assert mine and all(gina_id not in (e["actor_id"], e["subject_id"]) for e in mine)
    # Filtering A's log by a user of B shows nothing of B.
    assert all_events(client, org_a, admin_a.token, user_id=gina_id) == []
    theirs = all_events(client, org_b, admin_b.token)
    assert {e["id"] for e in theirs}.isdisjoint(e["id"] for e in mine)
    # A non-administrator of the organization gets 403.
    bob = create_user(twofold, twofold.accounts.root_by_name("Acme"), "bob")
    enroll(client, bob)
    assert_problem(
        client.get(f"/api/v1/organizations/{org_a}/audit-events", headers=bearer(bob.token)), 403, "forbidden"
    )
    assert login(client, bob).status_code == 200
