"""Token-signing keys (ES256, RFC 7518 §3.4): generated here, private halves sealed at rest, public
halves published as a JWK set (RFC 7517). ``twofold keys rotate`` makes a new key current; retired ones
stay published until every token they signed has expired."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from joserfc.jwk import ECKey, KeySet

from twofold.domain.entities import SigningKey
from twofold.domain.ports import Sealer

ALGORITHM = "ES256"


def seal_context(kid: str) -> str:
    return f"signing-key:{kid}"


def new_signing_key(sealer: Sealer) -> SigningKey:
    key = ECKey.generate_key("P-256", private=True)
    kid = str(key.thumbprint())
    public = {**key.as_dict(private=False), "kid": kid, "use": "sig", "alg": ALGORITHM}
    sealed = sealer.seal(json.dumps(key.as_dict(private=True)).encode(), context=seal_context(kid))
    return SigningKey(kid=kid, algorithm=ALGORITHM, private_key_sealed=sealed, public_jwk=public)


def private_key(record: SigningKey, sealer: Sealer) -> ECKey:
    values = json.loads(sealer.open(record.private_key_sealed, context=seal_context(record.kid)))
    return ECKey.import_key({**values, "kid": record.kid})


def public_key_set(records: Sequence[SigningKey]) -> dict[str, Any]:
    """The JWKS document: every key that may still have live tokens."""
    return {"keys": [dict(record.public_jwk) for record in records]}


def verification_keys(records: Sequence[SigningKey]) -> KeySet:
    return KeySet([ECKey.import_key(dict(record.public_jwk)) for record in records])
