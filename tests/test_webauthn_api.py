"""Built-in authenticators and security keys (WebAuthn) through the JSON API (issue 4; API.md "Login",
"Self-service", "Administration"; SECURITY.md "WebAuthn").

The browser and the authenticator are played by tests/support/authenticator.py: real keys, real
signatures, real CBOR, the JSON of ``PublicKeyCredential.toJSON()``. Every relying-party check is
shown failing with a response that differs from a good one in that one respect only, and each
refusal is followed by a good response on the same login, which passes.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from twofold.container import Twofold
from twofold.domain.clock import utcnow
from twofold.methods.registry import default_registry
from twofold.storage import tables
from twofold.web.app import create_app

from .conftest import PUBLIC_URL
from .support.authenticator import (
    AT,
    ES256,
    ES512,
    UV,
    CredentialExcluded,
    SoftAuthenticator,
    attestation_of,
    authenticator_data_of,
    b64url,
    b64url_decode,
    client_data_of,
    flip_signature_byte,
    with_flags,
)
from .support.flows import Account, bearer, create_organization, create_user, login, mfa_failures, run_together
from .support.totp import enroll_totp

ORIGIN = PUBLIC_URL  # TWOFOLD_PUBLIC_URL of the tests: the only origin allowed
RP_ID = "localhost"  # its host: the RP id
WEBAUTHN_AMR = ["pwd", "hwk", "user", "mfa"]  # API.md "amr"
SYNCED_AMR = ["pwd", "swk", "user", "mfa"]  # a backup-eligible credential (synced passkey)
RECOVERY_CODE_COUNT = 10
TRANSACTION_ATTEMPTS = 5
WEBAUTHN_TYPES = {"platform_authenticator", "security_key"}
# Yubico's published AAGUID of the YubiKey 5 NFC / 5C NFC (firmware 5.2 and 5.4).
YUBIKEY_5_NFC = "2fc0579f-8113-47ea-b116-bb5a8db9202a"
YUBIKEY_5_NFC_NAME = "YubiKey 5 NFC"
# Google's AAGUID of the Titan Security Key v2.
TITAN = "42b4fb4a-2866-43b2-9bf7-6c6669c2e5d3"
UNKNOWN_MODEL = str(uuid.uuid4())  # a model no table lists
CLONED = "authenticator.cloned"


# -- authenticators ------------------------------------------------------------------------------


def security_key(**overrides: Any) -> SoftAuthenticator:
    """A USB security key that can verify its user (a PIN is set)."""
    values: dict[str, Any] = {"aaguid": UNKNOWN_MODEL, "attachment": "cross-platform", "transports": ("usb",)}
    return SoftAuthenticator(**{**values, **overrides})


def built_in(**overrides: Any) -> SoftAuthenticator:
    """A platform authenticator (Touch ID, Windows Hello): verifies the user, transport "internal"."""
    values: dict[str, Any] = {"aaguid": UNKNOWN_MODEL, "attachment": "platform", "transports": ("internal",)}
    return SoftAuthenticator(**{**values, **overrides})


# -- flows ---------------------------------------------------------------------------------------


@dataclass
class KeyAccount:
    """An account with a registered WebAuthn credential, and the authenticator holding it."""

    account: Account
    authenticator: SoftAuthenticator
    method_type: str
    credential_id: str  # base64url, as the API shows it
    enrolled: dict[str, Any] = field(default_factory=dict)  # the answer of /login/enroll/complete

    @property
    def user(self) -> Any:
        return self.account.user


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    return body


def start_login(client: Any, account: Account, status: str = "mfa_required") -> dict[str, Any]:
    response = login(client, account)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == status, body
    return body


def start_enrollment(client: Any, account: Account, method_type: str, name: str | None = None) -> tuple[str, Any]:
    """Password step, then ``POST /login/enroll``: (transaction, the enrollment start)."""
    transaction = start_login(client, account, "enrollment_required")["transaction"]
    body = {"transaction": transaction, "type": method_type, **({"name": name} if name is not None else {})}
    started = client.post("/api/v1/login/enroll", json=body)
    assert started.status_code == 200, started.text
    return transaction, started.json()


def complete_enrollment(client: Any, transaction: str, started: dict[str, Any], credential: Any) -> Any:
    return client.post(
        "/api/v1/login/enroll/complete",
        json={"transaction": transaction, "enrollment_id": started["enrollment_id"], "credential": credential},
    )


def enroll_webauthn(
    client: Any, account: Account, authenticator: SoftAuthenticator, method_type: str = "security_key", **create: Any
) -> KeyAccount:
    """The forced enrollment of a WebAuthn credential; returns the account signed in."""
    transaction, started = start_enrollment(client, account, method_type)
    credential = authenticator.create(started["publicKey"], **create)
    done = complete_enrollment(client, transaction, started, credential)
    assert done.status_code == 200, done.text
    account.token = done.json()["token"]
    return KeyAccount(account, authenticator, method_type, credential["id"], done.json())


def login_options(client: Any, transaction: str, method_type: str | None = None) -> dict[str, Any]:
    body = {"transaction": transaction, **({"type": method_type} if method_type else {})}
    response = client.post("/api/v1/login/webauthn/options", json=body)
    assert response.status_code == 200, response.text
    public_key: dict[str, Any] = response.json()["publicKey"]
    return public_key


def verify(client: Any, transaction: str, credential: Any) -> Any:
    return client.post(
        "/api/v1/login/verify", json={"transaction": transaction, "type": "webauthn", "credential": credential}
    )


def sign_in(client: Any, key: KeyAccount, method_type: str | None = None) -> dict[str, Any]:
    """Password, options, assertion: the authenticated answer."""
    transaction = start_login(client, key.account)["transaction"]
    response = verify(client, transaction, key.authenticator.get(login_options(client, transaction, method_type)))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    key.account.token = body["token"]
    return body


def assert_refused(response: Any, attempts_left: int = TRANSACTION_ATTEMPTS - 1) -> dict[str, Any]:
    body = assert_problem(response, 401, "invalid_code")
    assert body["attempts_left"] == attempts_left, body
    return body


def active_methods(twofold: Twofold, account: Account) -> list[Any]:
    columns = tables.verification_methods.c
    with twofold.uow.engine.connect() as connection:
        return list(
            connection.execute(
                select(tables.verification_methods).where(
                    columns.user_id == account.user.id, columns.status == "active"
                )
            )
        )


def expire_challenges(twofold: Twofold, account: Account) -> int:
    """Every challenge issued to the account ends a second ago (storage-level set-up, no sleeping)."""
    with twofold.uow.engine.begin() as connection:
        result = connection.execute(
            update(tables.challenges)
            .where(tables.challenges.c.user_id == account.user.id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        return int(result.rowcount)


def expire_step_up(twofold: Twofold, account: Account) -> None:
    from twofold.services.crypto import hash_token

    assert account.token is not None
    with twofold.uow() as uow:
        session = uow.sessions.by_token_hash(hash_token(account.token))
        assert session is not None
        session.step_up_until = utcnow() - timedelta(seconds=1)


def admin_signed_in(client: Any, admin: Account) -> Account:
    """The organization's administrator signs in with MFA (an authenticator app): a fresh step-up."""
    enroll_totp(client, admin)
    return admin


def users_by_name(client: Any, organization_id: str, admin: Account) -> dict[str, Any]:
    response = client.get(f"/api/v1/organizations/{organization_id}/users", headers=bearer(admin.token))
    assert response.status_code == 200, response.text
    return {item["username"]: item for item in response.json()["items"]}


def audit_events(client: Any, organization_id: str, admin: Account, event_type: str, subject: Account) -> list[Any]:
    response = client.get(
        f"/api/v1/organizations/{organization_id}/audit-events",
        params={"type": event_type, "user_id": subject.user.id},
        headers=bearer(admin.token),
    )
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


# -- forced enrollment -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method_type", "make", "attachment", "user_verification", "transport"),
    [
        ("security_key", security_key, "cross-platform", "preferred", "usb"),
        ("platform_authenticator", built_in, "platform", "required", "internal"),
    ],
)
def test_forced_enrollment(
    product_twofold, product_client, method_type, make, attachment, user_verification, transport
):
    organization, _ = create_organization(product_twofold, name="Acme Widgets")
    bob = create_user(product_twofold, organization, "bob")
    assert set(start_login(product_client, bob, "enrollment_required")["enrollable_types"]) >= WEBAUTHN_TYPES

    transaction, started = start_enrollment(product_client, bob, method_type)
    assert started["type"] == method_type
    options = started["publicKey"]
    assert options["rp"]["id"] == RP_ID
    assert options["pubKeyCredParams"][0] == {"type": "public-key", "alg": ES256}
    assert options["authenticatorSelection"]["authenticatorAttachment"] == attachment
    assert options["authenticatorSelection"]["userVerification"] == user_verification
    assert options["attestation"] == "none"
    assert options["excludeCredentials"] == []
    assert len(b64url_decode(options["challenge"])) >= 16  # WebAuthn §13.4.3
    assert b64url_decode(options["user"]["id"]) and options["user"]["name"] == "bob"

    authenticator = make()
    credential = authenticator.create(options)
    assert client_data_of(credential)["origin"] == ORIGIN
    done = complete_enrollment(product_client, transaction, started, credential)
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["status"] == "authenticated"
    assert body["amr"] == WEBAUTHN_AMR
    assert len(body["recovery_codes"]) == RECOVERY_CODE_COUNT
    assert len(set(body["recovery_codes"])) == RECOVERY_CODE_COUNT

    rows = active_methods(product_twofold, bob)
    assert [(row.type, row.lookup_key) for row in rows] == [(method_type, "webauthn:" + credential["id"])]
    me = product_client.get("/api/v1/me", headers=bearer(body["token"]))
    assert me.json()["session"]["amr"] == WEBAUTHN_AMR
    methods = product_client.get("/api/v1/me/methods", headers=bearer(body["token"])).json()
    # The type's default name: the model is unknown, so it stays.
    assert [(m["type"], m["name"]) for m in methods] == [(method_type, started["name"])]

    # The enrolled credential signs the user in; the options name it with its transport.
    key = KeyAccount(bob, authenticator, method_type, credential["id"])
    transaction = start_login(product_client, bob)["transaction"]
    options = login_options(product_client, transaction, method_type)
    assert options["rpId"] == RP_ID
    assert options["allowCredentials"] == [{"type": "public-key", "id": credential["id"], "transports": [transport]}]
    assert options["userVerification"] == user_verification
    response = verify(product_client, transaction, key.authenticator.get(options))
    assert response.status_code == 200, response.text
    assert response.json()["amr"] == WEBAUTHN_AMR


def test_backup_eligible_credential_gives_swk(product_twofold, product_client):
    organization, _ = create_organization(product_twofold)
    bob = create_user(product_twofold, organization, "bob")
    passkey = built_in(backup_eligible=True)  # a synced passkey: BE and BS set
    key = enroll_webauthn(product_client, bob, passkey, "platform_authenticator")
    assert key.enrolled["amr"] == SYNCED_AMR
    assert sign_in(product_client, key)["amr"] == SYNCED_AMR

    carol = create_user(product_twofold, organization, "carol")
    hardware = enroll_webauthn(product_client, carol, security_key(backup_eligible=False))
    assert hardware.enrolled["amr"] == WEBAUTHN_AMR


def test_default_name_comes_from_the_aaguid(product_twofold, product_client):
    organization, _ = create_organization(product_twofold)
    names = {}
    for username, aaguid, name in [
        ("bob", YUBIKEY_5_NFC, None),
        ("carol", UNKNOWN_MODEL, None),
        ("dave", YUBIKEY_5_NFC, "My own key"),
    ]:
        account = create_user(product_twofold, organization, username)
        transaction, started = start_enrollment(product_client, account, "security_key", name)
        done = complete_enrollment(product_client, transaction, started, security_key(aaguid=aaguid).create(started))
        assert done.status_code == 200, done.text
        names[username] = [m["name"] for m in start_login(product_client, account)["methods"]]
    assert names == {"bob": [YUBIKEY_5_NFC_NAME], "carol": ["Security key"], "dave": ["My own key"]}


# -- login -----------------------------------------------------------------------------------------


def test_login_options_with_and_without_type(product_twofold, product_client):
    organization, _ = create_organization(product_twofold)
    bob = create_user(product_twofold, organization, "bob")
    usb = enroll_webauthn(product_client, bob, security_key(transports=("usb", "nfc")))
    # A built-in authenticator added from the profile (a fresh step-up right after the login).
    laptop = built_in()
    started = product_client.post(
        "/api/v1/me/methods", json={"type": "platform_authenticator", "name": "Laptop"}, headers=bearer(bob.token)
    )
    assert started.status_code == 201, started.text
    assert [d["id"] for d in started.json()["publicKey"]["excludeCredentials"]] == [usb.credential_id]
    internal = laptop.create(started.json()["publicKey"])
    done = product_client.post(
        f"/api/v1/me/methods/{started.json()['enrollment_id']}/complete",
        json={"credential": internal},
        headers=bearer(bob.token),
    )
    assert done.status_code == 200, done.text
    assert done.json()["type"] == "platform_authenticator" and done.json()["name"] == "Laptop"

    begun = start_login(product_client, bob)
    assert sorted(m["type"] for m in begun["methods"]) == sorted(WEBAUTHN_TYPES)
    transaction = begun["transaction"]
    everything = login_options(product_client, transaction)
    assert sorted((d["id"], tuple(sorted(d["transports"]))) for d in everything["allowCredentials"]) == sorted(
        [(usb.credential_id, ("nfc", "usb")), (internal["id"], ("internal",))]
    )
    keys_only = login_options(product_client, transaction, "security_key")
    assert [d["id"] for d in keys_only["allowCredentials"]] == [usb.credential_id]
    assert keys_only["userVerification"] == "preferred"
    built_in_only = login_options(product_client, transaction, "platform_authenticator")
    assert [d["id"] for d in built_in_only["allowCredentials"]] == [internal["id"]]
    assert built_in_only["userVerification"] == "required"
    assert len({everything["challenge"], keys_only["challenge"], built_in_only["challenge"]}) == 3

    # Options for built-in authenticators are not answered by the security key: it was not offered.
    not_offered = usb.authenticator.get(built_in_only, credential_id=b64url_decode(usb.credential_id))
    assert_refused(verify(product_client, transaction, not_offered))
    transaction = start_login(product_client, bob)["transaction"]
    everything = login_options(product_client, transaction)
    # Either authenticator answers the options without a type.
    response = verify(product_client, transaction, laptop.get(everything))
    assert response.status_code == 200, response.text
    assert response.json()["amr"] == WEBAUTHN_AMR
    transaction = start_login(product_client, bob)["transaction"]
    response = verify(product_client, transaction, usb.authenticator.get(login_options(product_client, transaction)))
    assert response.status_code == 200, response.text


def test_options_need_an_open_mfa_transaction_and_a_registered_type(product_twofold, product_client):
    organization, _ = create_organization(product_twofold)
    bob = create_user(product_twofold, organization, "bob")
    enrolling = start_login(product_client, bob, "enrollment_required")["transaction"]
    assert_problem(
        product_client.post("/api/v1/login/webauthn/options", json={"transaction": enrolling}), 403, "forbidden"
    )
    enroll_webauthn(product_client, bob, security_key())
    transaction = start_login(product_client, bob)["transaction"]
    response = product_client.post(
        "/api/v1/login/webauthn/options", json={"transaction": transaction, "type": "platform_authenticator"}
    )
    assert_problem(response, 404, "not_found")
    response = product_client.post("/api/v1/login/webauthn/options", json={"transaction": "tft_unknown"})
    assert_problem(response, 410, "transaction_expired")


# -- every relying-party check ---------------------------------------------------------------------


@dataclass
class Scene:
    twofold: Twofold
    client: Any
    organization: Any
    bob: KeyAccount  # the one signing in, with a security key
    _carol: KeyAccount | None = None

    @property
    def carol(self) -> KeyAccount:
        """Another user of the organization, with a security key of her own (enrolled when first used)."""
        if self._carol is None:
            carol = create_user(self.twofold, self.organization, "carol")
            self._carol = enroll_webauthn(self.client, carol, security_key())
        return self._carol


Forge = Callable[[Scene, str, dict[str, Any]], Any]


def wrong_type(scene: Scene, transaction: str, options: dict[str, Any]) -> Any:
    return scene.bob.authenticator.get(options, client_data_type="webauthn.create")


def challenge_of_another_login(scene: Scene, transaction: str, options: dict[str, Any]) -> Any:
    other = start_login(scene.client, scene.bob.account)["transaction"]
    return scene.bob.authenticator.get(login_options(scene.client, other))


def challenge_of_another_user(scene: Scene, transaction: str, options: dict[str, Any]) -> Any:
    carols = start_login(scene.client, scene.carol.account)["transaction"]
    return scene.bob.authenticator.get(options, challenge=login_options(scene.client, carols)["challenge"])


def challenge_never_issued(scene: Scene, transaction: str, options: dict[str, Any]) -> Any:
    return scene.bob.authenticator.get(options, challenge=secrets.token_bytes(64))


def expired_challenge(scene: Scene, transaction: str, options: dict[str, Any]) -> Any:
    assert expire_challenges(scene.twofold, scene.bob.account) == 1
    return scene.bob.authenticator.get(options)


def other_origin(scene: Scene, transaction: str, options: dict[str, Any]) -> Any:
    return scene.bob.authenticator.get(options, origin="https://evil.example")


def other_scheme(scene: Scene, transaction: str, options: dict[str, Any]) -> Any:
    return scene.bob.authenticator.get(options, origin="https://localhost:8000")


def other_port(scene: Scene, transaction: str, options: dict[str, Any]) -> Any:
    return scene.bob.authenticator.get(options, origin="http://localhost:8001")


def other_rp_id(scene: Scene, transaction: str, options: dict[str, Any]) -> Any:
    return scene.bob.authenticator.get(options, rp_id="evil.example")


def user_not_present(scene: Scene, transaction: str, options: dict[str, Any]) -> Any:
    return scene.bob.authenticator.get(options, up=False)


def bad_signature(scene: Scene, transaction: str, options: dict[str, Any]) -> Any:
    return flip_signature_byte(scene.bob.authenticator.get(options))


def flags_changed_after_signing(scene: Scene, transaction: str, options: dict[str, Any]) -> Any:
    return with_flags(scene.bob.authenticator.get(options, uv=False), set_=UV)


def another_users_credential(scene: Scene, transaction: str, options: dict[str, Any]) -> Any:
    carols = b64url_decode(scene.carol.credential_id)
    return scene.carol.authenticator.get(options, credential_id=carols)


def unregistered_credential(scene: Scene, transaction: str, options: dict[str, Any]) -> Any:
    stranger = security_key()
    creation = {
        "rp": {"id": RP_ID, "name": "x"},
        "user": {"id": b64url(b"someone"), "name": "x"},
        "challenge": b64url(b"0" * 32),
        "pubKeyCredParams": [{"type": "public-key", "alg": ES256}],
    }
    made = stranger.create(creation)
    return stranger.get(options, credential_id=b64url_decode(made["id"]))


def missing_signature(scene: Scene, transaction: str, options: dict[str, Any]) -> Any:
    assertion = scene.bob.authenticator.get(options)
    del assertion["response"]["signature"]
    return assertion


FORGERIES: list[Forge] = [
    wrong_type,
    challenge_of_another_login,
    challenge_of_another_user,
    challenge_never_issued,
    expired_challenge,
    other_origin,
    other_scheme,
    other_port,
    other_rp_id,
    user_not_present,
    bad_signature,
    flags_changed_after_signing,
    another_users_credential,
    unregistered_credential,
    missing_signature,
]


@pytest.fixture
def scene(product_twofold, product_client) -> Scene:
    organization, _ = create_organization(product_twofold)
    bob = enroll_webauthn(product_client, create_user(product_twofold, organization, "bob"), security_key())
    return Scene(product_twofold, product_client, organization, bob)


@pytest.mark.parametrize("forge", FORGERIES, ids=[f.__name__ for f in FORGERIES])
def test_each_relying_party_check_fails_the_ceremony(scene, forge):
    client, bob = scene.client, scene.bob
    transaction = start_login(client, bob.account)["transaction"]
    options = login_options(client, transaction, "security_key")

    assert_refused(verify(client, transaction, forge(scene, transaction, options)))
    assert mfa_failures(scene.twofold, bob.account) == 1
    assert [row.cloned_at for row in active_methods(scene.twofold, bob.account)] == [None]

    # The same login goes on with a good response to fresh options.
    response = verify(client, transaction, bob.authenticator.get(login_options(client, transaction, "security_key")))
    assert response.status_code == 200, response.text
    assert response.json()["amr"] == WEBAUTHN_AMR
    assert mfa_failures(scene.twofold, bob.account) == 0


def test_a_good_response_counts_once(scene):
    """A replayed assertion is refused, on another login of the same user as on the same one."""
    client, bob = scene.client, scene.bob
    transaction = start_login(client, bob.account)["transaction"]
    assertion = bob.authenticator.get(login_options(client, transaction))
    assert verify(client, transaction, assertion).status_code == 200
    assert_problem(verify(client, transaction, assertion), 410, "transaction_expired")

    again = start_login(client, bob.account)["transaction"]
    login_options(client, again)  # a challenge of its own exists; the replay answers the old one
    assert_refused(verify(client, again, assertion))
    # A replay is not a clone: the credential is not flagged.
    assert [row.cloned_at for row in active_methods(scene.twofold, bob.account)] == [None]


def test_a_challenge_is_used_once_under_parallel_submissions(scene):
    """One assertion sent six times at once to its login: one succeeds, and none is taken for a clone."""
    client, bob = scene.client, scene.bob
    transaction = start_login(client, bob.account)["transaction"]
    assertion = bob.authenticator.get(login_options(client, transaction))
    app = create_app(scene.twofold, housekeeping=False)
    statuses = run_together(
        [lambda c: verify(c, transaction, assertion).status_code for _ in range(6)],
        lambda: TestClient(app, base_url=PUBLIC_URL),
    )
    assert sorted(statuses).count(200) == 1, statuses
    assert all(status in {200, 401, 410} for status in statuses), statuses
    assert [row.cloned_at for row in active_methods(scene.twofold, bob.account)] == [None]


def test_five_refused_responses_end_the_login(scene):
    client, bob = scene.client, scene.bob
    transaction = start_login(client, bob.account)["transaction"]
    for left in range(TRANSACTION_ATTEMPTS - 1, -1, -1):
        options = login_options(client, transaction)
        assert_refused(verify(client, transaction, flip_signature_byte(bob.authenticator.get(options))), left)
    response = client.post("/api/v1/login/webauthn/options", json={"transaction": transaction})
    assert_problem(response, 410, "transaction_expired")
    assert mfa_failures(scene.twofold, bob.account) == TRANSACTION_ATTEMPTS


def test_user_verification_always_required_of_a_built_in_authenticator(product_twofold, product_client):
    organization, _ = create_organization(product_twofold)
    bob = enroll_webauthn(
        product_client, create_user(product_twofold, organization, "bob"), built_in(), "platform_authenticator"
    )
    carol = enroll_webauthn(product_client, create_user(product_twofold, organization, "carol"), security_key())

    # Bob's built-in authenticator answers without UV: refused whatever the options asked.
    transaction = start_login(product_client, bob.account)["transaction"]
    for method_type, asked in [("platform_authenticator", "required"), (None, "preferred")]:
        options = login_options(product_client, transaction, method_type)
        assert options["userVerification"] == asked
        answer = bob.authenticator.get(options, uv=False)
        assert not authenticator_data_of(answer).flags & UV
        left = TRANSACTION_ATTEMPTS - (1 if method_type else 2)
        assert_refused(verify(product_client, transaction, answer), left)
    response = verify(product_client, transaction, bob.authenticator.get(login_options(product_client, transaction)))
    assert response.status_code == 200, response.text

    # Carol's security key passes on presence alone (UV "preferred").
    transaction = start_login(product_client, carol.account)["transaction"]
    answer = carol.authenticator.get(login_options(product_client, transaction, "security_key"), uv=False)
    response = verify(product_client, transaction, answer)
    assert response.status_code == 200, response.text
    assert response.json()["amr"] == WEBAUTHN_AMR


# -- registration refusals -----------------------------------------------------------------------

REGISTRATION_FORGERIES: list[tuple[str, str, dict[str, Any]]] = [
    ("wrong_challenge", "security_key", {"challenge": secrets.token_bytes(64)}),
    ("get_type", "security_key", {"client_data_type": "webauthn.get"}),
    ("other_origin", "security_key", {"origin": "https://evil.example"}),
    ("other_rp_id", "security_key", {"rp_id": "evil.example"}),
    ("user_not_present", "security_key", {"up": False}),
    ("no_uv_built_in", "platform_authenticator", {"uv": False}),
    ("alg_not_offered", "security_key", {"alg": ES512}),
]


@pytest.mark.parametrize(
    ("method_type", "changes"),
    [(kind, changes) for _, kind, changes in REGISTRATION_FORGERIES],
    ids=[name for name, _, _ in REGISTRATION_FORGERIES],
)
def test_registration_refusals(product_twofold, product_client, method_type, changes):
    organization, _ = create_organization(product_twofold)
    bob = create_user(product_twofold, organization, "bob")
    transaction, started = start_enrollment(product_client, bob, method_type)
    assert ES512 not in [p["alg"] for p in started["publicKey"]["pubKeyCredParams"]]
    authenticator = security_key() if method_type == "security_key" else built_in()

    refused = complete_enrollment(product_client, transaction, started, authenticator.create(started, **changes))
    body = assert_problem(refused, 400, "invalid_code")
    assert body["attempts_left"] == TRANSACTION_ATTEMPTS - 1
    assert active_methods(product_twofold, bob) == []

    # The same enrollment completes with a good response.
    done = complete_enrollment(product_client, transaction, started, authenticator.create(started))
    assert done.status_code == 200, done.text
    assert len(active_methods(product_twofold, bob)) == 1


def test_security_key_registers_without_user_verification(product_twofold, product_client):
    """A key without a PIN: UV "preferred" at registration, so presence alone is enough."""
    organization, _ = create_organization(product_twofold)
    bob = create_user(product_twofold, organization, "bob")
    transaction, started = start_enrollment(product_client, bob, "security_key")
    key = security_key(uv=False)
    credential = key.create(started)
    assert not authenticator_data_of(credential).flags & UV
    done = complete_enrollment(product_client, transaction, started, credential)
    assert done.status_code == 200, done.text
    assert done.json()["amr"] == WEBAUTHN_AMR
    assert sign_in(product_client, KeyAccount(bob, key, "security_key", credential["id"]))["amr"] == WEBAUTHN_AMR


def test_a_credential_id_registered_to_anyone_is_refused(product_twofold, product_client):
    organization, _ = create_organization(product_twofold)
    bob = enroll_webauthn(product_client, create_user(product_twofold, organization, "bob"), security_key())
    taken = b64url_decode(bob.credential_id)

    # Another user answers with Bob's credential id (and a key of her own): refused, nothing added.
    carol = create_user(product_twofold, organization, "carol")
    transaction, started = start_enrollment(product_client, carol, "security_key")
    carols_key = security_key()
    refused = complete_enrollment(product_client, transaction, started, carols_key.create(started, credential_id=taken))
    assert_problem(refused, 400, "invalid_code")
    assert active_methods(product_twofold, carol) == []
    # Carol's own key registers, in a new enrollment of the same login.
    started = product_client.post("/api/v1/login/enroll", json={"transaction": transaction, "type": "security_key"})
    assert started.status_code == 200, started.text
    done = complete_enrollment(product_client, transaction, started.json(), security_key().create(started.json()))
    assert done.status_code == 200, done.text

    # Bob registers his own key again from his profile: the browser would refuse (it is in
    # excludeCredentials); a client that sends it anyway is refused by the server.
    started = product_client.post(
        "/api/v1/me/methods", json={"type": "security_key"}, headers=bearer(bob.account.token)
    )
    assert started.status_code == 201, started.text
    options = started.json()["publicKey"]
    assert options["excludeCredentials"] == [{"type": "public-key", "id": bob.credential_id, "transports": ["usb"]}]
    with pytest.raises(CredentialExcluded):
        bob.authenticator.create(options)
    for credential in (
        bob.authenticator.create(options, credential_id=taken),
        security_key().create(options, credential_id=taken),
    ):
        refused = product_client.post(
            f"/api/v1/me/methods/{started.json()['enrollment_id']}/complete",
            json={"credential": credential},
            headers=bearer(bob.account.token),
        )
        assert_problem(refused, 400, "invalid_code")
    assert len(active_methods(product_twofold, bob.account)) == 1
    assert len(active_methods(product_twofold, carol)) == 1
    # Bob's credential still signs him in.
    assert sign_in(product_client, bob)["amr"] == WEBAUTHN_AMR


# -- signature counter -------------------------------------------------------------------------------


def test_a_counter_that_does_not_grow_is_a_cloned_authenticator(product_twofold, product_client):
    organization, admin = create_organization(product_twofold)
    bob = enroll_webauthn(product_client, create_user(product_twofold, organization, "bob"), security_key())
    credential_id = b64url_decode(bob.credential_id)
    bob.authenticator.set_sign_count(credential_id, 9)
    transaction = start_login(product_client, bob.account)["transaction"]
    answer = bob.authenticator.get(login_options(product_client, transaction))
    assert authenticator_data_of(answer).sign_count == 10
    assert verify(product_client, transaction, answer).status_code == 200
    assert [row.counter for row in active_methods(product_twofold, bob.account)] == [10]

    admin_signed_in(product_client, admin)
    assert "cloned_authenticator" not in users_by_name(product_client, organization.id, admin)["bob"]["flags"]

    # A copy of the key, behind the original: reports 10, then 5, both not above the stored 10.
    copy = bob.authenticator.clone()
    for reported in (10, 5):
        copy.set_sign_count(credential_id, reported - 1)
        transaction = start_login(product_client, bob.account)["transaction"]
        answer = copy.get(login_options(product_client, transaction))
        assert authenticator_data_of(answer).sign_count == reported
        assert_refused(verify(product_client, transaction, answer))

    listed = users_by_name(product_client, organization.id, admin)["bob"]
    assert "cloned_authenticator" in listed["flags"]
    assert listed["methods"][0]["cloned_at"] is not None
    events = audit_events(product_client, organization.id, admin, CLONED, bob.account)
    assert len(events) == 2
    assert all(event["details"]["method_id"] == active_methods(product_twofold, bob.account)[0].id for event in events)
    assert [row.counter for row in active_methods(product_twofold, bob.account)] == [10]


def test_a_forged_counter_regression_is_not_a_clone(product_twofold, product_client):
    """Only the credential's own signature can report its counter: an assertion with a regressed
    counter and a bad signature is a plain failure, neither flagged nor audited as a clone."""
    organization, admin = create_organization(product_twofold)
    bob = enroll_webauthn(product_client, create_user(product_twofold, organization, "bob"), security_key())
    assert sign_in(product_client, bob)["amr"] == WEBAUTHN_AMR  # stored counter 1
    bob.authenticator.set_sign_count(bob.credential_id, 0)
    transaction = start_login(product_client, bob.account)["transaction"]
    answer = flip_signature_byte(bob.authenticator.get(login_options(product_client, transaction)))
    assert authenticator_data_of(answer).sign_count == 1
    assert_refused(verify(product_client, transaction, answer))
    admin_signed_in(product_client, admin)
    assert "cloned_authenticator" not in users_by_name(product_client, organization.id, admin)["bob"]["flags"]
    assert audit_events(product_client, organization.id, admin, CLONED, bob.account) == []


def test_authenticators_without_a_counter_are_accepted_repeatedly(product_twofold, product_client):
    organization, admin = create_organization(product_twofold)
    bob = enroll_webauthn(
        product_client, create_user(product_twofold, organization, "bob"), security_key(sign_count="zero")
    )
    for _ in range(3):
        transaction = start_login(product_client, bob.account)["transaction"]
        answer = bob.authenticator.get(login_options(product_client, transaction))
        assert authenticator_data_of(answer).sign_count == 0
        response = verify(product_client, transaction, answer)
        assert response.status_code == 200, response.text
    admin_signed_in(product_client, admin)
    assert "cloned_authenticator" not in users_by_name(product_client, organization.id, admin)["bob"]["flags"]
    assert audit_events(product_client, organization.id, admin, CLONED, bob.account) == []


# -- organization policy: attestation and allowed models ------------------------------------------


def test_organization_allows_only_attested_models_on_its_list(product_twofold, product_client):
    organization, admin = create_organization(product_twofold)
    admin_signed_in(product_client, admin)
    url = f"/api/v1/organizations/{organization.id}"

    # An allow-list needs "direct" attestation: refused without it, and nothing changes.
    response = product_client.patch(
        url, json={"webauthn_allowed_aaguids": [YUBIKEY_5_NFC]}, headers=bearer(admin.token)
    )
    assert_problem(response, 422, "validation_error")
    assert product_client.get(url, headers=bearer(admin.token)).json()["webauthn_allowed_aaguids"] is None

    policy = {"webauthn_attestation": "direct", "webauthn_allowed_aaguids": [YUBIKEY_5_NFC.upper()]}
    response = product_client.patch(url, json=policy, headers=bearer(admin.token))
    assert response.status_code == 200, response.text
    assert response.json()["webauthn_attestation"] == "direct"
    assert response.json()["webauthn_allowed_aaguids"] == [YUBIKEY_5_NFC]
    response = product_client.patch(url, json={"webauthn_attestation": "none"}, headers=bearer(admin.token))
    assert_problem(response, 422, "validation_error")

    # A YubiKey 5 NFC attesting (packed) is accepted, and named after its model.
    bob = create_user(product_twofold, organization, "bob")
    transaction, started = start_enrollment(product_client, bob, "security_key")
    assert started["publicKey"]["attestation"] == "direct"
    credential = security_key(aaguid=YUBIKEY_5_NFC).create(started)
    attestation = attestation_of(credential)
    assert attestation["fmt"] == "packed" and attestation["attStmt"]["alg"] == ES256
    assert authenticator_data_of(credential).flags & AT
    done = complete_enrollment(product_client, transaction, started, credential)
    assert done.status_code == 200, done.text
    assert [m["name"] for m in start_login(product_client, bob)["methods"]] == [YUBIKEY_5_NFC_NAME]

    # Another model is refused with a clear message; so is the listed model without attestation.
    carol = create_user(product_twofold, organization, "carol")
    transaction, started = start_enrollment(product_client, carol, "security_key")
    for authenticator in (security_key(aaguid=TITAN), security_key(aaguid=YUBIKEY_5_NFC, attestation="none")):
        refused = complete_enrollment(product_client, transaction, started, authenticator.create(started))
        assert "not allowed by your organization" in assert_problem(refused, 400, "invalid_code")["detail"]
    assert active_methods(product_twofold, carol) == []
    done = complete_enrollment(product_client, transaction, started, security_key(aaguid=YUBIKEY_5_NFC).create(started))
    assert done.status_code == 200, done.text

    # The policy changes later registrations only: a registered key still signs its user in.
    dave = create_user(product_twofold, organization, "dave")
    dave_key = enroll_webauthn(product_client, dave, security_key(aaguid=YUBIKEY_5_NFC))
    response = product_client.patch(url, json={"webauthn_allowed_aaguids": [TITAN]}, headers=bearer(admin.token))
    assert response.status_code == 200, response.text
    assert sign_in(product_client, dave_key)["amr"] == WEBAUTHN_AMR


def test_direct_attestation_without_a_list_accepts_any_model(product_twofold, product_client):
    organization, admin = create_organization(product_twofold)
    admin_signed_in(product_client, admin)
    response = product_client.patch(
        f"/api/v1/organizations/{organization.id}", json={"webauthn_attestation": "direct"}, headers=bearer(admin.token)
    )
    assert response.status_code == 200, response.text
    for username, authenticator in [("bob", security_key(aaguid=TITAN)), ("carol", security_key(attestation="none"))]:
        key = enroll_webauthn(product_client, create_user(product_twofold, organization, username), authenticator)
        assert key.enrolled["amr"] == WEBAUTHN_AMR


def test_policy_needs_a_fresh_step_up(product_twofold, product_client):
    organization, admin = create_organization(product_twofold)
    admin_signed_in(product_client, admin)
    expire_step_up(product_twofold, admin)
    response = product_client.patch(
        f"/api/v1/organizations/{organization.id}", json={"webauthn_attestation": "direct"}, headers=bearer(admin.token)
    )
    assert_problem(response, 403, "step_up_required")
    bob = create_user(product_twofold, organization, "bob")
    assert start_enrollment(product_client, bob, "security_key")[1]["publicKey"]["attestation"] == "none"


# -- a server without a valid RP id ----------------------------------------------------------------


def test_an_ip_address_public_url_offers_no_webauthn(make_twofold):
    twofold = make_twofold(registry=default_registry(), public_url="http://127.0.0.1:8000")
    with TestClient(create_app(twofold, housekeeping=False), base_url="http://127.0.0.1:8000") as client:
        organization, _ = create_organization(twofold)
        bob = create_user(twofold, organization, "bob")
        begun = start_login(client, bob, "enrollment_required")
        assert "totp" in begun["enrollable_types"]
        assert not WEBAUTHN_TYPES & set(begun["enrollable_types"])
        for method_type in sorted(WEBAUTHN_TYPES):
            response = client.post(
                "/api/v1/login/enroll", json={"transaction": begun["transaction"], "type": method_type}
            )
            assert_problem(response, 403, "forbidden")


# -- profile enrollment and step-up --------------------------------------------------------------


def test_second_key_from_the_profile_and_step_up(product_twofold, product_client):
    organization, _ = create_organization(product_twofold)
    bob = enroll_webauthn(product_client, create_user(product_twofold, organization, "bob"), security_key())
    headers = bearer(bob.account.token)

    # A second key, from the profile, named after its model when no name is given.
    spare = security_key(aaguid=YUBIKEY_5_NFC, transports=("usb", "nfc"))
    started = product_client.post("/api/v1/me/methods", json={"type": "security_key"}, headers=headers)
    assert started.status_code == 201, started.text
    assert started.json()["publicKey"]["authenticatorSelection"]["authenticatorAttachment"] == "cross-platform"
    credential = spare.create(started.json()["publicKey"])
    done = product_client.post(
        f"/api/v1/me/methods/{started.json()['enrollment_id']}/complete",
        json={"credential": credential},
        headers=headers,
    )
    assert done.status_code == 200, done.text
    assert done.json()["name"] == YUBIKEY_5_NFC_NAME
    assert "recovery_codes" not in done.json()  # Bob has his set since the forced enrollment
    second = KeyAccount(bob.account, spare, "security_key", credential["id"])
    methods = product_client.get("/api/v1/me/methods", headers=headers).json()
    assert sorted(m["name"] for m in methods) == sorted(["Security key", YUBIKEY_5_NFC_NAME])

    # Step-up with either key, once the session's MFA is older than the window.
    for key in (bob, second):
        expire_step_up(product_twofold, bob.account)
        assert_problem(product_client.post("/api/v1/me/recovery-codes", headers=headers), 403, "step_up_required")
        options = product_client.post("/api/v1/me/step-up/webauthn/options", json={}, headers=headers)
        assert options.status_code == 200, options.text
        assert {d["id"] for d in options.json()["publicKey"]["allowCredentials"]} == {
            bob.credential_id,
            second.credential_id,
        }
        answer = key.authenticator.get(options.json()["publicKey"])
        stepped = product_client.post(
            "/api/v1/me/step-up", json={"type": "webauthn", "credential": answer}, headers=headers
        )
        assert stepped.status_code == 200, stepped.text
        assert stepped.json()["step_up_until"]
        assert product_client.post("/api/v1/me/recovery-codes", headers=headers).status_code == 201
        # The same answer again: its challenge was used.
        assert_problem(
            product_client.post("/api/v1/me/step-up", json={"type": "webauthn", "credential": answer}, headers=headers),
            400,
            "invalid_code",
        )

    # A bad signature fails the step-up, and counts.
    failures = mfa_failures(product_twofold, bob.account)
    options = product_client.post("/api/v1/me/step-up/webauthn/options", json={"type": "security_key"}, headers=headers)
    answer = flip_signature_byte(bob.authenticator.get(options.json()["publicKey"]))
    refused = product_client.post(
        "/api/v1/me/step-up", json={"type": "webauthn", "credential": answer}, headers=headers
    )
    assert_problem(refused, 400, "invalid_code")
    assert mfa_failures(product_twofold, bob.account) == failures + 1


def test_step_up_and_login_challenges_do_not_cross(product_twofold, product_client):
    organization, _ = create_organization(product_twofold)
    bob = enroll_webauthn(product_client, create_user(product_twofold, organization, "bob"), security_key())
    headers = bearer(bob.account.token)

    # A challenge issued for a step-up, answered at a login.
    step_up_options = product_client.post("/api/v1/me/step-up/webauthn/options", json={}, headers=headers).json()
    transaction = start_login(product_client, bob.account)["transaction"]
    login_options(product_client, transaction)
    assert_refused(verify(product_client, transaction, bob.authenticator.get(step_up_options["publicKey"])))

    # A challenge issued for that login, answered at the step-up.
    answer = bob.authenticator.get(login_options(product_client, transaction))
    refused = product_client.post(
        "/api/v1/me/step-up", json={"type": "webauthn", "credential": answer}, headers=headers
    )
    assert_problem(refused, 400, "invalid_code")

    # Each where it belongs works.
    fresh = product_client.post("/api/v1/me/step-up/webauthn/options", json={}, headers=headers).json()
    stepped = product_client.post(
        "/api/v1/me/step-up",
        json={"type": "webauthn", "credential": bob.authenticator.get(fresh["publicKey"])},
        headers=headers,
    )
    assert stepped.status_code == 200, stepped.text
    response = verify(product_client, transaction, bob.authenticator.get(login_options(product_client, transaction)))
    assert response.status_code == 200, response.text


def test_a_step_up_challenge_belongs_to_its_session(product_twofold, product_client):
    organization, _ = create_organization(product_twofold)
    bob = enroll_webauthn(product_client, create_user(product_twofold, organization, "bob"), security_key())
    first = bob.account.token
    second = sign_in(product_client, bob)["token"]
    options = product_client.post("/api/v1/me/step-up/webauthn/options", json={}, headers=bearer(first)).json()
    answer = bob.authenticator.get(options["publicKey"])
    refused = product_client.post(
        "/api/v1/me/step-up", json={"type": "webauthn", "credential": answer}, headers=bearer(second)
    )
    assert_problem(refused, 400, "invalid_code")
    stepped = product_client.post(
        "/api/v1/me/step-up",
        json={"type": "webauthn", "credential": bob.authenticator.get(options["publicKey"])},
        headers=bearer(first),
    )
    assert stepped.status_code == 200, stepped.text
