"""The client's address: X-Forwarded-For is believed only from TWOFOLD_TRUSTED_PROXIES (DESIGN.md §3)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        return None


def client_address(peer: str | None, forwarded_for: str | None, trusted: Sequence[Network]) -> str:
    """Walk X-Forwarded-For from the right past trusted proxies. A malformed header is treated as
    absent: the peer's own address counts, and no step is ever skipped because of it."""
    peer = peer or "unknown"
    peer_ip = _parse(peer)
    if not forwarded_for or peer_ip is None or not any(peer_ip in net for net in trusted):
        return peer
    hops = [item.strip() for item in forwarded_for.split(",")]
    parsed = [_parse(hop) for hop in hops]
    if not hops or any(address is None for address in parsed) or len(hops) > 32:
        return peer
    for address in reversed(parsed):
        assert address is not None
        if not any(address in net for net in trusted):
            return str(address)
    return str(parsed[0])
