"""The pages of issue 3 with the product's methods: enrolling an authenticator app during login (QR code, the
secret in groups, "Verification code", "Verify"), the recovery codes page ("Download as text", "I have saved
these codes"), and the verification step with TOTP and recovery codes ("Try another method").

Cookies are carried by the `Browser` of test_pages.py (httpx never sends `Secure` cookies over plain http,
DESIGN.md §8). Codes come from Debian's `oathtool`, never from Twofold's own TOTP code."""

from __future__ import annotations

import html
import re
from typing import Any
from urllib.parse import unquote

from sqlalchemy import func, select

from twofold.storage.tables import recovery_codes, sessions, verification_methods

from .support.flows import bearer, create_organization, create_user, login
from .support.totp import TotpAccount, code_at_step, current_step, enroll_totp
from .test_pages import CSRF_INPUT, LOGIN_COOKIE, SESSION_COOKIE, Browser, alert, assert_host_cookie, set_cookies

SECRET = re.compile(r'<code class="secret" data-secret="([A-Z2-7]+)">([^<]*)</code>')
ENROLLMENT_ID = re.compile(r'<input type="hidden" name="enrollment_id" value="([^"]+)">')
CODES_LIST = re.compile(r'<ul class="codes" aria-label="Recovery codes">(.*?)</ul>', re.S)
LISTED_CODE = re.compile(r"<li><code>([^<]*)</code></li>")
DOWNLOAD_LINK = re.compile(r'<a class="button" download="[^"]*"\s+href="([^"]*)">Download as text</a>')
STATUS = re.compile(r'<p class="notice" role="status">([^<]*)</p>')
RECOVERY_CODE_SHAPE = re.compile(r"[0-9a-hjkmnp-tv-z]{4}(-[0-9a-hjkmnp-tv-z]{4}){3}")
VERIFY_PAGE_TEXTS = ('<label for="code">Verification code</label>', ">Verify</button>", ">Try another method</a>")
RECOVERY_CODE_CHOICE = '<a href="/login/verify?method=recovery_code">Recovery code</a>'


def csrf_of(page: Any) -> str:
    found = CSRF_INPUT.search(page.text)
    assert found, page.text
    return found.group(1)


def status_text(page: Any) -> str:
    found = STATUS.search(page.text)
    assert found, page.text
    return html.unescape(found.group(1))


def listed_recovery_codes(page: Any) -> list[str]:
    found = CODES_LIST.search(page.text)
    assert found, page.text
    return [html.unescape(code) for code in LISTED_CODE.findall(found.group(1))]


def code_outside_the_window(secret: str, step: int) -> str:
    """A well-formed code the server must refuse: an old step's, different from every code it accepts now."""
    accepted = {code_at_step(secret, s) for s in range(step - 1, step + 3)}  # the clock may move on meanwhile
    candidate = step - 10
    while code_at_step(secret, candidate) in accepted:
        candidate -= 1
    return code_at_step(secret, candidate)


def methods_of(twofold: Any, user_id: str) -> list[str]:
    """The statuses of the user's verification methods, as stored."""
    with twofold.uow(read_only=True) as uow:
        query = select(verification_methods.c.status).where(verification_methods.c.user_id == user_id)
        return sorted(uow.session.execute(query).scalars().all())


def count_rows(twofold: Any, table: Any, user_id: str) -> int:
    with twofold.uow(read_only=True) as uow:
        query = select(func.count()).select_from(table).where(table.c.user_id == user_id)
        return int(uow.session.execute(query).scalar_one())


def attempts_left_after(twofold: Any, failures: int) -> int:
    return int(twofold.settings.transaction_max_failures) - failures


def start_verification(client: Any, enrolled: TotpAccount) -> tuple[Browser, Any]:
    """The password step on the pages, for an account that has a method: the verification page."""
    browser = Browser(client)
    response = browser.sign_in_password(enrolled.account.user.username, enrolled.account.password)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/login/verify"
    page = browser.get("/login/verify")
    assert page.status_code == 200, page.text
    return browser, page


def amr_of(client: Any, browser: Browser) -> list[str]:
    me = client.get("/api/v1/me", headers=bearer(browser.cookies[SESSION_COOKIE]))
    assert me.status_code == 200, me.text
    return list(me.json()["session"]["amr"])


# -- forced enrollment of an authenticator app ---------------------------------------------------------


def test_forced_enrollment_of_an_authenticator_app_on_the_pages(product_twofold, product_client):
    organization, _ = create_organization(product_twofold)
    bob = create_user(product_twofold, organization, "bob")
    browser = Browser(product_client)
    response = browser.sign_in_password("bob", bob.password)
    assert response.status_code == 303
    assert response.headers["location"] == "/login/enroll"

    choices = browser.get("/login/enroll")
    assert choices.status_code == 200
    assert "<h1>Manage Your Verification Methods</h1>" in choices.text
    assert 'aria-label="Add Authenticator app">Add</button>' in choices.text
    assert '<input type="hidden" name="type" value="totp">' in choices.text

    started = browser.post("/login/enroll", {"csrf_token": csrf_of(choices), "type": "totp"})
    assert started.status_code == 200, started.text
    assert "<h1>Add an authenticator app</h1>" in started.text
    assert "<svg" in started.text  # the QR code, inline
    assert "QR code for your authenticator app" in started.text
    found = SECRET.search(started.text)
    assert found, started.text
    secret, grouped = found.group(1), found.group(2)
    assert len(secret) == 32  # 160 bits in base32
    groups = grouped.split(" ")
    assert all(len(group) == 4 for group in groups), grouped
    assert "".join(groups) == secret
    for text in ('<label for="code">Verification code</label>', ">Verify</button>"):
        assert text in started.text, text
    enrollment_id = ENROLLMENT_ID.search(started.text).group(1)  # type: ignore[union-attr]
    token = csrf_of(started)
    step = current_step()

    wrong = browser.post(
        "/login/enroll/complete",
        {"csrf_token": token, "enrollment_id": enrollment_id, "code": code_outside_the_window(secret, step)},
    )
    assert wrong.status_code == 400, wrong.text
    # The same enrollment asks again for a code (the app already holds the secret): no new scan.
    assert "<h1>Add an authenticator app</h1>" in wrong.text
    assert alert(wrong).startswith(f"That code did not work. {attempts_left_after(product_twofold, 1)} attempts left.")
    assert f'name="enrollment_id" value="{enrollment_id}"' in wrong.text
    assert "<svg" not in wrong.text and secret not in wrong.text
    assert SESSION_COOKIE not in set_cookies(wrong)
    assert methods_of(product_twofold, bob.user.id) == ["pending"]
    assert count_rows(product_twofold, recovery_codes, bob.user.id) == 0
    assert count_rows(product_twofold, sessions, bob.user.id) == 0
    assert browser.get("/").headers["location"] == "/login"

    done = browser.post(
        "/login/enroll/complete",
        {"csrf_token": token, "enrollment_id": enrollment_id, "code": code_at_step(secret, step)},
    )
    assert done.status_code == 200, done.text
    assert "<h1>Your recovery codes</h1>" in done.text
    cookies = set_cookies(done)
    assert_host_cookie(cookies[SESSION_COOKIE])
    assert LOGIN_COOKIE not in browser.cookies
    assert methods_of(product_twofold, bob.user.id) == ["active"]

    codes = listed_recovery_codes(done)
    assert len(codes) == 10
    assert len(set(codes)) == 10
    assert all(RECOVERY_CODE_SHAPE.fullmatch(code) for code in codes), codes
    assert count_rows(product_twofold, recovery_codes, bob.user.id) == 10
    download = DOWNLOAD_LINK.search(done.text)
    assert download, done.text
    href = html.unescape(download.group(1))
    assert href.startswith("data:text/plain;charset=utf-8,")
    downloaded = unquote(href.removeprefix("data:text/plain;charset=utf-8,"))
    assert all(code in downloaded.splitlines() for code in codes), downloaded
    assert '<a class="button primary" href="/">I have saved these codes</a>' in done.text

    home = browser.get("/")
    assert home.status_code == 200
    assert "Welcome, bob" in home.text
    assert "<dt>Unused recovery codes</dt><dd>10</dd>" in home.text
    assert amr_of(product_client, browser) == ["pwd", "otp", "mfa"]
    # The codes on the page are the account's: one of them signs in (through the API here).
    transaction = login(product_client, bob).json()["transaction"]
    recovered = product_client.post(
        "/api/v1/login/verify", json={"transaction": transaction, "type": "recovery_code", "code": codes[3]}
    )
    assert recovered.status_code == 200, recovered.text
    assert recovered.json()["recovery_codes_remaining"] == 9


# -- the verification step --------------------------------------------------------------------------------


def test_the_verification_step_offers_recovery_codes_while_some_are_unused(product_twofold, product_client):
    organization, _ = create_organization(product_twofold)
    bob = enroll_totp(product_client, create_user(product_twofold, organization, "bob"))
    browser, page = start_verification(product_client, bob)
    for text in VERIFY_PAGE_TEXTS:
        assert text in page.text, text
    assert '<input type="hidden" name="type" value="totp">' in page.text
    assert 'href="/login/verify?method=choose"' in page.text

    choose = browser.get("/login/verify?method=choose")
    assert choose.status_code == 200
    assert '<a href="/login/verify?method=totp">Authenticator app: enter a code from it</a>' in choose.text
    assert RECOVERY_CODE_CHOICE in choose.text

    # Spend every code (through the API), and the choice is gone.
    for code in bob.recovery_codes:
        transaction = login(product_client, bob.account).json()["transaction"]
        used = product_client.post(
            "/api/v1/login/verify", json={"transaction": transaction, "type": "recovery_code", "code": code}
        )
        assert used.status_code == 200, used.text
    assert product_twofold.methods.recovery_codes_remaining(bob.account.user.id) == 0
    browser, _ = start_verification(product_client, bob)
    none_left = browser.get("/login/verify?method=choose")
    assert none_left.status_code == 200
    assert "Recovery code</a>" not in none_left.text
    assert "method=recovery_code" not in none_left.text
    assert "You have no unused recovery codes." in none_left.text
    assert '<a href="/login/verify?method=totp">Authenticator app: enter a code from it</a>' in none_left.text


def test_sign_in_with_a_recovery_code_on_the_page(product_twofold, product_client):
    organization, _ = create_organization(product_twofold)
    bob = enroll_totp(product_client, create_user(product_twofold, organization, "bob"))
    browser, _ = start_verification(product_client, bob)
    page = browser.get("/login/verify?method=recovery_code")
    assert page.status_code == 200
    for text in VERIFY_PAGE_TEXTS:
        assert text in page.text, text
    assert '<input type="hidden" name="type" value="recovery_code">' in page.text

    # Typed as people do: upper case, with spaces around.
    typed = f"  {bob.recovery_codes[0].upper()} "
    done = browser.post("/login/verify", {"csrf_token": csrf_of(page), "type": "recovery_code", "code": typed})
    assert done.status_code == 303, done.text
    assert done.headers["location"] == "/?signed_in_with=recovery_code"
    assert_host_cookie(set_cookies(done)[SESSION_COOKIE])
    home = browser.get("/?signed_in_with=recovery_code")
    assert home.status_code == 200
    assert status_text(home) == "You signed in with a recovery code. You have 9 unused recovery codes left."
    assert "<dt>Unused recovery codes</dt><dd>9</dd>" in home.text
    assert amr_of(product_client, browser) == ["pwd", "mfa"]

    # The same code never works twice.
    again, page = start_verification(product_client, bob)
    page = again.get("/login/verify?method=recovery_code")
    refused = again.post(
        "/login/verify", {"csrf_token": csrf_of(page), "type": "recovery_code", "code": bob.recovery_codes[0]}
    )
    assert refused.status_code == 401, refused.text
    assert alert(refused) == f"That code did not work. {attempts_left_after(product_twofold, 1)} attempts left."
    assert SESSION_COOKIE not in again.cookies
    assert product_twofold.methods.recovery_codes_remaining(bob.account.user.id) == 9


def test_a_replayed_totp_code_is_refused_on_the_page(product_twofold, product_client):
    organization, _ = create_organization(product_twofold)
    bob = enroll_totp(product_client, create_user(product_twofold, organization, "bob"))
    left_after_one_failure = (
        f"That code was already used. Wait for the next code. {attempts_left_after(product_twofold, 1)} attempts left."
    )
    browser, page = start_verification(product_client, bob)

    # The code that confirmed the enrollment is spent: refused, and said so with the attempts left.
    enrollment_code = code_at_step(bob.secret, bob.last_step)
    replayed = browser.post("/login/verify", {"csrf_token": csrf_of(page), "type": "totp", "code": enrollment_code})
    assert replayed.status_code == 401, replayed.text
    assert alert(replayed) == left_after_one_failure
    assert '<label for="code">Verification code</label>' in replayed.text
    assert SESSION_COOKIE not in browser.cookies

    # The same sign-in goes on with the next code (step + 1, no waiting).
    fresh_code = bob.next_code()
    signed_in = browser.post("/login/verify", {"csrf_token": csrf_of(replayed), "type": "totp", "code": fresh_code})
    assert signed_in.status_code == 303, signed_in.text
    assert signed_in.headers["location"] == "/"
    assert amr_of(product_client, browser) == ["pwd", "otp", "mfa"]

    # The code a sign-in just used, in a new sign-in: refused the same way.
    again, page = start_verification(product_client, bob)
    replayed = again.post("/login/verify", {"csrf_token": csrf_of(page), "type": "totp", "code": fresh_code})
    assert replayed.status_code == 401, replayed.text
    assert alert(replayed) == left_after_one_failure
    assert SESSION_COOKIE not in again.cookies
