"""Product rules that need no storage: usernames, the password policy, amr/acr, exemptions (R1–R4)."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from datetime import date, datetime

from .clock import as_utc
from .entities import Exemption, ServiceType, User, UserKind, UserMfaFacts
from .errors import ValidationFailed

USERNAME_MAX = 128
PASSWORD_MIN_USER = 8  # NIST SP 800-63B §3.1.1.2 (rev 4): at least 8 with MFA
PASSWORD_MIN_SERVICE = 15  # a password that is the only factor must be at least 15 (R4 accounts)
PASSWORD_MAX = 128  # at least 64 must be allowed; argon2 hashes any length, this bounds the work
NAME_MAX = 64


def username_key(username: str) -> str:
    """Usernames are compared after NFKC and case folding (API.md "Conventions")."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", username).casefold())


def clean_username(username: str) -> str:
    value = unicodedata.normalize("NFKC", username).strip()
    if not value or len(value) > USERNAME_MAX:
        raise ValidationFailed(f"username must be 1 to {USERNAME_MAX} characters")
    if any(unicodedata.category(ch)[0] in {"C", "Z"} and ch != " " for ch in value) or " " in value:
        raise ValidationFailed("username must not contain spaces or control characters")
    return value


def clean_display_name(name: str, *, field: str = "name", maximum: int = NAME_MAX) -> str:
    """1–64 printable characters, trimmed (API.md method names; also used for groups)."""
    value = unicodedata.normalize("NFC", name).strip()
    if not value or len(value) > maximum:
        raise ValidationFailed(f"{field} must be 1 to {maximum} characters")
    if not value.isprintable():
        raise ValidationFailed(f"{field} must contain printable characters only")
    return value


def clean_email(email: str) -> str:
    value = email.strip()
    local, at, domain = value.rpartition("@")
    if not at or not local or "." not in domain or len(value) > 254 or not value.isprintable() or " " in value:
        raise ValidationFailed("email must be an address such as name@example.com")
    return value


def minimum_password_length(kind: str) -> int:
    return PASSWORD_MIN_SERVICE if kind == UserKind.SERVICE.value else PASSWORD_MIN_USER


def check_password_policy(password: str, *, kind: str, username: str, is_common: bool) -> None:
    """NIST SP 800-63B §3.1.1.2: length only, no composition rules, refuse known-bad passwords."""
    minimum = minimum_password_length(kind)
    if len(password) < minimum:
        raise ValidationFailed(f"password must be at least {minimum} characters")
    if len(password) > PASSWORD_MAX:
        raise ValidationFailed(f"password must be at most {PASSWORD_MAX} characters")
    if is_common:
        raise ValidationFailed("this password is too common: choose one that is not on lists of breached passwords")
    if username_key(password) == username_key(username):
        raise ValidationFailed("password must not be the username")


def validate_kind(kind: str, service_type: str | None) -> tuple[str, str | None]:
    if kind not in {k.value for k in UserKind}:
        raise ValidationFailed("kind must be 'user' or 'service'")
    if kind == UserKind.SERVICE.value:
        if service_type not in {t.value for t in ServiceType}:
            raise ValidationFailed("a service account needs service_type 'test_automation' or 'rpa'")
    elif service_type is not None:
        raise ValidationFailed("service_type applies to service accounts only")
    return kind, service_type


def exemption_applies(user: User, exemption: Exemption | None, *, now: datetime, cutoff: date) -> bool:
    """R4: an exemption applies to a local account until it expires; a human's never after the cut-off."""
    return exemption_until_applies(user, exemption.expires_at if exemption else None, now=now, cutoff=cutoff)


def exemption_until_applies(
    user: User | UserMfaFacts, expires_at: datetime | None, *, now: datetime, cutoff: date
) -> bool:
    """``exemption_applies`` for an exemption known only by its expiry (reports read no whole rows)."""
    if expires_at is None or user.is_federated:
        return False
    if as_utc(expires_at) <= now:
        return False
    if user.kind != UserKind.SERVICE.value:
        return now.date() < cutoff
    return user.service_type in {t.value for t in ServiceType}


def acr_for(amr: Iterable[str]) -> str:
    """API.md: "0" for password only, "phr" when the second factor was WebAuthn, else the MFA URN."""
    values = set(amr)
    if "mfa" not in values:
        return "0"
    if "hwk" in values or ("swk" in values and "user" in values):
        return "phr"
    return "urn:twofold:acr:mfa"


def mfa_amr(method_amr: Iterable[str]) -> list[str]:
    """The amr of a session made by password + a second factor (API.md "amr")."""
    values = ["pwd"]
    for value in method_amr:
        if value not in values:
            values.append(value)
    values.append("mfa")
    return values
