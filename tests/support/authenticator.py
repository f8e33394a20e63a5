"""A software WebAuthn authenticator and client for tests, with real cryptography.

It plays the browser and the authenticator together: from the server's options (WebAuthn JSON, the
``publicKey`` member or the object holding it) it builds the JSON a browser's
``PublicKeyCredential.toJSON()`` gives, signed with real keys (``cryptography``), the attestation
object in CBOR (``cbor2``). Nothing of Twofold is used.

    key = SoftAuthenticator(aaguid=YUBIKEY_5_NFC, uv=True, attachment="cross-platform", transports=("usb",))
    credential = key.create(enrollment["publicKey"])      # navigator.credentials.create() → toJSON()
    assertion = key.get(options["publicKey"])             # navigator.credentials.get() → toJSON()

It answers what it is told, as an attacker's client would: flags (UP, UV, BE, BS), origin, RP id,
clientData ``type``, challenge, algorithm, attestation format and signature counter can all be set
per authenticator or per call, and the helpers at the end alter a finished response. The checks a
real browser makes (the RP id against the origin, ``userVerification: "required"``) are left to the
relying party on purpose. A credential in ``excludeCredentials`` is refused like a browser's
``InvalidStateError``, unless ``credential_id`` is given explicitly.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import secrets
import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

ORIGIN = "http://localhost:8000"

# COSE algorithm identifiers (RFC 9053, IANA COSE registry).
ES256 = -7
ES512 = -36
EDDSA = -8
RS256 = -257

ZERO_AAGUID = "00000000-0000-0000-0000-000000000000"

# authenticatorData flags (WebAuthn §6.1).
UP, UV, BE, BS, AT, ED = 0x01, 0x04, 0x08, 0x10, 0x40, 0x80

# What the client sends for each attestation conveyance preference: "none" strips the statement
# (WebAuthn L3 §5.1.3 step 20, the AAGUID is kept as browsers do today); the others pass it on.
_CONVEYED = {"direct", "indirect", "enterprise"}


class CredentialExcluded(Exception):
    """The authenticator holds a credential of ``excludeCredentials`` (the browser's InvalidStateError)."""


class NoCredential(Exception):
    """No credential of this authenticator is allowed by the options (the browser's NotAllowedError)."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class SoftCredential:
    credential_id: bytes
    private_key: Any  # a cryptography private key
    alg: int
    rp_id: str
    user_handle: bytes | None
    sign_count: int = 0


@dataclass
class ParsedAuthenticatorData:
    rp_id_hash: bytes
    flags: int
    sign_count: int
    aaguid: str | None = None
    credential_id: bytes | None = None


class SoftAuthenticator:
    """A FIDO2 authenticator holding its credentials in memory (id → key, sign count, user handle).

    ``sign_count`` is "increment" (a per-credential counter, incremented before each assertion) or
    "zero" (an authenticator that keeps no counter). ``attestation`` is the format the authenticator
    produces when the relying party asks for attestation: "packed" (self attestation: ``alg`` and a
    signature with the credential's own key over authData ‖ SHA-256(clientDataJSON), no ``x5c``) or
    "none". ``algorithms`` are the COSE algorithms it can make keys for, in no particular order: it
    takes the first of ``pubKeyCredParams`` it supports, as authenticators do.
    """

    def __init__(
        self,
        *,
        aaguid: str = ZERO_AAGUID,
        up: bool = True,
        uv: bool = True,
        backup_eligible: bool = False,
        backed_up: bool | None = None,
        attachment: str = "cross-platform",
        transports: Sequence[str] = ("usb",),
        attestation: str = "packed",
        sign_count: str = "increment",
        algorithms: Sequence[int] = (ES256, EDDSA, RS256, ES512),
    ) -> None:
        assert attestation in {"packed", "none"}, attestation
        assert sign_count in {"increment", "zero"}, sign_count
        self.aaguid = str(uuid.UUID(aaguid))
        self.up = up
        self.uv = uv
        self.backup_eligible = backup_eligible
        self.backed_up = backup_eligible if backed_up is None else backed_up
        self.attachment = attachment
        self.transports = list(transports)
        self.attestation = attestation
        self.sign_count_mode = sign_count
        self.algorithms = tuple(algorithms)
        self.credentials: dict[bytes, SoftCredential] = {}

    # -- ceremonies --------------------------------------------------------------------------------

    def create(
        self,
        options: Mapping[str, Any],
        *,
        origin: str = ORIGIN,
        rp_id: str | None = None,
        client_data_type: str = "webauthn.create",
        challenge: bytes | str | None = None,
        fmt: str | None = None,
        alg: int | None = None,
        credential_id: bytes | None = None,
        up: bool | None = None,
        uv: bool | None = None,
    ) -> dict[str, Any]:
        """``navigator.credentials.create({publicKey})``, then ``toJSON()``. ``fmt`` forces an attestation
        format ("none" or "packed") whatever the options asked; ``alg`` forces a key algorithm whatever
        was offered; ``credential_id`` reuses an id (and its key, when this authenticator holds it)."""
        public_key = _public_key_options(options)
        rp_id = rp_id if rp_id is not None else public_key["rp"]["id"]
        if credential_id is None:
            excluded = {b64url_decode(d["id"]) for d in public_key.get("excludeCredentials") or []}
            if excluded & set(self.credentials):
                raise CredentialExcluded("this authenticator already holds an excluded credential")
        held = self.credentials.get(credential_id) if credential_id is not None else None
        if held is not None and alg is None:
            credential = replace(held, rp_id=rp_id, sign_count=held.sign_count)
        else:
            chosen = alg if alg is not None else self._choose_algorithm(public_key.get("pubKeyCredParams") or [])
            credential = SoftCredential(
                credential_id=credential_id if credential_id is not None else secrets.token_bytes(32),
                private_key=_generate_key(chosen),
                alg=chosen,
                rp_id=rp_id,
                user_handle=b64url_decode(public_key["user"]["id"]),
            )
        self.credentials[credential.credential_id] = credential

        client_data = _client_data(client_data_type, challenge or public_key["challenge"], origin)
        attested = (
            uuid.UUID(self.aaguid).bytes
            + struct.pack(">H", len(credential.credential_id))
            + credential.credential_id
            + cbor2.dumps(_cose_key(credential.private_key, credential.alg))
        )
        auth_data = self._authenticator_data(rp_id, credential.sign_count, up=up, uv=uv, extra_flags=AT) + attested
        if fmt is None:
            fmt = self.attestation if public_key.get("attestation", "none") in _CONVEYED else "none"
        if fmt == "packed":
            signature = _sign(credential.private_key, credential.alg, auth_data + hashlib.sha256(client_data).digest())
            statement: dict[str, Any] = {"alg": credential.alg, "sig": signature}
        else:
            statement = {}
        attestation_object = cbor2.dumps({"fmt": fmt, "attStmt": statement, "authData": auth_data})
        return {
            "id": b64url(credential.credential_id),
            "rawId": b64url(credential.credential_id),
            "type": "public-key",
            "authenticatorAttachment": self.attachment,
            "clientExtensionResults": {},
            "response": {
                "clientDataJSON": b64url(client_data),
                "attestationObject": b64url(attestation_object),
                "authenticatorData": b64url(auth_data),
                "publicKey": b64url(_spki(credential.private_key)),
                "publicKeyAlgorithm": credential.alg,
                "transports": list(self.transports),
            },
        }

    def get(
        self,
        options: Mapping[str, Any],
        *,
        origin: str = ORIGIN,
        rp_id: str | None = None,
        client_data_type: str = "webauthn.get",
        challenge: bytes | str | None = None,
        credential_id: bytes | None = None,
        up: bool | None = None,
        uv: bool | None = None,
    ) -> dict[str, Any]:
        """``navigator.credentials.get({publicKey})``, then ``toJSON()``: answers with the first credential
        of ``allowCredentials`` it holds, or with ``credential_id`` whatever the options allowed."""
        public_key = _public_key_options(options)
        rp_id = rp_id if rp_id is not None else public_key.get("rpId") or ""
        if credential_id is None:
            allowed = [b64url_decode(d["id"]) for d in public_key.get("allowCredentials") or []]
            candidates = [c for c in allowed if c in self.credentials] if allowed else list(self.credentials)
            if not candidates:
                raise NoCredential("this authenticator holds none of the allowed credentials")
            credential_id = candidates[0]
        credential = self.credentials[credential_id]
        if self.sign_count_mode == "increment":
            credential.sign_count += 1
        client_data = _client_data(client_data_type, challenge or public_key["challenge"], origin)
        auth_data = self._authenticator_data(rp_id, credential.sign_count, up=up, uv=uv)
        signature = _sign(credential.private_key, credential.alg, auth_data + hashlib.sha256(client_data).digest())
        return {
            "id": b64url(credential.credential_id),
            "rawId": b64url(credential.credential_id),
            "type": "public-key",
            "authenticatorAttachment": self.attachment,
            "clientExtensionResults": {},
            "response": {
                "clientDataJSON": b64url(client_data),
                "authenticatorData": b64url(auth_data),
                "signature": b64url(signature),
                "userHandle": b64url(credential.user_handle) if credential.user_handle is not None else None,
            },
        }

    # -- state -------------------------------------------------------------------------------------

    def set_sign_count(self, credential_id: bytes | str, value: int) -> None:
        """The counter the next assertion starts from (it reports ``value + 1`` when incrementing)."""
        self.credentials[_id_bytes(credential_id)].sign_count = value

    def sign_count(self, credential_id: bytes | str) -> int:
        return self.credentials[_id_bytes(credential_id)].sign_count

    def clone(self) -> SoftAuthenticator:
        """A copy holding the same keys with counters of their own, as a cloned authenticator would."""
        twin = copy.copy(self)
        twin.credentials = {key: replace(value) for key, value in self.credentials.items()}
        return twin

    # -- internals ---------------------------------------------------------------------------------

    def _choose_algorithm(self, offered: Sequence[Mapping[str, Any]]) -> int:
        for parameter in offered:
            if parameter.get("type", "public-key") == "public-key" and parameter.get("alg") in self.algorithms:
                return int(parameter["alg"])
        raise ValueError(f"none of the offered algorithms is supported: {offered}")

    def _authenticator_data(
        self, rp_id: str, sign_count: int, *, up: bool | None, uv: bool | None, extra_flags: int = 0
    ) -> bytes:
        flags = extra_flags
        flags |= UP if (self.up if up is None else up) else 0
        flags |= UV if (self.uv if uv is None else uv) else 0
        flags |= BE if self.backup_eligible else 0
        flags |= BS if self.backed_up else 0
        return hashlib.sha256(rp_id.encode()).digest() + bytes([flags]) + struct.pack(">I", sign_count)


# -- encoding and keys -------------------------------------------------------------------------------


def _public_key_options(options: Mapping[str, Any]) -> Mapping[str, Any]:
    inner = options.get("publicKey")
    return inner if isinstance(inner, Mapping) else options


def _id_bytes(credential_id: bytes | str) -> bytes:
    return b64url_decode(credential_id) if isinstance(credential_id, str) else credential_id


def _client_data(client_data_type: str, challenge: bytes | str, origin: str) -> bytes:
    """CollectedClientData as browsers serialize it (§5.8.1.1): type, challenge, origin, crossOrigin."""
    encoded = challenge if isinstance(challenge, str) else b64url(challenge)
    data = {"type": client_data_type, "challenge": encoded, "origin": origin, "crossOrigin": False}
    return json.dumps(data, separators=(",", ":")).encode()


def _generate_key(alg: int) -> Any:
    if alg == ES256:
        return ec.generate_private_key(ec.SECP256R1())
    if alg == ES512:
        return ec.generate_private_key(ec.SECP521R1())
    if alg == EDDSA:
        return ed25519.Ed25519PrivateKey.generate()
    if alg == RS256:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unsupported COSE algorithm {alg}")


def _cose_key(private_key: Any, alg: int) -> dict[int, Any]:
    """The credential public key as a COSE_Key (RFC 9052 §7, RFC 9053 §7)."""
    public = private_key.public_key()
    if alg in (ES256, ES512):
        size = 32 if alg == ES256 else 66
        numbers = public.public_numbers()
        curve = 1 if alg == ES256 else 3  # P-256, P-521
        return {1: 2, 3: alg, -1: curve, -2: numbers.x.to_bytes(size, "big"), -3: numbers.y.to_bytes(size, "big")}
    if alg == EDDSA:
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {1: 1, 3: alg, -1: 6, -2: raw}  # OKP, Ed25519
    if alg == RS256:
        numbers = public.public_numbers()
        return {
            1: 3,
            3: alg,
            -1: numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big"),
            -2: numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big"),
        }
    raise ValueError(f"unsupported COSE algorithm {alg}")


def _spki(private_key: Any) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _sign(private_key: Any, alg: int, data: bytes) -> bytes:
    """A WebAuthn signature (§6.5.6): ECDSA as DER, Ed25519 raw, RSA PKCS#1 v1.5."""
    if alg == ES256:
        return bytes(private_key.sign(data, ec.ECDSA(hashes.SHA256())))
    if alg == ES512:
        return bytes(private_key.sign(data, ec.ECDSA(hashes.SHA512())))
    if alg == EDDSA:
        return bytes(private_key.sign(data))
    if alg == RS256:
        return bytes(private_key.sign(data, padding.PKCS1v15(), hashes.SHA256()))
    raise ValueError(f"unsupported COSE algorithm {alg}")


# -- reading and altering finished responses -----------------------------------------------------------


def client_data_of(credential: Mapping[str, Any]) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(b64url_decode(credential["response"]["clientDataJSON"]))
    return decoded


def authenticator_data_of(credential: Mapping[str, Any]) -> ParsedAuthenticatorData:
    """The authenticatorData of an assertion, or of a registration's attestation object."""
    response = credential["response"]
    if "attestationObject" in response:
        raw = cbor2.loads(b64url_decode(response["attestationObject"]))["authData"]
    else:
        raw = b64url_decode(response["authenticatorData"])
    parsed = ParsedAuthenticatorData(rp_id_hash=raw[:32], flags=raw[32], sign_count=struct.unpack(">I", raw[33:37])[0])
    if parsed.flags & AT:
        parsed.aaguid = str(uuid.UUID(bytes=raw[37:53]))
        (length,) = struct.unpack(">H", raw[53:55])
        parsed.credential_id = raw[55 : 55 + length]
    return parsed


def attestation_of(credential: Mapping[str, Any]) -> dict[str, Any]:
    decoded: dict[str, Any] = cbor2.loads(b64url_decode(credential["response"]["attestationObject"]))
    return decoded


def flip_signature_byte(credential: Mapping[str, Any], index: int = -1) -> dict[str, Any]:
    """A copy of an assertion whose signature has one byte changed."""
    altered = copy.deepcopy(dict(credential))
    signature = bytearray(b64url_decode(altered["response"]["signature"]))
    signature[index] ^= 0x01
    altered["response"]["signature"] = b64url(bytes(signature))
    return altered


def with_flags(credential: Mapping[str, Any], *, clear: int = 0, set_: int = 0) -> dict[str, Any]:
    """A copy of an assertion with authenticatorData flags changed after signing (the signature no
    longer matches: for checks made before the signature's)."""
    altered = copy.deepcopy(dict(credential))
    raw = bytearray(b64url_decode(altered["response"]["authenticatorData"]))
    raw[32] = (raw[32] & ~clear | set_) & 0xFF
    altered["response"]["authenticatorData"] = b64url(bytes(raw))
    return altered


def with_client_data(credential: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy with clientDataJSON members changed after signing (the signature no longer matches)."""
    altered = copy.deepcopy(dict(credential))
    data = client_data_of(altered)
    data.update(changes)
    altered["response"]["clientDataJSON"] = b64url(json.dumps(data, separators=(",", ":")).encode())
    return altered


def with_credential_id(credential: Mapping[str, Any], credential_id: bytes) -> dict[str, Any]:
    """A copy of an assertion naming another credential (``id`` and ``rawId``)."""
    altered = copy.deepcopy(dict(credential))
    altered["id"] = altered["rawId"] = b64url(credential_id)
    return altered
