"""Errors the services raise; the web layer maps each ``code`` to an RFC 9457 problem (API.md)."""

from __future__ import annotations

import math
from typing import Any


class TwofoldError(Exception):
    code = "error"
    status = 400
    title = "Request failed"

    def __init__(self, detail: str | None = None, *, status: int | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        if status is not None:
            self.status = status
        self.extra = extra


class InvalidCredentials(TwofoldError):
    code, status, title = "invalid_credentials", 401, "Invalid username or password"


class Unauthenticated(TwofoldError):
    code, status, title = "unauthenticated", 401, "Authentication required"


class InvalidCode(TwofoldError):
    """A second factor did not verify. ``attempts_left`` is set on login transactions."""

    code, status, title = "invalid_code", 401, "Verification failed"


class RateLimited(TwofoldError):
    code, status, title = "rate_limited", 429, "Too many attempts"

    def __init__(self, detail: str | None = None, *, retry_after: float, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.retry_after = max(1, math.ceil(retry_after))


class TransactionExpired(TwofoldError):
    code, status, title = "transaction_expired", 410, "Login transaction expired"


class StepUpRequired(TwofoldError):
    code, status, title = "step_up_required", 403, "A recent multi-factor verification is required"


class LastMethod(TwofoldError):
    code, status, title = "last_method", 409, "At least one verification method must remain"


class NotExemptable(TwofoldError):
    code, status, title = "not_exemptable", 422, "This account cannot be exempted from MFA"


class Forbidden(TwofoldError):
    code, status, title = "forbidden", 403, "Not allowed"


class NotFound(TwofoldError):
    code, status, title = "not_found", 404, "Not found"


class Conflict(TwofoldError):
    code, status, title = "conflict", 409, "Conflict"


class ValidationFailed(TwofoldError):
    code, status, title = "validation_error", 422, "Invalid request"


class Unavailable(TwofoldError):
    code, status, title = "unavailable", 503, "Service temporarily unavailable"


class VerificationError(TwofoldError):
    """Base of what a verification method raises when a proof does not hold (DESIGN.md §4)."""

    code, status, title = "invalid_code", 400, "Verification failed"


class CodeAlreadyUsed(VerificationError):
    """A one-time code that was right but has been accepted before (RFC 6238 §5.2: accept once)."""

    title = "this code was already used; wait for the next one"


class UnknownCredential(VerificationError):
    """The proof names no method of this user (another user's credential, or none at all)."""

    title = "this credential is not registered to this account"


class MethodCloned(VerificationError):
    """The proof shows the method was copied (a signature counter went backwards): refused, and the
    service flags the method (``method_id`` in ``extra``) for administrators."""

    title = "this authenticator's signature counter went backwards; it may have been cloned"


class ProofPending(TwofoldError):
    """The proof is not there yet (a push not answered, a device not paired): ask again later."""

    code, status, title = "pending", 202, "Waiting for the device"
