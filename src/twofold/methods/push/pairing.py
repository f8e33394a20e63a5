"""Pairing a companion (API.md): a single-use code of 256 bits in a ``twofold://pair`` URI and QR code."""

from __future__ import annotations

import hashlib
import secrets
from urllib.parse import parse_qs, urlencode, urlsplit

PAIRING_CODE_BYTES = 32  # API.md asks for at least 128 bits
SCHEME = "twofold"


def new_pairing_code() -> str:
    return secrets.token_urlsafe(PAIRING_CODE_BYTES)


def pairing_lookup_key(code: str) -> str:
    """How a pending enrollment is found by its code; only a hash is stored (the code is a bearer secret
    for ten minutes)."""
    return "push-pairing:" + hashlib.sha256(code.encode()).hexdigest()


def pairing_uri(server: str, code: str) -> str:
    return f"{SCHEME}://pair?{urlencode({'server': server, 'code': code})}"


def parse_pairing_uri(uri: str) -> tuple[str, str]:
    """(server, code) of a pairing URI, for the companion; ValueError when it is not one."""
    parts = urlsplit(uri.strip())
    query = parse_qs(parts.query)
    if parts.scheme != SCHEME or parts.netloc != "pair" or not query.get("server") or not query.get("code"):
        raise ValueError("not a twofold://pair?server=…&code=… URI")
    server = query["server"][0].rstrip("/")
    if urlsplit(server).scheme not in {"http", "https"}:
        raise ValueError("the pairing URI's server is not an http(s) URL")
    return server, query["code"][0]
