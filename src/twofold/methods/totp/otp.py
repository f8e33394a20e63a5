"""RFC 6238 codes on pyotp, with the pieces the protocol needs that pyotp leaves to callers:
which time step matched (for single use) and the Key URI the authenticator apps read."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import pyotp

SECRET_BYTES = 20  # 160 bits, the length RFC 4226 §4 recommends and SHA-1's block output size
DIGESTS = {"SHA1": hashlib.sha1, "SHA256": hashlib.sha256, "SHA512": hashlib.sha512}


@dataclass(frozen=True)
class TotpParameters:
    """RFC 6238 §4: T0 = 0, X = ``period`` seconds; the code is ``digits`` long (RFC 4226 §5.3)."""

    algorithm: str = "SHA1"
    digits: int = 6
    period: int = 30

    def __post_init__(self) -> None:
        if self.algorithm not in DIGESTS:
            raise ValueError(f"unsupported TOTP algorithm {self.algorithm!r}")
        if not 6 <= self.digits <= 8:
            raise ValueError("TOTP codes have 6 to 8 digits")
        if not 15 <= self.period <= 120:
            raise ValueError("the TOTP period is 15 to 120 seconds")


def generate_secret() -> str:
    """A base32 secret of 160 bits from the OS CSPRNG (pyotp uses ``secrets``)."""
    return pyotp.random_base32(length=32)


def _totp(secret: str, parameters: TotpParameters) -> pyotp.TOTP:
    return pyotp.TOTP(
        secret, digits=parameters.digits, digest=DIGESTS[parameters.algorithm], interval=parameters.period
    )


def time_step(unix_time: float, parameters: TotpParameters) -> int:
    return int(unix_time // parameters.period)


def totp_code(secret: str, *, unix_time: float, parameters: TotpParameters = TotpParameters()) -> str:
    """The code for the time step that contains ``unix_time``."""
    return _totp(secret, parameters).at(int(unix_time))


def matching_time_step(
    secret: str,
    code: str,
    *,
    unix_time: float,
    parameters: TotpParameters = TotpParameters(),
    window: int = 1,
    after: int | None = None,
) -> int | None:
    """The time step within ±``window`` of now whose code is ``code`` (latest first), or None.

    Every candidate is compared in constant time, and all of them are compared, so the time taken
    says nothing about which step (if any) matched. Steps at or before ``after`` (the last accepted
    step) are out: a code is accepted once (RFC 6238 §5.2).
    """
    totp = _totp(secret, parameters)
    now_step = time_step(unix_time, parameters)
    found: int | None = None
    for step in range(now_step + window, now_step - window - 1, -1):
        expected = totp.at(step * parameters.period)
        matches = hmac.compare_digest(expected.encode(), code.encode())
        if matches and found is None and (after is None or step > after):
            found = step
    return found


def key_uri(secret: str, *, account: str, issuer: str, parameters: TotpParameters = TotpParameters()) -> str:
    """The ``otpauth://totp/`` Key URI (Google Authenticator's "Key Uri Format"): label
    ``issuer:account``, with ``issuer`` repeated as a parameter, which the apps prefer."""
    # A colon separates issuer and account in the label, so neither may contain one.
    issuer, account = issuer.replace(":", " ").strip(), account.replace(":", " ").strip()
    label = quote(f"{issuer}:{account}" if issuer else account, safe="@:")
    query: dict[str, Any] = {"secret": secret}
    if issuer:
        query["issuer"] = issuer
    query |= {"algorithm": parameters.algorithm, "digits": parameters.digits, "period": parameters.period}
    return f"otpauth://totp/{label}?{urlencode(query, quote_via=quote)}"
