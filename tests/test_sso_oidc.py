"""Single sign-on through an organization's own OpenID Connect provider (R2; DESIGN.md R2, API.md "Single sign-on"
and the "identity-providers" rows of "Administration"; SECURITY.md "SSO users cannot use a local password").

The upstream provider is a real one, run by the test (tests/support/oidc_provider.py): Twofold reads its discovery
document, sends the browser to its /authorize, redeems the code at its /token with client_secret_basic and PKCE,
and checks the ID token against its JWKS, all over real HTTP. The browser's round trip is followed by hand: the
TestClient for Twofold (cookies set in a Cookie header, since httpx never sends a `Secure` cookie over http, as in
test_pages.py), httpx for the provider's /authorize."""

from __future__ import annotations

import html
import json
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from twofold.container import Twofold
from twofold.domain.clock import utcnow
from twofold.domain.entities import Organization
from twofold.storage import tables
from twofold.web.app import create_app

from . import test_oauth_authorization_code as authorization_code
from . import test_oauth_client_credentials as client_credentials
from .conftest import PUBLIC_URL
from .support.flows import Account, bearer, create_organization, create_user, enroll, login
from .support.methods import METHOD_TYPE
from .support.oidc_provider import OidcProvider, SignIn, s256
from .test_admin_api import admin_session, assert_problem, expire_step_up
from .test_connected_apps import ADMIN_SCOPES, audit_rows, rows
from .test_pages import CSRF_INPUT, SESSION_COOKIE, Browser, assert_host_cookie, is_cleared, set_cookies

SSO_COOKIE = "__Host-twofold_sso"
MFA_AMR = ["pwd", "otp", "mfa"]


# -- helpers -----------------------------------------------------------------------------------------------


def idp_url(org: str, idp_id: str | None = None) -> str:
    base = f"/api/v1/organizations/{org}/identity-providers"
    return base if idp_id is None else f"{base}/{idp_id}"


def oidc_body(provider: OidcProvider, **fields: Any) -> dict[str, Any]:
    return {
        "type": "oidc",
        "name": "Corp SSO",
        "issuer": provider.issuer,
        "client_id": provider.client_id,
        "client_secret": provider.client_secret,
        **fields,
    }


def add_provider(client: Any, org: str, token: str | None, provider: OidcProvider, **fields: Any) -> dict[str, Any]:
    response = client.post(idp_url(org), json=oidc_body(provider, **fields), headers=bearer(token))
    assert response.status_code == 201, response.text
    return dict(response.json())


def change(client: Any, org: str, token: str | None, idp_id: str, **fields: Any) -> dict[str, Any]:
    response = client.patch(idp_url(org, idp_id), json=fields, headers=bearer(token))
    assert response.status_code == 200, response.text
    return dict(response.json())


def all_stored_text(twofold: Twofold) -> str:
    """Every row of every table, as one string: where a secret must not be found in clear."""
    with twofold.uow.engine.connect() as connection:
        return "\n".join(
            json.dumps([str(value) for value in row])
            for table in tables.metadata.sorted_tables
            for row in connection.execute(select(table)).all()
        )


def count(twofold: Twofold, table: Any, *where: Any) -> int:
    with twofold.uow.engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def federated_users(twofold: Twofold, idp_id: str) -> list[Any]:
    return rows(twofold, tables.users, tables.users.c.identity_provider_id == idp_id)


def user_row(twofold: Twofold, user_id: str) -> Any:
    (row,) = rows(twofold, tables.users, tables.users.c.id == user_id)
    return row


def unused_port() -> int:
    """A loopback port with nothing listening (the system picks it; it is closed again at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class RoundTrip:
    """One browser round trip: Twofold's start, the provider's answer, and Twofold's callback."""

    start: Any
    sso_cookie: str
    authorization: dict[str, str]  # the request the provider received
    callback_url: str
    callback: Any

    @property
    def session_token(self) -> str | None:
        entry = set_cookies(self.callback).get(SESSION_COOKIE)
        return None if entry is None or is_cleared(entry) else entry["value"]


def begin(client: Any, idp_id: str, provider: OidcProvider) -> tuple[Any, str, str]:
    """GET /login/sso/{id}: a 303 to the provider with a `__Host-` cookie binding the sign-in to this browser;
    then the provider's /authorize (no UI), which answers 302 to Twofold's callback. Returns the start, the
    cookie's value and the callback URL."""
    start = client.get(f"/login/sso/{idp_id}", follow_redirects=False)
    assert start.status_code == 303, start.text
    location = start.headers["location"]
    assert location.startswith(f"{provider.issuer}/authorize?"), location
    cookie = set_cookies(start)[SSO_COOKIE]
    assert_host_cookie(cookie)
    answer = httpx.get(location, follow_redirects=False)
    assert answer.status_code == 302, answer.text
    callback_url = answer.headers["location"]
    assert callback_url.startswith(f"{PUBLIC_URL}/sso/oidc/{idp_id}/callback?"), callback_url
    return start, cookie["value"], callback_url


def callback(client: Any, url: str, sso_cookie: str | None) -> Any:
    headers = {"Cookie": f"{SSO_COOKIE}={sso_cookie}"} if sso_cookie is not None else {}
    return client.get(url, headers=headers, follow_redirects=False)


def round_trip(client: Any, idp_id: str, provider: OidcProvider, sign_in: SignIn | None = None) -> RoundTrip:
    if sign_in is not None:
        provider.next_sign_in = sign_in
    start, cookie, url = begin(client, idp_id, provider)
    return RoundTrip(start, cookie, provider.authorizations[-1], url, callback(client, url, cookie))


def signed_in(trip: RoundTrip) -> str:
    """The callback succeeded: a 303 to /, a `__Host-` session cookie, the SSO cookie cleared."""
    response = trip.callback
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/"
    cookies = set_cookies(response)
    assert_host_cookie(cookies[SESSION_COOKIE])
    assert is_cleared(cookies[SSO_COOKIE])
    token = trip.session_token
    assert token
    return token


def me(client: Any, session_token: str) -> dict[str, Any]:
    response = client.get("/api/v1/me", headers={"Cookie": f"{SESSION_COOKIE}={session_token}"})
    assert response.status_code == 200, response.text
    return dict(response.json())


def refused_page(response: Any, words: str) -> str:
    """A 403 page that says what happened in words, with no session cookie."""
    assert response.status_code == 403, response.text
    assert response.headers["content-type"].startswith("text/html")
    text = html.unescape(response.text)
    assert "Single sign-on did not complete" in text
    assert words in text, text
    assert "Traceback" not in text
    entry = set_cookies(response).get(SESSION_COOKIE)
    assert entry is None or is_cleared(entry)
    return text


def last_event(twofold: Twofold, event_type: str) -> Any:
    found = audit_rows(twofold, event_type)
    assert found, f"no {event_type} event"
    return found[-1]


def refusal_event(twofold: Twofold, reason: str, idp_id: str, event_type: str = "sso.refused") -> dict[str, Any]:
    event = last_event(twofold, event_type)
    details = dict(event.details)
    assert details["reason"] == reason, details
    assert details["identity_provider_id"] == idp_id
    return details


def continues_to(response: Any) -> str:
    """Where POST /login/sso sends the browser on when one provider fits: a 303, or (as the page does, since a
    redirect after a form POST is held to the form page's CSP `form-action 'self'` and this chain goes on to the
    provider's site) a page that moves on by itself with `Refresh: 0; url=…` and a link to the same place."""
    if response.status_code == 303:
        return str(response.headers["location"])
    assert response.status_code == 200, response.text
    refresh = response.headers.get("refresh", "")
    assert refresh.startswith("0; url="), response.headers
    target = refresh.removeprefix("0; url=")
    assert f'href="{target}"' in response.text, response.text
    return target


@pytest.fixture
def provider() -> Iterator[OidcProvider]:
    with OidcProvider() as running:
        yield running


@dataclass
class Corp:
    """Acme, its administrator alice (MFA, fresh step-up), and Corp SSO: an OIDC provider Acme added."""

    twofold: Twofold
    client: Any
    organization: Organization
    alice: Account
    provider: OidcProvider
    idp: dict[str, Any]

    @property
    def org(self) -> str:
        return self.organization.id

    @property
    def idp_id(self) -> str:
        return str(self.idp["id"])

    def round_trip(self, sign_in: SignIn | None = None) -> RoundTrip:
        return round_trip(self.client, self.idp_id, self.provider, sign_in)

    def sign_in(self, sign_in: SignIn | None = None) -> str:
        return signed_in(self.round_trip(sign_in))

    def change(self, **fields: Any) -> dict[str, Any]:
        return change(self.client, self.org, self.alice.token, self.idp_id, **fields)


def corp_of(twofold: Twofold, client: Any, provider: OidcProvider, **fields: Any) -> Corp:
    organization, alice = create_organization(twofold)
    enroll(client, alice)
    return Corp(
        twofold,
        client,
        organization,
        alice,
        provider,
        add_provider(client, organization.id, alice.token, provider, **fields),
    )


@pytest.fixture
def corp(twofold: Twofold, client: Any, provider: OidcProvider) -> Corp:
    return corp_of(twofold, client, provider)


# -- administration: creating a provider ---------------------------------------------------------------------


def test_an_administrator_adds_an_oidc_provider_whose_secret_is_never_shown_nor_stored_in_clear(
    twofold, client, provider
):
    """POST …/identity-providers (★): 201 with the settings and defaults (require_mfa true, accepted_amr ["mfa"],
    just-in-time provisioning); the discovery document is read at once; the client secret appears in no answer,
    no audit event and no table in clear; identity_provider.created is audited."""
    org, alice = admin_session(twofold, client)
    response = client.post(idp_url(org), json=oidc_body(provider), headers=bearer(alice.token))
    assert response.status_code == 201, response.text
    body = response.json()
    idp_id = body["id"]
    assert isinstance(idp_id, str) and idp_id
    assert body["type"] == "oidc"
    assert body["name"] == "Corp SSO"
    assert body["issuer"] == provider.issuer
    assert body["login_url"] == f"{PUBLIC_URL}/login/sso/{idp_id}"
    assert body["redirect_uri"] == f"{PUBLIC_URL}/sso/oidc/{idp_id}/callback"
    assert body["client_id"] == provider.client_id
    assert body["scopes"] == ["openid", "profile", "email"]
    assert body["require_mfa"] is True
    assert body["accepted_amr"] == ["mfa"]
    assert body["jit_provisioning"] is True
    assert body["allowed_email_domains"] == []
    assert body["token_endpoint_auth_method"] == "client_secret_basic"
    assert body["users"] == 0
    assert "client_secret" not in body and provider.client_secret not in response.text
    # Discovery was read when the provider was added (a typo is a 422 at once, not a broken sign-in later).
    assert provider.paths() == ["/.well-known/openid-configuration"]

    one = client.get(idp_url(org, idp_id), headers=bearer(alice.token))
    assert one.status_code == 200, one.text
    assert one.json() == body
    assert provider.client_secret not in one.text

    listed = client.get(idp_url(org), headers=bearer(alice.token))
    assert listed.status_code == 200, listed.text
    by_type = {item["type"]: item for item in listed.json()}
    assert set(by_type) == {"local", "oidc"}, listed.json()
    assert by_type["oidc"] == body
    assert provider.client_secret not in listed.text

    event = last_event(twofold, "identity_provider.created")
    assert event.organization_id == org and event.actor_id == alice.user.id
    assert event.details == {
        "identity_provider_id": idp_id,
        "type": "oidc",
        "name": "Corp SSO",
        "issuer": provider.issuer,
    }
    assert provider.client_secret not in all_stored_text(twofold)
    (stored,) = rows(twofold, tables.identity_providers, tables.identity_providers.c.id == idp_id)
    assert stored.issuer == provider.issuer and stored.settings_encrypted


def test_options_given_at_creation_are_kept(twofold, client, provider):
    """The optional settings of the create body (scopes, require_mfa, accepted_amr, allowed_email_domains,
    jit_provisioning) come back as given; domains are lower-cased."""
    org, alice = admin_session(twofold, client)
    body = add_provider(
        client,
        org,
        alice.token,
        provider,
        scopes=["openid", "email"],
        require_mfa=False,
        accepted_amr=["hwk", "mfa"],
        allowed_email_domains=["Corp.Example", "corp.example", "sub.corp.example"],
        jit_provisioning=False,
    )
    assert body["scopes"] == ["openid", "email"]
    assert body["require_mfa"] is False
    assert body["accepted_amr"] == ["hwk", "mfa"]
    assert body["allowed_email_domains"] == ["corp.example", "sub.corp.example"]
    assert body["jit_provisioning"] is False


def test_a_provider_that_cannot_be_used_is_422_and_nothing_is_stored(twofold, client, provider):
    """422 validation_error for an issuer nothing answers at, a discovery document that names another issuer,
    an http issuer that is not a loopback address, bad email domains, a missing client secret, and a SAML
    provider whose metadata cannot be fetched; no provider is stored and nothing is audited."""
    org, alice = admin_session(twofold, client)

    def post(**fields: Any) -> Any:
        return client.post(idp_url(org), json=oidc_body(provider, **fields), headers=bearer(alice.token))

    unreachable = f"http://127.0.0.1:{unused_port()}"
    body = assert_problem(post(issuer=unreachable), 422, "validation_error")
    assert "cannot be used" in body["detail"], body
    provider.discovery_issuer = "https://login.elsewhere.example"
    body = assert_problem(post(), 422, "validation_error")
    assert "https://login.elsewhere.example" in body["detail"], body
    provider.discovery_issuer = None
    for issuer in (
        "http://idp.corp.example",
        "http://10.0.0.8",
        "ftp://idp.corp.example",
        "https://idp.example/?a=b",
        "not a url",
    ):
        assert_problem(post(issuer=issuer), 422, "validation_error")
    for domains in (["not a domain"], ["corp"], ["corp.example/path"], ["user@corp.example"], [""], [".corp.example"]):
        assert_problem(post(allowed_email_domains=domains), 422, "validation_error")
    assert_problem(post(client_secret=None), 422, "validation_error")
    assert_problem(post(scopes=["profile", "email"]), 422, "validation_error")  # no openid
    assert_problem(post(accepted_amr=[]), 422, "validation_error")
    saml = client.post(
        idp_url(org),
        json={"type": "saml", "name": "Corp SAML", "metadata_url": "https://idp.corp.example/metadata"},
        headers=bearer(alice.token),
    )
    body = assert_problem(saml, 422, "validation_error")
    assert "could not be fetched" in body["detail"], body  # a SAML provider whose metadata URL is unreachable
    assert_problem(
        client.post(idp_url(org), json={**oidc_body(provider), "type": "ldap"}, headers=bearer(alice.token)),
        422,
        "validation_error",
    )

    assert [item["type"] for item in client.get(idp_url(org), headers=bearer(alice.token)).json()] == ["local"]
    assert audit_rows(twofold, "identity_provider.created") == []
    assert count(twofold, tables.identity_providers, tables.identity_providers.c.type != "local") == 0


def test_an_http_issuer_is_accepted_on_localhost_by_name(twofold, client, provider):
    """http is allowed for a loopback issuer (as for redirect URIs); `localhost` is one."""
    org, alice = admin_session(twofold, client)
    provider.discovery_issuer = f"http://localhost:{provider.port}"
    response = client.post(
        idp_url(org), json=oidc_body(provider, issuer=provider.discovery_issuer), headers=bearer(alice.token)
    )
    assert response.status_code == 201, response.text
    assert response.json()["issuer"] == f"http://localhost:{provider.port}"


# -- administration: who may -----------------------------------------------------------------------------------


def test_writes_need_a_fresh_step_up(corp):
    """★: an administrator whose last MFA is older than the step-up window gets 403 step_up_required for
    create, change and delete; reading still works."""
    client, org = corp.client, corp.org
    expire_step_up(corp.twofold, str(corp.alice.token))
    headers = bearer(corp.alice.token)
    assert_problem(client.post(idp_url(org), json=oidc_body(corp.provider), headers=headers), 403, "step_up_required")
    assert_problem(
        client.patch(idp_url(org, corp.idp_id), json={"name": "X"}, headers=headers), 403, "step_up_required"
    )
    assert_problem(client.delete(idp_url(org, corp.idp_id), headers=headers), 403, "step_up_required")
    assert client.get(idp_url(org, corp.idp_id), headers=headers).json()["name"] == "Corp SSO"
    assert count(corp.twofold, tables.identity_providers, tables.identity_providers.c.type == "oidc") == 1


def test_a_user_who_is_not_an_administrator_gets_403(corp):
    bob = enroll(corp.client, create_user(corp.twofold, corp.organization, "bob"))
    client, org, headers = corp.client, corp.org, bearer(bob.token)
    fetched_before = len(corp.provider.requests)
    assert_problem(client.post(idp_url(org), json=oidc_body(corp.provider), headers=headers), 403, "forbidden")
    assert_problem(client.patch(idp_url(org, corp.idp_id), json={"name": "X"}, headers=headers), 403, "forbidden")
    assert_problem(client.delete(idp_url(org, corp.idp_id), headers=headers), 403, "forbidden")
    assert_problem(client.get(idp_url(org, corp.idp_id), headers=headers), 403, "forbidden")
    assert_problem(client.get(idp_url(org), headers=headers), 403, "forbidden")
    assert len(corp.provider.requests) == fetched_before  # the refused create fetched nothing upstream


def test_a_refused_create_makes_no_request_to_the_issuer(corp):
    """Who may add a provider is decided before the server fetches anything from the issuer named in the body:
    a non-administrator (or a connected app) cannot make Twofold call out to a URL of its choosing."""
    bob = enroll(corp.client, create_user(corp.twofold, corp.organization, "bob"))
    with OidcProvider() as elsewhere:
        refused = corp.client.post(idp_url(corp.org), json=oidc_body(elsewhere), headers=bearer(bob.token))
        assert_problem(refused, 403, "forbidden")
        app = client_credentials.new_app(corp.client, corp.org, corp.alice.token, ADMIN_SCOPES)
        token = client_credentials.token_for(corp.client, app)
        refused = corp.client.post(idp_url(corp.org), json=oidc_body(elsewhere), headers=bearer(token))
        assert_problem(refused, 403, "forbidden")
        expire_step_up(corp.twofold, str(corp.alice.token))
        refused = corp.client.post(idp_url(corp.org), json=oidc_body(elsewhere), headers=bearer(corp.alice.token))
        assert_problem(refused, 403, "step_up_required")
        assert elsewhere.requests == []


def test_another_organizations_provider_is_404(corp):
    """An administrator of Globex sees nothing of Acme's provider through Globex's path, and cannot reach
    Acme's path at all."""
    globex, gina = create_organization(corp.twofold, "Globex", "gina")
    enroll(corp.client, gina)
    client, headers = corp.client, bearer(gina.token)
    assert_problem(client.get(idp_url(globex.id, corp.idp_id), headers=headers), 404, "not_found")
    assert_problem(
        client.patch(idp_url(globex.id, corp.idp_id), json={"name": "Mine"}, headers=headers), 404, "not_found"
    )
    assert_problem(client.delete(idp_url(globex.id, corp.idp_id), headers=headers), 404, "not_found")
    assert_problem(client.get(idp_url(corp.org, corp.idp_id), headers=headers), 404, "not_found")
    assert_problem(client.delete(idp_url(corp.org, corp.idp_id), headers=headers), 404, "not_found")
    # The local provider is not an external one either.
    local = next(p for p in client.get(idp_url(globex.id), headers=headers).json() if p["type"] == "local")
    assert_problem(client.get(idp_url(globex.id, local["id"]), headers=headers), 404, "not_found")
    assert_problem(client.delete(idp_url(globex.id, local["id"]), headers=headers), 404, "not_found")
    assert client.get(idp_url(corp.org, corp.idp_id), headers=bearer(corp.alice.token)).json()["name"] == "Corp SSO"


def test_a_connected_app_token_cannot_change_providers_whatever_its_scopes(corp):
    """A connected app (client credentials) never creates, changes or deletes a provider: a provider can
    create users, and no app scope grants it."""
    app = client_credentials.new_app(corp.client, corp.org, corp.alice.token, ADMIN_SCOPES)
    token = client_credentials.token_for(corp.client, app)
    client, org, headers = corp.client, corp.org, bearer(token)
    assert_problem(client.post(idp_url(org), json=oidc_body(corp.provider), headers=headers), 403, "forbidden")
    assert_problem(
        client.patch(idp_url(org, corp.idp_id), json={"require_mfa": False}, headers=headers), 403, "forbidden"
    )
    assert_problem(client.delete(idp_url(org, corp.idp_id), headers=headers), 403, "forbidden")
    after = client.get(idp_url(org, corp.idp_id), headers=bearer(corp.alice.token)).json()
    assert after["require_mfa"] is True


# -- administration: changing and deleting ---------------------------------------------------------------------


def test_an_administrator_changes_a_provider_and_the_new_secret_is_used_but_never_shown(corp):
    """PATCH (★) changes name, require_mfa, accepted_amr, allowed_email_domains and client_secret; the audit
    event names what changed and never holds the secret; the next sign-in authenticates with the new secret."""
    new_secret = "rotated-corp-secret-" + secrets.token_urlsafe(16)
    response = corp.client.patch(
        idp_url(corp.org, corp.idp_id),
        json={
            "name": "Corp Login",
            "require_mfa": False,
            "accepted_amr": ["hwk"],
            "allowed_email_domains": ["corp.example"],
            "client_secret": new_secret,
        },
        headers=bearer(corp.alice.token),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["name"] == "Corp Login"
    assert body["require_mfa"] is False
    assert body["accepted_amr"] == ["hwk"]
    assert body["allowed_email_domains"] == ["corp.example"]
    assert body["issuer"] == corp.provider.issuer and body["client_id"] == corp.provider.client_id
    assert "client_secret" not in body and new_secret not in response.text
    assert corp.client.get(idp_url(corp.org, corp.idp_id), headers=bearer(corp.alice.token)).json() == body

    event = last_event(corp.twofold, "identity_provider.updated")
    assert event.actor_id == corp.alice.user.id
    assert event.details["identity_provider_id"] == corp.idp_id
    assert {"name", "require_mfa", "accepted_amr", "allowed_email_domains"} <= set(event.details["changed"])
    stored = all_stored_text(corp.twofold)
    assert new_secret not in stored and corp.provider.client_secret not in stored

    # The provider now expects the new secret: the sign-in authenticates with it.
    corp.provider.client_secret = new_secret
    corp.sign_in()
    assert corp.provider.token_requests[-1].status == 200


def test_patch_refuses_bad_values_and_fields_that_cannot_change(corp):
    for body in (
        {"allowed_email_domains": ["corp"]},
        {"accepted_amr": []},
        {"require_mfa": "maybe"},
        {"scopes": ["email"]},
        {"name": ""},
        {"issuer": "https://other.example"},
        {"type": "saml"},
    ):
        response = corp.client.patch(idp_url(corp.org, corp.idp_id), json=body, headers=bearer(corp.alice.token))
        assert_problem(response, 422, "validation_error")
    assert corp.client.get(idp_url(corp.org, corp.idp_id), headers=bearer(corp.alice.token)).json() == corp.idp
    assert audit_rows(corp.twofold, "identity_provider.updated") == []


def test_a_provider_without_users_is_deleted(corp):
    """DELETE (★) → 204 when no user signs in through it (a sign-in in flight goes with it); audited."""
    begin(corp.client, corp.idp_id, corp.provider)  # a pending sign-in, never finished
    response = corp.client.delete(idp_url(corp.org, corp.idp_id), headers=bearer(corp.alice.token))
    assert response.status_code == 204, response.text
    assert_problem(corp.client.get(idp_url(corp.org, corp.idp_id), headers=bearer(corp.alice.token)), 404, "not_found")
    listed = corp.client.get(idp_url(corp.org), headers=bearer(corp.alice.token)).json()
    assert [p["type"] for p in listed] == ["local"]
    event = last_event(corp.twofold, "identity_provider.deleted")
    assert event.details["identity_provider_id"] == corp.idp_id and event.actor_id == corp.alice.user.id
    # Its sign-in page is gone too.
    page = corp.client.get(f"/login/sso/{corp.idp_id}", follow_redirects=False)
    assert page.status_code == 404 and SSO_COOKIE not in set_cookies(page)


def test_a_provider_that_users_sign_in_through_is_not_deleted(corp):
    """DELETE → 409 conflict while a user belongs to the provider (even a disabled one)."""
    corp.sign_in()
    (user,) = federated_users(corp.twofold, corp.idp_id)
    assert corp.client.get(idp_url(corp.org, corp.idp_id), headers=bearer(corp.alice.token)).json()["users"] == 1
    body = assert_problem(
        corp.client.delete(idp_url(corp.org, corp.idp_id), headers=bearer(corp.alice.token)), 409, "conflict"
    )
    assert "1 user" in body["detail"]
    disable = corp.client.patch(
        f"/api/v1/organizations/{corp.org}/users/{user.id}",
        json={"status": "disabled"},
        headers=bearer(corp.alice.token),
    )
    assert disable.status_code == 200, disable.text
    assert_problem(
        corp.client.delete(idp_url(corp.org, corp.idp_id), headers=bearer(corp.alice.token)), 409, "conflict"
    )
    assert audit_rows(corp.twofold, "identity_provider.deleted") == []


# -- signing in -------------------------------------------------------------------------------------------------


def test_a_sign_in_with_mfa_provisions_a_federated_user_just_in_time(corp):
    """The code flow with PKCE S256, state and nonce; the ID token's amr, acr and auth_time are kept verbatim
    in the session; the new user is keyed by (provider, sub), has no password and shows its provider in
    /api/v1/me; user.created (just in time) and login.succeeded (method "sso") are audited."""
    auth_time = int(time.time()) - 90
    trip = corp.round_trip(SignIn(sub="00u-corp-42", amr=MFA_AMR, acr="urn:corp:acr:mfa", auth_time=auth_time))
    token = signed_in(trip)

    request = trip.authorization
    assert request["response_type"] == "code"
    assert request["client_id"] == corp.provider.client_id
    assert request["redirect_uri"] == corp.idp["redirect_uri"]
    assert request["scope"] == "openid profile email"
    assert request["code_challenge_method"] == "S256"
    assert len(request["state"]) >= 32 and len(request["nonce"]) >= 22
    assert parse_qs(urlsplit(trip.callback_url).query)["state"] == [request["state"]]
    (exchange,) = corp.provider.token_requests
    assert exchange.status == 200
    assert exchange.form["grant_type"] == "authorization_code"
    assert exchange.form["redirect_uri"] == corp.idp["redirect_uri"]
    assert s256(exchange.form["code_verifier"]) == request["code_challenge"]
    assert exchange.authorization and exchange.authorization.startswith("Basic ")
    assert "client_secret" not in exchange.form  # client_secret_basic, not _post

    (user,) = federated_users(corp.twofold, corp.idp_id)
    assert user.external_subject == "00u-corp-42"
    assert user.password_hash is None
    assert user.kind == "user" and user.service_type is None and user.status == "active"
    assert user.organization_id == corp.org
    assert user.username == "bob" and user.email == "bob@corp.example" and user.display_name == "Bob Upstream"

    body = me(corp.client, token)
    assert body["id"] == user.id and body["username"] == "bob"
    assert body["identity_provider"] == {
        "id": corp.idp_id,
        "type": "oidc",
        "name": "Corp SSO",
        "issuer": corp.provider.issuer,
        "external_subject": "00u-corp-42",
    }
    assert body["mfa_exempt"] is False
    session = body["session"]
    assert session["amr"] == MFA_AMR
    assert session["acr"] == "urn:corp:acr:mfa"
    assert datetime.fromisoformat(session["auth_time"]) == datetime.fromtimestamp(auth_time, UTC)
    assert session["step_up_until"] is not None  # an MFA session

    created = last_event(corp.twofold, "user.created")
    assert created.subject_id == user.id and created.details["provisioning"] == "just_in_time"
    assert created.details["identity_provider_id"] == corp.idp_id
    succeeded = last_event(corp.twofold, "login.succeeded")
    assert succeeded.subject_id == user.id and succeeded.organization_id == corp.org
    assert succeeded.details["method"] == "sso"
    assert succeeded.details["amr"] == MFA_AMR
    assert succeeded.details["identity_provider_id"] == corp.idp_id
    assert succeeded.details["acr"] == "urn:corp:acr:mfa"
    # The session cookie is a working session on the API too (bearer).
    assert corp.client.get("/api/v1/me", headers=bearer(token)).json()["id"] == user.id
    # Nothing of the exchange is kept in clear: not the code verifier, not the ID token.
    stored = all_stored_text(corp.twofold)
    assert exchange.form["code_verifier"] not in stored and exchange.form["code"] not in stored


def test_two_distinct_factors_pass_without_mfa_in_amr(corp):
    """API.md "Single sign-on": require_mfa accepts an amr with two distinct factor values (pwd and otp)."""
    token = corp.sign_in(SignIn(sub="two-factors", amr=["pwd", "otp"], acr=None))
    session = me(corp.client, token)["session"]
    assert session["amr"] == ["pwd", "otp"]
    assert session["acr"] == "0"  # the provider asserted none
    assert session["step_up_until"] is not None
    assert last_event(corp.twofold, "login.succeeded").details["amr"] == ["pwd", "otp"]


def test_a_second_sign_in_with_the_same_subject_finds_the_same_user(corp):
    """Federated users are found by (provider, sub) only: a changed username or email upstream is the same
    user, and no second account is made."""
    first = me(corp.client, corp.sign_in(SignIn(sub="stable-sub")))
    second = me(
        corp.client, corp.sign_in(SignIn(sub="stable-sub", preferred_username="robert", email="robert@corp.example"))
    )
    assert second["id"] == first["id"] and second["username"] == "bob"
    assert len(federated_users(corp.twofold, corp.idp_id)) == 1
    created = [e for e in audit_rows(corp.twofold, "user.created") if e.details.get("provisioning")]
    assert [e.subject_id for e in created] == [first["id"]]
    assert len(audit_rows(corp.twofold, "login.succeeded")) == 3  # alice, then bob twice


def test_a_local_account_with_the_same_name_and_email_is_never_merged(corp):
    """Just-in-time provisioning never merges with an existing account (API.md "Single sign-on"; SECURITY.md:
    never by email): a local bob stays as he was, the federated one becomes bob-2, the next collision bob-3."""
    local_bob = create_user(corp.twofold, corp.organization, "bob")
    before = user_row(corp.twofold, local_bob.user.id)
    token = corp.sign_in(SignIn(sub="corp-bob", preferred_username="bob", email="bob@example.com"))
    body = me(corp.client, token)
    assert body["id"] != local_bob.user.id
    assert body["username"] == "bob-2"
    assert body["email"] == "bob@example.com"
    assert user_row(corp.twofold, local_bob.user.id) == before
    third = me(corp.client, corp.sign_in(SignIn(sub="another-corp-bob", preferred_username="BOB")))
    assert third["username"] == "BOB-3"  # usernames compare without regard to case
    # The local bob still signs in with his own password, to his own account.
    assert login(corp.client, local_bob).json()["status"] == "enrollment_required"


def test_without_a_username_claim_the_email_or_the_subject_names_the_user(corp):
    by_email = me(corp.client, corp.sign_in(SignIn(sub="s-1", preferred_username=None, email="carol@corp.example")))
    assert by_email["username"] == "carol@corp.example"
    by_subject = me(corp.client, corp.sign_in(SignIn(sub="dave-sub", preferred_username=None, email=None, name=None)))
    assert by_subject["username"] == "dave-sub" and by_subject["email"] == ""


# -- the MFA policy ---------------------------------------------------------------------------------------------


def test_a_sign_in_without_mfa_is_refused_and_audited_as_mfa_missing(corp):
    """R2: an SSO user's MFA is never waived: amr ["pwd"] with require_mfa on is a 403 page saying so,
    sso.mfa_missing is audited with what the provider asserted, and no user or session is made."""
    trip = corp.round_trip(SignIn(sub="pwd-only", amr=["pwd"]))
    refused_page(trip.callback, "without multi-factor authentication")
    assert trip.session_token is None
    details = refusal_event(corp.twofold, "mfa_missing", corp.idp_id, "sso.mfa_missing")
    assert details["subject"] == "pwd-only" and details["amr"] == ["pwd"]
    assert federated_users(corp.twofold, corp.idp_id) == []
    assert count(corp.twofold, tables.sessions) == 1  # alice's only
    # No amr at all is no MFA either; one factor named twice is one factor.
    refused_page(corp.round_trip(SignIn(amr=None)).callback, "without multi-factor authentication")
    refused_page(corp.round_trip(SignIn(amr=["pwd", "pwd"])).callback, "without multi-factor authentication")
    refused_page(corp.round_trip(SignIn(amr=["pwd", "user"])).callback, "without multi-factor authentication")
    assert len(audit_rows(corp.twofold, "sso.mfa_missing")) == 4
    assert federated_users(corp.twofold, corp.idp_id) == []


def test_with_require_mfa_off_the_sign_in_succeeds_without_an_mfa_session(corp):
    """require_mfa false: amr ["pwd"] signs in, the session keeps amr ["pwd"], and it is no MFA session: no
    step-up window, and a connected app's /oauth2/authorize answers access_denied where an MFA sign-in gets a
    code."""
    corp.change(require_mfa=False)
    app = authorization_code.new_app(corp.client, corp.org, corp.alice.token)
    token = corp.sign_in(SignIn(sub="pwd-only", amr=["pwd"]))
    session = me(corp.client, token)["session"]
    assert session["amr"] == ["pwd"] and session["step_up_until"] is None
    browser = Browser(corp.client)
    browser.cookies[SESSION_COOKIE] = token
    request = authorization_code.request_for(app)
    assert authorization_code.error_of(browser.get(request.url), request) == "access_denied"

    # The same person with MFA at the provider gets a code.
    mfa_token = corp.sign_in(SignIn(sub="pwd-only", amr=MFA_AMR))
    browser.cookies[SESSION_COOKIE] = mfa_token
    request = authorization_code.request_for(app)
    assert authorization_code.code_of(browser.get(request.url), request)


def test_accepted_amr_adds_values_that_pass_on_their_own(corp):
    """accepted_amr ["hwk"]: a provider that reports a security key alone (amr ["hwk"]) passes; ["pwd"] still
    does not."""
    corp.change(accepted_amr=["hwk"])
    token = corp.sign_in(SignIn(sub="key-user", amr=["hwk"]))
    session = me(corp.client, token)["session"]
    assert session["amr"] == ["hwk"] and session["step_up_until"] is not None
    refused_page(corp.round_trip(SignIn(sub="key-user", amr=["pwd"])).callback, "without multi-factor")
    refusal_event(corp.twofold, "mfa_missing", corp.idp_id, "sso.mfa_missing")


# -- what cannot be trusted -------------------------------------------------------------------------------------


def _other_kid(provider: OidcProvider) -> SignIn:
    return SignIn(foreign_key=True)


def _published_kid(provider: OidcProvider) -> SignIn:
    return SignIn(foreign_key=True, kid=provider.key.kid)


@pytest.mark.parametrize(
    ("make_sign_in", "detail"),
    [
        (lambda p: SignIn(nonce="not-the-nonce-that-was-sent"), "nonce"),
        (lambda p: SignIn(nonce=None), "nonce"),
        (lambda p: SignIn(issuer="https://login.elsewhere.example"), "another issuer"),
        (lambda p: SignIn(issuer=p.issuer + "/"), "another issuer"),
        (lambda p: SignIn(audience="some-other-client"), "not for this client"),
        (lambda p: SignIn(audience=[p.client_id, "some-other-client"]), "several audiences"),
        (lambda p: SignIn(expires_in=-3600), "expired"),
        (_other_kid, "signature"),
        (_published_kid, "signature"),
    ],
    ids=[
        "wrong-nonce",
        "no-nonce",
        "wrong-issuer",
        "issuer-with-slash",
        "wrong-audience",
        "other-azp",
        "expired",
        "unknown-key",
        "foreign-key-published-kid",
    ],
)
def test_an_id_token_that_fails_a_check_is_refused(corp, make_sign_in, detail):
    """OpenID Connect Core §3.1.3.7: signature by a key of the provider's JWKS, iss exactly the issuer, aud our
    client (azp when several), not expired, our nonce. Each failure: a 403 page, sso.refused audited with the
    check that failed, no user, no session."""
    trip = corp.round_trip(make_sign_in(corp.provider))
    refused_page(trip.callback, "answered in a way that cannot be trusted")
    details = refusal_event(corp.twofold, "invalid_response", corp.idp_id)
    assert detail in details["detail"], details
    assert federated_users(corp.twofold, corp.idp_id) == []
    assert count(corp.twofold, tables.sessions) == 1  # alice's only
    assert is_cleared(set_cookies(trip.callback)[SSO_COOKIE])


def test_a_token_for_several_audiences_with_our_client_as_azp_is_accepted(corp):
    """The other side of the azp rule: several audiences are fine when azp names our client."""
    sign_in = SignIn(audience=[corp.provider.client_id, "other"], extra={"azp": corp.provider.client_id})
    corp.sign_in(sign_in)


def test_the_provider_refusing_the_user_is_a_refusal_page(corp):
    """The provider answers error=access_denied (the user said no there): 403 page naming it, audited, and no
    call to the token endpoint."""
    trip = corp.round_trip(SignIn(error="access_denied"))
    assert "code" not in parse_qs(urlsplit(trip.callback_url).query)
    refused_page(trip.callback, "Corp SSO did not sign you in (access_denied)")
    details = refusal_event(corp.twofold, "upstream_error", corp.idp_id)
    assert details["upstream_error"] == "access_denied"
    assert corp.provider.token_requests == []


def test_a_code_the_provider_refuses_is_a_refusal_page(corp):
    """The token endpoint refuses our client (its secret was changed there, not here): refused and audited."""
    corp.provider.client_secret = "changed-at-the-provider"
    trip = corp.round_trip()
    refused_page(trip.callback, "cannot be trusted")
    assert corp.provider.token_requests[-1].status == 401
    details = refusal_event(corp.twofold, "invalid_response", corp.idp_id)
    assert "invalid_client" in details["detail"]
    assert corp.provider.client_secret not in json.dumps(details)


def test_a_callback_after_the_sign_in_expired_is_refused(corp):
    """A pending sign-in lives 10 minutes (the row's expiry is moved into the past: storage-level set-up, no
    sleeping); its callback afterwards is refused and audited, and the code is never redeemed."""
    _, cookie, url = begin(corp.client, corp.idp_id, corp.provider)
    with corp.twofold.uow.engine.begin() as connection:
        connection.execute(update(tables.sso_requests).values(expires_at=utcnow() - timedelta(seconds=1)))
    refused_page(callback(corp.client, url, cookie), "has expired")
    refusal_event(corp.twofold, "used_or_expired", corp.idp_id)
    assert corp.provider.token_requests == []


def test_a_callback_used_twice_is_refused(corp):
    """The state is spent once: the same callback URL again, from the same browser, gives no second session
    and is audited."""
    trip = corp.round_trip()
    signed_in(trip)
    replay = callback(corp.client, trip.callback_url, trip.sso_cookie)
    refused_page(replay, "already been used")
    assert trip_token_is_absent(replay)
    refusal_event(corp.twofold, "used_or_expired", corp.idp_id)
    assert count(corp.twofold, tables.sessions) == 2  # alice's and the one sign-in's
    assert len(corp.provider.token_requests) == 1  # the code was not sent to the provider again


def trip_token_is_absent(response: Any) -> bool:
    entry = set_cookies(response).get(SESSION_COOKIE)
    return entry is None or is_cleared(entry)


def test_a_callback_without_the_browser_cookie_or_with_another_browsers_is_refused(corp):
    """The sign-in is bound to the browser that started it (login CSRF; RFC 9700 §4.7): no cookie, or the
    cookie of another sign-in, is refused and audited; the code is never redeemed."""
    _, cookie, url = begin(corp.client, corp.idp_id, corp.provider)
    _, other_cookie, _ = begin(corp.client, corp.idp_id, corp.provider)
    refused_page(callback(corp.client, url, None), "started in another browser")
    refusal_event(corp.twofold, "another_browser", corp.idp_id)
    refused_page(callback(corp.client, url, other_cookie), "started in another browser")
    refused_page(callback(corp.client, url, "x" * 43), "started in another browser")
    assert len(audit_rows(corp.twofold, "sso.refused")) == 3
    assert corp.provider.token_requests == []
    assert federated_users(corp.twofold, corp.idp_id) == []
    # The browser that started it still finishes it.
    signed_in(RoundTrip(None, cookie, {}, url, callback(corp.client, url, cookie)))


def test_an_unknown_state_or_a_missing_one_is_refused(corp):
    _, cookie, url = begin(corp.client, corp.idp_id, corp.provider)
    code = parse_qs(urlsplit(url).query)["code"][0]
    base = f"/sso/oidc/{corp.idp_id}/callback"
    unknown = callback(corp.client, f"{base}?code={code}&state={secrets.token_urlsafe(32)}", cookie)
    refused_page(unknown, "unknown here")
    refusal_event(corp.twofold, "unknown_state", corp.idp_id)
    refused_page(callback(corp.client, f"{base}?code={code}", cookie), "incomplete")
    refused_page(callback(corp.client, f"{base}?code={code}&state=short", cookie), "incomplete")
    assert corp.provider.token_requests == []
    assert trip_token_is_absent(unknown)


def test_the_state_of_another_provider_is_refused(corp):
    """A state issued for one provider, brought to another provider's callback (a mix-up), is unknown there."""
    with OidcProvider() as second:
        other = add_provider(corp.client, corp.org, corp.alice.token, second, name="Partner SSO")
        _, cookie, url = begin(corp.client, corp.idp_id, corp.provider)
        query = urlsplit(url).query
        mixed = callback(corp.client, f"/sso/oidc/{other['id']}/callback?{query}", cookie)
        refused_page(mixed, "unknown here")
        refusal_event(corp.twofold, "unknown_state", other["id"])
        assert second.token_requests == [] and corp.provider.token_requests == []
        assert trip_token_is_absent(mixed)


def test_an_unknown_provider_has_no_sign_in(corp):
    page = corp.client.get("/login/sso/no-such-provider", follow_redirects=False)
    assert page.status_code == 404 and "unknown here" in html.unescape(page.text)
    assert SSO_COOKIE not in set_cookies(page)
    local = next(
        p for p in corp.client.get(idp_url(corp.org), headers=bearer(corp.alice.token)).json() if p["type"] == "local"
    )
    assert corp.client.get(f"/login/sso/{local['id']}", follow_redirects=False).status_code == 404
    assert corp.client.get(f"/sso/oidc/no-such-provider/callback?state={'s' * 43}&code=c").status_code == 403


def test_without_just_in_time_provisioning_an_unknown_subject_is_refused(corp):
    """jit_provisioning false: a subject with no account here is refused and audited; a known one still signs
    in."""
    known = me(corp.client, corp.sign_in(SignIn(sub="known-sub")))
    corp.change(jit_provisioning=False)
    trip = corp.round_trip(SignIn(sub="new-sub", preferred_username="newcomer"))
    refused_page(trip.callback, "no account here")
    assert refusal_event(corp.twofold, "no_account", corp.idp_id)["subject"] == "new-sub"
    assert [u.external_subject for u in federated_users(corp.twofold, corp.idp_id)] == ["known-sub"]
    assert me(corp.client, corp.sign_in(SignIn(sub="known-sub")))["id"] == known["id"]


def test_an_email_outside_the_allowed_domains_is_refused(corp):
    """allowed_email_domains: a new user's email must be in one of them (and not marked unverified)."""
    corp.change(allowed_email_domains=["corp.example"])
    trip = corp.round_trip(SignIn(sub="outsider", email="mallory@evil.example"))
    refused_page(trip.callback, "not one this organization accepts")
    refusal_event(corp.twofold, "email_domain_not_allowed", corp.idp_id)
    refused_page(corp.round_trip(SignIn(sub="unverified", email_verified=False)).callback, "not one")
    refused_page(corp.round_trip(SignIn(sub="no-email", email=None)).callback, "not one")
    refused_page(corp.round_trip(SignIn(sub="lookalike", email="eve@corp.example.evil.example")).callback, "not one")
    assert federated_users(corp.twofold, corp.idp_id) == []
    accepted = me(corp.client, corp.sign_in(SignIn(sub="insider", email="Ann@CORP.example")))
    assert accepted["email"] == "Ann@CORP.example"


def test_a_disabled_federated_user_is_refused(corp):
    """An administrator disabled the account: the provider's sign-in no longer gives a session here."""
    body = me(corp.client, corp.sign_in(SignIn(sub="leaver")))
    disable = corp.client.patch(
        f"/api/v1/organizations/{corp.org}/users/{body['id']}",
        json={"status": "disabled"},
        headers=bearer(corp.alice.token),
    )
    assert disable.status_code == 200, disable.text
    trip = corp.round_trip(SignIn(sub="leaver"))
    refused_page(trip.callback, "disabled")
    assert refusal_event(corp.twofold, "account_disabled", corp.idp_id)["subject"] == "leaver"


# -- the federated user and the local ways in --------------------------------------------------------------------


def test_a_federated_users_password_login_gets_the_wrong_password_answer(corp):
    """R2/SECURITY.md: an SSO user has no local password; POST /api/v1/login for them answers exactly what a
    wrong password answers (audited as sso_user)."""
    me(corp.client, corp.sign_in(SignIn(sub="corp-bob")))
    carol = create_user(corp.twofold, corp.organization, "carol")
    federated = corp.client.post("/api/v1/login", json={"username": "bob", "password": "anything at all 123"})
    wrong = login(corp.client, carol, "not carol's password at all")
    assert_problem(federated, 401, "invalid_credentials")
    assert federated.json() == wrong.json()
    assert federated.headers["content-type"] == wrong.headers["content-type"]
    reasons = [e.details.get("reason") for e in audit_rows(corp.twofold, "login.failed")]
    assert reasons == ["sso_user", "wrong_password"]


def test_an_sso_session_manages_no_local_factors(corp):
    """API.md: SSO sessions get 403 from writes to /me/methods and /me/recovery-codes; an administrator's MFA
    reset of an SSO account is 422 (its MFA is reset at its identity provider)."""
    token = corp.sign_in(SignIn(sub="corp-bob"))
    user_id = me(corp.client, token)["id"]
    started = corp.client.post("/api/v1/me/methods", json={"type": METHOD_TYPE, "name": "Mine"}, headers=bearer(token))
    assert_problem(started, 403, "forbidden")
    assert_problem(corp.client.post("/api/v1/me/recovery-codes", headers=bearer(token)), 403, "forbidden")
    reset = corp.client.post(
        f"/api/v1/organizations/{corp.org}/users/{user_id}/mfa/reset", headers=bearer(corp.alice.token)
    )
    body = assert_problem(reset, 422, "validation_error")
    assert "identity provider" in body["detail"]


def test_a_federated_user_is_never_an_exemption_candidate(make_twofold, provider):
    """Only local accounts can be on the local provider's exempt list (R4): before the cut-off a local human is a
    candidate, the federated human is not, and exempting them is 422 not_exemptable."""
    twofold = make_twofold(user_exemption_cutoff=date(2999, 1, 1))
    with TestClient(create_app(twofold, housekeeping=False), base_url=PUBLIC_URL) as client:
        corp = corp_of(twofold, client, provider)
        carol = create_user(twofold, corp.organization, "carol")
        federated = me(client, corp.sign_in(SignIn(sub="corp-bob")))
        exempt_url = idp_url(corp.org, "local") + "/exempt-accounts"
        candidates = client.get(exempt_url + "/candidates", headers=bearer(corp.alice.token))
        assert candidates.status_code == 200, candidates.text
        ids = [c["user_id"] for c in candidates.json()]
        assert carol.user.id in ids
        assert federated["id"] not in ids
        refused = client.put(f"{exempt_url}/{federated['id']}", headers=bearer(corp.alice.token))
        body = assert_problem(refused, 422, "not_exemptable")
        assert "single sign-on" in body["detail"]
        assert client.get(exempt_url, headers=bearer(corp.alice.token)).json() == []


# -- /login/sso ----------------------------------------------------------------------------------------------------


def test_the_sso_page_asks_for_the_organization_or_a_work_email(corp):
    page = corp.client.get("/login/sso")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<label for="organization">Organization</label>' in page.text
    assert '<label for="email">Work email</label>' in page.text
    assert CSRF_INPUT.search(page.text)


def test_the_organization_name_in_any_case_leads_to_its_provider(corp):
    browser = Browser(corp.client)
    token = browser.csrf("/login/sso")
    found = browser.post("/login/sso", {"csrf_token": token, "organization": "  aCME "})
    assert continues_to(found) == f"/login/sso/{corp.idp_id}"


def test_a_work_email_leads_to_the_provider_that_accepts_its_domain(corp):
    corp.change(allowed_email_domains=["corp.example"])
    browser = Browser(corp.client)
    token = browser.csrf("/login/sso")
    found = browser.post("/login/sso", {"csrf_token": token, "email": "ann@Corp.Example"})
    assert continues_to(found) == f"/login/sso/{corp.idp_id}"
    # The domain must be the whole domain, not a suffix or a look-alike.
    for email in ("ann@sub.corp.example", "ann@corp.example.evil.example", "ann@xcorp.example", "corp.example"):
        missed = browser.post("/login/sso", {"csrf_token": token, "email": email})
        assert missed.status_code == 404, (email, missed.text)


def test_no_matching_provider_is_a_404_page_in_words(corp):
    browser = Browser(corp.client)
    token = browser.csrf("/login/sso")
    for form in ({"organization": "Globex"}, {"email": "ann@nowhere.example"}):
        page = browser.post("/login/sso", {"csrf_token": token, **form})
        assert page.status_code == 404, page.text
        assert "No single sign-on provider was found" in html.unescape(page.text)
    empty = browser.post("/login/sso", {"csrf_token": token, "organization": " ", "email": ""})
    assert empty.status_code == 422
    assert "Enter your organization or your work email address." in html.unescape(empty.text)
    # An organization without an external provider is no match either.
    create_organization(corp.twofold, "Initech", "ian")
    assert browser.post("/login/sso", {"csrf_token": token, "organization": "Initech"}).status_code == 404


def test_an_organization_with_two_providers_gets_a_choice(corp):
    with OidcProvider() as second:
        other = add_provider(corp.client, corp.org, corp.alice.token, second, name="Partner SSO")
        browser = Browser(corp.client)
        token = browser.csrf("/login/sso")
        page = browser.post("/login/sso", {"csrf_token": token, "organization": "Acme"})
        assert page.status_code == 200, page.text
        assert f'href="/login/sso/{corp.idp_id}"' in page.text and f'href="/login/sso/{other["id"]}"' in page.text
        assert "Corp SSO" in page.text and "Partner SSO" in page.text


def test_the_sso_form_needs_its_csrf_token(corp):
    browser = Browser(corp.client)
    browser.csrf("/login/sso")
    assert browser.post("/login/sso", {"organization": "Acme"}).status_code == 403
    assert browser.post("/login/sso", {"csrf_token": "forged", "organization": "Acme"}).status_code == 403
    token = browser.csrf("/login/sso")
    foreign = browser.post(
        "/login/sso", {"csrf_token": token, "organization": "Acme"}, headers={"Origin": "https://evil.example"}
    )
    assert foreign.status_code == 403
    assert continues_to(browser.post("/login/sso", {"csrf_token": token, "organization": "Acme"}))


def test_the_whole_round_trip_through_the_sso_page(corp):
    """From /login/sso to a session: the organization's name, the provider, back with a session on /."""
    browser = Browser(corp.client)
    token = browser.csrf("/login/sso")
    found = browser.post("/login/sso", {"csrf_token": token, "organization": "Acme"})
    start = browser.get(continues_to(found))
    assert start.status_code == 303 and SSO_COOKIE in browser.cookies
    answer = httpx.get(start.headers["location"], follow_redirects=False)
    back = browser.get(answer.headers["location"])
    assert back.status_code == 303 and back.headers["location"] == "/"
    assert SSO_COOKIE not in browser.cookies and SESSION_COOKIE in browser.cookies
    home = browser.get("/")
    assert home.status_code == 200, home.text
    assert me(corp.client, browser.cookies[SESSION_COOKIE])["identity_provider"]["type"] == "oidc"


def test_twofolds_own_id_tokens_pass_the_upstream_assertion_on(corp):
    """R2: an application signing an SSO user in through Twofold's /oauth2/authorize is told what the upstream
    provider asserted (amr, acr, auth_time), not a local factor; ["pwd", "otp"] passes the policy without "mfa"
    and is still reported as it was, and the application gets the user because the session did MFA upstream."""
    auth_time = int(time.time()) - 60
    token = corp.sign_in(SignIn(sub="00u-7", amr=["pwd", "otp"], acr="urn:corp:loa:2", auth_time=auth_time))
    app = authorization_code.new_app(corp.client, corp.org, corp.alice.token)
    browser = Browser(corp.client)
    browser.cookies[SESSION_COOKIE] = token
    request = authorization_code.request_for(app)
    issued = authorization_code.tokens(
        corp.client, app, request, authorization_code.code_of(browser.get(request.url), request)
    )
    claims = authorization_code.verified_claims(
        corp.client, issued["id_token"], audience=app["client_id"], typ="JWT", nonce=request.params["nonce"]
    )
    assert claims["amr"] == ["pwd", "otp"]
    assert claims["acr"] == "urn:corp:loa:2"
    assert claims["auth_time"] == auth_time


# -- step-up of SSO users: a new sign-in at their own provider ------------------------------------------------


def sso_admin(corp: Corp) -> tuple[str, str]:
    """bob signs in through the provider and alice makes him an Organization Administrator; his session token
    and user id."""
    token = corp.sign_in(SignIn(sub="00u-admin"))
    (user,) = federated_users(corp.twofold, corp.idp_id)
    granted = corp.client.put(
        f"/api/v1/organizations/{corp.org}/users/{user.id}/permissions/organization_administrator",
        headers=bearer(corp.alice.token),
    )
    assert granted.status_code == 204, granted.text
    return token, user.id


def step_up_trip(corp: Corp, token: str, sign_in: SignIn, next_path: str = "/admin/identity-providers") -> Any:
    """The console's "Continue to your identity provider": /login/sso/{id}?step_up=1 with bob's session, the
    provider (which must be asked to sign him in again), then Twofold's callback."""
    browser = Browser(corp.client)
    browser.cookies[SESSION_COOKIE] = token
    start = browser.get(f"/login/sso/{corp.idp_id}?step_up=1&next={next_path}")
    assert start.status_code == 303, start.text
    location = start.headers["location"]
    query = parse_qs(urlsplit(location).query)
    assert query["prompt"] == ["login"] and query["max_age"] == ["0"]  # OIDC Core §3.1.2.1: sign in again
    corp.provider.next_sign_in = sign_in
    answer = httpx.get(location, follow_redirects=False)
    browser.cookies[SSO_COOKIE] = set_cookies(start)[SSO_COOKIE]["value"]
    return browser.get(answer.headers["location"].removeprefix(PUBLIC_URL))


def test_an_sso_administrator_steps_up_by_signing_in_again_at_the_provider(corp):
    token, user_id = sso_admin(corp)
    expire_step_up(corp.twofold, token)
    write = {"name": "Renamed"}
    url = f"/api/v1/organizations/{corp.org}/identity-providers/{corp.idp_id}"
    assert_problem(corp.client.patch(url, json=write, headers=bearer(token)), 403, "step_up_required")

    # The console's step-up page sends an SSO user to their own provider, not to local factors.
    browser = Browser(corp.client)
    browser.cookies[SESSION_COOKIE] = token
    page = browser.get("/admin/identity-providers")
    csrf = html.unescape(page.text.split('name="csrf_token" value="')[1].split('"')[0])
    asked = browser.post(f"/admin/identity-providers/{corp.idp_id}/delete", {"csrf_token": csrf})
    text = html.unescape(asked.text)
    assert "Verify it's you" in text and "Continue to your identity provider" in text
    assert f"/login/sso/{corp.idp_id}?step_up=1&amp;next=%2Fadmin%2Fidentity-providers" in asked.text

    back = step_up_trip(corp, token, SignIn(sub="00u-admin"))
    assert back.status_code == 303 and back.headers["location"] == "/admin/identity-providers"
    assert SESSION_COOKIE not in set_cookies(back)  # the same session, renewed; no new one
    assert corp.client.patch(url, json=write, headers=bearer(token)).status_code == 200
    event = last_event(corp.twofold, "step_up.succeeded")
    assert event.subject_id == user_id and event.details["method"] == "sso"


def test_a_step_up_needs_a_new_sign_in_by_the_same_person_with_mfa(corp):
    token, _ = sso_admin(corp)
    expire_step_up(corp.twofold, token)
    url = f"/api/v1/organizations/{corp.org}/identity-providers/{corp.idp_id}"

    stale = step_up_trip(corp, token, SignIn(sub="00u-admin", auth_time=int(time.time()) - 3600))
    refused_page(stale, "did not ask you to sign in again")
    other = step_up_trip(corp, token, SignIn(sub="someone-else"))
    refused_page(other, "not yours")
    weak = step_up_trip(corp, token, SignIn(sub="00u-admin", amr=["pwd"]))
    assert weak.status_code == 403
    assert_problem(corp.client.patch(url, json={"name": "x"}, headers=bearer(token)), 403, "step_up_required")
    assert {refusal_event(corp.twofold, "another_user", corp.idp_id)["reason"]} == {"another_user"}


def test_a_step_up_link_without_a_session_signs_in_first_and_an_open_redirect_is_not_followed(corp):
    assert (
        corp.client.get(f"/login/sso/{corp.idp_id}?step_up=1", follow_redirects=False).headers["location"] == "/login"
    )
    token, _ = sso_admin(corp)
    back = step_up_trip(corp, token, SignIn(sub="00u-admin"), next_path="//evil.example/")
    assert back.status_code == 303 and back.headers["location"] == "/"
