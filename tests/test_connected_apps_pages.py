"""The "Connected Apps" console page: create each kind (the secret shown once), disable and enable, a new
secret, delete after "Confirm delete", refusals shown on the page, a stale step-up asked for first, and the
link to it from Exempt Accounts. Non-administrators get the 403 page."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select

from twofold.storage import tables

from .support.flows import create_organization, create_user, enroll
from .test_admin_api import expire_step_up
from .test_console_pages import admin_browser, alerts
from .test_profile_pages import browser_for, csrf_of, is_verify_page

PAGE = "/admin/connected-apps"


def stored_apps(twofold: Any) -> list[Any]:
    with twofold.uow.engine.connect() as connection:
        return list(connection.execute(select(tables.connected_apps)).all())


def create(browser: Any, token: str, **fields: str) -> Any:
    return browser.post(PAGE, {"csrf_token": token, **fields})


def test_create_both_kinds_and_manage_them(twofold, client):
    _, _, browser = admin_browser(twofold, client)
    page = browser.get(PAGE)
    assert page.status_code == 200 and "<h1>Connected Apps</h1>" in page.text
    assert "No connected app yet." in page.text

    made = create(
        browser,
        csrf_of(page),
        name="CI robot",
        grant_type="client_credentials",
        **{"scope:users:read": "1", "scope:mfa:reset": "1"},
    )
    assert made.status_code == 200, made.text
    secret = re.search(r"<code data-client-secret>(tfcs_[A-Za-z0-9_-]{43})</code>", made.text)
    assert secret, made.text
    assert "shown only this once" in made.text
    (robot,) = stored_apps(twofold)
    assert (robot.name, robot.grant_type, sorted(robot.scopes)) == (
        "CI robot",
        "client_credentials",
        ["mfa:reset", "users:read"],
    )
    again = browser.get(PAGE)
    assert secret.group(1) not in again.text and robot.client_id in again.text

    portal = create(
        browser,
        csrf_of(again),
        name="Portal",
        grant_type="authorization_code",
        redirect_uris="https://portal.example.com/callback\nhttp://127.0.0.1:8765/cb\n",
        first_party="1",
        **{"user_scope:openid": "1", "user_scope:email": "1", "scope:users:read": "1"},
    )
    assert portal.status_code == 200, portal.text
    stored = {row.name: row for row in stored_apps(twofold)}
    assert sorted(stored["Portal"].scopes) == ["email", "openid"]  # the other kind's boxes are ignored
    assert stored["Portal"].redirect_uris == ["https://portal.example.com/callback", "http://127.0.0.1:8765/cb"]
    assert stored["Portal"].first_party is True

    token = csrf_of(browser.get(PAGE))
    assert browser.post(f"{PAGE}/{robot.id}/disable", {"csrf_token": token}).status_code == 303
    assert {row.name: row.enabled for row in stored_apps(twofold)}["CI robot"] is False
    assert browser.post(f"{PAGE}/{robot.id}/enable", {"csrf_token": token}).status_code == 303
    rotated = browser.post(f"{PAGE}/{robot.id}/secret", {"csrf_token": token})
    new_secret = re.search(r"<code data-client-secret>(tfcs_[A-Za-z0-9_-]{43})</code>", rotated.text)
    assert new_secret and new_secret.group(1) != secret.group(1)
    assert browser.post(f"{PAGE}/{robot.id}/delete", {"csrf_token": token}).status_code == 303
    assert [row.name for row in stored_apps(twofold)] == ["Portal"]
    assert browser.post(f"{PAGE}/{robot.id}/explode", {"csrf_token": token}).status_code == 404


def test_refusals_are_shown_and_nothing_is_created(twofold, client):
    _, _, browser = admin_browser(twofold, client)
    token = csrf_of(browser.get(PAGE))
    for fields, words in (
        ({"name": "No scopes", "grant_type": "client_credentials"}, "scopes"),
        (
            {
                "name": "Plain http",
                "grant_type": "authorization_code",
                "user_scope:openid": "1",
                "redirect_uris": "http://evil.example/cb",
            },
            "https",
        ),
        ({"name": "No URI", "grant_type": "authorization_code", "user_scope:openid": "1"}, "redirect URI"),
        ({"name": "", "grant_type": "client_credentials", "scope:users:read": "1"}, "name"),
        ({"name": "Odd kind", "grant_type": "password", "scope:users:read": "1"}, "grant_type"),
    ):
        refused = create(browser, token, **fields)
        assert refused.status_code == 422, (fields, refused.text)
        assert any(words in alert for alert in alerts(refused)), (fields, alerts(refused))
    assert stored_apps(twofold) == []


def test_a_stale_step_up_is_asked_for_first(twofold, client):
    _, alice, browser = admin_browser(twofold, client)
    token = csrf_of(browser.get(PAGE))
    expire_step_up(twofold, str(alice.token))
    asked = create(browser, token, name="Later", grant_type="client_credentials", **{"scope:audit:read": "1"})
    assert asked.status_code == 200 and is_verify_page(asked)
    assert stored_apps(twofold) == []


def test_only_administrators_and_the_exempt_accounts_link(twofold, client):
    organization, alice = create_organization(twofold)
    bob = enroll(client, create_user(twofold, organization, "bob"))
    assert browser_for(client, bob).get(PAGE).status_code == 403
    enroll(client, alice)
    local = browser_for(client, alice).get("/admin/identity-providers/local")
    assert 'href="/admin/connected-apps"' in local.text
    assert 'href="/admin/connected-apps"' in browser_for(client, alice).get("/admin").text  # in the console's menu
