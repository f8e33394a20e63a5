"""Whether an upstream sign-in shows multi-factor authentication (R2: an SSO user's MFA is never waived).

OpenID Connect: the ID token's ``amr`` (RFC 8176). By default a login passes when ``amr`` holds ``mfa``, or
two distinct factor values (``pwd`` and ``otp``, say); a provider's ``accepted_amr`` adds values that pass on
their own (``hwk``, for a provider that reports a security key alone). SAML: the assertion's
``AuthnContextClassRef`` must be one of the provider's accepted classes (by default the REFEDS MFA profile and
the common vendor equivalents).
"""

from __future__ import annotations

from collections.abc import Iterable

#: RFC 8176 §2 values that name a factor; "mfa" and "mca" summarize, "user" is a presence test, not a factor.
FACTOR_VALUES = frozenset(
    {"face", "fpt", "geo", "hwk", "iris", "kba", "otp", "pin", "pwd", "rba", "retina", "sc", "sms", "swk", "tel",
     "vbm", "wia"}
)  # fmt: skip

DEFAULT_ACCEPTED_AMR: tuple[str, ...] = ("mfa",)

REFEDS_MFA = "https://refeds.org/profile/mfa"
DEFAULT_ACCEPTED_AUTHN_CONTEXTS: tuple[str, ...] = (
    REFEDS_MFA,
    "http://schemas.microsoft.com/claims/multipleauthn",
    "urn:oasis:names:tc:SAML:2.0:ac:classes:MobileTwoFactorContract",
    "urn:oasis:names:tc:SAML:2.0:ac:classes:MobileTwoFactorUnregistered",
    "urn:oasis:names:tc:SAML:2.0:ac:classes:TimeSyncToken",
)


def amr_shows_mfa(amr: Iterable[str], *, accepted: Iterable[str] = DEFAULT_ACCEPTED_AMR) -> bool:
    values = {value for value in amr if isinstance(value, str)}
    if values & (set(accepted) | {"mfa"}):  # "mfa" always passes; accepted values add to it
        return True
    return len(values & FACTOR_VALUES) >= 2


def authn_context_shows_mfa(
    class_ref: str | None, *, accepted: Iterable[str] = DEFAULT_ACCEPTED_AUTHN_CONTEXTS
) -> bool:
    return class_ref is not None and class_ref in set(accepted)
