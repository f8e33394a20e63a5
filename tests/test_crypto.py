"""Secrets at rest (issue 2 item 3; DESIGN.md §7; SECURITY.md "a database dump holds no plaintext seed"):
AES-GCM under a key derived from TWOFOLD_SECRET_KEY, with a key id, and `twofold secrets rotate`."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from twofold.container import Twofold
from twofold.services.crypto import AesGcmSealer, SealedValueError, TokenMac, hash_token, new_token

from .support.flows import Account, create_organization, enroll, login, sign_in
from .support.methods import METHOD_TYPE
from .test_admin_api import client_for

K1 = "first-secret-key-0123456789-abcdefghijklmnop"
K2 = "second-secret-key-9876543210-zyxwvutsrqponml"


def test_seal_and_open_round_trip():
    sealer = AesGcmSealer(K1)
    for plaintext in (b"", b"JBSWY3DPEHPK3PXP", bytes(range(256)) * 10):
        sealed = sealer.seal(plaintext, context="method:abc")
        assert sealer.open(sealed, context="method:abc") == plaintext
        if plaintext:
            assert plaintext not in sealed.encode()
    # A fresh nonce every time.
    assert sealer.seal(b"same", context="c") != sealer.seal(b"same", context="c")


def test_key_id_is_in_the_sealed_value():
    sealer = AesGcmSealer(K1)
    sealed = sealer.seal(b"seed", context="c")
    prefix, key_id, body = sealed.split(".", 2)
    assert prefix == "v1" and key_id == sealer.current_key_id and body
    assert len(key_id) == 12 and key_id not in K1
    assert AesGcmSealer(K2).current_key_id != key_id
    assert AesGcmSealer(K1).current_key_id == key_id  # derived from the key, stable across restarts
    assert not sealer.needs_reseal(sealed)
    assert AesGcmSealer(K2, [K1]).needs_reseal(sealed)


def _flip(sealed: str, index: int) -> str:
    prefix, key_id, body = sealed.split(".", 2)
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    raw[index] ^= 0x01
    return f"{prefix}.{key_id}.{base64.urlsafe_b64encode(bytes(raw)).decode().rstrip('=')}"


def test_tampering_is_detected():
    sealer = AesGcmSealer(K1)
    sealed = sealer.seal(b"a secret seed value", context="method:1")
    for index in (0, 11, 12, 20, -1):  # nonce, ciphertext, tag
        with pytest.raises(SealedValueError):
            sealer.open(_flip(sealed, index), context="method:1")
    prefix, key_id, body = sealed.split(".", 2)
    for broken in (
        body,
        f"v2.{key_id}.{body}",
        f"{prefix}.{key_id}.{body[:-4]}",
        f"{prefix}.{key_id}.",
        f"{prefix}.{key_id}.!!!not-base64!!!",
        "",
    ):
        with pytest.raises(SealedValueError):
            sealer.open(broken, context="method:1")


def test_wrong_context_or_key_is_refused():
    sealer = AesGcmSealer(K1)
    sealed = sealer.seal(b"seed of method 1", context="method:1")
    # A value copied onto another row does not open there.
    with pytest.raises(SealedValueError):
        sealer.open(sealed, context="method:2")
    with pytest.raises(SealedValueError):
        AesGcmSealer(K2).open(sealed, context="method:1")
    # Keys differing by one character derive unrelated keys.
    with pytest.raises(SealedValueError):
        AesGcmSealer(K1[:-1] + "q").open(sealed, context="method:1")
    # An old key stays readable while rotating; new values use the new key.
    rotating = AesGcmSealer(K2, [K1])
    assert rotating.open(sealed, context="method:1") == b"seed of method 1"
    assert rotating.seal(b"x", context="c").split(".")[1] == AesGcmSealer(K2).current_key_id


def test_tokens_are_random_and_stored_hashed():
    tokens = {new_token("tfs") for _ in range(100)}
    assert len(tokens) == 100
    token = tokens.pop()
    assert token.startswith("tfs_") and len(base64.urlsafe_b64decode(token[4:] + "=")) == 32
    assert hash_token(token) == hash_token(token) and token not in hash_token(token)
    mac = TokenMac(K1)
    assert mac.verify("m", mac.sign("m")) and not mac.verify("m", TokenMac(K2).sign("m"))


# -- in the database ------------------------------------------------------------------------------


def raw_payloads(twofold: Twofold) -> list[Any]:
    with twofold.uow.engine.connect() as connection:
        return list(connection.execute(text("SELECT id, user_id, status, payload_encrypted FROM verification_methods")))


def test_method_payload_in_the_database_is_not_the_plaintext(twofold, client):
    _, admin = create_organization(twofold)
    enroll(client, admin)
    rows = raw_payloads(twofold)
    assert len(rows) == 1 and rows[0].status == "active"
    payload = rows[0].payload_encrypted
    assert admin.code and admin.code not in payload
    assert admin.code.encode().hex() not in payload
    assert base64.b64encode(admin.code.encode()).decode().rstrip("=") not in payload
    assert payload.startswith(f"v1.{twofold.sealer.current_key_id}.")
    # A dump of the whole table holds no plaintext code anywhere.
    with twofold.uow.engine.connect() as connection:
        dump = repr([tuple(row) for row in connection.execute(text("SELECT * FROM verification_methods"))])
    assert admin.code not in dump


def _enrolled(make_twofold: Any, **settings: Any) -> tuple[Twofold, Account]:
    twofold = make_twofold(secret_key=K1, **settings)
    with client_for(twofold) as client:
        _, admin = create_organization(twofold)
        enroll(client, admin)
    return twofold, admin


def test_rotate_secrets_reseals_under_the_new_key(make_twofold):
    first, admin = _enrolled(make_twofold)
    old_payload = raw_payloads(first)[0].payload_encrypted
    k1_id, k2_id = AesGcmSealer(K1).current_key_id, AesGcmSealer(K2).current_key_id
    assert old_payload.split(".")[1] == k1_id

    # Only the new key configured, before rotating: the secret cannot be read (503, never a 500).
    new_only = make_twofold(secret_key=K2)
    with client_for(new_only) as client:
        transaction = login(client, admin).json()["transaction"]
        response = client.post("/api/v1/login/verify",
                               json={"transaction": transaction, "type": METHOD_TYPE, "code": admin.code})
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"

    rotating = make_twofold(secret_key=K2, old_secret_keys=K1)
    assert rotating.maintenance.rotate_secrets() == 1
    new_payload = raw_payloads(rotating)[0].payload_encrypted
    assert new_payload.split(".")[1] == k2_id and new_payload != old_payload
    assert rotating.maintenance.rotate_secrets() == 0  # nothing left under an old key

    after = make_twofold(secret_key=K2)
    with client_for(after) as client:
        assert sign_in(client, admin)
    # The old key alone no longer reads it.
    with pytest.raises(SealedValueError):
        AesGcmSealer(K1).open(new_payload, context=f"method:{raw_payloads(after)[0].id}")
    with after.uow.engine.connect() as connection:
        types = [row.type for row in connection.execute(text("SELECT type FROM audit_events"))]
    assert "secrets.rotated" in types


def cli_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOFOLD_")}
    return {**env, "TWOFOLD_DATABASE_URL": database_url, "TWOFOLD_ENV": "prod", **extra}


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "twofold.cli.main", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
    )


def test_secrets_rotate_command(make_twofold, database_url, tmp_path):
    first, admin = _enrolled(make_twofold)
    old_payload = raw_payloads(first)[0].payload_encrypted

    # Without the old key(s) the command refuses, and says what to set.
    refused = run_cli(["secrets", "rotate"], cli_env(database_url, TWOFOLD_SECRET_KEY=K2), tmp_path)
    assert refused.returncode != 0
    assert "TWOFOLD_OLD_SECRET_KEYS" in refused.stderr
    assert raw_payloads(first)[0].payload_encrypted == old_payload
    # With old keys that do not open what is stored: an error message, and nothing changes.
    wrong = run_cli(
        ["secrets", "rotate"],
        cli_env(database_url, TWOFOLD_SECRET_KEY=K2, TWOFOLD_OLD_SECRET_KEYS="not-the-old-key-0123456789abcdefghijk"),
        tmp_path,
    )
    assert wrong.returncode != 0
    assert "TWOFOLD_OLD_SECRET_KEYS" in wrong.stderr and "Traceback" not in wrong.stderr
    assert raw_payloads(first)[0].payload_encrypted == old_payload

    done = run_cli(
        ["secrets", "rotate"],
        cli_env(database_url, TWOFOLD_SECRET_KEY=K2, TWOFOLD_OLD_SECRET_KEYS=f"{K1}, some-older-key-that-is-unused"),
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "1" in done.stdout
    for secret in (K1, K2):
        assert secret not in done.stdout + done.stderr
    new_payload = raw_payloads(first)[0].payload_encrypted
    assert new_payload.split(".")[1] == AesGcmSealer(K2).current_key_id

    after = make_twofold(secret_key=K2)
    with client_for(after) as client:
        assert sign_in(client, admin)


def test_rotate_secrets_reseals_token_signing_keys(make_twofold):
    """A token-signing key is a secret at rest like a TOTP seed: `twofold secrets rotate` re-seals it, so the
    server still signs (with the same key, same kid) once only the new secret key is configured."""
    first = make_twofold(secret_key=K1)
    kid, _ = first.signing_keys.current()
    rotating = make_twofold(secret_key=K2, old_secret_keys=K1)
    assert rotating.maintenance.rotate_secrets() == 1
    after = make_twofold(secret_key=K2)
    same_kid, key = after.signing_keys.current()
    assert same_kid == kid and key.as_dict(private=True).get("d")
    with after.uow.engine.connect() as connection:
        (sealed,) = connection.execute(text("SELECT private_key_sealed FROM signing_keys")).scalars()
    assert sealed.split(".")[1] == AesGcmSealer(K2).current_key_id


def test_a_client_secret_moves_to_the_new_key_when_used_during_a_rotation(make_twofold):
    """Client secrets are HMAC digests under TWOFOLD_SECRET_KEY: one that matches under an old key while both
    are configured is stored again under the new key, so the old key can then be dropped."""
    from twofold.oauth.client_credentials import SecretDigests

    first, admin = _enrolled(make_twofold)
    with client_for(first) as client:
        token = sign_in(client, admin)
        org = admin.user.organization_id
        created = client.post(
            f"/api/v1/organizations/{org}/connected-apps",
            json={"name": "Robot", "grant_type": "client_credentials", "scopes": ["users:read"]},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert created.status_code == 201, created.text
    client_id, secret = created.json()["client_id"], created.json()["client_secret"]

    def grant(twofold: Twofold) -> int:
        with client_for(twofold) as client:
            return int(
                client.post(
                    "/oauth2/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret)
                ).status_code
            )

    assert grant(make_twofold(secret_key=K2)) == 401  # the new key alone does not know the old digest
    assert grant(make_twofold(secret_key=K2, old_secret_keys=K1)) == 200  # matched under K1: re-keyed
    with first.uow.engine.connect() as connection:
        (digest,) = connection.execute(text("SELECT digest FROM client_secrets")).scalars()
    assert digest == SecretDigests(K2).digest(secret)
    assert grant(make_twofold(secret_key=K2)) == 200  # K1 can go now
