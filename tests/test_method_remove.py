"""Removing a verification method (R6, API.md `DELETE /api/v1/me/methods/{id}`): checked in the order
404, 409 last_method, 403 step_up_required; the last active method always stays, also under parallel
removals; the removal is audited and the user is told."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from twofold.domain.clock import utcnow
from twofold.services.crypto import hash_token
from twofold.storage import tables
from twofold.web.app import create_app

from .conftest import PUBLIC_URL
from .support.flows import bearer, create_organization, create_user, exempt, login, run_together
from .support.totp import TotpAccount, code_at_step, current_step, enroll_totp


def add_second_app(client: Any, enrolled: TotpAccount, name: str = "Tablet") -> str:
    started = client.post("/api/v1/me/methods", json={"type": "totp", "name": name}, headers=bearer(enrolled.token))
    assert started.status_code == 201, started.text
    done = client.post(
        f"/api/v1/me/methods/{started.json()['enrollment_id']}/complete",
        json={"code": code_at_step(started.json()["secret"], current_step())},
        headers=bearer(enrolled.token),
    )
    assert done.status_code == 200, done.text
    return str(done.json()["id"])


def methods_of(client: Any, token: str | None) -> list[dict[str, Any]]:
    response = client.get("/api/v1/me/methods", headers=bearer(token))
    assert response.status_code == 200, response.text
    return list(response.json())


def remove(client: Any, token: str | None, method_id: str) -> Any:
    return client.delete(f"/api/v1/me/methods/{method_id}", headers=bearer(token))


def expire_step_up(twofold: Any, token: str | None) -> None:
    assert token is not None
    with twofold.uow() as uow:
        session = uow.sessions.by_token_hash(hash_token(token))
        assert session is not None
        session.step_up_until = utcnow() - timedelta(seconds=1)


def test_remove_a_method_but_never_the_last(product_twofold, product_client):
    organization, _ = create_organization(product_twofold)
    bob = enroll_totp(product_client, create_user(product_twofold, organization, "bob"), name="Phone")
    (phone,) = methods_of(product_client, bob.token)
    tablet = add_second_app(product_client, bob)

    # Unknown, or someone else's: 404 whatever else holds.
    carol = enroll_totp(product_client, create_user(product_twofold, organization, "carol"))
    assert remove(product_client, bob.token, "no-such-method").status_code == 404
    assert remove(product_client, carol.token, tablet).status_code == 404

    removed = remove(product_client, bob.token, tablet)
    assert removed.status_code == 204, removed.text
    assert [m["id"] for m in methods_of(product_client, bob.token)] == [phone["id"]]
    assert remove(product_client, bob.token, tablet).status_code == 404  # gone

    last = remove(product_client, bob.token, phone["id"])
    assert last.status_code == 409 and last.json()["code"] == "last_method", last.text
    assert [m["id"] for m in methods_of(product_client, bob.token)] == [phone["id"]]

    with product_twofold.uow.engine.connect() as connection:
        events = connection.execute(
            select(tables.audit_events).where(tables.audit_events.c.type == "method.removed")
        ).all()
    assert [(e.subject_id, e.details["method_id"]) for e in events] == [(bob.account.user.id, tablet)]
    assert any(
        to == "bob@example.com" and "removed" in body and "Tablet" in body
        for to, _subject, body in product_twofold.notifier.sent
    )


def test_removal_is_checked_in_the_contract_order(product_twofold, product_client):
    organization, _ = create_organization(product_twofold)
    bob = enroll_totp(product_client, create_user(product_twofold, organization, "bob"))
    (phone,) = methods_of(product_client, bob.token)
    tablet = add_second_app(product_client, bob)
    expire_step_up(product_twofold, bob.token)

    # 404 before anything; with two methods a stale session needs a step-up; nothing was removed.
    assert remove(product_client, bob.token, "no-such-method").status_code == 404
    stale = remove(product_client, bob.token, tablet)
    assert stale.status_code == 403 and stale.json()["code"] == "step_up_required", stale.text
    assert len(methods_of(product_client, bob.token)) == 2

    # A step-up with a fresh code, then the removal goes through; the last one is 409 even when stale.
    stepped = product_client.post(
        "/api/v1/me/step-up", json={"type": "totp", "code": bob.next_code()}, headers=bearer(bob.token)
    )
    assert stepped.status_code == 200, stepped.text
    assert remove(product_client, bob.token, tablet).status_code == 204
    expire_step_up(product_twofold, bob.token)
    last = remove(product_client, bob.token, phone["id"])
    assert last.status_code == 409 and last.json()["code"] == "last_method"


def test_parallel_removals_leave_one_method(product_twofold, product_client):
    organization, _ = create_organization(product_twofold)
    bob = enroll_totp(product_client, create_user(product_twofold, organization, "bob"))
    add_second_app(product_client, bob)
    ids = [m["id"] for m in methods_of(product_client, bob.token)]
    app = create_app(product_twofold, housekeeping=False)
    results = run_together(
        [lambda client, method_id=method_id: remove(client, bob.token, method_id) for method_id in ids],
        lambda: TestClient(app, base_url=PUBLIC_URL),
    )
    assert sorted(r.status_code for r in results) == [204, 409], [r.text for r in results]
    assert len(methods_of(product_client, bob.token)) == 1


def test_no_removal_without_a_full_mfa_session(product_twofold, product_client):
    organization, _ = create_organization(product_twofold)
    bob = enroll_totp(product_client, create_user(product_twofold, organization, "bob"))
    (phone,) = methods_of(product_client, bob.token)
    # A half-authenticated login (password only) is no session (a Keycloak bypass let it delete methods).
    transaction = login(product_client, bob.account).json()["transaction"]
    assert remove(product_client, transaction, phone["id"]).status_code == 401
    robot = create_user(product_twofold, organization, "robot", kind="service", service_type="rpa")
    exempt(product_twofold, robot)
    robot_token = login(product_client, robot).json()["token"]
    refused = remove(product_client, robot_token, phone["id"])
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    assert len(methods_of(product_client, bob.token)) == 1
