"""The ``push`` verification method: a paired Twofold Authenticator approves a sign-in.

Enrollment: ``begin_enrollment`` makes a pending record findable by its pairing code's hash; the device
pairs (the push service seals its public key into the payload); ``complete_enrollment`` answers
"pending" until then. Verification: the push service creates the challenge and records the device's
signed answer; ``verify`` turns an approval the service has consumed into a result for the approving
device. The method owns no storage; it never sees a private key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import segno

from twofold.domain.entities import User, VerificationMethodRecord
from twofold.domain.errors import ProofPending, VerificationError
from twofold.domain.verification import EnrollmentStart, MethodContext, VerificationResult, VerificationStart

from .pairing import new_pairing_code, pairing_lookup_key, pairing_uri

AMR = ("swk",)  # RFC 8176: a software-secured key (the device's P-256 key); API.md push amr


def seal_context(record: VerificationMethodRecord) -> str:
    return f"method:{record.id}"


def device_payload(record: VerificationMethodRecord, context: MethodContext) -> dict[str, Any]:
    if not record.payload_encrypted:
        return {}
    value = json.loads(context.sealer.open(record.payload_encrypted, context=seal_context(record)))
    return value if isinstance(value, dict) else {}


class PushMethod:
    method_type = "push"
    verification_type = "push"
    display_name = "Twofold Authenticator"

    def available(self, context: MethodContext) -> bool:
        return True

    def begin_enrollment(
        self,
        *,
        user: User,
        name: str,
        context: MethodContext,
        existing: Sequence[VerificationMethodRecord] = (),
    ) -> EnrollmentStart:
        code = new_pairing_code()
        record = VerificationMethodRecord(user_id=user.id, type=self.method_type, name=name)
        record.lookup_key = pairing_lookup_key(code)
        uri = pairing_uri(context.public_url, code)
        return EnrollmentStart(
            record=record,
            client_data={
                "pairing_code": code,
                "pairing_uri": uri,
                "qr_svg": segno.make(uri, error="m").svg_inline(scale=4, title="QR code to pair Twofold Authenticator"),
            },
        )

    def complete_enrollment(
        self, *, user: User, record: VerificationMethodRecord, proof: Mapping[str, Any], context: MethodContext
    ) -> VerificationResult:
        if not device_payload(record, context).get("public_jwk"):
            raise ProofPending("open Twofold Authenticator and pair it with the code shown")
        return VerificationResult(method_id=record.id, amr=AMR)

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
        """``proof["approved_by"]`` is the device whose approval the service has just consumed."""
        approved_by = proof.get("approved_by")
        for record in methods:
            if record.id == approved_by and record.type == self.method_type and record.is_active:
                return VerificationResult(method_id=record.id, amr=AMR)
        raise VerificationError("the push was not approved by one of your paired devices")
