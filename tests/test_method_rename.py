"""Renaming a verification method (API.md `PATCH /api/v1/me/methods/{id}`): 1–64 printable characters,
trimmed, unique per user; a WebAuthn credential's default name comes from its model and can be changed."""

from __future__ import annotations

from sqlalchemy import select

from twofold.storage import tables

from .support.authenticator import SoftAuthenticator
from .support.flows import bearer, create_organization, create_user, exempt, login
from .support.totp import code_at_step, current_step, enroll_totp

YUBIKEY_5_NFC = "fa2b99dc-9e39-4257-8f92-4a30d23c4118"  # YubiKey 5 NFC, firmware 5.1 (Yubico's AAGUID table)


def rename(client, token, method_id, name):
    return client.patch(f"/api/v1/me/methods/{method_id}", json={"name": name}, headers=bearer(token))


def methods_of(client, token):
    response = client.get("/api/v1/me/methods", headers=bearer(token))
    assert response.status_code == 200, response.text
    return response.json()


def test_rename_is_trimmed_validated_and_unique_per_user(product_twofold, product_client):
    organization, _ = create_organization(product_twofold)
    bob = enroll_totp(product_client, create_user(product_twofold, organization, "bob"), name="Phone")
    carol = enroll_totp(product_client, create_user(product_twofold, organization, "carol"), name="Phone")
    (method,) = methods_of(product_client, bob.token)

    renamed = rename(product_client, bob.token, method["id"], "  Work phone  ")
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["name"] == "Work phone" and renamed.json()["id"] == method["id"]
    assert methods_of(product_client, bob.token)[0]["name"] == "Work phone"

    for bad in ("", "   ", "x" * 65, "tab\there", "line\nbreak"):
        refused = rename(product_client, bob.token, method["id"], bad)
        assert refused.status_code == 422, (bad, refused.text)
        assert refused.json()["code"] == "validation_error"
    assert rename(product_client, bob.token, method["id"], "x" * 64).status_code == 200

    # A second method may not take a name the user already uses (case aside); another user's may.
    started = product_client.post(
        "/api/v1/me/methods", json={"type": "totp", "name": "Tablet"}, headers=bearer(bob.token)
    )
    assert started.status_code == 201, started.text
    done = product_client.post(
        f"/api/v1/me/methods/{started.json()['enrollment_id']}/complete",
        json={"code": code_at_step(started.json()["secret"], current_step())},
        headers=bearer(bob.token),
    )
    assert done.status_code == 200, done.text
    clash = rename(product_client, bob.token, done.json()["id"], "X" * 64)
    assert clash.status_code == 409 and clash.json()["code"] == "conflict"
    assert (
        rename(product_client, carol.token, methods_of(product_client, carol.token)[0]["id"], "Tablet").status_code
        == 200
    )

    # Someone else's method, an unknown id: 404 alike; nothing changed.
    assert rename(product_client, carol.token, method["id"], "Mine now").status_code == 404
    assert rename(product_client, bob.token, "no-such-method", "Name").status_code == 404

    with product_twofold.uow.engine.connect() as connection:
        events = connection.execute(
            select(tables.audit_events).where(tables.audit_events.c.type == "method.renamed")
        ).all()
    assert len(events) == 3
    first = min(events, key=lambda event: event.at)
    assert (first.details["from"], first.details["to"]) == ("Phone", "Work phone")


def test_a_security_key_is_named_after_its_model_and_can_be_renamed(product_twofold, product_client):
    organization, _ = create_organization(product_twofold)
    bob = create_user(product_twofold, organization, "bob")
    key = SoftAuthenticator(aaguid=YUBIKEY_5_NFC)
    begun = login(product_client, bob).json()
    started = product_client.post(
        "/api/v1/login/enroll", json={"transaction": begun["transaction"], "type": "security_key"}
    ).json()
    done = product_client.post(
        "/api/v1/login/enroll/complete",
        json={
            "transaction": begun["transaction"],
            "enrollment_id": started["enrollment_id"],
            "credential": key.create(started["publicKey"]),
        },
    )
    assert done.status_code == 200, done.text
    token = done.json()["token"]
    (method,) = methods_of(product_client, token)
    assert method["name"] == "YubiKey 5 NFC"
    assert rename(product_client, token, method["id"], "Keyring key").json()["name"] == "Keyring key"


def test_an_exempt_account_has_no_methods_to_rename(product_twofold, product_client):
    organization, _ = create_organization(product_twofold)
    robot = create_user(product_twofold, organization, "robot", kind="service", service_type="test_automation")
    exempt(product_twofold, robot)
    token = login(product_client, robot).json()["token"]
    refused = rename(product_client, token, "anything", "Name")
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
