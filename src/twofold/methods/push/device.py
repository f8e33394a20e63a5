"""The companion's key and what it signs (API.md "Push companion").

A device holds a P-256 key pair; the server keeps only the public JWK. Every device request carries
``Authorization: Twofold-Device <compact JWS>`` over ``{device_id, iat, jti, htm, htu}`` (the shape of
a DPoP proof, RFC 9449 §4.2, bound to one method and URL), and an answer to a challenge is a JWS over
``{challenge_id, decision, number, not_me}``. Both are ES256 (RFC 7518 §3.4). The device holds no bearer
secret: a stolen request is good once (``jti``), for one URL, for a minute.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey
from joserfc.util import urlsafe_b64decode

from twofold.domain.errors import ValidationFailed, VerificationError

ALGORITHM = "ES256"
REQUEST_TYPE = "twofold-device+jwt"
RESPONSE_TYPE = "twofold-push-response+jwt"
#: how far a request's ``iat`` may be from the server's clock (API.md: ±60 s)
IAT_LEEWAY_SECONDS = 60
DECISIONS = ("approve", "deny")
MAX_TOKEN = 4096


class DeviceProofError(VerificationError):
    """A device request or answer that does not hold: bad signature, stale, replayed, wrong URL."""


def public_key_from_jwk(jwk: Mapping[str, Any]) -> ECKey:
    """The device's public key, checked: an EC P-256 public JWK (a private part is refused, since
    a device must never send it) whose point is on the curve."""
    if not isinstance(jwk, Mapping) or jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise ValidationFailed("public_key must be an EC P-256 JWK")
    if "d" in jwk:
        raise ValidationFailed("public_key must not contain the private key ('d')")
    if not all(isinstance(jwk.get(name), str) for name in ("x", "y")):
        raise ValidationFailed("public_key needs the coordinates x and y")
    try:
        key = ECKey.import_key({"kty": "EC", "crv": "P-256", "x": jwk["x"], "y": jwk["y"]})
    except (JoseError, ValueError, TypeError):
        raise ValidationFailed("public_key is not a valid P-256 point") from None
    return key


def public_jwk(key: ECKey) -> dict[str, Any]:
    value = key.as_dict(private=False)
    return {name: value[name] for name in ("kty", "crv", "x", "y")}


def thumbprint(key: ECKey) -> str:
    """RFC 7638 JWK thumbprint: how a device's key is named in audit details."""
    return str(key.thumbprint())


def _payload(token: str) -> dict[str, Any]:
    """The claims of a compact JWS, *unverified*: only to learn which device's key checks the signature."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN or token.count(".") != 2:
        raise DeviceProofError("not a compact JWS")
    try:
        value = json.loads(urlsafe_b64decode(token.split(".")[1].encode()))
    except (ValueError, UnicodeDecodeError):
        raise DeviceProofError("not a compact JWS") from None
    if not isinstance(value, dict):
        raise DeviceProofError("the JWS payload is not an object")
    return value


def claimed_device_id(token: str) -> str:
    device_id = _payload(token).get("device_id")
    if not isinstance(device_id, str) or not 1 <= len(device_id) <= 64:
        raise DeviceProofError("the request names no device")
    return device_id


def _verified(token: str, key: ECKey, expected_type: str) -> dict[str, Any]:
    try:
        found = jws.deserialize_compact(token, key, algorithms=[ALGORITHM])
    except (JoseError, ValueError, TypeError):
        raise DeviceProofError("the signature does not verify with this device's key") from None
    if found.protected.get("typ") != expected_type:
        raise DeviceProofError(f"the JWS type must be {expected_type}")
    try:
        claims = json.loads(found.payload)
    except (ValueError, UnicodeDecodeError):
        raise DeviceProofError("the JWS payload is not JSON") from None
    if not isinstance(claims, dict):
        raise DeviceProofError("the JWS payload is not an object")
    return claims


@dataclass(frozen=True)
class DeviceRequest:
    device_id: str
    jti: str
    iat: int


def verify_device_request(
    token: str, key: ECKey, *, expected_device_id: str, expected_htm: str, expected_htu: str, now: datetime
) -> DeviceRequest:
    """Check a ``Twofold-Device`` proof: signature, type, device, method, URL and freshness. The caller
    then records ``jti`` once (replays are refused there)."""
    claims = _verified(token, key, REQUEST_TYPE)
    if claims.get("device_id") != expected_device_id:
        raise DeviceProofError("the request was signed for another device")
    if claims.get("htm") != expected_htm or claims.get("htu") != expected_htu:
        raise DeviceProofError("the request was signed for another method or URL")
    iat, jti = claims.get("iat"), claims.get("jti")
    if not isinstance(iat, int) or isinstance(iat, bool) or abs(iat - now.timestamp()) > IAT_LEEWAY_SECONDS:
        raise DeviceProofError("the request is stale or its clock is off by more than a minute")
    if not isinstance(jti, str) or not 16 <= len(jti) <= 128:
        raise DeviceProofError("the request needs a unique jti")
    return DeviceRequest(device_id=expected_device_id, jti=jti, iat=iat)


@dataclass(frozen=True)
class DeviceAnswer:
    challenge_id: str
    decision: str
    number: int | None
    not_me: bool


def verify_answer(token: str, key: ECKey, *, expected_challenge_id: str) -> DeviceAnswer:
    """Check an answer to a challenge: signed by this device's key, for this very challenge."""
    claims = _verified(token, key, RESPONSE_TYPE)
    if claims.get("challenge_id") != expected_challenge_id:
        raise DeviceProofError("the answer was signed for another challenge")
    decision = claims.get("decision")
    if decision not in DECISIONS:
        raise DeviceProofError("decision must be 'approve' or 'deny'")
    number = claims.get("number")
    if number is not None and (not isinstance(number, int) or isinstance(number, bool)):
        raise DeviceProofError("number must be an integer")
    if decision == "approve" and number is None:
        raise DeviceProofError("an approval must carry the number picked")
    return DeviceAnswer(
        challenge_id=expected_challenge_id, decision=str(decision), number=number, not_me=claims.get("not_me") is True
    )


# -- the companion's side ------------------------------------------------------------------------


def new_device_key() -> ECKey:
    return ECKey.generate_key("P-256", private=True)


def sign_device_request(key: ECKey, *, device_id: str, htm: str, htu: str, jti: str, iat: int | None = None) -> str:
    claims = {
        "device_id": device_id,
        "iat": int(time.time()) if iat is None else iat,
        "jti": jti,
        "htm": htm,
        "htu": htu,
    }
    return str(jws.serialize_compact({"alg": ALGORITHM, "typ": REQUEST_TYPE}, json.dumps(claims), key))


def sign_answer(key: ECKey, *, challenge_id: str, decision: str, number: int | None, not_me: bool = False) -> str:
    claims: dict[str, Any] = {"challenge_id": challenge_id, "decision": decision, "number": number}
    if not_me:
        claims["not_me"] = True
    return str(jws.serialize_compact({"alg": ALGORITHM, "typ": RESPONSE_TYPE}, json.dumps(claims), key))
