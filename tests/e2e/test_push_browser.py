"""Issue 6, "Done when", end to end: real Chromium against a real `twofold serve` with the product's methods, and
the companion `twofold authenticator` run as a separate process, as a user runs it on the device that approves.

A new user pairs the companion at the forced enrollment (the page completes by itself), signs out, and signs in
again by picking on the device the number the page shows. A denial, a wrong number and an expired notification are
each reported on the page, which offers to send another; after a wrong number push is suspended (429). A user who
enrolled an authenticator app first adds the companion from the profile and signs in with it via "Try another
method". Elements are found by their accessible names."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect
from sqlalchemy import update

from twofold.domain.clock import utcnow
from twofold.storage.tables import push_challenges

from ..support.flows import Account, create_organization, create_user
from ..support.servers import ROOT
from ..support.totp import TotpAccount, code_at_step, current_step
from .test_login_browser import sign_in_with_password
from .test_totp_browser import ME_AMR, expect_home, sign_out, submit_code

pytestmark = pytest.mark.e2e

DENIED = "The sign-in was denied on your device. Send another notification, or try another method."
EXPIRED = "The notification expired before it was answered. Send another one, or try another method."
WAITING = "Waiting for your answer…"
PUSH_AMR = ["pwd", "swk", "mfa"]


def authenticator(*args: str, store: Path) -> subprocess.CompletedProcess[str]:
    """`twofold authenticator ARGS --store FILE` as its own process (the device), never inside the test's."""
    return subprocess.run(
        [sys.executable, "-m", "twofold.cli.main", "authenticator", *args, "--store", str(store)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def succeeded(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def pair_from_page(page: Any, store: Path) -> None:
    """The enrollment page shows the pairing link; the companion pairs with it and the page carries on by itself."""
    expect(page.get_by_role("heading", name="Add Twofold Authenticator")).to_be_visible()
    expect(page.locator("figure.qr svg")).to_be_visible()
    uri = page.locator("code[data-pairing-uri]").inner_text().strip()
    assert uri.startswith("twofold://pair?"), uri
    output = succeeded(authenticator("pair", uri, "--name", "Test phone", store=store))
    assert "Paired 'Test phone'" in output, output


def enroll_push_at_sign_in(page: Any, base_url: str, account: Account, store: Path) -> None:
    """Password step, "Add Twofold Authenticator" at the forced enrollment, pairing, recovery codes, home."""
    page.goto(f"{base_url}/login")
    sign_in_with_password(page, account.user.username, account.password)
    expect(page).to_have_url(f"{base_url}/login/enroll")
    page.get_by_role("button", name="Add Twofold Authenticator").click()
    pair_from_page(page, store)
    expect(page.get_by_role("heading", name="Your recovery codes")).to_be_visible()
    expect(page.get_by_role("list", name="Recovery codes").get_by_role("listitem")).to_have_count(10)
    page.get_by_role("link", name="I have saved these codes").click()
    expect_home(page, base_url, account.user.username)


def send_push(page: Any) -> tuple[str, int]:
    """ "Send push notification" on the verify page; returns the challenge id and the number the page shows."""
    page.get_by_role("button", name="Send push notification").click()
    expect(page.get_by_role("heading", name="Check your phone")).to_be_visible()
    expect(page.get_by_role("status")).to_have_text(WAITING)
    box = page.locator("[data-push-challenge]")
    challenge_id = box.get_attribute("data-push-challenge")
    assert challenge_id
    shown = page.locator("[data-push-number]").inner_text().strip()
    assert re.fullmatch(r"\d{1,2}", shown), shown
    return challenge_id, int(shown)


def sign_in_to_verify(page: Any, base_url: str, account: Account) -> None:
    page.goto(f"{base_url}/login")
    sign_in_with_password(page, account.user.username, account.password)
    expect(page).to_have_url(f"{base_url}/login/verify")


def expect_offer_to_send_again(page: Any, message: str, *, timeout: float = 5_000) -> None:
    expect(page.get_by_role("status")).to_have_text(message, timeout=timeout)
    expect(page.get_by_role("button", name="Send push notification")).to_be_visible()
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)


def test_forced_enrollment_pairs_the_companion_and_a_number_matched_approval_signs_in(
    browser, product_server, browser_context, product_twofold, tmp_path
):
    """The pairing link on the forced-enrollment page pairs the companion (key file 0600); the next sign-in shows a
    number, `list` shows the challenge's context with that number among three, and approving it signs in."""
    organization, _ = create_organization(product_twofold)
    bob = create_user(product_twofold, organization, "bob")
    store = tmp_path / "device.json"
    page = browser_context.new_page()

    enroll_push_at_sign_in(page, product_server, bob, store)
    assert page.evaluate(ME_AMR) == PUSH_AMR
    assert store.stat().st_mode & 0o777 == 0o600
    sign_out(page, product_server)

    sign_in_to_verify(page, product_server, bob)
    # Push is the only method: no code field, and sending the notification is the page's main action.
    expect(page.get_by_label("Verification code")).to_have_count(0)
    challenge_id, number = send_push(page)

    listed = succeeded(authenticator("list", store=store))
    line = next(line for line in listed.splitlines() if line.startswith(f"{challenge_id}:"))
    assert f"sign-in to Twofold · {organization.name} from 127.0.0.1" in line, line
    assert "Chrome" in line, line
    choices = [int(n) for n in line.rpartition("numbers: ")[2].split(", ")]
    assert len(choices) == 3 and len(set(choices)) == 3 and number in choices, (number, line)

    approved = succeeded(authenticator("approve", "--number", str(number), store=store))
    assert f"Sent approval with number {number} for {challenge_id}" in approved
    expect_home(page, product_server, "bob")
    assert page.evaluate(ME_AMR) == PUSH_AMR
    # Answered challenges are no longer offered to the device.
    assert "No sign-in is waiting for this device." in succeeded(authenticator("list", store=store))


def test_a_denial_is_shown_and_another_notification_can_be_sent_and_approved(
    browser, product_server, browser_context, product_twofold, tmp_path
):
    """`deny` makes the waiting page say the sign-in was denied and offer "Send push notification"; a second
    notification has a challenge of its own, which the device then approves."""
    organization, _ = create_organization(product_twofold)
    carol = create_user(product_twofold, organization, "carol")
    store = tmp_path / "device.json"
    page = browser_context.new_page()
    enroll_push_at_sign_in(page, product_server, carol, store)
    sign_out(page, product_server)

    sign_in_to_verify(page, product_server, carol)
    first, _ = send_push(page)
    assert f"Denied {first}" in succeeded(authenticator("deny", store=store))
    expect_offer_to_send_again(page, DENIED)
    expect(page).to_have_url(f"{product_server}/login/push")

    second, number = send_push(page)
    assert second != first
    succeeded(authenticator("approve", "--number", str(number), second, store=store))
    expect_home(page, product_server, "carol")
    assert page.evaluate(ME_AMR) == PUSH_AMR


def test_a_wrong_number_denies_the_sign_in_and_suspends_push(
    browser, product_server, browser_context, product_twofold, tmp_path
):
    """Approving with a number the page does not show denies the sign-in on the page, and the next "Send push
    notification" is refused with 429 and the suspension's reason, while the user stays signed out."""
    organization, _ = create_organization(product_twofold)
    dave = create_user(product_twofold, organization, "dave")
    store = tmp_path / "device.json"
    page = browser_context.new_page()
    enroll_push_at_sign_in(page, product_server, dave, store)
    sign_out(page, product_server)

    sign_in_to_verify(page, product_server, dave)
    challenge_id, number = send_push(page)
    listed = succeeded(authenticator("list", store=store))
    line = next(line for line in listed.splitlines() if line.startswith(f"{challenge_id}:"))
    wrong = next(int(n) for n in line.rpartition("numbers: ")[2].split(", ") if int(n) != number)
    # The companion sends what it is given: the server, not the device, judges the number.
    succeeded(authenticator("approve", "--number", str(wrong), store=store))
    expect_offer_to_send_again(page, DENIED)

    with page.expect_response(lambda r: r.url.endswith("/login/push") and r.request.method == "POST") as refused:
        page.get_by_role("button", name="Send push notification").click()
    assert refused.value.status == 429
    retry_after = int(refused.value.headers["retry-after"])
    assert 0 < retry_after <= 15 * 60
    expect(page.get_by_role("alert")).to_contain_text("Push notifications are suspended for this account")
    expect(page.locator("[data-push-number]")).to_have_count(0)
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)


def test_an_expired_notification_is_reported_on_the_waiting_page(
    browser, product_server, browser_context, product_twofold, tmp_path
):
    """A notification past its expiry is reported by the page's long poll as expired (no answer from the device
    needed) and the page offers another; the device can no longer answer it."""
    organization, _ = create_organization(product_twofold)
    erin = create_user(product_twofold, organization, "erin")
    store = tmp_path / "device.json"
    page = browser_context.new_page()
    enroll_push_at_sign_in(page, product_server, erin, store)
    sign_out(page, product_server)

    sign_in_to_verify(page, product_server, erin)
    challenge_id, number = send_push(page)
    # Sixty seconds pass in the database. Nothing wakes the page's long poll: it sees the expiry when it next
    # re-reads the challenge, within the wake-ups' interval (0.25 s on SQLite; 5 s, a safety net, on PostgreSQL).
    with product_twofold.uow() as uow:
        uow.session.execute(
            update(push_challenges)
            .where(push_challenges.c.id == challenge_id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    expect_offer_to_send_again(page, EXPIRED, timeout=15_000)

    late = authenticator("approve", "--number", str(number), challenge_id, store=store)
    assert late.returncode != 0
    assert "409" in late.stderr, late.stderr


def test_a_user_with_an_authenticator_app_adds_the_companion_and_signs_in_with_it(
    browser, product_server, browser_context, product_twofold, tmp_path
):
    """Enrolled with an authenticator app first, a user adds Twofold Authenticator from the profile (the page
    completes by itself once paired) and, on the next sign-in, picks push under "Try another method"."""
    organization, _ = create_organization(product_twofold)
    frank = create_user(product_twofold, organization, "frank")
    store = tmp_path / "device.json"
    page = browser_context.new_page()

    page.goto(f"{product_server}/login")
    sign_in_with_password(page, "frank", frank.password)
    page.get_by_role("button", name="Add Authenticator app").click()
    secret = page.locator("code.secret").get_attribute("data-secret")
    assert secret
    enrolled = TotpAccount(frank, secret, last_step=current_step())
    submit_code(page, code_at_step(secret, enrolled.last_step))
    page.get_by_role("link", name="I have saved these codes").click()
    expect_home(page, product_server, "frank")

    page.goto(f"{product_server}/profile/mfa")
    expect(page.get_by_role("heading", name="Manage Your Verification Methods")).to_be_visible()
    page.get_by_role("button", name="Add Twofold Authenticator").click()
    pair_from_page(page, store)
    expect(page).to_have_url(re.compile(re.escape(f"{product_server}/profile/mfa?added=")))
    expect(page.get_by_text("Test phone was added.")).to_be_visible()
    sign_out(page, product_server)

    sign_in_to_verify(page, product_server, frank)
    # The authenticator app stays the default; push is one of the other ways.
    expect(page.get_by_label("Verification code")).to_be_visible()
    page.get_by_role("link", name="Try another method").click()
    page.get_by_role("link", name="Push notification to your phone").click()
    expect(page).to_have_url(f"{product_server}/login/verify?method=push")
    _, number = send_push(page)
    succeeded(authenticator("approve", "--number", str(number), store=store))
    expect_home(page, product_server, "frank")
    assert page.evaluate(ME_AMR) == PUSH_AMR
    assert os.stat(store).st_mode & 0o777 == 0o600
