"""Client secrets: 256 bits from the CSPRNG, shown once, stored as an HMAC-SHA-256 digest.

A secret this random needs no slow hash (a stolen digest cannot be guessed back), and a slow one would
cap grants at a few dozen per second. The HMAC key comes from ``TWOFOLD_SECRET_KEY``; digests under
earlier keys (``TWOFOLD_OLD_SECRET_KEYS``) still verify, so rotating the server key breaks no client.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from twofold.services.crypto import derive_key

SECRET_PREFIX = "tfcs"
CLIENT_ID_PREFIX = "tfc"


def new_client_id() -> str:
    return f"{CLIENT_ID_PREFIX}_{secrets.token_urlsafe(16)}"


def new_client_secret() -> str:
    return f"{SECRET_PREFIX}_{secrets.token_urlsafe(32)}"


class SecretDigests:
    def __init__(self, secret_key: str, old_secret_keys: list[str] | tuple[str, ...] = ()) -> None:
        self._keys = [derive_key(key, b"client secret digest v1") for key in (secret_key, *old_secret_keys)]

    def digest(self, secret: str) -> str:
        """The digest to store, under the current key."""
        return self._digest(self._keys[0], secret)

    def candidates(self, secret: str) -> list[str]:
        """The digests this secret has under every configured key: one indexed lookup finds a match."""
        return [self._digest(key, secret) for key in self._keys]

    @staticmethod
    def _digest(key: bytes, secret: str) -> str:
        return hmac.new(key, secret.encode(), hashlib.sha256).hexdigest()
