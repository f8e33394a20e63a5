"""Issue 4, "Done when", end to end: real Chromium with its virtual authenticator (DevTools protocol, domain
`WebAuthn`) against a real `twofold serve` with the product's methods.

The virtual authenticator is Chromium's own: real keys, real signatures, real attestation, outside Twofold.
Users are forced to enroll a built-in authenticator (ctap2, `internal`, user verification), a security key
(ctap2, `usb`, the organization asking for `direct` attestation, with and without an allow-list of models) or
a U2F key through the pages, then sign in again with it; a user with two keys signs in with either.

The relying-party checks (SECURITY.md "WebAuthn") are tested with responses the virtual authenticator really
made, altered in Python afterwards (origin, type, rpIdHash, UV bit, signature byte) or made to answer what a
hostile client asks (another transaction's challenge, another user's credential, user verification
discouraged, an authenticator that cannot verify the user, a lowered signature counter), then submitted to
`POST /api/v1/login/verify`. Each refusal is followed, where it makes sense, by the unaltered response being
accepted on the same transaction: the alteration, nothing else, was refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import cbor2
import httpx
import pytest
from playwright.sync_api import expect

from ..support.flows import Account, bearer, create_organization, create_user, login
from ..support.totp import enroll_totp
from .test_login_browser import sign_in_with_password
from .test_totp_browser import ME_AMR, expect_home, sign_out

pytestmark = pytest.mark.e2e

# -- the authenticator's side ---------------------------------------------------------------------

PLATFORM = {"protocol": "ctap2", "transport": "internal", "hasUserVerification": True, "isUserVerified": True}
SECURITY_KEY = {"protocol": "ctap2", "transport": "usb", "hasUserVerification": True, "isUserVerified": True}
U2F_KEY = {"protocol": "u2f", "transport": "usb", "hasUserVerification": False}

# authenticatorData flags (WebAuthn §6.1): user present, user verified, backup eligible.
UP, UV, BE = 0x01, 0x04, 0x08

CREATE = """async (options) => {
  const publicKey = PublicKeyCredential.parseCreationOptionsFromJSON(options);
  return (await navigator.credentials.create({publicKey})).toJSON();
}"""
SIGN = """async (options) => {
  const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(options);
  return (await navigator.credentials.get({publicKey})).toJSON();
}"""
# The login API's options, fetched from the page (same origin), as a page script would.
LOGIN_OPTIONS = """async ({transaction, type}) => {
  const body = JSON.stringify(type ? {transaction, type} : {transaction});
  const answer = await fetch('/api/v1/login/webauthn/options',
                             {method: 'POST', headers: {'Content-Type': 'application/json'}, body});
  if (!answer.ok) throw new Error('options: ' + answer.status + ' ' + await answer.text());
  return (await answer.json()).publicKey;
}"""
# A cookie-authenticated JSON call from the signed-in page (with the page's CSRF token).
PAGE_API = """async ([method, path, body]) => {
  const token = document.querySelector('meta[name="twofold-csrf"]').content;
  const answer = await fetch(path, {method, credentials: 'same-origin',
    headers: {'Content-Type': 'application/json', 'X-CSRF-Token': token}, body: JSON.stringify(body)});
  return {status: answer.status, body: await answer.json()};
}"""


class Authenticators:
    """Chromium's virtual authenticators of one page (CDP domain WebAuthn)."""

    def __init__(self, context: Any, page: Any) -> None:
        self.cdp = context.new_cdp_session(page)
        self.cdp.send("WebAuthn.enable", {"enableUI": False})

    def add(self, options: dict[str, Any], **more: Any) -> str:
        full = {"hasResidentKey": False, "automaticPresenceSimulation": True, **options, **more}
        return str(self.cdp.send("WebAuthn.addVirtualAuthenticator", {"options": full})["authenticatorId"])

    def remove(self, authenticator: str) -> None:
        self.cdp.send("WebAuthn.removeVirtualAuthenticator", {"authenticatorId": authenticator})

    def credentials(self, authenticator: str) -> list[dict[str, Any]]:
        return list(self.cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"])

    def put_credential(self, authenticator: str, credential: dict[str, Any]) -> None:
        """Add a credential exported by `credentials` (its private key included), replacing any copy."""
        ids = {c["credentialId"] for c in self.credentials(authenticator)}
        if credential["credentialId"] in ids:
            self.cdp.send(
                "WebAuthn.removeCredential",
                {"authenticatorId": authenticator, "credentialId": credential["credentialId"]},
            )
        self.cdp.send("WebAuthn.addCredential", {"authenticatorId": authenticator, "credential": credential})

    def set_presence(self, authenticator: str, touched: bool) -> None:
        """Whether this authenticator answers (a touch) or waits forever (no touch)."""
        self.cdp.send("WebAuthn.setAutomaticPresenceSimulation", {"authenticatorId": authenticator, "enabled": touched})

    def set_user_verified(self, authenticator: str, verified: bool) -> None:
        self.cdp.send("WebAuthn.setUserVerified", {"authenticatorId": authenticator, "isUserVerified": verified})


# -- reading and altering what the authenticator made ---------------------------------------------


def b64url_decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def b64url_encode(value: bytes) -> str:
    return base64.urlsafe_b64encode(value).rstrip(b"=").decode()


def b64_to_b64url(value: str) -> str:
    """CDP's credential ids are standard base64; WebAuthn JSON uses base64url."""
    return b64url_encode(base64.b64decode(value))


@dataclass(frozen=True)
class AuthData:
    rp_id_hash: bytes
    flags: int
    sign_count: int
    aaguid: str | None  # with attested credential data (registration)


def parse_auth_data(raw: bytes) -> AuthData:
    """WebAuthn §6.1, by hand: rpIdHash (32) | flags (1) | signCount (4, big-endian) | [AAGUID (16) ...]."""
    flags = raw[32]
    aaguid = str(uuid.UUID(bytes=raw[37:53])) if flags & 0x40 else None
    return AuthData(raw[:32], flags, int.from_bytes(raw[33:37], "big"), aaguid)


def attestation(credential: dict[str, Any]) -> tuple[str, dict[str, Any], AuthData]:
    """fmt, attStmt and authenticator data of a registration response."""
    decoded = cbor2.loads(b64url_decode(credential["response"]["attestationObject"]))
    return decoded["fmt"], decoded["attStmt"], parse_auth_data(decoded["authData"])


def assertion_data(credential: dict[str, Any]) -> AuthData:
    return parse_auth_data(b64url_decode(credential["response"]["authenticatorData"]))


def client_data(credential: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(b64url_decode(credential["response"]["clientDataJSON"])))


def altered(credential: dict[str, Any], **response: str) -> dict[str, Any]:
    return {**credential, "response": {**credential["response"], **response}}


def with_client_data(credential: dict[str, Any], **changes: Any) -> dict[str, Any]:
    data = {**client_data(credential), **changes}
    encoded = json.dumps(data, separators=(",", ":")).encode()
    return altered(credential, clientDataJSON=b64url_encode(encoded))


def with_auth_data(credential: dict[str, Any], change: Callable[[bytearray], None]) -> dict[str, Any]:
    raw = bytearray(b64url_decode(credential["response"]["authenticatorData"]))
    change(raw)
    return altered(credential, authenticatorData=b64url_encode(bytes(raw)))


def expected_amr(auth_data: AuthData) -> list[str]:
    """API.md "amr": "hwk" for a device-bound credential, "swk" for a backup-eligible (synced) one, "user"
    because the authenticator tested the user's presence; derived from what the authenticator reported."""
    assert auth_data.flags & UP
    return ["pwd", "swk" if auth_data.flags & BE else "hwk", "user", "mfa"]


# -- driving the pages ----------------------------------------------------------------------------


@pytest.fixture
def page(browser_context: Any) -> Any:
    return browser_context.new_page()


@pytest.fixture
def authenticators(browser_context: Any, page: Any) -> Authenticators:
    return Authenticators(browser_context, page)


@pytest.fixture
def http(product_server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=product_server, timeout=30) as client:
        yield client


@pytest.fixture
def acme(product_twofold: Any) -> tuple[Any, Account]:
    """The organization and its administrator (not signed in yet)."""
    return create_organization(product_twofold)


@pytest.fixture
def organization(acme: tuple[Any, Account]) -> Any:
    return acme[0]


@pytest.fixture
def bob(product_twofold: Any, organization: Any) -> Account:
    return create_user(product_twofold, organization, "bob")


def posted_credential(request: Any) -> dict[str, Any]:
    """The credential a page posted as its form field credential_json."""
    form = parse_qs(request.post_data)
    return dict(json.loads(form["credential_json"][0]))


def enroll_in_pages(page: Any, base_url: str, account: Account, add_button: str, heading: str) -> dict[str, Any]:
    """Password step, forced enrollment of a WebAuthn method through the pages, recovery codes, home page.
    Returns the registration response the page posted."""
    page.goto(f"{base_url}/login")
    sign_in_with_password(page, account.user.username, account.password)
    expect(page).to_have_url(f"{base_url}/login/enroll")
    page.get_by_role("button", name=add_button).click()
    expect(page.get_by_role("heading", name=heading)).to_be_visible()
    with page.expect_request(lambda r: r.method == "POST" and r.url == f"{base_url}/login/enroll/complete") as sent:
        page.get_by_role("button", name="Continue").click()
    finish_with_recovery_codes(page, base_url, account)
    return posted_credential(sent.value)


def finish_with_recovery_codes(page: Any, base_url: str, account: Account) -> None:
    expect(page.get_by_role("heading", name="Your recovery codes")).to_be_visible()
    expect(page.get_by_role("list", name="Recovery codes").get_by_role("listitem")).to_have_count(10)
    page.get_by_role("link", name="I have saved these codes").click()
    expect_home(page, base_url, account.user.username)


def sign_in_in_pages(page: Any, base_url: str, account: Account, button: str) -> dict[str, Any]:
    """Password step, then the WebAuthn button of the verification page; returns the assertion posted."""
    page.goto(f"{base_url}/login")
    sign_in_with_password(page, account.user.username, account.password)
    expect(page).to_have_url(f"{base_url}/login/verify")
    with page.expect_request(lambda r: r.method == "POST" and r.url == f"{base_url}/login/verify") as sent:
        page.get_by_role("button", name=button).click()
    expect_home(page, base_url, account.user.username)
    return posted_credential(sent.value)


def methods_of(page: Any) -> list[dict[str, Any]]:
    return list(page.evaluate("async () => (await (await fetch('/api/v1/me/methods')).json())"))


# -- driving the API (with the browser as the authenticator's client) ------------------------------


def enroll_by_api(http: httpx.Client, page: Any, account: Account, method_type: str) -> dict[str, Any]:
    """Forced enrollment through the login API; navigator.credentials.create runs in the page. Returns the
    registration response; the account keeps the session token."""
    body = login(http, account).json()
    assert body["status"] == "enrollment_required", body
    started = http.post("/api/v1/login/enroll", json={"transaction": body["transaction"], "type": method_type})
    assert started.status_code == 200, started.text
    credential = page.evaluate(CREATE, started.json()["publicKey"])
    done = http.post(
        "/api/v1/login/enroll/complete",
        json={
            "transaction": body["transaction"],
            "enrollment_id": started.json()["enrollment_id"],
            "credential": credential,
        },
    )
    assert done.status_code == 200, done.text
    account.token = done.json()["token"]
    return dict(credential)


def start_login(http: httpx.Client, account: Account) -> str:
    response = login(http, account)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "mfa_required", response.json()
    return str(response.json()["transaction"])


def login_options(page: Any, transaction: str, method_type: str | None = None) -> dict[str, Any]:
    return dict(page.evaluate(LOGIN_OPTIONS, {"transaction": transaction, "type": method_type}))


def sign(page: Any, options: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """navigator.credentials.get in the page, with the options as given (or as a hostile client changed them)."""
    return dict(page.evaluate(SIGN, {**options, **changes}))


def real_assertion(
    page: Any, http: httpx.Client, account: Account, method_type: str | None = None
) -> tuple[str, dict[str, Any]]:
    """A new login transaction and the authenticator's real answer to its challenge."""
    transaction = start_login(http, account)
    return transaction, sign(page, login_options(page, transaction, method_type))


def submit(http: httpx.Client, transaction: str, credential: dict[str, Any]) -> httpx.Response:
    return http.post(
        "/api/v1/login/verify", json={"transaction": transaction, "type": "webauthn", "credential": credential}
    )


def assert_refused(response: httpx.Response, attempts_left: int, reason: str | None = None) -> None:
    assert response.status_code == 401, response.text
    problem = response.json()
    assert problem["code"] == "invalid_code", problem
    assert problem["attempts_left"] == attempts_left, problem
    assert "token" not in problem
    if reason is not None:
        assert re.search(reason, problem["detail"], re.IGNORECASE), problem


def assert_accepted(response: httpx.Response, credential: dict[str, Any]) -> None:
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "authenticated"
    assert response.json()["amr"] == expected_amr(assertion_data(credential))


def max_failures(product_twofold: Any) -> int:
    """Attempts per login transaction: the default setting, which the test server also runs with."""
    return int(product_twofold.settings.transaction_max_failures)


# == forced enrollment and sign-in through the pages =============================================


def test_built_in_authenticator_enrolls_and_signs_in(browser, product_server, page, authenticators, bob):
    """(a) A platform authenticator: ctap2, transport internal, user verification."""
    device = authenticators.add(PLATFORM)

    registration = enroll_in_pages(
        page, product_server, bob, "Add Built-in authenticator", "Add a built-in authenticator"
    )
    fmt, _, registered = attestation(registration)
    assert fmt == "none"  # the default policy asks for no attestation
    assert registered.flags & UV  # required for a built-in authenticator
    assert registration["response"]["transports"] == ["internal"]
    [stored] = authenticators.credentials(device)
    assert b64_to_b64url(stored["credentialId"]) == registration["rawId"]
    # Chromium's virtual authenticator makes device-bound credentials unless told otherwise
    # (defaultBackupEligibility): BE = 0 in its authenticator data, so the session says "hwk", not "swk".
    assert stored["backupEligibility"] is False and not registered.flags & BE
    assert page.evaluate(ME_AMR) == expected_amr(registered) == ["pwd", "hwk", "user", "mfa"]
    assert [m["type"] for m in methods_of(page)] == ["platform_authenticator"]
    sign_out(page, product_server)

    # The screen lock fails once: the browser refuses, the page says so and lets the user try again.
    page.goto(f"{product_server}/login")
    sign_in_with_password(page, "bob", bob.password)
    authenticators.set_user_verified(device, False)
    page.get_by_role("button", name="Use built-in authenticator").click()
    expect(page.get_by_role("alert")).to_have_text(
        "The request was cancelled or timed out. Try again when your authenticator is ready."
    )
    expect(page).to_have_url(f"{product_server}/login/verify")
    authenticators.set_user_verified(device, True)
    with page.expect_request(lambda r: r.method == "POST" and r.url == f"{product_server}/login/verify") as sent:
        page.get_by_role("button", name="Use built-in authenticator").click()
    expect_home(page, product_server, "bob")
    used = posted_credential(sent.value)
    asserted = assertion_data(used)
    assert used["rawId"] == registration["rawId"]
    assert asserted.flags & UV and asserted.sign_count > registered.sign_count
    assert page.evaluate(ME_AMR) == expected_amr(asserted) == ["pwd", "hwk", "user", "mfa"]
    assert methods_of(page)[0]["last_used_at"] is not None


def test_backup_eligible_built_in_credential_gives_swk(browser, product_server, page, authenticators, http, bob):
    """(a, continued) A built-in authenticator whose credentials are backup eligible (a synced passkey): "swk"."""
    page.goto(f"{product_server}/login")
    authenticators.add(PLATFORM, defaultBackupEligibility=True)
    _, _, registered = attestation(enroll_by_api(http, page, bob, "platform_authenticator"))
    assert registered.flags & BE
    transaction, real = real_assertion(page, http, bob, "platform_authenticator")
    assert_accepted(submit(http, transaction, real), real)
    assert expected_amr(assertion_data(real)) == ["pwd", "swk", "user", "mfa"]


def test_security_key_with_direct_attestation_and_an_allow_list_of_models(
    browser, product_server, product_twofold, acme, page, authenticators, http, bob
):
    """(b) ctap2 over USB; the organization asks for direct attestation, the key answers "packed"; a model
    outside the organization's allow-list is refused, visibly; the key signs in."""
    organization, alice = acme
    carol = create_user(product_twofold, organization, "carol")
    admin = enroll_totp(http, alice)  # a fresh step-up, as the policy change (★) needs

    def set_policy(**policy: Any) -> None:
        answer = http.patch(f"/api/v1/organizations/{organization.id}", json=policy, headers=bearer(admin.token))
        assert answer.status_code == 200, answer.text
        for name, value in policy.items():
            assert answer.json()[name] == (sorted(value) if isinstance(value, list) else value), answer.json()

    set_policy(webauthn_attestation="direct")
    authenticators.add(SECURITY_KEY)
    registration = enroll_in_pages(page, product_server, bob, "Add Security key", "Add a security key")
    fmt, statement, registered = attestation(registration)
    assert fmt == "packed"
    assert statement["alg"] == -7 and statement["x5c"]  # signed by the key's attestation certificate
    assert registered.aaguid not in (None, str(uuid.UUID(int=0)))
    model = registered.aaguid
    assert page.evaluate(ME_AMR) == expected_amr(registered)
    sign_out(page, product_server)

    # Carol's key is the same model; an allow-list without it refuses her enrollment.
    other_model = "2fc0579f-8113-47ea-b116-bb5a8db9202a"  # a YubiKey 5 NFC
    assert other_model != model
    set_policy(webauthn_attestation="direct", webauthn_allowed_aaguids=[other_model])
    other = browser.new_context()
    try:
        other.set_default_timeout(15_000)
        carol_page = other.new_page()
        Authenticators(other, carol_page).add(SECURITY_KEY)
        carol_page.goto(f"{product_server}/login")
        sign_in_with_password(carol_page, "carol", carol.password)
        carol_page.get_by_role("button", name="Add Security key").click()
        carol_page.get_by_role("button", name="Continue").click()
        expect(carol_page.get_by_role("heading", name="The method was not added")).to_be_visible()
        expect(carol_page.get_by_text("this authenticator model is not allowed by your organization")).to_be_visible()
        expect(carol_page.get_by_role("button", name="Sign out")).to_have_count(0)

        # With her model on the list, the same key is accepted.
        set_policy(webauthn_attestation="direct", webauthn_allowed_aaguids=[other_model, model])
        carol_page.get_by_role("link", name="Back").click()
        expect(carol_page).to_have_url(f"{product_server}/login/enroll")
        carol_page.get_by_role("button", name="Add Security key").click()
        carol_page.get_by_role("button", name="Continue").click()
        finish_with_recovery_codes(carol_page, product_server, carol)
        assert [m["type"] for m in methods_of(carol_page)] == ["security_key"]
    finally:
        other.close()

    used = sign_in_in_pages(page, product_server, bob, "Use a security key")
    assert used["rawId"] == registration["rawId"]
    assert page.evaluate(ME_AMR) == expected_amr(assertion_data(used)) == ["pwd", "hwk", "user", "mfa"]


def test_u2f_security_key_enrolls_and_signs_in(browser, product_server, page, authenticators, bob):
    """(c) A U2F-only key (CTAP1): no user verification, which a security key does not need."""
    authenticators.add(U2F_KEY)

    registration = enroll_in_pages(page, product_server, bob, "Add Security key", "Add a security key")
    fmt, _, registered = attestation(registration)
    assert fmt == "none"
    assert registered.aaguid == str(uuid.UUID(int=0))  # U2F has no AAGUID
    assert not registered.flags & UV
    assert [m["name"] for m in methods_of(page)] == ["Security key"]
    assert page.evaluate(ME_AMR) == expected_amr(registered) == ["pwd", "hwk", "user", "mfa"]
    sign_out(page, product_server)

    used = sign_in_in_pages(page, product_server, bob, "Use a security key")
    asserted = assertion_data(used)
    assert asserted.flags & UP and not asserted.flags & UV  # presence alone, accepted for a security key
    assert asserted.sign_count > registered.sign_count
    assert page.evaluate(ME_AMR) == expected_amr(asserted) == ["pwd", "hwk", "user", "mfa"]


def test_user_with_two_security_keys_signs_in_with_either(browser, product_server, page, authenticators, bob):
    """(d) The first key through the forced enrollment, the second through the profile API from the signed-in
    page; both keys plugged in, the one touched signs in."""
    first_key = authenticators.add(SECURITY_KEY)
    first = enroll_in_pages(page, product_server, bob, "Add Security key", "Add a security key")

    # The second key, while the first is unplugged; the session is fresh from the enrollment (step-up).
    [first_credential] = authenticators.credentials(first_key)
    authenticators.remove(first_key)
    second_key = authenticators.add(SECURITY_KEY)
    started = page.evaluate(PAGE_API, ["POST", "/api/v1/me/methods", {"type": "security_key", "name": "Backup key"}])
    assert started["status"] == 201, started
    options = started["body"]["publicKey"]
    assert [c["id"] for c in options["excludeCredentials"]] == [first["rawId"]]
    second = page.evaluate(CREATE, options)
    completed = page.evaluate(
        PAGE_API,
        ["POST", f"/api/v1/me/methods/{started['body']['enrollment_id']}/complete", {"credential": second}],
    )
    assert completed["status"] == 200, completed
    assert sorted((m["type"], m["name"]) for m in methods_of(page)) == [
        ("security_key", "Backup key"),
        ("security_key", "Security key"),
    ]
    sign_out(page, product_server)

    # Both keys plugged in again (the first with its own credential and counter); only the touched one answers.
    first_key = authenticators.add(SECURITY_KEY)
    authenticators.put_credential(first_key, first_credential)
    for touched, untouched, expected in ((second_key, first_key, second), (first_key, second_key, first)):
        authenticators.set_presence(touched, True)
        authenticators.set_presence(untouched, False)
        used = sign_in_in_pages(page, product_server, bob, "Use a security key")
        assert used["rawId"] == expected["rawId"]
        assert page.evaluate(ME_AMR) == expected_amr(assertion_data(used))
        sign_out(page, product_server)


# == relying-party checks, with real responses altered ============================================


@pytest.fixture
def key_user(product_server, http, page, authenticators, bob) -> Account:
    """Bob, with a security key enrolled through the API (the page's authenticator made the credential)."""
    page.goto(f"{product_server}/login")
    authenticators.add(SECURITY_KEY)
    enroll_by_api(http, page, bob, "security_key")
    return bob


def test_wrong_origin_or_altered_client_data_is_refused(browser, product_twofold, page, http, key_user):
    limit = max_failures(product_twofold)
    transaction, real = real_assertion(page, http, key_user)
    assert client_data(real)["origin"] == str(http.base_url).rstrip("/")

    assert_refused(
        submit(http, transaction, with_client_data(real, origin="https://evil.example")), limit - 1, "origin"
    )
    # The type of a registration, on an assertion.
    assert_refused(submit(http, transaction, with_client_data(real, type="webauthn.create")), limit - 2, "type")
    # Any other change to clientDataJSON (here: the same members, re-serialized) breaks the signature over it.
    reserialized = json.dumps(client_data(real), separators=(", ", ": ")).encode()
    assert reserialized != b64url_decode(real["response"]["clientDataJSON"])
    assert_refused(submit(http, transaction, altered(real, clientDataJSON=b64url_encode(reserialized))), limit - 3)

    assert_accepted(submit(http, transaction, real), real)


def test_authenticator_data_of_another_rp_id_is_refused(browser, product_twofold, page, http, key_user):
    limit = max_failures(product_twofold)
    transaction, real = real_assertion(page, http, key_user)
    assert assertion_data(real).rp_id_hash == hashlib.sha256(b"localhost").digest()

    def other_rp(raw: bytearray) -> None:
        raw[:32] = hashlib.sha256(b"evil.example").digest()

    assert_refused(submit(http, transaction, with_auth_data(real, other_rp)), limit - 1, "rp ?id")
    assert_accepted(submit(http, transaction, real), real)


def test_bad_signature_is_refused(browser, product_twofold, page, http, key_user):
    limit = max_failures(product_twofold)
    transaction, real = real_assertion(page, http, key_user)
    signature = bytearray(b64url_decode(real["response"]["signature"]))
    signature[-1] ^= 0x01
    assert_refused(
        submit(http, transaction, altered(real, signature=b64url_encode(bytes(signature)))), limit - 1, "signature"
    )
    # The signed authenticator data, one bit changed (the counter's top bit, so it still grows): the
    # signature no longer covers it.

    def bump_counter(raw: bytearray) -> None:
        raw[33] ^= 0x80

    assert_refused(submit(http, transaction, with_auth_data(real, bump_counter)), limit - 2, "signature")
    assert_accepted(submit(http, transaction, real), real)


def test_replayed_challenge_is_refused(browser, product_twofold, page, http, key_user):
    limit = max_failures(product_twofold)
    transaction, real = real_assertion(page, http, key_user)
    accepted = submit(http, transaction, real)
    assert_accepted(accepted, real)
    # The same response again, on a new login that has a challenge of its own.
    replay = start_login(http, key_user)
    login_options(page, replay)
    assert_refused(submit(http, replay, real), limit - 1)

    # Single use on its own: a step-up challenge of the session answered twice, each time with a fresh
    # signature and a higher counter, is accepted once.
    session = bearer(accepted.json()["token"])
    options = http.post("/api/v1/me/step-up/webauthn/options", json={}, headers=session)
    assert options.status_code == 200, options.text
    first = sign(page, options.json()["publicKey"])
    again = sign(page, options.json()["publicKey"])
    assert assertion_data(again).sign_count > assertion_data(first).sign_count
    stepped = http.post("/api/v1/me/step-up", json={"type": "webauthn", "credential": first}, headers=session)
    assert stepped.status_code == 200, stepped.text
    replayed = http.post("/api/v1/me/step-up", json={"type": "webauthn", "credential": again}, headers=session)
    assert replayed.status_code == 400, replayed.text
    assert replayed.json()["code"] == "invalid_code"
    assert "challenge" in replayed.json()["detail"]


def test_answer_to_another_transactions_challenge_is_refused(
    browser, product_twofold, organization, page, http, authenticators, key_user
):
    limit = max_failures(product_twofold)
    first = start_login(http, key_user)
    first_options = login_options(page, first)
    second = start_login(http, key_user)
    login_options(page, second)
    answer = sign(page, first_options)
    assert_refused(submit(http, second, answer), limit - 1, "challenge")

    # Another user's login: Carol's credential answering Bob's challenge, sent to her own transaction.
    carol = create_user(product_twofold, organization, "carol")
    enroll_by_api(http, page, carol, "security_key")
    hers = start_login(http, carol)
    her_options = login_options(page, hers)
    from_her_key = sign(page, first_options, allowCredentials=her_options["allowCredentials"])
    assert from_her_key["rawId"] == her_options["allowCredentials"][0]["id"]
    assert_refused(submit(http, hers, from_her_key), limit - 1, "challenge")

    assert_accepted(submit(http, first, answer), answer)


def test_another_users_credential_is_refused(browser, product_twofold, organization, page, http, key_user):
    """Carol's login challenge, answered with Bob's credential (the client swapped allowCredentials)."""
    limit = max_failures(product_twofold)
    bobs = only_credential_id(page, http, key_user)
    carol = create_user(product_twofold, organization, "carol")
    enroll_by_api(http, page, carol, "security_key")
    transaction = start_login(http, carol)
    options = login_options(page, transaction)
    assert [c["id"] for c in options["allowCredentials"]] != [bobs]
    with_bobs = sign(page, options, allowCredentials=[{"type": "public-key", "id": bobs}])
    assert with_bobs["rawId"] == bobs and client_data(with_bobs)["challenge"] == options["challenge"]
    assert_refused(submit(http, transaction, with_bobs), limit - 1)

    hers = sign(page, options)
    assert_accepted(submit(http, transaction, hers), hers)


def only_credential_id(page: Any, http: httpx.Client, account: Account) -> str:
    """The id of the account's only WebAuthn credential, as its login options list it."""
    transaction = start_login(http, account)
    [allowed] = login_options(page, transaction)["allowCredentials"]
    return str(allowed["id"])


def test_platform_credential_without_user_verification_is_refused(
    browser, product_server, product_twofold, page, http, authenticators, bob
):
    """A built-in authenticator's credential must verify the user at every use, whatever the options said."""
    limit = max_failures(product_twofold)
    page.goto(f"{product_server}/login")
    device = authenticators.add(PLATFORM)
    enroll_by_api(http, page, bob, "platform_authenticator")

    transaction = start_login(http, bob)
    options = login_options(page, transaction, "platform_authenticator")
    assert options["userVerification"] == "required"
    real = sign(page, options)
    assert assertion_data(real).flags & UV

    # The UV bit cleared in the real response (the signature no longer matches, and UV is missing).
    def clear_uv(raw: bytearray) -> None:
        raw[32] &= ~UV

    assert_refused(submit(http, transaction, with_auth_data(real, clear_uv)), limit - 1)

    # A hostile client asks the authenticator not to verify the user: UV = 0 under a valid signature.
    authenticators.set_user_verified(device, False)
    unverified = sign(page, options, userVerification="discouraged")
    assert not assertion_data(unverified).flags & UV
    assert_refused(submit(http, transaction, unverified), limit - 2, "verif")
    authenticators.set_user_verified(device, True)

    # Options without a type ask only for "preferred"; the credential, moved to an authenticator that cannot
    # verify users at all, answers with UV = 0 under a valid signature: still refused for a platform credential.
    another = start_login(http, bob)
    preferred = login_options(page, another)
    assert preferred["userVerification"] == "preferred"
    [credential] = authenticators.credentials(device)
    authenticators.remove(device)  # Chromium has room for one built-in authenticator
    no_uv = authenticators.add({**PLATFORM, "hasUserVerification": False, "isUserVerified": False})
    authenticators.put_credential(no_uv, credential)
    weak = sign(page, preferred)
    assert weak["rawId"] == real["rawId"] and not assertion_data(weak).flags & UV
    assert_refused(submit(http, another, weak), limit - 1, "verif")

    # The real, verified response is still accepted on the first transaction.
    assert_accepted(submit(http, transaction, real), real)


def test_signature_counter_regression_is_refused_and_flagged(
    browser, product_server, product_twofold, acme, page, http, authenticators, bob
):
    """A copy of the key with a lower counter (a clone) makes a valid assertion: refused, audited, flagged."""
    limit = max_failures(product_twofold)
    organization, alice = acme
    admin = enroll_totp(http, alice)
    page.goto(f"{product_server}/login")
    key = authenticators.add(SECURITY_KEY)
    enroll_by_api(http, page, bob, "security_key")
    transaction, real = real_assertion(page, http, bob)
    assert_accepted(submit(http, transaction, real), real)

    [credential] = authenticators.credentials(key)
    assert credential["signCount"] == assertion_data(real).sign_count  # what the server now holds
    authenticators.put_credential(key, {**credential, "signCount": credential["signCount"] - 1})
    transaction, cloned = real_assertion(page, http, bob)
    assert assertion_data(cloned).sign_count == assertion_data(real).sign_count
    assert_refused(submit(http, transaction, cloned), limit - 1, "counter")

    user = http.get(f"/api/v1/organizations/{organization.id}/users/{bob.user.id}", headers=bearer(admin.token))
    assert user.status_code == 200, user.text
    assert "cloned_authenticator" in user.json()["flags"]
    assert [m.get("cloned_at") is not None for m in user.json()["methods"]] == [True]
    events = http.get(
        f"/api/v1/organizations/{organization.id}/audit-events",
        params={"type": "authenticator.cloned", "user_id": bob.user.id},
        headers=bearer(admin.token),
    )
    assert events.status_code == 200, events.text
    assert len(events.json()["items"]) == 1
