"""The contract every registered verification method keeps (DESIGN.md §4). Methods of the product
registry join this test by being registered; the test method keeps the contract honest meanwhile."""

from __future__ import annotations

import pytest

from twofold.domain.clock import utcnow
from twofold.domain.entities import MethodStatus, Organization, User, UserKind
from twofold.domain.errors import ProofPending, ValidationFailed, VerificationError
from twofold.domain.verification import MethodContext, VerificationResult
from twofold.methods.registry import MethodRegistry, default_registry
from twofold.methods.totp import TotpMethod
from twofold.services.crypto import AesGcmSealer

from .support.methods import KnownCodeMethod
from .support.totp import PERIOD, code_at_step

METHODS = [*default_registry(), KnownCodeMethod()]
WRONG_PROOFS = [{}, {"code": ""}, {"code": "000000"}, {"code": None}, {"code": 123456}, {"credential": {}}]


def _context() -> MethodContext:
    return MethodContext(
        now=utcnow(),
        sealer=AesGcmSealer("k" * 40),
        public_url="http://localhost:8000",
        rp_id="localhost",
        organization=Organization(name="Acme"),
    )


def _user() -> User:
    return User(
        organization_id="o",
        identity_provider_id="p",
        username="alice",
        username_key="alice",
        email="alice@example.com",
        kind=UserKind.USER.value,
    )


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.method_type)
def test_enrollment_is_two_phase_and_wrong_proofs_raise(method):
    context, user = _context(), _user()
    assert method.available(context) in (True, False)
    started = method.begin_enrollment(user=user, name="Mine", context=context)
    record = started.record
    assert record.user_id == user.id and record.type == method.method_type and record.name == "Mine"
    assert record.status == MethodStatus.PENDING.value
    for value in started.client_data.values():
        # Whatever the client is shown is never stored in the clear.
        if isinstance(value, str) and len(value) >= 6 and record.payload_encrypted:
            assert value not in record.payload_encrypted
    for proof in WRONG_PROOFS:
        # A method whose proof arrives out of band (a push device pairing) may answer "still pending".
        with pytest.raises((VerificationError, ProofPending)):
            method.complete_enrollment(user=user, record=record, proof=proof, context=context)
        with pytest.raises(VerificationError):
            method.verify(user=user, methods=[record], proof=proof, context=context)


def test_test_method_round_trip():
    method, context, user = KnownCodeMethod(), _context(), _user()
    started = method.begin_enrollment(user=user, name="Mine", context=context)
    result = method.complete_enrollment(user=user, record=started.record, proof=started.client_data, context=context)
    assert isinstance(result, VerificationResult) and result.method_id == started.record.id
    assert method.verify(user=user, methods=[started.record], proof=started.client_data, context=context).amr


def test_totp_round_trip():
    # Codes come from Debian's oathtool, at the context's own "now" so that no step boundary can race.
    method, context, user = TotpMethod(), _context(), _user()
    started = method.begin_enrollment(user=user, name="Phone", context=context)
    secret, step = started.client_data["secret"], int(context.now.timestamp()) // PERIOD
    code = code_at_step(secret, step)
    enrolled = method.complete_enrollment(user=user, record=started.record, proof={"code": code}, context=context)
    assert (enrolled.method_id, enrolled.counter, enrolled.amr) == (started.record.id, step, ("otp",))
    started.record.counter = enrolled.counter  # what the service stores on success
    next_code = code_at_step(secret, step + 1)
    verified = method.verify(user=user, methods=[started.record], proof={"code": next_code}, context=context)
    assert (verified.method_id, verified.counter, verified.amr) == (started.record.id, step + 1, ("otp",))


def test_push_round_trip():
    """Pending until the device's key is in the payload (the push service seals it there at pairing);
    then only an approval the service consumed, by one of the user's active devices, verifies."""
    import json

    from twofold.domain.entities import VerificationMethodRecord
    from twofold.methods.push import PushMethod
    from twofold.methods.push.device import new_device_key, public_jwk
    from twofold.methods.push.method import seal_context

    method, context, user = PushMethod(), _context(), _user()
    started = method.begin_enrollment(user=user, name="Phone", context=context)
    record = started.record
    assert started.client_data["pairing_uri"].startswith("twofold://pair?server=http%3A%2F%2Flocalhost%3A8000&code=")
    assert len(started.client_data["pairing_code"]) >= 22 and record.lookup_key.startswith("push-pairing:")
    with pytest.raises(ProofPending):
        method.complete_enrollment(user=user, record=record, proof={}, context=context)
    payload = {"public_jwk": public_jwk(new_device_key())}
    record.payload_encrypted = context.sealer.seal(json.dumps(payload).encode(), context=seal_context(record))
    result = method.complete_enrollment(user=user, record=record, proof={}, context=context)
    assert (result.method_id, result.amr) == (record.id, ("swk",))
    record.status = MethodStatus.ACTIVE.value
    assert method.verify(user=user, methods=[record], proof={"approved_by": record.id}, context=context).amr == ("swk",)
    other = VerificationMethodRecord(user_id=user.id, type="totp", name="App", status=MethodStatus.ACTIVE.value)
    for proof in ({"approved_by": other.id}, {"approved_by": "someone-else"}, {"challenge_id": "x"}):
        with pytest.raises(VerificationError):
            method.verify(user=user, methods=[record, other], proof=proof, context=context)


def test_registry_refuses_unknown_types_and_duplicates():
    registry = default_registry()
    assert registry.method_types == ["totp", "platform_authenticator", "security_key", "push"]
    assert isinstance(registry.method("totp"), TotpMethod)
    assert [m.method_type for m in registry.for_verification_type("totp")] == ["totp"]
    # One verification type, "webauthn", answers for both WebAuthn method types (API.md).
    assert [m.method_type for m in registry.for_verification_type("webauthn")] == [
        "platform_authenticator",
        "security_key",
    ]
    with pytest.raises(ValidationFailed):
        registry.method("sms")
    with pytest.raises(ValidationFailed):
        registry.for_verification_type("sms")
    with pytest.raises(ValidationFailed):
        registry.method(KnownCodeMethod.method_type)  # the test method never ships
    with pytest.raises(ValueError):
        MethodRegistry([KnownCodeMethod(), KnownCodeMethod()])
    with pytest.raises(ValueError):
        MethodRegistry([TotpMethod(), TotpMethod()])
