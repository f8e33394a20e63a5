"""Connected apps (R5; API.md "Administration" connected-apps rows, "OAuth 2.0 / OpenID Connect" /oauth2/jwks,
"Command line" `twofold keys rotate`): the registry of an organization's OAuth 2.0 clients, their secrets
(shown once, stored as an HMAC digest, rotated with a grace period), token revocation on disable or narrowing,
and the published token-signing keys."""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import datetime, timedelta
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import ECKey, KeySet
from sqlalchemy import delete, select, update

from twofold.cli.main import main
from twofold.container import Twofold
from twofold.domain.clock import utcnow
from twofold.oauth.client_credentials import SecretDigests
from twofold.storage import tables

from .conftest import PUBLIC_URL, SECRET_KEY
from .support.flows import bearer, create_user, enroll
from .test_admin_api import admin_session, assert_problem, expire_step_up

ADMIN_SCOPES = ["users:read", "users:write", "mfa:reset", "exempt_accounts:write", "audit:read", "connected_apps:write"]
USER_SCOPES = ["openid", "profile", "email", "offline_access"]
CLIENT_ID = re.compile(r"^tfc_[A-Za-z0-9_-]{22}$")
# 32 bytes from the CSPRNG, base64url without padding: 43 characters, 256 bits.
CLIENT_SECRET = re.compile(r"^tfcs_[A-Za-z0-9_-]{43}$")
HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")


# -- helpers -----------------------------------------------------------------------------------------------


def apps_url(org: str, app_id: str | None = None, suffix: str = "") -> str:
    base = f"/api/v1/organizations/{org}/connected-apps"
    return base if app_id is None else f"{base}/{app_id}{suffix}"


def service_app(**fields: Any) -> dict[str, Any]:
    return {"name": "Nightly sync", "grant_type": "client_credentials", "scopes": ["users:read"], **fields}


def web_app(**fields: Any) -> dict[str, Any]:
    return {
        "name": "Intranet",
        "grant_type": "authorization_code",
        "scopes": ["openid", "email"],
        "redirect_uris": ["https://intranet.example.com/callback"],
        **fields,
    }


def create(client: Any, org: str, token: str | None, body: dict[str, Any]) -> Any:
    return client.post(apps_url(org), json=body, headers=bearer(token))


def created(client: Any, org: str, token: str | None, body: dict[str, Any]) -> dict[str, Any]:
    response = create(client, org, token, body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def patch(client: Any, org: str, token: str | None, app_id: str, body: dict[str, Any]) -> Any:
    return client.patch(apps_url(org, app_id), json=body, headers=bearer(token))


def rotate(client: Any, org: str, token: str | None, app_id: str, body: dict[str, Any] | None = None) -> Any:
    return client.post(apps_url(org, app_id, "/secret"), json=body, headers=bearer(token))


def public_ec_jwks() -> dict[str, Any]:
    key = ECKey.generate_key("P-256", private=True)
    return {"keys": [{**key.as_dict(private=False), "kid": "client-key-1", "use": "sig", "alg": "ES256"}]}


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def rows(twofold: Twofold, table: Any, *where: Any) -> list[Any]:
    with twofold.uow.engine.connect() as connection:
        return list(connection.execute(select(table).where(*where)).all())


def app_row(twofold: Twofold, app_id: str) -> Any:
    (row,) = rows(twofold, tables.connected_apps, tables.connected_apps.c.id == app_id)
    return row


def secret_rows(twofold: Twofold, app_id: str) -> list[Any]:
    return sorted(
        rows(twofold, tables.client_secrets, tables.client_secrets.c.app_id == app_id), key=lambda r: r.created_at
    )


def audit_rows(twofold: Twofold, event_type: str | None = None) -> list[Any]:
    twofold.deferred_audit.flush()  # token grants are audited in batches
    c = tables.audit_events.c
    found = rows(twofold, tables.audit_events, *([c.type == event_type] if event_type else []))
    return sorted(found, key=lambda r: r.at)


def all_stored_text(twofold: Twofold) -> str:
    """Every row of the tables a secret could leak into, as one string."""
    with twofold.uow.engine.connect() as connection:
        return "\n".join(
            json.dumps([str(value) for value in row])
            for table in (tables.audit_events, tables.connected_apps, tables.client_secrets)
            for row in connection.execute(select(table)).all()
        )


def signing_key_rows(twofold: Twofold) -> list[Any]:
    return sorted(rows(twofold, tables.signing_keys), key=lambda r: r.created_at)


def published(client: Any) -> list[dict[str, Any]]:
    response = client.get("/oauth2/jwks")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"keys"}, body
    return list(body["keys"])


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


def keys_rotate(capsys: pytest.CaptureFixture[str], *options: str) -> str:
    """`twofold keys rotate`; returns the new key's id as the command prints it."""
    assert main(["keys", "rotate", *options]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    match = re.search(r"New token-signing key ([^\s,]+),", out)
    assert match, out
    return match.group(1)


# -- creation -----------------------------------------------------------------------------------------------


def test_create_a_client_credentials_app_shows_its_secret_once(twofold, client):
    org, alice = admin_session(twofold, client)
    response = create(client, org, alice.token, service_app(scopes=[*ADMIN_SCOPES, "users:read"]))
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert CLIENT_ID.match(body["client_id"]), body
    assert CLIENT_SECRET.match(body["client_secret"]), body
    assert body["name"] == "Nightly sync"
    assert body["grant_type"] == "client_credentials"
    assert body["scopes"] == sorted(ADMIN_SCOPES)  # duplicates dropped
    assert body["redirect_uris"] == []
    assert body["enabled"] is True and body["first_party"] is False
    assert body["token_endpoint_auth_method"] == "client_secret_basic"
    assert body["jwks"] is None
    assert len(body["secrets"]) == 1 and body["secrets"][0]["expires_at"] is None
    secret = body["client_secret"]

    # Never again: neither the app nor the list shows it.
    one = client.get(apps_url(org, body["id"]), headers=bearer(alice.token))
    assert one.status_code == 200, one.text
    assert "client_secret" not in one.json() and secret not in one.text
    assert one.json() == {k: v for k, v in body.items() if k != "client_secret"}
    listed = client.get(apps_url(org), headers=bearer(alice.token))
    assert listed.status_code == 200 and [a["id"] for a in listed.json()] == [body["id"]]
    assert secret not in listed.text

    # Stored as a keyed digest only: not the secret, not a plain hash of it.
    (stored,) = secret_rows(twofold, body["id"])
    assert HEX_DIGEST.match(stored.digest)
    assert stored.digest == SecretDigests(SECRET_KEY).digest(secret)
    assert stored.digest != hashlib.sha256(secret.encode()).hexdigest()
    assert stored.expires_at is None
    assert secret not in all_stored_text(twofold)
    assert secret.removeprefix("tfcs_") not in all_stored_text(twofold)


def test_every_app_gets_its_own_client_id_and_secret(twofold, client):
    org, alice = admin_session(twofold, client)
    first = created(client, org, alice.token, service_app())
    second = created(client, org, alice.token, service_app())
    assert first["client_id"] != second["client_id"]
    assert first["client_secret"] != second["client_secret"]
    assert [a["id"] for a in client.get(apps_url(org), headers=bearer(alice.token)).json()] == [
        first["id"],
        second["id"],
    ]


def test_create_an_authorization_code_app(twofold, client):
    org, alice = admin_session(twofold, client)
    uris = ["https://intranet.example.com/callback", "https://intranet.example.com/other"]
    body = created(
        client, org, alice.token, web_app(scopes=USER_SCOPES, redirect_uris=uris, first_party=True,
                                          token_endpoint_auth_method="client_secret_post"),
    )
    assert body["grant_type"] == "authorization_code"
    assert body["scopes"] == sorted(USER_SCOPES)
    assert body["redirect_uris"] == uris
    assert body["first_party"] is True
    assert body["token_endpoint_auth_method"] == "client_secret_post"
    assert CLIENT_SECRET.match(body["client_secret"])
    row = app_row(twofold, body["id"])
    assert row.redirect_uris == uris and row.scopes == sorted(USER_SCOPES)
    assert row.created_by == alice.user.id


def test_first_party_is_only_for_apps_acting_for_users(twofold, client):
    org, alice = admin_session(twofold, client)
    body = created(client, org, alice.token, service_app(first_party=True))
    assert body["first_party"] is False


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(service_app(scopes=["users:read", "users:delete"]), id="unknown-scope"),
        pytest.param(service_app(scopes=["openid"]), id="user-scope-on-client-credentials"),
        pytest.param(service_app(scopes=["users:read", "email"]), id="mixed-scopes-on-client-credentials"),
        pytest.param(web_app(scopes=["openid", "users:read"]), id="admin-scope-on-authorization-code"),
        pytest.param(web_app(scopes=["audit:read"]), id="only-admin-scope-on-authorization-code"),
        pytest.param(service_app(scopes=[]), id="no-scopes"),
        pytest.param(web_app(scopes=[]), id="no-scopes-authorization-code"),
        pytest.param(service_app(scopes=[""]), id="empty-scope-name"),
        pytest.param(service_app(redirect_uris=["https://a.example.com/cb"]), id="redirect-on-client-credentials"),
        pytest.param(web_app(redirect_uris=[]), id="no-redirect-uris"),
        pytest.param({k: v for k, v in web_app().items() if k != "redirect_uris"}, id="redirect-uris-missing"),
        pytest.param(web_app(redirect_uris=["http://app.example.com/cb"]), id="http-non-loopback"),
        pytest.param(web_app(redirect_uris=["http://localhost.example.com/cb"]), id="http-localhost-lookalike"),
        pytest.param(web_app(redirect_uris=["http://10.0.0.1/cb"]), id="http-private-address"),
        pytest.param(web_app(redirect_uris=["https://app.example.com/cb#done"]), id="fragment"),
        pytest.param(web_app(redirect_uris=["https://app.example.com/cb#"]), id="empty-fragment"),
        pytest.param(web_app(redirect_uris=["https://*.example.com/cb"]), id="wildcard-host"),
        pytest.param(web_app(redirect_uris=["https://app.example.com/*"]), id="wildcard-path"),
        pytest.param(web_app(redirect_uris=["/callback"]), id="relative"),
        pytest.param(web_app(redirect_uris=["app.example.com/callback"]), id="no-scheme"),
        pytest.param(web_app(redirect_uris=["https:///callback"]), id="no-host"),
        pytest.param(web_app(redirect_uris=["https://app.example.com/a b"]), id="space"),
        pytest.param(web_app(redirect_uris=["https://app.example.com/cb\n"]), id="newline"),
        pytest.param(web_app(redirect_uris=["javascript:alert(1)"]), id="javascript-scheme"),
        pytest.param(web_app(redirect_uris=["http://localhost:port/cb"]), id="non-numeric-port"),
        pytest.param(web_app(redirect_uris=["https://app.example.com:65536/cb"]), id="port-out-of-range"),
        pytest.param(web_app(redirect_uris=[""]), id="empty-uri"),
        pytest.param(
            web_app(redirect_uris=[f"https://app.example.com/cb{i}" for i in range(11)]), id="eleven-redirect-uris"
        ),
        pytest.param(service_app(name=""), id="empty-name"),
        pytest.param(service_app(name="   "), id="blank-name"),
        pytest.param(service_app(name="x" * 201), id="name-of-201"),
        pytest.param(service_app(name="Sync\x00job"), id="control-character-in-name"),
        pytest.param(service_app(grant_type="password"), id="unknown-grant-type"),
        pytest.param(service_app(token_endpoint_auth_method="none"), id="unknown-auth-method"),
        pytest.param(service_app(jwks=public_ec_jwks()), id="jwks-with-client-secret-basic"),
        pytest.param(
            service_app(token_endpoint_auth_method="client_secret_post", jwks=public_ec_jwks()),
            id="jwks-with-client-secret-post",
        ),
        pytest.param(service_app(token_endpoint_auth_method="private_key_jwt"), id="private-key-jwt-without-jwks"),
        pytest.param(
            service_app(
                token_endpoint_auth_method="private_key_jwt",
                jwks={"keys": [ECKey.generate_key("P-256", private=True).as_dict(private=True)]},
            ),
            id="private-key-in-jwks",
        ),
        pytest.param(
            service_app(token_endpoint_auth_method="private_key_jwt", jwks={"keys": []}), id="empty-jwks"
        ),
        pytest.param(
            service_app(token_endpoint_auth_method="private_key_jwt", jwks={"kty": "EC"}), id="jwks-not-a-set"
        ),
        pytest.param(
            service_app(token_endpoint_auth_method="private_key_jwt", jwks={"keys": [{"kty": "EC", "crv": "P-256"}]}),
            id="jwks-unusable-key",
        ),
        pytest.param(
            service_app(token_endpoint_auth_method="private_key_jwt", jwks={"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}),
            id="jwks-symmetric-key",
        ),
    ],
)
def test_invalid_apps_are_refused(twofold, client, body):
    """Each broken request is a 422 problem and creates nothing."""
    org, alice = admin_session(twofold, client)
    assert_problem(create(client, org, alice.token, body), 422, "validation_error")
    assert rows(twofold, tables.connected_apps) == []
    assert audit_rows(twofold, "connected_app.created") == []


@pytest.mark.parametrize(
    "uri",
    [
        "com.example.app:/cb",
        "http://127.0.0.1:8765/cb",
        "http://localhost/cb",
        "http://[::1]:9/cb",
        "https://app.example.com:8443/cb?tenant=acme",
    ],
)
def test_accepted_redirect_uris(twofold, client, uri):
    """A private-use scheme and http on loopback addresses are fine for native apps (RFC 8252)."""
    org, alice = admin_session(twofold, client)
    body = created(client, org, alice.token, web_app(redirect_uris=[uri]))
    assert body["redirect_uris"] == [uri]


def test_ten_redirect_uris_are_allowed(twofold, client):
    org, alice = admin_session(twofold, client)
    uris = [f"https://app.example.com/cb{i}" for i in range(10)]
    assert created(client, org, alice.token, web_app(redirect_uris=uris))["redirect_uris"] == uris


def test_a_name_of_200_characters_is_allowed(twofold, client):
    org, alice = admin_session(twofold, client)
    assert created(client, org, alice.token, service_app(name="x" * 200))["name"] == "x" * 200


def test_private_key_jwt_app_registers_public_keys_and_has_no_secret(twofold, client):
    org, alice = admin_session(twofold, client)
    keys = public_ec_jwks()
    body = created(client, org, alice.token, service_app(token_endpoint_auth_method="private_key_jwt", jwks=keys))
    assert body["client_secret"] is None
    assert body["secrets"] == []
    assert body["token_endpoint_auth_method"] == "private_key_jwt"
    assert body["jwks"] == keys
    assert secret_rows(twofold, body["id"]) == []
    assert app_row(twofold, body["id"]).jwks == keys
    # And it has no secret to rotate.
    assert_problem(rotate(client, org, alice.token, body["id"]), 422, "validation_error")
    assert secret_rows(twofold, body["id"]) == []
    assert audit_rows(twofold, "connected_app.secret_rotated") == []


# -- updates ------------------------------------------------------------------------------------------------


def test_rename(twofold, client):
    org, alice = admin_session(twofold, client)
    app = created(client, org, alice.token, service_app())
    before = app_row(twofold, app["id"])
    response = patch(client, org, alice.token, app["id"], {"name": "  Weekly sync  "})
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "Weekly sync"
    assert "client_secret" not in response.json()
    after = app_row(twofold, app["id"])
    assert after.name == "Weekly sync"
    assert after.tokens_valid_after == before.tokens_valid_after  # a rename revokes nothing
    assert after.updated_at > before.updated_at
    event = audit_rows(twofold, "connected_app.updated")[-1]
    assert event.details["changed"] == {"name": "Weekly sync"}
    assert event.details["access_revoked"] is False
    for bad in ({"name": ""}, {"name": "x" * 201}, {"name": "   "}):
        assert_problem(patch(client, org, alice.token, app["id"], bad), 422, "validation_error")
    assert app_row(twofold, app["id"]).name == "Weekly sync"


def test_disabling_revokes_its_tokens(twofold, client):
    org, alice = admin_session(twofold, client)
    app = created(client, org, alice.token, service_app())
    before = app_row(twofold, app["id"]).tokens_valid_after

    started = utcnow()
    response = patch(client, org, alice.token, app["id"], {"enabled": False})
    finished = utcnow()
    assert response.status_code == 200, response.text
    assert response.json()["enabled"] is False
    row = app_row(twofold, app["id"])
    assert row.enabled is False
    assert started <= row.tokens_valid_after <= finished and row.tokens_valid_after > before
    (event,) = audit_rows(twofold, "connected_app.updated")
    assert event.actor_id == alice.user.id
    assert event.details["client_id"] == app["client_id"] and event.details["app_id"] == app["id"]
    assert event.details["changed"] == {"enabled": False}
    assert event.details["access_revoked"] is True

    # Enabling it again brings no revoked token back, and revokes nothing more.
    revoked_at = row.tokens_valid_after
    assert patch(client, org, alice.token, app["id"], {"enabled": True}).json()["enabled"] is True
    row = app_row(twofold, app["id"])
    assert row.enabled is True and row.tokens_valid_after == revoked_at
    assert audit_rows(twofold, "connected_app.updated")[-1].details["access_revoked"] is False


def test_narrowing_scopes_revokes_widening_does_not(twofold, client):
    org, alice = admin_session(twofold, client)
    app = created(client, org, alice.token, service_app(scopes=["users:read", "audit:read"]))
    initial = app_row(twofold, app["id"]).tokens_valid_after

    widened = patch(client, org, alice.token, app["id"], {"scopes": ["users:read", "audit:read", "users:write"]})
    assert widened.status_code == 200, widened.text
    assert widened.json()["scopes"] == ["audit:read", "users:read", "users:write"]
    assert app_row(twofold, app["id"]).tokens_valid_after == initial
    event = audit_rows(twofold, "connected_app.updated")[-1]
    assert event.details["access_revoked"] is False
    assert event.details["changed"] == {"scopes": ["audit:read", "users:read", "users:write"]}

    # The same set again is no narrowing either.
    assert patch(client, org, alice.token, app["id"], {"scopes": ["users:write", "users:read", "audit:read"]}
                 ).status_code == 200
    assert app_row(twofold, app["id"]).tokens_valid_after == initial

    started = utcnow()
    narrowed = patch(client, org, alice.token, app["id"], {"scopes": ["users:read"]})
    assert narrowed.status_code == 200, narrowed.text
    row = app_row(twofold, app["id"])
    assert row.scopes == ["users:read"]
    assert started <= row.tokens_valid_after <= utcnow()
    assert audit_rows(twofold, "connected_app.updated")[-1].details["access_revoked"] is True

    # Swapping one scope for another drops one: that is a narrowing too.
    swapped_at = utcnow()
    assert patch(client, org, alice.token, app["id"], {"scopes": ["audit:read"]}).status_code == 200
    assert app_row(twofold, app["id"]).tokens_valid_after >= swapped_at
    assert audit_rows(twofold, "connected_app.updated")[-1].details["access_revoked"] is True

    # Scopes stay within the app's kind.
    for bad in (["openid"], ["users:delete"], []):
        assert_problem(patch(client, org, alice.token, app["id"], {"scopes": bad}), 422, "validation_error")
    assert app_row(twofold, app["id"]).scopes == ["audit:read"]


def test_changing_redirect_uris_is_validated(twofold, client):
    org, alice = admin_session(twofold, client)
    app = created(client, org, alice.token, web_app())
    new = ["https://intranet.example.com/new", "http://127.0.0.1:8765/cb"]
    response = patch(client, org, alice.token, app["id"], {"redirect_uris": new})
    assert response.status_code == 200, response.text
    assert response.json()["redirect_uris"] == new
    assert app_row(twofold, app["id"]).redirect_uris == new
    assert audit_rows(twofold, "connected_app.updated")[-1].details["changed"] == {"redirect_uris": new}

    for bad in (
        [],
        ["http://intranet.example.com/cb"],
        ["https://intranet.example.com/cb#x"],
        ["https://*.example.com/cb"],
        ["/cb"],
        ["https://intranet.example.com/a b"],
        [f"https://intranet.example.com/{i}" for i in range(11)],
    ):
        assert_problem(patch(client, org, alice.token, app["id"], {"redirect_uris": bad}), 422, "validation_error")
    assert app_row(twofold, app["id"]).redirect_uris == new

    # An app acting on its own behalf never gets one.
    service = created(client, org, alice.token, service_app())
    assert_problem(
        patch(client, org, alice.token, service["id"], {"redirect_uris": ["https://a.example.com/cb"]}),
        422,
        "validation_error",
    )
    assert app_row(twofold, service["id"]).redirect_uris == []


def test_unknown_fields_are_refused(twofold, client):
    """grant_type and the authentication method are fixed at creation."""
    org, alice = admin_session(twofold, client)
    app = created(client, org, alice.token, service_app())
    for body in ({"grant_type": "authorization_code"}, {"token_endpoint_auth_method": "private_key_jwt"},
                 {"client_id": "tfc_mine"}):
        assert_problem(patch(client, org, alice.token, app["id"], body), 422, "validation_error")
    row = app_row(twofold, app["id"])
    assert row.grant_type == "client_credentials" and row.client_id == app["client_id"]
    assert row.auth_method == "client_secret_basic"


# -- deletion, other organizations, non-administrators, step-up ----------------------------------------------


def test_delete(twofold, client):
    org, alice = admin_session(twofold, client)
    app = created(client, org, alice.token, service_app())
    rotate(client, org, alice.token, app["id"])
    assert len(secret_rows(twofold, app["id"])) == 2
    keep = created(client, org, alice.token, service_app(name="Keep"))

    response = client.delete(apps_url(org, app["id"]), headers=bearer(alice.token))
    assert response.status_code == 204, response.text
    assert_problem(client.get(apps_url(org, app["id"]), headers=bearer(alice.token)), 404, "not_found")
    assert_problem(client.delete(apps_url(org, app["id"]), headers=bearer(alice.token)), 404, "not_found")
    assert_problem(patch(client, org, alice.token, app["id"], {"name": "Back"}), 404, "not_found")
    assert_problem(rotate(client, org, alice.token, app["id"]), 404, "not_found")
    assert [a["id"] for a in client.get(apps_url(org), headers=bearer(alice.token)).json()] == [keep["id"]]
    # Its secrets go with it; the other app's stay.
    assert rows(twofold, tables.connected_apps, tables.connected_apps.c.id == app["id"]) == []
    assert secret_rows(twofold, app["id"]) == []
    assert len(secret_rows(twofold, keep["id"])) == 1

    (event,) = audit_rows(twofold, "connected_app.deleted")
    assert event.actor_id == alice.user.id
    assert event.details == {"app_id": app["id"], "client_id": app["client_id"], "name": "Nightly sync"}


def test_unknown_app_is_404(twofold, client):
    org, alice = admin_session(twofold, client)
    for method, url, body in app_calls(org, "no-such-app"):
        if url != apps_url(org):
            assert_problem(client.request(method, url, json=body, headers=bearer(alice.token)), 404, "not_found")
    long_id = "x" * 500
    assert_problem(client.get(apps_url(org, long_id), headers=bearer(alice.token)), 404, "not_found")


def app_calls(org: str, app_id: str) -> list[tuple[str, str, Any]]:
    """Every connected-app endpoint, with a valid body."""
    return [
        ("GET", apps_url(org), None),
        ("POST", apps_url(org), service_app(name="Intruder")),
        ("GET", apps_url(org, app_id), None),
        ("PATCH", apps_url(org, app_id), {"name": "Hijacked", "enabled": False}),
        ("DELETE", apps_url(org, app_id), None),
        ("POST", apps_url(org, app_id, "/secret"), {"grace_seconds": 0}),
    ]


def assert_untouched(twofold: Twofold, app: dict[str, Any], organization_id: str) -> None:
    row = app_row(twofold, app["id"])
    assert row.name == app["name"] and row.enabled is True
    assert row.organization_id == organization_id
    (secret,) = secret_rows(twofold, app["id"])
    assert secret.expires_at is None
    apps = rows(twofold, tables.connected_apps)
    assert "Intruder" not in [a.name for a in apps]


def test_another_organizations_admin_gets_404(twofold, client):
    org_a, alice = admin_session(twofold, client)
    org_b, gina = admin_session(twofold, client, "Globex", "gina")
    app_a = created(client, org_a, alice.token, service_app())
    app_b = created(client, org_b, gina.token, service_app(name="Globex sync"))
    group_a = client.post(f"/api/v1/organizations/{org_a}/business-groups", json={"name": "Team"},
                          headers=bearer(alice.token)).json()
    audit_before = len(audit_rows(twofold))

    # Through A's organization (root or business group), and through B's own path with A's app.
    for method, url, body in app_calls(org_a, app_a["id"]) + app_calls(group_a["id"], app_a["id"]):
        response = client.request(method, url, json=body, headers=bearer(gina.token))
        assert_problem(response, 404, "not_found")
    for method, url, body in app_calls(org_b, app_a["id"])[2:]:
        response = client.request(method, url, json=body, headers=bearer(gina.token))
        assert_problem(response, 404, "not_found")
    assert_untouched(twofold, app_a, org_a)
    assert len(audit_rows(twofold)) == audit_before
    # Each sees only its own.
    assert [a["id"] for a in client.get(apps_url(org_b), headers=bearer(gina.token)).json()] == [app_b["id"]]
    assert [a["id"] for a in client.get(apps_url(org_a), headers=bearer(alice.token)).json()] == [app_a["id"]]


def test_a_business_groups_path_reaches_the_root_organizations_apps(twofold, client):
    """Apps belong to the root organization; a business group's path is the same registry."""
    org, alice = admin_session(twofold, client)
    group = client.post(f"/api/v1/organizations/{org}/business-groups", json={"name": "Team"},
                        headers=bearer(alice.token)).json()
    app = created(client, group["id"], alice.token, service_app())
    assert app_row(twofold, app["id"]).organization_id == org
    assert [a["id"] for a in client.get(apps_url(org), headers=bearer(alice.token)).json()] == [app["id"]]


def test_non_administrator_gets_403(twofold, client):
    org, alice = admin_session(twofold, client)
    app = created(client, org, alice.token, service_app())
    organization = twofold.accounts.root_by_name("Acme")
    bob = enroll(client, create_user(twofold, organization, "bob"))
    audit_before = len(audit_rows(twofold))
    for method, url, body in app_calls(org, app["id"]) + app_calls(org, "no-such-app"):
        response = client.request(method, url, json=body, headers=bearer(bob.token))
        assert_problem(response, 403, "forbidden")
    assert_untouched(twofold, app, org)
    assert len(audit_rows(twofold)) == audit_before


def test_connected_apps_need_a_session(twofold, client):
    org, alice = admin_session(twofold, client)
    app = created(client, org, alice.token, service_app())
    for method, url, body in app_calls(org, app["id"]):
        assert_problem(client.request(method, url, json=body), 401, "unauthenticated")
        assert_problem(client.request(method, url, json=body, headers=bearer("tfs_not-a-real-token")), 401,
                       "unauthenticated")
    assert_untouched(twofold, app, org)


def test_writes_need_a_fresh_step_up_reads_do_not(twofold, client):
    org, alice = admin_session(twofold, client)
    app = created(client, org, alice.token, service_app())
    assert alice.token is not None
    expire_step_up(twofold, alice.token)
    audit_before = len(audit_rows(twofold))

    for method, url, body in app_calls(org, app["id"]):
        response = client.request(method, url, json=body, headers=bearer(alice.token))
        if method == "GET":
            assert response.status_code == 200, response.text
        else:
            assert_problem(response, 403, "step_up_required")
    assert_untouched(twofold, app, org)
    assert len(audit_rows(twofold)) == audit_before


# -- secret rotation ----------------------------------------------------------------------------------------


def test_rotation_keeps_the_old_secret_for_a_day_by_default(twofold, client):
    org, alice = admin_session(twofold, client)
    app = created(client, org, alice.token, service_app())
    old_secret = app["client_secret"]

    started = utcnow()
    response = rotate(client, org, alice.token, app["id"])
    finished = utcnow()
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    assert set(response.json()) == {"client_secret"}
    new_secret = response.json()["client_secret"]
    assert CLIENT_SECRET.match(new_secret) and new_secret != old_secret

    digests = SecretDigests(SECRET_KEY)
    old, new = secret_rows(twofold, app["id"])
    assert old.digest == digests.digest(old_secret) and new.digest == digests.digest(new_secret)
    assert started + timedelta(hours=24) <= old.expires_at <= finished + timedelta(hours=24)
    assert new.expires_at is None

    # The app shows both secrets' dates, neither secret.
    shown = client.get(apps_url(org, app["id"]), headers=bearer(alice.token))
    assert [parse_time(s["expires_at"]) if s["expires_at"] else None for s in shown.json()["secrets"]] == [
        old.expires_at,
        None,
    ]
    assert old_secret not in shown.text and new_secret not in shown.text

    (event,) = audit_rows(twofold, "connected_app.secret_rotated")
    assert event.actor_id == alice.user.id
    assert event.details == {"app_id": app["id"], "client_id": app["client_id"], "grace_seconds": 86400}
    assert old_secret not in all_stored_text(twofold) and new_secret not in all_stored_text(twofold)


def test_rotation_without_a_body_or_with_an_empty_one_uses_the_default(twofold, client):
    org, alice = admin_session(twofold, client)
    app = created(client, org, alice.token, service_app())
    no_body = client.post(apps_url(org, app["id"], "/secret"), headers=bearer(alice.token))
    assert no_body.status_code == 201, no_body.text
    empty = rotate(client, org, alice.token, app["id"], {})
    assert empty.status_code == 201, empty.text
    assert [e.details["grace_seconds"] for e in audit_rows(twofold, "connected_app.secret_rotated")] == [86400] * 2


def test_rotation_with_no_grace_ends_the_old_secret_now(twofold, client):
    org, alice = admin_session(twofold, client)
    app = created(client, org, alice.token, service_app())
    started = utcnow()
    response = rotate(client, org, alice.token, app["id"], {"grace_seconds": 0})
    assert response.status_code == 201, response.text
    old, new = secret_rows(twofold, app["id"])
    assert started <= old.expires_at <= utcnow()
    assert new.expires_at is None
    # Only the new one is live.
    shown = client.get(apps_url(org, app["id"]), headers=bearer(alice.token)).json()
    assert [s["expires_at"] for s in shown["secrets"]] == [None]
    (event,) = audit_rows(twofold, "connected_app.secret_rotated")
    assert event.details["grace_seconds"] == 0


def test_a_second_rotation_never_lengthens_an_old_secrets_life(twofold, client):
    org, alice = admin_session(twofold, client)
    app = created(client, org, alice.token, service_app())
    assert rotate(client, org, alice.token, app["id"], {"grace_seconds": 60}).status_code == 201
    first_expiry = secret_rows(twofold, app["id"])[0].expires_at
    started = utcnow()
    assert rotate(client, org, alice.token, app["id"], {"grace_seconds": 3600}).status_code == 201
    first, second, third = secret_rows(twofold, app["id"])
    assert first.expires_at == first_expiry  # min(its own expiry, now + grace)
    assert started + timedelta(hours=1) <= second.expires_at <= utcnow() + timedelta(hours=1)
    assert third.expires_at is None


@pytest.mark.parametrize("grace", [-1, 604801, "a day", 1.5])
def test_rotation_grace_out_of_range_is_refused(twofold, client, grace):
    org, alice = admin_session(twofold, client)
    app = created(client, org, alice.token, service_app())
    assert_problem(rotate(client, org, alice.token, app["id"], {"grace_seconds": grace}), 422, "validation_error")
    (secret,) = secret_rows(twofold, app["id"])
    assert secret.expires_at is None
    assert audit_rows(twofold, "connected_app.secret_rotated") == []


def test_rotation_grace_of_seven_days_is_the_maximum(twofold, client):
    org, alice = admin_session(twofold, client)
    app = created(client, org, alice.token, service_app())
    started = utcnow()
    assert rotate(client, org, alice.token, app["id"], {"grace_seconds": 604800}).status_code == 201
    old, _ = secret_rows(twofold, app["id"])
    assert started + timedelta(days=7) <= old.expires_at <= utcnow() + timedelta(days=7)


# -- audit --------------------------------------------------------------------------------------------------


def test_audit_of_every_change_names_the_admin_and_the_client_never_a_secret(twofold, client):
    org, alice = admin_session(twofold, client)
    app = created(client, org, alice.token, web_app(scopes=USER_SCOPES))
    secrets = [app["client_secret"]]
    assert patch(client, org, alice.token, app["id"], {"name": "Renamed", "scopes": ["openid"]}).status_code == 200
    secrets.append(rotate(client, org, alice.token, app["id"], {"grace_seconds": 10}).json()["client_secret"])
    assert client.delete(apps_url(org, app["id"]), headers=bearer(alice.token)).status_code == 204

    events = [e for e in audit_rows(twofold) if e.type.startswith("connected_app.")]
    assert [e.type for e in events] == [
        "connected_app.created",
        "connected_app.updated",
        "connected_app.secret_rotated",
        "connected_app.deleted",
    ]
    for event in events:
        assert event.actor_id == alice.user.id
        assert event.organization_id == org
        assert event.details["client_id"] == app["client_id"]
        assert event.details["app_id"] == app["id"]
    created_event, updated_event = events[0], events[1]
    assert created_event.details["grant_type"] == "authorization_code"
    assert created_event.details["scopes"] == sorted(USER_SCOPES)
    assert created_event.details["name"] == "Intranet"
    assert updated_event.details["changed"] == {"name": "Renamed", "scopes": ["openid"]}
    assert updated_event.details["access_revoked"] is True

    # No secret anywhere in any audit row, and nothing that looks like one.
    with twofold.uow.engine.connect() as connection:
        dumped = [json.dumps(row.details) for row in connection.execute(select(tables.audit_events)).all()]
    for text in dumped:
        assert "tfcs_" not in text, text
        for secret in secrets:
            assert secret.removeprefix("tfcs_") not in text

    # The audit API shows the same.
    listed = client.get(f"/api/v1/organizations/{org}/audit-events", headers=bearer(alice.token))
    assert listed.status_code == 200, listed.text
    assert "tfcs_" not in listed.text


# -- signing keys and /oauth2/jwks --------------------------------------------------------------------------


def test_jwks_is_empty_before_the_first_key(twofold, client):
    assert published(client) == []
    assert client.get("/oauth2/jwks").headers["cache-control"] == "public, max-age=300"


def test_jwks_publishes_the_current_key_as_a_public_es256_key(twofold, client):
    kid, private = twofold.signing_keys.current()
    (key,) = published(client)
    assert key["kid"] == kid
    assert key["kty"] == "EC" and key["crv"] == "P-256"
    assert key["use"] == "sig" and key["alg"] == "ES256"
    assert {"x", "y"} <= set(key)
    assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(key)
    # The kid is the key's RFC 7638 thumbprint, and the published half is the signing key's public half.
    assert ECKey.import_key(key).thumbprint() == kid
    assert private.as_dict(private=False)["x"] == key["x"] and private.as_dict(private=False)["y"] == key["y"]
    # A token signed with current() verifies against the published set.
    token = jws.serialize_compact({"alg": "ES256", "kid": kid}, b"payload", private)
    verified = jws.deserialize_compact(token, KeySet.import_key_set({"keys": [key]}))
    assert verified.payload == b"payload"

    # The same key on every call; one row.
    assert twofold.signing_keys.current()[0] == kid
    assert [row.kid for row in signing_key_rows(twofold)] == [kid]


def test_private_signing_keys_are_sealed_at_rest(twofold):
    kid, private = twofold.signing_keys.current()
    d = private.as_dict(private=True)["d"]
    (row,) = signing_key_rows(twofold)
    assert row.kid == kid and row.algorithm == "ES256"
    assert d not in row.private_key_sealed
    assert '"d"' not in row.private_key_sealed and "P-256" not in row.private_key_sealed
    assert "d" not in row.public_jwk
    with pytest.raises(json.JSONDecodeError):
        json.loads(row.private_key_sealed)


def retire_now(twofold: Twofold, kid: str, *, ago: timedelta = timedelta(seconds=1)) -> None:
    """Storage-level set-up for "the announced moment has come" (no sleeping): ``kid`` retired ``ago``."""
    with twofold.uow.engine.begin() as connection:
        connection.execute(
            update(tables.signing_keys).where(tables.signing_keys.c.kid == kid).values(retired_at=utcnow() - ago)
        )
    twofold.signing_keys.forget()


def test_keys_rotate_publishes_a_new_key_ahead_and_keeps_the_old_one(twofold, client, operator_env, capsys):
    """The new key is published at once but signs only after the key set's cache lifetime (300 s), so relying
    parties holding the set find its kid in it; the old key signs until then and stays published a day more."""
    first, _ = twofold.signing_keys.current()
    started = utcnow()
    new_kid = keys_rotate(capsys)
    assert new_kid != first

    twofold.signing_keys.forget()
    assert twofold.signing_keys.current()[0] == first  # still signing until the announced moment
    keys = published(client)
    assert sorted(k["kid"] for k in keys) == sorted([first, new_kid])
    for key in keys:
        assert key["alg"] == "ES256" and key["use"] == "sig" and "d" not in key
    rows_by_kid = {row.kid: row for row in signing_key_rows(twofold)}
    assert set(rows_by_kid) == {first, new_kid}
    ahead = timedelta(seconds=300)
    assert started + ahead <= rows_by_kid[first].retired_at <= utcnow() + ahead
    assert rows_by_kid[new_kid].retired_at is None
    (event,) = audit_rows(twofold, "signing_key.rotated")
    assert event.details == {
        "kid": new_kid,
        "signs_from": rows_by_kid[first].retired_at.isoformat(),
        "immediately": False,
        "unpublished": 0,
        "by": "operator",
    }
    assert event.actor_id is None and event.organization_id is None

    retire_now(twofold, first)
    assert twofold.signing_keys.current()[0] == new_kid
    assert sorted(k["kid"] for k in published(client)) == sorted([first, new_kid])  # its tokens still verify
    old_row = rows_by_kid[first]
    assert ECKey.import_key(old_row.public_jwk).thumbprint() == first


def test_keys_rotate_now_unpublishes_the_old_keys_at_once(twofold, client, operator_env, capsys):
    """For a key that may have leaked: the new key signs at once and the old ones leave the key set."""
    first, _ = twofold.signing_keys.current()
    new_kid = keys_rotate(capsys, "--now")
    twofold.signing_keys.forget()
    assert twofold.signing_keys.current()[0] == new_kid != first
    assert [k["kid"] for k in published(client)] == [new_kid]
    assert [row.kid for row in signing_key_rows(twofold)] == [new_kid]
    (event,) = audit_rows(twofold, "signing_key.rotated")
    assert event.details["immediately"] is True and event.details["unpublished"] == 1


def test_a_second_rotation_keeps_the_announced_order(twofold, operator_env, capsys):
    first, _ = twofold.signing_keys.current()
    second = keys_rotate(capsys)
    third = keys_rotate(capsys)
    twofold.signing_keys.forget()
    assert twofold.signing_keys.current()[0] == first
    retire_now(twofold, first)
    assert twofold.signing_keys.current()[0] == second
    retire_now(twofold, second)
    assert twofold.signing_keys.current()[0] == third


def test_keys_rotate_has_help(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["keys", "rotate", "--help"])
    assert exited.value.code == 0
    assert "usage: twofold keys rotate" in capsys.readouterr().out


def test_keys_rotate_with_no_key_yet_makes_the_first(twofold, client, operator_env, capsys):
    kid = keys_rotate(capsys)
    assert [k["kid"] for k in published(client)] == [kid]
    assert twofold.signing_keys.current()[0] == kid


def test_a_key_retired_over_a_day_ago_is_unpublished_then_deleted(twofold, client, operator_env, capsys):
    oldest, _ = twofold.signing_keys.current()
    middle = keys_rotate(capsys)
    # The first key was retired a day and a minute ago (storage-level set-up, no sleeping).
    retire_now(twofold, oldest, ago=timedelta(days=1, minutes=1))
    assert [k["kid"] for k in published(client)] == [middle]
    assert twofold.signing_keys.current()[0] == middle
    assert {row.kid for row in signing_key_rows(twofold)} == {oldest, middle}  # not yet deleted

    newest = keys_rotate(capsys)
    assert {row.kid for row in signing_key_rows(twofold)} == {middle, newest}
    assert sorted(k["kid"] for k in published(client)) == sorted([middle, newest])
    twofold.signing_keys.forget()
    assert twofold.signing_keys.current()[0] == middle  # until the announced moment
    assert audit_rows(twofold, "signing_key.rotated")[-1].details["unpublished"] == 1


def test_a_key_retired_less_than_a_day_ago_stays_published(twofold, client, operator_env, capsys):
    first, _ = twofold.signing_keys.current()
    keys_rotate(capsys)
    with twofold.uow.engine.begin() as connection:
        connection.execute(
            update(tables.signing_keys)
            .where(tables.signing_keys.c.kid == first)
            .values(retired_at=utcnow() - timedelta(hours=23, minutes=59))
        )
    assert first in [k["kid"] for k in published(client)]
    keys_rotate(capsys)
    assert first in {row.kid for row in signing_key_rows(twofold)}


def test_the_jwks_needs_no_session_and_serves_whatever_the_database_holds(twofold, client):
    """Every process publishes the same set: the keys live in the database, not in memory."""
    twofold.signing_keys.current()
    with twofold.uow.engine.begin() as connection:
        connection.execute(delete(tables.signing_keys))
    assert published(client) == []
