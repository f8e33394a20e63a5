"""The ``totp`` verification method: enrollment with a QR code, verification with single-use codes.

The payload (sealed at rest) is the base32 secret with its parameters. The stored ``counter`` is the
last accepted time step; ``verify`` leaves steps at or before it out, and returns the step it matched
so that the service can move the counter forward with a conditional UPDATE (one success, even under
parallel submissions or across processes).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import segno

from twofold.domain.entities import User, VerificationMethodRecord
from twofold.domain.errors import CodeAlreadyUsed, VerificationError
from twofold.domain.verification import EnrollmentStart, MethodContext, VerificationResult, VerificationStart

from .otp import TotpParameters, generate_secret, key_uri, matching_time_step

AMR = ("otp",)  # RFC 8176 §2: one-time password


class TotpMethod:
    method_type = "totp"
    verification_type = "totp"
    display_name = "Authenticator app"

    def __init__(self, parameters: TotpParameters = TotpParameters()) -> None:
        self.parameters = parameters

    def available(self, context: MethodContext) -> bool:
        return True

    # -- enrollment ------------------------------------------------------------------------------

    def begin_enrollment(
        self,
        *,
        user: User,
        name: str,
        context: MethodContext,
        existing: Sequence[VerificationMethodRecord] = (),
    ) -> EnrollmentStart:
        secret = generate_secret()
        record = VerificationMethodRecord(user_id=user.id, type=self.method_type, name=name)
        payload = {
            "secret": secret,
            "algorithm": self.parameters.algorithm,
            "digits": self.parameters.digits,
            "period": self.parameters.period,
        }
        record.payload_encrypted = context.sealer.seal(json.dumps(payload).encode(), context=_seal_context(record))
        uri = key_uri(secret, account=user.username, issuer=context.organization.name, parameters=self.parameters)
        qr = segno.make(uri, error="m")
        return EnrollmentStart(
            record=record,
            client_data={
                "secret": secret,
                "otpauth_uri": uri,
                "qr_svg": qr.svg_inline(scale=5, title="QR code for your authenticator app"),
                "algorithm": self.parameters.algorithm,
                "digits": self.parameters.digits,
                "period": self.parameters.period,
            },
        )

    def complete_enrollment(
        self, *, user: User, record: VerificationMethodRecord, proof: Mapping[str, Any], context: MethodContext
    ) -> VerificationResult:
        step = self._matching_step(record, _code(proof, self.parameters.digits), context)
        if step is None:
            raise VerificationError("the code does not match; check the time on your device and try the next code")
        return VerificationResult(method_id=record.id, amr=AMR, counter=step)

    # -- verification ----------------------------------------------------------------------------

    def begin_verification(
        self,
        *,
        user: User,
        methods: Sequence[VerificationMethodRecord],
        options: Mapping[str, Any],
        context: MethodContext,
    ) -> VerificationStart:
        return VerificationStart()

    def verify(
        self,
        *,
        user: User,
        methods: Sequence[VerificationMethodRecord],
        proof: Mapping[str, Any],
        context: MethodContext,
    ) -> VerificationResult:
        code = _code(proof, self.parameters.digits)
        replayed = False
        for record in methods:
            if record.type != self.method_type:
                continue
            step = self._matching_step(record, code, context, after=record.counter)
            if step is not None:
                return VerificationResult(method_id=record.id, amr=AMR, counter=step)
            if record.counter is not None and self._matching_step(record, code, context) is not None:
                replayed = True
        if replayed:
            raise CodeAlreadyUsed()
        raise VerificationError("the code does not match")

    def _matching_step(
        self, record: VerificationMethodRecord, code: str, context: MethodContext, *, after: int | None = None
    ) -> int | None:
        secret, parameters = _open(record, context)
        if len(code) != parameters.digits:
            return None
        return matching_time_step(secret, code, unix_time=context.now.timestamp(), parameters=parameters, after=after)


def _seal_context(record: VerificationMethodRecord) -> str:
    return f"method:{record.id}"


def _open(record: VerificationMethodRecord, context: MethodContext) -> tuple[str, TotpParameters]:
    if record.payload_encrypted is None:
        raise VerificationError("this authenticator app has no secret")
    payload = json.loads(context.sealer.open(record.payload_encrypted, context=_seal_context(record)))
    parameters = TotpParameters(
        algorithm=payload.get("algorithm", "SHA1"), digits=payload.get("digits", 6), period=payload.get("period", 30)
    )
    return payload["secret"], parameters


def _code(proof: Mapping[str, Any], digits: int) -> str:
    """The submitted code, with the spaces people type ("123 456") taken out; anything else is refused."""
    code = proof.get("code")
    if not isinstance(code, str):
        raise VerificationError("enter the code your authenticator app shows")
    code = code.replace(" ", "").replace("-", "")
    if not code.isascii() or not code.isdigit() or not 6 <= len(code) <= 8:
        raise VerificationError(f"the code is {digits} digits")
    return code
