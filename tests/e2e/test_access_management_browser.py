"""Access Management, end to end: real Chromium against a real `twofold serve` with the product's methods.

- Procedure 1 (R6): a user manages their verification methods on "Manage Your Verification Methods": adds a
  second authenticator app and a security key (Chromium's virtual authenticator), renames and removes
  methods as staged changes applied by "Save", and cannot remove the last one, neither on the page nor on
  the server.
- Procedure 1b: a stale step-up makes the page ask "Verify it's you" first; the interrupted "Save" is
  carried through the verification and applied afterwards.
- Procedure 2 (R7): an administrator resets a signed-in user's MFA from the console; the user's session
  dies and the next sign-in forces enrollment; the audit log shows and exports the `mfa.reset` event.
- Procedure 3 (R4): the administrator exempts a test-automation service account through "Exempt Accounts";
  it signs in with its password alone; a human and an SSO account are refused with their reason; removing
  the exemption ends the service account's session.

With TWOFOLD_SCREENSHOTS_DIR set, the tests save full-page screenshots of the pages (1280x900 viewport).
Elements are found by their accessible names."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from playwright.sync_api import expect
from sqlalchemy import update

from twofold.domain.clock import utcnow
from twofold.storage import tables

from ..support.flows import Account, create_organization, create_user
from ..support.totp import TotpAccount, code_at_step, current_step
from ..test_accounts import create_sso_user
from .test_login_browser import sign_in_with_password
from .test_totp_browser import ME_AMR, expect_home, submit_code
from .test_webauthn_browser import SECURITY_KEY, Authenticators

pytestmark = pytest.mark.e2e

VIEWPORT = {"width": 1280, "height": 900}
LAST_METHOD = "You must keep at least one verification method. Add another method before you remove this one."
SAVED = "Your changes were saved."

ME_STATUS = "async () => (await fetch('/api/v1/me', {credentials: 'same-origin'})).status"
MY_METHODS = "async () => (await (await fetch('/api/v1/me/methods', {credentials: 'same-origin'})).json())"


# -- helpers ----------------------------------------------------------------------------------------


def screenshot(page: Any, name: str) -> None:
    """A full-page PNG in TWOFOLD_SCREENSHOTS_DIR, when it is set."""
    directory = os.environ.get("TWOFOLD_SCREENSHOTS_DIR")
    if not directory:
        return
    Path(directory).mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(Path(directory) / name), full_page=True)


@pytest.fixture
def page(browser_context: Any) -> Any:
    opened = browser_context.new_page()
    opened.set_viewport_size(VIEWPORT)
    return opened


@pytest.fixture
def other_context(browser: Any) -> Iterator[Any]:
    """A second browser profile (its own cookies): another person at another computer."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(15_000)
    try:
        yield context
    finally:
        context.close()


def enroll_in_pages(page: Any, base_url: str, account: Account) -> TotpAccount:
    """Password step, the forced enrollment of an authenticator app (R3), recovery codes, home page."""
    page.goto(f"{base_url}/login")
    sign_in_with_password(page, account.user.username, account.password)
    expect(page).to_have_url(f"{base_url}/login/enroll")
    page.get_by_role("button", name="Add Authenticator app").click()
    secret = page.locator("code.secret").get_attribute("data-secret")
    assert secret
    enrolled = TotpAccount(account, secret, last_step=current_step())
    submit_code(page, code_at_step(secret, enrolled.last_step))
    expect(page.get_by_role("heading", name="Your recovery codes")).to_be_visible()
    page.get_by_role("link", name="I have saved these codes").click()
    expect_home(page, base_url, account.user.username)
    return enrolled


def open_manage_page(page: Any, base_url: str) -> None:
    page.get_by_role("link", name="Configure multi-factor authentication (MFA)").click()
    expect(page).to_have_url(f"{base_url}/profile/mfa")
    expect(page.get_by_role("heading", name="Manage Your Verification Methods")).to_be_visible()


def add_authenticator_app(page: Any, base_url: str, account: Account) -> TotpAccount:
    """The "Add Authenticator app" button of the manage page: scan the secret, prove a code, back on the page."""
    page.get_by_role("button", name="Add Authenticator app").click()
    expect(page.get_by_role("heading", name="Add an authenticator app")).to_be_visible()
    secret = page.locator("code.secret").get_attribute("data-secret")
    assert secret
    added = TotpAccount(account, secret, last_step=current_step())
    submit_code(page, code_at_step(secret, added.last_step))
    expect(page).to_have_url(re.compile(re.escape(f"{base_url}/profile/mfa?added=")))
    return added


def listed_names(page: Any) -> list[str]:
    """The method names the manage page shows, in page order."""
    return [name.strip() for name in page.locator("li[data-method] .method-name").all_inner_texts()]


def stored_names(twofold: Any, account: Account) -> list[str]:
    with twofold.uow(read_only=True) as uow:
        return sorted(m.name for m in uow.methods.active_for_user(account.user.id))


def expire_step_up(twofold: Any, account: Account) -> None:
    """Make the step-up of the user's open session older than allowed (found by user id: the browser holds
    the token)."""
    with twofold.uow() as uow:
        changed = uow.session.execute(
            update(tables.sessions)
            .where(tables.sessions.c.user_id == account.user.id, tables.sessions.c.revoked_at.is_(None))
            .values(step_up_until=utcnow() - timedelta(seconds=1))
        )
    assert changed.rowcount == 1


def open_console(page: Any, base_url: str) -> None:
    page.get_by_role("link", name="Access Management").click()
    expect(page).to_have_url(f"{base_url}/admin")
    expect(page.get_by_role("heading", name="Access Management", exact=True)).to_be_visible()


def console_link(page: Any, name: str) -> None:
    page.get_by_role("navigation", name="Access Management").get_by_role("link", name=name, exact=True).click()


# == Procedure 1: managing one's own methods ======================================================


def test_user_adds_renames_and_removes_methods_but_keeps_the_last(
    browser, product_server, product_twofold, browser_context, page
):
    """R6 on the page: a second authenticator app is added; one app is renamed and the other removed as
    staged changes (with an undo) that only "Save" applies; removing the last method is refused by the page
    and, when forced past the page, by the server; the page, the API and the database agree afterwards.
    A security key added from the same page shows "Add" working for another type."""
    organization, _ = create_organization(product_twofold)
    bob = create_user(product_twofold, organization, "bob")
    enroll_in_pages(page, product_server, bob)
    open_manage_page(page, product_server)
    assert listed_names(page) == ["Authenticator app"]

    add_authenticator_app(page, product_server, bob)
    expect(page.get_by_role("status")).to_have_text("Authenticator app 2 was added.")
    assert listed_names(page) == ["Authenticator app", "Authenticator app 2"]

    # Rename: the pencil reveals the field; the checkmark stages the new name.
    page.get_by_role("button", name="Rename Authenticator app", exact=True).click()
    field = page.get_by_label("New name for Authenticator app", exact=True)
    expect(field).to_be_focused()
    field.fill("Work phone")
    page.get_by_role("button", name="Confirm new name").click()
    expect(field).to_be_hidden()
    expect(page.get_by_text("renamed, not saved yet")).to_be_visible()
    assert listed_names(page) == ["Work phone", "Authenticator app 2"]

    # Remove: the bin asks, "Yes" stages; "Undo" takes it back; staged again.
    page.get_by_role("button", name="Remove Authenticator app 2").click()
    page.get_by_role("button", name="Yes").click()
    expect(page.get_by_text("will be removed when you save")).to_be_visible()
    page.get_by_role("button", name="Undo").click()
    expect(page.get_by_text("will be removed when you save")).to_be_hidden()
    page.get_by_role("button", name="Remove Authenticator app 2").click()
    page.get_by_role("button", name="Yes").click()
    expect(page.get_by_text("will be removed when you save")).to_be_visible()
    expect(page.get_by_text("You have unsaved changes.")).to_be_visible()
    screenshot(page, "manage-verification-methods.png")

    # The last remaining method cannot be staged for removal.
    page.get_by_role("button", name="Remove Work phone").click()
    expect(page.get_by_role("alert")).to_contain_text("at least one verification method")
    expect(page.get_by_role("button", name="Yes")).to_have_count(0)
    assert stored_names(product_twofold, bob) == ["Authenticator app", "Authenticator app 2"]  # nothing saved yet

    page.get_by_role("button", name="Save").click()
    expect(page).to_have_url(f"{product_server}/profile/mfa?saved=1")
    expect(page.get_by_role("status")).to_have_text(SAVED)
    assert listed_names(page) == ["Work phone"]
    assert [(m["name"], m["type"]) for m in page.evaluate(MY_METHODS)] == [("Work phone", "totp")]
    assert stored_names(product_twofold, bob) == ["Work phone"]

    # Past the page's check (the form's own removal field set by a script): the server refuses on Save.
    page.evaluate(
        """() => {
            const form = document.getElementById('manage-methods');
            form.querySelector('input[data-remove]').value = '1';
            form.requestSubmit(form.querySelector('[data-save]'));
        }"""
    )
    expect(page.get_by_role("alert")).to_have_text(f"Your changes were not saved. {LAST_METHOD}")
    assert listed_names(page) == ["Work phone"]
    assert stored_names(product_twofold, bob) == ["Work phone"]

    # Another type from the same page: a security key, made by Chromium's virtual authenticator.
    Authenticators(browser_context, page).add(SECURITY_KEY)
    page.get_by_role("button", name="Add Security key").click()
    expect(page.get_by_role("heading", name="Add a security key")).to_be_visible()
    page.get_by_role("button", name="Continue").click()
    expect(page).to_have_url(re.compile(re.escape(f"{product_server}/profile/mfa?added=")))
    expect(page.get_by_role("status")).to_have_text("Security key was added.")
    assert listed_names(page) == ["Work phone", "Security key"]
    assert sorted((m["name"], m["type"]) for m in page.evaluate(MY_METHODS)) == [
        ("Security key", "security_key"),
        ("Work phone", "totp"),
    ]

    page.get_by_role("link", name="Done").click()
    expect_home(page, product_server, "bob")


# == Procedure 1b: the step-up in front of the page and of "Save" =================================


def test_stale_step_up_is_asked_for_and_the_staged_save_goes_through(browser, product_server, product_twofold, page):
    """A step-up older than allowed: opening the page asks "Verify it's you" first; a staged removal met by
    a stale step-up on "Save" is carried through the verification, posted again by the "Verified" page and
    applied, without the user staging it again."""
    organization, _ = create_organization(product_twofold)
    bob = create_user(product_twofold, organization, "bob")
    phone = enroll_in_pages(page, product_server, bob)
    open_manage_page(page, product_server)
    tablet = add_authenticator_app(page, product_server, bob)
    assert listed_names(page) == ["Authenticator app", "Authenticator app 2"]

    # Opening the page with a stale step-up.
    expire_step_up(product_twofold, bob)
    page.reload()
    expect(page.get_by_role("heading", name="Verify it's you")).to_be_visible()
    expect(page.get_by_role("status")).to_have_text("Verify it's you before you change your verification methods.")
    submit_code(page, phone.next_code())
    expect(page).to_have_url(f"{product_server}/profile/mfa")
    expect(page.get_by_role("heading", name="Manage Your Verification Methods")).to_be_visible()

    # "Save" with a stale step-up: the staged removal waits for the verification, then applies.
    expire_step_up(product_twofold, bob)
    page.get_by_role("button", name="Remove Authenticator app 2").click()
    page.get_by_role("button", name="Yes").click()
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("heading", name="Verify it's you")).to_be_visible()
    expect(page.get_by_role("status")).to_have_text("Verify it's you to save your changes.")
    assert stored_names(product_twofold, bob) == ["Authenticator app", "Authenticator app 2"]
    [tablet_id] = [m["id"] for m in page.evaluate(MY_METHODS) if m["name"] == "Authenticator app 2"]

    with page.expect_request(lambda r: r.method == "POST" and r.url == f"{product_server}/profile/mfa") as again:
        submit_code(page, tablet.next_code())
    # The "Verified" page posted the staged form again: the removal of the second app, nothing else.
    reposted = parse_qs(again.value.post_data or "")  # blank fields (nothing staged) left out
    assert {key: values for key, values in reposted.items() if key != "csrf_token"} == {f"remove:{tablet_id}": ["1"]}
    expect(page).to_have_url(f"{product_server}/profile/mfa?saved=1")
    expect(page.get_by_role("status")).to_have_text(SAVED)
    assert listed_names(page) == ["Authenticator app"]
    assert stored_names(product_twofold, bob) == ["Authenticator app"]


# == Procedure 2: an administrator resets a user's MFA ============================================


def test_admin_resets_mfa_of_a_signed_in_user(browser, product_server, product_twofold, page, other_context):
    """R7 from the console: after "Confirm reset MFA", the user's open session in another browser is dead,
    the next sign-in is a forced enrollment, and the audit log lists and exports the `mfa.reset` event."""
    organization, alice = create_organization(product_twofold)
    bob = create_user(product_twofold, organization, "bob")
    bob_page = other_context.new_page()
    enroll_in_pages(bob_page, product_server, bob)
    enroll_in_pages(page, product_server, alice)

    # The console is the administrators' only.
    expect(bob_page.get_by_role("link", name="Access Management")).to_have_count(0)
    bob_page.goto(f"{product_server}/admin")
    expect(bob_page.get_by_text("Only Organization Administrators can open Access Management.")).to_be_visible()
    bob_page.go_back()
    expect_home(bob_page, product_server, "bob")

    open_console(page, product_server)
    screenshot(page, "access-management.png")
    console_link(page, "Users")
    page.get_by_role("link", name="bob", exact=True).click()
    expect(page.get_by_role("heading", name="bob", exact=True)).to_be_visible()
    expect(page.get_by_text("1 verification method", exact=True)).to_be_visible()
    page.get_by_role("button", name="Reset multi-factor authentication").click()
    expect(page.get_by_role("button", name="Confirm reset MFA")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("This deletes every verification method and recovery code")
    screenshot(page, "reset-mfa.png")
    page.get_by_role("button", name="Confirm reset MFA").click()
    expect(page.get_by_role("status")).to_contain_text("Multi-factor authentication was reset.")
    expect(page.get_by_text("Pending enrollment")).to_be_visible()
    console_link(page, "MFA coverage")
    coverage = page.get_by_role("table", name="Users by MFA state")
    for state, count in {"Enrolled": "1", "Pending enrollment": "1", "All users": "2"}.items():
        row = coverage.get_by_role("row").filter(has_text=state)
        expect(row.locator("td, th").nth(1)).to_have_text(count)

    # Bob's session, open in his own browser, is gone: his next page load is the sign-in page.
    assert bob_page.evaluate(ME_STATUS) == 401
    bob_page.reload()
    expect(bob_page).to_have_url(re.compile(re.escape(f"{product_server}/login")))
    expect(bob_page.get_by_role("button", name="Sign out")).to_have_count(0)
    bob_page.goto(f"{product_server}/login")
    sign_in_with_password(bob_page, "bob", bob.password)
    expect(bob_page).to_have_url(f"{product_server}/login/enroll")
    expect(bob_page.get_by_role("heading", name="Manage Your Verification Methods")).to_be_visible()

    # The audit log shows the reset, and its JSON-lines export holds it.
    console_link(page, "Audit Log")
    expect(page.get_by_role("heading", name="Audit Log")).to_be_visible()
    events = page.get_by_role("table", name="Audit events")
    reset_row = events.get_by_role("row").filter(has=page.locator("code", has_text=re.compile("^mfa\\.reset$")))
    expect(reset_row).to_have_count(1)
    expect(reset_row).to_contain_text("alice")
    expect(reset_row).to_contain_text("bob")
    with page.expect_download() as downloading:
        page.get_by_role("link", name="Export as JSON lines").click()
    download = downloading.value
    assert download.suggested_filename == "twofold-audit.jsonl"
    lines = Path(download.path()).read_text().splitlines()
    exported = [json.loads(line) for line in lines]
    resets = [event for event in exported if event["type"] == "mfa.reset"]
    assert len(resets) == 1, exported
    assert resets[0]["actor_id"] == alice.user.id
    assert resets[0]["subject_id"] == bob.user.id
    assert resets[0]["details"]["methods_deleted"] == 1
    assert resets[0]["details"]["sessions_ended"] == 1
    assert {"login.succeeded", "method.enrolled"} & {event["type"] for event in exported}


# == Procedure 3: exempt accounts =================================================================


def test_admin_exempts_a_test_automation_account_and_takes_it_back(
    browser, product_server, product_twofold, page, other_context
):
    """R4 through "Exempt Accounts": a test-automation service account, once exempted, signs in with its
    password alone; a human account and an SSO account are refused with the reason shown (the SSO account is
    not even offered); removing the exemption ends the service account's open session."""
    organization, alice = create_organization(product_twofold)
    create_user(product_twofold, organization, "bob")
    robot = create_user(product_twofold, organization, "robot", kind="service", service_type="test_automation")
    create_sso_user(product_twofold, organization, "sam")
    enroll_in_pages(page, product_server, alice)

    open_console(page, product_server)
    console_link(page, "Identity Providers")
    page.get_by_role("link", name="Exempt Accounts").click()
    expect(page).to_have_url(f"{product_server}/admin/identity-providers/local")
    expect(page.get_by_role("heading", name="Exempt Accounts")).to_be_visible()
    candidates = page.locator("datalist#exempt-candidates option")
    assert candidates.evaluate_all("options => options.map(o => o.value)") == ["robot"]
    assert page.get_by_label("Username").get_attribute("list") == "exempt-candidates"

    # The service account and a human account staged together; Save applies one, refuses the other.
    page.get_by_label("Username").fill("robot")
    page.get_by_label("Exempt for (days)").fill("30")
    page.get_by_role("button", name="Add", exact=True).click()
    page.get_by_label("Username").fill("bob")
    page.get_by_role("button", name="Add", exact=True).click()
    staged = page.get_by_role("table", name="Exempt accounts")
    expect(staged.get_by_role("row")).to_have_count(3)  # the header and the two staged additions
    page.get_by_role("button", name="Save").click()
    refusals = page.get_by_role("alert")
    expect(refusals).to_have_count(1)
    expect(refusals).to_have_text(re.compile("^bob was not exempted: human user accounts cannot be exempted after"))
    rows = page.get_by_role("table", name="Exempt accounts").get_by_role("row")
    expect(rows).to_have_count(2)
    expect(rows.nth(1)).to_contain_text("robot")
    expect(rows.nth(1)).to_contain_text("Test automation")
    expect(rows.nth(1)).to_contain_text("30 days left")
    screenshot(page, "exempt-accounts.png")

    # The SSO account: not offered, and refused when typed.
    assert candidates.evaluate_all("options => options.map(o => o.value)") == []
    page.get_by_label("Username").fill("sam")
    page.get_by_role("button", name="Add", exact=True).click()
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("alert")).to_have_text(
        "sam was not exempted: single sign-on accounts do their MFA at their identity provider and cannot be exempted."
    )
    expect(page.get_by_role("table", name="Exempt accounts").get_by_role("row")).to_have_count(2)

    # The service account signs in with its password alone.
    robot_page = other_context.new_page()
    robot_page.goto(f"{product_server}/login")
    sign_in_with_password(robot_page, "robot", robot.password)
    expect_home(robot_page, product_server, "robot")
    assert robot_page.evaluate(ME_AMR) == ["pwd"]

    # The X stages the removal; Save ends the exemption and the robot's session with it.
    page.get_by_role("button", name="Remove robot").click()
    expect(page.get_by_text("will be removed when you save")).to_be_visible()
    page.get_by_role("button", name="Save").click()
    expect(page).to_have_url(f"{product_server}/admin/identity-providers/local?saved=1")
    expect(page.get_by_role("status")).to_have_text("Exempt Accounts saved.")
    expect(page.get_by_text("No account is exempt.")).to_be_visible()
    assert candidates.evaluate_all("options => options.map(o => o.value)") == ["robot"]

    assert robot_page.evaluate(ME_STATUS) == 401
    robot_page.reload()
    expect(robot_page).to_have_url(re.compile(re.escape(f"{product_server}/login")))
    expect(robot_page.get_by_role("button", name="Sign out")).to_have_count(0)
