"""Authenticator apps (TOTP) and recovery codes through the JSON API (issue 3; API.md "Login" and
"Self-service"; SECURITY.md): forced and profile enrollment, verification with ±1 time step, single use
under parallel submissions, every failure counted, recovery codes once each, secrets sealed and codes
hashed at rest, no code in logs or audit details, step-up.

Codes come from Debian's `oathtool` (tests/support/totp.py), never from Twofold's own TOTP code. A
code is single use, so each account moves forward one time step at a time; where a test needs codes
relative to the server's now it first waits until the current step has several seconds left, so that
the step cannot change between computing a code and the server checking it.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from fastapi.testclient import TestClient
from sqlalchemy import select

from twofold.container import Twofold
from twofold.domain.clock import utcnow
from twofold.services.crypto import hash_token
from twofold.storage import tables
from twofold.storage.tables import metadata
from twofold.web.app import create_app

from .conftest import PUBLIC_URL
from .support.flows import (
    Account,
    bearer,
    create_organization,
    create_user,
    exempt,
    login,
    mfa_failures,
    run_together,
)
from .support.totp import PERIOD, TotpAccount, code_at_step, current_step, enroll_totp

RECOVERY_CODE_COUNT = 10  # issue 3: "10 codes"
TRANSACTION_ATTEMPTS = 5  # API.md: "the fifth failure ends the transaction"
PARALLEL = 8
TOTP_AMR = ["pwd", "otp", "mfa"]  # API.md "amr"
RECOVERY_AMR = ["pwd", "mfa"]
CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
RECOVERY_CODE_SHAPE = re.compile(rf"[{CROCKFORD}]{{4}}(-[{CROCKFORD}]{{4}}){{3}}")
ALREADY_USED = "already used"  # the detail of a replayed code ("this code was already used…")


# -- helpers -------------------------------------------------------------------------------------


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def steady_step(margin: float = 5.0) -> int:
    """The current time step, once at least ``margin`` seconds of it are left: codes derived from it
    keep their place relative to the server's now for the few requests that follow."""
    while True:
        now = time.time()
        left = PERIOD - now % PERIOD
        if left > margin:
            return int(now // PERIOD)
        time.sleep(left + 0.05)


def wait_for_step(step: int) -> None:
    """Sleep until the clock (the server's too: same machine) is in ``step``."""
    while current_step() < step:
        time.sleep(max(0.05, step * PERIOD - time.time() + 0.05))


def wrong_code(secret: str) -> str:
    """Six digits that match no step of this secret anywhere near now."""
    near = {code_at_step(secret, step) for step in range(current_step() - 3, current_step() + 4)}
    candidate = int(code_at_step(secret, current_step())) + 500_000
    while f"{candidate % 1_000_000:06d}" in near:
        candidate += 1
    return f"{candidate % 1_000_000:06d}"


def start_login(client: Any, account: Account, status: str = "mfa_required") -> dict[str, Any]:
    response = login(client, account)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == status, body
    return body


def verify(client: Any, transaction: str, code: str, verification_type: str = "totp") -> Any:
    return client.post(
        "/api/v1/login/verify", json={"transaction": transaction, "type": verification_type, "code": code}
    )


def use_recovery_code(client: Any, transaction: str, code: str) -> Any:
    return verify(client, transaction, code, "recovery_code")


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    return body


def assert_invalid_code(response: Any, attempts_left: int) -> dict[str, Any]:
    body = assert_problem(response, 401, "invalid_code")
    assert body["attempts_left"] == attempts_left, body
    return body


def enroll_one_step_behind(client: Any, account: Account) -> TotpAccount:
    """The forced enrollment confirmed with the code of the server's now-1, the oldest it takes. Should a
    step boundary pass between computing the code and the server checking it, that code is two steps
    old and refused: the next attempt takes the new step's now-1."""
    transaction = start_login(client, account, "enrollment_required")["transaction"]
    started = client.post("/api/v1/login/enroll", json={"transaction": transaction, "type": "totp", "name": "Phone"})
    assert started.status_code == 200, started.text
    secret = started.json()["secret"]
    for _ in range(TRANSACTION_ATTEMPTS - 1):
        step = current_step() - 1
        done = client.post(
            "/api/v1/login/enroll/complete",
            json={
                "transaction": transaction,
                "enrollment_id": started.json()["enrollment_id"],
                "code": code_at_step(secret, step),
            },
        )
        if done.status_code == 200:
            enrolled = TotpAccount(account, secret, step, recovery_codes=done.json()["recovery_codes"])
            enrolled.token = account.token = done.json()["token"]
            return enrolled
        assert_problem(done, 400, "invalid_code")
        assert current_step() > step + 1, "the code of now-1 was refused within its step"
    raise AssertionError("no attempt at the code of now-1 stayed inside its step")


def expire_step_up(twofold: Twofold, token: str | None) -> None:
    """Make the session's last MFA older than the step-up window (storage-level set-up, no sleeping)."""
    assert token is not None
    with twofold.uow() as uow:
        session = uow.sessions.by_token_hash(hash_token(token))
        assert session is not None
        session.step_up_until = utcnow() - timedelta(seconds=1)


def method_rows(twofold: Twofold, account: Account) -> list[Any]:
    columns = tables.verification_methods.c
    with twofold.uow.engine.connect() as connection:
        return list(connection.execute(select(tables.verification_methods).where(columns.user_id == account.user.id)))


def unused_recovery_codes(twofold: Twofold, account: Account) -> int:
    with twofold.uow(read_only=True) as uow:
        return uow.recovery_codes.count_unused(account.user.id)


def audit_events(client: Any, admin: Account, organization_id: str, event_type: str, subject: Account) -> list[Any]:
    """Oldest first, through the administrators' audit API."""
    response = client.get(
        f"/api/v1/organizations/{organization_id}/audit-events",
        params={"type": event_type, "user_id": subject.user.id},
        headers=bearer(admin.token),
    )
    assert response.status_code == 200, response.text
    return list(reversed(response.json()["items"]))


def database_dump(twofold: Twofold) -> str:
    """Every value of every row of every table, as text, lower case."""
    parts = []
    with twofold.uow.engine.connect() as connection:
        for table in metadata.sorted_tables:
            for row in connection.execute(select(table)):
                parts.extend(f"{table.name}.{key}={value!s}" for key, value in row._mapping.items())
    return "\n".join(parts).lower()


def secret_forms(secret: str) -> list[str]:
    """The ways a TOTP secret could be written down: base32 in either case, and its raw key bytes in hex
    and base64."""
    raw = base64.b32decode(secret + "=" * (-len(secret) % 8))
    return [
        secret,
        secret.lower(),
        secret.rstrip("="),
        raw.hex(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    ]


def recovery_code_forms(code: str) -> list[str]:
    return [code, code.upper(), code.replace("-", ""), code.replace("-", "").upper()]


def appears(needle: str, text: str) -> bool:
    """``needle`` as a token of its own in ``text`` (six digits inside a hex id are not a leaked code)."""
    return re.search(rf"(?<![0-9A-Za-z]){re.escape(needle)}(?![0-9A-Za-z])", text) is not None


@contextlib.contextmanager
def app_client(twofold: Twofold) -> Iterator[TestClient]:
    with TestClient(create_app(twofold, housekeeping=False), base_url=PUBLIC_URL) as test_client:
        yield test_client


def parallel(twofold: Twofold, calls: list[Callable[[TestClient], Any]]) -> list[Any]:
    """Run the calls at once, each on its own client and thread, released together."""
    app = create_app(twofold, housekeeping=False)
    return run_together(calls, lambda: TestClient(app, base_url=PUBLIC_URL))


def totp_user(twofold: Twofold, client: Any, username: str = "bob") -> tuple[Any, Account, TotpAccount]:
    organization, admin = create_organization(twofold)
    account = create_user(twofold, organization, username)
    return organization, admin, enroll_totp(client, account)


# -- forced enrollment ---------------------------------------------------------------------------


def test_forced_enrollment_shows_secret_and_qr_then_returns_ten_recovery_codes(product_twofold, product_client):
    organization, _ = create_organization(product_twofold, name="Acme Widgets")
    bob = create_user(product_twofold, organization, "bob")
    started_login = start_login(product_client, bob, "enrollment_required")
    assert "totp" in started_login["enrollable_types"]
    # Recovery codes are not a method type: never offered as the one method R6 requires.
    assert not any("recovery" in kind for kind in started_login["enrollable_types"])
    transaction = started_login["transaction"]

    started = product_client.post(
        "/api/v1/login/enroll", json={"transaction": transaction, "type": "totp", "name": "Phone"}
    )
    assert started.status_code == 200, started.text
    body = started.json()
    assert {"secret", "otpauth_uri", "qr_svg", "enrollment_id", "expires_at"} <= set(body)
    assert body["type"] == "totp"
    secret = body["secret"]
    assert re.fullmatch(r"[A-Z2-7]{32}", secret), secret  # base32 of 160 bits
    uri = urlsplit(body["otpauth_uri"])
    assert (uri.scheme, uri.netloc) == ("otpauth", "totp")
    assert unquote(uri.path) == "/Acme Widgets:bob"
    query = parse_qs(uri.query)
    assert query["secret"] == [secret]
    assert query["issuer"] == ["Acme Widgets"]
    assert body["qr_svg"].lstrip().startswith("<svg") and body["qr_svg"].rstrip().endswith("</svg>")
    expires_at = parse_time(body["expires_at"])
    assert utcnow() < expires_at <= parse_time(started_login["expires_at"])
    # Nothing is active before the code is proven.
    assert [row.status for row in method_rows(product_twofold, bob)] == ["pending"]

    step = current_step()
    done = product_client.post(
        "/api/v1/login/enroll/complete",
        json={"transaction": transaction, "enrollment_id": body["enrollment_id"], "code": code_at_step(secret, step)},
    )
    assert done.status_code == 200, done.text
    completed = done.json()
    assert completed["status"] == "authenticated"
    assert completed["amr"] == TOTP_AMR
    codes = completed["recovery_codes"]
    assert len(codes) == RECOVERY_CODE_COUNT and len(set(codes)) == RECOVERY_CODE_COUNT
    assert all(RECOVERY_CODE_SHAPE.fullmatch(code) for code in codes), codes
    me = product_client.get("/api/v1/me", headers=bearer(completed["token"]))
    assert me.status_code == 200, me.text
    assert me.json()["session"]["amr"] == TOTP_AMR
    assert [row.status for row in method_rows(product_twofold, bob)] == ["active"]
    # The account now has a method: the next login verifies instead of enrolling.
    assert start_login(product_client, bob)["recovery_codes_available"] is True


def test_wrong_confirmation_code_enrolls_nothing_and_five_end_the_transaction(product_twofold, product_client):
    organization, _ = create_organization(product_twofold)
    bob = create_user(product_twofold, organization, "bob")
    transaction = start_login(product_client, bob, "enrollment_required")["transaction"]
    started = product_client.post(
        "/api/v1/login/enroll", json={"transaction": transaction, "type": "totp", "name": "Phone"}
    ).json()

    def complete(code: str) -> Any:
        return product_client.post(
            "/api/v1/login/enroll/complete",
            json={"transaction": transaction, "enrollment_id": started["enrollment_id"], "code": code},
        )

    refused = complete(wrong_code(started["secret"]))
    assert_problem(refused, 400, "invalid_code")
    assert refused.json()["attempts_left"] == TRANSACTION_ATTEMPTS - 1
    # Nothing active, no recovery codes, no session: only the pending enrollment is stored.
    rows = method_rows(product_twofold, bob)
    assert [(row.id, row.status) for row in rows] == [(started["enrollment_id"], "pending")]
    assert unused_recovery_codes(product_twofold, bob) == 0
    with product_twofold.uow.engine.connect() as connection:
        sessions = connection.execute(select(tables.sessions).where(tables.sessions.c.user_id == bob.user.id))
        assert list(sessions) == []
    # A new login still has to enroll (on a transaction of its own; the first one stays usable).
    assert "totp" in start_login(product_client, bob, "enrollment_required")["enrollable_types"]

    for attempts_left in range(TRANSACTION_ATTEMPTS - 2, -1, -1):
        refused = complete(wrong_code(started["secret"]))
        assert_problem(refused, 400, "invalid_code")
        assert refused.json()["attempts_left"] == attempts_left
    # The fifth failure ended the transaction: even the right code gets 410 now, and nothing is active.
    assert_problem(complete(code_at_step(started["secret"], current_step())), 410, "transaction_expired")
    assert_problem(
        product_client.post("/api/v1/login/enroll", json={"transaction": transaction, "type": "totp", "name": "X"}),
        410,
        "transaction_expired",
    )
    assert all(row.status == "pending" for row in method_rows(product_twofold, bob))
    assert start_login(product_client, bob, "enrollment_required")["status"] == "enrollment_required"


# -- login verification --------------------------------------------------------------------------


def test_login_with_a_fresh_code_and_a_replayed_code_refused(product_twofold, product_client):
    _, _, bob = totp_user(product_twofold, product_client)
    started = start_login(product_client, bob.account)
    assert started["recovery_codes_available"] is True
    assert [(m["type"], m["name"]) for m in started["methods"]] == [("totp", "Phone")]

    code = bob.next_code()
    verified = verify(product_client, started["transaction"], code)
    assert verified.status_code == 200, verified.text
    assert verified.json()["status"] == "authenticated"
    assert verified.json()["amr"] == TOTP_AMR
    assert "recovery_codes_remaining" not in verified.json()
    me = product_client.get("/api/v1/me", headers=bearer(verified.json()["token"])).json()
    assert me["session"]["amr"] == TOTP_AMR
    assert me["session"]["acr"] == "urn:twofold:acr:mfa"
    methods = product_client.get("/api/v1/me/methods", headers=bearer(verified.json()["token"])).json()
    assert methods[0]["last_used_at"] is not None

    # The same code again, on a new transaction, while it is still inside the time window.
    again = start_login(product_client, bob.account)["transaction"]
    replayed = assert_invalid_code(verify(product_client, again, code), TRANSACTION_ATTEMPTS - 1)
    assert ALREADY_USED in replayed["detail"]
    # The code of the enrollment step is older still: refused too.
    enrollment_code = code_at_step(bob.secret, bob.last_step - 1)
    assert ALREADY_USED in assert_invalid_code(verify(product_client, again, enrollment_code), 3)["detail"]
    # The recovery codes are still there to sign in with on the same transaction.
    assert use_recovery_code(product_client, again, bob.recovery_codes[0]).status_code == 200


def test_codes_one_step_from_now_are_accepted_and_two_steps_refused(product_twofold, product_client):
    organization, _ = create_organization(product_twofold)
    ahead_account = create_user(product_twofold, organization, "ahead")
    behind_account = create_user(product_twofold, organization, "behind")
    # Enrolled with the code of now-1: once the clock has moved on by one step, the code of the server's
    # now-1 is newer than the last one accepted (a TOTP step is used at most once).
    behind = enroll_one_step_behind(product_client, behind_account)
    wait_for_step(behind.last_step + 2)

    now = steady_step()
    ahead = enroll_totp(product_client, ahead_account)
    assert ahead.last_step == now
    transaction = start_login(product_client, ahead.account)["transaction"]
    too_late = assert_invalid_code(verify(product_client, transaction, code_at_step(ahead.secret, now + 2)), 4)
    assert ALREADY_USED not in too_late["detail"]
    too_early = assert_invalid_code(verify(product_client, transaction, code_at_step(ahead.secret, now - 2)), 3)
    # Outside the window, not a replay: a window of ±2 would have matched it as an old step.
    assert ALREADY_USED not in too_early["detail"]
    accepted = verify(product_client, transaction, code_at_step(ahead.secret, now + 1))
    assert accepted.status_code == 200, accepted.text

    transaction = start_login(product_client, behind.account)["transaction"]
    # now-2 is the step this account enrolled with: outside the window, so not even seen as a replay.
    too_early = assert_invalid_code(verify(product_client, transaction, code_at_step(behind.secret, now - 2)), 4)
    assert ALREADY_USED not in too_early["detail"]
    accepted = verify(product_client, transaction, code_at_step(behind.secret, now - 1))
    assert accepted.status_code == 200, accepted.text
    assert current_step() == now, "the step changed during the test; the margin of steady_step is too small"


def test_every_failure_counts_on_the_account_and_the_transaction(product_twofold, product_client):
    _, _, bob = totp_user(product_twofold, product_client)
    transaction = start_login(product_client, bob.account)["transaction"]
    assert mfa_failures(product_twofold, bob.account) == 0
    for failures in range(1, TRANSACTION_ATTEMPTS):
        assert_invalid_code(
            verify(product_client, transaction, wrong_code(bob.secret)), TRANSACTION_ATTEMPTS - failures
        )
        assert mfa_failures(product_twofold, bob.account) == failures
    # A replayed code is a failure like any other, and the fifth one ends the transaction.
    replayed = verify(product_client, transaction, code_at_step(bob.secret, bob.last_step))
    assert ALREADY_USED in assert_invalid_code(replayed, 0)["detail"]
    assert mfa_failures(product_twofold, bob.account) == TRANSACTION_ATTEMPTS
    fresh = bob.next_code()
    assert_problem(verify(product_client, transaction, fresh), 410, "transaction_expired")
    # A wrong recovery code counts too, on a new transaction; a success then resets the account's count.
    transaction = start_login(product_client, bob.account)["transaction"]
    assert_invalid_code(use_recovery_code(product_client, transaction, "0000-0000-0000-0000"), 4)
    assert mfa_failures(product_twofold, bob.account) == TRANSACTION_ATTEMPTS + 1
    # The code refused with 410 was never checked, so it is still unused.
    assert verify(product_client, transaction, fresh).status_code == 200
    assert mfa_failures(product_twofold, bob.account) == 0


# -- single use under concurrency ----------------------------------------------------------------


def test_parallel_submissions_of_one_totp_code_succeed_once(product_twofold, product_client):
    _, _, bob = totp_user(product_twofold, product_client)
    transactions = [start_login(product_client, bob.account)["transaction"] for _ in range(PARALLEL)]
    code = bob.next_code()
    responses = parallel(
        product_twofold, [(lambda client, t=transaction: verify(client, t, code)) for transaction in transactions]
    )
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 1, [r.text for r in responses]
    for response in responses:
        if response.status_code != 200:
            assert ALREADY_USED in assert_invalid_code(response, TRANSACTION_ATTEMPTS - 1)["detail"]
    assert [row.counter for row in method_rows(product_twofold, bob.account)] == [bob.last_step]


def test_parallel_uses_of_one_recovery_code_succeed_once(product_twofold, product_client):
    _, _, bob = totp_user(product_twofold, product_client)
    transactions = [start_login(product_client, bob.account)["transaction"] for _ in range(PARALLEL)]
    product_twofold.notifier.sent.clear()
    code = bob.recovery_codes[0]
    responses = parallel(
        product_twofold,
        [(lambda client, t=transaction: use_recovery_code(client, t, code)) for transaction in transactions],
    )
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 1, [r.text for r in responses]
    winner = next(r for r in responses if r.status_code == 200)
    assert winner.json()["recovery_codes_remaining"] == RECOVERY_CODE_COUNT - 1
    for response in responses:
        if response.status_code != 200:
            assert_invalid_code(response, TRANSACTION_ATTEMPTS - 1)
    assert unused_recovery_codes(product_twofold, bob.account) == RECOVERY_CODE_COUNT - 1
    assert len(product_twofold.notifier.sent) == 1


# -- recovery codes ------------------------------------------------------------------------------


def test_each_recovery_code_works_once_and_the_user_is_told(product_twofold, product_client):
    organization, admin, bob = totp_user(product_twofold, product_client)
    enroll_totp(product_client, admin)
    product_twofold.notifier.sent.clear()
    # As printed, in upper case, without dashes, and with both: all the same code.
    typed = [
        (lambda code: code),
        (lambda code: code.upper()),
        (lambda code: code.replace("-", "")),
        (lambda code: code.replace("-", "").upper()),
    ]
    used: str | None = None
    for index, code in enumerate(bob.recovery_codes):
        started = start_login(product_client, bob.account)
        assert started["recovery_codes_available"] is True
        transaction = started["transaction"]
        if used is not None:
            # The code used on the previous round is refused, however it is typed.
            assert_invalid_code(use_recovery_code(product_client, transaction, used.upper()), 4)
            assert_invalid_code(use_recovery_code(product_client, transaction, used), 3)
        accepted = use_recovery_code(product_client, transaction, typed[index % len(typed)](code))
        assert accepted.status_code == 200, accepted.text
        remaining = RECOVERY_CODE_COUNT - 1 - index
        assert accepted.json()["amr"] == RECOVERY_AMR
        assert accepted.json()["recovery_codes_remaining"] == remaining
        me = product_client.get("/api/v1/me", headers=bearer(accepted.json()["token"])).json()
        assert me["session"]["amr"] == RECOVERY_AMR
        to, _, body = product_twofold.notifier.sent[-1]
        assert to == "bob@example.com"
        assert f"{remaining} unused recovery code" in body
        used = code

    assert len(product_twofold.notifier.sent) == RECOVERY_CODE_COUNT
    started = start_login(product_client, bob.account)
    assert started["recovery_codes_available"] is False
    assert_invalid_code(use_recovery_code(product_client, started["transaction"], bob.recovery_codes[0]), 4)
    events = audit_events(product_client, admin, organization.id, "recovery_code.used", bob.account)
    assert [event["details"]["remaining"] for event in events] == list(range(RECOVERY_CODE_COUNT - 1, -1, -1))
    assert all(event["subject_id"] == bob.account.user.id for event in events)


def test_regenerated_recovery_codes_replace_the_old_ones(product_twofold, product_client):
    _, _, bob = totp_user(product_twofold, product_client)
    regenerated = product_client.post("/api/v1/me/recovery-codes", headers=bearer(bob.token))
    assert regenerated.status_code == 201, regenerated.text
    codes = regenerated.json()["codes"]
    assert len(codes) == RECOVERY_CODE_COUNT and len(set(codes)) == RECOVERY_CODE_COUNT
    assert all(RECOVERY_CODE_SHAPE.fullmatch(code) for code in codes), codes
    assert not set(codes) & set(bob.recovery_codes)
    assert product_twofold.notifier.sent[-1][0] == "bob@example.com"

    transaction = start_login(product_client, bob.account)["transaction"]
    assert_invalid_code(use_recovery_code(product_client, transaction, bob.recovery_codes[0]), 4)
    accepted = use_recovery_code(product_client, transaction, codes[0])
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["recovery_codes_remaining"] == RECOVERY_CODE_COUNT - 1

    # Replacing them needs a step-up within the window.
    expire_step_up(product_twofold, bob.token)
    assert_problem(product_client.post("/api/v1/me/recovery-codes", headers=bearer(bob.token)), 403, "step_up_required")
    assert unused_recovery_codes(product_twofold, bob.account) == RECOVERY_CODE_COUNT - 1


# -- stored hashed and sealed; never logged --------------------------------------------------------


def test_secrets_are_sealed_and_recovery_codes_hashed_at_rest(product_twofold, product_client):
    _, _, bob = totp_user(product_twofold, product_client)
    # A second app, confirmed, and a third one still pending: every secret the database holds.
    second = product_client.post(
        "/api/v1/me/methods", json={"type": "totp", "name": "Tablet"}, headers=bearer(bob.token)
    )
    pending = product_client.post(
        "/api/v1/me/methods", json={"type": "totp", "name": "Spare"}, headers=bearer(bob.token)
    )
    assert second.status_code == pending.status_code == 201, (second.text, pending.text)
    confirmed = product_client.post(
        f"/api/v1/me/methods/{second.json()['enrollment_id']}/complete",
        json={"code": code_at_step(second.json()["secret"], current_step())},
        headers=bearer(bob.token),
    )
    assert confirmed.status_code == 200, confirmed.text
    assert {row.status for row in method_rows(product_twofold, bob.account)} == {"active", "pending"}

    dump = database_dump(product_twofold)
    for secret in (bob.secret, second.json()["secret"], pending.json()["secret"]):
        for form in secret_forms(secret):
            assert form.lower() not in dump, "a TOTP secret is stored in the clear"
    for code in bob.recovery_codes:
        for form in recovery_code_forms(code):
            assert form.lower() not in dump, "a recovery code is stored in the clear"
    # The sealed payloads are not merely encoded: decoding them shows no secret either.
    for row in method_rows(product_twofold, bob.account):
        body = row.payload_encrypted.rsplit(".", 1)[-1]
        decoded = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        assert b"secret" not in decoded.lower()
    with product_twofold.uow.engine.connect() as connection:
        stored = list(connection.execute(select(tables.recovery_codes.c.code_hash)))
    assert len(stored) == RECOVERY_CODE_COUNT
    assert all(re.fullmatch(r"[0-9a-f]{64}", row.code_hash) for row in stored)


def test_no_code_secret_or_recovery_code_in_logs_or_audit_details(product_twofold, product_client, caplog):
    caplog.set_level(logging.DEBUG)
    organization, _ = create_organization(product_twofold)
    account = create_user(product_twofold, organization, "bob")
    submitted: list[str] = []
    secrets: list[str] = []
    recovery: list[str] = []

    # Forced enrollment: a wrong code, then the right one.
    transaction = start_login(product_client, account, "enrollment_required")["transaction"]
    started = product_client.post(
        "/api/v1/login/enroll", json={"transaction": transaction, "type": "totp", "name": "Phone"}
    ).json()
    secret = started["secret"]
    secrets.append(secret)
    enrolled_step = current_step()
    for code in (wrong_code(secret), code_at_step(secret, enrolled_step)):
        submitted.append(code)
        last = product_client.post(
            "/api/v1/login/enroll/complete",
            json={"transaction": transaction, "enrollment_id": started["enrollment_id"], "code": code},
        )
    assert last.status_code == 200, last.text
    recovery.extend(last.json()["recovery_codes"])
    bob = TotpAccount(account, secret, enrolled_step, recovery_codes=last.json()["recovery_codes"])

    # Login: a wrong code, a replayed one, the right one; then a wrong and a right recovery code.
    transaction = start_login(product_client, account)["transaction"]
    submitted.extend([wrong_code(secret), code_at_step(secret, bob.last_step), bob.next_code()])
    assert [verify(product_client, transaction, code).status_code for code in submitted[-3:]] == [401, 401, 200]
    transaction = start_login(product_client, account)["transaction"]
    assert use_recovery_code(product_client, transaction, "zzzz-zzzz-zzzz-zzzz").status_code == 401
    session = use_recovery_code(product_client, transaction, recovery[0].upper())
    assert session.status_code == 200, session.text
    token = session.json()["token"]

    # Step-up with a recovery code, a profile enrollment with a wrong then a right code, new recovery codes.
    expire_step_up(product_twofold, token)
    stepped = product_client.post(
        "/api/v1/me/step-up", json={"type": "recovery_code", "code": recovery[1]}, headers=bearer(token)
    )
    assert stepped.status_code == 200, stepped.text
    added = product_client.post("/api/v1/me/methods", json={"type": "totp", "name": "Tablet"}, headers=bearer(token))
    assert added.status_code == 201, added.text
    secrets.append(added.json()["secret"])
    for code in (wrong_code(secrets[-1]), code_at_step(secrets[-1], current_step())):
        submitted.append(code)
        last = product_client.post(
            f"/api/v1/me/methods/{added.json()['enrollment_id']}/complete", json={"code": code}, headers=bearer(token)
        )
    assert last.status_code == 200, last.text
    regenerated = product_client.post("/api/v1/me/recovery-codes", headers=bearer(token))
    assert regenerated.status_code == 201, regenerated.text
    recovery.extend(regenerated.json()["codes"])

    with product_twofold.uow.engine.connect() as connection:
        details = [str(row.details) for row in connection.execute(select(tables.audit_events.c.details))]
    places = {
        "log": caplog.text,
        "audit details": "\n".join(details),
        "notifications": "\n".join(body for _, _, body in product_twofold.notifier.sent),
    }
    assert caplog.text and details and product_twofold.notifier.sent
    needles = submitted + [form for s in secrets for form in secret_forms(s)]
    needles += [form for code in recovery for form in recovery_code_forms(code)]
    for place, text in places.items():
        for needle in needles:
            assert not appears(needle, text) and not appears(needle.lower(), text.lower()), (place, needle)


# -- profile enrollment --------------------------------------------------------------------------


def test_profile_enrollment_of_a_second_authenticator_app(product_twofold, product_client):
    _, _, bob = totp_user(product_twofold, product_client)
    headers = bearer(bob.token)
    unknown = product_client.post("/api/v1/me/methods", json={"type": "carrier_pigeon", "name": "X"}, headers=headers)
    assert_problem(unknown, 422, "validation_error")

    started = product_client.post("/api/v1/me/methods", json={"type": "totp", "name": "Tablet"}, headers=headers)
    assert started.status_code == 201, started.text
    body = started.json()
    assert {"enrollment_id", "type", "expires_at", "secret", "otpauth_uri", "qr_svg"} <= set(body)
    assert body["type"] == "totp" and body["name"] == "Tablet"
    assert body["secret"] != bob.secret
    assert parse_qs(urlsplit(body["otpauth_uri"]).query)["secret"] == [body["secret"]]
    complete_path = f"/api/v1/me/methods/{body['enrollment_id']}/complete"

    refused = product_client.post(complete_path, json={"code": wrong_code(body["secret"])}, headers=headers)
    assert_problem(refused, 400, "invalid_code")
    listed = product_client.get("/api/v1/me/methods", headers=headers).json()
    assert [m["name"] for m in listed] == ["Phone"]
    assert {row.status for row in method_rows(product_twofold, bob.account)} == {"active", "pending"}
    assert_problem(
        product_client.post("/api/v1/me/methods/no-such-enrollment/complete", json={"code": "123456"}, headers=headers),
        404,
        "not_found",
    )

    done = product_client.post(
        complete_path, json={"code": code_at_step(body["secret"], current_step())}, headers=headers
    )
    assert done.status_code == 200, done.text
    method = done.json()
    # Recovery codes come with the first method only; this user has a set already.
    assert set(method) == {"id", "type", "name", "created_at", "last_used_at"}
    assert (method["id"], method["type"], method["name"]) == (body["enrollment_id"], "totp", "Tablet")
    listed = product_client.get("/api/v1/me/methods", headers=headers).json()
    assert sorted(m["name"] for m in listed) == ["Phone", "Tablet"]
    assert all(m["type"] == "totp" for m in listed)
    # A completed enrollment cannot be completed again.
    again = product_client.post(
        complete_path, json={"code": code_at_step(body["secret"], current_step() + 1)}, headers=headers
    )
    assert_problem(again, 404, "not_found")
    # Either app signs in.
    started_login = start_login(product_client, bob.account)
    assert sorted(m["name"] for m in started_login["methods"]) == ["Phone", "Tablet"]
    tablet_code = code_at_step(body["secret"], current_step() + 1)
    assert verify(product_client, started_login["transaction"], tablet_code).status_code == 200

    # Once the step-up window has passed, adding a method is refused and nothing is stored.
    expire_step_up(product_twofold, bob.token)
    rows_before = len(method_rows(product_twofold, bob.account))
    stale = product_client.post("/api/v1/me/methods", json={"type": "totp", "name": "Spare"}, headers=headers)
    assert_problem(stale, 403, "step_up_required")
    assert len(method_rows(product_twofold, bob.account)) == rows_before


def test_exempt_service_account_cannot_add_methods_or_recovery_codes(product_twofold, product_client):
    organization, _ = create_organization(product_twofold)
    robot = create_user(product_twofold, organization, "robot", kind="service", service_type="rpa")
    exempt(product_twofold, robot)
    signed_in = login(product_client, robot).json()
    assert signed_in["status"] == "authenticated" and signed_in["amr"] == ["pwd"]
    headers = bearer(signed_in["token"])
    assert_problem(
        product_client.post("/api/v1/me/methods", json={"type": "totp", "name": "Phone"}, headers=headers),
        403,
        "forbidden",
    )
    assert_problem(product_client.post("/api/v1/me/recovery-codes", headers=headers), 403, "forbidden")
    assert_problem(
        product_client.post("/api/v1/me/step-up", json={"type": "recovery_code", "code": "x"}, headers=headers),
        403,
        "forbidden",
    )
    assert method_rows(product_twofold, robot) == []
    assert unused_recovery_codes(product_twofold, robot) == 0


def test_a_transaction_token_is_no_session_for_self_service(product_twofold, product_client):
    organization, _, bob = totp_user(product_twofold, product_client)
    carol = create_user(product_twofold, organization, "carol")
    tokens = [
        start_login(product_client, bob.account)["transaction"],
        start_login(product_client, carol, "enrollment_required")["transaction"],
    ]
    for token in tokens:
        for method, path, body in [
            ("GET", "/api/v1/me/methods", None),
            ("POST", "/api/v1/me/methods", {"type": "totp", "name": "Phone"}),
            ("POST", "/api/v1/me/recovery-codes", None),
        ]:
            response = product_client.request(method, path, json=body, headers=bearer(token))
            assert response.status_code == 401, (path, response.text)
    assert len(method_rows(product_twofold, bob.account)) == 1
    assert method_rows(product_twofold, carol) == []
    assert unused_recovery_codes(product_twofold, bob.account) == RECOVERY_CODE_COUNT


# -- step-up -------------------------------------------------------------------------------------


def test_step_up_with_a_totp_code_or_a_recovery_code(product_twofold, product_client):
    _, _, bob = totp_user(product_twofold, product_client)
    headers = bearer(bob.token)
    expire_step_up(product_twofold, bob.token)
    assert_problem(
        product_client.post("/api/v1/me/methods", json={"type": "totp", "name": "Tablet"}, headers=headers),
        403,
        "step_up_required",
    )

    wrong = product_client.post(
        "/api/v1/me/step-up", json={"type": "totp", "code": wrong_code(bob.secret)}, headers=headers
    )
    assert_problem(wrong, 400, "invalid_code")
    assert mfa_failures(product_twofold, bob.account) == 1

    code = bob.next_code()
    stepped = product_client.post("/api/v1/me/step-up", json={"type": "totp", "code": code}, headers=headers)
    assert stepped.status_code == 200, stepped.text
    until = parse_time(stepped.json()["step_up_until"])
    assert timedelta(minutes=9) < until - utcnow() <= timedelta(minutes=10)
    assert mfa_failures(product_twofold, bob.account) == 0
    added = product_client.post("/api/v1/me/methods", json={"type": "totp", "name": "Tablet"}, headers=headers)
    assert added.status_code == 201, added.text
    # The same code again is a replay.
    replayed = product_client.post("/api/v1/me/step-up", json={"type": "totp", "code": code}, headers=headers)
    assert ALREADY_USED in assert_problem(replayed, 400, "invalid_code")["detail"]
    assert mfa_failures(product_twofold, bob.account) == 1

    expire_step_up(product_twofold, bob.token)
    recovery = product_client.post(
        "/api/v1/me/step-up", json={"type": "recovery_code", "code": bob.recovery_codes[0]}, headers=headers
    )
    assert recovery.status_code == 200, recovery.text
    assert parse_time(recovery.json()["step_up_until"]) > utcnow()
    assert unused_recovery_codes(product_twofold, bob.account) == RECOVERY_CODE_COUNT - 1
    assert product_twofold.notifier.sent[-1][0] == "bob@example.com"
    assert product_client.post("/api/v1/me/recovery-codes", headers=headers).status_code == 201
    # The used recovery code does not step up twice (the set was replaced too, so any old one is refused).
    again = product_client.post(
        "/api/v1/me/step-up", json={"type": "recovery_code", "code": bob.recovery_codes[0]}, headers=headers
    )
    assert_problem(again, 400, "invalid_code")
