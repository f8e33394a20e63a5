"""Token introspection (RFC 7662), token revocation (RFC 7009), RP-initiated logout (OpenID Connect RP-Initiated
Logout 1.0) and the edges of remembered consent (API.md "OAuth 2.0 / OpenID Connect"; SECURITY.md "OAuth 2.0 / OIDC").

/oauth2/introspect and /oauth2/revoke take the calling app's client authentication as the token endpoint does
(client_secret_basic, client_secret_post, private_key_jwt); introspection answers only for tokens of the caller's
organization and tells nothing about any other token ({"active": false} alone); revoking a refresh token ends its
family; /oauth2/logout ends the Twofold session only on an ID token of the signed-in user, and returns only to an
address the app registered. The pages are driven with the cookie-carrying `Browser` of test_pages.py."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey
from sqlalchemy import update

from twofold.container import Twofold
from twofold.domain.clock import as_utc, utcnow
from twofold.oauth import access_tokens
from twofold.storage import tables

from .conftest import PUBLIC_URL
from .support.flows import Account, bearer, create_organization, create_user, enroll
from .support.methods import METHOD_TYPE
from .test_admin_api import assert_problem
from .test_connected_apps import audit_rows, patch
from .test_oauth_authorization_code import (
    ALL_SCOPES,
    OTHER_REDIRECT,
    REDIRECT,
    World,
    code_of,
    error_of,
    exchange,
    hidden_fields,
    published_keys,
    refresh,
    request_for,
    resumed_to,
    session_of,
    tokens,
    world,
)
from .test_oauth_authorization_code import new_app as new_user_app
from .test_oauth_authorization_code import oauth_error as token_error
from .test_oauth_client_credentials import _unsigned, _with_claims, forged, header_of, list_users, token_for
from .test_oauth_client_credentials import new_app as new_service_app
from .test_pages import CSRF_INPUT, SESSION_COOKIE, Browser, is_cleared, set_cookies
from .test_profile_pages import browser_for

INTROSPECT = "/oauth2/introspect"
REVOKE = "/oauth2/revoke"
LOGOUT = "/oauth2/logout"
FORM = {"content-type": "application/x-www-form-urlencoded"}
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
API_AUDIENCE = f"{PUBLIC_URL}/api/v1"
INACTIVE = {"active": False}
APP_TOKEN_FIELDS = {"active", "token_type", "scope", "client_id", "sub", "exp", "iat", "iss", "aud", "jti"}


# -- helpers -----------------------------------------------------------------------------------------------


def basic(app: dict[str, Any]) -> tuple[str, str]:
    return (app["client_id"], app["client_secret"])


def call(client: Any, path: str, caller: dict[str, Any], token: str, **extra: str) -> Any:
    """POST to introspect or revoke as the caller, with HTTP Basic (client_secret_basic)."""
    return client.post(path, data={"token": token, **extra}, auth=basic(caller))


def answer(response: Any) -> dict[str, Any]:
    """A 200 JSON answer that no cache keeps (RFC 7662 §2.2 and RFC 7009 §2.2 answers carry tokens' details)."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"
    assert_security_headers(response)
    return dict(response.json())


def introspection(client: Any, caller: dict[str, Any], token: str) -> dict[str, Any]:
    return answer(call(client, INTROSPECT, caller, token))


def assert_inactive(client: Any, caller: dict[str, Any], token: str, why: str = "") -> None:
    """RFC 7662 §2.2: an inactive token is {"active": false} and nothing else, whatever the reason."""
    assert introspection(client, caller, token) == INACTIVE, why


def revoke(client: Any, caller: dict[str, Any], token: str) -> None:
    assert answer(call(client, REVOKE, caller, token)) == {}


def assert_security_headers(response: Any) -> None:
    assert response.headers["x-content-type-options"] == "nosniff", response.headers
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"], response.headers


def client_error(response: Any, status: int, error: str) -> dict[str, Any]:
    """An RFC 6749 §5.2 error object, never cached, never an introspection answer."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"
    assert_security_headers(response)
    body = response.json()
    assert body["error"] == error, body
    assert "active" not in body
    return dict(body)


def service_app(w: World, scopes: tuple[str, ...] = ("users:read",), **fields: Any) -> dict[str, Any]:
    """A client-credentials app of the world's organization (the usual caller of introspection)."""
    return new_service_app(w.client, w.org, w.alice.token, list(scopes), **fields)


def change(w: World, app_id: str, body: dict[str, Any]) -> None:
    """The administrator changes an app (PATCH: scopes, enabled)."""
    response = patch(w.client, w.org, w.alice.token, app_id, body)
    assert response.status_code == 200, response.text


def signed_in(w: World, account: Account | None = None, **overrides: str | None) -> dict[str, Any]:
    """bob's (or another user's) tokens for the world's first-party app, from their signed-in browser."""
    request = request_for(w.app, **overrides)
    browser = browser_for(w.client, account or w.bob)
    return tokens(w.client, w.app, request, code_of(browser.get(request.url), request))


def consents_url(app_id: str = "") -> str:
    return f"/api/v1/me/consents{'/' + app_id if app_id else ''}"


def allowed_tokens(w: World, browser: Browser, **overrides: str | None) -> dict[str, Any]:
    """Tokens for an app that asks for consent: "Allow" on its page, then the code at the token endpoint."""
    request = request_for(w.app, **overrides)
    page = browser.get(request.url)
    if page.status_code == 200:
        page = browser.post("/oauth2/authorize", {**hidden_fields(page), "decision": "allow"})
    return tokens(w.client, w.app, request, code_of(page, request))


def verified(client: Any, token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, published_keys(client), algorithms=["ES256"]).claims)


def set_tokens_valid_after(twofold: Twofold, app_id: str, ago: timedelta) -> None:
    """Date the app's last revocation back (as if it had been created a while ago), so that a token's own expiry is
    the only thing that can end it."""
    with twofold.uow.engine.begin() as connection:
        connection.execute(
            update(tables.connected_apps)
            .where(tables.connected_apps.c.id == app_id)
            .values(tokens_valid_after=utcnow() - ago)
        )
    twofold.oauth.forget_client(app_id)


def app_token(twofold: Twofold, app: dict[str, Any], *, issued_ago: int, lifetime: int = 600) -> str:
    """A token as the server issues them, issued ``issued_ago`` seconds ago."""
    kid, key = twofold.signing_keys.current()
    return access_tokens.issue(
        key,
        kid,
        issuer=PUBLIC_URL,
        audience=API_AUDIENCE,
        subject=app["client_id"],
        client_id=app["client_id"],
        scope=" ".join(app["scopes"]),
        now=utcnow() - timedelta(seconds=issued_ago),
        lifetime=lifetime,
    ).token


def client_key_app(w: World) -> tuple[dict[str, Any], ECKey]:
    """A client-credentials app registered for private_key_jwt, with the private key it signs with."""
    key = ECKey.generate_key("P-256", private=True)
    jwks = {"keys": [{**key.as_dict(private=False), "kid": "caller-key-1", "use": "sig", "alg": "ES256"}]}
    return service_app(w, token_endpoint_auth_method="private_key_jwt", jwks=jwks), key


def assertion(app: dict[str, Any], key: ECKey, *, audience: str = f"{PUBLIC_URL}{INTROSPECT}", **changes: Any) -> str:
    """An RFC 7523 client assertion: iss = sub = the client, a fresh jti, a minute to live."""
    now = int(utcnow().timestamp())
    claims = {
        "iss": app["client_id"],
        "sub": app["client_id"],
        "aud": audience,
        "jti": secrets.token_urlsafe(16),
        "iat": now,
        "exp": now + 60,
        **changes,
    }
    return jwt.encode({"alg": "ES256", "kid": "caller-key-1"}, claims, key)


def with_assertion(app: dict[str, Any], signed: str, token: str) -> dict[str, str]:
    return {
        "token": token,
        "client_id": app["client_id"],
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": signed,
    }


def me(client: Any, session_token: str | None) -> int:
    return int(client.get("/api/v1/me", headers=bearer(session_token)).status_code)


def logout_url(**params: str | None) -> str:
    return f"{LOGOUT}?{urlencode({k: v for k, v in params.items() if v is not None})}"


def id_token_hint(twofold: Twofold, w: World, *, key: ECKey | None = None, **claims: Any) -> str:
    """An ID token for bob and the world's app, as the server makes them, with the given claims changed; signed
    with the server's current key unless another key is given."""
    now = int(utcnow().timestamp())
    body = {
        "iss": PUBLIC_URL,
        "sub": w.bob.user.id,
        "aud": w.app["client_id"],
        "iat": now,
        "exp": now + 600,
        **claims,
    }
    kid, current = twofold.signing_keys.current()
    return jwt.encode({"alg": "ES256", "typ": "JWT", "kid": kid}, body, key or current)


def asked_to_sign_out(page: Any) -> str:
    """The page that asks before an application signs the user out: a "Sign out" form (POST /logout, CSRF)."""
    assert page.status_code == 200, page.text
    assert "location" not in page.headers
    assert "<h1>Sign out?</h1>" in page.text
    assert '<form method="post" action="/logout"' in page.text
    assert ">Sign out</button>" in page.text
    assert SESSION_COOKIE not in set_cookies(page)
    found = CSRF_INPUT.search(page.text)
    assert found, page.text
    return found.group(1)


def signed_out_here(page: Any) -> None:
    """Signed out, and told so on a page of Twofold's own: no redirect anywhere."""
    assert page.status_code == 200, page.text
    assert "location" not in page.headers
    assert "You are signed out of Twofold." in page.text
    assert is_cleared(set_cookies(page)[SESSION_COOKIE])


# -- introspection: active tokens ----------------------------------------------------------------------------


def test_an_app_token_of_the_callers_organization_is_active_with_its_claims(twofold, client):
    """RFC 7662 §2.2: active, with the token's scope, client_id, sub, exp, iat, iss, aud and token_type; for the
    caller's own token and another app's of the organization alike; never cached."""
    w = world(twofold, client)
    caller = service_app(w, ("users:read", "audit:read"))
    other = service_app(w, ("users:read",), name="Reporting")
    for app in (caller, other):
        token = token_for(client, app)
        claims = verified(client, token)
        body = introspection(client, caller, token)
        assert set(body) == APP_TOKEN_FIELDS, body
        assert body == {
            "active": True,
            "token_type": "Bearer",
            "scope": claims["scope"],
            "client_id": app["client_id"],
            "sub": app["client_id"],
            "exp": claims["exp"],
            "iat": claims["iat"],
            "iss": PUBLIC_URL,
            "aud": API_AUDIENCE,
            "jti": claims["jti"],
        }
        assert sorted(body["scope"].split()) == sorted(app["scopes"])
    # An app acting for users may ask too, about any token of its organization.
    assert introspection(client, w.app, token_for(client, other))["active"] is True


def test_a_users_access_token_is_active_with_who_and_how(twofold, client):
    """A user's access token (authorization code): sub is the user, with auth_time, amr and acr of the sign-in."""
    w = world(twofold, client)
    caller = service_app(w)
    body = signed_in(w)
    session = session_of(twofold, w.bob.token)
    claims = verified(client, body["access_token"])
    found = introspection(client, caller, body["access_token"])
    assert found["active"] is True
    assert found["token_type"] == "Bearer"
    assert found["sub"] == w.bob.user.id
    assert found["client_id"] == w.app["client_id"]
    assert set(found["scope"].split()) == set(ALL_SCOPES.split())
    assert found["auth_time"] == int(as_utc(session.auth_time).timestamp())
    assert found["amr"] == ["pwd", "otp", "mfa"]
    assert found["acr"] == "urn:twofold:acr:mfa"
    assert found["iss"] == PUBLIC_URL and found["aud"] == PUBLIC_URL
    assert (found["exp"], found["iat"]) == (claims["exp"], claims["iat"])
    # The app the token was issued to asks about it just as well.
    assert introspection(client, w.app, body["access_token"])["sub"] == w.bob.user.id


def test_a_refresh_token_is_active_with_its_fields(twofold, client):
    w = world(twofold, client)
    caller = service_app(w)
    before = int(utcnow().timestamp())
    body = signed_in(w)
    after = int(utcnow().timestamp())
    found = introspection(client, caller, body["refresh_token"])
    assert found["active"] is True
    assert found["client_id"] == w.app["client_id"]
    assert found["sub"] == w.bob.user.id
    assert found["iss"] == PUBLIC_URL
    assert set(found["scope"].split()) == set(ALL_SCOPES.split())
    assert before <= found["iat"] <= after + 1
    assert found["exp"] - found["iat"] == pytest.approx(30 * 24 * 3600, abs=2)
    assert found["token_type"]
    assert body["refresh_token"] not in str(found)


def test_every_client_authentication_method_of_the_token_endpoint_is_taken(twofold, client):
    """client_secret_basic, client_secret_post and private_key_jwt (RFC 7523, aud the endpoint or the issuer)."""
    w = world(twofold, client)
    token = token_for(client, service_app(w, name="Subject"))
    by_post = service_app(w, token_endpoint_auth_method="client_secret_post", name="Form")
    by_key, key = client_key_app(w)

    assert introspection(client, service_app(w, name="Basic"), token)["active"] is True
    posted = client.post(
        INTROSPECT, data={"token": token, "client_id": by_post["client_id"], "client_secret": by_post["client_secret"]}
    )
    assert answer(posted)["active"] is True
    for audience in (f"{PUBLIC_URL}{INTROSPECT}", PUBLIC_URL):
        signed = assertion(by_key, key, audience=audience)
        assert answer(client.post(INTROSPECT, data=with_assertion(by_key, signed, token)))["active"] is True
    signed = assertion(by_key, key, audience=f"{PUBLIC_URL}{REVOKE}")
    assert answer(client.post(REVOKE, data=with_assertion(by_key, signed, "unknown-token"))) == {}


# -- introspection: inactive tokens --------------------------------------------------------------------------


def test_garbage_forged_and_expired_tokens_are_inactive(twofold, client):
    """Anything but a live token of the organization is {"active": false}, and nothing more: not why."""
    w = world(twofold, client)
    caller = service_app(w)
    set_tokens_valid_after(twofold, caller["id"], timedelta(hours=1))
    live = app_token(twofold, caller, issued_ago=500)
    assert introspection(client, caller, live)["active"] is True  # the recipe is right
    now = int(utcnow().timestamp())
    request = request_for(w.app)
    code = code_of(browser_for(client, w.bob).get(request.url), request)
    bad = {
        "empty": "",
        "a word": "x",
        "three dots": "a.b.c",
        "two dots": "..",
        "huge": "x" * 5000,
        "huge JWT-like": "a." + "b" * 5000 + ".c",
        "not ASCII": "tökén",
        "expired 100 s ago": app_token(twofold, caller, issued_ago=700),
        "expired a minute ago": forged(twofold, caller, claims={"iat": now - 660, "exp": now - 60}),
        "another key, same kid": forged(twofold, caller, key=ECKey.generate_key("P-256", private=True)),
        "unsigned": _unsigned(live),
        "tampered scope": _with_claims(live, {"scope": "users:read users:write"}),
        "another issuer": forged(twofold, caller, claims={"iss": "https://other.example.com"}),
        "an unknown client": forged(twofold, caller, claims={"client_id": "tfc_" + "E" * 22}),
        "typ JWT": forged(twofold, caller, header={"typ": "JWT"}),
        "an unknown kid": forged(twofold, caller, header={"kid": "made-up"}),
        "an authorization code": code,
    }
    for why, token in bad.items():
        assert_inactive(client, caller, token, why)
    assert header_of(live)["typ"] == "at+jwt"


def test_tokens_of_another_organization_are_inactive(twofold, client):
    """Introspection answers for the caller's organization only: another's app token, user token and refresh
    token are inactive, as if unknown, while its own apps see them active."""
    w = world(twofold, client)
    caller = service_app(w)
    globex, gus = create_organization(twofold, "Globex", "gus")
    enroll(client, gus)
    their_robot = new_service_app(client, globex.id, gus.token, ["users:read"])
    their_portal = new_user_app(client, globex.id, gus.token)
    request = request_for(their_portal)
    theirs = tokens(client, their_portal, request, code_of(browser_for(client, gus).get(request.url), request))
    foreign = {
        "app token": token_for(client, their_robot),
        "user access token": theirs["access_token"],
        "refresh token": theirs["refresh_token"],
    }
    for why, token in foreign.items():
        assert_inactive(client, caller, token, why)
        assert introspection(client, their_robot, token)["active"] is True, why


def test_a_disabled_apps_tokens_are_inactive_and_stay_so_when_enabled_again(twofold, client):
    w = world(twofold, client)
    caller = service_app(w)
    robot = service_app(w, name="Robot")
    token = token_for(client, robot)
    user_tokens = signed_in(w)
    assert introspection(client, caller, token)["active"] is True
    change(w, robot["id"], {"enabled": False})
    change(w, w.app["id"], {"enabled": False})
    assert_inactive(client, caller, token, "app token of a disabled app")
    assert_inactive(client, caller, user_tokens["access_token"], "user token of a disabled app")
    assert_inactive(client, caller, user_tokens["refresh_token"], "refresh token of a disabled app")
    change(w, robot["id"], {"enabled": True})
    assert_inactive(client, caller, token, "issued before the app was disabled")


def test_a_token_issued_before_a_narrowing_is_inactive_and_one_before_a_widening_is_not(twofold, client):
    w = world(twofold, client)
    caller = service_app(w)
    robot = service_app(w, ("users:read", "audit:read"), name="Robot")
    token = token_for(client, robot)
    change(w, robot["id"], {"scopes": ["users:read", "audit:read", "mfa:reset"]})
    assert introspection(client, caller, token)["active"] is True
    change(w, robot["id"], {"scopes": ["users:read"]})
    assert_inactive(client, caller, token, "issued before the narrowing")
    # The same for a user token: the app was narrowed after it was issued.
    user_tokens = signed_in(w)
    change(w, w.app["id"], {"scopes": ["openid", "offline_access"]})
    assert_inactive(client, caller, user_tokens["access_token"], "user token issued before the narrowing")


def test_the_scope_reported_is_only_what_the_app_still_holds(twofold, client):
    """A token granted from a moment-old view of a narrowed app (another process's cache) is dated after the
    narrowing and names a scope the app lost: introspection never reports more than the app holds now."""
    w = world(twofold, client)
    caller = service_app(w)
    robot = service_app(w, ("users:read", "audit:read"), name="Robot")
    change(w, robot["id"], {"scopes": ["users:read"]})
    late = forged(twofold, robot, claims={"scope": "users:read audit:read", "iat": int(utcnow().timestamp()) + 1})
    found = introspection(client, caller, late)
    assert found["active"] is True
    assert found["scope"] == "users:read"
    # As the admin API sees it: the lost scope opens nothing.
    assert list_users(client, w.org, late).status_code == 200
    assert client.get(f"/api/v1/organizations/{w.org}/audit-events", headers=bearer(late)).status_code == 403


def test_a_users_tokens_are_inactive_once_the_sign_in_behind_them_ended(twofold, client):
    """A user token lives no longer than its session: after sign-out, its access and refresh tokens are inactive
    (as userinfo and the token endpoint refuse them)."""
    w = world(twofold, client)
    caller = service_app(w)
    body = signed_in(w)
    assert introspection(client, caller, body["access_token"])["active"] is True
    assert client.post("/api/v1/logout", headers=bearer(w.bob.token)).status_code == 204
    assert_inactive(client, caller, body["access_token"], "access token of a signed-out session")
    assert_inactive(client, caller, body["refresh_token"], "refresh token of a signed-out session")
    token_error(refresh(client, w.app, body["refresh_token"]), 400, "invalid_grant")


def test_a_spent_refresh_token_is_inactive_and_its_rotated_successor_active(twofold, client):
    w = world(twofold, client)
    caller = service_app(w)
    first = signed_in(w)
    rotated = refresh(client, w.app, first["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    assert_inactive(client, caller, first["refresh_token"], "spent by rotation")
    assert introspection(client, caller, rotated.json()["refresh_token"])["active"] is True


def test_a_refresh_token_the_token_endpoint_would_refuse_is_inactive(twofold, client):
    """RFC 7662 §2.2: "active" says whether the token is usable now. An app that asks for consent, narrowed
    (without "email") after the user allowed it: its refresh token carrying "email" is refused at the token endpoint
    (the consent no longer covers it), so introspection must not call it active."""
    w = world(twofold, client, first_party=False)
    caller = service_app(w)
    body = allowed_tokens(w, browser_for(client, w.bob))
    change(w, w.app["id"], {"scopes": ["openid", "profile", "offline_access"]})
    token_error(refresh(client, w.app, body["refresh_token"]), 400, "invalid_grant")
    assert_inactive(client, caller, body["refresh_token"], "refused at the token endpoint")


def test_after_a_narrowing_a_refresh_token_never_yields_a_scope_the_app_lost(twofold, client):
    """A first-party app narrowed (without "email"): a refresh token granted before either dies, or gives (and
    reports) only what the app still holds; never an access token, ID token or introspection answer with "email"."""
    w = world(twofold, client)
    caller = service_app(w)
    body = signed_in(w)
    change(w, w.app["id"], {"scopes": ["openid", "profile", "offline_access"]})
    found = introspection(client, caller, body["refresh_token"])
    assert found == INACTIVE or "email" not in found["scope"].split(), found
    refreshed = refresh(client, w.app, body["refresh_token"])
    if refreshed.status_code != 200:
        token_error(refreshed, 400, "invalid_grant")
        return
    new = refreshed.json()
    assert "email" not in new["scope"].split(), new["scope"]
    assert "email" not in verified(client, new["access_token"])["scope"].split()
    assert "email" not in verified(client, new["id_token"])
    assert "email" not in client.get("/oauth2/userinfo", headers=bearer(new["access_token"])).json()


def test_a_users_token_issued_right_after_a_narrowing_is_active(twofold, client):
    """Narrowing ends the tokens issued before it, not those issued after: a sign-in to the narrowed app just
    after the change (iat has whole seconds, as with app tokens) gets tokens that work."""
    w = world(twofold, client)
    caller = service_app(w)
    change(w, w.app["id"], {"scopes": ["openid", "profile", "offline_access"]})
    body = signed_in(w, scope="openid profile")
    assert introspection(client, caller, body["access_token"])["active"] is True
    assert client.get("/oauth2/userinfo", headers=bearer(body["access_token"])).status_code == 200


# -- introspection and revocation: the caller and the request ------------------------------------------------


@pytest.mark.parametrize("path", [INTROSPECT, REVOKE])
def test_caller_authentication_failures_are_invalid_client(twofold, client, path):
    """Wrong, unknown, missing, disabled or unreadable credentials: 401 invalid_client, and nothing said or done
    about the token."""
    w = world(twofold, client)
    caller = service_app(w)
    other = service_app(w, name="Other")
    disabled = service_app(w, name="Disabled")
    change(w, disabled["id"], {"enabled": False})
    by_key, key = client_key_app(w)
    body = signed_in(w)
    token = body["refresh_token"]
    audience = f"{PUBLIC_URL}{path}"
    replayed = assertion(by_key, key, audience=audience)
    assert client.post(path, data=with_assertion(by_key, replayed, token)).status_code == 200
    failures = {
        "wrong secret": client.post(path, data={"token": token}, auth=(caller["client_id"], "tfcs_" + "A" * 43)),
        "another app's secret": client.post(
            path, data={"token": token}, auth=(caller["client_id"], other["client_secret"])
        ),
        "unknown client": client.post(path, data={"token": token}, auth=("tfc_" + "B" * 22, caller["client_secret"])),
        "disabled app": call(client, path, disabled, token),
        "no credentials": client.post(path, data={"token": token}),
        "empty secret": client.post(path, data={"token": token}, auth=(caller["client_id"], "")),
        "bearer, not basic": client.post(path, data={"token": token}, headers=bearer(caller["client_secret"])),
        "basic, not base64": client.post(path, data={"token": token}, headers={"authorization": "Basic not-base64!"}),
        "wrong secret in the form": client.post(
            path, data={"token": token, "client_id": caller["client_id"], "client_secret": "tfcs_" + "C" * 43}
        ),
        "assertion of another key": client.post(
            path,
            data=with_assertion(by_key, assertion(by_key, ECKey.generate_key("P-256", private=True)), token),
        ),
        "assertion for another audience": client.post(
            path, data=with_assertion(by_key, assertion(by_key, key, audience="https://other.example.com"), token)
        ),
        "expired assertion": client.post(
            path,
            data=with_assertion(
                by_key, assertion(by_key, key, audience=audience, exp=int(utcnow().timestamp()) - 120), token
            ),
        ),
        "replayed assertion": client.post(path, data=with_assertion(by_key, replayed, token)),
    }
    for why, response in failures.items():
        client_error(response, 401, "invalid_client")
        assert caller["client_secret"] not in response.text, why
    # Nothing was revoked by any of them.
    assert refresh(client, w.app, token).status_code == 200


@pytest.mark.parametrize("path", [INTROSPECT, REVOKE])
def test_malformed_requests_are_invalid_request_and_never_a_500(twofold, client, path):
    """The parameters are a small urlencoded form, each name once (RFC 6749 §3.2): anything else is 400
    invalid_request, with the security headers of every answer; GET is 405; past the server's body limit, 413."""
    w = world(twofold, client)
    caller = service_app(w)
    token = token_for(client, caller)

    def chunked(size: int) -> Any:
        yield b"token=x&pad="
        for _ in range(size // 1024):
            yield b"x" * 1024

    bad = {
        "JSON": dict(json={"token": token}),
        "no content type": dict(content=f"token={token}".encode()),
        "text/plain": dict(content=f"token={token}".encode(), headers={"content-type": "text/plain"}),
        "multipart": dict(data={"token": token}, files={"f": ("f.txt", b"x")}),
        "token twice": dict(content=f"token={token}&token=x".encode(), headers=FORM),
        "not UTF-8": dict(content=b"token=%ff%fe\xff", headers=FORM),
        "too many fields": dict(content="&".join(f"f{i}=1" for i in range(50)).encode(), headers=FORM),
        "over 16 KiB": dict(content=b"token=" + b"x" * 20_000, headers=FORM),
        "over 16 KiB, chunked": dict(content=chunked(100 * 1024), headers=FORM),
    }
    for why, arguments in bad.items():
        response = client.post(path, auth=basic(caller), **arguments)
        assert response.status_code == 400, (why, response.status_code, response.text)
        client_error(response, 400, "invalid_request")

    got = client.get(path, auth=basic(caller))
    assert got.status_code == 405, got.text
    assert_security_headers(got)

    huge = client.post(path, auth=basic(caller), content=b"token=" + b"x" * 300_000, headers=FORM)
    assert_problem(huge, 413, "payload_too_large")
    assert_security_headers(huge)
    huge_chunked = client.post(path, auth=basic(caller), content=chunked(2 * 1024 * 1024), headers=FORM)
    assert_problem(huge_chunked, 413, "payload_too_large")
    # And the endpoint still answers afterwards.
    assert call(client, path, caller, token).status_code == 200


# -- revocation ----------------------------------------------------------------------------------------------


def test_revocation_answers_200_for_any_token(twofold, client):
    """RFC 7009 §2.2: 200 whether the token is known or not, valid or not, the caller's or another's; an access
    token (a JWT that lives ten minutes) is answered 200 too."""
    w = world(twofold, client)
    caller = service_app(w)
    globex, gus = create_organization(twofold, "Globex", "gus")
    enroll(client, gus)
    their_portal = new_user_app(client, globex.id, gus.token)
    request = request_for(their_portal)
    theirs = tokens(client, their_portal, request, code_of(browser_for(client, gus).get(request.url), request))
    mine = signed_in(w)
    for token in (
        "",
        "unknown",
        "x" * 5000,
        "a.b.c",
        "tökén",
        secrets.token_urlsafe(32),
        theirs["refresh_token"],
        theirs["access_token"],
        mine["access_token"],
        token_for(client, caller),
    ):
        revoke(client, caller, token)
    assert answer(call(client, REVOKE, caller, "unknown", token_type_hint="refresh_token")) == {}
    # Another organization's refresh token was not touched.
    assert refresh(client, their_portal, theirs["refresh_token"]).status_code == 200
    assert audit_rows(twofold, "oauth.revoked") == []


def test_revoking_a_refresh_token_ends_its_whole_family(twofold, client):
    """Revoking the spent first token of a family ends the rotated one too: refresh is invalid_grant, introspection
    inactive; another sign-in's family lives on. The revocation is audited, without the token."""
    w = world(twofold, client)
    caller = service_app(w)
    first = signed_in(w)
    rotated = refresh(client, w.app, first["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    sibling = rotated.json()["refresh_token"]
    other_family = signed_in(w)["refresh_token"]

    revoke(client, w.app, first["refresh_token"])
    token_error(refresh(client, w.app, sibling), 400, "invalid_grant")
    assert_inactive(client, caller, sibling, "its family was revoked")
    assert introspection(client, caller, other_family)["active"] is True
    assert refresh(client, w.app, other_family).status_code == 200

    (event,) = audit_rows(twofold, "oauth.revoked")
    assert event.actor_id == w.app["id"] and event.subject_id == w.bob.user.id
    assert event.details == {"client_id": w.app["client_id"], "refresh_revoked": 2}
    assert sibling not in str(event.details) and first["refresh_token"] not in str(event.details)


def test_revoking_the_current_refresh_token_ends_it_and_its_spent_ancestors(twofold, client):
    w = world(twofold, client)
    caller = service_app(w)
    first = signed_in(w)
    rotated = refresh(client, w.app, first["refresh_token"]).json()["refresh_token"]
    revoke(client, w.app, rotated)
    token_error(refresh(client, w.app, rotated), 400, "invalid_grant")
    token_error(refresh(client, w.app, first["refresh_token"]), 400, "invalid_grant")
    assert_inactive(client, caller, rotated, "revoked")
    # Revoking it again changes nothing and is still 200.
    revoke(client, w.app, rotated)


def test_revoking_an_access_token_is_200(twofold, client):
    """RFC 7009 §2.2: an access token may stay valid until it expires; the answer is 200 all the same, and the
    refresh token issued with it is not touched."""
    w = world(twofold, client)
    body = signed_in(w)
    revoke(client, w.app, body["access_token"])
    assert refresh(client, w.app, body["refresh_token"]).status_code == 200


def test_another_app_cannot_revoke_a_refresh_token_it_does_not_own(twofold, client):
    """RFC 7009 §2.1: the token must have been issued to the caller. Another app of the same organization gets 200
    and nothing happens: the token stays usable by its own app."""
    w = world(twofold, client)
    portal = new_user_app(client, w.org, w.alice.token, name="Portal")
    robot = service_app(w)
    body = signed_in(w)
    revoke(client, portal, body["refresh_token"])
    revoke(client, robot, body["refresh_token"])
    assert introspection(client, robot, body["refresh_token"])["active"] is True
    assert refresh(client, w.app, body["refresh_token"]).status_code == 200
    assert audit_rows(twofold, "oauth.revoked") == []


# -- RP-initiated logout -------------------------------------------------------------------------------------


def test_logout_with_the_users_id_token_ends_the_session_and_returns_to_the_app_with_state(twofold, client):
    """RP-Initiated Logout 1.0 §2-§3: the ID token of the signed-in user names them; the session ends at once
    (cookie cleared, the session token refused) and the browser goes back to the registered address with state."""
    w = world(twofold, client)
    body = signed_in(w)
    browser = browser_for(client, w.bob)
    assert me(client, w.bob.token) == 200
    state = "s t&a=t/ü"
    response = browser.get(
        logout_url(id_token_hint=body["id_token"], post_logout_redirect_uri=OTHER_REDIRECT, state=state)
    )
    assert response.status_code == 303, response.text
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == OTHER_REDIRECT
    assert dict(parse_qsl(location.query)) == {"state": state}
    assert is_cleared(set_cookies(response)[SESSION_COOKIE])
    assert me(client, w.bob.token) == 401
    assert client.get("/oauth2/userinfo", headers=bearer(body["access_token"])).status_code == 401
    (event,) = audit_rows(twofold, "session.logout")
    assert event.subject_id == w.bob.user.id

    # Without state the address is used as registered; a browser already signed out just goes back.
    again = Browser(client).get(logout_url(id_token_hint=body["id_token"], post_logout_redirect_uri=REDIRECT))
    assert again.status_code == 303 and again.headers["location"] == REDIRECT


def test_a_registered_post_logout_redirect_uri_with_a_query_keeps_it(twofold, client):
    registered = "https://app.example.com/bye?tenant=acme"
    w = world(twofold, client, redirect_uris=(REDIRECT, registered))
    body = signed_in(w)
    response = browser_for(client, w.bob).get(
        logout_url(id_token_hint=body["id_token"], post_logout_redirect_uri=registered, state="xyz")
    )
    assert response.status_code == 303
    assert response.headers["location"] == f"{registered}&state=xyz"
    assert me(client, w.bob.token) == 401


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("https://evil.example/cb", id="unregistered"),
        pytest.param(REDIRECT + "/", id="trailing-slash"),
        pytest.param(REDIRECT + "?next=1", id="extra-query"),
        pytest.param("https://evil.app.example.com/cb", id="other-subdomain"),
        pytest.param("https://portal.example.com/cb", id="another-apps-address"),
        pytest.param("//evil.example", id="scheme-relative"),
        pytest.param("javascript:alert(1)", id="javascript"),
        pytest.param("", id="empty"),
    ],
)
def test_an_unregistered_post_logout_redirect_uri_is_never_redirected_to(twofold, client, uri):
    """The address must be one the hint's app registered, exactly: otherwise the user is signed out (the hint is
    theirs) and stays on Twofold's own page."""
    w = world(twofold, client)
    new_user_app(client, w.org, w.alice.token, name="Portal", redirect_uris=("https://portal.example.com/cb",))
    body = signed_in(w)
    page = browser_for(client, w.bob).get(
        logout_url(id_token_hint=body["id_token"], post_logout_redirect_uri=uri, state="xyz")
    )
    signed_out_here(page)
    assert "evil" not in page.text
    assert me(client, w.bob.token) == 401


def test_without_a_matching_hint_the_user_is_asked_and_nothing_ends_until_they_confirm(twofold, client):
    """No hint, or the ID token of another user: a link alone never signs anyone out. The page asks ("Sign out"
    posts to /logout with CSRF); the session stands until that POST, and no one is redirected anywhere."""
    w = world(twofold, client)
    carol = enroll(client, create_user(twofold, w.organization, "carol"))
    carols = signed_in(w, account=carol)
    browser = browser_for(client, w.bob)
    for url in (
        LOGOUT,
        logout_url(post_logout_redirect_uri=REDIRECT, state="xyz"),
        logout_url(id_token_hint=carols["id_token"], post_logout_redirect_uri=REDIRECT),
    ):
        asked_to_sign_out(browser.get(url))
        assert me(client, w.bob.token) == 200
        assert me(client, carol.token) == 200
    assert audit_rows(twofold, "session.logout") == []

    csrf = asked_to_sign_out(browser.get(LOGOUT))
    # Staying signed in changes nothing; "Sign out" without the CSRF token is refused.
    assert browser.post("/logout", {}).status_code == 403
    assert me(client, w.bob.token) == 200
    confirmed = browser.post("/logout", {"csrf_token": csrf})
    assert confirmed.status_code == 303, confirmed.text
    assert me(client, w.bob.token) == 401
    assert me(client, carol.token) == 200


def test_a_forged_hint_is_not_trusted(twofold, client):
    """An ID token that the server did not sign as it is (another key, no signature, a changed claim, another
    issuer) names no one: the user is asked, and the session stands."""
    w = world(twofold, client)
    genuine = signed_in(w)["id_token"]
    forged_hints = {
        "another key with the same kid": id_token_hint(twofold, w, key=ECKey.generate_key("P-256", private=True)),
        "unsigned": _unsigned(genuine),
        "tampered expiry": _with_claims(genuine, {"exp": int(utcnow().timestamp()) + 86400}),
        "tampered audience": _with_claims(genuine, {"aud": "tfc_" + "Z" * 22}),
        "another issuer": id_token_hint(twofold, w, iss="https://other.example.com"),
        "garbage": "a.b.c",
        "huge": "x" * 10_000,
    }
    carol = enroll(client, create_user(twofold, w.organization, "carol"))
    # The tampered subject of a token of carol's, made to name bob, is no better.
    forged_hints["carol's token made to name bob"] = _with_claims(
        signed_in(w, account=carol)["id_token"], {"sub": w.bob.user.id}
    )
    browser = browser_for(client, w.bob)
    for why, hint in forged_hints.items():
        page = browser.get(logout_url(id_token_hint=hint, post_logout_redirect_uri=REDIRECT, state="xyz"))
        asked_to_sign_out(page)
        assert me(client, w.bob.token) == 200, why
    # The genuine one works (the recipe above is right).
    assert browser.get(logout_url(id_token_hint=genuine, post_logout_redirect_uri=REDIRECT)).status_code == 303
    assert me(client, w.bob.token) == 401


# -- consent edges -------------------------------------------------------------------------------------------


def test_a_code_issued_before_consent_is_withdrawn_is_invalid_grant(twofold, client):
    """The user allowed the app, a code was issued, then the user withdrew consent before the app redeemed it:
    the code gives nothing (DELETE /api/v1/me/consents/{app_id}: the app "asks again")."""
    w = world(twofold, client, first_party=False)
    browser = browser_for(client, w.bob)
    request = request_for(w.app)
    page = browser.get(request.url)
    code = code_of(browser.post("/oauth2/authorize", {**hidden_fields(page), "decision": "allow"}), request)
    withdrawn = client.delete(consents_url(w.app["id"]), headers=bearer(w.bob.token))
    assert withdrawn.status_code == 204, withdrawn.text
    token_error(exchange(client, w.app, code, request.verifier), 400, "invalid_grant")
    assert audit_rows(twofold, "oauth.granted") == []


def test_a_refresh_token_of_a_withdrawn_consent_is_invalid_grant_and_inactive(twofold, client):
    w = world(twofold, client, first_party=False)
    caller = service_app(w)
    body = allowed_tokens(w, browser_for(client, w.bob))
    rotated = refresh(client, w.app, body["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    assert client.delete(consents_url(w.app["id"]), headers=bearer(w.bob.token)).status_code == 204
    for token in (rotated.json()["refresh_token"], body["refresh_token"]):
        token_error(refresh(client, w.app, token), 400, "invalid_grant")
        assert_inactive(client, caller, token, "consent withdrawn")


def test_a_scope_the_app_lost_and_got_back_is_asked_for_again(twofold, client):
    """The user allowed "openid email"; the app was narrowed without "email" and widened again: "email" was never
    allowed to the app as it is now, so the page asks again (and "openid" alone still needs no page)."""
    w = world(twofold, client, first_party=False)
    browser = browser_for(client, w.bob)
    allowed_tokens(w, browser, scope="openid email")
    change(w, w.app["id"], {"scopes": ["openid", "profile", "offline_access"]})
    listed = client.get(consents_url(), headers=bearer(w.bob.token)).json()
    assert [c["scopes"] for c in listed] == [["openid"]]
    change(w, w.app["id"], {"scopes": ["openid", "profile", "email"]})

    request = request_for(w.app, scope="openid email")
    page = browser.get(request.url)
    assert page.status_code == 200, page.text
    assert ">Allow</button>" in page.text and "<li>See your email address</li>" in page.text
    none = request_for(w.app, scope="openid email", prompt="none")
    assert error_of(browser.get(none.url), none) == "consent_required"
    only_openid = request_for(w.app, scope="openid")
    assert code_of(browser.get(only_openid.url), only_openid)
    # Allowed again, it is remembered again.
    code_of(browser.post("/oauth2/authorize", {**hidden_fields(page), "decision": "allow"}), request)
    again = request_for(w.app, scope="openid email")
    assert code_of(browser.get(again.url), again)


@pytest.mark.parametrize(
    ("prompt", "first_party"),
    [
        pytest.param("login", True, id="login"),
        pytest.param("login consent", False, id="login-and-consent"),
        pytest.param("select_account login", True, id="select-account-and-login"),
    ],
)
def test_prompt_login_from_a_signed_out_browser_signs_in_then_completes(twofold, client, prompt, first_party):
    """OpenID Connect Core §3.1.2.1: prompt=login asks for a sign-in; the sign-in the request led to is that sign-in,
    so the resumed request completes with a code (never login_required in a loop); other prompt values stay."""
    w = world(twofold, client, first_party=first_party)
    browser = Browser(client)
    request = request_for(w.app, prompt=prompt)
    started = browser.get(request.url)
    assert started.status_code == 303 and started.headers["location"] == "/login"
    before = int(utcnow().timestamp())

    assert browser.sign_in_password("bob", w.bob.password).headers["location"] == "/login/verify"
    token = CSRF_INPUT.search(browser.get("/login/verify").text)
    assert token
    done = browser.post("/login/verify", {"csrf_token": token.group(1), "type": METHOD_TYPE, "code": str(w.bob.code)})
    assert done.status_code == 303 and done.headers["location"] == "/"

    target = resumed_to(browser.get("/"))
    path, _, query = target.partition("?")
    assert path == "/oauth2/authorize"
    resumed = dict(parse_qsl(query))
    kept = [p for p in prompt.split() if p != "login"]
    assert resumed.get("prompt", "").split() == kept
    assert {k: v for k, v in resumed.items() if k != "prompt"} == {
        k: v for k, v in request.params.items() if k != "prompt"
    }

    response = browser.get(target)
    if not first_party:
        assert response.status_code == 200 and ">Allow</button>" in response.text, response.text
        response = browser.post("/oauth2/authorize", {**hidden_fields(response), "decision": "allow"})
    body = tokens(client, w.app, request, code_of(response, request))
    claims = verified(client, body["id_token"])
    assert claims["auth_time"] >= before
    assert claims["sid"] == session_of(twofold, browser.cookies[SESSION_COOKIE]).id
    # The new session is signed in: the same request with prompt=login is login_required now, not a new loop.
    again = request_for(w.app, prompt="login")
    assert error_of(browser.get(again.url), again) == "login_required"
