"""Issue 3, "Done when", end to end: real Chromium against a real `twofold serve` with the product's methods.
A new user signs in, is forced to enroll an authenticator app (the test reads the secret from the page and
computes codes with Debian's `oathtool`), receives recovery codes, signs out, signs in again with a fresh code;
a replayed code is refused; a recovery code signs in. Elements are found by their accessible names."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

import pytest
from playwright.sync_api import expect

from ..support.flows import create_organization, create_user
from ..support.totp import TotpAccount, code_at_step, current_step
from .test_login_browser import sign_in_with_password

pytestmark = pytest.mark.e2e

ME_AMR = "async () => (await (await fetch('/api/v1/me', {credentials: 'same-origin'})).json()).session.amr"


def submit_code(page: Any, code: str) -> None:
    page.get_by_label("Verification code").fill(code)
    page.get_by_role("button", name="Verify", exact=True).click()


def expect_home(page: Any, base_url: str, username: str, *, query: str = "") -> None:
    expect(page).to_have_url(f"{base_url}/{query}")
    expect(page.get_by_role("heading", name=re.compile(f"Welcome, {username}"))).to_be_visible()


def sign_out(page: Any, base_url: str) -> None:
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{base_url}/login?signed_out=1")


def test_new_user_enrolls_an_authenticator_app_and_signs_in_with_codes(
    browser, product_server, browser_context, product_twofold
):
    organization, _ = create_organization(product_twofold)
    bob = create_user(product_twofold, organization, "bob")
    attempts_left = product_twofold.settings.transaction_max_failures - 1
    page = browser_context.new_page()

    # The password step, then the forced enrollment (R3).
    page.goto(f"{product_server}/login")
    sign_in_with_password(page, "bob", bob.password)
    expect(page).to_have_url(f"{product_server}/login/enroll")
    expect(page.get_by_role("heading", name="Manage Your Verification Methods")).to_be_visible()
    page.get_by_role("button", name="Add Authenticator app").click()

    expect(page.get_by_role("heading", name="Add an authenticator app")).to_be_visible()
    expect(page.locator("figure.qr svg")).to_be_visible()
    shown_secret = page.locator("code.secret")
    secret = shown_secret.get_attribute("data-secret")
    assert secret and re.fullmatch(r"[A-Z2-7]{32}", secret), secret
    assert shown_secret.inner_text().replace(" ", "") == secret
    enrolled = TotpAccount(bob, secret, last_step=current_step())
    submit_code(page, code_at_step(secret, enrolled.last_step))

    # Recovery codes, shown once.
    expect(page.get_by_role("heading", name="Your recovery codes")).to_be_visible()
    listed = page.get_by_role("list", name="Recovery codes").get_by_role("listitem")
    expect(listed).to_have_count(10)
    recovery_codes = [text.strip() for text in listed.all_inner_texts()]
    assert len(set(recovery_codes)) == 10
    download = page.get_by_role("link", name="Download as text").get_attribute("href")
    assert download and download.startswith("data:text/plain")
    assert all(code in unquote(download) for code in recovery_codes)
    page.get_by_role("link", name="I have saved these codes").click()
    expect_home(page, product_server, "bob")
    assert page.evaluate(ME_AMR) == ["pwd", "otp", "mfa"]
    sign_out(page, product_server)

    # Signing in again with a fresh code: the next step, which the server accepts (±1), or a later one.
    sign_in_with_password(page, "bob", bob.password)
    expect(page).to_have_url(f"{product_server}/login/verify")
    used_code = enrolled.next_code()
    submit_code(page, used_code)
    expect_home(page, product_server, "bob")
    assert page.evaluate(ME_AMR) == ["pwd", "otp", "mfa"]
    sign_out(page, product_server)

    # The same code once more: refused, visibly.
    sign_in_with_password(page, "bob", bob.password)
    expect(page).to_have_url(f"{product_server}/login/verify")
    submit_code(page, used_code)
    expect(page.get_by_role("alert")).to_have_text(
        f"That code was already used. Wait for the next code. {attempts_left} attempts left."
    )
    expect(page).to_have_url(f"{product_server}/login/verify")
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)

    # Another way in: a recovery code.
    page.get_by_role("link", name="Try another method").click()
    page.get_by_role("link", name="Recovery code", exact=True).click()
    expect(page).to_have_url(f"{product_server}/login/verify?method=recovery_code")
    submit_code(page, recovery_codes[0])
    expect_home(page, product_server, "bob", query="?signed_in_with=recovery_code")
    expect(page.get_by_role("status")).to_have_text(
        "You signed in with a recovery code. You have 9 unused recovery codes left."
    )
    assert page.evaluate(ME_AMR) == ["pwd", "mfa"]
