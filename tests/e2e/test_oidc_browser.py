"""Issue 7, "Done when", end to end: an independent relying party (authlib's OAuth 2.0 client over httpx, and
joserfc for the ID token) signs a user in with OpenID Connect through real Chromium against a real `twofold serve`.

The relying party makes the authorization URL (PKCE S256, state, nonce); the browser signs in on Twofold's pages
(password, the forced enrollment of an authenticator app, later password + a TOTP code from Debian's `oathtool`) and
lands on the app's loopback redirect URI (RFC 8252), a small HTTP server of the test; the relying party exchanges
the code with its verifier, checks the ID token against the published keys (iss, aud, nonce, amr), calls userinfo,
and refreshes: the refresh token rotates, and replaying the old one kills the whole family. An app that is not
first-party asks for consent: "Allow" gives a code, "Deny" sends access_denied to the app."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import OAuth2Client, OAuthError
from joserfc import jwt
from joserfc.jwk import KeySet
from playwright.sync_api import expect

from ..support.flows import Account, bearer, create_organization, create_user
from ..support.servers import free_port
from ..support.totp import TotpAccount, code_at_step, current_step, enroll_totp
from .test_login_browser import sign_in_with_password
from .test_totp_browser import submit_code

pytestmark = pytest.mark.e2e

ALL_SCOPES = "openid profile email offline_access"


# -- the relying party -----------------------------------------------------------------------------------------


@dataclass
class Callback:
    """The app's loopback redirect URI: a real HTTP server that records what the browser brought back."""

    uri: str
    received: list[str] = field(default_factory=list)


@pytest.fixture
def callback() -> Iterator[Callback]:
    port = free_port()
    landed = Callback(f"http://127.0.0.1:{port}/cb")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if not self.path.startswith("/cb?"):
                self.send_error(404)  # the browser's /favicon.ico
                return
            landed.received.append(self.path)
            body = b"<!doctype html><title>Example app</title><h1>Back at the app</h1>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield landed
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class RelyingParty:
    """An OpenID Connect client as an application would write it, knowing Twofold only by its discovery document."""

    client: OAuth2Client
    metadata: dict[str, Any]
    issuer: str

    def authorization_url(self) -> tuple[str, str, str, str]:
        """The URL to send the browser to, with the state, nonce and PKCE verifier the app keeps."""
        verifier, nonce = generate_token(48), generate_token(20)
        url, state = self.client.create_authorization_url(
            self.metadata["authorization_endpoint"], code_verifier=verifier, nonce=nonce
        )
        return url, state, nonce, verifier

    def redeem(self, landed_url: str, *, state: str, verifier: str) -> dict[str, Any]:
        query = parse_qs(urlsplit(landed_url).query)
        assert query["iss"] == [self.issuer], landed_url  # RFC 9207: the answer came from this issuer
        token = self.client.fetch_token(
            self.metadata["token_endpoint"], authorization_response=landed_url, state=state, code_verifier=verifier
        )
        return dict(token)

    def id_token_claims(self, id_token: str, *, nonce: str) -> dict[str, Any]:
        """OpenID Connect Core §3.1.3.7: signature by a published key, iss exact, aud = our client id, nonce."""
        keys = KeySet.import_key_set(httpx.get(self.metadata["jwks_uri"]).json())
        decoded = jwt.decode(id_token, keys, algorithms=self.metadata["id_token_signing_alg_values_supported"])
        jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": self.client.client_id},
            nonce={"essential": True, "value": nonce},
            sub={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
            auth_time={"essential": True},
        ).validate(decoded.claims)
        return dict(decoded.claims)

    def refresh(self, refresh_token: str) -> dict[str, Any]:
        return dict(self.client.refresh_token(self.metadata["token_endpoint"], refresh_token=refresh_token))

    def userinfo(self, access_token: str) -> httpx.Response:
        return httpx.get(self.metadata["userinfo_endpoint"], headers=bearer(access_token))


def register_app(base_url: str, alice: Account, organization_id: str, redirect_uri: str, *, first_party: bool) -> Any:
    """The administrator creates the app through the admin API of the running server."""
    with httpx.Client(base_url=base_url) as api:
        enroll_totp(api, alice)
        response = api.post(
            f"/api/v1/organizations/{organization_id}/connected-apps",
            json={
                "name": "Example app",
                "grant_type": "authorization_code",
                "scopes": ALL_SCOPES.split(),
                "redirect_uris": [redirect_uri],
                "first_party": first_party,
            },
            headers=bearer(alice.token),
        )
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture
def relying_party(product_server: str, product_twofold: Any, callback: Callback) -> Iterator[tuple[RelyingParty, Any]]:
    """Twofold with an organization whose administrator registered the example app (first-party)."""
    organization, alice = create_organization(product_twofold)
    app = register_app(product_server, alice, organization.id, callback.uri, first_party=True)
    yield from _relying_party(product_server, app, callback, organization)


def _relying_party(
    base_url: str, app: dict[str, Any], callback: Callback, organization: Any
) -> Iterator[tuple[RelyingParty, Any]]:
    metadata = httpx.get(f"{base_url}/.well-known/openid-configuration").json()
    client = OAuth2Client(
        client_id=app["client_id"],
        client_secret=app["client_secret"],
        token_endpoint_auth_method="client_secret_basic",
        scope=ALL_SCOPES,
        redirect_uri=callback.uri,
        code_challenge_method="S256",
    )
    try:
        yield RelyingParty(client, metadata, metadata["issuer"]), organization
    finally:
        client.close()


# -- the browser -----------------------------------------------------------------------------------------------


def enroll_at_forced_enrollment(page: Any, account: Account) -> TotpAccount:
    """On the login's "Manage Your Verification Methods": an authenticator app, from its secret on the page."""
    expect(page.get_by_role("heading", name="Manage Your Verification Methods")).to_be_visible()
    page.get_by_role("button", name="Add Authenticator app").click()
    secret = page.locator("code.secret").get_attribute("data-secret")
    assert secret and re.fullmatch(r"[A-Z2-7]{32}", secret), secret
    enrolled = TotpAccount(account, secret, last_step=current_step())
    submit_code(page, code_at_step(secret, enrolled.last_step))
    expect(page.get_by_role("heading", name="Your recovery codes")).to_be_visible()
    page.get_by_role("link", name="I have saved these codes").click()
    return enrolled


def lands_at_app(page: Any, callback: Callback) -> str:
    """The browser ends at the app's redirect URI; the URL it landed on (what a real app would parse)."""
    page.wait_for_url(re.compile(rf"^{re.escape(callback.uri)}\?"))
    expect(page.get_by_role("heading", name="Back at the app")).to_be_visible()
    assert callback.received and page.url.endswith(callback.received[-1])
    return str(page.url)


# -- the tests -------------------------------------------------------------------------------------------------


def test_an_app_signs_a_user_in_with_openid_connect_and_refreshes(
    browser, product_server, browser_context, product_twofold, relying_party, callback
):
    rp, organization = relying_party
    bob = create_user(product_twofold, organization, "bob")
    page = browser_context.new_page()

    # First visit: the app sends bob to Twofold; he signs in and enrolls an authenticator app (R3), then lands.
    url, state, nonce, verifier = rp.authorization_url()
    assert "code_challenge_method=S256" in url
    page.goto(url)
    expect(page).to_have_url(f"{product_server}/login")
    sign_in_with_password(page, "bob", bob.password)
    expect(page).to_have_url(f"{product_server}/login/enroll")
    enrolled = enroll_at_forced_enrollment(page, bob)
    landed = lands_at_app(page, callback)
    token = rp.redeem(landed, state=state, verifier=verifier)
    claims = rp.id_token_claims(token["id_token"], nonce=nonce)
    assert claims["sub"] == bob.user.id
    assert {"otp", "mfa"} <= set(claims["amr"]), claims
    info = rp.userinfo(token["access_token"])
    assert info.status_code == 200, info.text
    assert info.json() == {"sub": bob.user.id, "preferred_username": "bob", "email": "bob@example.com"}

    # bob signs out of Twofold; the next visit is a sign-in with password + a TOTP code (the next step's code,
    # since the enrollment's was used).
    page.goto(f"{product_server}/")
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{product_server}/login?signed_out=1")
    url, state, nonce, verifier = rp.authorization_url()
    page.goto(url)
    sign_in_with_password(page, "bob", bob.password)
    expect(page).to_have_url(f"{product_server}/login/verify")
    submit_code(page, enrolled.next_code())
    landed = lands_at_app(page, callback)
    token = rp.redeem(landed, state=state, verifier=verifier)
    claims = rp.id_token_claims(token["id_token"], nonce=nonce)
    assert claims["amr"] == ["pwd", "otp", "mfa"]
    assert claims["acr"] == "urn:twofold:acr:mfa"

    # The refresh token rotates; the spent one presented again is refused and kills the family.
    old = token["refresh_token"]
    refreshed = rp.refresh(old)
    new = refreshed["refresh_token"]
    assert new and new != old
    assert rp.userinfo(refreshed["access_token"]).status_code == 200
    with pytest.raises(OAuthError) as replayed:
        rp.refresh(old)
    assert replayed.value.error == "invalid_grant"
    with pytest.raises(OAuthError) as family_dead:
        rp.refresh(new)
    assert family_dead.value.error == "invalid_grant"


@pytest.fixture
def third_party(product_server: str, product_twofold: Any, callback: Callback) -> Iterator[tuple[RelyingParty, Any]]:
    """The same example app, registered as not first-party: the user is asked."""
    organization, alice = create_organization(product_twofold)
    app = register_app(product_server, alice, organization.id, callback.uri, first_party=False)
    yield from _relying_party(product_server, app, callback, organization)


def test_an_app_that_is_not_first_party_asks_allow_or_deny(
    browser, product_server, browser_context, product_twofold, third_party, callback
):
    rp, organization = third_party
    carol = create_user(product_twofold, organization, "carol")
    page = browser_context.new_page()

    url, state, nonce, verifier = rp.authorization_url()
    page.goto(url)
    sign_in_with_password(page, "carol", carol.password)
    enroll_at_forced_enrollment(page, carol)
    expect(page.get_by_role("heading", name="Allow Example app?")).to_be_visible()
    for words in ("Know who you are", "See your username and name", "See your email address", "Stay signed in"):
        expect(page.get_by_role("listitem").filter(has_text=words)).to_have_count(1)
    assert callback.received == []
    page.get_by_role("button", name="Allow").click()
    token = rp.redeem(lands_at_app(page, callback), state=state, verifier=verifier)
    assert rp.id_token_claims(token["id_token"], nonce=nonce)["sub"] == carol.user.id

    # Another visit of the app: still signed in to Twofold, and her consent is remembered.
    url, state, nonce, verifier = rp.authorization_url()
    page.goto(url)
    token = rp.redeem(lands_at_app(page, callback), state=state, verifier=verifier)
    assert rp.id_token_claims(token["id_token"], nonce=nonce)["sub"] == carol.user.id

    # She removes the app's access from her profile, its refresh token dies with it ...
    page.goto(f"{product_server}/")
    page.get_by_role("link", name="Connected applications").click()
    expect(page.get_by_role("cell", name="Example app", exact=True)).to_be_visible()
    page.get_by_role("button", name="Remove access for Example app").click()
    expect(page.get_by_role("status")).to_have_text("Access removed. Example app will ask for your consent again.")
    refused = httpx.post(
        rp.metadata["token_endpoint"],
        data={"grant_type": "refresh_token", "refresh_token": token["refresh_token"]},
        auth=(rp.client.client_id, rp.client.client_secret),
    )
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"

    # ... so the next visit asks again, and this time she says no.
    url, state, _, _ = rp.authorization_url()
    page.goto(url)
    expect(page.get_by_role("heading", name="Allow Example app?")).to_be_visible()
    page.get_by_role("button", name="Deny").click()
    answer = parse_qs(urlsplit(lands_at_app(page, callback)).query)
    assert answer["error"] == ["access_denied"]
    assert answer["state"] == [state]
    assert answer["iss"] == [rp.issuer]
    assert "code" not in answer
