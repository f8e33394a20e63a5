"""Issue 8, "Done when", OpenID Connect end to end: a second Twofold server (its own database, its own port, at
http://127.0.0.1:PORT so that its cookies are not the first server's) is the upstream identity provider of an
organization on the first (`product_server`, at http://localhost:PORT). In real Chromium a user picks "Sign in
with SSO", signs in upstream with password + a TOTP code from `oathtool`, and lands signed in on the first server,
whose session carries the upstream `amr` verbatim; an upstream exempt (password-only) service account never gets
through: the upstream refuses to hand it to an application (issue 7), and the first server says so in words.

The MFA policy's own refusal of a pwd-only ID token is covered against a provider that issues one, in
tests/test_sso_oidc.py: an upstream Twofold never issues such a token."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from twofold.config import Settings
from twofold.container import Twofold, build
from twofold.methods.registry import default_registry
from twofold.storage import tables
from twofold.storage.migrate import upgrade

from ..conftest import SECRET_KEY
from ..support.flows import bearer, create_organization, create_user, exempt
from ..support.servers import free_port, running_server
from ..support.totp import TotpAccount, enroll_totp
from .test_login_browser import sign_in_with_password
from .test_totp_browser import submit_code

pytestmark = pytest.mark.e2e


@dataclass
class Upstream:
    """The upstream Twofold: its base URL, its container (for set-up), its organization and administrator."""

    base_url: str
    twofold: Twofold
    organization: Any
    admin: TotpAccount
    app: dict[str, Any]


@pytest.fixture(scope="module")
def upstream_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """`twofold serve` on its own SQLite database at http://127.0.0.1:PORT; yields (base URL, database URL)."""
    database_url = f"sqlite:///{tmp_path_factory.mktemp('upstream') / 'upstream.db'}"
    upgrade(database_url)
    env = {"TWOFOLD_DATABASE_URL": database_url, "TWOFOLD_SECRET_KEY": SECRET_KEY + "-upstream", "TWOFOLD_ENV": "prod"}
    with running_server(env, host="127.0.0.1", port=free_port()) as base_url:
        yield base_url, database_url


@pytest.fixture
def upstream(upstream_server: tuple[str, str]) -> Iterator[Upstream]:
    """A fresh organization upstream whose administrator registered the first server as an application."""
    base_url, database_url = upstream_server
    twofold = build(
        Settings(
            _env_file=None,  # type: ignore[call-arg]
            env="prod",
            database_url=database_url,
            secret_key=SECRET_KEY + "-upstream",
            public_url=base_url,
        ),
        registry=default_registry(),
    )
    try:
        with twofold.uow.engine.begin() as connection:  # each test starts upstream from empty tables too
            for table in reversed(tables.metadata.sorted_tables):
                if table.name != "signing_keys":
                    connection.execute(table.delete())
        organization, admin = create_organization(twofold, name="Upstream Corp", admin="olga")
        with httpx.Client(base_url=base_url) as api:
            enrolled = enroll_totp(api, admin)
            response = api.post(
                f"/api/v1/organizations/{organization.id}/connected-apps",
                json={
                    "name": "Acme on Twofold",
                    "grant_type": "authorization_code",
                    "scopes": ["openid", "profile", "email"],
                    "redirect_uris": ["http://localhost/placeholder"],
                    "first_party": True,
                },
                headers=bearer(enrolled.token),
            )
            assert response.status_code == 201, response.text
        yield Upstream(base_url, twofold, organization, enrolled, response.json())
    finally:
        twofold.close()


def connect(product_server: str, product_twofold: Twofold, upstream: Upstream) -> tuple[Any, dict[str, Any]]:
    """The first server's administrator adds the upstream as the OpenID Connect provider of "Acme"; the upstream
    administrator then registers the redirect URI the first server gave."""
    organization, alice = create_organization(product_twofold, name="Acme")
    with httpx.Client(base_url=product_server) as api:
        admin = enroll_totp(api, alice)
        created = api.post(
            f"/api/v1/organizations/{organization.id}/identity-providers",
            json={
                "type": "oidc",
                "name": "Upstream Corp",
                "issuer": upstream.base_url,
                "client_id": upstream.app["client_id"],
                "client_secret": upstream.app["client_secret"],
            },
            headers=bearer(admin.token),
        )
        assert created.status_code == 201, created.text
    provider = created.json()
    assert provider["redirect_uri"] == f"{product_server}/sso/oidc/{provider['id']}/callback"
    assert provider["require_mfa"] is True
    with httpx.Client(base_url=upstream.base_url) as api:
        patched = api.patch(
            f"/api/v1/organizations/{upstream.organization.id}/connected-apps/{upstream.app['id']}",
            json={"redirect_uris": [provider["redirect_uri"]]},
            headers=bearer(upstream.admin.token),
        )
        assert patched.status_code == 200, patched.text
    return organization, provider


def start_sso(page: Any, product_server: str) -> None:
    page.goto(f"{product_server}/login")
    page.get_by_role("link", name="Sign in with SSO").click()
    page.get_by_label("Organization").fill("acme")
    page.get_by_role("button", name="Continue").click()


def test_a_user_signs_in_upstream_with_totp_and_lands_signed_in_with_amr_passed_through(
    browser, product_server, browser_context, product_twofold, upstream
):
    _, provider = connect(product_server, product_twofold, upstream)
    bob = create_user(upstream.twofold, upstream.organization, "bob")
    with httpx.Client(base_url=upstream.base_url) as api:
        enrolled = enroll_totp(api, bob)  # bob has an authenticator app upstream
    page = browser_context.new_page()

    start_sso(page, product_server)
    expect(page).to_have_url(f"{upstream.base_url}/login")  # the upstream's own sign-in page
    sign_in_with_password(page, "bob", bob.password)
    expect(page).to_have_url(f"{upstream.base_url}/login/verify")
    submit_code(page, enrolled.next_code())
    expect(page).to_have_url(f"{product_server}/")
    expect(page.get_by_role("heading", name="Welcome, bob")).to_be_visible()

    me = page.request.get(f"{product_server}/api/v1/me")
    assert me.status == 200, me.text()
    body = me.json()
    assert body["username"] == "bob"
    assert body["identity_provider"]["type"] == "oidc"
    assert body["identity_provider"]["id"] == provider["id"]
    assert body["identity_provider"]["issuer"] == upstream.base_url
    assert body["identity_provider"]["external_subject"] == bob.user.id  # the upstream's subject
    assert body["session"]["amr"] == ["pwd", "otp", "mfa"]  # what the upstream asserted, verbatim
    assert body["session"]["acr"] == "urn:twofold:acr:mfa"

    # The federated user has no local password: the same sign-in with the upstream password fails like a wrong one.
    with httpx.Client(base_url=product_server) as api:
        local = api.post("/api/v1/login", json={"username": "bob", "password": bob.password})
        wrong = api.post("/api/v1/login", json={"username": "nobody-at-all", "password": bob.password})
    assert local.status_code == wrong.status_code == 401
    assert local.json() == wrong.json()


def test_an_upstream_exempt_account_is_refused_in_words(
    browser, product_server, browser_context, product_twofold, upstream
):
    connect(product_server, product_twofold, upstream)
    robot = create_user(upstream.twofold, upstream.organization, "robot", kind="service", service_type="rpa")
    exempt(upstream.twofold, robot)  # password-only upstream
    page = browser_context.new_page()

    start_sso(page, product_server)
    sign_in_with_password(page, "robot", robot.password)
    expect(page.get_by_role("heading", name="Single sign-on did not complete")).to_be_visible()
    expect(page.get_by_text("Upstream Corp did not sign you in (access_denied).")).to_be_visible()
    assert page.url.startswith(f"{product_server}/sso/oidc/")
    me = page.request.get(f"{product_server}/api/v1/me")
    assert me.status == 401
    with product_twofold.uow.engine.connect() as connection:
        refused = connection.execute(
            tables.audit_events.select().where(tables.audit_events.c.type == "sso.refused")
        ).all()
    assert [row.details["reason"] for row in refused] == ["upstream_error"]
    assert refused[0].details["upstream_error"] == "access_denied"


def test_private_key_jwt_to_the_upstream(browser, product_server, browser_context, product_twofold, upstream):
    """The first server authenticates to the upstream's token endpoint with a key of its own (RFC 7523): the
    answer's `jwks` is registered upstream, and no secret exists on either side."""
    organization, alice = create_organization(product_twofold, name="Acme")
    with httpx.Client(base_url=product_server) as api:
        admin = enroll_totp(api, alice)
        created = api.post(
            f"/api/v1/organizations/{organization.id}/identity-providers",
            json={
                "type": "oidc",
                "name": "Upstream Corp",
                "issuer": upstream.base_url,
                "client_id": "not-registered-yet",
                "token_endpoint_auth_method": "private_key_jwt",
            },
            headers=bearer(admin.token),
        )
        assert created.status_code == 201, created.text
        provider = created.json()
        assert provider["token_endpoint_auth_method"] == "private_key_jwt"
        assert [set(key) & {"d", "p", "q"} for key in provider["jwks"]["keys"]] == [set()]
        with httpx.Client(base_url=upstream.base_url) as upstream_api:
            registered = upstream_api.post(
                f"/api/v1/organizations/{upstream.organization.id}/connected-apps",
                json={
                    "name": "Acme (private_key_jwt)",
                    "grant_type": "authorization_code",
                    "scopes": ["openid", "profile", "email"],
                    "redirect_uris": [provider["redirect_uri"]],
                    "first_party": True,
                    "token_endpoint_auth_method": "private_key_jwt",
                    "jwks": provider["jwks"],
                },
                headers=bearer(upstream.admin.token),
            )
            assert registered.status_code == 201, registered.text
            assert registered.json()["client_secret"] is None
        patched = api.patch(
            f"/api/v1/organizations/{organization.id}/identity-providers/{provider['id']}",
            json={"client_id": registered.json()["client_id"]},
            headers=bearer(admin.token),
        )
        assert patched.status_code == 200, patched.text

    carol = create_user(upstream.twofold, upstream.organization, "carol")
    with httpx.Client(base_url=upstream.base_url) as api:
        enrolled = enroll_totp(api, carol)
    page = browser_context.new_page()
    page.goto(f"{product_server}/login/sso/{provider['id']}")
    sign_in_with_password(page, "carol", carol.password)
    submit_code(page, enrolled.next_code())
    expect(page).to_have_url(f"{product_server}/")
    me = page.request.get(f"{product_server}/api/v1/me").json()
    assert me["identity_provider"]["external_subject"] == carol.user.id
    assert me["session"]["amr"] == ["pwd", "otp", "mfa"]
