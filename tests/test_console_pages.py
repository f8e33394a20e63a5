"""The "Access Management" console (API.md "Web pages"): only an Organization Administrator opens it, and only for
their own organization; Users with search and paging; "Reset multi-factor authentication", unlock and
disable/enable, each carried through a verification when the step-up is stale; the local provider's Exempt
Accounts, where each staged change applies or is refused on its own; the Audit Log with its filters, paging and
JSON-lines export; and the MFA coverage counts.

httpx never sends a `Secure` cookie over plain http (DESIGN.md §8): the `Browser` of test_pages.py carries the
cookies by hand."""

from __future__ import annotations

import html
import json
import re
from datetime import timedelta
from typing import Any
from urllib.parse import quote

from sqlalchemy import or_, select

from twofold.container import Twofold
from twofold.domain.clock import as_utc, utcnow
from twofold.services.context import RequestContext
from twofold.storage import tables

from .support.flows import Account, bearer, create_organization, create_user, enroll
from .support.methods import METHOD_TYPE
from .test_admin_api import admin_session, expire_step_up
from .test_exemptions import exemption_row, service
from .test_mfa_report import add_test_method, build_organization, lock, report
from .test_pages import ALERT, Browser
from .test_profile_pages import browser_for, continue_form, csrf_of, form_fields, is_verify_page, methods_of

NOT_AN_ADMINISTRATOR = "Only Organization Administrators can open Access Management."
USER_ROW = re.compile(r'<td><a href="/admin/users/([^"]+)">([^<]+)</a>')
NEXT_PAGE = re.compile(r'<a href="([^"]+)">Next page</a>')
OLDER_EVENTS = re.compile(r'<a href="([^"]+)">Older events</a>')
EVENT_DETAILS = re.compile(r'<code class="details">([^<]*)</code>')
EVENT_TYPE = re.compile(r"<td><code>([^<]*)</code></td>")
STATUS = re.compile(r'<p class="notice" role="status">([^<]*)</p>')


def alerts(page: Any) -> list[str]:
    return [html.unescape(text) for text in ALERT.findall(page.text)]


def notice(page: Any) -> str:
    found = STATUS.search(page.text)
    assert found, page.text
    return html.unescape(found.group(1))


def flat(page: Any) -> str:
    """The page's text with every run of white space made one space."""
    return " ".join(page.text.split())


def admin_browser(twofold: Twofold, client: Any) -> tuple[str, Account, Browser]:
    """Acme, with alice, its administrator, signed in (fresh step-up) in a browser."""
    org, alice = admin_session(twofold, client)
    return org, alice, browser_for(client, alice)


def usernames(page: Any) -> list[str]:
    assert page.status_code == 200, page.text
    return [html.unescape(name) for _, name in USER_ROW.findall(page.text)]


def stored_user(twofold: Twofold, user_id: str) -> Any:
    with twofold.uow.engine.connect() as connection:
        return connection.execute(select(tables.users).where(tables.users.c.id == user_id)).one()


def rename_many(twofold: Twofold, account: Account, count: int, prefix: str = "Name") -> None:
    """``count`` audited renames of the account's first method, each to a name of its own."""
    principal = twofold.sessions.authenticate(account.token)
    (method_id,) = methods_of(twofold, account.user.id)
    for index in range(count):
        twofold.methods.rename(principal, method_id, name=f"{prefix} {index:04}", context=RequestContext(ip="10.0.0.1"))


def stored_events(twofold: Twofold, organization_id: str, *conditions: Any) -> list[Any]:
    query = select(tables.audit_events).where(tables.audit_events.c.organization_id == organization_id, *conditions)
    with twofold.uow.engine.connect() as connection:
        return list(connection.execute(query).all())


def audit_rows(page: Any) -> list[tuple[str, str]]:
    """The Audit Log table's rows, as (event type, details)."""
    assert page.status_code == 200, page.text
    types = [html.unescape(t) for t in EVENT_TYPE.findall(page.text)]
    details = [html.unescape(d) for d in EVENT_DETAILS.findall(page.text)]
    assert len(types) == len(details), page.text
    return list(zip(types, details, strict=True))


def export_lines(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert response.headers["content-disposition"].startswith("attachment")
    assert response.text == "" or response.text.endswith("\n")  # one object per line, each ended
    return [json.loads(line) for line in response.text.splitlines()]


# -- who may open the console -----------------------------------------------------------------------


def test_only_an_administrator_opens_the_console(twofold, client):
    organization, alice = create_organization(twofold)
    enroll(client, alice)
    bob = enroll(client, create_user(twofold, organization, "bob"))
    robot = service(twofold, "robot")
    browser = browser_for(client, bob)
    for path in (
        "/admin",
        "/admin/users",
        "/admin/users?q=alice",
        f"/admin/users/{alice.user.id}",
        f"/admin/users/{bob.user.id}",
        "/admin/identity-providers",
        "/admin/identity-providers/local",
        "/admin/audit",
        "/admin/audit?type=login.succeeded",
        "/admin/audit/export",
        "/admin/mfa-report",
    ):
        page = browser.get(path)
        assert page.status_code == 403, (path, page.text)
        assert page.headers["content-type"].startswith("text/html")
        assert NOT_AN_ADMINISTRATOR in page.text, path
    assert 'href="/admin"' not in browser.get("/").text

    token = csrf_of(browser.get("/"))
    for path, data in (
        (f"/admin/users/{alice.user.id}/reset-mfa", {}),
        (f"/admin/users/{alice.user.id}/unlock", {}),
        (f"/admin/users/{alice.user.id}/status", {"status": "disabled"}),
        ("/admin/identity-providers/local", {"add_username": "robot", "add_days": "30"}),
        ("/admin/identity-providers/local", {f"remove:{alice.user.id}": "1"}),
    ):
        refused = browser.post(path, {"csrf_token": token, **data})
        assert refused.status_code == 403, (path, refused.text)
        assert NOT_AN_ADMINISTRATOR in refused.text, path
    assert len(methods_of(twofold, alice.user.id)) == 1
    assert stored_user(twofold, alice.user.id).status == "active"
    assert exemption_row(twofold, robot.user.id) is None
    assert client.get("/api/v1/me", headers=bearer(alice.token)).status_code == 200

    # Signed out: the login.
    signed_out = Browser(client)
    for path in ("/admin", "/admin/users", "/admin/audit/export"):
        assert signed_out.get(path).headers["location"].startswith("/login"), path


def test_an_administrator_of_another_organization_gets_404(twofold, client):
    _, _, _ = admin_browser(twofold, client)
    bob = enroll(client, create_user(twofold, twofold.accounts.root_by_name("Acme"), "bob"))
    lock(twofold, bob)
    _, gina = admin_session(twofold, client, "Globex", "gina")
    browser = browser_for(client, gina)
    assert usernames(browser.get("/admin/users")) == ["gina"]
    assert usernames(browser.get("/admin/users?q=bob")) == []
    page = browser.get(f"/admin/users/{bob.user.id}")
    assert page.status_code == 404, page.text
    assert "bob" not in page.text
    token = csrf_of(browser.get("/admin"))
    for action, data in (("reset-mfa", {}), ("unlock", {}), ("status", {"status": "disabled"})):
        refused = browser.post(f"/admin/users/{bob.user.id}/{action}", {"csrf_token": token, **data})
        assert refused.status_code == 404, (action, refused.text)
    assert len(methods_of(twofold, bob.user.id)) == 1
    row = stored_user(twofold, bob.user.id)
    assert row.status == "active" and row.locked_at is not None
    # Not even the audit log tells about bob.
    assert export_lines(browser.get(f"/admin/audit/export?user={bob.user.id}")) == []


# -- users ------------------------------------------------------------------------------------------------


def test_users_search_and_paging(twofold, client):
    _, _, browser = admin_browser(twofold, client)
    acme = twofold.accounts.root_by_name("Acme")
    for index in range(30):
        twofold.accounts.create_user(
            organization_id=acme.id,
            username=f"user{index:02}",
            email=f"user{index:02}@example.com",
            display_name=f"Person {index}",
            kind="user",
            service_type=None,
            actor_id=None,
            context=RequestContext(ip="127.0.0.1"),
        )
    everyone = sorted(["alice", *(f"user{i:02}" for i in range(30))])

    first = browser.get("/admin/users")
    first_names = usernames(first)
    assert len(first_names) == 25
    assert "First page" not in first.text
    found = NEXT_PAGE.search(first.text)
    assert found, first.text
    second = browser.get(html.unescape(found.group(1)))
    second_names = usernames(second)
    assert len(second_names) == 6
    assert not set(first_names) & set(second_names)
    assert first_names + second_names == everyone
    assert NEXT_PAGE.search(second.text) is None
    assert '<a href="/admin/users?q=">First page</a>' in second.text

    # Search keeps its query across pages; it looks at usernames, emails and names, case aside.
    searched = browser.get("/admin/users?q=USER")
    assert usernames(searched)[0] == "user00" and len(usernames(searched)) == 25
    found = NEXT_PAGE.search(searched.text)
    assert found and "q=USER" in html.unescape(found.group(1)), searched.text
    rest = usernames(browser.get(html.unescape(found.group(1))))
    assert rest == [f"user{i}" for i in range(25, 30)]
    assert usernames(browser.get("/admin/users?q=user1")) == [f"user1{i}" for i in range(10)]
    assert usernames(browser.get("/admin/users?q=user05%40example")) == ["user05"]
    assert usernames(browser.get("/admin/users?q=person+7")) == ["user07"]
    assert usernames(browser.get("/admin/users?q=%25")) == []  # a wildcard is a character like any other
    nothing = browser.get("/admin/users?q=nobody")
    assert usernames(nothing) == [] and "No users match." in nothing.text

    bogus = browser.get("/admin/users?cursor=not-a-cursor")
    assert bogus.status_code == 422, bogus.text
    assert "cursor is not one this server gave out" in bogus.text


def test_reset_mfa_with_a_fresh_step_up(twofold, client):
    _, alice, browser = admin_browser(twofold, client)
    bob = enroll(client, create_user(twofold, twofold.accounts.root_by_name("Acme"), "bob"))
    add_test_method(client, bob, "Second")
    assert len(methods_of(twofold, bob.user.id)) == 2

    page = browser.get(f"/admin/users/{bob.user.id}")
    assert page.status_code == 200, page.text
    assert f'href="/admin/users/{bob.user.id}?confirm=reset-mfa">Reset multi-factor authentication</a>' in page.text
    confirm = browser.get(f"/admin/users/{bob.user.id}?confirm=reset-mfa")
    assert ">Confirm reset MFA</button>" in confirm.text
    fields = form_fields(confirm, f"/admin/users/{bob.user.id}/reset-mfa")

    done = browser.post(f"/admin/users/{bob.user.id}/reset-mfa", fields)
    assert done.status_code == 303, done.text
    assert done.headers["location"].startswith(f"/admin/users/{bob.user.id}?")
    assert notice(browser.get(done.headers["location"])).startswith("Multi-factor authentication was reset.")
    assert methods_of(twofold, bob.user.id) == {}
    assert twofold.methods.recovery_codes_remaining(bob.user.id) == 0
    assert client.get("/api/v1/me", headers=bearer(bob.token)).status_code == 401
    assert "Pending enrollment" in browser.get(f"/admin/users/{bob.user.id}").text

    # One's own reset ends one's own sessions too: back to the login.
    own = browser.get(f"/admin/users/{alice.user.id}?confirm=reset-mfa")
    assert "This is your own account: you will be signed out." in own.text
    signed_out = browser.post(
        f"/admin/users/{alice.user.id}/reset-mfa", form_fields(own, f"/admin/users/{alice.user.id}/reset-mfa")
    )
    assert signed_out.status_code == 303, signed_out.text
    assert signed_out.headers["location"] == "/login?signed_out=1"
    assert methods_of(twofold, alice.user.id) == {}
    assert client.get("/api/v1/me", headers=bearer(alice.token)).status_code == 401


def test_reset_mfa_with_a_stale_step_up_goes_through_a_verification(twofold, client):
    _, alice, browser = admin_browser(twofold, client)
    bob = enroll(client, create_user(twofold, twofold.accounts.root_by_name("Acme"), "bob"))
    confirm = browser.get(f"/admin/users/{bob.user.id}?confirm=reset-mfa")
    fields = form_fields(confirm, f"/admin/users/{bob.user.id}/reset-mfa")
    expire_step_up(twofold, str(alice.token))

    asked = browser.post(f"/admin/users/{bob.user.id}/reset-mfa", fields)
    assert asked.status_code == 200, asked.text
    assert is_verify_page(asked)
    verify_fields = form_fields(asked, "/profile/verify")
    assert verify_fields["next"] == f"/admin/users/{bob.user.id}"
    assert json.loads(verify_fields["resume"])["action"] == f"/admin/users/{bob.user.id}/reset-mfa"
    assert len(methods_of(twofold, bob.user.id)) == 1

    verified = browser.post("/profile/verify", {**verify_fields, "code": str(alice.code)})
    action, posted = continue_form(verified)
    assert action == f"/admin/users/{bob.user.id}/reset-mfa"
    assert len(methods_of(twofold, bob.user.id)) == 1  # only the re-post resets
    done = browser.post(action, posted)
    assert done.status_code == 303, done.text
    assert done.headers["location"].startswith(f"/admin/users/{bob.user.id}?")
    assert methods_of(twofold, bob.user.id) == {}


def test_unlock_a_locked_account(twofold, client):
    _, alice, browser = admin_browser(twofold, client)
    acme = twofold.accounts.root_by_name("Acme")
    bob = enroll(client, create_user(twofold, acme, "bob"))
    carol = enroll(client, create_user(twofold, acme, "carol"))
    lock(twofold, bob)
    lock(twofold, carol)

    page = browser.get(f"/admin/users/{bob.user.id}")
    assert "Locked since" in page.text
    fields = form_fields(page, f"/admin/users/{bob.user.id}/unlock")
    done = browser.post(f"/admin/users/{bob.user.id}/unlock", fields)
    assert done.status_code == 303, done.text
    assert done.headers["location"].startswith(f"/admin/users/{bob.user.id}?")
    assert notice(browser.get(done.headers["location"])) == "The account was unlocked."
    assert stored_user(twofold, bob.user.id).locked_at is None

    # From the overview, which lists the locked accounts, back to the overview; never off the console.
    overview = browser.get("/admin")
    assert 'aria-label="Unlock carol"' in overview.text and 'aria-label="Unlock bob"' not in overview.text
    off_site = browser.post(f"/admin/users/{carol.user.id}/unlock", {**fields, "back": "https://evil.example/admin"})
    assert off_site.status_code == 303
    assert off_site.headers["location"].startswith(f"/admin/users/{carol.user.id}?")
    lock(twofold, carol)
    from_overview = browser.post(
        f"/admin/users/{carol.user.id}/unlock", form_fields(overview, f"/admin/users/{carol.user.id}/unlock")
    )
    assert from_overview.headers["location"].startswith("/admin?")
    assert stored_user(twofold, carol.user.id).locked_at is None

    # A stale step-up: the verification first, and nothing unlocked before it.
    lock(twofold, carol)
    expire_step_up(twofold, str(alice.token))
    asked = browser.post(f"/admin/users/{carol.user.id}/unlock", fields)
    assert is_verify_page(asked)
    assert stored_user(twofold, carol.user.id).locked_at is not None
    action, posted = continue_form(
        browser.post("/profile/verify", {**form_fields(asked, "/profile/verify"), "code": str(alice.code)})
    )
    assert browser.post(action, posted).status_code == 303
    assert stored_user(twofold, carol.user.id).locked_at is None


def test_disable_and_enable_an_account(twofold, client):
    _, alice, browser = admin_browser(twofold, client)
    bob = enroll(client, create_user(twofold, twofold.accounts.root_by_name("Acme"), "bob"))
    page = browser.get(f"/admin/users/{bob.user.id}")
    fields = form_fields(page, f"/admin/users/{bob.user.id}/status")
    assert fields["status"] == "disabled"

    disabled = browser.post(f"/admin/users/{bob.user.id}/status", fields)
    assert disabled.status_code == 303, disabled.text
    assert notice(browser.get(disabled.headers["location"])) == "The account was disabled; its sessions ended."
    assert stored_user(twofold, bob.user.id).status == "disabled"
    assert client.get("/api/v1/me", headers=bearer(bob.token)).status_code == 401

    overview = browser.get("/admin")
    assert 'aria-label="Enable bob"' in overview.text
    enabled = browser.post(
        f"/admin/users/{bob.user.id}/status", form_fields(overview, f"/admin/users/{bob.user.id}/status")
    )
    assert enabled.status_code == 303, enabled.text
    assert enabled.headers["location"].startswith("/admin?")
    assert notice(browser.get(enabled.headers["location"])) == "The account was enabled."
    assert stored_user(twofold, bob.user.id).status == "active"

    token = fields["csrf_token"]
    own = browser.post(f"/admin/users/{alice.user.id}/status", {"csrf_token": token, "status": "disabled"})
    assert own.status_code == 409, own.text
    assert "you cannot disable your own account" in own.text
    bogus = browser.post(f"/admin/users/{bob.user.id}/status", {"csrf_token": token, "status": "deleted"})
    assert bogus.status_code == 422, bogus.text
    unknown = browser.post("/admin/users/no-such-user/status", {"csrf_token": token, "status": "disabled"})
    assert unknown.status_code == 404, unknown.text
    assert stored_user(twofold, alice.user.id).status == "active"
    assert stored_user(twofold, bob.user.id).status == "active"

    # Without the CSRF token, or from another site: refused, nothing changed.
    for data, headers in (({"status": "disabled"}, None), (fields, {"Origin": "https://evil.example"})):
        refused = browser.post(f"/admin/users/{bob.user.id}/status", data, headers=headers)
        assert refused.status_code == 403, refused.text
        assert "Request refused" in refused.text
    assert stored_user(twofold, bob.user.id).status == "active"


# -- exempt accounts ----------------------------------------------------------------------------------------


def expires_in_days(twofold: Twofold, user_id: str) -> float:
    row = exemption_row(twofold, user_id)
    assert row is not None
    return (as_utc(row.expires_at) - utcnow()) / timedelta(days=1)


def test_exempt_accounts_save_applies_each_change_on_its_own(twofold, client):
    _, _, browser = admin_browser(twofold, client)
    acme = twofold.accounts.root_by_name("Acme")
    robot = service(twofold, "robot", "rpa")
    tester = service(twofold, "tester", "test_automation")
    bob = create_user(twofold, acme, "bob")
    extra = {name: service(twofold, name) for name in ("zero", "too-long", "words", "fine", "negative")}

    page = browser.get("/admin/identity-providers/local")
    assert page.status_code == 200, page.text
    assert '<h2 id="exempt-heading">Exempt Accounts</h2>' in page.text
    assert "No account is exempt." in page.text
    token = csrf_of(page)

    saved = browser.post(
        "/admin/identity-providers/local",
        {"csrf_token": token, "add_username": "robot", "add_days": "30", "add:tester": "365"},
    )
    assert saved.status_code == 303, saved.text
    assert saved.headers["location"] == "/admin/identity-providers/local?saved=1"
    assert 29.9 < expires_in_days(twofold, robot.user.id) <= 30
    assert 364.9 < expires_in_days(twofold, tester.user.id) <= 365
    listed = browser.get(saved.headers["location"])
    assert "Exempt Accounts saved." in listed.text
    assert f'<tr data-exempt="{robot.user.id}">' in listed.text and f'name="remove:{tester.user.id}"' in listed.text

    refused = browser.post(
        "/admin/identity-providers/local",
        {
            "csrf_token": token,
            "add:bob": "30",
            "add:zero": "0",
            "add:too-long": "366",
            "add:words": "abc",
            "add:negative": "-5",
            "add:nobody": "10",
            "add_username": "fine",
            "add_days": "10",
            f"remove:{robot.user.id}": "1",
            f"remove:{bob.user.id}": "1",
        },
    )
    assert refused.status_code == 422, refused.text
    messages = alerts(refused)
    assert any(
        m.startswith("bob was not exempted: human user accounts cannot be exempted after 2023-08-01") for m in messages
    ), messages
    assert "zero was not exempted: an exemption lasts 1 to 365 days." in messages
    assert "too-long was not exempted: an exemption lasts 1 to 365 days." in messages
    assert "negative was not exempted: an exemption lasts 1 to 365 days." in messages
    assert "words was not exempted: the expiry must be a number of days." in messages
    assert any(m.startswith("nobody was not exempted: no user named 'nobody'") for m in messages), messages
    assert any(m.startswith("Could not remove an exemption: this account is not on the exempt list") for m in messages)
    assert len(messages) == 7, messages
    # The valid changes of the same Save were applied all the same.
    assert 9.9 < expires_in_days(twofold, extra["fine"].user.id) <= 10
    assert exemption_row(twofold, robot.user.id) is None
    for name in ("zero", "too-long", "words", "negative"):
        assert exemption_row(twofold, extra[name].user.id) is None, name
    assert exemption_row(twofold, bob.user.id) is None
    assert exemption_row(twofold, tester.user.id) is not None

    # An empty number of days means the default, 90.
    assert browser.post("/admin/identity-providers/local", {"csrf_token": token, "add:robot": ""}).status_code == 303
    assert 89.9 < expires_in_days(twofold, robot.user.id) <= 90


def test_exempt_accounts_save_with_a_stale_step_up(twofold, client):
    """The staged Save is carried through the verification unchanged, even for the longest usernames."""
    _, alice, browser = admin_browser(twofold, client)
    robot = service(twofold, "robot", "rpa")
    # A username of 128 characters, the most there is, and another account named like its first part.
    long_name = "robot-" + "x" * 122
    long_robot = service(twofold, long_name, "test_automation")
    prefix_robot = service(twofold, long_name[:76], "test_automation")
    token = csrf_of(browser.get("/admin/identity-providers/local"))
    expire_step_up(twofold, str(alice.token))
    staged = {"add:robot": "20", f"add:{long_name}": "30", "add_username": long_name[:76], "add_days": "40"}
    asked = browser.post("/admin/identity-providers/local", {"csrf_token": token, **staged})
    assert is_verify_page(asked)
    assert exemption_row(twofold, robot.user.id) is None
    verified = browser.post("/profile/verify", {**form_fields(asked, "/profile/verify"), "code": str(alice.code)})
    action, posted = continue_form(verified)
    assert action == "/admin/identity-providers/local"
    assert {k: v for k, v in posted.items() if k != "csrf_token"} == staged
    assert browser.post(action, posted).status_code == 303
    assert 19.9 < expires_in_days(twofold, robot.user.id) <= 20
    assert 29.9 < expires_in_days(twofold, long_robot.user.id) <= 30
    assert 39.9 < expires_in_days(twofold, prefix_robot.user.id) <= 40


def test_identity_providers_page_leads_to_the_exempt_accounts(twofold, client):
    _, _, browser = admin_browser(twofold, client)
    page = browser.get("/admin/identity-providers")
    assert page.status_code == 200, page.text
    assert '<a href="/admin/identity-providers/local">Exempt Accounts</a>' in page.text
    assert "Local (username and password, with MFA)" in page.text


# -- audit log ------------------------------------------------------------------------------------------------


def test_audit_log_filters_and_paging(twofold, client):
    org, alice, browser = admin_browser(twofold, client)
    bob = enroll(client, create_user(twofold, twofold.accounts.root_by_name("Acme"), "bob"))
    rename_many(twofold, bob, 60)
    renamed = stored_events(twofold, org, tables.audit_events.c.type == "method.renamed")
    assert len(renamed) == 60

    first = browser.get("/admin/audit?type=method.renamed")
    first_rows = audit_rows(first)
    assert len(first_rows) == 50 and {t for t, _ in first_rows} == {"method.renamed"}
    found = OLDER_EVENTS.search(first.text)
    assert found, first.text
    second = browser.get(html.unescape(found.group(1)))
    second_rows = audit_rows(second)
    assert len(second_rows) == 10 and OLDER_EVENTS.search(second.text) is None
    assert not set(first_rows) & set(second_rows)
    assert len(set(first_rows) | set(second_rows)) == 60
    # Newest first: the last rename heads the first page, the first one ends the second.
    assert json.loads(first_rows[0][1])["to"] == "Name 0059"
    assert json.loads(second_rows[-1][1])["to"] == "Name 0000"

    # By user, given as a username or an id: events where alice acted or was the subject.
    alice_events = stored_events(
        twofold,
        org,
        or_(tables.audit_events.c.actor_id == alice.user.id, tables.audit_events.c.subject_id == alice.user.id),
    )
    assert 0 < len(alice_events) < 50
    by_name = audit_rows(browser.get("/admin/audit?user=alice"))
    assert len(by_name) == len(alice_events)
    assert audit_rows(browser.get(f"/admin/audit?user={alice.user.id}")) == by_name
    assert audit_rows(browser.get("/admin/audit?user=alice&type=method.renamed")) == []

    # Since a day: the day of the first rename has them all, the day after the last one nothing.
    first_day = min(as_utc(row.at) for row in renamed).date()
    after_last = max(as_utc(row.at) for row in stored_events(twofold, org)).date() + timedelta(days=1)
    assert audit_rows(browser.get(f"/admin/audit?type=method.renamed&since={first_day.isoformat()}")) == first_rows
    tomorrow = browser.get(f"/admin/audit?since={after_last.isoformat()}")
    assert audit_rows(tomorrow) == [] and "No events match." in tomorrow.text

    for bad in ("yesterday", "2026-02-30", "31/01/2026"):
        refused = browser.get(f"/admin/audit?since={quote(bad)}")
        assert refused.status_code == 422, (bad, refused.text)
        assert alerts(refused) == ["“Since” must be a date such as 2026-01-31"], bad
        assert "Audit Log" in refused.text and 'aria-label="Audit events"' not in refused.text
        export = browser.get(f"/admin/audit/export?since={quote(bad)}")
        assert export.status_code == 422 and "must be a date" in export.text
    bogus = browser.get("/admin/audit?cursor=bogus")
    assert bogus.status_code == 422 and "cursor is not one this server gave out" in bogus.text


def test_audit_export_has_every_matching_event(twofold, client):
    org, alice, browser = admin_browser(twofold, client)
    bob = enroll(client, create_user(twofold, twofold.accounts.root_by_name("Acme"), "bob"))
    # More than one of the export's internal pages of 1000.
    rename_many(twofold, bob, 1005)
    page = browser.get("/admin/audit?type=method.renamed")
    assert 'href="/admin/audit/export?type=method.renamed"' in page.text

    renamed = export_lines(browser.get("/admin/audit/export?type=method.renamed"))
    assert len(renamed) == 1005
    assert len({event["id"] for event in renamed}) == 1005
    assert {event["type"] for event in renamed} == {"method.renamed"}
    assert {event["details"]["to"] for event in renamed} == {f"Name {i:04}" for i in range(1005)}
    assert renamed[0]["details"]["to"] == "Name 1004"
    assert set(renamed[0]) == {"id", "at", "type", "actor_id", "subject_id", "ip", "details"}

    everything = export_lines(browser.get("/admin/audit/export"))
    stored = stored_events(twofold, org)
    assert sorted(event["id"] for event in everything) == sorted(row.id for row in stored)

    alice_only = export_lines(browser.get("/admin/audit/export?user=alice"))
    assert alice_only and all(alice.user.id in (e["actor_id"], e["subject_id"]) for e in alice_only)
    first_day = min(as_utc(row.at) for row in stored).date().isoformat()
    assert len(export_lines(browser.get(f"/admin/audit/export?type=method.renamed&since={first_day}"))) == 1005
    assert export_lines(browser.get("/admin/audit/export?type=no.such.type")) == []


# -- coverage ---------------------------------------------------------------------------------------------------


def test_the_mfa_coverage_page_and_the_overview_show_the_counts(twofold, client):
    org, alice, _ = build_organization(twofold, client)
    counted = report(client, org, alice.token)
    assert counted["users"] == 9
    browser = browser_for(client, alice)

    page = browser.get("/admin/mfa-report")
    assert page.status_code == 200, page.text
    text = flat(page)
    states = counted["by_state"]
    for row in (
        f"<tr><td>Enrolled</td><td>{states['enrolled']}</td></tr>",
        "<tr><td>Pending enrollment (registers a method at the next sign-in)</td>"
        f"<td>{states['pending_enrollment']}</td></tr>",
        f"<tr><td>Exempt (password only)</td><td>{states['exempt']}</td></tr>",
        f"<tr><td>Single sign-on (MFA at the identity provider)</td><td>{states['sso']}</td></tr>",
        f"<tr><th>All users</th><th>{counted['users']}</th></tr>",
        f"Also: {counted['locked']} locked, {counted['disabled']} disabled.",
    ):
        assert row in text, row
    by_type = counted["methods_by_type"][METHOD_TYPE]
    assert f"<tr><td>Test code</td><td>{by_type['methods']}</td><td>{by_type['users']}</td></tr>" in text
    assert (states["enrolled"], states["pending_enrollment"], states["exempt"], states["sso"]) == (5, 2, 1, 1)

    overview = flat(browser.get("/admin"))
    assert "9 users: 5 enrolled, 2 pending enrollment, 1 exempt, 1 through single sign-on." in overview
    assert 'aria-label="Unlock dave"' in overview
    assert 'aria-label="Enable erin"' in overview
    assert "<h3>Cloned authenticators</h3>" in overview and ">frank</a>" in overview
    assert "gus" not in overview  # Globex's locked, cloned account is not Acme's business
