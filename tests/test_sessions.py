"""Sessions through the API: rotation, tokens at rest, lifetimes, sign-out, password change, step-up and the
cookie + CSRF rules of cookie-authenticated calls (SECURITY.md "Sessions, cookies, CSRF"; API.md "Self-service",
"Conventions"; DESIGN.md §3 and §8)."""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from twofold.container import Twofold
from twofold.storage.tables import login_transactions, metadata, sessions
from twofold.web.app import create_app

from .conftest import PUBLIC_URL
from .support.flows import Account, bearer, create_organization, create_user, enroll, login, sign_in
from .support.methods import METHOD_TYPE

SESSION_COOKIE = "__Host-twofold_session"
# A prefix, then at least 43 URL-safe base64 characters: 43 * 6 = 258 bits >= 256 >= the 128 SECURITY.md asks.
SESSION_TOKEN = re.compile(r"^tfs_[A-Za-z0-9_-]{43,}$")
TRANSACTION_TOKEN = re.compile(r"^tft_[A-Za-z0-9_-]{43,}$")
CSRF_META = re.compile(r'<meta name="twofold-csrf" content="([^"]+)">')


@contextlib.contextmanager
def app_client(twofold: Twofold) -> Iterator[TestClient]:
    """A client on a container built with other settings (make_twofold(...)), on the same test database."""
    with TestClient(create_app(twofold, housekeeping=False), base_url=PUBLIC_URL) as test_client:
        yield test_client


def parse_time(value: str) -> datetime:
    assert value.endswith("Z"), value  # RFC 3339 UTC (API.md "Conventions")
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def now() -> datetime:
    return datetime.now(UTC)


def assert_unauthenticated(response: Any) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers.get("www-authenticate", "").lower().startswith("bearer")
    body = response.json()
    assert body["status"] == 401 and body["code"] and body["type"] and body["title"]


def cookie(token: str) -> dict[str, str]:
    # httpx never sends a Secure cookie over http (DESIGN.md §8), so the Cookie header is set by hand.
    return {"Cookie": f"{SESSION_COOKIE}={token}"}


def enrolled_user(twofold: Twofold, client: Any, name: str = "bob") -> tuple[Any, Account, Account]:
    organization, admin = create_organization(twofold)
    user = create_user(twofold, organization, name)
    enroll(client, user)
    return organization, admin, user


# -- rotation and tokens at rest ------------------------------------------------------------------


def test_a_new_token_at_each_step_and_the_transaction_dies_after_mfa(twofold, client):
    _, _, bob = enrolled_user(twofold, client)
    first_session = bob.token
    started = login(client, bob).json()
    assert started["status"] == "mfa_required"
    transaction = started["transaction"]
    assert client.get("/api/v1/me", headers=bearer(transaction)).status_code == 401

    verified = client.post(
        "/api/v1/login/verify", json={"transaction": transaction, "type": METHOD_TYPE, "code": bob.code}
    )
    assert verified.status_code == 200, verified.text
    session = verified.json()["token"]
    assert session not in {transaction, first_session}
    assert client.get("/api/v1/me", headers=bearer(session)).status_code == 200

    # The transaction ended with the MFA: any later use is 410, and it never became a session.
    again = client.post(
        "/api/v1/login/verify", json={"transaction": transaction, "type": METHOD_TYPE, "code": bob.code}
    )
    assert again.status_code == 410
    assert again.json()["code"] == "transaction_expired"
    assert_unauthenticated(client.get("/api/v1/me", headers=bearer(transaction)))


def test_the_enrollment_transaction_dies_when_enrollment_completes(twofold, client):
    organization, _ = create_organization(twofold)
    carol = create_user(twofold, organization, "carol")
    transaction = login(client, carol).json()["transaction"]
    started = client.post(
        "/api/v1/login/enroll", json={"transaction": transaction, "type": METHOD_TYPE, "name": "Code"}
    )
    done = client.post(
        "/api/v1/login/enroll/complete",
        json={
            "transaction": transaction,
            "enrollment_id": started.json()["enrollment_id"],
            "code": started.json()["code"],
        },
    )
    assert done.status_code == 200, done.text
    assert done.json()["token"] != transaction
    reused = client.post("/api/v1/login/enroll", json={"transaction": transaction, "type": METHOD_TYPE, "name": "Two"})
    assert reused.status_code == 410
    assert reused.json()["code"] == "transaction_expired"


def test_tokens_are_long_random_and_stored_only_as_sha256(twofold, client):
    _, _, bob = enrolled_user(twofold, client)
    transactions = []
    tokens = [str(bob.token)]
    for _ in range(3):
        transaction = login(client, bob).json()["transaction"]
        transactions.append(transaction)
        verified = client.post(
            "/api/v1/login/verify", json={"transaction": transaction, "type": METHOD_TYPE, "code": bob.code}
        )
        tokens.append(verified.json()["token"])
    for token in tokens:
        assert SESSION_TOKEN.match(token), token
    for transaction in transactions:
        assert TRANSACTION_TOKEN.match(transaction), transaction
    assert len(set(tokens + transactions)) == len(tokens) + len(transactions)

    with twofold.uow(read_only=True) as uow:
        session_hashes = {row.token_hash for row in uow.session.execute(select(sessions))}  # type: ignore[attr-defined]
        transaction_hashes = {
            row.token_hash
            for row in uow.session.execute(select(login_transactions))  # type: ignore[attr-defined]
        }
        # Every row of every table, as text: no plaintext token anywhere in the database.
        dump = "\n".join(
            repr(tuple(row))
            for table in metadata.sorted_tables
            for row in uow.session.execute(select(table))  # type: ignore[attr-defined]
        )
    sha = lambda value: hashlib.sha256(value.encode()).hexdigest()  # noqa: E731
    assert {sha(t) for t in tokens} <= session_hashes
    assert {sha(t) for t in transactions} <= transaction_hashes
    for secret in tokens + transactions:
        assert secret not in dump
        assert secret.split("_", 1)[1] not in dump


# -- /api/v1/me -----------------------------------------------------------------------------------


def test_me_returns_every_field_and_the_session_block(twofold, client):
    organization, _, bob = enrolled_user(twofold, client)
    before = now()
    token = sign_in(client, bob)
    after = now()
    response = client.get("/api/v1/me", headers=bearer(token))
    assert response.status_code == 200
    me = response.json()
    for field in (
        "id",
        "username",
        "email",
        "display_name",
        "kind",
        "service_type",
        "organization_id",
        "identity_provider",
        "mfa_exempt",
        "session",
    ):
        assert field in me, field
    assert me["id"] == bob.user.id
    assert me["username"] == "bob"
    assert me["email"] == "bob@example.com"
    assert me["kind"] == "user" and me["service_type"] is None
    assert me["organization_id"] == organization.id
    assert me["mfa_exempt"] is False
    assert me["identity_provider"]["type"] == "local"
    assert me["identity_provider"]["id"] and me["identity_provider"]["name"]
    session = me["session"]
    assert {"amr", "acr", "auth_time", "step_up_until"} <= set(session)
    assert session["amr"] == ["pwd", "otp", "mfa"]
    assert session["acr"] == "urn:twofold:acr:mfa"
    auth_time = parse_time(session["auth_time"])
    assert before - timedelta(seconds=1) <= auth_time <= after + timedelta(seconds=1)
    # The MFA that made the session gives 10 minutes of step-up (API.md "Step-up").
    step_up_until = parse_time(session["step_up_until"])
    assert abs((step_up_until - auth_time) - timedelta(minutes=10)) <= timedelta(seconds=2)


def test_401_answers_are_problem_json_with_www_authenticate(twofold, client):
    assert_unauthenticated(client.get("/api/v1/me"))
    assert_unauthenticated(client.get("/api/v1/me", headers=bearer("tfs_" + "A" * 43)))
    assert_unauthenticated(client.get("/api/v1/me", headers=bearer("not-a-token")))
    assert_unauthenticated(client.get("/api/v1/me", headers={"Authorization": "Basic YWxpY2U6cHc="}))
    assert_unauthenticated(client.post("/api/v1/logout"))
    assert_unauthenticated(client.post("/api/v1/me/sessions/revoke"))


# -- lifetimes ------------------------------------------------------------------------------------


def test_defaults_are_30_minutes_idle_and_12_hours_absolute(twofold):
    # SECURITY.md: idle 30 min and absolute 12 h by default (AAL2).
    assert twofold.settings.session_idle_seconds == 30 * 60
    assert twofold.settings.session_absolute_seconds == 12 * 3600
    assert twofold.settings.step_up_seconds == 10 * 60


def test_an_idle_session_dies(make_twofold):
    # SessionService writes last_seen_at at most every 30 s, so within a short idle limit a call does not
    # extend the session: the idle deadline is last_seen_at (= auth time) + 2 s.
    twofold = make_twofold(session_idle_seconds=2)
    with app_client(twofold) as client:
        _, _, bob = enrolled_user(twofold, client)
        token = sign_in(client, bob)
        me = client.get("/api/v1/me", headers=bearer(token))
        assert me.status_code == 200
        idle_deadline = parse_time(me.json()["session"]["idle_expires_at"])
        time.sleep(max(0.0, (idle_deadline - now()).total_seconds()) + 0.3)
        assert_unauthenticated(client.get("/api/v1/me", headers=bearer(token)))
        assert_unauthenticated(client.get("/api/v1/me", headers=cookie(token)))


def test_a_session_dies_at_its_absolute_lifetime(make_twofold):
    twofold = make_twofold(session_absolute_seconds=2)
    with app_client(twofold) as client:
        _, _, bob = enrolled_user(twofold, client)
        token = sign_in(client, bob)
        me = client.get("/api/v1/me", headers=bearer(token))
        assert me.status_code == 200
        expires_at = parse_time(me.json()["session"]["expires_at"])
        assert expires_at - parse_time(me.json()["session"]["auth_time"]) == timedelta(seconds=2)
        time.sleep(max(0.0, (expires_at - now()).total_seconds()) + 0.3)
        assert_unauthenticated(client.get("/api/v1/me", headers=bearer(token)))


# -- ending sessions ------------------------------------------------------------------------------


def test_logout_kills_the_session_server_side(twofold, client):
    _, _, bob = enrolled_user(twofold, client)
    token = sign_in(client, bob)
    other = sign_in(client, bob)
    response = client.post("/api/v1/logout", headers=bearer(token))
    assert response.status_code == 204
    assert_unauthenticated(client.get("/api/v1/me", headers=bearer(token)))
    assert_unauthenticated(client.get("/api/v1/me", headers=cookie(token)))
    assert_unauthenticated(client.post("/api/v1/logout", headers=bearer(token)))
    assert client.get("/api/v1/me", headers=bearer(other)).status_code == 200
    with twofold.uow(read_only=True) as uow:
        row = uow.session.execute(  # type: ignore[attr-defined]
            select(sessions).where(sessions.c.token_hash == hashlib.sha256(token.encode()).hexdigest())
        ).one()
    assert row.revoked_at is not None


def test_sign_out_everywhere_else_keeps_the_current_session(twofold, client):
    _, _, bob = enrolled_user(twofold, client)
    first = str(bob.token)
    current = sign_in(client, bob)
    third = sign_in(client, bob)
    assert client.post("/api/v1/me/sessions/revoke", headers=bearer(current)).status_code == 204
    assert_unauthenticated(client.get("/api/v1/me", headers=bearer(first)))
    assert_unauthenticated(client.get("/api/v1/me", headers=bearer(third)))
    assert client.get("/api/v1/me", headers=bearer(current)).status_code == 200


def test_disabling_a_user_ends_their_sessions(twofold, client):
    organization, admin, bob = enrolled_user(twofold, client)
    enroll(client, admin)
    bob_tokens = [str(bob.token), sign_in(client, bob)]
    response = client.patch(
        f"/api/v1/organizations/{organization.id}/users/{bob.user.id}",
        json={"status": "disabled"},
        headers=bearer(admin.token),
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "disabled"
    for token in bob_tokens:
        assert_unauthenticated(client.get("/api/v1/me", headers=bearer(token)))
    refused = login(client, bob)
    assert refused.status_code == 401
    assert refused.json()["code"] == "invalid_credentials"
    assert client.get("/api/v1/me", headers=bearer(admin.token)).status_code == 200


def test_password_change_ends_other_sessions_and_keeps_mfa(twofold, client):
    _, _, bob = enrolled_user(twofold, client)
    other = str(bob.token)
    current = sign_in(client, bob)
    new_password = "a different and much longer passphrase"
    response = client.post(
        "/api/v1/me/password",
        json={"current_password": bob.password, "new_password": new_password},
        headers=bearer(current),
    )
    assert response.status_code == 204, response.text
    assert client.get("/api/v1/me", headers=bearer(current)).status_code == 200
    assert_unauthenticated(client.get("/api/v1/me", headers=bearer(other)))
    assert login(client, bob).status_code == 401  # the old password is gone
    changed = login(client, bob, new_password)
    assert changed.status_code == 200
    # MFA stays as it was: the next login asks for the method, it does not sign in nor re-enroll.
    assert changed.json()["status"] == "mfa_required"
    assert [m["type"] for m in changed.json()["methods"]] == [METHOD_TYPE]
    bob.password = new_password
    assert sign_in(client, bob)


def test_password_change_with_a_wrong_current_password_changes_nothing(twofold, client):
    _, _, bob = enrolled_user(twofold, client)
    other = str(bob.token)
    current = sign_in(client, bob)
    response = client.post(
        "/api/v1/me/password",
        json={"current_password": "not the password at all", "new_password": "a different and much longer passphrase"},
        headers=bearer(current),
    )
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    assert client.get("/api/v1/me", headers=bearer(other)).status_code == 200
    assert client.get("/api/v1/me", headers=bearer(current)).status_code == 200
    assert login(client, bob, "a different and much longer passphrase").status_code == 401
    assert login(client, bob).json()["status"] == "mfa_required"


# -- step-up and the ★ rule -----------------------------------------------------------------------


def test_admin_writes_need_a_recent_step_up(make_twofold):
    # Two containers on one database: one where step-up lasts 1 s (to let it lapse), one with the 10-minute
    # default (so that the renewed step-up cannot lapse between the step-up and the write).
    short = make_twofold(step_up_seconds=1)
    normal = make_twofold()
    with app_client(short) as client, app_client(normal) as renewing:
        organization, admin = create_organization(short)
        enroll(client, admin)
        bob = create_user(short, organization, "bob")
        base = f"/api/v1/organizations/{organization.id}/users/{bob.user.id}"
        me = client.get("/api/v1/me", headers=bearer(admin.token)).json()
        time.sleep(max(0.0, (parse_time(me["session"]["step_up_until"]) - now()).total_seconds()) + 0.2)

        writes = [
            ("POST", f"{base}/unlock"),
            ("PUT", f"{base}/permissions/organization_administrator"),
            ("DELETE", f"{base}/permissions/organization_administrator"),
        ]
        for method, path in writes:
            refused = client.request(method, path, headers=bearer(admin.token))
            assert refused.status_code == 403, (method, path, refused.text)
            assert refused.json()["code"] == "step_up_required"
            assert refused.headers["content-type"].startswith("application/problem+json")
        # Reads need no step-up, and the session is alive: 403 is not 401.
        assert client.get(base, headers=bearer(admin.token)).status_code == 200
        with short.uow(read_only=True) as uow:
            assert uow.permissions.find(bob.user.id, organization.id, "organization_administrator") is None

        wrong = renewing.post(
            "/api/v1/me/step-up", json={"type": METHOD_TYPE, "code": "0000"}, headers=bearer(admin.token)
        )
        assert wrong.status_code == 400
        assert wrong.json()["code"] == "invalid_code"
        unknown = renewing.post(
            "/api/v1/me/step-up", json={"type": "carrier_pigeon", "code": "1"}, headers=bearer(admin.token)
        )
        assert unknown.status_code == 422
        assert unknown.json()["code"] == "validation_error"
        assert client.post(writes[0][1], headers=bearer(admin.token)).status_code == 403

        stepped = renewing.post(
            "/api/v1/me/step-up", json={"type": METHOD_TYPE, "code": admin.code}, headers=bearer(admin.token)
        )
        assert stepped.status_code == 200, stepped.text
        until = parse_time(stepped.json()["step_up_until"])
        assert abs(until - now() - timedelta(minutes=10)) <= timedelta(seconds=5)
        # A step-up renews step_up_until on the same session, without a new token.
        after = client.get("/api/v1/me", headers=bearer(admin.token)).json()
        assert parse_time(after["session"]["step_up_until"]) == until
        assert parse_time(after["session"]["auth_time"]) == parse_time(me["session"]["auth_time"])

        for method, path in writes:
            done = client.request(method, path, headers=bearer(admin.token))
            assert done.status_code == 204, (method, path, done.text)
        with short.uow(read_only=True) as uow:
            assert uow.permissions.find(bob.user.id, organization.id, "organization_administrator") is None


# -- cookie-authenticated API calls and CSRF ------------------------------------------------------


def page_csrf(client: Any, token: str) -> str:
    """The X-CSRF-Token the pages carry in <meta name="twofold-csrf">."""
    home = client.get("/", headers=cookie(token), follow_redirects=False)
    assert home.status_code == 200, home.text
    found = CSRF_META.search(home.text)
    assert found, home.text
    return found.group(1)


def test_the_session_cookie_authenticates_reads(twofold, client):
    _, _, bob = enrolled_user(twofold, client)
    response = client.get("/api/v1/me", headers=cookie(str(bob.token)))
    assert response.status_code == 200
    assert response.json()["username"] == "bob"
    # The transaction token is no session, in a cookie either.
    transaction = login(client, bob).json()["transaction"]
    assert_unauthenticated(client.get("/api/v1/me", headers=cookie(transaction)))


def test_cookie_authenticated_changes_need_origin_and_csrf_token(twofold, client):
    _, _, bob = enrolled_user(twofold, client)
    token = sign_in(client, bob)
    other = sign_in(client, bob)
    csrf = page_csrf(client, token)
    foreign_csrf = page_csrf(client, other)
    assert csrf != foreign_csrf  # bound to the session

    refused_headers = [
        {},
        {"Origin": PUBLIC_URL},
        {"X-CSRF-Token": csrf},
        {"Origin": "https://evil.example", "X-CSRF-Token": csrf},
        {"Origin": "http://localhost:8001", "X-CSRF-Token": csrf},
        {"Origin": "null", "X-CSRF-Token": csrf},
        {"Origin": PUBLIC_URL, "X-CSRF-Token": "0" * 64},
        {"Origin": PUBLIC_URL, "X-CSRF-Token": foreign_csrf},
    ]
    for path in ("/api/v1/me/sessions/revoke", "/api/v1/logout"):
        for extra in refused_headers:
            response = client.post(path, headers={**cookie(token), **extra})
            assert response.status_code == 403, (path, extra, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.json()["code"] == "forbidden"
    # Nothing happened: both sessions are alive.
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 200
    assert client.get("/api/v1/me", headers=bearer(other)).status_code == 200

    good = {**cookie(token), "Origin": PUBLIC_URL, "X-CSRF-Token": csrf}
    assert client.post("/api/v1/me/sessions/revoke", headers=good).status_code == 204
    assert_unauthenticated(client.get("/api/v1/me", headers=bearer(other)))
    assert client.post("/api/v1/logout", headers=good).status_code == 204
    assert_unauthenticated(client.get("/api/v1/me", headers=cookie(token)))


def test_bearer_calls_need_no_csrf_token(twofold, client):
    _, _, bob = enrolled_user(twofold, client)
    token = sign_in(client, bob)
    response = client.post("/api/v1/me/sessions/revoke", headers={**bearer(token), "Origin": "https://evil.example"})
    assert response.status_code == 204


def test_the_login_api_never_sets_a_cookie(twofold, client):
    _, admin = create_organization(twofold)
    answers: dict[str, Any] = {
        "wrong password": login(client, admin, "wrong password"),
        "malformed": client.post("/api/v1/login", json={"username": "x"}),
        "enrollment_required": login(client, admin),
    }
    transaction = answers["enrollment_required"].json()["transaction"]
    begun = client.post("/api/v1/login/enroll", json={"transaction": transaction, "type": METHOD_TYPE, "name": "Code"})
    code = begun.json()["code"]
    enrollment = {"transaction": transaction, "enrollment_id": begun.json()["enrollment_id"]}
    answers["enroll"] = begun
    answers["enroll wrong code"] = client.post("/api/v1/login/enroll/complete", json={**enrollment, "code": "bad"})
    answers["enroll complete"] = client.post("/api/v1/login/enroll/complete", json={**enrollment, "code": code})
    answers["mfa_required"] = login(client, admin)
    transaction = answers["mfa_required"].json()["transaction"]
    verify = {"transaction": transaction, "type": METHOD_TYPE}
    answers["verify wrong code"] = client.post("/api/v1/login/verify", json={**verify, "code": "bad"})
    answers["verify"] = client.post("/api/v1/login/verify", json={**verify, "code": code})
    answers["verify again"] = client.post("/api/v1/login/verify", json={**verify, "code": code})
    answers["webauthn options"] = client.post("/api/v1/login/webauthn/options", json={"transaction": transaction})
    answers["push"] = client.post("/api/v1/login/push", json={"transaction": transaction})

    expected = {
        "wrong password": 401,
        "malformed": 422,
        "enrollment_required": 200,
        "enroll": 200,
        "enroll complete": 200,
        "mfa_required": 200,
        "verify wrong code": 401,
        "verify": 200,
        "verify again": 410,
    }
    assert {name: answers[name].status_code for name in expected} == expected
    assert answers["enroll wrong code"].status_code in {400, 401}
    for name, response in answers.items():
        assert response.status_code != 500, name
        assert "set-cookie" not in response.headers, (name, response.headers)
    assert not client.cookies
