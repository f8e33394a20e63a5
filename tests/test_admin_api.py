"""Administration API (issue 2 item 8; API.md "Administration"; SECURITY.md "kind and service type cannot
be changed", "account disable end sessions", "Admin actions need a step-up within 10 minutes")."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import text

from twofold.container import Twofold
from twofold.domain.clock import utcnow
from twofold.web.app import create_app

from .conftest import PUBLIC_URL
from .support.flows import (
    USER_PASSWORD,
    Account,
    bearer,
    create_organization,
    create_user,
    enroll,
    exempt,
    login,
    sign_in,
)
from .support.methods import METHOD_TYPE

PROBLEM_JSON = "application/problem+json"


@contextlib.contextmanager
def client_for(twofold: Twofold) -> Iterator[TestClient]:
    with TestClient(create_app(twofold, housekeeping=False), base_url=PUBLIC_URL) as test_client:
        yield test_client


def admin_session(twofold: Twofold, client: Any, name: str = "Acme", admin: str = "alice") -> tuple[str, Account]:
    """A root organization and its administrator signed in with MFA (fresh step-up)."""
    organization, account = create_organization(twofold, name, admin)
    enroll(client, account)
    return organization.id, account


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body = response.json()
    assert body["code"] == code, body
    assert body["status"] == status
    return dict(body)


def new_user(client: Any, org: str, token: str, username: str, **fields: Any) -> Any:
    body = {"username": username, "email": f"{username}@example.com", "kind": "user", **fields}
    return client.post(f"/api/v1/organizations/{org}/users", json=body, headers=bearer(token))


def expire_step_up(twofold: Twofold, token: str) -> None:
    """Make the session's last MFA older than the step-up window (storage-level set-up, no sleeping)."""
    from twofold.services.crypto import hash_token

    with twofold.uow() as uow:
        session = uow.sessions.by_token_hash(hash_token(token))
        assert session is not None
        session.step_up_until = utcnow() - timedelta(seconds=1)


# -- organization and business groups -------------------------------------------------------------


def test_organization_with_nested_business_groups(twofold, client):
    org, admin = admin_session(twofold, client)
    headers = bearer(admin.token)
    europe = client.post(f"/api/v1/organizations/{org}/business-groups", json={"name": "Europe"}, headers=headers)
    assert europe.status_code == 201, europe.text
    assert europe.json()["name"] == "Europe"
    assert europe.json()["parent_id"] == org
    france = client.post(
        f"/api/v1/organizations/{org}/business-groups",
        json={"name": "France", "parent_id": europe.json()["id"]},
        headers=headers,
    )
    assert france.status_code == 201, france.text
    assert france.json()["parent_id"] == europe.json()["id"]
    asia = client.post(
        f"/api/v1/organizations/{org}/business-groups", json={"name": "Asia", "parent_id": org}, headers=headers
    )
    assert asia.status_code == 201

    tree = client.get(f"/api/v1/organizations/{org}", headers=headers)
    assert tree.status_code == 200
    body = tree.json()
    assert body["id"] == org and body["name"] == "Acme" and body["parent_id"] is None
    children = {group["name"]: group for group in body["business_groups"]}
    assert set(children) == {"Europe", "Asia"}
    assert [g["name"] for g in children["Europe"]["business_groups"]] == ["France"]
    assert children["Europe"]["business_groups"][0]["id"] == france.json()["id"]
    assert children["Asia"]["business_groups"] == []


def test_business_group_errors(twofold, client):
    org, admin = admin_session(twofold, client)
    other, _ = create_organization(twofold, "Globex", "gina")
    headers = bearer(admin.token)
    url = f"/api/v1/organizations/{org}/business-groups"
    assert client.post(url, json={"name": "Sales"}, headers=headers).status_code == 201

    # The parent belongs to another organization: nothing about it leaks.
    assert_problem(client.post(url, json={"name": "X", "parent_id": other.id}, headers=headers), 404, "not_found")
    assert_problem(client.post(url, json={"name": "X", "parent_id": "nope"}, headers=headers), 404, "not_found")
    # A sibling of the same name (compared case-insensitively).
    assert_problem(client.post(url, json={"name": "Sales"}, headers=headers), 409, "conflict")
    assert_problem(client.post(url, json={"name": "SALES"}, headers=headers), 409, "conflict")
    # Bad bodies.
    for bad in ({}, {"name": ""}, {"name": "   "}, {"name": 12}, {"name": "Ok", "extra": 1}, {"name": "x" * 300}):
        assert_problem(client.post(url, json=bad, headers=headers), 422, "validation_error")
    bad_json = client.post(url, content=b"{not json", headers={**headers, "content-type": "application/json"})
    assert_problem(bad_json, 422, "validation_error")
    # The same name under another parent is fine.
    sales = client.get(f"/api/v1/organizations/{org}", headers=headers).json()["business_groups"][0]
    nested = client.post(url, json={"name": "Sales", "parent_id": sales["id"]}, headers=headers)
    assert nested.status_code == 201


# -- users -----------------------------------------------------------------------------------------


def test_create_user_with_password(twofold, client):
    org, admin = admin_session(twofold, client)
    response = new_user(client, org, admin.token, "bob", password=USER_PASSWORD, display_name="Bob B.")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["username"] == "bob"
    assert body["email"] == "bob@example.com"
    assert body["display_name"] == "Bob B."
    assert body["kind"] == "user" and body["service_type"] is None
    assert body["status"] == "active"
    assert body["identity_provider"]["type"] == "local"
    assert body["mfa_exempt"] is False and body["methods"] == [] and body["locked_until"] is None
    assert "setup_url" not in body
    assert "password" not in body and "password_hash" not in body
    answer = client.post("/api/v1/login", json={"username": "bob", "password": USER_PASSWORD})
    assert answer.json()["status"] == "enrollment_required"


def test_create_user_without_password_gives_a_one_time_setup_link(twofold, client):
    org, admin = admin_session(twofold, client)
    response = new_user(client, org, admin.token, "carol")
    assert response.status_code == 201, response.text
    setup_url = response.json()["setup_url"]
    assert setup_url.startswith(f"{PUBLIC_URL}/setup/")
    token = setup_url.rsplit("/", 1)[1]
    # No password yet: a login fails like any wrong password.
    assert_problem(client.post("/api/v1/login", json={"username": "carol", "password": USER_PASSWORD}), 401,
                   "invalid_credentials")
    # The policy applies to the set-up password too, and a refused attempt does not use the link up.
    assert_problem(client.post("/api/v1/setup", json={"token": token, "password": "short"}), 422, "validation_error")
    assert client.post("/api/v1/setup", json={"token": token, "password": USER_PASSWORD}).status_code == 204
    answer = client.post("/api/v1/login", json={"username": "carol", "password": USER_PASSWORD})
    assert answer.status_code == 200
    assert answer.json()["status"] == "enrollment_required"  # set-up signs nobody in and skips no MFA
    again = client.post("/api/v1/setup", json={"token": token, "password": "another long passphrase"})
    assert_problem(again, 404, "not_found")
    assert client.post("/api/v1/login", json={"username": "carol", "password": USER_PASSWORD}).status_code == 200
    assert_problem(client.post("/api/v1/setup", json={"token": "tfu_forged", "password": USER_PASSWORD}), 404,
                   "not_found")


def test_usernames_are_unique_after_nfkc_and_case_folding(twofold, client):
    org, admin = admin_session(twofold, client)
    assert new_user(client, org, admin.token, "bob").status_code == 201
    for twin in ("\uff22ob", "BOB", "Bob", "\uff42\uff4f\uff42"):  # "Ｂob", "ｂｏｂ"
        assert_problem(new_user(client, org, admin.token, twin), 409, "conflict")
    # Unique across the whole deployment, not per organization.
    other_org, other_admin = admin_session(twofold, client, "Globex", "gina")
    assert_problem(new_user(client, other_org, other_admin.token, "BOB"), 409, "conflict")
    assert_problem(new_user(client, org, admin.token, "ALICE"), 409, "conflict")


def test_kind_and_service_type_rules_on_creation(twofold, client):
    org, admin = admin_session(twofold, client)
    token = admin.token
    # A service account needs a service type; a human account cannot have one.
    assert_problem(new_user(client, org, token, "robot", kind="service"), 422, "validation_error")
    assert_problem(new_user(client, org, token, "human", service_type="rpa"), 422, "validation_error")
    assert_problem(new_user(client, org, token, "odd", kind="service", service_type="admin"), 422, "validation_error")
    assert_problem(new_user(client, org, token, "odd", kind="robot"), 422, "validation_error")
    # A service account's password is its only factor when exempt: at least 15 characters (14 refused).
    short = new_user(client, org, token, "robot", kind="service", service_type="rpa", password="fourteen chars")
    assert_problem(short, 422, "validation_error")
    ok = new_user(client, org, token, "robot", kind="service", service_type="rpa", password="fifteen chars!!")
    assert ok.status_code == 201, ok.text
    assert ok.json()["kind"] == "service" and ok.json()["service_type"] == "rpa"
    tester = new_user(client, org, token, "tester", kind="service", service_type="test_automation")
    assert tester.status_code == 201 and tester.json()["service_type"] == "test_automation"
    # Common (breached) passwords are refused, whatever their case.
    for common in ("iloveyou1", "Password123", "baseball1"):
        assert_problem(new_user(client, org, token, "dave", password=common), 422, "validation_error")
    # Nothing was created by the refused attempts.
    users = client.get(f"/api/v1/organizations/{org}/users", headers=bearer(token)).json()["items"]
    assert sorted(u["username"] for u in users) == ["alice", "robot", "tester"]


def test_list_users_search_and_cursor_paging(twofold, client):
    org, admin = admin_session(twofold, client)
    names = [f"team{i}" for i in range(6)] + ["zed", "yann"]
    for name in names:
        assert new_user(client, org, admin.token, name, display_name=f"Person {name}").status_code == 201
    url = f"/api/v1/organizations/{org}/users"
    headers = bearer(admin.token)

    everyone = client.get(url, headers=headers).json()
    assert everyone["next_cursor"] is None
    assert sorted(u["username"] for u in everyone["items"]) == sorted([*names, "alice"])

    # 9 users, 4 a page: three pages, no duplicates, no omissions.
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 4}
        if cursor:
            params["cursor"] = cursor
        page = client.get(url, params=params, headers=headers)
        assert page.status_code == 200, page.text
        pages += 1
        seen += [u["username"] for u in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert len(seen) == len(set(seen)) == 9
    assert set(seen) == {*names, "alice"}

    # Search (case-insensitive) also pages.
    found: list[str] = []
    cursor = None
    while True:
        params = {"q": "TEAM", "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get(url, params=params, headers=headers).json()
        found += [u["username"] for u in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(found) == sorted(f"team{i}" for i in range(6))
    assert [u["username"] for u in client.get(url, params={"q": "zed@"}, headers=headers).json()["items"]] == ["zed"]
    assert client.get(url, params={"q": "nobody-matches"}, headers=headers).json()["items"] == []
    # Percent and underscore are searched for literally.
    assert client.get(url, params={"q": "%"}, headers=headers).json()["items"] == []

    for bad in ({"limit": 0}, {"limit": 201}, {"limit": "x"}, {"cursor": "not-a-cursor!"}, {"cursor": "W10"}):
        assert_problem(client.get(url, params=bad, headers=headers), 422, "validation_error")


def test_get_and_patch_user(twofold, client):
    org, admin = admin_session(twofold, client)
    created = new_user(client, org, admin.token, "bob", password=USER_PASSWORD).json()
    url = f"/api/v1/organizations/{org}/users/{created['id']}"
    headers = bearer(admin.token)
    got = client.get(url, headers=headers)
    assert got.status_code == 200 and got.json()["username"] == "bob"

    patched = client.patch(url, json={"display_name": "Robert", "email": "robert@example.com"}, headers=headers)
    assert patched.status_code == 200, patched.text
    assert patched.json()["display_name"] == "Robert" and patched.json()["email"] == "robert@example.com"
    assert client.get(url, headers=headers).json()["email"] == "robert@example.com"
    for bad in ({"status": "gone"}, {"email": "not an address"}, {"email": None}, {"status": None}, {"id": "x"}):
        assert_problem(client.patch(url, json=bad, headers=headers), 422, "validation_error")
    assert_problem(client.get(f"/api/v1/organizations/{org}/users/nope", headers=headers), 404, "not_found")
    assert_problem(client.patch(f"/api/v1/organizations/{org}/users/nope", json={}, headers=headers), 404, "not_found")
    # An administrator cannot disable their own account.
    own = f"/api/v1/organizations/{org}/users/{admin.user.id}"
    assert_problem(client.patch(own, json={"status": "disabled"}, headers=headers), 409, "conflict")


def test_kind_and_service_type_never_change_through_the_api(twofold, client, database_url):
    org, admin = admin_session(twofold, client)
    robot = new_user(client, org, admin.token, "robot", kind="service", service_type="rpa").json()
    bob = new_user(client, org, admin.token, "bob").json()
    headers = bearer(admin.token)
    for user, change in (
        (robot, {"kind": "user"}),
        (robot, {"service_type": "test_automation"}),
        (robot, {"service_type": None}),
        (bob, {"kind": "service", "service_type": "rpa"}),
        (bob, {"display_name": "Bob", "kind": "service"}),
    ):
        response = client.patch(f"/api/v1/organizations/{org}/users/{user['id']}", json=change, headers=headers)
        assert_problem(response, 422, "validation_error")
    with twofold.uow.engine.connect() as connection:
        rows = dict(
            (row.username, (row.kind, row.service_type, row.display_name))
            for row in connection.execute(text("SELECT username, kind, service_type, display_name FROM users"))
        )
    assert rows["robot"] == ("service", "rpa", None)
    assert rows["bob"] == ("user", None, None)


def test_disabling_ends_sessions_and_login_fails_like_a_wrong_password(twofold, client):
    org, admin = admin_session(twofold, client)
    organization_id = org
    bob = create_user(twofold, twofold.accounts.root_by_name("Acme"), "bob")
    enroll(client, bob)
    assert client.get("/api/v1/me", headers=bearer(bob.token)).status_code == 200
    pending = login(client, bob).json()["transaction"]  # an open login transaction

    wrong = login(client, bob, password="not the password at all")
    assert wrong.status_code == 401

    url = f"/api/v1/organizations/{organization_id}/users/{bob.user.id}"
    disabled = client.patch(url, json={"status": "disabled"}, headers=bearer(admin.token))
    assert disabled.status_code == 200 and disabled.json()["status"] == "disabled"

    assert_problem(client.get("/api/v1/me", headers=bearer(bob.token)), 401, "unauthenticated")
    verify = client.post("/api/v1/login/verify", json={"transaction": pending, "type": METHOD_TYPE, "code": bob.code})
    assert_problem(verify, 410, "transaction_expired")
    refused = login(client, bob)
    assert refused.status_code == 401
    assert refused.json() == wrong.json()
    assert refused.headers["content-type"] == wrong.headers["content-type"]

    enabled = client.patch(url, json={"status": "active"}, headers=bearer(admin.token))
    assert enabled.json()["status"] == "active"
    assert login(client, bob).json()["status"] == "mfa_required"
    assert client.get("/api/v1/me", headers=bearer(bob.token)).status_code == 401  # old sessions stay dead


# -- permission checks ----------------------------------------------------------------------------


def admin_calls(org: str, user_id: str) -> list[tuple[str, str, Any]]:
    """Every administration endpoint of this issue, with a valid body."""
    base = f"/api/v1/organizations/{org}"
    return [
        ("GET", base, None),
        ("POST", f"{base}/business-groups", {"name": "Team"}),
        ("GET", f"{base}/users", None),
        ("POST", f"{base}/users", {"username": "newcomer", "email": "n@example.com", "kind": "user"}),
        ("GET", f"{base}/users/{user_id}", None),
        ("PATCH", f"{base}/users/{user_id}", {"display_name": "Changed"}),
        ("POST", f"{base}/users/{user_id}/unlock", None),
        ("PUT", f"{base}/users/{user_id}/permissions/organization_administrator", None),
        ("DELETE", f"{base}/users/{user_id}/permissions/organization_administrator", None),
        ("GET", f"{base}/identity-providers", None),
        ("GET", f"{base}/audit-events", None),
        ("GET", f"{base}/audit-events?type=login.failed", None),
    ]


def call(client: Any, method: str, url: str, body: Any, token: str | None) -> Any:
    return client.request(method, url, json=body, headers=bearer(token))


def test_non_administrator_gets_403_on_every_admin_endpoint(twofold, client):
    org, admin = admin_session(twofold, client)
    organization = twofold.accounts.root_by_name("Acme")
    bob = enroll(client, create_user(twofold, organization, "bob"))
    carol = create_user(twofold, organization, "carol")
    group = client.post(f"/api/v1/organizations/{org}/business-groups", json={"name": "G"},
                        headers=bearer(admin.token)).json()
    for target_org in (org, group["id"]):
        for user_id in (carol.user.id, bob.user.id, admin.user.id):
            for method, url, body in admin_calls(target_org, user_id):
                response = call(client, method, url, body, bob.token)
                assert_problem(response, 403, "forbidden")
    # Nothing changed.
    with twofold.uow(read_only=True) as uow:
        assert uow.users.by_username_key("newcomer") is None
        assert uow.permissions.holders(org, "organization_administrator") == [admin.user.id]
        assert uow.users.get(carol.user.id).display_name is None


def test_other_organizations_objects_are_404(twofold, client):
    org_a, admin_a = admin_session(twofold, client)
    org_b, admin_b = admin_session(twofold, client, "Globex", "gina")
    globex = twofold.accounts.root_by_name("Globex")
    user_b = create_user(twofold, globex, "hank")
    group_b = client.post(f"/api/v1/organizations/{org_b}/business-groups", json={"name": "B1"},
                          headers=bearer(admin_b.token)).json()
    user_a = create_user(twofold, twofold.accounts.root_by_name("Acme"), "bob")

    # Admin of A on B's organization (root or group), with B's or A's users, and on unknown ids.
    for target_org in (org_b, group_b["id"], "no-such-organization"):
        for user_id in (user_b.user.id, admin_b.user.id, user_a.user.id):
            for method, url, body in admin_calls(target_org, user_id):
                assert_problem(call(client, method, url, body, admin_a.token), 404, "not_found")
    # B's users through A's own path are 404 too, and stay untouched.
    for user_id in (user_b.user.id, admin_b.user.id):
        for method, url, body in admin_calls(org_a, user_id)[4:9]:
            assert_problem(call(client, method, url, body, admin_a.token), 404, "not_found")
    base = f"/api/v1/organizations/{org_a}"
    assert_problem(
        client.post(f"{base}/business-groups", json={"name": "X", "parent_id": group_b["id"]},
                    headers=bearer(admin_a.token)),
        404,
        "not_found",
    )
    with twofold.uow(read_only=True) as uow:
        assert uow.users.get(user_b.user.id).display_name is None
        assert uow.permissions.find(user_b.user.id, org_b, "organization_administrator") is None
        assert uow.users.by_username_key("newcomer") is None
    listed_b = client.get(f"/api/v1/organizations/{org_b}/users", headers=bearer(admin_b.token)).json()["items"]
    assert user_a.user.id not in [u["id"] for u in listed_b]


def test_admin_api_needs_a_session(twofold, client):
    org, admin = admin_session(twofold, client)
    for method, url, body in admin_calls(org, admin.user.id):
        assert_problem(client.request(method, url, json=body), 401, "unauthenticated")
        assert_problem(call(client, method, url, body, "tfs_not-a-real-token"), 401, "unauthenticated")


# -- administrator grants, step-up, unlock -------------------------------------------------------


def test_grant_and_revoke_organization_administrator(twofold, client):
    org, admin = admin_session(twofold, client)
    organization = twofold.accounts.root_by_name("Acme")
    bob = enroll(client, create_user(twofold, organization, "bob"))
    grant_url = f"/api/v1/organizations/{org}/users/{bob.user.id}/permissions/organization_administrator"
    headers = bearer(admin.token)
    users_url = f"/api/v1/organizations/{org}/users"
    assert client.get(users_url, headers=bearer(bob.token)).status_code == 403

    # ★: a session whose MFA is older than the step-up window is refused, and nothing changes.
    expire_step_up(twofold, admin.token)
    assert_problem(client.put(grant_url, headers=headers), 403, "step_up_required")
    assert client.get(users_url, headers=bearer(bob.token)).status_code == 403
    stepped = client.post("/api/v1/me/step-up", json={"type": METHOD_TYPE, "code": admin.code}, headers=headers)
    assert stepped.status_code == 200, stepped.text
    assert client.put(grant_url, headers=headers).status_code == 204
    assert client.put(grant_url, headers=headers).status_code == 204  # idempotent

    # The new administrator can use the admin API at once, with the session they already have.
    listed = client.get(users_url, headers=bearer(bob.token))
    assert listed.status_code == 200
    assert {u["username"]: u["is_organization_administrator"] for u in listed.json()["items"]} == {
        "alice": True,
        "bob": True,
    }
    # ...including ★ writes, with a fresh MFA.
    bob_token = sign_in(client, bob)
    alice_grant = f"/api/v1/organizations/{org}/users/{admin.user.id}/permissions/organization_administrator"
    assert client.delete(alice_grant, headers=bearer(bob_token)).status_code == 204
    assert client.get(users_url, headers=headers).status_code == 403  # alice is no longer an administrator
    # Bob is now the last administrator: revoking him is refused, even by himself.
    assert_problem(client.delete(grant_url, headers=bearer(bob_token)), 409, "conflict")
    assert client.get(users_url, headers=bearer(bob_token)).status_code == 200
    # Revoking someone who is not an administrator changes nothing.
    assert client.delete(alice_grant, headers=bearer(bob_token)).status_code == 204


def test_administrators_revoking_each_other_in_parallel_leave_one(twofold, client):
    org, alice = admin_session(twofold, client)
    bob = enroll(client, create_user(twofold, twofold.accounts.root_by_name("Acme"), "bob"))
    url = f"/api/v1/organizations/{org}/users/{{}}/permissions/organization_administrator"
    assert client.put(url.format(bob.user.id), headers=bearer(alice.token)).status_code == 204
    for _ in range(8):
        barrier = threading.Barrier(2)

        def revoke(actor: Account, target: Account) -> int:
            barrier.wait()
            return int(client.delete(url.format(target.user.id), headers=bearer(actor.token)).status_code)

        with ThreadPoolExecutor(max_workers=2) as pool:
            statuses = sorted(pool.map(lambda pair: revoke(*pair), [(alice, bob), (bob, alice)]))
        assert statuses[0] == 204 and statuses[1] in (403, 409), statuses
        with twofold.uow(read_only=True) as uow:
            holders = uow.permissions.holders(org, "organization_administrator")
        assert len(holders) == 1
        remaining, other = (alice, bob) if holders[0] == alice.user.id else (bob, alice)
        assert client.put(url.format(other.user.id), headers=bearer(remaining.token)).status_code == 204


def test_revoke_needs_step_up_too(twofold, client):
    org, admin = admin_session(twofold, client)
    bob = create_user(twofold, twofold.accounts.root_by_name("Acme"), "bob")
    grant_url = f"/api/v1/organizations/{org}/users/{bob.user.id}/permissions/organization_administrator"
    assert client.put(grant_url, headers=bearer(admin.token)).status_code == 204
    expire_step_up(twofold, admin.token)
    assert_problem(client.delete(grant_url, headers=bearer(admin.token)), 403, "step_up_required")
    unlock_url = f"/api/v1/organizations/{org}/users/{bob.user.id}/unlock"
    assert_problem(client.post(unlock_url, headers=bearer(admin.token)), 403, "step_up_required")
    # Reads and non-★ writes still work on such a session.
    assert client.get(f"/api/v1/organizations/{org}/users", headers=bearer(admin.token)).status_code == 200
    with twofold.uow(read_only=True) as uow:
        holders = uow.permissions.holders(org, "organization_administrator")
    assert sorted(holders) == sorted([admin.user.id, bob.user.id])


def test_exempt_account_cannot_be_made_administrator(twofold, client):
    org, admin = admin_session(twofold, client)
    robot = create_user(twofold, twofold.accounts.root_by_name("Acme"), "robot", kind="service", service_type="rpa")
    exempt(twofold, robot)
    url = f"/api/v1/organizations/{org}/users/{robot.user.id}/permissions/organization_administrator"
    assert_problem(client.put(url, headers=bearer(admin.token)), 422, "validation_error")
    # Nor a disabled account.
    dora = create_user(twofold, twofold.accounts.root_by_name("Acme"), "dora")
    disabled = client.patch(f"/api/v1/organizations/{org}/users/{dora.user.id}", json={"status": "disabled"},
                            headers=bearer(admin.token))
    assert disabled.status_code == 200
    dora_url = f"/api/v1/organizations/{org}/users/{dora.user.id}/permissions/organization_administrator"
    assert_problem(client.put(dora_url, headers=bearer(admin.token)), 422, "validation_error")
    with twofold.uow(read_only=True) as uow:
        assert uow.permissions.find(robot.user.id, org, "organization_administrator") is None
        assert uow.permissions.find(dora.user.id, org, "organization_administrator") is None


def test_unlock_lifts_a_second_factor_lock(make_twofold):
    # The lock threshold is lowered here: this test is about unlocking, the 100 is tested with throttling.
    twofold = make_twofold(mfa_lock_threshold=3)
    with client_for(twofold) as client:
        org, admin = admin_session(twofold, client)
        bob = enroll(client, create_user(twofold, twofold.accounts.root_by_name("Acme"), "bob"))
        transaction = login(client, bob).json()["transaction"]
        for _ in range(3):
            failed = client.post(
                "/api/v1/login/verify", json={"transaction": transaction, "type": METHOD_TYPE, "code": "wrong"}
            )
            assert failed.status_code == 401
        locked = login(client, bob)
        assert_problem(locked, 429, "rate_limited")
        assert client.get(f"/api/v1/organizations/{org}/users/{bob.user.id}",
                          headers=bearer(admin.token)).json()["locked"] is True

        unlock_url = f"/api/v1/organizations/{org}/users/{bob.user.id}/unlock"
        response = client.post(unlock_url, headers=bearer(admin.token))
        assert response.status_code == 204 and response.content == b""
        view = client.get(f"/api/v1/organizations/{org}/users/{bob.user.id}", headers=bearer(admin.token)).json()
        assert view["locked"] is False and view["locked_until"] is None
        assert sign_in(client, bob)
        # Unlocking an account that is not locked is harmless.
        assert client.post(unlock_url, headers=bearer(admin.token)).status_code == 204


def test_identity_providers_lists_the_local_provider(twofold, client):
    org, admin = admin_session(twofold, client)
    providers = client.get(f"/api/v1/organizations/{org}/identity-providers", headers=bearer(admin.token))
    assert providers.status_code == 200
    assert [p["type"] for p in providers.json()] == ["local"]
