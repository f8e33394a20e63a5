"""A minimal verification method for exercising the login machine before real methods exist.

It implements the VerificationMethod protocol fully (two-phase enrollment, sealed payload,
constant-time check) with a server-chosen code as the factor. Tests register it explicitly; the
product's registry never contains it.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from twofold.domain.entities import User, VerificationMethodRecord
from twofold.domain.errors import VerificationError
from twofold.domain.verification import EnrollmentStart, MethodContext, VerificationResult, VerificationStart

METHOD_TYPE = "test_code"


class KnownCodeMethod:
    method_type = METHOD_TYPE
    verification_type = METHOD_TYPE
    display_name = "Test code"

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
        code = secrets.token_hex(8)
        record = VerificationMethodRecord(user_id=user.id, type=self.method_type, name=name)
        record.payload_encrypted = context.sealer.seal(code.encode(), context=f"method:{record.id}")
        return EnrollmentStart(record=record, client_data={"code": code})

    def _code(self, record: VerificationMethodRecord, context: MethodContext) -> str:
        assert record.payload_encrypted is not None
        return context.sealer.open(record.payload_encrypted, context=f"method:{record.id}").decode()

    def complete_enrollment(
        self, *, user: User, record: VerificationMethodRecord, proof: Mapping[str, Any], context: MethodContext
    ) -> VerificationResult:
        given = proof.get("code")
        if not isinstance(given, str) or not hmac.compare_digest(given.encode(), self._code(record, context).encode()):
            raise VerificationError("the code does not match")
        return VerificationResult(method_id=record.id, amr=("otp",))

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
        given = proof.get("code")
        if isinstance(given, str):
            for record in methods:
                if hmac.compare_digest(given.encode(), self._code(record, context).encode()):
                    return VerificationResult(method_id=record.id, amr=("otp",))
        raise VerificationError("the code does not match")
