"""Consent to applications that are not first-party (OpenID Connect Core §3.1.2.4): asked once, remembered
per user and application with the scopes allowed, asked again for more scopes or on `prompt=consent`, and
withdrawn by the user ("Connected applications" on the profile, `DELETE /api/v1/me/consents/{app_id}`), which
ends the application's refresh tokens for that user. Also `prompt=none` and `prompt=login`."""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import urlencode

import pytest

from twofold.storage import tables

from .support.flows import create_organization, create_user, enroll
from .test_connected_apps import apps_url, audit_rows
from .test_oauth_authorization_code import (
    code_of,
    count,
    error_of,
    hidden_fields,
    new_app,
    refresh,
    request_for,
    tokens,
    world,
)
from .test_pages import Browser
from .test_profile_pages import browser_for

APPLICATIONS = "/profile/applications"


def allow(browser: Browser, page: Any) -> Any:
    assert page.status_code == 200 and ">Allow</button>" in page.text, page.text
    return browser.post("/oauth2/authorize", {**hidden_fields(page), "decision": "allow"})


def asks_consent(page: Any) -> bool:
    return page.status_code == 200 and ">Allow</button>" in page.text


def consents(client: Any, token: str) -> list[dict[str, Any]]:
    response = client.get("/api/v1/me/consents", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return list(response.json())


# -- remembered ----------------------------------------------------------------------------------------------


def test_consent_is_asked_once_then_remembered(twofold, client):
    w = world(twofold, client, first_party=False, name="Partner Portal")
    browser = browser_for(client, w.bob)
    first = request_for(w.app, scope="openid email")
    assert tokens(client, w.app, first, code_of(allow(browser, browser.get(first.url)), first))["access_token"]

    again = request_for(w.app, scope="openid email")
    assert tokens(client, w.app, again, code_of(browser.get(again.url), again))["access_token"]
    narrower = request_for(w.app, scope="openid")
    code_of(browser.get(narrower.url), narrower)

    (event,) = audit_rows(twofold, "oauth.consent_granted")
    assert event.details == {"client_id": w.app["client_id"], "scope": "openid email"}
    assert event.actor_id == event.subject_id == w.bob.user.id
    (listed,) = consents(client, w.bob.token)
    assert listed["app_id"] == w.app["id"] and listed["client_id"] == w.app["client_id"]
    assert listed["name"] == "Partner Portal" and listed["scopes"] == ["openid", "email"]
    assert listed["granted_at"]


def test_more_scopes_ask_again_and_then_all_are_remembered(twofold, client):
    w = world(twofold, client, first_party=False)
    browser = browser_for(client, w.bob)
    first = request_for(w.app, scope="openid")
    code_of(allow(browser, browser.get(first.url)), first)
    wider = request_for(w.app, scope="openid profile offline_access")
    page = browser.get(wider.url)
    assert asks_consent(page)
    assert "See your username and name" in page.text and "Stay signed in" in page.text
    code_of(allow(browser, page), wider)
    assert consents(client, w.bob.token)[0]["scopes"] == ["openid", "profile", "offline_access"]
    both = request_for(w.app, scope="openid profile")
    code_of(browser.get(both.url), both)


def test_prompt_consent_asks_even_when_remembered(twofold, client):
    w = world(twofold, client, first_party=False)
    browser = browser_for(client, w.bob)
    first = request_for(w.app)
    code_of(allow(browser, browser.get(first.url)), first)
    assert asks_consent(browser.get(request_for(w.app, prompt="consent").url))


def test_consent_is_per_user(twofold, client):
    w = world(twofold, client, first_party=False)
    bob = browser_for(client, w.bob)
    first = request_for(w.app)
    code_of(allow(bob, bob.get(first.url)), first)
    carol = browser_for(client, enroll(client, create_user(twofold, w.organization, "carol")))
    assert asks_consent(carol.get(request_for(w.app).url))


def test_first_party_apps_ask_nothing_and_remember_nothing(twofold, client):
    w = world(twofold, client)
    browser = browser_for(client, w.bob)
    request = request_for(w.app)
    code_of(browser.get(request.url), request)
    assert consents(client, w.bob.token) == []
    assert count(twofold, tables.oauth_consents) == 0


def test_deleting_the_app_deletes_the_consents(twofold, client):
    w = world(twofold, client, first_party=False)
    browser = browser_for(client, w.bob)
    request = request_for(w.app)
    code_of(allow(browser, browser.get(request.url)), request)
    deleted = client.delete(f"{apps_url(w.org)}/{w.app['id']}", headers={"Authorization": f"Bearer {w.alice.token}"})
    assert deleted.status_code == 204, deleted.text
    assert consents(client, w.bob.token) == []
    assert count(twofold, tables.oauth_consents) == 0


# -- prompt ---------------------------------------------------------------------------------------------------


def test_prompt_none_never_shows_a_page(twofold, client):
    w = world(twofold, client, first_party=False)
    nobody = Browser(client)
    request = request_for(w.app, prompt="none")
    assert error_of(nobody.get(request.url), request) == "login_required"

    browser = browser_for(client, w.bob)
    request = request_for(w.app, prompt="none")
    assert error_of(browser.get(request.url), request) == "consent_required"
    assert count(twofold, tables.authorization_codes) == 0

    first = request_for(w.app)
    code_of(allow(browser, browser.get(first.url)), first)
    request = request_for(w.app, prompt="none")
    assert tokens(client, w.app, request, code_of(browser.get(request.url), request))["id_token"]


def test_prompt_login_with_a_session_is_login_required_and_without_one_signs_in(twofold, client):
    w = world(twofold, client)
    browser = browser_for(client, w.bob)
    request = request_for(w.app, prompt="login")
    assert error_of(browser.get(request.url), request) == "login_required"
    response = Browser(client).get(request_for(w.app, prompt="login").url)
    assert response.status_code == 303 and response.headers["location"] == "/login"


@pytest.mark.parametrize("prompt", ["none consent", "none login", "bogus", "consent bogus"])
def test_a_malformed_prompt_is_invalid_request(twofold, client, prompt):
    w = world(twofold, client)
    browser = browser_for(client, w.bob)
    request = request_for(w.app, prompt=prompt)
    assert error_of(browser.get(request.url), request) == "invalid_request"


def test_prompt_select_account_and_consent_together_are_accepted(twofold, client):
    w = world(twofold, client, first_party=False)
    browser = browser_for(client, w.bob)
    request = request_for(w.app, prompt="select_account consent")
    code_of(allow(browser, browser.get(request.url)), request)


# -- withdrawn -------------------------------------------------------------------------------------------------


def test_withdrawing_consent_through_the_api_ends_refresh_tokens_and_asks_again(twofold, client):
    w = world(twofold, client, first_party=False)
    browser = browser_for(client, w.bob)
    request = request_for(w.app)
    issued = tokens(client, w.app, request, code_of(allow(browser, browser.get(request.url)), request))

    # Another user's consent to the same app stays.
    carol_account = enroll(client, create_user(twofold, w.organization, "carol"))
    carol = browser_for(client, carol_account)
    carol_request = request_for(w.app)
    carol_tokens = tokens(
        client, w.app, carol_request, code_of(allow(carol, carol.get(carol_request.url)), carol_request)
    )

    withdrawn = client.delete(f"/api/v1/me/consents/{w.app['id']}", headers={"Authorization": f"Bearer {w.bob.token}"})
    assert withdrawn.status_code == 204, withdrawn.text
    assert consents(client, w.bob.token) == []
    assert refresh(client, w.app, issued["refresh_token"]).json()["error"] == "invalid_grant"
    assert asks_consent(browser.get(request_for(w.app).url))
    (event,) = audit_rows(twofold, "oauth.consent_withdrawn")
    assert event.details == {"client_id": w.app["client_id"], "refresh_revoked": 1}

    assert len(consents(client, carol_account.token)) == 1
    assert refresh(client, w.app, carol_tokens["refresh_token"]).status_code == 200


@pytest.mark.parametrize("app_id", ["0" * 32, "x" * 200, "%00"])
def test_withdrawing_a_consent_that_does_not_exist_is_404(twofold, client, app_id):
    w = world(twofold, client, first_party=False)
    response = client.delete(f"/api/v1/me/consents/{app_id}", headers={"Authorization": f"Bearer {w.bob.token}"})
    assert response.status_code == 404, response.text
    assert response.headers["content-type"].startswith("application/problem+json")


def test_consents_need_a_signed_in_user(twofold, client):
    assert client.get("/api/v1/me/consents").status_code == 401
    assert client.delete("/api/v1/me/consents/abc").status_code == 401


def test_the_connected_applications_page_lists_and_removes_access(twofold, client):
    w = world(twofold, client, first_party=False, name="Partner <b>Portal</b>")
    browser = browser_for(client, w.bob)
    empty = browser.get(APPLICATIONS)
    assert empty.status_code == 200
    assert "You have not allowed any application" in empty.text
    assert 'href="/profile/applications">Connected applications</a>' in empty.text

    request = request_for(w.app, scope="openid email offline_access")
    issued = tokens(client, w.app, request, code_of(allow(browser, browser.get(request.url)), request))
    page = browser.get(APPLICATIONS)
    assert "<td>Partner &lt;b&gt;Portal&lt;/b&gt;</td>" in page.text
    assert "<li>See your email address</li>" in page.text and "<li>Stay signed in" in page.text
    fields = hidden_fields(page)
    assert fields["app_id"] == w.app["id"]

    # CSRF: without the token nothing is withdrawn.
    refused = browser.post(APPLICATIONS, {"app_id": w.app["id"]})
    assert refused.status_code == 403
    assert len(consents(client, w.bob.token)) == 1

    removed = browser.post(APPLICATIONS, fields)
    assert removed.status_code == 303
    done = browser.get(removed.headers["location"])
    assert "Access removed. Partner &lt;b&gt;Portal&lt;/b&gt; will ask for your consent again." in done.text
    assert consents(client, w.bob.token) == []
    assert refresh(client, w.app, issued["refresh_token"]).json()["error"] == "invalid_grant"

    again = browser.post(APPLICATIONS, fields)
    assert again.status_code == 404
    assert "That application no longer has access to your account." in html.unescape(again.text)


def test_the_connected_applications_page_needs_a_session(twofold, client):
    response = Browser(client).get(APPLICATIONS)
    assert response.status_code == 303 and response.headers["location"].startswith("/login")


def test_a_crafted_link_cannot_put_words_on_the_page(twofold, client):
    """The notice names the app by its id, looked up in the user's own organization."""
    w = world(twofold, client)
    browser = browser_for(client, w.bob)
    for removed in ("Your account is locked, call 555-0100", "<script>x</script>", "0" * 32):
        page = browser.get(f"{APPLICATIONS}?{urlencode({'removed': removed})}")
        assert page.status_code == 200
        assert "Access removed" not in page.text and "555-0100" not in page.text and "<script>x" not in page.text
    organization, admin = create_organization(twofold, name="Other", admin="olga")
    enroll(client, admin)
    other_app = new_app(client, organization.id, admin.token, name="Elsewhere")  # another organization's app
    page = browser.get(f"{APPLICATIONS}?{urlencode({'removed': other_app['id']})}")
    assert "Elsewhere" not in page.text
