"""The two WebAuthn ceremonies on py_webauthn, with Twofold's relying-party rules (W3C WebAuthn L2 §7).

Registration (§7.1) and authentication (§7.2) are plain functions with keyword-only arguments and
``expected_*`` parameters; each returns a typed result or raises a precise ``VerificationError``.
Options go out as WebAuthn JSON (``PublicKeyCredentialCreationOptionsJSON`` /
``PublicKeyCredentialRequestOptionsJSON``); credentials come back as the browser's ``toJSON()``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import (
    base64url_to_bytes,
    bytes_to_base64url,
    parse_attestation_object,
)
from webauthn.helpers.cose import COSEAlgorithmIdentifier
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AttestationConveyancePreference,
    AuthenticatorAttachment,
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from twofold.domain.errors import VerificationError

# ES256 first: authenticators take the first algorithm they support, and P-256 is the one every
# FIDO2 authenticator has; then EdDSA and RS256 (Windows Hello's TPM keys).
ALGORITHMS = [
    COSEAlgorithmIdentifier.ECDSA_SHA_256,
    COSEAlgorithmIdentifier.EDDSA,
    COSEAlgorithmIdentifier.RSASSA_PKCS1_v1_5_SHA_256,
]
TIMEOUT_MS = 120_000
KNOWN_TRANSPORTS = {transport.value for transport in AuthenticatorTransport}


class WebAuthnError(VerificationError):
    """A ceremony failed one of the relying party's checks."""


class ClonedAuthenticator(WebAuthnError):
    """The signature counter went backwards (§6.1.1): two copies of one credential exist."""

    title = "this authenticator's signature counter went backwards; it may have been cloned"


@dataclass(frozen=True)
class RelyingParty:
    id: str  # the host of TWOFOLD_PUBLIC_URL
    name: str  # shown by the browser, e.g. the organization
    origin: str  # TWOFOLD_PUBLIC_URL's origin


@dataclass(frozen=True)
class Credential:
    """What the relying party keeps of a registered credential."""

    credential_id: bytes
    public_key: bytes  # COSE_Key
    sign_count: int
    aaguid: str
    transports: tuple[str, ...] = ()
    backup_eligible: bool = False
    backed_up: bool = False
    user_verified: bool = False  # at registration
    attestation_format: str = "none"

    def to_payload(self) -> dict[str, Any]:
        return {
            "credential_id": bytes_to_base64url(self.credential_id),
            "public_key": bytes_to_base64url(self.public_key),
            "aaguid": self.aaguid,
            "transports": list(self.transports),
            "backup_eligible": self.backup_eligible,
            "backed_up": self.backed_up,
            "user_verified": self.user_verified,
            "attestation_format": self.attestation_format,
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], *, sign_count: int) -> Credential:
        return cls(
            credential_id=base64url_to_bytes(payload["credential_id"]),
            public_key=base64url_to_bytes(payload["public_key"]),
            sign_count=sign_count,
            aaguid=payload.get("aaguid", ""),
            transports=tuple(payload.get("transports", ())),
            backup_eligible=bool(payload.get("backup_eligible")),
            backed_up=bool(payload.get("backed_up")),
            user_verified=bool(payload.get("user_verified")),
            attestation_format=payload.get("attestation_format", "none"),
        )

    def descriptor(self) -> PublicKeyCredentialDescriptor:
        transports = [AuthenticatorTransport(t) for t in self.transports if t in KNOWN_TRANSPORTS]
        return PublicKeyCredentialDescriptor(id=self.credential_id, transports=transports or None)


@dataclass(frozen=True)
class Assertion:
    credential_id: bytes
    new_sign_count: int
    user_verified: bool
    backed_up: bool


@dataclass(frozen=True)
class Options:
    public_key: dict[str, Any]  # WebAuthn JSON, for the browser
    challenge: bytes = field(repr=False)


# -- registration (§7.1) ---------------------------------------------------------------------------


def registration_options(
    *,
    relying_party: RelyingParty,
    user_handle: bytes,
    user_name: str,
    user_display_name: str,
    platform: bool,
    attestation: str = "none",
    exclude: Sequence[Credential] = (),
) -> Options:
    """Options for ``navigator.credentials.create()``: a platform authenticator must verify the user;
    a security key is asked to ("preferred"), since many keys have no PIN set."""
    selection = AuthenticatorSelectionCriteria(
        authenticator_attachment=AuthenticatorAttachment.PLATFORM
        if platform
        else AuthenticatorAttachment.CROSS_PLATFORM,
        resident_key=ResidentKeyRequirement.DISCOURAGED,
        user_verification=UserVerificationRequirement.REQUIRED if platform else UserVerificationRequirement.PREFERRED,
    )
    options = generate_registration_options(
        rp_id=relying_party.id,
        rp_name=relying_party.name,
        user_id=user_handle,
        user_name=user_name,
        user_display_name=user_display_name or user_name,
        timeout=TIMEOUT_MS,
        attestation=AttestationConveyancePreference(attestation),
        authenticator_selection=selection,
        exclude_credentials=[credential.descriptor() for credential in exclude],
        supported_pub_key_algs=ALGORITHMS,
    )
    return Options(public_key=json.loads(options_to_json(options)), challenge=options.challenge)


def verify_registration(
    *,
    credential: Mapping[str, Any],
    expected_challenge: bytes,
    relying_party: RelyingParty,
    require_user_verification: bool,
    allowed_aaguids: frozenset[str] | None = None,
) -> Credential:
    """Check an attestation (type, challenge, origin, RP id hash, UP, UV where required, an offered
    algorithm, the attestation statement) and return the credential to store. With an allow-list,
    only an attested model on it is accepted: an unattested AAGUID is only the authenticator's word."""
    try:
        verified = verify_registration_response(
            credential=dict(credential),
            expected_challenge=expected_challenge,
            expected_rp_id=relying_party.id,
            expected_origin=relying_party.origin,
            require_user_presence=True,
            require_user_verification=require_user_verification,
            supported_pub_key_algs=ALGORITHMS,
        )
    except (WebAuthnException, KeyError, TypeError, ValueError) as error:
        raise WebAuthnError(f"the authenticator's response was refused: {_reason(error)}") from None
    attestation_format = str(getattr(verified.fmt, "value", verified.fmt))
    if allowed_aaguids is not None and (attestation_format == "none" or verified.aaguid.lower() not in allowed_aaguids):
        raise WebAuthnError("this authenticator model is not allowed by your organization")
    auth_data = parse_attestation_object(verified.attestation_object).auth_data
    response = credential.get("response") if isinstance(credential.get("response"), Mapping) else {}
    transports = response.get("transports") if isinstance(response, Mapping) else None
    return Credential(
        credential_id=verified.credential_id,
        public_key=verified.credential_public_key,
        sign_count=verified.sign_count,
        aaguid=verified.aaguid,
        transports=tuple(t for t in (transports or []) if isinstance(t, str) and t in KNOWN_TRANSPORTS),
        backup_eligible=bool(auth_data.flags.be),
        backed_up=bool(verified.credential_backed_up),
        user_verified=bool(verified.user_verified),
        attestation_format=attestation_format,
    )


# -- authentication (§7.2) -------------------------------------------------------------------------


def authentication_options(
    *, relying_party: RelyingParty, credentials: Sequence[Credential], require_user_verification: bool
) -> Options:
    options = generate_authentication_options(
        rp_id=relying_party.id,
        timeout=TIMEOUT_MS,
        allow_credentials=[credential.descriptor() for credential in credentials],
        user_verification=(
            UserVerificationRequirement.REQUIRED if require_user_verification else UserVerificationRequirement.PREFERRED
        ),
    )
    return Options(public_key=json.loads(options_to_json(options)), challenge=options.challenge)


def asserted_challenge(credential: Mapping[str, Any]) -> bytes:
    """The challenge a response claims to answer (read from clientDataJSON before any check): the
    caller must look it up among the challenges it issued; the signature check then binds it."""
    try:
        response = credential["response"]
        client_data = json.loads(base64url_to_bytes(response["clientDataJSON"]))
        return base64url_to_bytes(client_data["challenge"])
    except Exception:
        raise WebAuthnError("the response carries no readable challenge") from None


def asserted_credential_id(credential: Mapping[str, Any]) -> bytes:
    try:
        raw = credential.get("rawId") or credential["id"]
        return base64url_to_bytes(raw)
    except Exception:
        raise WebAuthnError("the response names no credential") from None


def verify_assertion(
    *,
    credential: Mapping[str, Any],
    expected_challenge: bytes,
    relying_party: RelyingParty,
    stored: Credential,
    require_user_verification: bool,
) -> Assertion:
    """Check an assertion (type, challenge, origin, RP id hash, UP, UV where required, signature) made
    with ``stored``. A counter that did not grow, when either side is non-zero, is a cloned
    authenticator (§6.1.1); both zero means the authenticator keeps no counter, which is allowed."""
    try:
        verified = verify_authentication_response(
            credential=dict(credential),
            expected_challenge=expected_challenge,
            expected_rp_id=relying_party.id,
            expected_origin=relying_party.origin,
            credential_public_key=stored.public_key,
            # The counter is compared below, once the signature holds (§7.2 step 21 follows step 20):
            # only the credential's own key can report it, so a forged one never flags a clone.
            credential_current_sign_count=0,
            require_user_verification=require_user_verification,
        )
    except (WebAuthnException, KeyError, TypeError, ValueError) as error:
        raise WebAuthnError(f"the authenticator's response was refused: {_reason(error)}") from None
    if verified.credential_id != stored.credential_id:
        raise WebAuthnError("the response was made with another credential")
    received = verified.new_sign_count
    if (received > 0 or stored.sign_count > 0) and received <= stored.sign_count:
        raise ClonedAuthenticator(
            f"signature counter {received} is not above the stored {stored.sign_count}",
        )
    return Assertion(
        credential_id=verified.credential_id,
        new_sign_count=verified.new_sign_count,
        user_verified=bool(verified.user_verified),
        backed_up=bool(verified.credential_backed_up),
    )


def _reason(error: Exception) -> str:
    text = str(error) or type(error).__name__
    return text[:200]
