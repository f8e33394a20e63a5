"""The ``platform_authenticator`` and ``security_key`` verification methods (R8): one implementation,
two policies. A platform authenticator (Touch ID, Windows Hello) must verify the user at every use,
whatever the options said; a security key is asked to, and passes on presence alone.

Enrollment keeps the registration challenge in the pending record's sealed payload (it is used once,
because the record turns active once). Verification reads the challenge a response claims to answer
and returns it in the result: the service accepts the proof only if it issued that challenge for this
login or session and can mark it used (DESIGN.md §4).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from webauthn.helpers import base64url_to_bytes, bytes_to_base64url

from twofold.domain.entities import User, VerificationMethodRecord
from twofold.domain.errors import MethodCloned, UnknownCredential
from twofold.domain.verification import EnrollmentStart, MethodContext, VerificationResult, VerificationStart

from .aaguids import authenticator_name
from .ceremonies import (
    ClonedAuthenticator,
    Credential,
    RelyingParty,
    WebAuthnError,
    asserted_challenge,
    asserted_credential_id,
    authentication_options,
    registration_options,
    verify_assertion,
    verify_registration,
)

__all__ = ["ClonedAuthenticator", "PlatformAuthenticatorMethod", "SecurityKeyMethod", "WebAuthnMethod"]

VERIFICATION_TYPE = "webauthn"
LOOKUP_PREFIX = "webauthn:"


def lookup_key(credential_id: bytes) -> str:
    """The record's cross-user unique key: a credential id registered to anyone is refused."""
    return LOOKUP_PREFIX + bytes_to_base64url(credential_id)


class WebAuthnMethod:
    verification_type = VERIFICATION_TYPE

    def __init__(self, *, method_type: str, display_name: str, platform: bool) -> None:
        self.method_type = method_type
        self.display_name = display_name
        self.platform = platform

    # WebAuthn needs a registrable domain as RP id; an IP address is none (API.md "Configuration").
    def available(self, context: MethodContext) -> bool:
        return _is_host_name(context.rp_id)

    def _relying_party(self, context: MethodContext) -> RelyingParty:
        # The origin is scheme://host[:port] of the public URL, whatever path it may carry.
        parts = urlsplit(context.public_url)
        origin = f"{parts.scheme}://{parts.netloc}"
        return RelyingParty(id=context.rp_id, name=context.organization.name or "Twofold", origin=origin)

    # -- enrollment ------------------------------------------------------------------------------

    def begin_enrollment(
        self,
        *,
        user: User,
        name: str,
        context: MethodContext,
        existing: Sequence[VerificationMethodRecord] = (),
    ) -> EnrollmentStart:
        record = VerificationMethodRecord(user_id=user.id, type=self.method_type, name=name)
        options = registration_options(
            relying_party=self._relying_party(context),
            # The user handle must not identify the user outside this RP (§14.6.1): random per credential.
            user_handle=secrets.token_bytes(32),
            user_name=user.username,
            user_display_name=user.display_name or user.username,
            platform=self.platform,
            attestation="direct" if context.organization.webauthn_attestation == "direct" else "none",
            exclude=[_credential(r, context) for r in existing if r.type in WEBAUTHN_TYPES and r.payload_encrypted],
        )
        _seal(record, context, {"registration_challenge": bytes_to_base64url(options.challenge)})
        return EnrollmentStart(record=record, client_data={"publicKey": options.public_key})

    def complete_enrollment(
        self, *, user: User, record: VerificationMethodRecord, proof: Mapping[str, Any], context: MethodContext
    ) -> VerificationResult:
        payload = _open(record, context)
        challenge = payload.get("registration_challenge")
        if not challenge:
            raise WebAuthnError("this enrollment was already completed")
        credential = verify_registration(
            credential=_credential_json(proof),
            expected_challenge=base64url_to_bytes(challenge),
            relying_party=self._relying_party(context),
            require_user_verification=self.platform,
            allowed_aaguids=_allowed_models(context),
        )
        _seal(record, context, credential.to_payload())
        record.lookup_key = lookup_key(credential.credential_id)
        if _is_default_name(record.name, self.display_name):
            # No name was given: the authenticator's model says more than "Security key 2".
            record.name = authenticator_name(credential.aaguid, fallback=record.name)[:64]
        return VerificationResult(
            method_id=record.id, amr=_amr(credential.backup_eligible), counter=credential.sign_count
        )

    # -- verification ----------------------------------------------------------------------------

    def begin_verification(
        self,
        *,
        user: User,
        methods: Sequence[VerificationMethodRecord],
        options: Mapping[str, Any],
        context: MethodContext,
    ) -> VerificationStart:
        # Without a type, every WebAuthn credential of the user is allowed (API.md); verification then
        # still requires UV of a platform authenticator's credential.
        types = WEBAUTHN_TYPES if options.get("any_type") else {self.method_type}
        own = [_credential(r, context) for r in methods if r.type in types and r.payload_encrypted]
        started = authentication_options(
            relying_party=self._relying_party(context),
            credentials=own,
            require_user_verification=self.platform and not options.get("any_type"),
        )
        return VerificationStart(client_data={"publicKey": started.public_key}, challenge=started.challenge)

    def verify(
        self,
        *,
        user: User,
        methods: Sequence[VerificationMethodRecord],
        proof: Mapping[str, Any],
        context: MethodContext,
    ) -> VerificationResult:
        credential_json = _credential_json(proof)
        wanted = lookup_key(asserted_credential_id(credential_json))
        record = next((r for r in methods if r.type == self.method_type and r.lookup_key == wanted), None)
        if record is None:
            # Another user's credential, or one of another type: the same answer either way.
            raise UnknownCredential()
        stored = _credential(record, context)
        challenge = asserted_challenge(credential_json)
        # A platform authenticator's credential always verifies the user, whatever the options said.
        require_uv = self.platform
        try:
            assertion = verify_assertion(
                credential=credential_json,
                expected_challenge=challenge,
                relying_party=self._relying_party(context),
                stored=stored,
                require_user_verification=require_uv,
            )
        except ClonedAuthenticator as error:
            # The service believes it only of a response to a challenge it issued here, unused.
            raise MethodCloned(error.detail, method_id=record.id, challenge=challenge.hex()) from None
        counter = assertion.new_sign_count if (assertion.new_sign_count or stored.sign_count) else None
        return VerificationResult(
            method_id=record.id, amr=_amr(stored.backup_eligible), counter=counter, challenge=challenge
        )


class PlatformAuthenticatorMethod(WebAuthnMethod):
    def __init__(self) -> None:
        super().__init__(method_type="platform_authenticator", display_name="Built-in authenticator", platform=True)


class SecurityKeyMethod(WebAuthnMethod):
    def __init__(self) -> None:
        super().__init__(method_type="security_key", display_name="Security key", platform=False)


WEBAUTHN_TYPES = frozenset({"platform_authenticator", "security_key"})


def _amr(backup_eligible: bool) -> tuple[str, ...]:
    # RFC 8176: "hwk" for a key bound to hardware, "swk" for a synced passkey (backup eligible), and
    # "user" because the authenticator tested the user's presence (API.md "amr").
    return ("swk" if backup_eligible else "hwk", "user")


def _allowed_models(context: MethodContext) -> frozenset[str] | None:
    organization = context.organization
    if organization.webauthn_attestation != "direct" or not organization.webauthn_allowed_aaguids:
        return None
    return frozenset(aaguid.lower() for aaguid in organization.webauthn_allowed_aaguids)


def _is_host_name(rp_id: str) -> bool:
    import ipaddress

    if not rp_id:
        return False
    try:
        ipaddress.ip_address(rp_id.strip("[]"))
    except ValueError:
        return True
    return False


def _credential_json(proof: Mapping[str, Any]) -> dict[str, Any]:
    credential = proof.get("credential")
    if isinstance(credential, str):
        try:
            credential = json.loads(credential)
        except ValueError:
            raise WebAuthnError("the credential is not valid JSON") from None
    if not isinstance(credential, dict):
        raise WebAuthnError("send the credential the browser returned (PublicKeyCredential.toJSON())")
    return credential


def _seal_context(record: VerificationMethodRecord) -> str:
    return f"method:{record.id}"


def _seal(record: VerificationMethodRecord, context: MethodContext, payload: Mapping[str, Any]) -> None:
    record.payload_encrypted = context.sealer.seal(json.dumps(payload).encode(), context=_seal_context(record))


def _open(record: VerificationMethodRecord, context: MethodContext) -> dict[str, Any]:
    if record.payload_encrypted is None:
        raise WebAuthnError("this method holds no credential")
    payload: dict[str, Any] = json.loads(context.sealer.open(record.payload_encrypted, context=_seal_context(record)))
    return payload


def _credential(record: VerificationMethodRecord, context: MethodContext) -> Credential:
    return Credential.from_payload(_open(record, context), sign_count=record.counter or 0)


def _is_default_name(name: str, display_name: str) -> bool:
    """The name enrollment gives when the user gave none: the type's name, numbered from the second on."""
    head, _, number = name.rpartition(" ")
    return name == display_name or (head == display_name and number.isdigit())
