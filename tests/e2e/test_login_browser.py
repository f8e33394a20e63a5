"""A real uvicorn server and real Chromium sign in (issue 2, "Done when"; API.md "Web pages"; SECURITY.md
"Sessions, cookies, CSRF"). Elements are found by their accessible names, as the contract names them."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from twofold.storage.tables import login_transactions, sessions

from ..support.flows import bearer, create_organization, enroll

pytestmark = pytest.mark.e2e

SESSION_COOKIE = "__Host-twofold_session"
LOGIN_COOKIE = "__Host-twofold_login"
CSRF_COOKIE = "__Host-twofold_csrf"

FETCH_STATUS = "async (path) => (await fetch(path, {credentials: 'same-origin'})).status"


def cookies_of(context: Any) -> dict[str, dict[str, Any]]:
    return {cookie["name"]: cookie for cookie in context.cookies()}


def assert_host_cookie(cookie: dict[str, Any]) -> None:
    assert cookie["secure"] is True, cookie
    assert cookie["httpOnly"] is True, cookie
    assert cookie["sameSite"] == "Lax", cookie
    assert cookie["path"] == "/", cookie
    assert cookie["domain"] == "localhost", cookie  # host-only: no Domain attribute was sent


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def sign_in_with_password(page: Any, username: str, password: str) -> None:
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()


def test_password_step_in_chromium_leads_to_the_next_step_page(browser, product_server, browser_context, twofold):
    _, admin = create_organization(twofold)
    page = browser_context.new_page()
    page.goto(f"{product_server}/login")
    expect(page.get_by_role("link", name="Sign in with SSO")).to_be_visible()
    assert_host_cookie(cookies_of(browser_context)[CSRF_COOKIE])

    sign_in_with_password(page, admin.user.username, "not the password")
    expect(page.get_by_role("alert")).to_have_text("Invalid username or password.")
    assert LOGIN_COOKIE not in cookies_of(browser_context)

    sign_in_with_password(page, admin.user.username, admin.password)
    expect(page.get_by_role("heading", name="Manage Your Verification Methods")).to_be_visible()
    expect(page).to_have_url(f"{product_server}/login/enroll")
    # The shipped registry offers the authenticator app; nothing is enrolled until its code is proven.
    expect(page.get_by_role("button", name="Add Authenticator app")).to_be_visible()
    expect(page.get_by_role("alert")).to_have_count(0)

    cookies = cookies_of(browser_context)
    login_cookie = cookies[LOGIN_COOKIE]
    assert_host_cookie(login_cookie)
    assert SESSION_COOKIE not in cookies
    assert "twofold" not in page.evaluate("document.cookie")  # HttpOnly: invisible to scripts

    # Server side, the cookie is the token of an open enrollment_required transaction, and there is no session.
    with twofold.uow(read_only=True) as uow:
        transaction = uow.session.execute(
            select(login_transactions).where(login_transactions.c.token_hash == sha256(login_cookie["value"]))
        ).one()
        session_rows = uow.session.execute(select(sessions)).all()
    assert transaction.state == "enrollment_required"
    assert transaction.ended_at is None
    assert transaction.ip == "127.0.0.1"
    assert session_rows == []
    # From the page itself (cookies and all), the API sees no session yet.
    assert page.evaluate(FETCH_STATUS, "/api/v1/me") == 401
    page.goto(f"{product_server}/")
    expect(page).to_have_url(f"{product_server}/login")


def test_second_factor_in_chromium_reaches_the_home_page(browser, test_method_server, browser_context, twofold):
    _, admin = create_organization(twofold)
    with httpx.Client(base_url=test_method_server, timeout=30) as http:
        enroll(http, admin)  # the forced enrollment, through the API of the same server
        assert http.get("/api/v1/me", headers=bearer(admin.token)).status_code == 200

    page = browser_context.new_page()
    page.goto(f"{test_method_server}/login")
    sign_in_with_password(page, admin.user.username, admin.password)
    expect(page).to_have_url(f"{test_method_server}/login/verify")
    expect(page.get_by_role("link", name="Try another method")).to_be_visible()
    login_cookie = cookies_of(browser_context)[LOGIN_COOKIE]
    assert_host_cookie(login_cookie)

    page.get_by_label("Verification code").fill("wrong code")
    page.get_by_role("button", name="Verify", exact=True).click()
    expect(page.get_by_role("alert")).to_have_text("That code did not work. 4 attempts left.")

    page.get_by_label("Verification code").fill(str(admin.code))
    page.get_by_role("button", name="Verify", exact=True).click()
    expect(page).to_have_url(f"{test_method_server}/")
    expect(page.get_by_role("link", name="Configure multi-factor authentication (MFA)")).to_be_visible()
    expect(page.get_by_role("heading", name=re.compile(f"Welcome, {admin.user.username}"))).to_be_visible()

    cookies = cookies_of(browser_context)
    session_cookie = cookies[SESSION_COOKIE]
    assert_host_cookie(session_cookie)
    assert session_cookie["value"] != login_cookie["value"]
    assert LOGIN_COOKIE not in cookies
    assert page.evaluate(FETCH_STATUS, "/api/v1/me") == 200

    # A cookie-authenticated change from the page: Chromium sends Origin; the X-CSRF-Token comes from the page.
    statuses = page.evaluate(
        """async () => {
            const bare = await fetch('/api/v1/me/sessions/revoke', {method: 'POST'});
            const token = document.querySelector('meta[name="twofold-csrf"]').content;
            const headers = {'X-CSRF-Token': token};
            const withToken = await fetch('/api/v1/me/sessions/revoke', {method: 'POST', headers});
            return [bare.status, withToken.status];
        }"""
    )
    assert statuses == [403, 204]
    with httpx.Client(base_url=test_method_server, timeout=30) as http:
        assert http.get("/api/v1/me", headers=bearer(admin.token)).status_code == 401  # signed out elsewhere

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{test_method_server}/login?signed_out=1")
    expect(page.get_by_role("status")).to_have_text("You are signed out.")
    assert SESSION_COOKIE not in cookies_of(browser_context)
    with twofold.uow(read_only=True) as uow:
        row = uow.session.execute(
            select(sessions).where(sessions.c.token_hash == sha256(session_cookie["value"]))
        ).one()
    assert row.revoked_at is not None
