"""The protocol every verification method implements (DESIGN.md §4).

A method is self-contained: it owns the shape of its enrollment start, its proof and its payload
(sealed in ``VerificationMethodRecord.payload_encrypted``). Two-phase enrollment: ``begin_enrollment``
prepares a *pending* record, ``complete_enrollment`` proves possession and the service activates it.
Each step returns a typed result or raises a ``VerificationError`` subclass, never a bare ``False``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from .entities import Organization, User, VerificationMethodRecord
from .ports import Sealer


@dataclass(frozen=True)
class MethodContext:
    """What a method may use: the clock, sealing, and where the relying party lives."""

    now: datetime
    sealer: Sealer
    public_url: str
    rp_id: str
    organization: Organization
    client_ip: str | None = None
    user_agent: str | None = None


@dataclass
class EnrollmentStart:
    """What the client needs to prove possession (e.g. a TOTP secret and QR code), and the pending record."""

    record: VerificationMethodRecord
    client_data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VerificationResult:
    """A proof held. ``amr`` lists the RFC 8176 values this factor contributes (e.g. ["otp"]).

    ``counter`` is set by methods whose proofs must be used once (a TOTP time step): the service
    accepts the proof only if it can move the method's stored counter forward to this value in one
    conditional UPDATE, so that parallel submissions and other processes cannot both succeed.
    """

    method_id: str
    amr: tuple[str, ...]
    counter: int | None = None
    #: the server-issued challenge the proof answers (WebAuthn): the service accepts the proof only if it
    #: issued this challenge for this login or session and can mark it used, once
    challenge: bytes | None = None


@dataclass(frozen=True)
class VerificationStart:
    """What a verification needs before the proof: data for the client (e.g. WebAuthn request options)
    and the challenge the service must keep, bound to the login transaction or session, for one use."""

    client_data: dict[str, Any] = field(default_factory=dict)
    challenge: bytes | None = None


class VerificationMethod(Protocol):
    #: the method type users register (API.md), e.g. "totp"
    method_type: str
    #: the login ``type`` whose proofs this method checks, e.g. "totp" or "webauthn"
    verification_type: str
    #: the name shown to users, e.g. "Authenticator app"
    display_name: str

    def available(self, context: MethodContext) -> bool:
        """Whether this deployment can offer the method (WebAuthn needs a host name, not an IP)."""
        ...

    def begin_enrollment(
        self,
        *,
        user: User,
        name: str,
        context: MethodContext,
        existing: Sequence[VerificationMethodRecord] = (),
    ) -> EnrollmentStart:
        """Prepare a pending record; ``existing`` are the user's active methods (WebAuthn excludes them)."""
        ...

    def complete_enrollment(
        self, *, user: User, record: VerificationMethodRecord, proof: Mapping[str, Any], context: MethodContext
    ) -> VerificationResult:
        """Check the proof and update ``record``'s payload; raise a VerificationError if it does not hold
        (or ProofPending while the proof is still on its way)."""
        ...

    def begin_verification(
        self,
        *,
        user: User,
        methods: Sequence[VerificationMethodRecord],
        options: Mapping[str, Any],
        context: MethodContext,
    ) -> VerificationStart:
        """Start a challenge (WebAuthn options, a push); methods needing none return an empty start."""
        ...

    def verify(
        self,
        *,
        user: User,
        methods: Sequence[VerificationMethodRecord],
        proof: Mapping[str, Any],
        context: MethodContext,
    ) -> VerificationResult: ...
