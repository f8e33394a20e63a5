"""One-time recovery codes (R8): a fallback when the user's devices are lost, not a method type.

Each code carries 80 bits from the OS CSPRNG (the issue asks for at least 50), written as 16
Crockford base32 characters in four groups. Only a SHA-256 hash of the normalized code is stored:
with 80 random bits a fast hash is enough to make a stolen table useless, and a lookup by hash
needs no per-code slow hashing at login.
"""

from __future__ import annotations

import hashlib
import secrets

CODE_COUNT = 10
CODE_CHARACTERS = 16
GROUP = 4
# Crockford's base32: no I, L, O or U, so codes read aloud or written down stay unambiguous.
ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
BITS_PER_CODE = CODE_CHARACTERS * 5
AMR: tuple[str, ...] = ()  # a recovery code proves no RFC 8176 factor of its own: the session gets ["pwd","mfa"]
VERIFICATION_TYPE = "recovery_code"
_READ_AS = str.maketrans({"i": "1", "l": "1", "o": "0", "u": "v"})


def generate_codes(count: int = CODE_COUNT) -> list[str]:
    """Fresh codes for display, e.g. ``k3vq-9xa2-mm7d-4hzt``."""
    codes = []
    for _ in range(count):
        raw = "".join(secrets.choice(ALPHABET) for _ in range(CODE_CHARACTERS))
        codes.append("-".join(raw[i : i + GROUP] for i in range(0, CODE_CHARACTERS, GROUP)))
    return codes


def normalize(code: str) -> str | None:
    """What the user typed, as stored: case, spaces and dashes ignored, look-alike letters read as
    Crockford says. None when it cannot be a recovery code at all."""
    if not isinstance(code, str) or len(code) > 64:
        return None
    cleaned = "".join(code.split()).replace("-", "").lower().translate(_READ_AS)
    if len(cleaned) != CODE_CHARACTERS or any(ch not in ALPHABET for ch in cleaned):
        return None
    return cleaned


def hash_code(code: str) -> str:
    """The stored form of a code (normalized first); raises ValueError for a malformed one."""
    normalized = normalize(code)
    if normalized is None:
        raise ValueError("not a recovery code")
    return hashlib.sha256(f"twofold-recovery-code:{normalized}".encode()).hexdigest()
