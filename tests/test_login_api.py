"""The login state machine through the JSON API (DESIGN.md §3, API.md "Login")."""

from __future__ import annotations

from .support.flows import bearer, create_organization, create_user, enroll, exempt, login, sign_in
from .support.methods import METHOD_TYPE


def test_new_admin_must_enroll_and_transaction_is_not_a_session(twofold, client):
    organization, admin = create_organization(twofold)
    response = login(client, admin)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "enrollment_required"
    assert METHOD_TYPE in body["enrollable_types"]
    assert "recovery_code" not in body["enrollable_types"]
    transaction = body["transaction"]
    assert client.get("/api/v1/me", headers=bearer(transaction)).status_code == 401
    assert client.get(f"/api/v1/organizations/{organization.id}", headers=bearer(transaction)).status_code == 401
    assert client.get(f"/api/v1/organizations/{organization.id}/users", headers=bearer(transaction)).status_code == 401


def test_enroll_then_mfa_login(twofold, client):
    _, admin = create_organization(twofold)
    enroll(client, admin)
    me = client.get("/api/v1/me", headers=bearer(admin.token)).json()
    assert me["session"]["amr"] == ["pwd", "otp", "mfa"]
    assert me["session"]["acr"] == "urn:twofold:acr:mfa"
    response = login(client, admin)
    assert response.json()["status"] == "mfa_required"
    assert [m["type"] for m in response.json()["methods"]] == [METHOD_TYPE]
    token = sign_in(client, admin)
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 200


def test_exempt_service_account_gets_password_only_session(twofold, client):
    organization, _ = create_organization(twofold)
    robot = create_user(twofold, organization, "robot", kind="service", service_type="rpa")
    exempt(twofold, robot)
    response = login(client, robot)
    assert response.status_code == 200
    assert response.json()["status"] == "authenticated"
    assert response.json()["amr"] == ["pwd"]
