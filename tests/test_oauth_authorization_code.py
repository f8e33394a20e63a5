"""OpenID Connect sign-in for connected apps acting on behalf of users (R5; API.md "OAuth 2.0 / OpenID Connect";
SECURITY.md "OAuth 2.0 / OIDC"): /oauth2/authorize on the login pages, codes with PKCE S256 redeemed once and bound
to their client and redirect URI, ID tokens that tell the truth about the sign-in, refresh tokens that rotate and
die with their family or with the user's sessions, userinfo by scope, consent for apps that are not first-party,
and exempt (password-only) accounts kept away from applications.

The pages are driven with the cookie-carrying `Browser` of test_pages.py (httpx never sends a `Secure` cookie over
plain http); the token endpoint is called as a confidential client would, with HTTP Basic."""

from __future__ import annotations

import base64
import hashlib
import html
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import KeySet
from sqlalchemy import func, select, update

from twofold.container import Twofold
from twofold.domain.clock import as_utc, utcnow
from twofold.domain.entities import Organization
from twofold.services.crypto import hash_token
from twofold.storage import tables
from twofold.web.app import create_app

from .conftest import PUBLIC_URL
from .support.flows import Account, bearer, create_organization, create_user, enroll, exempt, run_together, sign_in
from .support.methods import METHOD_TYPE
from .support.totp import enroll_totp
from .test_admin_api import admin_session
from .test_connected_apps import apps_url, audit_rows, patch
from .test_pages import CSRF_INPUT, SESSION_COOKIE, Browser, assert_host_cookie, is_cleared, set_cookies
from .test_profile_pages import browser_for

REDIRECT = "https://app.example.com/cb"
OTHER_REDIRECT = "https://app.example.com/other"
ALL_SCOPES = "openid profile email offline_access"
AUTHORIZE_COOKIE = "__Host-twofold_authorize"
TOKEN_URL = "/oauth2/token"


# -- helpers -----------------------------------------------------------------------------------------------


@dataclass
class World:
    """An organization with its administrator (fresh step-up), bob signed in with MFA, and a first-party app."""

    twofold: Twofold
    client: Any
    organization: Organization
    alice: Account
    bob: Account
    app: dict[str, Any]

    @property
    def org(self) -> str:
        return self.organization.id


def new_app(
    client: Any,
    org: str,
    admin_token: str | None,
    *,
    scopes: tuple[str, ...] = ("openid", "profile", "email", "offline_access"),
    redirect_uris: tuple[str, ...] = (REDIRECT, OTHER_REDIRECT),
    first_party: bool = True,
    name: str = "Intranet",
) -> dict[str, Any]:
    """An authorization-code app created by the administrator through the API (its secret comes back once)."""
    body = {
        "name": name,
        "grant_type": "authorization_code",
        "scopes": list(scopes),
        "redirect_uris": list(redirect_uris),
        "first_party": first_party,
    }
    response = client.post(apps_url(org), json=body, headers=bearer(admin_token))
    assert response.status_code == 201, response.text
    return dict(response.json())


def world(twofold: Twofold, client: Any, **app_fields: Any) -> World:
    organization, alice = create_organization(twofold)
    enroll(client, alice)
    bob = enroll(client, create_user(twofold, organization, "bob"))
    return World(twofold, client, organization, alice, bob, new_app(client, organization.id, alice.token, **app_fields))


def new_verifier() -> str:
    return secrets.token_urlsafe(48)


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")


@dataclass
class Authorization:
    """One authorization request of the app: its parameters and the PKCE verifier it keeps."""

    params: dict[str, str]
    verifier: str

    @property
    def query(self) -> str:
        return urlencode(self.params)

    @property
    def url(self) -> str:
        return f"/oauth2/authorize?{self.query}"


def request_for(app: dict[str, Any], **overrides: str | None) -> Authorization:
    """A well-formed request (code, PKCE S256, state, nonce); an override of None leaves the parameter out."""
    verifier = new_verifier()
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": app["client_id"],
        "redirect_uri": REDIRECT,
        "scope": ALL_SCOPES,
        "state": secrets.token_urlsafe(12),
        "nonce": secrets.token_urlsafe(12),
        "code_challenge": s256(verifier),
        "code_challenge_method": "S256",
        **overrides,
    }
    return Authorization({k: v for k, v in params.items() if v is not None}, verifier)


def back_at_app(response: Any, redirect_uri: str = REDIRECT) -> dict[str, str]:
    """A 303 to the app's registered redirect URI, with ``iss`` (RFC 9207): its query parameters."""
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    base, _, query = location.partition("?")
    assert base == redirect_uri.partition("?")[0], location
    params = {key: values[0] for key, values in parse_qs(query).items()}
    assert all(len(values) == 1 for values in parse_qs(query).values()), location
    assert params["iss"] == PUBLIC_URL, location
    return params


def code_of(response: Any, request: Authorization) -> str:
    params = back_at_app(response, request.params["redirect_uri"])
    assert "error" not in params, params
    assert params.get("state") == request.params.get("state")
    return params["code"]


def error_of(response: Any, request: Authorization) -> str:
    params = back_at_app(response, request.params["redirect_uri"])
    assert "code" not in params, params
    assert params.get("state") == request.params.get("state")
    assert params.get("error_description"), params
    return params["error"]


def authorized_code(browser: Browser, app: dict[str, Any], **overrides: str | None) -> tuple[Authorization, str]:
    request = request_for(app, **overrides)
    return request, code_of(browser.get(request.url), request)


def exchange(
    client: Any, app: dict[str, Any], code: str, verifier: str | None, redirect_uri: str | None = REDIRECT
) -> Any:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri, "code_verifier": verifier}
    return client.post(
        TOKEN_URL,
        data={k: v for k, v in form.items() if v is not None},
        auth=(app["client_id"], app["client_secret"]),
    )


def tokens(client: Any, app: dict[str, Any], request: Authorization, code: str) -> dict[str, Any]:
    response = exchange(client, app, code, request.verifier, request.params["redirect_uri"])
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    return dict(response.json())


def refresh(client: Any, app: dict[str, Any], refresh_token: str, **extra: str) -> Any:
    return client.post(
        TOKEN_URL,
        data={"grant_type": "refresh_token", "refresh_token": refresh_token, **extra},
        auth=(app["client_id"], app["client_secret"]),
    )


def signed_in_tokens(w: World, **overrides: str | None) -> tuple[Authorization, dict[str, Any]]:
    request, code = authorized_code(browser_for(w.client, w.bob), w.app, **overrides)
    return request, tokens(w.client, w.app, request, code)


def oauth_error(response: Any, status: int, error: str) -> dict[str, Any]:
    """An RFC 6749 §5.2 error object, never cached, with nothing issued."""
    assert response.status_code == status, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["error"] == error, body
    assert "access_token" not in body and "refresh_token" not in body and "id_token" not in body
    return dict(body)


def refused_page(response: Any) -> str:
    """The authorize page's own refusal: a 400 HTML page, no redirect anywhere."""
    assert response.status_code == 400, response.text
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")
    assert "This application cannot sign you in" in response.text
    return str(response.text)


def resumed_to(home: Any) -> str:
    """Home after a sign-in that interrupted a request: a page that moves on by itself (``Refresh``, with a
    "Continue" link) rather than a 303. The sign-in was a form POST, and a browser holds every redirect after a
    form submission to the form page's CSP ``form-action 'self'``: a 303 chain would stop short of the app."""
    assert home.status_code == 200, home.text
    refresh = home.headers["refresh"]
    assert refresh.startswith("0; url="), refresh
    target = refresh.removeprefix("0; url=")
    assert f'<a class="button" href="{html.escape(target)}">Continue</a>' in home.text
    assert is_cleared(set_cookies(home)[AUTHORIZE_COOKIE])
    return target


HIDDEN = re.compile(r'<input type="hidden" name="([^"]*)" value="([^"]*)">')


def hidden_fields(page: Any) -> dict[str, str]:
    return {html.unescape(name): html.unescape(value) for name, value in HIDDEN.findall(page.text)}


def userinfo(client: Any, access_token: str) -> Any:
    return client.get("/oauth2/userinfo", headers=bearer(access_token))


def published_keys(client: Any) -> KeySet:
    response = client.get("/oauth2/jwks")
    assert response.status_code == 200, response.text
    return KeySet.import_key_set(response.json())


def verified_claims(client: Any, token: str, *, audience: str, typ: str, **expected: Any) -> dict[str, Any]:
    """A JWT checked as a relying party would: signature against the published keys, then iss, aud, exp, iat
    and any other expected claim values."""
    decoded = jwt.decode(token, published_keys(client), algorithms=["ES256"])
    assert decoded.header["typ"] == typ, decoded.header
    options: dict[str, Any] = {
        "iss": {"essential": True, "value": PUBLIC_URL},
        "aud": {"essential": True, "value": audience},
        "exp": {"essential": True},
        "iat": {"essential": True},
        "sub": {"essential": True},
        **{name: {"essential": True, "value": value} for name, value in expected.items()},
    }
    registry = jwt.JWTClaimsRegistry(now=int(utcnow().timestamp()), **options)
    registry.validate(decoded.claims)
    return dict(decoded.claims)


def count(twofold: Twofold, table: Any) -> int:
    with twofold.uow.engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(table)).scalar_one())


def session_of(twofold: Twofold, token: str | None) -> Any:
    with twofold.uow(read_only=True) as uow:
        session = uow.sessions.by_token_hash(hash_token(str(token)))
        assert session is not None
        return session


def code_row(twofold: Twofold, code: str) -> Any:
    with twofold.uow.engine.connect() as connection:
        c = tables.authorization_codes.c
        return connection.execute(select(tables.authorization_codes).where(c.code_hash == hash_token(code))).one()


# -- the whole flow ------------------------------------------------------------------------------------------


def test_discovery_describes_the_authorization_code_flow(twofold, client):
    document = client.get("/.well-known/openid-configuration").json()
    assert document["issuer"] == PUBLIC_URL
    assert document["authorization_endpoint"] == f"{PUBLIC_URL}/oauth2/authorize"
    assert document["token_endpoint"] == f"{PUBLIC_URL}/oauth2/token"
    assert document["userinfo_endpoint"] == f"{PUBLIC_URL}/oauth2/userinfo"
    assert document["jwks_uri"] == f"{PUBLIC_URL}/oauth2/jwks"
    assert document["response_types_supported"] == ["code"]
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert document["authorization_response_iss_parameter_supported"] is True
    assert set(document["grant_types_supported"]) == {"authorization_code", "refresh_token", "client_credentials"}
    assert document["id_token_signing_alg_values_supported"] == ["ES256"]
    assert {"openid", "profile", "email", "offline_access"} <= set(document["scopes_supported"])


def test_a_signed_in_user_gets_a_code_then_tokens_that_say_who_and_how(twofold, client):
    """The happy path end to end: code in the redirect with state and iss; at the token endpoint (PKCE) an RFC 9068
    access token for the user, an ID token for the app and a refresh token; userinfo answers for the user."""
    w = world(twofold, client)
    request, code = authorized_code(browser_for(client, w.bob), w.app)
    session = session_of(twofold, w.bob.token)
    body = tokens(client, w.app, request, code)
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 600
    assert set(body["scope"].split()) == set(ALL_SCOPES.split())
    assert body["refresh_token"] and body["refresh_token"] != code

    access = verified_claims(
        client, body["access_token"], audience=PUBLIC_URL, typ="at+jwt", sub=w.bob.user.id, sid=session.id
    )
    assert access["client_id"] == w.app["client_id"]
    assert access["exp"] - access["iat"] == 600
    id_claims = verified_claims(
        client,
        body["id_token"],
        audience=w.app["client_id"],
        typ="JWT",
        sub=w.bob.user.id,
        nonce=request.params["nonce"],
        sid=session.id,
    )
    assert id_claims["auth_time"] == int(as_utc(session.auth_time).timestamp())
    assert id_claims["amr"] == ["pwd", "otp", "mfa"]
    assert id_claims["acr"] == "urn:twofold:acr:mfa"
    digest = hashlib.sha256(body["access_token"].encode()).digest()
    assert id_claims["at_hash"] == base64.urlsafe_b64encode(digest[:16]).decode().rstrip("=")
    assert id_claims["preferred_username"] == "bob"
    assert id_claims["email"] == "bob@example.com"

    info = userinfo(client, body["access_token"])
    assert info.status_code == 200, info.text
    assert info.json() == {"sub": w.bob.user.id, "preferred_username": "bob", "email": "bob@example.com"}
    # The code is stored as a digest, never as issued.
    assert code_row(twofold, code).used_at is not None
    assert [r.details["client_id"] for r in audit_rows(twofold, "oauth.authorized")] == [w.app["client_id"]]
    granted = audit_rows(twofold, "oauth.granted")
    assert [r.details["grant_type"] for r in granted] == ["authorization_code"]


def test_a_users_tokens_open_neither_the_admin_api_nor_userinfo_by_mistake(twofold, client):
    """The user's access token is for userinfo (aud = issuer), not the admin API; an ID token is no access token."""
    w = world(twofold, client)
    _, body = signed_in_tokens(w)
    assert client.get(f"/api/v1/organizations/{w.org}/users", headers=bearer(body["access_token"])).status_code == 401
    assert client.get("/api/v1/me", headers=bearer(body["access_token"])).status_code == 401
    assert userinfo(client, body["id_token"]).status_code == 401
    assert userinfo(client, body["refresh_token"]).status_code == 401


def test_a_registered_redirect_uri_with_a_query_keeps_it(twofold, client):
    registered = "https://app.example.com/cb?tenant=acme"
    w = world(twofold, client, redirect_uris=(registered,))
    request = request_for(w.app, redirect_uri=registered)
    response = browser_for(client, w.bob).get(request.url)
    assert response.headers["location"].startswith(f"{registered}&code=")
    assert parse_qs(urlsplit(response.headers["location"]).query)["tenant"] == ["acme"]
    assert tokens(client, w.app, request, code_of(response, request))["access_token"]


# -- the redirect URI ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "redirect_uri",
    [
        pytest.param(REDIRECT + "/", id="trailing-slash"),
        pytest.param(REDIRECT + "?next=1", id="extra-query"),
        pytest.param("https://app.example.com/cb/../cb", id="dot-dot"),
        pytest.param("https://app.example.com/x/../cb", id="dot-dot-to-the-same-path"),
        pytest.param("https://evil.app.example.com/cb", id="other-subdomain"),
        pytest.param("https://example.com/cb", id="parent-domain"),
        pytest.param("http://app.example.com/cb", id="other-scheme"),
        pytest.param("https://app.example.com:8443/cb", id="other-port"),
        pytest.param("https://APP.example.com/cb", id="other-case"),
        pytest.param("https://app.example.com/cb#x", id="fragment"),
        pytest.param("https://app.example.com/CB", id="other-path-case"),
        pytest.param("https://app.example.com/cb%2F", id="encoded-slash"),
        pytest.param("", id="empty"),
        pytest.param(None, id="missing"),
    ],
)
def test_a_redirect_uri_that_is_not_registered_exactly_is_refused_on_the_page(twofold, client, redirect_uri):
    """RFC 9700 §4.1: the page refuses and redirects nowhere, not even to the registered address; no code."""
    w = world(twofold, client)
    request = request_for(w.app, redirect_uri=redirect_uri)
    page = refused_page(browser_for(client, w.bob).get(request.url))
    assert "has not registered" in page
    # Not signed in: refused all the same, before any login (no pending request kept).
    anonymous = Browser(client).get(request.url)
    refused_page(anonymous)
    assert AUTHORIZE_COOKIE not in set_cookies(anonymous)
    assert count(twofold, tables.authorization_codes) == 0


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"client_id": "tfc_" + "x" * 22}, id="unknown-client"),
        pytest.param({"client_id": None}, id="no-client"),
        pytest.param({"client_id": "x" * 65}, id="overlong-client-id"),
    ],
)
def test_an_unknown_client_is_refused_on_the_page(twofold, client, params):
    w = world(twofold, client)
    request = request_for(w.app, **params)
    assert "unknown or disabled" in refused_page(browser_for(client, w.bob).get(request.url))
    assert count(twofold, tables.authorization_codes) == 0


def test_a_client_credentials_app_cannot_sign_users_in(twofold, client):
    org, alice = admin_session(twofold, client)
    robot = client.post(
        apps_url(org),
        json={"name": "Robot", "grant_type": "client_credentials", "scopes": ["users:read"]},
        headers=bearer(alice.token),
    ).json()
    params = request_for({"client_id": robot["client_id"]}).params
    refused_page(browser_for(client, alice).get(f"/oauth2/authorize?{urlencode(params)}"))


# -- PKCE ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"code_challenge": None, "code_challenge_method": None}, id="no-pkce"),
        pytest.param({"code_challenge": None}, id="no-challenge"),
        pytest.param({"code_challenge_method": None}, id="no-method"),
        pytest.param({"code_challenge_method": "plain"}, id="plain"),
        pytest.param({"code_challenge_method": "s256"}, id="lower-case-method"),
        pytest.param({"code_challenge": "too-short"}, id="short-challenge"),
        pytest.param({"code_challenge": "a" * 129}, id="long-challenge"),
        pytest.param({"code_challenge": "a" * 42 + "+/="}, id="not-base64url"),
    ],
)
def test_pkce_s256_is_required_at_authorize(twofold, client, overrides):
    """The error goes back to the app (its redirect URI is registered), with state and iss; no code."""
    w = world(twofold, client)
    request = request_for(w.app, **overrides)
    assert error_of(browser_for(client, w.bob).get(request.url), request) == "invalid_request"
    assert count(twofold, tables.authorization_codes) == 0


def test_a_wrong_code_verifier_is_invalid_grant_and_spends_the_code(twofold, client):
    w = world(twofold, client)
    request, code = authorized_code(browser_for(client, w.bob), w.app)
    oauth_error(exchange(client, w.app, code, new_verifier()), 400, "invalid_grant")
    # A stolen code cannot be retried against verifiers: it is spent.
    oauth_error(exchange(client, w.app, code, request.verifier), 400, "invalid_grant")


def test_a_code_verifier_of_another_request_is_invalid_grant(twofold, client):
    w = world(twofold, client)
    browser = browser_for(client, w.bob)
    first, _ = authorized_code(browser, w.app)
    _, second_code = authorized_code(browser, w.app)
    oauth_error(exchange(client, w.app, second_code, first.verifier), 400, "invalid_grant")


@pytest.mark.parametrize(
    "verifier",
    [pytest.param(None, id="missing"), pytest.param("", id="empty"), pytest.param("short", id="malformed")],
)
def test_a_code_without_its_verifier_issues_nothing(twofold, client, verifier):
    """Every code carries a challenge: the token request without a (well-formed) verifier is refused, and the
    code is spent."""
    w = world(twofold, client)
    request, code = authorized_code(browser_for(client, w.bob), w.app)
    oauth_error(exchange(client, w.app, code, verifier), 400, "invalid_request")
    oauth_error(exchange(client, w.app, code, request.verifier), 400, "invalid_grant")


# -- codes: once, short-lived, bound -------------------------------------------------------------------------


def test_a_code_is_redeemed_once_and_a_second_redemption_revokes_what_the_first_issued(twofold, client):
    w = world(twofold, client)
    request, code = authorized_code(browser_for(client, w.bob), w.app)
    first = tokens(client, w.app, request, code)
    oauth_error(exchange(client, w.app, code, request.verifier), 400, "invalid_grant")
    oauth_error(refresh(client, w.app, first["refresh_token"]), 400, "invalid_grant")
    (replayed,) = audit_rows(twofold, "oauth.code_replayed")
    assert replayed.details["refresh_revoked"] == 1
    assert replayed.subject_id == w.bob.user.id


def test_a_refresh_token_rotated_before_the_code_replay_dies_too(twofold, client):
    """The family the code started dies whole: the refresh tokens rotated from the first one as well."""
    w = world(twofold, client)
    request, code = authorized_code(browser_for(client, w.bob), w.app)
    first = tokens(client, w.app, request, code)
    rotated = refresh(client, w.app, first["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    oauth_error(exchange(client, w.app, code, request.verifier), 400, "invalid_grant")
    oauth_error(refresh(client, w.app, rotated.json()["refresh_token"]), 400, "invalid_grant")


def test_two_redemptions_at_once_issue_tokens_once(twofold, client):
    w = world(twofold, client)
    request, code = authorized_code(browser_for(client, w.bob), w.app)

    def redeem(own_client: Any) -> int:
        return int(exchange(own_client, w.app, code, request.verifier).status_code)

    def new_client() -> TestClient:
        return TestClient(create_app(twofold, housekeeping=False), base_url=PUBLIC_URL)

    assert sorted(run_together([redeem, redeem, redeem], new_client)) == [200, 400, 400]


def test_an_expired_code_is_invalid_grant(twofold, client):
    w = world(twofold, client)
    request, code = authorized_code(browser_for(client, w.bob), w.app)
    row = code_row(twofold, code)
    assert as_utc(row.expires_at) - as_utc(row.created_at) <= timedelta(minutes=10)  # SECURITY.md: ≤ 10 minutes
    with twofold.uow.engine.begin() as connection:
        c = tables.authorization_codes.c
        connection.execute(
            update(tables.authorization_codes)
            .where(c.code_hash == hash_token(code))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    oauth_error(exchange(client, w.app, code, request.verifier), 400, "invalid_grant")


def test_a_code_is_bound_to_its_client(twofold, client):
    """Another app's credentials get invalid_grant, and do not spend the code of the app it was issued to."""
    w = world(twofold, client)
    other = new_app(client, w.org, w.alice.token, name="Other")
    request, code = authorized_code(browser_for(client, w.bob), w.app)
    oauth_error(exchange(client, other, code, request.verifier), 400, "invalid_grant")
    assert tokens(client, w.app, request, code)["access_token"]


@pytest.mark.parametrize(
    "redirect_uri",
    [
        pytest.param(OTHER_REDIRECT, id="other-registered"),
        pytest.param(REDIRECT + "/", id="trailing-slash"),
        pytest.param(None, id="missing"),
    ],
)
def test_a_code_is_bound_to_its_redirect_uri(twofold, client, redirect_uri):
    w = world(twofold, client)
    request, code = authorized_code(browser_for(client, w.bob), w.app)
    oauth_error(exchange(client, w.app, code, request.verifier, redirect_uri), 400, "invalid_grant")


def test_a_wrong_client_secret_is_invalid_client(twofold, client):
    w = world(twofold, client)
    request, code = authorized_code(browser_for(client, w.bob), w.app)
    response = client.post(
        TOKEN_URL,
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": request.verifier,
        },
        auth=(w.app["client_id"], "tfcs_" + "x" * 43),
    )
    oauth_error(response, 401, "invalid_client")
    # The code was never looked at: the app still redeems it.
    assert tokens(client, w.app, request, code)["access_token"]


# -- what is not offered -------------------------------------------------------------------------------------


def test_the_password_grant_is_not_offered(twofold, client):
    w = world(twofold, client)
    response = client.post(
        TOKEN_URL,
        data={"grant_type": "password", "username": "bob", "password": w.bob.password, "scope": "openid"},
        auth=(w.app["client_id"], w.app["client_secret"]),
    )
    oauth_error(response, 400, "unsupported_grant_type")


@pytest.mark.parametrize("response_type", ["token", "id_token", "code id_token", "code token", "none", ""])
def test_implicit_and_hybrid_responses_are_not_offered(twofold, client, response_type):
    w = world(twofold, client)
    request = request_for(w.app, response_type=response_type)
    assert error_of(browser_for(client, w.bob).get(request.url), request) == "unsupported_response_type"
    assert count(twofold, tables.authorization_codes) == 0


def test_a_user_facing_app_cannot_use_client_credentials(twofold, client):
    w = world(twofold, client)
    response = client.post(
        TOKEN_URL, data={"grant_type": "client_credentials"}, auth=(w.app["client_id"], w.app["client_secret"])
    )
    oauth_error(response, 400, "unauthorized_client")


# -- refresh tokens ------------------------------------------------------------------------------------------


def test_refresh_tokens_rotate_and_a_replay_revokes_the_family(twofold, client):
    w = world(twofold, client)
    _, first = signed_in_tokens(w)
    second = refresh(client, w.app, first["refresh_token"])
    assert second.status_code == 200, second.text
    assert second.headers["cache-control"] == "no-store"
    second_body = second.json()
    assert second_body["refresh_token"] not in (first["refresh_token"], None)
    assert second_body["access_token"] != first["access_token"]
    # The refreshed ID token is about the same sign-in, for the same app.
    claims = verified_claims(client, second_body["id_token"], audience=w.app["client_id"], typ="JWT", sub=w.bob.user.id)
    first_claims = jwt.decode(first["id_token"], published_keys(client)).claims
    assert claims["auth_time"] == first_claims["auth_time"]
    assert claims["amr"] == first_claims["amr"] and claims["acr"] == first_claims["acr"]
    assert userinfo(client, second_body["access_token"]).status_code == 200

    third = refresh(client, w.app, second_body["refresh_token"])
    assert third.status_code == 200, third.text
    # The first one, spent, presented again: refused, and every token of its family dies with it.
    oauth_error(refresh(client, w.app, first["refresh_token"]), 400, "invalid_grant")
    oauth_error(refresh(client, w.app, third.json()["refresh_token"]), 400, "invalid_grant")
    (replayed,) = audit_rows(twofold, "oauth.refresh_replayed")
    assert replayed.subject_id == w.bob.user.id
    # Another sign-in starts a family of its own, untouched.
    _, other = signed_in_tokens(w)
    assert refresh(client, w.app, other["refresh_token"]).status_code == 200


def test_a_refresh_token_of_another_app_is_invalid_grant(twofold, client):
    """Presented by another app, a refresh token is refused and stays the app's own (not spent by the other)."""
    w = world(twofold, client)
    other = new_app(client, w.org, w.alice.token, name="Other")
    _, body = signed_in_tokens(w)
    oauth_error(refresh(client, other, body["refresh_token"]), 400, "invalid_grant")
    rotated = refresh(client, w.app, body["refresh_token"])
    assert rotated.status_code == 200, rotated.text


def test_refresh_cannot_widen_the_scope(twofold, client):
    w = world(twofold, client)
    _, body = signed_in_tokens(w, scope="openid offline_access")
    widened = refresh(client, w.app, body["refresh_token"], scope="openid email offline_access")
    oauth_error(widened, 400, "invalid_scope")


def test_no_refresh_token_without_offline_access(twofold, client):
    w = world(twofold, client)
    _, body = signed_in_tokens(w, scope="openid profile")
    assert "refresh_token" not in body
    assert body["id_token"]
    assert count(twofold, tables.refresh_tokens) == 0


def test_refresh_tokens_are_stored_as_digests(twofold, client):
    w = world(twofold, client)
    _, body = signed_in_tokens(w)
    with twofold.uow.engine.connect() as connection:
        (row,) = connection.execute(select(tables.refresh_tokens)).all()
    assert row.token_hash == hash_token(body["refresh_token"])
    assert body["refresh_token"] not in str(tuple(row))


# -- ID tokens and amr/acr -----------------------------------------------------------------------------------


def test_an_id_token_after_an_authenticator_app_says_otp_and_mfa(product_twofold, product_client):
    """amr and acr are those of the real sign-in (RFC 8176): password + TOTP."""
    organization, alice = create_organization(product_twofold)
    enroll_totp(product_client, alice)
    app = new_app(product_client, organization.id, alice.token)
    carol = enroll_totp(product_client, create_user(product_twofold, organization, "carol"))
    me = product_client.get("/api/v1/me", headers=bearer(carol.token)).json()
    assert me["session"]["amr"] == ["pwd", "otp", "mfa"]

    request, code = authorized_code(browser_for(product_client, carol.account), app)
    body = tokens(product_client, app, request, code)
    claims = verified_claims(
        product_client,
        body["id_token"],
        audience=app["client_id"],
        typ="JWT",
        sub=carol.account.user.id,
        nonce=request.params["nonce"],
    )
    assert claims["amr"] == ["pwd", "otp", "mfa"]
    assert claims["acr"] == "urn:twofold:acr:mfa"
    assert claims["auth_time"] == int(as_utc(session_of(product_twofold, carol.token).auth_time).timestamp())
    refreshed = refresh(product_client, app, body["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    again = jwt.decode(refreshed.json()["id_token"], published_keys(product_client)).claims
    assert (again["amr"], again["acr"], again["auth_time"]) == (claims["amr"], claims["acr"], claims["auth_time"])


def test_without_a_nonce_the_id_token_has_none_and_a_nonce_is_echoed_exactly(twofold, client):
    w = world(twofold, client)
    _, body = signed_in_tokens(w, nonce=None)
    assert "nonce" not in jwt.decode(body["id_token"], published_keys(client)).claims
    odd = "n0nce with spaces & ünïcode"
    _, body = signed_in_tokens(w, nonce=odd)
    assert jwt.decode(body["id_token"], published_keys(client)).claims["nonce"] == odd


# -- scopes and userinfo -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scope",
    [
        pytest.param("openid offline_access", id="scope-the-app-lacks"),
        pytest.param("openid users:read", id="admin-scope"),
        pytest.param("openid phone", id="unknown-scope"),
        pytest.param("", id="empty"),
    ],
)
def test_a_scope_the_app_lacks_is_invalid_scope(twofold, client, scope):
    w = world(twofold, client, scopes=("openid", "email"))
    request = request_for(w.app, scope=scope)
    assert error_of(browser_for(client, w.bob).get(request.url), request) == "invalid_scope"
    assert count(twofold, tables.authorization_codes) == 0


def test_userinfo_answers_by_the_scopes_granted(twofold, client):
    w = world(twofold, client)
    _, only_openid = signed_in_tokens(w, scope="openid")
    assert "refresh_token" not in only_openid
    assert userinfo(client, only_openid["access_token"]).json() == {"sub": w.bob.user.id}
    assert "email" not in jwt.decode(only_openid["id_token"], published_keys(client)).claims
    _, with_email = signed_in_tokens(w, scope="openid email")
    assert userinfo(client, with_email["access_token"]).json() == {"sub": w.bob.user.id, "email": "bob@example.com"}
    _, with_profile = signed_in_tokens(w, scope="openid profile")
    assert userinfo(client, with_profile["access_token"]).json() == {"sub": w.bob.user.id, "preferred_username": "bob"}
    # Without openid there is no ID token and no userinfo.
    _, no_openid = signed_in_tokens(w, scope="email")
    assert "id_token" not in no_openid
    assert userinfo(client, no_openid["access_token"]).status_code == 401


def test_userinfo_refuses_a_missing_or_forged_token(twofold, client):
    w = world(twofold, client)
    _, body = signed_in_tokens(w)
    for headers in ({}, {"Authorization": "Basic Ym9iOnB3"}, bearer(""), bearer(body["access_token"][:-4] + "AAAA")):
        response = client.get("/oauth2/userinfo", headers=headers)
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"].startswith("Bearer")


# -- who may sign in to an app -------------------------------------------------------------------------------


def test_an_exempt_account_gets_access_denied(twofold, client):
    """A password-only session (R4) signs into Twofold, but never into an application: the request interrupted
    by the login resumes and ends in access_denied at the app."""
    w = world(twofold, client)
    organization = w.organization
    robot = create_user(twofold, organization, "robot", kind="service", service_type="rpa")
    exempt(twofold, robot)
    browser = Browser(client)
    request = request_for(w.app)
    assert browser.get(request.url).headers["location"] == "/login"
    signed_in = browser.sign_in_password("robot", robot.password)
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/"
    assert session_of(twofold, browser.cookies[SESSION_COOKIE]).amr == ["pwd"]
    assert resumed_to(browser.get("/")) == request.url
    assert error_of(browser.get(request.url), request) == "access_denied"
    assert count(twofold, tables.authorization_codes) == 0
    # Through the consent page of an app that is not first-party: denied all the same.
    third_party = new_app(client, w.org, w.alice.token, first_party=False, name="Partner")
    request = request_for(third_party)
    page = browser.get(request.url)
    assert page.status_code == 200
    allow = browser.post("/oauth2/authorize", {**hidden_fields(page), "decision": "allow"})
    assert error_of(allow, request) == "access_denied"
    assert count(twofold, tables.authorization_codes) == 0


def test_an_admin_mfa_reset_ends_refresh_tokens_and_userinfo(twofold, client):
    w = world(twofold, client)
    _, body = signed_in_tokens(w)
    reset = client.post(f"/api/v1/organizations/{w.org}/users/{w.bob.user.id}/mfa/reset", headers=bearer(w.alice.token))
    assert reset.status_code in (200, 204), reset.text
    oauth_error(refresh(client, w.app, body["refresh_token"]), 400, "invalid_grant")
    assert userinfo(client, body["access_token"]).status_code == 401


def test_signing_out_ends_the_refresh_tokens_of_that_sign_in(twofold, client):
    """The consent page promises "until you sign out": the sign-out page ends the session, and with it the
    refresh tokens and userinfo of the apps it signed in."""
    w = world(twofold, client)
    browser = browser_for(client, w.bob)
    request, code = authorized_code(browser, w.app)
    body = tokens(client, w.app, request, code)
    csrf = CSRF_INPUT.search(browser.get("/").text)
    assert csrf
    assert browser.post("/logout", {"csrf_token": csrf.group(1)}).headers["location"] == "/login?signed_out=1"
    oauth_error(refresh(client, w.app, body["refresh_token"]), 400, "invalid_grant")
    assert userinfo(client, body["access_token"]).status_code == 401


def test_a_code_of_a_session_that_ended_is_invalid_grant(twofold, client):
    w = world(twofold, client)
    request, code = authorized_code(browser_for(client, w.bob), w.app)
    assert client.post("/api/v1/logout", headers=bearer(w.bob.token)).status_code == 204
    oauth_error(exchange(client, w.app, code, request.verifier), 400, "invalid_grant")


def test_a_disabled_app_is_refused_everywhere(twofold, client):
    w = world(twofold, client)
    browser = browser_for(client, w.bob)
    request, code = authorized_code(browser, w.app)
    _, body = signed_in_tokens(w)
    disabled = patch(client, w.org, w.alice.token, w.app["id"], {"enabled": False})
    assert disabled.status_code == 200, disabled.text
    assert "unknown or disabled" in refused_page(browser.get(request_for(w.app).url))
    oauth_error(refresh(client, w.app, body["refresh_token"]), 401, "invalid_client")
    oauth_error(exchange(client, w.app, code, request.verifier), 401, "invalid_client")
    assert userinfo(client, body["access_token"]).status_code == 401


# -- state and iss -------------------------------------------------------------------------------------------


def test_state_is_echoed_exactly_and_iss_is_always_there(twofold, client):
    w = world(twofold, client)
    browser = browser_for(client, w.bob)
    odd = "s t&a=t?e/ü"
    request = request_for(w.app, state=odd)
    assert back_at_app(browser.get(request.url))["state"] == odd
    without = request_for(w.app, state=None)
    params = back_at_app(browser.get(without.url))
    assert "state" not in params and params["code"]
    failed = request_for(w.app, state=odd, code_challenge_method="plain")
    params = back_at_app(browser.get(failed.url))
    assert params["state"] == odd and params["error"] == "invalid_request"


# -- consent -------------------------------------------------------------------------------------------------


def test_an_app_that_is_not_first_party_asks_for_consent(twofold, client):
    w = world(twofold, client, first_party=False, name="Partner <b>Portal</b>")
    browser = browser_for(client, w.bob)
    request = request_for(w.app, scope="openid email")
    page = browser.get(request.url)
    assert page.status_code == 200, page.text
    assert "<h1>Allow Partner &lt;b&gt;Portal&lt;/b&gt;?</h1>" in page.text
    assert "<li>Know who you are (your Twofold account)</li>" in page.text
    assert "<li>See your email address</li>" in page.text
    assert "See your username and name" not in page.text  # only what was asked for
    assert ">Allow</button>" in page.text and ">Deny</button>" in page.text
    assert "You are signed in as bob." in page.text
    assert count(twofold, tables.authorization_codes) == 0

    fields = hidden_fields(page)
    assert fields["query"] == request.query
    allowed = browser.post("/oauth2/authorize", {**fields, "decision": "allow"})
    assert tokens(client, w.app, request, code_of(allowed, request))["access_token"]


def test_deny_sends_access_denied_to_the_app(twofold, client):
    w = world(twofold, client, first_party=False)
    browser = browser_for(client, w.bob)
    request = request_for(w.app)
    fields = hidden_fields(browser.get(request.url))
    for decision in ("deny", "", "ALLOW"):
        assert error_of(browser.post("/oauth2/authorize", {**fields, "decision": decision}), request) == (
            "access_denied"
        )
    assert count(twofold, tables.authorization_codes) == 0


@pytest.mark.parametrize(
    ("redirect_uri", "source"),
    [
        (REDIRECT, "https://app.example.com"),
        ("http://127.0.0.1:8765/cb", "http://127.0.0.1:8765"),
        ("com.example.app:/cb", "com.example.app:"),
    ],
)
def test_the_consent_form_may_lead_to_its_app_and_nowhere_else(twofold, client, redirect_uri, source):
    """ "Allow" and "Deny" answer with a redirect to the app, which CSP form-action must let through; only the
    consent page widens it, by exactly the app's origin, and every other directive stays."""
    w = world(twofold, client, first_party=False, redirect_uris=(redirect_uri,))
    browser = browser_for(client, w.bob)
    page = browser.get(request_for(w.app, redirect_uri=redirect_uri).url)
    assert page.status_code == 200, page.text
    default = client.get("/login").headers["content-security-policy"]
    assert "form-action 'self';" in default
    assert page.headers["content-security-policy"] == default.replace(
        "form-action 'self';", f"form-action 'self' {source};"
    )
    assert browser.get("/").headers["content-security-policy"] == default


def test_consent_needs_csrf_and_its_own_origin(twofold, client):
    w = world(twofold, client, first_party=False)
    browser = browser_for(client, w.bob)
    request = request_for(w.app)
    fields = hidden_fields(browser.get(request.url))
    allow = {**fields, "decision": "allow"}
    refused = [
        browser.post("/oauth2/authorize", {k: v for k, v in allow.items() if k != "csrf_token"}),
        browser.post("/oauth2/authorize", {**allow, "csrf_token": "0" * 64}),
        browser.post("/oauth2/authorize", allow, headers={"Origin": "https://app.example.com"}),
        # The token without its cookie, as a cross-site page would post it.
        client.post(
            "/oauth2/authorize",
            data=allow,
            headers={"Origin": PUBLIC_URL, "Cookie": f"{SESSION_COOKIE}={w.bob.token}"},
            follow_redirects=False,
        ),
    ]
    for response in refused:
        assert response.status_code == 403, response.text
        assert "Request refused" in response.text
        assert "location" not in response.headers
    assert count(twofold, tables.authorization_codes) == 0


def test_consent_is_checked_again_from_its_own_parameters(twofold, client):
    """The posted request is the request: a tampered redirect URI or a widened scope is refused as at GET."""
    w = world(twofold, client, first_party=False, scopes=("openid", "email"))
    browser = browser_for(client, w.bob)
    request = request_for(w.app, scope="openid")
    fields = hidden_fields(browser.get(request.url))
    tampered = urlencode({**request.params, "redirect_uri": "https://evil.example/cb"})
    refused_page(browser.post("/oauth2/authorize", {**fields, "query": tampered, "decision": "allow"}))
    widened = urlencode({**request.params, "scope": "openid offline_access"})
    response = browser.post("/oauth2/authorize", {**fields, "query": widened, "decision": "allow"})
    assert back_at_app(response)["error"] == "invalid_scope"
    assert count(twofold, tables.authorization_codes) == 0


def test_consent_without_a_session_signs_in_first(twofold, client):
    w = world(twofold, client, first_party=False)
    browser = browser_for(client, w.bob)
    fields = hidden_fields(browser.get(request_for(w.app).url))
    browser.cookies.pop(SESSION_COOKIE)
    response = browser.post("/oauth2/authorize", {**fields, "decision": "allow"})
    assert response.status_code == 303 and response.headers["location"] == "/login"
    assert count(twofold, tables.authorization_codes) == 0


# -- the login interrupts, then resumes ----------------------------------------------------------------------


def test_not_signed_in_goes_to_login_and_comes_back_with_the_same_request(twofold, client):
    w = world(twofold, client)
    browser = Browser(client)
    request = request_for(w.app)
    response = browser.get(request.url)
    assert response.status_code == 303 and response.headers["location"] == "/login"
    pending = set_cookies(response)[AUTHORIZE_COOKIE]
    assert_host_cookie(pending)
    assert 0 < int(pending["max-age"]) <= 15 * 60
    assert count(twofold, tables.authorization_codes) == 0

    # The login pages: password, then the second factor; the end of every sign-in is "/".
    assert browser.sign_in_password("bob", w.bob.password).headers["location"] == "/login/verify"
    verify_page = browser.get("/login/verify")
    token = CSRF_INPUT.search(verify_page.text)
    assert token
    done = browser.post("/login/verify", {"csrf_token": token.group(1), "type": METHOD_TYPE, "code": str(w.bob.code)})
    assert done.status_code == 303 and done.headers["location"] == "/"
    assert resumed_to(browser.get("/")) == request.url
    assert AUTHORIZE_COOKIE not in browser.cookies  # used once
    body = tokens(client, w.app, request, code_of(browser.get(request.url), request))
    claims = jwt.decode(body["id_token"], published_keys(client)).claims
    assert claims["sid"] == session_of(twofold, browser.cookies[SESSION_COOKIE]).id
    # Home is home again.
    home = browser.get("/")
    assert home.status_code == 200 and "refresh" not in home.headers


def test_going_back_to_the_app_never_skips_a_forced_enrollment(twofold, client):
    """A user without a method must enroll first (R3): the app's request, opened again mid-way, only leads back to
    the login (the browser test completes the enrollment and lands at the app)."""
    w = world(twofold, client)
    dana = create_user(twofold, w.organization, "dana")
    browser = Browser(client)
    request = request_for(w.app)
    browser.get(request.url)
    assert browser.sign_in_password("dana", dana.password).headers["location"] == "/login/enroll"
    # Skipping the enrollment by going back to the app gets nothing but the login again.
    assert browser.get(request.url).headers["location"] == "/login"
    assert browser.get("/").headers["location"] == "/login"
    assert count(twofold, tables.authorization_codes) == 0


def test_a_tampered_pending_request_is_ignored(twofold, client):
    w = world(twofold, client)
    browser = Browser(client)
    request = request_for(w.app)
    browser.get(request.url)
    stamp, signature, _ = browser.cookies[AUTHORIZE_COOKIE].split(".", 2)
    forged = urlencode({**request.params, "redirect_uri": "https://evil.example/cb"})
    browser.cookies[AUTHORIZE_COOKIE] = f"{stamp}.{signature}.{forged}"
    browser.cookies[SESSION_COOKIE] = sign_in(client, w.bob)
    home = browser.get("/")
    assert home.status_code == 200 and "refresh" not in home.headers  # home, not a way anywhere
