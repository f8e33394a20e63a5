"""Accounts (issue 2 item 4; API.md "Account set-up and recovery"; SECURITY.md "Unknown user, wrong password,
disabled account and SSO user get the same status and body, and the same argon2 work", "Resetting or changing
a password neither removes MFA nor signs the user in", "SSO users cannot use a local password")."""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import text

from twofold.container import Twofold
from twofold.domain.clock import utcnow
from twofold.domain.entities import IdentityProvider, Organization, User
from twofold.domain.rules import username_key
from twofold.services.context import RequestContext
from twofold.services.crypto import hash_token

from .conftest import PUBLIC_URL
from .support.flows import USER_PASSWORD, Account, bearer, create_organization, create_user, enroll, login, sign_in
from .support.methods import METHOD_TYPE
from .test_admin_api import assert_problem

NEW_PASSWORD = "a completely new passphrase 5150"


def create_sso_user(twofold: Twofold, organization: Organization, username: str) -> Account:
    """A federated user of an OIDC provider (the SSO issue builds the provider API; storage set-up here).
    The row even carries a password hash, to show that it is never used."""
    with twofold.uow() as uow:
        provider = IdentityProvider(
            organization_id=organization.id, type="oidc", name="Corporate SSO", issuer="https://idp.example.com"
        )
        uow.identity_providers.add(provider)
        uow.flush()
        user = User(
            organization_id=organization.id,
            identity_provider_id=provider.id,
            username=username,
            username_key=username_key(username),
            email=f"{username}@example.com",
            external_subject=f"subject-of-{username}",
            password_hash=twofold.passwords.hash(USER_PASSWORD),
        )
        uow.users.add(user)
    return Account(user, USER_PASSWORD)


def disable(twofold: Twofold, account: Account) -> None:
    with twofold.uow() as uow:
        user = uow.users.get(account.user.id)
        assert user is not None
        user.status = "disabled"


def test_failures_are_indistinguishable_and_do_the_same_argon2_work(twofold, client):
    organization, _ = create_organization(twofold)
    bob = create_user(twofold, organization, "bob")
    dora = create_user(twofold, organization, "dora")
    disable(twofold, dora)
    sam = create_sso_user(twofold, organization, "sam")
    passwords = twofold.passwords

    cases = {
        "unknown user": ({"username": "nobody", "password": USER_PASSWORD}, True),
        "wrong password": ({"username": "bob", "password": "not the right passphrase"}, False),
        "disabled, right password": ({"username": "dora", "password": dora.password}, True),
        "SSO user, the hash's own password": ({"username": "sam", "password": sam.password}, True),
        "SSO user, another password": ({"username": "SAM", "password": "anything at all here"}, True),
    }
    answers = {}
    for name, (body, dummy) in cases.items():
        before = passwords.dummy_verifications
        response = client.post("/api/v1/login", json=body)
        assert response.status_code == 401, name
        assert passwords.dummy_verifications == before + (1 if dummy else 0), name
        answers[name] = response
    bodies = [r.json() for r in answers.values()]
    assert all(b == bodies[0] for b in bodies), bodies
    assert bodies[0]["code"] == "invalid_credentials"
    for response in answers.values():
        assert response.headers["content-type"] == "application/problem+json"
        assert "retry-after" not in response.headers and "set-cookie" not in response.headers
    # The audit log tells the cases apart; the answers do not.
    with twofold.uow.engine.connect() as connection:
        rows = connection.execute(text("SELECT details FROM audit_events WHERE type = 'login.failed'")).all()
    reasons = sorted((r.details if isinstance(r.details, dict) else json.loads(r.details))["reason"] for r in rows)
    assert reasons == ["disabled", "sso_user", "sso_user", "unknown_user", "wrong_password"]
    # A right password is verified against the real hash, not the dummy.
    before = passwords.dummy_verifications
    assert login(client, bob).status_code == 200
    assert passwords.dummy_verifications == before


def test_sso_user_has_no_local_password_paths(twofold, client):
    organization, _ = create_organization(twofold)
    sam = create_sso_user(twofold, organization, "sam")
    sent = len(twofold.notifier.sent)
    assert client.post("/api/v1/password-reset", json={"username": "sam"}).status_code == 202
    assert len(twofold.notifier.sent) == sent
    # Even a set-up link issued for the account cannot give it a local password.
    link = twofold.accounts.new_setup_link(sam.user.id, actor_id=None, context=_context())
    token = link.rsplit("/", 1)[1]
    assert_problem(client.post("/api/v1/setup", json={"token": token, "password": NEW_PASSWORD}), 404, "not_found")
    assert login(client, sam, password=NEW_PASSWORD).status_code == 401


def _context() -> RequestContext:
    return RequestContext(ip="127.0.0.1")


# -- password reset --------------------------------------------------------------------------------


def reset_token(twofold: Twofold) -> str:
    _to, _subject, body = twofold.notifier.sent[-1]  # type: ignore[attr-defined]
    prefix = f"{PUBLIC_URL}/password-reset/"
    assert prefix in body
    return str(body.split(prefix, 1)[1].split()[0])


def test_password_reset_request_always_answers_202_and_mails_only_existing_accounts(twofold, client):
    organization, _ = create_organization(twofold)
    create_user(twofold, organization, "bob")
    dora = create_user(twofold, organization, "dora")
    disable(twofold, dora)
    sent = twofold.notifier.sent

    known = client.post("/api/v1/password-reset", json={"username": "bob"})
    assert known.status_code == 202
    assert len(sent) == 1
    to, subject, body = sent[0]
    assert to == "bob@example.com" and "password" in subject.lower()
    assert f"{PUBLIC_URL}/password-reset/tfu_" in body
    # Looked up like usernames are.
    assert client.post("/api/v1/password-reset", json={"username": "\uff22OB"}).status_code == 202
    assert len(sent) == 2 and sent[1][0] == "bob@example.com"

    for unknown in ("nobody", "dora"):
        response = client.post("/api/v1/password-reset", json={"username": unknown})
        assert response.status_code == 202
        assert response.content == known.content
        assert response.headers.get("content-type") == known.headers.get("content-type")
    assert len(sent) == 2
    assert_problem(client.post("/api/v1/password-reset", json={}), 422, "validation_error")


def test_password_reset_sets_the_password_without_signing_in_or_touching_mfa(twofold, client):
    organization, _ = create_organization(twofold)
    bob = enroll(client, create_user(twofold, organization, "bob"))
    old_session = bob.token
    other_session = sign_in(client, bob)
    open_transaction = login(client, bob).json()["transaction"]

    assert client.post("/api/v1/password-reset", json={"username": "bob"}).status_code == 202
    token = reset_token(twofold)
    # The policy applies, and a refused password leaves the link usable.
    weak = client.post("/api/v1/password-reset/complete", json={"token": token, "new_password": "iloveyou1"})
    assert_problem(weak, 422, "validation_error")
    # A reset link is not a set-up link.
    assert_problem(client.post("/api/v1/setup", json={"token": token, "password": NEW_PASSWORD}), 404, "not_found")

    done = client.post("/api/v1/password-reset/complete", json={"token": token, "new_password": NEW_PASSWORD})
    assert done.status_code == 204
    assert done.content == b"" and "set-cookie" not in done.headers  # nobody is signed in

    # Every session and open login of the old password ends.
    for session in (old_session, other_session):
        assert_problem(client.get("/api/v1/me", headers=bearer(session)), 401, "unauthenticated")
    stale = client.post("/api/v1/login/verify",
                        json={"transaction": open_transaction, "type": METHOD_TYPE, "code": bob.code})
    assert_problem(stale, 410, "transaction_expired")

    # The old password is gone; the new one still needs the second factor, which is unchanged.
    assert login(client, bob).status_code == 401
    bob.password = NEW_PASSWORD
    answer = login(client, bob)
    assert answer.status_code == 200
    assert answer.json()["status"] == "mfa_required"
    assert [m["type"] for m in answer.json()["methods"]] == [METHOD_TYPE]
    assert sign_in(client, bob)

    # The link works once.
    again = client.post("/api/v1/password-reset/complete",
                        json={"token": token, "new_password": "yet another passphrase"})
    assert_problem(again, 404, "not_found")
    assert login(client, bob).status_code == 200


def test_a_new_reset_link_voids_the_previous_one(twofold, client):
    organization, _ = create_organization(twofold)
    bob = create_user(twofold, organization, "bob")
    client.post("/api/v1/password-reset", json={"username": "bob"})
    first = reset_token(twofold)
    client.post("/api/v1/password-reset", json={"username": "bob"})
    second = reset_token(twofold)
    assert first != second
    complete = "/api/v1/password-reset/complete"
    assert_problem(client.post(complete, json={"token": first, "new_password": NEW_PASSWORD}), 404, "not_found")
    for forged in ("tfu_" + "A" * 43, "nonsense", second + "x"):
        assert_problem(client.post(complete, json={"token": forged, "new_password": NEW_PASSWORD}), 404, "not_found")
    assert client.post(complete, json={"token": second, "new_password": NEW_PASSWORD}).status_code == 204
    assert login(client, bob, password=NEW_PASSWORD).json()["status"] == "enrollment_required"


def test_expired_links_are_refused(twofold, client):
    organization, _ = create_organization(twofold)
    bob = create_user(twofold, organization, "bob")
    client.post("/api/v1/password-reset", json={"username": "bob"})
    reset = reset_token(twofold)
    setup = twofold.accounts.new_setup_link(bob.user.id, actor_id=None, context=_context()).rsplit("/", 1)[1]
    with twofold.uow() as uow:
        for token in (reset, setup):
            record = uow.tokens.by_hash(hash_token(token))
            assert record is not None
            # Reset links live an hour, set-up links 7 days (settings); these are a second past it.
            lifetime = timedelta(hours=1) if record.purpose == "password_reset" else timedelta(days=7)
            assert abs((record.expires_at - record.created_at) - lifetime) < timedelta(seconds=5)
            record.expires_at = utcnow() - timedelta(seconds=1)
    assert_problem(client.post("/api/v1/password-reset/complete", json={"token": reset, "new_password": NEW_PASSWORD}),
                   404, "not_found")
    assert_problem(client.post("/api/v1/setup", json={"token": setup, "password": NEW_PASSWORD}), 404, "not_found")
    assert login(client, bob).status_code == 200


def test_reset_link_of_a_since_disabled_account_is_refused(twofold, client):
    organization, _ = create_organization(twofold)
    bob = create_user(twofold, organization, "bob")
    client.post("/api/v1/password-reset", json={"username": "bob"})
    token = reset_token(twofold)
    disable(twofold, bob)
    response = client.post("/api/v1/password-reset/complete", json={"token": token, "new_password": NEW_PASSWORD})
    assert_problem(response, 404, "not_found")


# -- set-up links and password change --------------------------------------------------------------


def test_setup_link_from_the_service_layer(twofold, client):
    organization, _ = create_organization(twofold)
    created = twofold.accounts.create_user(
        organization_id=organization.id, username="erin", email="erin@example.com", kind="service",
        service_type="test_automation", actor_id=None, context=_context(),
    )
    assert created.setup_url and created.setup_url.startswith(f"{PUBLIC_URL}/setup/tfu_")
    token = created.setup_url.rsplit("/", 1)[1]
    # A service account's set-up password must be at least 15 characters.
    assert_problem(client.post("/api/v1/setup", json={"token": token, "password": "only 14 chars!"}), 422,
                   "validation_error")
    # A new link voids the old one.
    newer = twofold.accounts.new_setup_link(created.user.id, actor_id=None, context=_context()).rsplit("/", 1)[1]
    assert_problem(client.post("/api/v1/setup", json={"token": token, "password": NEW_PASSWORD}), 404, "not_found")
    assert client.post("/api/v1/setup", json={"token": newer, "password": NEW_PASSWORD}).status_code == 204
    assert client.post("/api/v1/login", json={"username": "erin", "password": NEW_PASSWORD}).json()["status"] == (
        "enrollment_required"
    )
    for bad in ({}, {"token": newer}, {"token": "", "password": NEW_PASSWORD}, {"token": 1, "password": "x"}):
        assert_problem(client.post("/api/v1/setup", json=bad), 422, "validation_error")


def test_password_change_keeps_this_session_and_mfa_and_ends_the_others(twofold, client):
    organization, _ = create_organization(twofold)
    bob = enroll(client, create_user(twofold, organization, "bob"))
    this_session = bob.token
    other_session = sign_in(client, bob)
    changed = client.post("/api/v1/me/password", json={"current_password": USER_PASSWORD,
                                                       "new_password": NEW_PASSWORD},
                          headers=bearer(this_session))
    assert changed.status_code == 204
    assert client.get("/api/v1/me", headers=bearer(this_session)).status_code == 200
    assert_problem(client.get("/api/v1/me", headers=bearer(other_session)), 401, "unauthenticated")
    assert login(client, bob).status_code == 401
    bob.password = NEW_PASSWORD
    assert login(client, bob).json()["status"] == "mfa_required"
