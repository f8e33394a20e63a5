"""The server-rendered pages: labels of API.md "Web pages", `__Host-` cookies, CSRF on every form, the session id
changing at each step, and GET never changing state (SECURITY.md "Sessions, cookies, CSRF", DESIGN.md §8).

httpx never sends a `Secure` cookie over plain http (DESIGN.md §8): every request sets its Cookie header by hand,
and the cookie flags are checked on the raw Set-Cookie headers, never relaxed for the tests."""

from __future__ import annotations

import html
import re
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, select

from twofold.services.context import RequestContext
from twofold.storage.tables import login_transactions, one_time_tokens, sessions

from .conftest import PUBLIC_URL
from .support.flows import bearer, create_organization, create_user, enroll, login
from .support.methods import METHOD_TYPE

SESSION_COOKIE = "__Host-twofold_session"
LOGIN_COOKIE = "__Host-twofold_login"
CSRF_COOKIE = "__Host-twofold_csrf"
CSRF_INPUT = re.compile(r'<input type="hidden" name="csrf_token" value="([^"]+)">')
ALERT = re.compile(r'<p class="error" role="alert">([^<]*)</p>')


def set_cookies(response: Any) -> dict[str, dict[str, str]]:
    """Every Set-Cookie of a response: name -> {"value": ..., attribute (lower case): value or ""}."""
    found: dict[str, dict[str, str]] = {}
    for header in response.headers.get_list("set-cookie"):
        first, *attributes = [part.strip() for part in header.split(";")]
        name, _, value = first.partition("=")
        entry = {"value": value.strip('"')}
        for attribute in attributes:
            key, _, attribute_value = attribute.partition("=")
            entry[key.strip().lower()] = attribute_value.strip()
        found[name] = entry
    return found


def assert_host_cookie(entry: dict[str, str]) -> None:
    """`__Host-` rules (Secure, Path=/, no Domain) plus HttpOnly and SameSite=Lax (API.md "Conventions")."""
    assert "secure" in entry, entry
    assert "httponly" in entry, entry
    assert entry.get("samesite", "").lower() == "lax", entry
    assert entry.get("path") == "/", entry
    assert "domain" not in entry, entry


def is_cleared(entry: dict[str, str]) -> bool:
    return entry["value"] == "" or entry.get("max-age") == "0"


def cookie_header(**values: str) -> dict[str, str]:
    names = {"session": SESSION_COOKIE, "login": LOGIN_COOKIE, "csrf": CSRF_COOKIE}
    return {"Cookie": "; ".join(f"{names[key]}={value}" for key, value in values.items())}


class Browser:
    """Just enough of a browser over the TestClient: a cookie jar that keeps Secure cookies, forms with Origin."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.cookies: dict[str, str] = {}

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        headers = dict(extra or {})
        if self.cookies and "Cookie" not in headers:
            headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        return headers

    def _keep(self, response: Any) -> Any:
        for name, entry in set_cookies(response).items():
            if is_cleared(entry):
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = entry["value"]
        return response

    def get(self, path: str, headers: dict[str, str] | None = None) -> Any:
        return self._keep(self.client.get(path, headers=self._headers(headers), follow_redirects=False))

    def post(self, path: str, data: dict[str, str], headers: dict[str, str] | None = None) -> Any:
        headers = {"Origin": PUBLIC_URL, **(headers or {})}
        return self._keep(self.client.post(path, data=data, headers=self._headers(headers), follow_redirects=False))

    def csrf(self, path: str = "/login") -> str:
        page = self.get(path)
        assert page.status_code == 200, page.text
        found = CSRF_INPUT.search(page.text)
        assert found, page.text
        return found.group(1)

    def sign_in_password(self, username: str, password: str) -> Any:
        token = self.csrf()
        return self.post("/login", {"csrf_token": token, "username": username, "password": password})


def count(twofold: Any, table: Any) -> int:
    with twofold.uow(read_only=True) as uow:
        return int(uow.session.execute(select(func.count()).select_from(table)).scalar_one())


def alert(page: Any) -> str:
    found = ALERT.search(page.text)
    assert found, page.text
    return html.unescape(found.group(1))


# -- the password step ----------------------------------------------------------------------------


def test_login_page_has_the_contract_labels_and_a_host_csrf_cookie(twofold, client):
    page = client.get("/login")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    for text in (
        '<label for="username">Username</label>',
        '<label for="password">Password</label>',
        ">Sign in</button>",
        ">Sign in with SSO</a>",
    ):
        assert text in page.text, text
    cookies = set_cookies(page)
    assert CSRF_COOKIE in cookies
    assert_host_cookie(cookies[CSRF_COOKIE])
    assert len(cookies[CSRF_COOKIE]["value"]) >= 32
    assert page.headers.get("cache-control") == "no-store"
    # The SSO link leads somewhere readable, not to an error.
    assert client.get("/login/sso").status_code == 200


def test_the_login_form_needs_the_csrf_token_and_its_own_origin(twofold, client):
    _, admin = create_organization(twofold)
    browser = Browser(client)
    token = browser.csrf()
    credentials = {"username": admin.user.username, "password": admin.password}
    other = Browser(client)
    other_token = other.csrf()
    assert other_token != token  # bound to each browser's own CSRF cookie

    refused = [
        browser.post("/login", credentials),
        browser.post("/login", {**credentials, "csrf_token": ""}),
        browser.post("/login", {**credentials, "csrf_token": "0" * 64}),
        browser.post("/login", {**credentials, "csrf_token": other_token}),
        browser.post("/login", {**credentials, "csrf_token": token}, headers={"Origin": "https://evil.example"}),
        browser.post("/login", {**credentials, "csrf_token": token}, headers={"Origin": "http://localhost:8001"}),
        browser.post("/login", {**credentials, "csrf_token": token}, headers={"Origin": "null"}),
        # The right token without its cookie (a cross-site page cannot read or set the __Host- cookie).
        client.post(
            "/login", data={**credentials, "csrf_token": token}, headers={"Origin": PUBLIC_URL}, follow_redirects=False
        ),
    ]
    for response in refused:
        assert response.status_code == 403, response.text
        assert "Request refused" in response.text
        assert LOGIN_COOKIE not in set_cookies(response)
        assert SESSION_COOKIE not in set_cookies(response)
    # The password was never even checked: no transaction, nothing counted against the account.
    assert count(twofold, login_transactions) == 0
    accepted = browser.post("/login", {**credentials, "csrf_token": token})
    assert accepted.status_code == 303


def test_wrong_password_and_unknown_user_get_the_same_page(twofold, client):
    _, admin = create_organization(twofold)
    browser = Browser(client)
    wrong = browser.sign_in_password(admin.user.username, "not the password")
    unknown = browser.sign_in_password("nobody-here", "not the password")
    for page in (wrong, unknown):
        assert page.status_code == 401
        assert page.headers["content-type"].startswith("text/html")
        assert alert(page) == "Invalid username or password."
        assert ">Sign in</button>" in page.text
        assert LOGIN_COOKIE not in set_cookies(page)
    assert wrong.text.replace(admin.user.username, "nobody-here") == unknown.text.replace(
        CSRF_INPUT.search(unknown.text).group(1),
        CSRF_INPUT.search(wrong.text).group(1),  # type: ignore[union-attr]
    )
    empty = browser.post("/login", {"csrf_token": browser.csrf(), "username": "", "password": ""})
    assert empty.status_code == 422
    assert alert(empty) == "Enter your username and password."


def test_right_password_without_a_method_leads_to_enrollment(twofold, client):
    _, admin = create_organization(twofold)
    browser = Browser(client)
    response = browser.sign_in_password(admin.user.username, admin.password)
    assert response.status_code == 303
    assert response.headers["location"] == "/login/enroll"
    cookies = set_cookies(response)
    assert_host_cookie(cookies[LOGIN_COOKIE])
    assert cookies[LOGIN_COOKIE]["value"].startswith("tft_")
    assert int(cookies[LOGIN_COOKIE]["max-age"]) <= 15 * 60
    assert SESSION_COOKIE not in browser.cookies

    page = browser.get("/login/enroll")
    assert page.status_code == 200
    assert "<h1>Manage Your Verification Methods</h1>" in page.text
    enrollable = login(client, admin).json()["enrollable_types"]
    assert enrollable == [METHOD_TYPE]
    assert page.text.count(">Add</button>") == len(enrollable)
    assert 'aria-label="Add Test code"' in page.text
    # A login transaction is no session: not for the pages, not for the API.
    assert browser.get("/").headers["location"] == "/login"
    login_token = browser.cookies[LOGIN_COOKIE]
    assert client.get("/api/v1/me", headers=cookie_header(session=login_token)).status_code == 401
    assert client.get("/api/v1/me", headers=cookie_header(login=login_token)).status_code == 401
    assert client.get("/api/v1/me", headers=bearer(login_token)).status_code == 401
    # The verify page is no way around enrollment.
    assert browser.get("/login/verify").headers["location"] == "/login/enroll"


def test_sign_in_with_the_verification_page(twofold, client):
    organization, _ = create_organization(twofold)
    bob = enroll(client, create_user(twofold, organization, "bob"))
    browser = Browser(client)
    response = browser.sign_in_password("bob", bob.password)
    assert response.status_code == 303
    assert response.headers["location"] == "/login/verify"
    login_token = browser.cookies[LOGIN_COOKIE]
    assert_host_cookie(set_cookies(response)[LOGIN_COOKIE])

    page = browser.get("/login/verify")
    assert page.status_code == 200
    for text in ('<label for="code">Verification code</label>', ">Verify</button>", ">Try another method</a>"):
        assert text in page.text, text
    token = CSRF_INPUT.search(page.text).group(1)  # type: ignore[union-attr]

    wrong = browser.post("/login/verify", {"csrf_token": token, "type": METHOD_TYPE, "code": "not it"})
    assert wrong.status_code == 401
    assert alert(wrong) == "That code did not work. 4 attempts left."
    assert browser.cookies[LOGIN_COOKIE] == login_token
    refused = browser.post("/login/verify", {"type": METHOD_TYPE, "code": str(bob.code)})
    assert refused.status_code == 403

    done = browser.post("/login/verify", {"csrf_token": token, "type": METHOD_TYPE, "code": str(bob.code)})
    assert done.status_code == 303
    assert done.headers["location"] == "/"
    cookies = set_cookies(done)
    assert_host_cookie(cookies[SESSION_COOKIE])
    session_token = cookies[SESSION_COOKIE]["value"]
    assert session_token.startswith("tfs_")
    assert session_token != login_token
    assert is_cleared(cookies[LOGIN_COOKIE])
    assert LOGIN_COOKIE not in browser.cookies

    home = browser.get("/")
    assert home.status_code == 200
    assert "Welcome, bob" in home.text
    assert '<nav aria-label="Profile menu"' in home.text
    assert ">Configure multi-factor authentication (MFA)</a>" in home.text
    me = client.get("/api/v1/me", headers=cookie_header(session=session_token))
    assert me.status_code == 200
    assert me.json()["session"]["amr"] == ["pwd", "otp", "mfa"]
    # The login transaction ended with the MFA.
    assert (
        browser.get("/login/verify", headers=cookie_header(login=login_token))
        .headers["location"]
        .startswith("/login?expired")
    )
    assert (
        client.post(
            "/api/v1/login/verify", json={"transaction": login_token, "type": METHOD_TYPE, "code": bob.code}
        ).status_code
        == 410
    )


def test_a_new_password_step_drops_the_earlier_session_cookie(twofold, client):
    organization, _ = create_organization(twofold)
    bob = enroll(client, create_user(twofold, organization, "bob"))
    browser = Browser(client)
    browser.cookies[SESSION_COOKIE] = str(bob.token)
    # Signed in already: the login page sends the user home rather than starting anything.
    assert browser.get("/login").headers["location"] == "/"
    browser.cookies.pop(SESSION_COOKIE)
    token = browser.csrf()
    browser.cookies[SESSION_COOKIE] = "tfs_" + "x" * 43  # a stale cookie from an earlier sign-in
    response = browser.post("/login", {"csrf_token": token, "username": "bob", "password": bob.password})
    assert response.status_code == 303
    assert is_cleared(set_cookies(response)[SESSION_COOKIE])
    assert SESSION_COOKIE not in browser.cookies


def test_the_logout_form_needs_csrf_clears_the_cookie_and_ends_the_session(twofold, client):
    organization, _ = create_organization(twofold)
    bob = enroll(client, create_user(twofold, organization, "bob"))
    browser = Browser(client)
    browser.cookies[SESSION_COOKIE] = str(bob.token)
    token = browser.csrf("/")
    assert 'action="/logout"' in browser.get("/").text

    for data, headers in (({}, None), ({"csrf_token": token}, {"Origin": "https://evil.example"})):
        refused = browser.post("/logout", data, headers=headers)
        assert refused.status_code == 403
        assert SESSION_COOKIE in browser.cookies
    assert client.get("/api/v1/me", headers=bearer(bob.token)).status_code == 200

    response = browser.post("/logout", {"csrf_token": token})
    assert response.status_code == 303
    assert response.headers["location"] == "/login?signed_out=1"
    assert is_cleared(set_cookies(response)[SESSION_COOKIE])
    assert client.get("/api/v1/me", headers=bearer(bob.token)).status_code == 401
    assert client.get("/", headers=cookie_header(session=str(bob.token)), follow_redirects=False).status_code == 303
    assert "You are signed out." in browser.get("/login?signed_out=1").text


def test_get_never_changes_state(twofold, client):
    organization, _ = create_organization(twofold)
    bob = enroll(client, create_user(twofold, organization, "bob"))
    signed_in = cookie_header(session=str(bob.token))
    for path in ("/logout", "/login/verify", "/login/enroll", "/setup/x"):
        client.get(path, headers=signed_in, follow_redirects=False)
    response = client.get("/logout", headers=signed_in, follow_redirects=False)
    assert response.status_code == 405
    assert SESSION_COOKIE not in set_cookies(response)
    assert client.get("/api/v1/logout", headers=signed_in).status_code == 405
    assert client.get("/api/v1/me", headers=signed_in).status_code == 200

    # Looking at the verification page many times spends no attempt of the transaction.
    browser = Browser(client)
    browser.sign_in_password("bob", bob.password)
    for _ in range(6):
        assert browser.get("/login/verify").status_code == 200
    with twofold.uow(read_only=True) as uow:
        open_transactions = select(login_transactions.c.failed_attempts).where(login_transactions.c.ended_at.is_(None))
        attempts = uow.session.execute(open_transactions).scalars().all()
    assert attempts == [0]
    token = browser.csrf("/login/verify")
    assert (
        browser.post("/login/verify", {"csrf_token": token, "type": METHOD_TYPE, "code": str(bob.code)}).status_code
        == 303
    )


# -- set-up links ---------------------------------------------------------------------------------


def test_a_setup_link_sets_the_password_once_and_signs_nobody_in(twofold, client):
    organization, _ = create_organization(twofold)
    created = twofold.accounts.create_user(
        organization_id=organization.id,
        username="dana",
        email="dana@example.com",
        kind="user",
        service_type=None,
        actor_id=None,
        context=RequestContext(ip="127.0.0.1"),
    )
    assert created.setup_url
    path = urlsplit(created.setup_url).path
    assert path.startswith("/setup/")
    browser = Browser(client)

    # Looking at the page spends nothing.
    for _ in range(2):
        page = browser.get(path)
        assert page.status_code == 200
        assert "<h1>Set your password</h1>" in page.text
    with twofold.uow(read_only=True) as uow:
        assert uow.session.execute(select(one_time_tokens.c.used_at)).scalar_one() is None
    token = CSRF_INPUT.search(page.text).group(1)  # type: ignore[union-attr]
    password = "dana's own long passphrase"

    assert browser.post(path, {"password": password, "confirm_password": password}).status_code == 403
    differ = browser.post(path, {"csrf_token": token, "password": password, "confirm_password": password + "!"})
    assert differ.status_code == 422
    assert alert(differ) == "The two passwords differ."

    saved = browser.post(path, {"csrf_token": token, "password": password, "confirm_password": password})
    assert saved.status_code == 200, saved.text
    assert "Password saved" in saved.text
    assert SESSION_COOKIE not in set_cookies(saved) and LOGIN_COOKIE not in set_cookies(saved)
    assert count(twofold, sessions) == 0
    assert browser.get("/").headers["location"] == "/login"

    # The new password works, and MFA is still to come: the account must enroll.
    started = client.post("/api/v1/login", json={"username": "dana", "password": password})
    assert started.status_code == 200
    assert started.json()["status"] == "enrollment_required"

    again = browser.post(
        path,
        {"csrf_token": token, "password": "another long passphrase", "confirm_password": "another long passphrase"},
    )
    assert again.status_code == 422
    assert alert(again) == "this link is invalid, used or expired"
    assert ">Set password</button>" in again.text
    bogus = browser.post(
        "/setup/tfu_nonsense", {"csrf_token": token, "password": password, "confirm_password": password}
    )
    assert bogus.status_code == 422
    assert alert(bogus) == "this link is invalid, used or expired"
    assert (
        client.post("/api/v1/login", json={"username": "dana", "password": "another long passphrase"}).status_code
        == 401
    )
