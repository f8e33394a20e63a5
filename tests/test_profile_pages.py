"""The profile's "Manage Your Verification Methods" page and its step-up page (API.md "Web pages", R6): who may
open it, the verification that guards it, "Save" applying staged renames and removals all-or-nothing, an action
that met a stale step-up carried through the verification and finished after it, redirects that never leave the
site, CSRF on every form, adding an authenticator app, and new recovery codes.

httpx never sends a `Secure` cookie over plain http (DESIGN.md §8): the `Browser` of test_pages.py carries the
cookies by hand. Codes of the test method come from the server at enrollment; TOTP codes from Debian's `oathtool`."""

from __future__ import annotations

import html
import json
import re
from typing import Any
from urllib.parse import quote

from sqlalchemy import select

from twofold.container import Twofold
from twofold.storage.tables import verification_methods

from .support.flows import Account, bearer, create_organization, create_user, enroll, exempt, login
from .support.methods import METHOD_TYPE
from .support.totp import code_at_step, current_step, enroll_totp
from .test_admin_api import expire_step_up
from .test_mfa_report import add_test_method
from .test_pages import CSRF_INPUT, SESSION_COOKIE, Browser, alert
from .test_totp_pages import ENROLLMENT_ID, SECRET, code_outside_the_window, listed_recovery_codes

HIDDEN_INPUT = re.compile(r'<input type="hidden" name="([^"]*)" value="([^"]*)"')
LAST_METHOD = "You must keep at least one verification method"
OFF_SITE = ("//evil.example", "https://evil.example", "/\\evil", "/\\/evil.example")


def browser_for(client: Any, account: Account) -> Browser:
    """A browser holding the account's session cookie, as the login pages would have set it."""
    browser = Browser(client)
    browser.cookies[SESSION_COOKIE] = str(account.token)
    return browser


def form_fields(page: Any, action: str) -> dict[str, str]:
    """The hidden fields of the page's first POST form to ``action``, as a browser would send them."""
    found = re.search(rf'<form method="post" action="{re.escape(action)}"[^>]*>(.*?)</form>', page.text, re.S)
    assert found, page.text
    return {html.unescape(name): html.unescape(value) for name, value in HIDDEN_INPUT.findall(found.group(1))}


def continue_form(page: Any) -> tuple[str, dict[str, str]]:
    """The "Verified" page's self-submitting form: where it posts and what."""
    assert page.status_code == 200, page.text
    assert "<h1>Verified</h1>" in page.text
    found = re.search(r'<form method="post" action="([^"]*)" data-auto-submit>(.*?)</form>', page.text, re.S)
    assert found, page.text
    fields = {html.unescape(name): html.unescape(value) for name, value in HIDDEN_INPUT.findall(found.group(2))}
    return html.unescape(found.group(1)), fields


def methods_of(twofold: Twofold, user_id: str) -> dict[str, str]:
    """The user's active methods as stored: id -> name."""
    with twofold.uow(read_only=True) as uow:
        return {m.id: m.name for m in uow.methods.active_for_user(user_id)}


def stored_statuses(twofold: Twofold, user_id: str) -> list[str]:
    """Every stored method row of the user (pending enrollments too), by status."""
    with twofold.uow(read_only=True) as uow:
        query = select(verification_methods.c.status).where(verification_methods.c.user_id == user_id)
        return sorted(uow.session.execute(query).scalars().all())


def is_verify_page(page: Any) -> bool:
    return "<h1>Verify it's you</h1>" in page.text and '<label for="code">Verification code</label>' in page.text


def csrf_of(page: Any) -> str:
    found = CSRF_INPUT.search(page.text)
    assert found, page.text
    return found.group(1)


def bob_with_methods(twofold: Twofold, client: Any, *names: str) -> Account:
    """Bob enrolled with the test method ("Test code"), plus one more test method per name."""
    organization, _ = create_organization(twofold)
    bob = enroll(client, create_user(twofold, organization, "bob"))
    for name in names:
        add_test_method(client, bob, name)
    return bob


def step_up_fields(verify_page: Any, code: str) -> dict[str, str]:
    """The verification page's code form, filled in."""
    return {**form_fields(verify_page, "/profile/verify"), "code": code}


# -- who may open the page ------------------------------------------------------------------------------


def test_signed_out_visitors_are_sent_to_the_login(twofold, client):
    browser = Browser(client)
    for path in ("/profile/mfa", "/profile/verify"):
        response = browser.get(path)
        assert response.status_code == 303, response.text
        assert response.headers["location"].startswith("/login")
    browser.cookies[SESSION_COOKIE] = "tfs_" + "x" * 43  # a dead session
    assert browser.get("/profile/mfa").headers["location"].startswith("/login")
    token = browser.csrf("/login")
    for path in ("/profile/mfa", "/profile/verify", "/profile/mfa/add", "/profile/recovery-codes"):
        response = browser.post(path, {"csrf_token": token, "remove:x": "1", "type": METHOD_TYPE})
        assert response.status_code == 303, (path, response.text)
        assert response.headers["location"].startswith("/login")


def test_an_exempt_session_gets_a_page_that_says_so(twofold, client):
    organization, _ = create_organization(twofold)
    robot = create_user(twofold, organization, "robot", kind="service", service_type="rpa")
    exempt(twofold, robot)
    signed_in = login(client, robot)
    assert signed_in.json()["status"] == "authenticated", signed_in.text
    robot.token = signed_in.json()["token"]
    browser = browser_for(client, robot)

    for path in ("/profile/mfa", "/profile/verify"):
        page = browser.get(path)
        assert page.status_code == 403, page.text
        assert "This account is exempt from multi-factor authentication" in page.text
        assert ">Add</button>" not in page.text
    # The forms refuse the same way, whatever was posted: no method, no recovery code appears.
    token = csrf_of(browser.get("/"))
    for path, data in (
        ("/profile/mfa/add", {"type": METHOD_TYPE}),
        ("/profile/mfa", {"remove:x": "1"}),
        ("/profile/recovery-codes", {}),
        ("/profile/mfa/complete", {"enrollment_id": "x", "code": "1"}),
    ):
        refused = browser.post(path, {"csrf_token": token, **data})
        assert refused.status_code == 403, (path, refused.text)
        assert "This account is exempt from multi-factor authentication" in refused.text
        assert ">Add</button>" not in refused.text
    assert methods_of(twofold, robot.user.id) == {}
    assert twofold.methods.recovery_codes_remaining(robot.user.id) == 0


def test_a_fresh_session_sees_its_methods_with_rename_and_remove(twofold, client):
    bob = bob_with_methods(twofold, client, "Desk token")
    methods = methods_of(twofold, bob.user.id)
    assert sorted(methods.values()) == ["Desk token", "Test code"]
    page = browser_for(client, bob).get("/profile/mfa")
    assert page.status_code == 200, page.text
    assert "<h1>Manage Your Verification Methods</h1>" in page.text
    assert page.text.count(">Add</button>") == 1
    assert 'aria-label="Add Test code"' in page.text
    for method_id, name in methods.items():
        assert f'aria-label="Rename {name}"' in page.text
        assert f'aria-label="Remove {name}"' in page.text
        assert f'name="rename:{method_id}"' in page.text
        assert f'<input type="hidden" name="remove:{method_id}" value="" data-remove>' in page.text
    assert '<button type="submit" class="primary" data-save>Save</button>' in page.text
    assert 'formaction="/profile/recovery-codes"' in page.text


def test_the_page_offers_an_add_for_every_available_product_method(product_twofold, product_client):
    organization, _ = create_organization(product_twofold)
    bob = enroll_totp(product_client, create_user(product_twofold, organization, "bob"), name="Phone")
    carol = create_user(product_twofold, organization, "carol")
    enrollable = login(product_client, carol).json()["enrollable_types"]
    assert "totp" in enrollable
    page = browser_for(product_client, bob.account).get("/profile/mfa")
    assert page.status_code == 200, page.text
    assert page.text.count(">Add</button>") == len(enrollable)
    for method_type in enrollable:
        label = product_twofold.registry.method(method_type).display_name
        assert f'aria-label="Add {label}"' in page.text, label
    assert 'aria-label="Rename Phone"' in page.text and 'aria-label="Remove Phone"' in page.text


# -- the step-up ----------------------------------------------------------------------------------------


def test_a_stale_step_up_asks_for_a_verification_first(twofold, client):
    bob = bob_with_methods(twofold, client)
    expire_step_up(twofold, str(bob.token))
    browser = browser_for(client, bob)
    page = browser.get("/profile/mfa")
    assert page.status_code == 200, page.text
    assert is_verify_page(page)
    assert "<h1>Manage Your Verification Methods</h1>" not in page.text
    fields = form_fields(page, "/profile/verify")
    assert fields["next"] == "/profile/mfa" and fields["type"] == METHOD_TYPE and "resume" not in fields

    verified = browser.post("/profile/verify", step_up_fields(page, str(bob.code)))
    assert verified.status_code == 303, verified.text
    assert verified.headers["location"] == "/profile/mfa"
    assert "<h1>Manage Your Verification Methods</h1>" in browser.get("/profile/mfa").text


def test_the_step_up_never_redirects_off_the_site(twofold, client):
    bob = bob_with_methods(twofold, client)
    browser = browser_for(client, bob)
    for target in OFF_SITE:
        shown = browser.get(f"/profile/verify?next={quote(target, safe='')}")
        assert shown.status_code == 200, shown.text
        assert form_fields(shown, "/profile/verify")["next"] == "/"
        expire_step_up(twofold, str(bob.token))
        page = browser.get("/profile/mfa")
        assert is_verify_page(page)
        verified = browser.post("/profile/verify", {**step_up_fields(page, str(bob.code)), "next": target})
        assert verified.status_code == 303, (target, verified.text)
        assert verified.headers["location"] == "/", target
    # An on-site path is followed.
    page = browser.get("/profile/verify")
    verified = browser.post("/profile/verify", {**step_up_fields(page, str(bob.code)), "next": "/profile/mfa?x=1"})
    assert verified.headers["location"] == "/profile/mfa?x=1"


def test_a_wrong_code_is_refused_and_the_step_up_stays_stale(twofold, client):
    bob = bob_with_methods(twofold, client)
    expire_step_up(twofold, str(bob.token))
    browser = browser_for(client, bob)
    page = browser.get("/profile/mfa")
    wrong = browser.post("/profile/verify", step_up_fields(page, "not the code"))
    assert wrong.status_code == 400, wrong.text
    assert alert(wrong).startswith("That code did not work")
    assert is_verify_page(wrong)
    assert form_fields(wrong, "/profile/verify")["next"] == "/profile/mfa"
    assert is_verify_page(browser.get("/profile/mfa"))


# -- Save ---------------------------------------------------------------------------------------------


def test_save_applies_renames_and_removals_together(twofold, client):
    bob = bob_with_methods(twofold, client, "Desk token", "Spare")
    ids = {name: method_id for method_id, name in methods_of(twofold, bob.user.id).items()}
    browser = browser_for(client, bob)
    token = csrf_of(browser.get("/profile/mfa"))
    saved = browser.post(
        "/profile/mfa",
        {
            "csrf_token": token,
            f"rename:{ids['Test code']}": "  Main token ",
            f"remove:{ids['Spare']}": "1",
            f"remove:{ids['Desk token']}": "",  # not staged: the page sends the field empty
        },
    )
    assert saved.status_code == 303, saved.text
    assert saved.headers["location"] == "/profile/mfa?saved=1"
    assert methods_of(twofold, bob.user.id) == {ids["Test code"]: "Main token", ids["Desk token"]: "Desk token"}
    page = browser.get("/profile/mfa?saved=1")
    assert "Your changes were saved." in page.text
    assert 'aria-label="Remove Main token"' in page.text and "Spare" not in page.text
    # Nothing staged: nothing to do.
    assert browser.post("/profile/mfa", {"csrf_token": token}).headers["location"] == "/profile/mfa?saved=1"


def test_save_is_all_or_nothing(twofold, client):
    bob = bob_with_methods(twofold, client, "Desk token")
    before = methods_of(twofold, bob.user.id)
    ids = {name: method_id for method_id, name in before.items()}
    browser = browser_for(client, bob)
    token = csrf_of(browser.get("/profile/mfa"))

    def save(fields: dict[str, str]) -> Any:
        return browser.post("/profile/mfa", {"csrf_token": token, **fields})

    # Removing every method, with a valid rename in the same Save: refused, and the rename is not applied.
    everything = save(
        {f"remove:{ids['Test code']}": "1", f"remove:{ids['Desk token']}": "1", f"rename:{ids['Test code']}": "New"}
    )
    assert everything.status_code == 409, everything.text
    assert LAST_METHOD in alert(everything)
    assert "<h1>Manage Your Verification Methods</h1>" in everything.text

    # Two methods may not end up with one name (case aside).
    duplicate = save({f"rename:{ids['Test code']}": "desk TOKEN"})
    assert duplicate.status_code == 409, duplicate.text
    assert "Your changes were not saved." in alert(duplicate)
    swapped_into_one = save({f"rename:{ids['Test code']}": "Same", f"rename:{ids['Desk token']}": "same"})
    assert swapped_into_one.status_code == 409, swapped_into_one.text

    unknown = save({"rename:no-such-method": "Name", f"rename:{ids['Test code']}": "Renamed"})
    assert unknown.status_code == 404, unknown.text
    assert "Your changes were not saved." in alert(unknown)
    assert save({"remove:no-such-method": "1"}).status_code == 404

    for bad in ("x" * 65, "tab\there", "line\nbreak", "bell\x07", "", "   "):
        refused = save({f"rename:{ids['Test code']}": bad, f"remove:{ids['Desk token']}": "1"})
        assert refused.status_code == 422, (bad, refused.text)
        assert "Your changes were not saved." in alert(refused)
    assert methods_of(twofold, bob.user.id) == before


def test_a_removal_with_a_stale_step_up_is_finished_after_the_verification(twofold, client):
    bob = bob_with_methods(twofold, client, "Desk token")
    ids = {name: method_id for method_id, name in methods_of(twofold, bob.user.id).items()}
    browser = browser_for(client, bob)
    token = csrf_of(browser.get("/profile/mfa"))
    expire_step_up(twofold, str(bob.token))
    staged = {f"rename:{ids['Test code']}": "Main token", f"remove:{ids['Desk token']}": "1"}

    asked = browser.post("/profile/mfa", {"csrf_token": token, **staged})
    assert asked.status_code == 200, asked.text
    assert is_verify_page(asked)
    fields = form_fields(asked, "/profile/verify")
    assert json.loads(fields["resume"]) == {"action": "/profile/mfa", "fields": staged}
    assert len(methods_of(twofold, bob.user.id)) == 2  # nothing applied yet, not even the rename

    # A wrong code keeps what was staged for the next try.
    wrong = browser.post("/profile/verify", {**fields, "code": "not the code"})
    assert wrong.status_code == 400
    assert json.loads(form_fields(wrong, "/profile/verify")["resume"]) == json.loads(fields["resume"])

    verified = browser.post("/profile/verify", {**fields, "code": str(bob.code)})
    action, posted = continue_form(verified)
    assert action == "/profile/mfa"
    new_token = posted.pop("csrf_token")
    assert new_token and posted == staged
    assert len(methods_of(twofold, bob.user.id)) == 2

    done = browser.post(action, {"csrf_token": new_token, **posted})
    assert done.status_code == 303, done.text
    assert done.headers["location"] == "/profile/mfa?saved=1"
    assert methods_of(twofold, bob.user.id) == {ids["Test code"]: "Main token"}


def test_a_resume_pointing_elsewhere_is_ignored(twofold, client):
    bob = bob_with_methods(twofold, client, "Desk token")
    browser = browser_for(client, bob)
    page = browser.get("/profile/verify?next=/profile/mfa")
    fields = step_up_fields(page, str(bob.code))
    for action in (
        "/logout",
        "https://evil",
        "//evil.example/profile/",
        "/profile/../logout",
        "/admin/%2e%2e/logout",
        "/profile/%2E./logout",
    ):
        resume = json.dumps({"action": action, "fields": {"remove:x": "1"}})
        response = browser.post("/profile/verify", {**fields, "resume": resume})
        assert response.status_code == 303, (action, response.text)
        assert response.headers["location"] == "/profile/mfa", action
    for malformed in (
        "not json",
        "[]",
        json.dumps({"action": "/profile/mfa", "fields": "x"}),
        json.dumps({"action": "/profile/mfa", "fields": {"remove:x": ["1"]}}),
        json.dumps({"fields": {}}),
    ):
        response = browser.post("/profile/verify", {**fields, "resume": malformed})
        assert response.status_code == 303 and response.headers["location"] == "/profile/mfa", malformed
    assert len(methods_of(twofold, bob.user.id)) == 2


def test_forms_without_the_csrf_token_or_from_another_origin_change_nothing(twofold, client):
    bob = bob_with_methods(twofold, client, "Desk token")
    before = methods_of(twofold, bob.user.id)
    ids = {name: method_id for method_id, name in before.items()}
    browser = browser_for(client, bob)
    token = csrf_of(browser.get("/profile/mfa"))
    staged = {f"remove:{ids['Desk token']}": "1", f"rename:{ids['Test code']}": "Changed"}
    codes_before = twofold.methods.recovery_codes_remaining(bob.user.id)
    for path in ("/profile/mfa", "/profile/recovery-codes", "/profile/mfa/add", "/profile/verify"):
        for data, headers in (
            (staged, None),
            ({**staged, "csrf_token": "0" * 40}, None),
            ({**staged, "csrf_token": token}, {"Origin": "https://evil.example"}),
        ):
            refused = browser.post(path, {**data, "type": METHOD_TYPE, "code": str(bob.code)}, headers=headers)
            assert refused.status_code == 403, (path, refused.text)
            assert "Request refused" in refused.text
    assert methods_of(twofold, bob.user.id) == before
    assert twofold.methods.recovery_codes_remaining(bob.user.id) == codes_before
    assert stored_statuses(twofold, bob.user.id) == ["active", "active"]  # no enrollment was begun
    # A verification posted from elsewhere did not renew the step-up either.
    expire_step_up(twofold, str(bob.token))
    page = browser.get("/profile/mfa")
    assert is_verify_page(page)
    refused = browser.post(
        "/profile/verify", step_up_fields(page, str(bob.code)), headers={"Origin": "https://evil.example"}
    )
    assert refused.status_code == 403
    assert is_verify_page(browser.get("/profile/mfa"))


# -- adding a method ------------------------------------------------------------------------------------


def test_add_an_authenticator_app_from_the_profile(product_twofold, product_client):
    organization, _ = create_organization(product_twofold)
    bob = enroll_totp(product_client, create_user(product_twofold, organization, "bob"), name="Phone")
    browser = browser_for(product_client, bob.account)
    manage = browser.get("/profile/mfa")
    assert 'formaction="/profile/mfa/add" name="type" value="totp"' in manage.text

    started = browser.post("/profile/mfa/add", {"csrf_token": csrf_of(manage), "type": "totp"})
    assert started.status_code == 200, started.text
    assert "<h1>Add an authenticator app</h1>" in started.text
    found = SECRET.search(started.text)
    assert found, started.text
    secret = found.group(1)
    fields = form_fields(started, "/profile/mfa/complete")
    enrollment_id = fields["enrollment_id"]
    assert 'href="/profile/mfa">Back</a>' in started.text

    step = current_step()
    wrong = browser.post("/profile/mfa/complete", {**fields, "code": code_outside_the_window(secret, step)})
    assert wrong.status_code == 400, wrong.text
    assert "<h1>Add an authenticator app</h1>" in wrong.text
    assert alert(wrong).startswith("That code did not work.")
    # Asked again on the same enrollment: no new secret, no QR code.
    assert ENROLLMENT_ID.search(wrong.text).group(1) == enrollment_id  # type: ignore[union-attr]
    assert secret not in wrong.text and "<svg" not in wrong.text
    assert sorted(methods_of(product_twofold, bob.account.user.id).values()) == ["Phone"]

    code = code_at_step(secret, current_step())  # the new app's secret, not the sign-in's
    done = browser.post("/profile/mfa/complete", {**form_fields(wrong, "/profile/mfa/complete"), "code": code})
    assert done.status_code == 303, done.text
    methods = methods_of(product_twofold, bob.account.user.id)
    assert len(methods) == 2 and enrollment_id in methods
    assert done.headers["location"] == f"/profile/mfa?added={enrollment_id}"
    page = browser.get(done.headers["location"])
    assert f"{methods[enrollment_id]} was added." in page.text
    assert f'aria-label="Remove {methods[enrollment_id]}"' in page.text


def test_add_a_method_without_its_own_template(twofold, client):
    """A method with no page of its own gets the generic code form, which completes on the profile."""
    bob = bob_with_methods(twofold, client)
    browser = browser_for(client, bob)
    manage = browser.get("/profile/mfa")
    started = browser.post("/profile/mfa/add", {"csrf_token": csrf_of(manage), "type": METHOD_TYPE, "name": "Spare"})
    assert started.status_code == 200, started.text
    assert "<h1>Add Test code</h1>" in started.text
    code = re.search(r"<dt>Code</dt><dd><code>([^<]+)</code></dd>", started.text)
    assert code, started.text
    fields = form_fields(started, "/profile/mfa/complete")
    assert 'href="/profile/mfa">Back</a>' in started.text

    wrong = browser.post("/profile/mfa/complete", {**fields, "code": "not the code"})
    assert wrong.status_code == 400, wrong.text
    assert fields["enrollment_id"] == form_fields(wrong, "/profile/mfa/complete")["enrollment_id"]
    assert code.group(1) not in wrong.text

    done = browser.post("/profile/mfa/complete", {**fields, "code": code.group(1)})
    assert done.status_code == 303, done.text
    assert done.headers["location"] == f"/profile/mfa?added={fields['enrollment_id']}"
    assert sorted(methods_of(twofold, bob.user.id).values()) == ["Spare", "Test code"]
    assert "Spare was added." in browser.get(done.headers["location"]).text


def test_add_with_a_stale_step_up_continues_after_the_verification(twofold, client):
    bob = bob_with_methods(twofold, client)
    browser = browser_for(client, bob)
    token = csrf_of(browser.get("/profile/mfa"))
    expire_step_up(twofold, str(bob.token))
    asked = browser.post("/profile/mfa/add", {"csrf_token": token, "type": METHOD_TYPE, "name": "Spare"})
    assert is_verify_page(asked)
    verified = browser.post("/profile/verify", step_up_fields(asked, str(bob.code)))
    action, posted = continue_form(verified)
    assert action == "/profile/mfa/add"
    assert {k: v for k, v in posted.items() if k != "csrf_token"} == {"type": METHOD_TYPE, "name": "Spare"}
    started = browser.post(action, posted)
    assert started.status_code == 200, started.text
    assert "<h1>Add Test code</h1>" in started.text


# -- recovery codes ---------------------------------------------------------------------------------------


def test_new_recovery_codes_replace_the_old_ones(product_twofold, product_client):
    organization, _ = create_organization(product_twofold)
    bob = enroll_totp(product_client, create_user(product_twofold, organization, "bob"))
    assert len(bob.recovery_codes) == 10
    browser = browser_for(product_client, bob.account)
    token = csrf_of(browser.get("/profile/mfa"))

    page = browser.post("/profile/recovery-codes", {"csrf_token": token})
    assert page.status_code == 200, page.text
    assert "<h1>Your recovery codes</h1>" in page.text
    codes = listed_recovery_codes(page)
    assert len(codes) == 10 and len(set(codes)) == 10
    assert not set(codes) & set(bob.recovery_codes)
    assert '<a class="button primary" href="/profile/mfa">I have saved these codes</a>' in page.text
    assert product_twofold.methods.recovery_codes_remaining(bob.account.user.id) == 10

    def sign_in_with(code: str) -> Any:
        transaction = login(product_client, bob.account).json()["transaction"]
        return product_client.post(
            "/api/v1/login/verify", json={"transaction": transaction, "type": "recovery_code", "code": code}
        )

    assert sign_in_with(bob.recovery_codes[0]).status_code == 401
    assert sign_in_with(codes[0]).status_code == 200

    # With a stale step-up the codes come after a verification, and only then.
    expire_step_up(product_twofold, str(bob.token))
    asked = browser.post("/profile/recovery-codes", {"csrf_token": token})
    assert is_verify_page(asked)
    assert product_twofold.methods.recovery_codes_remaining(bob.account.user.id) == 9
    verified = browser.post("/profile/verify", step_up_fields(asked, bob.next_code()))
    action, posted = continue_form(verified)
    assert action == "/profile/recovery-codes"
    again = browser.post(action, posted)
    assert again.status_code == 200, again.text
    newest = listed_recovery_codes(again)
    assert len(newest) == 10 and not set(newest) & set(codes)
    assert sign_in_with(codes[1]).status_code == 401
    me = product_client.get("/api/v1/me", headers=bearer(bob.token))
    assert me.status_code == 200


def test_trying_another_method_keeps_the_interrupted_form(twofold, client):
    """"Try another method" on a step-up that carries staged changes is a post that carries them on, so
    switching to a recovery code, say, loses nothing the user staged."""
    bob = bob_with_methods(twofold, client, "Desk token")
    ids = {name: method_id for method_id, name in methods_of(twofold, bob.user.id).items()}
    browser = browser_for(client, bob)
    token = csrf_of(browser.get("/profile/mfa"))
    expire_step_up(twofold, str(bob.token))
    staged = {f"remove:{ids['Desk token']}": "1"}
    asked = browser.post("/profile/mfa", {"csrf_token": token, **staged})
    chooser = form_fields(asked, "/profile/verify")
    assert 'form="choose-method" name="choose" value="choose"' in asked.text  # a button, not a bare link

    choices = browser.post("/profile/verify", {**chooser, "choose": "choose"})
    assert choices.status_code == 200 and "Try another method" in choices.text
    assert 'name="choose" value="test_code"' in choices.text
    picked = browser.post("/profile/verify", {**chooser, "choose": "test_code"})
    fields = form_fields(picked, "/profile/verify")
    assert json.loads(fields["resume"]) == {"action": "/profile/mfa", "fields": staged}
    assert len(methods_of(twofold, bob.user.id)) == 2  # choosing verifies nothing and applies nothing

    verified = browser.post("/profile/verify", {**fields, "type": METHOD_TYPE, "code": str(bob.code)})
    action, posted = continue_form(verified)
    assert (action, {k: v for k, v in posted.items() if k != "csrf_token"}) == ("/profile/mfa", staged)
