"""Secrets at rest (AES-GCM under a key derived from TWOFOLD_SECRET_KEY) and bearer tokens.

A sealed value is ``v1.<key id>.<base64url(nonce || ciphertext)>``: the key id says which secret key
sealed it, so that `twofold secrets rotate` can re-seal under a new key while old ones stay readable.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SEALED_PREFIX = "v1"


class SealedValueError(Exception):
    """A sealed value cannot be opened: unknown key id, or it was tampered with."""


def derive_key(secret_key: str, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"twofold", info=purpose).derive(secret_key.encode())


class AesGcmSealer:
    def __init__(self, secret_key: str, old_secret_keys: list[str] | tuple[str, ...] = ()) -> None:
        self._keys: dict[str, AESGCM] = {}
        self.current_key_id = self._add(secret_key)
        for old in old_secret_keys:
            self._add(old)

    def _add(self, secret_key: str) -> str:
        key = derive_key(secret_key, b"secrets at rest v1")
        key_id = hashlib.sha256(key).hexdigest()[:12]
        self._keys.setdefault(key_id, AESGCM(key))
        return key_id

    def seal(self, plaintext: bytes, *, context: str) -> str:
        nonce = secrets.token_bytes(12)
        ciphertext = self._keys[self.current_key_id].encrypt(nonce, plaintext, context.encode())
        body = base64.urlsafe_b64encode(nonce + ciphertext).decode().rstrip("=")
        return f"{SEALED_PREFIX}.{self.current_key_id}.{body}"

    def open(self, sealed: str, *, context: str) -> bytes:
        try:
            prefix, key_id, body = sealed.split(".", 2)
            if prefix != SEALED_PREFIX:
                raise ValueError(prefix)
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            key = self._keys[key_id]
            return key.decrypt(raw[:12], raw[12:], context.encode())
        except KeyError:
            raise SealedValueError("sealed under a secret key that is not configured") from None
        except Exception as error:
            raise SealedValueError("sealed value is corrupt or was tampered with") from error

    def needs_reseal(self, sealed: str) -> bool:
        return sealed.split(".", 2)[1:2] != [self.current_key_id]


def new_token(prefix: str) -> str:
    """A bearer token: 256 bits from the OS CSPRNG with a readable prefix (tfs_ session, tft_ transaction…)."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def hash_token(token: str) -> str:
    """Tokens are stored only as SHA-256 hashes: they are 256-bit random, so no slow hash is needed."""
    return hashlib.sha256(token.encode()).hexdigest()


class TokenMac:
    """HMACs for values the server hands out and checks later without storing (CSRF tokens)."""

    def __init__(self, secret_key: str) -> None:
        self._key = derive_key(secret_key, b"token mac v1")

    def sign(self, message: str) -> str:
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()

    def verify(self, message: str, signature: str) -> bool:
        return hmac.compare_digest(self.sign(message), signature)
