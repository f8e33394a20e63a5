"""Push verification with the Twofold Authenticator companion through the JSON API (issue 6; API.md "Push
companion", "Login", "Self-service"): pairing by a single-use code, device requests signed with the
device's key (``Twofold-Device``: fresh, once, for one method and URL), number-matched challenges answered
once, the wrong-number suspension, the fatigue limit, step-up, the webhook gateway and the long poll.

The device is played by tests/support/push.py, which signs with the companion's own functions
(``twofold.methods.push.device``). A user first enrolls an authenticator app (tests/support/totp.py) and
then adds the device from the profile, except where push is the first method.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import queue
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient
from joserfc.jwk import ECKey, RSAKey
from joserfc.util import urlsafe_b64decode, urlsafe_b64encode
from sqlalchemy import update

from twofold.container import Twofold
from twofold.domain.clock import utcnow
from twofold.domain.entities import Organization
from twofold.methods.push.device import new_device_key, public_jwk, sign_answer
from twofold.methods.registry import default_registry
from twofold.services.crypto import hash_token
from twofold.storage import tables
from twofold.web.app import create_app

from .conftest import PUBLIC_URL
from .support.flows import Account, bearer, create_organization, create_user, login, run_together
from .support.push import (
    CHALLENGES_PATH,
    PushDevice,
    add_push_device,
    approve,
    begin_push_enrollment,
    complete_push_enrollment,
    deny,
    device_headers,
    list_challenges,
    open_challenges,
    pair,
    pair_device,
    pairing_code_of,
    pairing_server_of,
    respond,
    start_login_push,
    verify_push,
)
from .support.totp import TotpAccount, enroll_totp

PUSH_AMR = ["pwd", "swk", "mfa"]  # API.md: push gives swk
MFA_ACR = "urn:twofold:acr:mfa"
TRANSACTION_ATTEMPTS = 5
CHALLENGE_LIFETIME = timedelta(seconds=60)
PROMPT_LIMIT = 3  # API.md: at most 3 prompts per user per 10 minutes
PROMPT_WINDOW_SECONDS = 600
SUSPENSION_SECONDS = 900  # API.md: a wrong number suspends push for 15 minutes
RECOVERY_CODE_COUNT = 10
CHALLENGE_FIELDS = {"challenge_id", "app", "ip", "user_agent", "created_at", "expires_at", "numbers"}
WEBHOOK_SECRET = "s" * 40


# -- the scene -------------------------------------------------------------------------------------


@dataclass
class Scene:
    """Acme with alice (administrator, signed in with an authenticator app) and bob, who signed in with an
    authenticator app and then paired his phone from the profile."""

    twofold: Twofold
    client: Any
    organization: Organization
    alice: Account
    bob: TotpAccount
    phone: PushDevice

    @property
    def account(self) -> Account:
        return self.bob.account

    def start_login(self) -> str:
        """Bob's password step: an mfa_required transaction offering his push device."""
        response = login(self.client, self.account)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "mfa_required", body
        assert {"id": self.phone.device_id, "type": "push", "name": self.phone.device_name} in body["methods"]
        return str(body["transaction"])

    def push(self, transaction: str, *, method_id: str | None = None) -> dict[str, Any]:
        response = start_login_push(self.client, transaction, method_id=method_id)
        assert response.status_code == 200, response.text
        started: dict[str, Any] = response.json()
        return started

    def add_device(self, device_name: str, platform: str = "ios") -> PushDevice:
        assert self.bob.token is not None
        return add_push_device(
            self.client, self.bob.token, public_url=PUBLIC_URL, device_name=device_name, platform=platform
        )

    def audit(self, event_type: str, subject: Account | None = None) -> list[dict[str, Any]]:
        """Audit events of a type about bob (or ``subject``), read by the administrator through the API."""
        response = self.client.get(
            f"/api/v1/organizations/{self.organization.id}/audit-events",
            params={"type": event_type, "user_id": (subject or self.account).user.id},
            headers=bearer(self.alice.token),
        )
        assert response.status_code == 200, response.text
        return list(response.json()["items"])

    def mail_to(self, account: Account) -> list[str]:
        """The bodies of the security notices sent to an account's address."""
        sent = self.twofold.notifier.sent  # type: ignore[attr-defined]
        return [body for to, _, body in sent if to == account.user.email]

    def failed_attempts(self, transaction: str) -> int:
        with self.twofold.uow(read_only=True) as uow:
            found = uow.transactions.by_token_hash(hash_token(transaction))
            assert found is not None
            return int(found.failed_attempts)


def make_scene(twofold: Twofold, client: Any) -> Scene:
    organization, alice = create_organization(twofold, name="Acme Widgets")
    enroll_totp(client, alice)
    bob = enroll_totp(client, create_user(twofold, organization, "bob"))
    assert bob.token is not None
    phone = add_push_device(client, bob.token, public_url=PUBLIC_URL, device_name="Bob's Pixel", platform="android")
    return Scene(twofold, client, organization, alice, bob, phone)


@pytest.fixture
def scene(product_twofold: Twofold, product_client: Any) -> Scene:
    return make_scene(product_twofold, product_client)


def new_client(client: Any) -> Callable[[], TestClient]:
    """Another client of the same app (its own connection and thread), as run_together needs."""
    return lambda: TestClient(client.app, base_url=PUBLIC_URL)


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def expire_challenge(twofold: Twofold, challenge_id: str) -> None:
    """The challenge's 60 s have passed (a storage-level set-up instead of sleeping)."""
    with twofold.uow.engine.begin() as connection:
        connection.execute(
            update(tables.push_challenges)
            .where(tables.push_challenges.c.id == challenge_id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )


def expire_step_up(twofold: Twofold, token: str) -> None:
    with twofold.uow() as uow:
        session = uow.sessions.by_token_hash(hash_token(token))
        assert session is not None
        session.step_up_until = utcnow() - timedelta(seconds=1)


def assert_problem(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body: dict[str, Any] = response.json()
    if code is not None:
        assert body["code"] == code, body
    return body


def other_number(started: dict[str, Any], challenge: dict[str, Any]) -> int:
    """One of the offered numbers that is not the one the sign-in page shows."""
    return int(next(n for n in challenge["numbers"] if n != started["number"]))


def the_challenge(client: Any, device: PushDevice, challenge_id: str) -> dict[str, Any]:
    found = [c for c in open_challenges(client, device) if c["challenge_id"] == challenge_id]
    assert len(found) == 1, found
    return found[0]


# -- pairing ---------------------------------------------------------------------------------------


def test_a_device_pairs_from_the_profile_and_takes_its_device_name(scene):
    """A push enrollment from the profile gives a single-use pairing code and a twofold:// URI naming the
    server; completing it answers 202 until the device pairs. The paired device becomes the method,
    named after the device; the user is told by email and the pairing is audited (without the key)."""
    client, bob = scene.client, scene.bob  # bob's phone is paired already; he adds his tablet
    assert bob.token is not None
    started = begin_push_enrollment(client, bob.token)
    assert started["type"] == "push"
    code = pairing_code_of(started)
    assert len(code) >= 22  # ≥ 128 bits, base64url
    assert pairing_server_of(started) == PUBLIC_URL
    assert started["qr_svg"].startswith("<svg")

    pending = complete_push_enrollment(client, bob.token, started["enrollment_id"])
    assert pending.status_code == 202, pending.text
    assert pending.json() == {"status": "pending"}

    tablet = pair_device(client, started, public_url=PUBLIC_URL, device_name="Bob's iPad", platform="ipados")
    assert tablet.device_id == started["enrollment_id"]
    completed = complete_push_enrollment(client, bob.token, started["enrollment_id"])
    assert completed.status_code == 200, completed.text
    assert (completed.json()["type"], completed.json()["name"]) == ("push", "Bob's iPad")

    methods = client.get("/api/v1/me/methods", headers=bearer(bob.token)).json()
    assert {(m["type"], m["name"]) for m in methods} == {
        ("push", "Bob's iPad"),
        ("push", "Bob's Pixel"),
        ("totp", "Phone"),
    }
    notices = [body for body in scene.mail_to(bob.account) if "paired" in body and "Bob's iPad" in body]
    assert len(notices) == 1 and "ipados" in notices[0], scene.mail_to(bob.account)

    events = [e for e in scene.audit("push.device_paired") if e["details"]["method_id"] == tablet.device_id]
    assert len(events) == 1, events
    details = events[0]["details"]
    assert (details["device_name"], details["platform"]) == ("Bob's iPad", "ipados")
    assert details["key_thumbprint"] == tablet.key.thumbprint()
    assert "public_jwk" not in json.dumps(events[0]) and public_jwk(tablet.key)["x"] not in json.dumps(events[0])


def test_a_name_given_at_enrollment_is_kept(scene):
    """A name the user chose when starting the enrollment is not replaced by the device's name."""
    assert scene.bob.token is not None
    device = add_push_device(scene.client, scene.bob.token, device_name="Old phone", name="Work phone")
    methods = scene.client.get("/api/v1/me/methods", headers=bearer(scene.bob.token)).json()
    assert {"id": device.device_id, "name": "Work phone"} in [{"id": m["id"], "name": m["name"]} for m in methods]


def test_a_pairing_code_is_single_use(scene):
    """A pairing code pairs one device: a second pairing with it is 404, and the first device keeps the method."""
    assert scene.bob.token is not None
    started = begin_push_enrollment(scene.client, scene.bob.token)
    first = pair(scene.client, pairing_code_of(started), device_name="First")
    assert first.status_code == 201, first.text
    again = pair(scene.client, pairing_code_of(started), device_name="Second")
    assert_problem(again, 404, "not_found")
    # The first device kept the enrollment: it completes with the first device's name.
    completed = complete_push_enrollment(scene.client, scene.bob.token, started["enrollment_id"])
    assert completed.status_code == 200 and completed.json()["name"] == "First", completed.text


def test_an_expired_enrollment_cannot_be_paired(scene):
    """The code of an enrollment past its expiry no longer pairs (404)."""
    assert scene.bob.token is not None
    started = begin_push_enrollment(scene.client, scene.bob.token)
    with scene.twofold.uow.engine.begin() as connection:
        connection.execute(
            update(tables.verification_methods)
            .where(tables.verification_methods.c.id == started["enrollment_id"])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert_problem(pair(scene.client, pairing_code_of(started)), 404, "not_found")


def test_an_unknown_pairing_code_is_not_found(scene):
    """A code nobody issued, or one too short to be a code, is 404."""
    assert_problem(pair(scene.client, secrets.token_urlsafe(32)), 404, "not_found")
    assert_problem(pair(scene.client, "short"), 404, "not_found")


def _point_off_the_curve() -> dict[str, Any]:
    jwk = public_jwk(new_device_key())
    y = int.from_bytes(urlsafe_b64decode(jwk["y"].encode()), "big")
    jwk["y"] = urlsafe_b64encode(((y + 1) % 2**256).to_bytes(32, "big")).decode()
    return jwk


BAD_KEYS: dict[str, Callable[[], Any]] = {
    "P-384": lambda: ECKey.generate_key("P-384", private=True).as_dict(private=False),
    "RSA": lambda: RSAKey.generate_key(2048, private=True).as_dict(private=False),
    "private key (d)": lambda: new_device_key().as_dict(private=True),
    "not on the curve": _point_off_the_curve,
    "no y": lambda: {k: v for k, v in public_jwk(new_device_key()).items() if k != "y"},
    "x not a string": lambda: {**public_jwk(new_device_key()), "x": 12345},
    "a string": lambda: "not a key",
    "a list": lambda: [public_jwk(new_device_key())],
}


@pytest.mark.parametrize("bad_key", list(BAD_KEYS.values()), ids=list(BAD_KEYS))
def test_a_bad_public_key_is_refused_and_the_code_kept(scene, bad_key):
    """Only an EC P-256 public JWK whose point is on the curve pairs; a refusal does not spend the code."""
    assert scene.bob.token is not None
    started = begin_push_enrollment(scene.client, scene.bob.token)
    refused = pair(scene.client, pairing_code_of(started), public_key=bad_key())
    assert_problem(refused, 422)
    assert pair(scene.client, pairing_code_of(started)).status_code == 201


def test_several_devices_see_a_challenge_and_method_id_asks_one(scene):
    """Every paired device of the user sees a challenge; with method_id only that device sees it and may
    answer it."""
    tablet = scene.add_device("Bob's iPad")
    transaction = scene.start_login()

    anyone = scene.push(transaction)
    for device in (scene.phone, tablet):
        assert [c["challenge_id"] for c in open_challenges(scene.client, device)] == [anyone["challenge_id"]]
    assert deny(scene.client, scene.phone, anyone["challenge_id"]).status_code == 204

    only_tablet = scene.push(transaction, method_id=tablet.device_id)
    assert open_challenges(scene.client, scene.phone) == []
    assert [c["challenge_id"] for c in open_challenges(scene.client, tablet)] == [only_tablet["challenge_id"]]
    # The phone cannot answer a challenge sent to the tablet only.
    refused = approve(scene.client, scene.phone, only_tablet["challenge_id"], only_tablet["number"])
    assert_problem(refused, 404, "not_found")
    assert approve(scene.client, tablet, only_tablet["challenge_id"], only_tablet["number"]).status_code == 204
    done = verify_push(scene.client, transaction, only_tablet["challenge_id"])
    assert done.status_code == 200 and done.json()["amr"] == PUSH_AMR, done.text


def test_a_push_to_a_device_of_someone_else_is_not_found(scene):
    """method_id naming another user's device is 404, and that device is never asked."""
    carol = enroll_totp(scene.client, create_user(scene.twofold, scene.organization, "carol"))
    assert carol.token is not None
    carols_phone = add_push_device(scene.client, carol.token, device_name="Carol's phone")
    transaction = scene.start_login()
    assert_problem(start_login_push(scene.client, transaction, method_id=carols_phone.device_id), 404, "not_found")
    assert open_challenges(scene.client, carols_phone) == []


def test_a_device_is_renamed_and_removed_like_any_method(scene):
    """A device is a method of the profile: renamed with PATCH, removed with DELETE; a removed device's
    requests are 401, and the user's logins can no longer send a push (403)."""
    token = scene.bob.token
    assert token is not None
    renamed = scene.client.patch(
        f"/api/v1/me/methods/{scene.phone.device_id}", json={"name": "Old Pixel"}, headers=bearer(token)
    )
    assert renamed.status_code == 200 and renamed.json()["name"] == "Old Pixel", renamed.text
    assert list_challenges(scene.client, scene.phone).status_code == 200

    removed = scene.client.delete(f"/api/v1/me/methods/{scene.phone.device_id}", headers=bearer(token))
    assert removed.status_code == 204, removed.text
    assert_problem(list_challenges(scene.client, scene.phone), 401, "unauthenticated")
    transaction = login(scene.client, scene.account).json()["transaction"]
    assert_problem(start_login_push(scene.client, transaction), 403, "forbidden")


# -- device authentication -------------------------------------------------------------------------


def test_device_calls_need_the_device_scheme(scene):
    """Without a Twofold-Device proof (no header, a bearer token, an empty or broken JWS) a device call is 401."""
    assert scene.bob.token is not None
    signed = device_headers(scene.phone, "GET", CHALLENGES_PATH)["Authorization"].partition(" ")[2]
    for headers in (
        {},
        {"Authorization": f"Bearer {scene.bob.token}"},
        {"Authorization": f"Bearer {signed}"},
        {"Authorization": "Twofold-Device "},
        {"Authorization": "Twofold-Device not.a.jws"},
        {"Authorization": f"Twofold-Device {signed[:-4]}AAAA"},
    ):
        assert_problem(scene.client.get(CHALLENGES_PATH, headers=headers), 401, "unauthenticated")
    # The scheme's name is case-insensitive, like any HTTP authentication scheme (RFC 9110 §11.1).
    assert scene.client.get(CHALLENGES_PATH, headers={"Authorization": f"twofold-device {signed}"}).status_code == 200


@pytest.mark.parametrize("offset", [-61, 61])
def test_a_stale_request_is_refused(scene, offset):
    """A request whose iat is more than 60 s off the server's clock is 401; within the minute it passes."""
    stale = list_challenges(scene.client, scene.phone, iat=int(time.time()) + offset)
    assert_problem(stale, 401, "unauthenticated")
    # Within the minute either way is fine (clocks of phones drift).
    fresh = list_challenges(scene.client, scene.phone, iat=int(time.time()) + offset // 2)
    assert fresh.status_code == 200, fresh.text


def test_a_request_is_accepted_once(scene):
    """The same signed request (same jti) sent twice: the second is 401."""
    headers = device_headers(scene.phone, "GET", CHALLENGES_PATH)
    assert scene.client.get(CHALLENGES_PATH, headers=headers).status_code == 200
    assert_problem(scene.client.get(CHALLENGES_PATH, headers=headers), 401, "unauthenticated")
    # A new request with its own jti passes.
    assert list_challenges(scene.client, scene.phone).status_code == 200


def test_a_request_signed_by_another_devices_key_is_refused(scene):
    """A request claiming bob's device but signed with another key (carol's device's, or an unpaired one) is 401."""
    carol = enroll_totp(scene.client, create_user(scene.twofold, scene.organization, "carol"))
    assert carol.token is not None
    carols_phone = add_push_device(scene.client, carol.token, device_name="Carol's phone")
    forged = list_challenges(scene.client, scene.phone, key=carols_phone.key)  # claims bob's device id
    assert_problem(forged, 401, "unauthenticated")
    unpaired = list_challenges(scene.client, scene.phone, key=new_device_key())
    assert_problem(unpaired, 401, "unauthenticated")


@pytest.mark.parametrize(
    ("signed_method", "signed_url"),
    [
        ("POST", PUBLIC_URL + CHALLENGES_PATH),  # signed for POST, sent as GET
        ("GET", PUBLIC_URL + "/api/v1/push/pair"),  # another path
        ("GET", "http://evil.example:8000" + CHALLENGES_PATH),  # another host
        ("GET", "https://localhost:8000" + CHALLENGES_PATH),  # another scheme
        ("GET", PUBLIC_URL + CHALLENGES_PATH + "?wait=0"),  # htu never carries the query
    ],
    ids=["method", "path", "host", "scheme", "query"],
)
def test_a_request_signed_for_another_method_or_url_is_refused(scene, signed_method, signed_url):
    """htm and htu bind a request to one method and URL: signed for POST, another path, host or scheme, or
    with the query in htu, a GET of the challenges is 401."""
    path = signed_url.removeprefix(PUBLIC_URL) if signed_url.startswith(PUBLIC_URL) else CHALLENGES_PATH
    headers = device_headers(scene.phone, signed_method, path, public_url=signed_url.removesuffix(path))
    assert_problem(scene.client.get(CHALLENGES_PATH, headers=headers), 401, "unauthenticated")
    # The query string is not part of htu: a request signed for the path passes with any query.
    headers = device_headers(scene.phone, "GET", CHALLENGES_PATH)
    assert scene.client.get(CHALLENGES_PATH, params={"wait": 0}, headers=headers).status_code == 200


def test_a_device_of_a_disabled_user_is_refused(scene):
    """Once the administrator disables the user, the user's device is refused (401)."""
    disabled = scene.client.patch(
        f"/api/v1/organizations/{scene.organization.id}/users/{scene.account.user.id}",
        json={"status": "disabled"},
        headers=bearer(scene.alice.token),
    )
    assert disabled.status_code == 200, disabled.text
    assert_problem(list_challenges(scene.client, scene.phone), 401, "unauthenticated")


# -- challenges ------------------------------------------------------------------------------------


def test_an_approved_push_signs_in(scene):
    """The number is two digits; the device sees three numbers holding it and the sign-in's context; while
    unanswered /login/verify answers 202 and spends no attempt; once approved it signs in with swk."""
    transaction = scene.start_login()
    started = scene.push(transaction)
    assert set(started) == {"challenge_id", "number", "expires_at"}
    assert isinstance(started["number"], int) and 10 <= started["number"] <= 99

    [challenge] = open_challenges(scene.client, scene.phone)
    assert set(challenge) == CHALLENGE_FIELDS
    assert challenge["challenge_id"] == started["challenge_id"]
    assert len(challenge["numbers"]) == 3 and len(set(challenge["numbers"])) == 3
    assert started["number"] in challenge["numbers"]
    assert all(isinstance(n, int) and 10 <= n <= 99 for n in challenge["numbers"])
    assert "Acme Widgets" in challenge["app"]
    # Where the sign-in comes from, for the user to recognise: TestClient's peer address and User-Agent.
    assert (challenge["ip"], challenge["user_agent"]) == ("testclient", "testclient")
    assert challenge["expires_at"] == started["expires_at"]
    created, expires = parse_time(challenge["created_at"]), parse_time(challenge["expires_at"])
    assert timedelta(0) < expires - created <= CHALLENGE_LIFETIME

    for _ in range(6):  # more than the transaction's five attempts: none is spent
        pending = verify_push(scene.client, transaction, started["challenge_id"])
        assert pending.status_code == 202, pending.text
        assert pending.json() == {"status": "pending"}
    assert scene.failed_attempts(transaction) == 0

    assert approve(scene.client, scene.phone, started["challenge_id"], started["number"]).status_code == 204
    assert open_challenges(scene.client, scene.phone) == []  # answered: no longer shown
    done = verify_push(scene.client, transaction, started["challenge_id"])
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "authenticated" and done.json()["amr"] == PUSH_AMR
    session = scene.client.get("/api/v1/me", headers=bearer(done.json()["token"])).json()["session"]
    assert (session["amr"], session["acr"]) == (PUSH_AMR, MFA_ACR)
    assert len(scene.audit("push.sent")) == 1 and len(scene.audit("push.approved")) == 1

    methods = scene.client.get("/api/v1/me/methods", headers=bearer(done.json()["token"])).json()
    used = next(m for m in methods if m["id"] == scene.phone.device_id)
    assert used["last_used_at"] is not None


def test_an_approval_is_used_once(scene):
    """An approval signs in once: after its login ended, another login cannot present it."""
    transaction = scene.start_login()
    started = scene.push(transaction)
    assert approve(scene.client, scene.phone, started["challenge_id"], started["number"]).status_code == 204
    assert verify_push(scene.client, transaction, started["challenge_id"]).status_code == 200
    # The transaction has ended; a second login cannot reuse the approval either.
    again = scene.start_login()
    assert_problem(verify_push(scene.client, again, started["challenge_id"]), 401, "invalid_code")


def test_a_denied_push_fails_the_attempt(scene):
    """A denial makes /login/verify 401 invalid_code, spending one attempt; audited as push.denied, not
    reported to the administrator."""
    transaction = scene.start_login()
    started = scene.push(transaction)
    assert deny(scene.client, scene.phone, started["challenge_id"]).status_code == 204
    refused = assert_problem(verify_push(scene.client, transaction, started["challenge_id"]), 401, "invalid_code")
    assert refused["attempts_left"] == TRANSACTION_ATTEMPTS - 1
    [event] = scene.audit("push.denied")
    assert event["details"]["challenge_id"] == started["challenge_id"] and "not_me" not in event["details"]
    assert (
        scene.client.get(
            f"/api/v1/organizations/{scene.organization.id}/attention", headers=bearer(scene.alice.token)
        ).json()["push_denied_not_me"]
        == []
    )


def test_a_wrong_number_denies_and_suspends_push(scene):
    """Picking another number denies the sign-in, emails the user, is audited as push.wrong_number, and
    suspends push for 15 minutes (429, Retry-After ≈ 900 s); another method still signs in."""
    transaction = scene.start_login()
    started = scene.push(transaction)
    challenge = the_challenge(scene.client, scene.phone, started["challenge_id"])
    mail_before = len(scene.mail_to(scene.account))

    answered = approve(scene.client, scene.phone, started["challenge_id"], other_number(started, challenge))
    assert answered.status_code == 204, answered.text
    assert_problem(verify_push(scene.client, transaction, started["challenge_id"]), 401, "invalid_code")
    notices = scene.mail_to(scene.account)[mail_before:]
    assert len(notices) == 1 and "wrong number" in notices[0], notices
    [event] = scene.audit("push.wrong_number")
    assert event["details"]["challenge_id"] == started["challenge_id"]
    assert event["details"]["method_id"] == scene.phone.device_id

    suspended = start_login_push(scene.client, transaction)
    assert_problem(suspended, 429, "rate_limited")
    retry_after = int(suspended.headers["Retry-After"])
    assert SUSPENSION_SECONDS - 30 <= retry_after <= SUSPENSION_SECONDS
    # Another method still signs in.
    verified = scene.client.post(
        "/api/v1/login/verify", json={"transaction": transaction, "type": "totp", "code": scene.bob.next_code()}
    )
    assert verified.status_code == 200, verified.text


def test_a_denial_as_not_me_is_flagged_for_the_administrator(scene):
    """ "This wasn't me": audited with not_me, the users list flags the user push_denied_not_me, the
    attention list names them, and the user is told to change their password."""
    transaction = scene.start_login()
    started = scene.push(transaction)
    assert deny(scene.client, scene.phone, started["challenge_id"], not_me=True).status_code == 204
    assert_problem(verify_push(scene.client, transaction, started["challenge_id"]), 401, "invalid_code")

    [event] = scene.audit("push.denied")
    assert event["details"]["not_me"] is True
    users = scene.client.get(
        f"/api/v1/organizations/{scene.organization.id}/users", headers=bearer(scene.alice.token)
    ).json()["items"]
    flags = {u["username"]: u["flags"] for u in users}
    assert "push_denied_not_me" in flags["bob"] and "push_denied_not_me" not in flags["alice"]
    attention = scene.client.get(
        f"/api/v1/organizations/{scene.organization.id}/attention", headers=bearer(scene.alice.token)
    )
    assert attention.status_code == 200, attention.text
    assert [u["username"] for u in attention.json()["push_denied_not_me"]] == ["bob"]
    assert any("did not make" in body for body in scene.mail_to(scene.account))


def test_an_answer_signed_by_another_devices_key_is_refused(scene):
    """An answer not signed by the authenticated device's key (or signed for another challenge) is 400 and
    leaves the challenge open for the device's real answer."""
    tablet = scene.add_device("Bob's iPad")
    transaction = scene.start_login()
    started = scene.push(transaction)
    forged = approve(scene.client, scene.phone, started["challenge_id"], started["number"], key=tablet.key)
    assert_problem(forged, 400)
    # An answer signed for another challenge is refused the same way.
    elsewhere = sign_answer(scene.phone.key, challenge_id="another", decision="approve", number=started["number"])
    assert_problem(respond(scene.client, scene.phone, started["challenge_id"], elsewhere), 400)
    assert verify_push(scene.client, transaction, started["challenge_id"]).status_code == 202
    assert approve(scene.client, scene.phone, started["challenge_id"], started["number"]).status_code == 204
    assert verify_push(scene.client, transaction, started["challenge_id"]).status_code == 200


def test_a_replayed_answer_is_a_conflict(scene):
    """A challenge is answered once: the same answer posted again (in a fresh request) is 409, as is a later
    approval."""
    transaction = scene.start_login()
    started = scene.push(transaction)
    answer = sign_answer(scene.phone.key, challenge_id=started["challenge_id"], decision="deny", number=None)
    assert respond(scene.client, scene.phone, started["challenge_id"], answer).status_code == 204
    assert_problem(respond(scene.client, scene.phone, started["challenge_id"], answer), 409, "conflict")
    # Nor can an approval replace the denial.
    late = approve(scene.client, scene.phone, started["challenge_id"], started["number"])
    assert_problem(late, 409, "conflict")
    assert_problem(verify_push(scene.client, transaction, started["challenge_id"]), 401, "invalid_code")


def test_an_answer_after_the_minute_is_a_conflict(scene):
    """A challenge past its 60 s is no longer shown, its answer is 409 and the login's verify is 401."""
    transaction = scene.start_login()
    started = scene.push(transaction)
    expire_challenge(scene.twofold, started["challenge_id"])
    assert open_challenges(scene.client, scene.phone) == []
    assert_problem(approve(scene.client, scene.phone, started["challenge_id"], started["number"]), 409, "conflict")
    refused = assert_problem(verify_push(scene.client, transaction, started["challenge_id"]), 401, "invalid_code")
    assert refused["attempts_left"] == TRANSACTION_ATTEMPTS - 1


def test_an_unknown_challenge_is_not_found(scene):
    """An answer to a challenge that does not exist is 404."""
    assert_problem(approve(scene.client, scene.phone, "no-such-challenge", 42), 404, "not_found")


def test_a_challenge_of_one_login_cannot_complete_another(scene):
    """An approval is bound to its login transaction: presented by another login it is 401, and it still
    completes its own login afterwards."""
    login_a = scene.start_login()
    login_b = scene.start_login()
    started = scene.push(login_a)
    assert approve(scene.client, scene.phone, started["challenge_id"], started["number"]).status_code == 204

    assert_problem(verify_push(scene.client, login_b, started["challenge_id"]), 401, "invalid_code")
    # The attempt of login B left login A's approval in place.
    done = verify_push(scene.client, login_a, started["challenge_id"])
    assert done.status_code == 200 and done.json()["amr"] == PUSH_AMR, done.text


def test_a_challenge_of_another_user_is_refused(scene):
    """Another user's device cannot answer bob's challenge (404), nor can another user's login present it."""
    carol = enroll_totp(scene.client, create_user(scene.twofold, scene.organization, "carol"))
    assert carol.token is not None
    carols_phone = add_push_device(scene.client, carol.token, device_name="Carol's phone")
    transaction = scene.start_login()
    started = scene.push(transaction)
    assert_problem(approve(scene.client, carols_phone, started["challenge_id"], started["number"]), 404, "not_found")
    carols_login = login(scene.client, carol.account).json()["transaction"]
    assert_problem(verify_push(scene.client, carols_login, started["challenge_id"]), 401, "invalid_code")


def test_the_fatigue_limit(scene):
    """At most three prompts per user in ten minutes: the fourth is refused with Retry-After and audited."""
    transaction = scene.start_login()
    for _ in range(PROMPT_LIMIT):
        started = scene.push(transaction)
        assert deny(scene.client, scene.phone, started["challenge_id"]).status_code == 204
    limited = start_login_push(scene.client, transaction)
    assert_problem(limited, 429, "rate_limited")
    assert 0 < int(limited.headers["Retry-After"]) <= PROMPT_WINDOW_SECONDS
    # A new login does not reset it: the limit is the user's.
    assert start_login_push(scene.client, scene.start_login()).status_code == 429
    events = scene.audit("push.limited")
    assert len(events) == 2 and events[0]["details"]["prompts"] == PROMPT_LIMIT
    assert open_challenges(scene.client, scene.phone) == []


def test_two_devices_answering_at_once_one_wins(scene):
    """Two devices answering the same challenge at the same moment: exactly one answer counts (204, 409)."""
    tablet = scene.add_device("Bob's iPad")
    transaction = scene.start_login()
    started = scene.push(transaction)
    challenge_id, number = started["challenge_id"], started["number"]

    answers = run_together(
        [
            lambda client: approve(client, scene.phone, challenge_id, number),
            lambda client: approve(client, tablet, challenge_id, number),
        ],
        new_client(scene.client),
    )
    assert sorted(a.status_code for a in answers) == [204, 409], [a.text for a in answers]
    assert len(scene.audit("push.approved")) == 1
    assert verify_push(scene.client, transaction, challenge_id).status_code == 200


# -- step-up ---------------------------------------------------------------------------------------


def test_a_push_renews_the_step_up(scene):
    """Step-up by push: /me/step-up answers 202 until the device approves, then 200 with a new step_up_until
    that allows a step-up-only write; a step-up's challenge cannot complete a login."""
    token = scene.bob.token
    assert token is not None
    expire_step_up(scene.twofold, token)
    assert_problem(begin_step_up_needed(scene.client, token), 403, "step_up_required")

    sent = scene.client.post("/api/v1/me/step-up/push", json={}, headers=bearer(token))
    assert sent.status_code == 200, sent.text
    started = sent.json()
    [challenge] = open_challenges(scene.client, scene.phone)
    assert challenge["challenge_id"] == started["challenge_id"] and started["number"] in challenge["numbers"]

    step_up = {"type": "push", "challenge_id": started["challenge_id"]}
    pending = scene.client.post("/api/v1/me/step-up", json=step_up, headers=bearer(token))
    assert pending.status_code == 202 and pending.json() == {"status": "pending"}, pending.text
    assert approve(scene.client, scene.phone, started["challenge_id"], started["number"]).status_code == 204
    done = scene.client.post("/api/v1/me/step-up", json=step_up, headers=bearer(token))
    assert done.status_code == 200, done.text
    assert parse_time(done.json()["step_up_until"]) > utcnow()
    assert begin_step_up_needed(scene.client, token).status_code == 201
    # A login's transaction cannot use a step-up's challenge.
    assert_problem(verify_push(scene.client, scene.start_login(), started["challenge_id"]), 401, "invalid_code")


def begin_step_up_needed(client: Any, token: str) -> Any:
    """A write that needs a fresh step-up: starting to add a method."""
    return client.post("/api/v1/me/methods", json={"type": "push"}, headers=bearer(token))


# -- push as the first method ----------------------------------------------------------------------


def test_push_as_the_first_method_through_forced_enrollment(product_twofold, product_client):
    """/login/enroll/complete answers 202 until the device pairs, spending no attempt; then the login is
    authenticated with swk and the recovery codes are handed out."""
    organization, _ = create_organization(product_twofold)
    bob = create_user(product_twofold, organization, "bob")
    response = login(product_client, bob)
    assert response.json()["status"] == "enrollment_required", response.text
    assert "push" in response.json()["enrollable_types"]
    transaction = response.json()["transaction"]

    started = product_client.post("/api/v1/login/enroll", json={"transaction": transaction, "type": "push"})
    assert started.status_code == 200, started.text
    enrollment = started.json()
    assert enrollment["type"] == "push" and enrollment["qr_svg"].startswith("<svg")
    complete = {"transaction": transaction, "enrollment_id": enrollment["enrollment_id"]}
    for _ in range(10):  # twice the transaction's attempts
        pending = product_client.post("/api/v1/login/enroll/complete", json=complete)
        assert pending.status_code == 202 and pending.json() == {"status": "pending"}, pending.text
    with product_twofold.uow(read_only=True) as uow:
        found = uow.transactions.by_token_hash(hash_token(transaction))
        assert found is not None and found.failed_attempts == 0

    device = pair_device(product_client, enrollment, device_name="Bob's Pixel")
    assert device.public_url == PUBLIC_URL  # the pairing URI names the server
    done = product_client.post("/api/v1/login/enroll/complete", json=complete)
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["status"] == "authenticated" and body["amr"] == PUSH_AMR
    assert len(body["recovery_codes"]) == RECOVERY_CODE_COUNT
    methods = product_client.get("/api/v1/me/methods", headers=bearer(body["token"])).json()
    assert [(m["id"], m["type"], m["name"]) for m in methods] == [(device.device_id, "push", "Bob's Pixel")]

    # The next login signs in with it.
    again = login(product_client, bob).json()
    assert again["status"] == "mfa_required"
    pushed = start_login_push(product_client, again["transaction"]).json()
    assert approve(product_client, device, pushed["challenge_id"], pushed["number"]).status_code == 204
    assert verify_push(product_client, again["transaction"], pushed["challenge_id"]).status_code == 200


# -- the webhook gateway ---------------------------------------------------------------------------


class _Endpoint(ThreadingHTTPServer):
    """A local HTTP endpoint that records what it receives; ``hold`` keeps each request open until released."""

    daemon_threads = True

    def __init__(self, *, hold: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _EndpointHandler)
        self.received: queue.Queue[tuple[dict[str, str], bytes]] = queue.Queue()
        self.hold = hold
        self.release = threading.Event()
        self.peer_open_on_release: queue.Queue[bool] = queue.Queue()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/twofold-wake"


class _EndpointHandler(BaseHTTPRequestHandler):
    server: _Endpoint

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.received.put((dict(self.headers.items()), body))
        if self.server.hold:
            self.server.release.wait(60)
            self.server.peer_open_on_release.put(_peer_still_connected(self.connection))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


def _peer_still_connected(connection: socket.socket) -> bool:
    """Whether the client still holds the connection open (a closed one reads as end of stream)."""
    try:
        return connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True  # open, and nothing more sent
    except OSError:
        return False


@pytest.fixture
def endpoint() -> Iterator[_Endpoint]:
    server = _Endpoint()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def webhook_scene(make_twofold: Callable[..., Twofold], url: str) -> Iterator[Scene]:
    """The scene on a Twofold built with the webhook gateway pointing at ``url``."""
    twofold = make_twofold(registry=default_registry(), push_webhook_url=url, push_webhook_secret=WEBHOOK_SECRET)
    with TestClient(create_app(twofold, housekeeping=False), base_url=PUBLIC_URL) as client:
        yield make_scene(twofold, client)


def test_the_webhook_receives_a_signed_wake_up(make_twofold, endpoint):
    """With a webhook configured, /login/push POSTs {type, challenge_id, device_ids} (no number) to it,
    signed with HMAC-SHA256 over "<t>.<body>" in X-Twofold-Signature."""
    with webhook_scene(make_twofold, endpoint.url) as scene_:
        tablet = scene_.add_device("Bob's iPad")
        started = scene_.push(scene_.start_login())
        headers, body = endpoint.received.get(timeout=30)

        assert headers["Content-Type"] == "application/json"
        wake_up = json.loads(body)
        assert set(wake_up) == {"type", "challenge_id", "device_ids"}  # no number, nothing secret
        assert (wake_up["type"], wake_up["challenge_id"]) == ("push.challenge", started["challenge_id"])
        assert sorted(wake_up["device_ids"]) == sorted([scene_.phone.device_id, tablet.device_id])

        parts = dict(part.split("=", 1) for part in headers["X-Twofold-Signature"].split(","))
        timestamp = parts["t"]
        expected = hmac.new(WEBHOOK_SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(parts["v1"], expected)
        assert abs(int(timestamp) - time.time()) < 120
        forged = hmac.new(b"another secret" * 3, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
        assert parts["v1"] != forged

        # A push to one device names only that device.
        scene_.push(scene_.start_login(), method_id=tablet.device_id)
        _, body = endpoint.received.get(timeout=30)
        assert json.loads(body)["device_ids"] == [tablet.device_id]


def test_a_webhook_endpoint_that_is_down_does_not_fail_the_sign_in(make_twofold):
    """Connections to the webhook are refused: /login/push still answers and the sign-in completes."""
    with socket.socket() as probe:  # a port nobody listens on: connections are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with webhook_scene(make_twofold, f"http://127.0.0.1:{port}/twofold-wake") as scene_:
        transaction = scene_.start_login()
        for _ in range(2):
            started = scene_.push(transaction)
            assert approve(scene_.client, scene_.phone, started["challenge_id"], started["number"]).status_code == 204
        done = verify_push(scene_.client, transaction, started["challenge_id"])
        assert done.status_code == 200, done.text


def test_the_sign_in_does_not_wait_for_the_webhook(make_twofold):
    """An endpoint that holds the request: /login/push has answered while the gateway's request is still
    open, so the sign-in never waited for the endpoint (nor for the gateway giving up on it)."""
    held = _Endpoint(hold=True)
    thread = threading.Thread(target=held.serve_forever, daemon=True)
    thread.start()
    try:
        with webhook_scene(make_twofold, held.url) as scene_:
            started = scene_.push(scene_.start_login())
            _, body = held.received.get(timeout=30)
            assert json.loads(body)["challenge_id"] == started["challenge_id"]
            held.release.set()
            assert held.peer_open_on_release.get(timeout=30) is True
    finally:
        held.release.set()
        held.shutdown()
        held.server_close()


# -- the long poll ---------------------------------------------------------------------------------


def test_a_long_poll_is_woken_by_a_new_challenge(scene):
    """A device waiting in a long poll gets the challenge sent while it waits (not an empty list)."""
    results: queue.Queue[Any] = queue.Queue()

    def poll() -> None:
        try:
            with TestClient(scene.client.app, base_url=PUBLIC_URL) as poller:
                results.put(list_challenges(poller, scene.phone, wait=10))
        except BaseException as error:  # surfaces in the test's thread
            results.put(error)

    thread = threading.Thread(target=poll)
    thread.start()
    time.sleep(1)  # the device is waiting, with nothing to see yet
    assert thread.is_alive() and results.empty()
    started = scene.push(scene.start_login())
    response = results.get(timeout=30)
    thread.join()
    assert not isinstance(response, BaseException), response
    assert response.status_code == 200, response.text
    assert [c["challenge_id"] for c in response.json()] == [started["challenge_id"]]


def test_a_long_poll_with_nothing_to_see_returns_empty_after_its_wait(scene):
    """With nothing to see, wait=1 answers [] once its second has passed."""
    began = time.monotonic()
    response = list_challenges(scene.client, scene.phone, wait=1)
    waited = time.monotonic() - began
    assert response.status_code == 200 and response.json() == [], response.text
    assert waited >= 0.95  # it waited for the second it was given before answering "nothing"


@pytest.mark.parametrize("wait", [26, -1, "soon"])
def test_a_long_poll_waits_at_most_25_seconds(scene, wait):
    """wait above 25 s, negative or not a number is 422."""
    assert_problem(list_challenges(scene.client, scene.phone, wait=wait), 422)
