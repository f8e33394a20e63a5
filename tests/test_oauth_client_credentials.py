"""OAuth 2.0 client credentials (R5; API.md "OAuth 2.0 / OpenID Connect", SECURITY.md "OAuth 2.0 / OIDC"): a
connected app acting on its own behalf gets a short-lived RFC 9068 JWT at POST /oauth2/token and calls the
administration API with it for what its scopes allow, in its own organization, without step-up; the token dies
with the app's disabling, narrowing or deletion; grants are audited; ROPC and implicit are not offered; bad
input is a 4xx OAuth error, never a 500."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet

from twofold.container import Twofold
from twofold.domain.clock import as_utc, utcnow
from twofold.oauth import access_tokens
from twofold.storage import tables

from .conftest import PUBLIC_URL
from .support.flows import bearer, create_organization, create_user, enroll
from .test_admin_api import admin_session, assert_problem
from .test_connected_apps import all_stored_text, app_row, apps_url, audit_rows, retire_now, rotate, rows

TOKEN_URL = "/oauth2/token"
AUDIENCE = f"{PUBLIC_URL}/api/v1"
FORM = {"content-type": "application/x-www-form-urlencoded"}
GRANT = {"grant_type": "client_credentials"}


# -- helpers -----------------------------------------------------------------------------------------------


def new_app(client: Any, org: str, admin_token: str | None, scopes: list[str], **fields: Any) -> dict[str, Any]:
    """A client-credentials app, created by the administrator through the API (the secret comes back once)."""
    body = {"name": "Robot", "grant_type": "client_credentials", "scopes": scopes, **fields}
    response = client.post(apps_url(org), json=body, headers=bearer(admin_token))
    assert response.status_code == 201, response.text
    return dict(response.json())


def grant(client: Any, app: dict[str, Any], scope: str | None = None, secret: str | None = None) -> Any:
    """POST /oauth2/token with HTTP Basic (client_secret_basic)."""
    form = {**GRANT, **({"scope": scope} if scope is not None else {})}
    return client.post(TOKEN_URL, data=form, auth=(app["client_id"], secret or app["client_secret"]))


def token_for(client: Any, app: dict[str, Any], scope: str | None = None) -> str:
    response = grant(client, app, scope)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def oauth_error(response: Any, status: int, error: str) -> dict[str, Any]:
    """An RFC 6749 §5.2 error object (not problem+json), never cached."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["error"] == error, body
    assert "access_token" not in body
    return dict(body)


def users_url(org: str, suffix: str = "") -> str:
    return f"/api/v1/organizations/{org}/users{suffix}"


def list_users(client: Any, org: str, token: str) -> Any:
    return client.get(users_url(org), headers=bearer(token))


def published_keys(client: Any) -> KeySet:
    response = client.get("/oauth2/jwks")
    assert response.status_code == 200, response.text
    return KeySet.import_key_set(response.json())


def header_of(token: str) -> dict[str, Any]:
    encoded = token.split(".")[0]
    return dict(json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))))


def forged(
    twofold: Twofold,
    app: dict[str, Any],
    *,
    header: dict[str, Any] | None = None,
    claims: dict[str, Any] | None = None,
    key: ECKey | None = None,
) -> str:
    """A token like the server's, with the given header fields and claims changed (None leaves one out),
    signed with the server's current key (from the store the server signs with) unless another key is given."""
    kid, current = twofold.signing_keys.current()
    issued = int(utcnow().timestamp())
    body = {
        "iss": PUBLIC_URL,
        "sub": app["client_id"],
        "aud": AUDIENCE,
        "client_id": app["client_id"],
        "scope": " ".join(app["scopes"]),
        "iat": issued,
        "exp": issued + 600,
        "jti": "forged",
        **(claims or {}),
    }
    fields = {"alg": "ES256", "typ": "at+jwt", "kid": kid, **(header or {})}
    return jwt.encode(
        {k: v for k, v in fields.items() if v is not None},
        {k: v for k, v in body.items() if v is not None},
        key or current,
    )


def stored_methods(twofold: Twofold, user_id: str) -> list[Any]:
    return rows(twofold, tables.verification_methods, tables.verification_methods.c.user_id == user_id)


def revoked_at(twofold: Twofold, app_id: str) -> float:
    return as_utc(app_row(twofold, app_id).tokens_valid_after).timestamp()


def _org(twofold: Twofold, org_id: str) -> Any:
    with twofold.uow(read_only=True) as uow:
        return uow.organizations.get(org_id)


def assert_dead(client: Any, org: str, token: str) -> None:
    assert_problem(list_users(client, org, token), 401, "unauthenticated")


# -- the admin API with an app's token ---------------------------------------------------------------------


def test_an_app_lists_users_and_resets_mfa_without_step_up(twofold, client):
    """An app's token lists users and resets a user's MFA (R7) with no session and no step-up; the reset is audited
    with the app as its actor."""
    org_id, alice = admin_session(twofold, client)
    bob = enroll(client, create_user(twofold, _org(twofold, org_id), "bob"))
    assert stored_methods(twofold, bob.user.id)
    app = new_app(client, org_id, alice.token, ["users:read", "mfa:reset"])
    token = token_for(client, app)

    listed = list_users(client, org_id, token)
    assert listed.status_code == 200, listed.text
    assert {u["username"] for u in listed.json()["items"]} == {"alice", "bob"}
    one = client.get(users_url(org_id, f"/{bob.user.id}"), headers=bearer(token))
    assert one.status_code == 200 and one.json()["methods"] == [{"type": "test_code", "name": "Test code"}]

    # An app has no session, so no step-up: the reset goes through at once.
    reset = client.post(users_url(org_id, f"/{bob.user.id}/mfa/reset"), headers=bearer(token))
    assert reset.status_code == 204, reset.text
    assert stored_methods(twofold, bob.user.id) == []
    assert client.get(users_url(org_id, f"/{bob.user.id}"), headers=bearer(token)).json()["methods"] == []
    assert_problem(client.get("/api/v1/me", headers=bearer(bob.token)), 401, "unauthenticated")  # signed out

    (event,) = audit_rows(twofold, "mfa.reset")
    assert event.actor_id == app["id"] and event.subject_id == bob.user.id
    assert event.details["by"] == app["id"] and event.details["methods_deleted"] == 1


def test_a_token_without_the_scope_is_403(twofold, client):
    """Each admin call needs its own scope: an app without it gets 403 and nothing changes."""
    org_id, alice = admin_session(twofold, client)
    bob = enroll(client, create_user(twofold, _org(twofold, org_id), "bob"))
    reader = token_for(client, new_app(client, org_id, alice.token, ["users:read"]))
    assert list_users(client, org_id, reader).status_code == 200

    refusals = [
        client.post(users_url(org_id, f"/{bob.user.id}/mfa/reset"), headers=bearer(reader)),
        client.get(f"/api/v1/organizations/{org_id}/audit-events", headers=bearer(reader)),
        client.post(
            users_url(org_id),
            json={"username": "eve", "email": "eve@example.com", "kind": "user"},
            headers=bearer(reader),
        ),
        client.patch(users_url(org_id, f"/{bob.user.id}"), json={"status": "disabled"}, headers=bearer(reader)),
        client.get(apps_url(org_id), headers=bearer(reader)),
    ]
    for response in refusals:
        assert_problem(response, 403, "forbidden")
    assert len(stored_methods(twofold, bob.user.id)) == 1
    assert audit_rows(twofold, "mfa.reset") == []
    assert [u["username"] for u in list_users(client, org_id, reader).json()["items"]] == ["alice", "bob"]

    # The scope it lacks is the only thing missing: audit:read alone reads the log and nothing else.
    auditor = token_for(client, new_app(client, org_id, alice.token, ["audit:read"]))
    assert client.get(f"/api/v1/organizations/{org_id}/audit-events", headers=bearer(auditor)).status_code == 200
    assert_problem(list_users(client, org_id, auditor), 403, "forbidden")


def test_another_organizations_resources_are_404(twofold, client):
    """An app never reaches outside its organization, by that organization's path or by its own."""
    org_id, alice = admin_session(twofold, client)
    other, _ = create_organization(twofold, "Globex", "gus")
    carol = enroll(client, create_user(twofold, other, "carol"))
    token = token_for(client, new_app(client, org_id, alice.token, ["users:read", "mfa:reset", "audit:read"]))

    for response in (
        list_users(client, other.id, token),
        client.get(users_url(other.id, f"/{carol.user.id}"), headers=bearer(token)),
        client.post(users_url(other.id, f"/{carol.user.id}/mfa/reset"), headers=bearer(token)),
        client.get(f"/api/v1/organizations/{other.id}/audit-events", headers=bearer(token)),
        # The other organization's user through the app's own organization is no better.
        client.get(users_url(org_id, f"/{carol.user.id}"), headers=bearer(token)),
        client.post(users_url(org_id, f"/{carol.user.id}/mfa/reset"), headers=bearer(token)),
    ):
        assert_problem(response, 404, "not_found")
    assert len(stored_methods(twofold, carol.user.id)) == 1
    assert audit_rows(twofold, "mfa.reset") == []


def test_self_service_refuses_an_app_token(twofold, client):
    """An app's token is no user session: the self-service API answers 401."""
    org_id, alice = admin_session(twofold, client)
    token = token_for(client, new_app(client, org_id, alice.token, ["users:read", "users:write"]))
    for method, path in (
        ("GET", "/api/v1/me"),
        ("GET", "/api/v1/me/methods"),
        ("POST", "/api/v1/me/sessions/revoke"),
        ("POST", "/api/v1/logout"),
    ):
        response = client.request(method, path, headers=bearer(token))
        assert_problem(response, 401, "unauthenticated")


# -- the token ---------------------------------------------------------------------------------------------


def test_the_token_is_an_rfc_9068_jwt_that_verifies_against_the_published_keys(twofold, client):
    """The answer (no refresh token, no-store) and the JWT, checked with joserfc against /oauth2/jwks alone."""
    org_id, alice = admin_session(twofold, client)
    app = new_app(client, org_id, alice.token, ["users:read", "mfa:reset"])
    before = int(utcnow().timestamp())
    response = grant(client, app)
    after = int(utcnow().timestamp())
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body = response.json()
    # RFC 6749 §4.4.3: no refresh token for client credentials.
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["token_type"] == "Bearer" and body["expires_in"] == 600
    assert body["scope"].split() == ["mfa:reset", "users:read"]

    token = body["access_token"]
    keys = published_keys(client)
    decoded = jwt.decode(token, keys, algorithms=["ES256"])
    assert decoded.header["typ"] == "at+jwt" and decoded.header["alg"] == "ES256"
    assert decoded.header["kid"] in {key.kid for key in keys.keys}
    claims = decoded.claims
    jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": PUBLIC_URL},
        aud={"essential": True, "value": AUDIENCE},
        sub={"essential": True, "value": app["client_id"]},
        client_id={"essential": True, "value": app["client_id"]},
        exp={"essential": True},
        iat={"essential": True},
        jti={"essential": True},
    ).validate(claims)
    assert claims["scope"] == body["scope"]
    assert before <= claims["iat"] <= after + 1
    assert claims["exp"] - claims["iat"] == 600
    assert app["client_secret"] not in token

    # Each grant is a new token.
    assert token_for(client, app) != token


def test_a_subset_of_the_scopes_gives_only_that_subset(twofold, client):
    """A grant for some of the app's scopes carries only those, and its token can do only that."""
    org_id, alice = admin_session(twofold, client)
    bob = enroll(client, create_user(twofold, _org(twofold, org_id), "bob"))
    app = new_app(client, org_id, alice.token, ["users:read", "mfa:reset", "audit:read"])

    response = grant(client, app, "users:read")
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "users:read"
    narrow = response.json()["access_token"]
    assert jwt.decode(narrow, published_keys(client)).claims["scope"] == "users:read"
    assert list_users(client, org_id, narrow).status_code == 200
    assert_problem(
        client.post(users_url(org_id, f"/{bob.user.id}/mfa/reset"), headers=bearer(narrow)), 403, "forbidden"
    )
    assert_problem(client.get(f"/api/v1/organizations/{org_id}/audit-events", headers=bearer(narrow)), 403, "forbidden")
    assert len(stored_methods(twofold, bob.user.id)) == 1

    two = grant(client, app, "  audit:read   users:read ")
    assert two.status_code == 200, two.text
    assert sorted(two.json()["scope"].split()) == ["audit:read", "users:read"]

    # No scope asked for: every scope the app holds.
    assert sorted(grant(client, app).json()["scope"].split()) == ["audit:read", "mfa:reset", "users:read"]


@pytest.mark.parametrize(
    "scope",
    ["users:write", "users:read users:write", "openid", "users:read openid", "offline_access", "admin", "users:*"],
)
def test_a_scope_not_granted_is_invalid_scope(twofold, client, scope):
    """SECURITY.md: a scope the app was not granted (or one of the other kind of app) is invalid_scope."""
    org_id, alice = admin_session(twofold, client)
    app = new_app(client, org_id, alice.token, ["users:read", "mfa:reset"])
    oauth_error(grant(client, app, scope), 400, "invalid_scope")
    assert audit_rows(twofold, "oauth.granted") == []


# -- client authentication ---------------------------------------------------------------------------------


def test_client_authentication_failures_are_invalid_client(twofold, client):
    """Wrong, foreign, empty or unreadable credentials are 401 invalid_client, never a token or a 500."""
    org_id, alice = admin_session(twofold, client)
    app = new_app(client, org_id, alice.token, ["users:read"])
    other = new_app(client, org_id, alice.token, ["users:read"], name="Other")

    basic_failures = [
        client.post(TOKEN_URL, data=GRANT, auth=(app["client_id"], "tfcs_" + "A" * 43)),
        client.post(TOKEN_URL, data=GRANT, auth=(app["client_id"], other["client_secret"])),
        client.post(TOKEN_URL, data=GRANT, auth=("tfc_" + "B" * 22, app["client_secret"])),
        client.post(TOKEN_URL, data=GRANT, auth=("x" * 500, app["client_secret"])),
        client.post(TOKEN_URL, data=GRANT, auth=(app["client_id"], "")),
        client.post(TOKEN_URL, data=GRANT),  # no credentials at all
        client.post(TOKEN_URL, data=GRANT, headers={"authorization": "Basic not-base64!"}),
        client.post(TOKEN_URL, data=GRANT, headers={"authorization": "Basic " + _b64(app["client_id"].encode())}),
        client.post(TOKEN_URL, data=GRANT, headers={"authorization": f"Bearer {app['client_secret']}"}),
        # Bytes that are not UTF-8, and a header that is not ASCII: unreadable credentials, not a crash.
        client.post(TOKEN_URL, data=GRANT, headers={"authorization": "Basic " + _b64(b"\xff\xfe:\xff")}),
        client.post(TOKEN_URL, data=GRANT, headers={"authorization": "Basic \xe9t\xe9".encode("latin-1")}),
    ]
    for response in basic_failures:
        oauth_error(response, 401, "invalid_client")
    # Whatever the server says about how to authenticate, it never echoes a secret.
    assert all(app["client_secret"] not in r.text and other["client_secret"] not in r.text for r in basic_failures)
    assert audit_rows(twofold, "oauth.granted") == []


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_client_secret_post_for_a_basic_app_is_refused(twofold, client):
    """An app authenticates only by the method it was registered with."""
    org_id, alice = admin_session(twofold, client)
    app = new_app(client, org_id, alice.token, ["users:read"])
    assert app["token_endpoint_auth_method"] == "client_secret_basic"
    response = client.post(
        TOKEN_URL, data={**GRANT, "client_id": app["client_id"], "client_secret": app["client_secret"]}
    )
    oauth_error(response, 401, "invalid_client")
    assert audit_rows(twofold, "oauth.granted") == []


def test_an_app_registered_for_client_secret_post_uses_the_form(twofold, client):
    """client_secret_post: the credentials in the form work, HTTP Basic does not."""
    org_id, alice = admin_session(twofold, client)
    app = new_app(client, org_id, alice.token, ["users:read"], token_endpoint_auth_method="client_secret_post")
    assert app["token_endpoint_auth_method"] == "client_secret_post"
    form = {**GRANT, "client_id": app["client_id"], "client_secret": app["client_secret"]}
    response = client.post(TOKEN_URL, data=form)
    assert response.status_code == 200, response.text
    assert list_users(client, org_id, response.json()["access_token"]).status_code == 200

    # Only the registered method: HTTP Basic is refused for it, and so is a wrong secret in the form.
    oauth_error(grant(client, app), 401, "invalid_client")
    oauth_error(client.post(TOKEN_URL, data={**form, "client_secret": "tfcs_" + "C" * 43}), 401, "invalid_client")
    # An unknown client_id in the form: invalid_client (400 is allowed when no Authorization header was sent).
    unknown = client.post(TOKEN_URL, data={**form, "client_id": "tfc_" + "D" * 22})
    assert unknown.status_code in (400, 401)
    oauth_error(unknown, unknown.status_code, "invalid_client")
    assert len(audit_rows(twofold, "oauth.granted")) == 1


# -- grant types -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "form",
    [
        {"grant_type": "password", "username": "alice", "password": "correct horse battery staple"},  # ROPC
        {"grant_type": "token"},  # implicit-like
        {"grant_type": "implicit"},
        {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": "x.y.z"},
        {"grant_type": "CLIENT_CREDENTIALS"},
    ],
)
def test_other_grant_types_are_not_offered(twofold, client, form):
    """SECURITY.md: ROPC and implicit (and any grant type not offered) are unsupported_grant_type."""
    org_id, alice = admin_session(twofold, client)
    app = new_app(client, org_id, alice.token, ["users:read"])
    response = client.post(TOKEN_URL, data=form, auth=(app["client_id"], app["client_secret"]))
    oauth_error(response, 400, "unsupported_grant_type")
    assert audit_rows(twofold, "oauth.granted") == []


def test_an_app_acting_on_its_own_behalf_gets_no_token_by_other_grants(twofold, client):
    """Neither a refresh token nor a code is ever a way in for a client-credentials app."""
    org_id, alice = admin_session(twofold, client)
    app = new_app(client, org_id, alice.token, ["users:read"])
    auth = (app["client_id"], app["client_secret"])
    for form in (
        {"grant_type": "refresh_token", "refresh_token": "x" * 43},
        {"grant_type": "authorization_code", "code": "x" * 43, "redirect_uri": "https://a.example.com/cb"},
    ):
        response = client.post(TOKEN_URL, data=form, auth=auth)
        assert response.status_code == 400, response.text
        assert response.json()["error"] in {"unsupported_grant_type", "unauthorized_client"}
        assert "access_token" not in response.json()
    assert audit_rows(twofold, "oauth.granted") == []


def test_an_app_acting_for_users_cannot_use_client_credentials(twofold, client):
    """An authorization-code app is unauthorized_client for client_credentials."""
    org_id, alice = admin_session(twofold, client)
    body = {
        "name": "Portal",
        "grant_type": "authorization_code",
        "scopes": ["openid"],
        "redirect_uris": ["https://portal.example.com/cb"],
    }
    created = client.post(apps_url(org_id), json=body, headers=bearer(alice.token))
    assert created.status_code == 201, created.text
    web = created.json()
    response = client.post(TOKEN_URL, data=GRANT, auth=(web["client_id"], web["client_secret"]))
    oauth_error(response, 400, "unauthorized_client")
    assert audit_rows(twofold, "oauth.granted") == []


# -- revocation: disabling, narrowing, deleting; secret rotation -------------------------------------------


def patch_app(client: Any, org_id: str, admin_token: str | None, app_id: str, body: dict[str, Any]) -> None:
    response = client.patch(apps_url(org_id, app_id), json=body, headers=bearer(admin_token))
    assert response.status_code == 200, response.text


def test_disabling_kills_tokens_and_grants_reenabling_brings_no_old_token_back(twofold, client):
    """Disabling kills the app's tokens and grants at once; enabling it again revives no old token, and a token
    granted right after (in the same second as the revocation) is valid."""
    org_id, alice = admin_session(twofold, client)
    app = new_app(client, org_id, alice.token, ["users:read"])
    token = token_for(client, app)
    assert list_users(client, org_id, token).status_code == 200

    patch_app(client, org_id, alice.token, app["id"], {"enabled": False})
    assert_dead(client, org_id, token)
    oauth_error(grant(client, app), 401, "invalid_client")

    patch_app(client, org_id, alice.token, app["id"], {"enabled": True})
    assert_dead(client, org_id, token)  # issued before tokens_valid_after
    # A new one works, even granted within the very second of the revocation (iat has whole seconds).
    fresh = token_for(client, app)
    assert list_users(client, org_id, fresh).status_code == 200
    assert jwt.decode(fresh, published_keys(client)).claims["iat"] >= revoked_at(twofold, app["id"])


def test_narrowing_the_scopes_kills_tokens_widening_does_not(twofold, client):
    """Narrowing the scopes kills the tokens; the next grant carries the narrower scope."""
    org_id, alice = admin_session(twofold, client)
    app = new_app(client, org_id, alice.token, ["users:read", "audit:read"])
    token = token_for(client, app)

    patch_app(client, org_id, alice.token, app["id"], {"scopes": ["users:read", "audit:read", "mfa:reset"]})
    assert list_users(client, org_id, token).status_code == 200

    patch_app(client, org_id, alice.token, app["id"], {"scopes": ["users:read"]})
    assert_dead(client, org_id, token)
    fresh = grant(client, app)
    assert fresh.status_code == 200, fresh.text
    assert fresh.json()["scope"] == "users:read"
    assert list_users(client, org_id, fresh.json()["access_token"]).status_code == 200
    assert_problem(
        client.get(f"/api/v1/organizations/{org_id}/audit-events", headers=bearer(fresh.json()["access_token"])),
        403,
        "forbidden",
    )
    oauth_error(grant(client, app, "audit:read"), 400, "invalid_scope")


def test_deleting_the_app_kills_its_tokens_and_grants(twofold, client):
    """A deleted app's tokens die with it; another app's live on."""
    org_id, alice = admin_session(twofold, client)
    app = new_app(client, org_id, alice.token, ["users:read"])
    keep = new_app(client, org_id, alice.token, ["users:read"], name="Keep")
    token, kept = token_for(client, app), token_for(client, keep)
    response = client.delete(apps_url(org_id, app["id"]), headers=bearer(alice.token))
    assert response.status_code == 204, response.text
    assert_dead(client, org_id, token)
    oauth_error(grant(client, app), 401, "invalid_client")
    assert list_users(client, org_id, kept).status_code == 200


def test_a_rotated_secret_works_during_its_grace_period_only(twofold, client):
    """After a rotation the old secret works during the grace period, and not once it has ended."""
    org_id, alice = admin_session(twofold, client)
    app = new_app(client, org_id, alice.token, ["users:read"])
    first = app["client_secret"]
    token = token_for(client, app)

    second = rotate(client, org_id, alice.token, app["id"]).json()["client_secret"]  # 24 h of grace
    assert grant(client, app, secret=first).status_code == 200
    assert grant(client, app, secret=second).status_code == 200
    assert list_users(client, org_id, token).status_code == 200  # a new secret revokes no token

    third = rotate(client, org_id, alice.token, app["id"], {"grace_seconds": 0}).json()["client_secret"]
    oauth_error(grant(client, app, secret=first), 401, "invalid_client")
    oauth_error(grant(client, app, secret=second), 401, "invalid_client")
    assert grant(client, app, secret=third).status_code == 200


# -- forged and stale tokens; signing-key rotation ---------------------------------------------------------


def test_forged_expired_and_foreign_tokens_are_401(twofold, client):
    """Only a token signed by a published key, of type at+jwt, for this issuer and audience, unexpired, of a live
    app, is accepted."""
    org_id, alice = admin_session(twofold, client)
    app = new_app(client, org_id, alice.token, ["users:read"])
    genuine = forged(twofold, app)
    assert list_users(client, org_id, genuine).status_code == 200  # the forger's recipe is right

    kid, _ = twofold.signing_keys.current()
    long_ago = utcnow() - timedelta(seconds=700)
    expired = access_tokens.issue(
        twofold.signing_keys.current()[1],
        kid,
        issuer=PUBLIC_URL,
        audience=AUDIENCE,
        subject=app["client_id"],
        client_id=app["client_id"],
        scope="users:read",
        now=long_ago,
        lifetime=600,
    ).token
    now = int(utcnow().timestamp())
    bad = {
        "another key with the same kid": forged(twofold, app, key=ECKey.generate_key("P-256", private=True)),
        "expired": expired,
        "expired a minute ago": forged(twofold, app, claims={"iat": now - 660, "exp": now - 60}),
        "no exp": forged(twofold, app, claims={"exp": None}),
        "aud changed": forged(twofold, app, claims={"aud": PUBLIC_URL}),
        "aud of another server": forged(twofold, app, claims={"aud": "https://other.example.com/api/v1"}),
        "iss changed": forged(twofold, app, claims={"iss": "https://other.example.com"}),
        "typ JWT": forged(twofold, app, header={"typ": "JWT"}),
        "no typ": forged(twofold, app, header={"typ": None}),
        "no client_id": forged(twofold, app, claims={"client_id": None}),
        "an unknown client": forged(twofold, app, claims={"client_id": "tfc_" + "E" * 22}),
        "unsigned": _unsigned(genuine),
        "tampered scope": _with_claims(genuine, {"scope": "users:read mfa:reset"}),
        "garbage": "a.b.c",
    }
    for name, token in bad.items():
        response = list_users(client, org_id, token)
        assert response.status_code == 401, (name, response.text)
        assert_problem(response, 401, "unauthenticated")


def _unsigned(token: str) -> str:
    header = {**header_of(token), "alg": "none"}
    encoded = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    return f"{encoded}.{token.split('.')[1]}."


def _with_claims(token: str, changes: dict[str, Any]) -> str:
    head, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    encoded = base64.urlsafe_b64encode(json.dumps({**claims, **changes}).encode()).rstrip(b"=").decode()
    return f"{head}.{encoded}.{signature}"


def test_tokens_outlive_a_signing_key_rotation(twofold, client):
    """After `keys rotate` the old key signs until the announced moment and then stays published, so its tokens
    still verify; from that moment new tokens use the new key."""
    org_id, alice = admin_session(twofold, client)
    app = new_app(client, org_id, alice.token, ["users:read"])
    old = token_for(client, app)
    old_kid = header_of(old)["kid"]

    new_kid, starts = twofold.signing_keys.rotate()
    assert new_kid != old_kid and starts > utcnow()
    assert {key.kid for key in published_keys(client).keys} == {old_kid, new_kid}
    assert header_of(token_for(client, app))["kid"] == old_kid  # announced, not yet signing

    retire_now(twofold, old_kid)  # the announced moment has come (no sleeping)
    assert list_users(client, org_id, old).status_code == 200  # the old key stays published
    new = token_for(client, app)
    assert header_of(new)["kid"] == new_kid
    assert list_users(client, org_id, new).status_code == 200
    jwt.decode(new, published_keys(client), algorithms=["ES256"])


def test_an_immediate_rotation_refuses_what_the_old_key_signed(twofold, client):
    org_id, alice = admin_session(twofold, client)
    app = new_app(client, org_id, alice.token, ["users:read"])
    old = token_for(client, app)
    new_kid, _ = twofold.signing_keys.rotate(immediately=True)
    assert list_users(client, org_id, old).status_code == 401
    new = token_for(client, app)
    assert header_of(new)["kid"] == new_kid
    assert list_users(client, org_id, new).status_code == 200


def test_tokens_naming_unknown_keys_do_not_each_read_the_database(twofold, client, monkeypatch):
    """A kid not among the published keys makes the process read them again, at most once a second."""
    org_id, alice = admin_session(twofold, client)
    app = new_app(client, org_id, alice.token, ["users:read"])
    good = token_for(client, app)
    assert list_users(client, org_id, good).status_code == 200
    reads = []
    original = twofold.signing_keys._published
    monkeypatch.setattr(twofold.signing_keys, "_published", lambda uow: reads.append(1) or original(uow))
    for n in range(20):
        made_up = forged(twofold, app, header={"kid": f"made-up-{n}"})
        assert list_users(client, org_id, made_up).status_code == 401
    assert len(reads) <= 1


# -- audit -------------------------------------------------------------------------------------------------


def test_every_grant_is_audited_without_secret_or_token(twofold, client):
    """R9: every grant is an oauth.granted event naming the app and the scope; refusals grant nothing; neither the
    secret nor a token is ever stored."""
    org_id, alice = admin_session(twofold, client)
    app = new_app(client, org_id, alice.token, ["users:read", "audit:read"])
    tokens = [token_for(client, app), token_for(client, app, "users:read")]
    oauth_error(grant(client, app, "mfa:reset"), 400, "invalid_scope")
    oauth_error(grant(client, app, secret="tfcs_" + "F" * 43), 401, "invalid_client")

    events = audit_rows(twofold, "oauth.granted")
    assert len(events) == 2
    for event, scope in zip(events, ["audit:read users:read", "users:read"], strict=True):
        assert event.organization_id == org_id
        assert event.actor_id == app["id"]
        assert event.details == {"client_id": app["client_id"], "grant_type": "client_credentials", "scope": scope}
        assert event.ip is not None

    # The app reads its own grants in the log.
    listed = client.get(
        f"/api/v1/organizations/{org_id}/audit-events", params={"type": "oauth.granted"}, headers=bearer(tokens[0])
    )
    assert listed.status_code == 200, listed.text
    assert [e["actor_id"] for e in listed.json()["items"]] == [app["id"], app["id"]]

    stored = all_stored_text(twofold)
    assert app["client_secret"] not in stored
    for token in tokens:
        assert token not in stored and token.split(".")[2] not in stored


# -- bad input ---------------------------------------------------------------------------------------------


def test_bad_input_is_invalid_request_never_a_500(twofold, client):
    """Malformed forms, JSON, repeated or missing parameters and oversized bodies (chunked too) are 400
    invalid_request; past the server-wide body limit, 413."""
    org_id, alice = admin_session(twofold, client)
    app = new_app(client, org_id, alice.token, ["users:read"])
    auth = (app["client_id"], app["client_secret"])

    def chunked(size: int) -> Any:
        yield b"grant_type=client_credentials&pad="
        for _ in range(size // 1024):
            yield b"x" * 1024

    requests = {
        "JSON instead of a form": dict(json=GRANT),
        "a JSON body labelled as a form": dict(content=json.dumps(GRANT).encode(), headers=FORM),
        "no content type": dict(content=b"grant_type=client_credentials"),
        "text/plain": dict(content=b"grant_type=client_credentials", headers={"content-type": "text/plain"}),
        "multipart": dict(data=GRANT, files={"f": ("f.txt", b"x")}),
        "an empty form": dict(content=b"", headers=FORM),
        "garbage": dict(content=b"%%%\xff\xfe=&&=\x00", headers=FORM),
        "no grant_type": dict(content=b"scope=users%3Aread", headers=FORM),
        "an empty grant_type": dict(content=b"grant_type=", headers=FORM),
        "grant_type twice": dict(content=b"grant_type=client_credentials&grant_type=password", headers=FORM),
        "scope twice": dict(content=b"grant_type=client_credentials&scope=users:read&scope=x", headers=FORM),
        "too many fields": dict(content="&".join(f"f{i}=1" for i in range(50)).encode(), headers=FORM),
        "over 16 KiB": dict(content=b"grant_type=client_credentials&pad=" + b"x" * 20_000, headers=FORM),
        "over 16 KiB, chunked": dict(content=chunked(100 * 1024), headers=FORM),
    }
    for name, arguments in requests.items():
        response = client.post(TOKEN_URL, auth=auth, **arguments)
        assert response.status_code == 400, (name, response.status_code, response.text)
        oauth_error(response, 400, "invalid_request")

    # Past the server's body limit for every endpoint, the limit's own 413 answers first.
    huge = client.post(
        TOKEN_URL, auth=auth, content=b"grant_type=client_credentials&pad=" + b"x" * 300_000, headers=FORM
    )
    assert_problem(huge, 413, "payload_too_large")
    huge_chunked = client.post(TOKEN_URL, auth=auth, content=chunked(2 * 1024 * 1024), headers=FORM)
    assert_problem(huge_chunked, 413, "payload_too_large")

    assert client.get(TOKEN_URL).status_code == 405
    assert audit_rows(twofold, "oauth.granted") == []
    # And the endpoint still grants afterwards.
    assert grant(client, app).status_code == 200


def test_odd_but_valid_forms_are_accepted(twofold, client):
    """A charset parameter and an unknown field do not stop a grant."""
    org_id, alice = admin_session(twofold, client)
    app = new_app(client, org_id, alice.token, ["users:read"])
    auth = (app["client_id"], app["client_secret"])
    for content_type in ("application/x-www-form-urlencoded; charset=utf-8", "application/x-www-form-urlencoded"):
        response = client.post(
            TOKEN_URL,
            auth=auth,
            content=b"grant_type=client_credentials&unknown=%C3%A9",
            headers={"content-type": content_type},
        )
        assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer ", "Bearer a.b", "Bearer a.b.c.d", "Bearer ..", "Basic abc", "Bearer " + "x.y.z" * 2000],
)
def test_malformed_bearer_headers_on_the_admin_api_are_401(twofold, client, header):
    """A malformed Authorization header on the admin API is 401, never a 500."""
    org_id, _ = admin_session(twofold, client)
    response = client.get(users_url(org_id), headers={"authorization": header})
    assert_problem(response, 401, "unauthenticated")


# -- discovery ---------------------------------------------------------------------------------------------


def test_discovery_lists_the_token_endpoint_the_keys_and_client_credentials_never_ropc_or_implicit(twofold, client):
    """Discovery names the token endpoint and the keys under the public URL, and offers client_credentials."""
    response = client.get("/.well-known/openid-configuration")
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["issuer"] == PUBLIC_URL
    assert document["token_endpoint"] == f"{PUBLIC_URL}/oauth2/token"
    assert document["jwks_uri"] == f"{PUBLIC_URL}/oauth2/jwks"
    assert "client_credentials" in document["grant_types_supported"]
    # ROPC and implicit are never offered (RFC 9700 §2.4, §2.1.2).
    assert not {"password", "implicit"} & set(document["grant_types_supported"])
    assert not {"token", "id_token", "id_token token", "code token"} & set(document["response_types_supported"])
    assert set(document["token_endpoint_auth_methods_supported"]) == {
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
    }
    assert {"users:read", "mfa:reset"} <= set(document["scopes_supported"])
    # The advertised endpoints answer at those paths.
    assert client.get("/oauth2/jwks").status_code == 200
    assert client.post("/oauth2/token", data=GRANT).status_code == 401
