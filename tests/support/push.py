"""A test-side Twofold Authenticator: pairs a device through the API and signs what a device signs.

Built on ``twofold.methods.push.device`` (the companion's own key and signing functions), so the requests
are the ones a real device sends: ``Authorization: Twofold-Device <JWS>`` over ``{device_id, iat, jti,
htm, htu}`` and answers signed over ``{challenge_id, decision, number, not_me}``. Every function takes a
client (a ``TestClient`` or an ``httpx.Client`` with a ``base_url``) and requests paths relative to it;
``htu`` is built from the public URL the server believes it has (``TWOFOLD_PUBLIC_URL``), which a
device learns from the pairing URI and which may differ from the address the client connects to.

    started = begin_push_enrollment(client, token)                    # POST /api/v1/me/methods
    device = pair_device(client, started, public_url=PUBLIC_URL)      # POST /api/v1/push/pair
    [challenge] = open_challenges(client, device)                     # GET /api/v1/push/challenges
    approve(client, device, challenge["challenge_id"], number)        # POST .../response
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from joserfc.jwk import ECKey

from twofold.methods.push.device import new_device_key, public_jwk, sign_answer, sign_device_request

CHALLENGES_PATH = "/api/v1/push/challenges"
PAIR_PATH = "/api/v1/push/pair"


def response_path(challenge_id: str) -> str:
    return f"{CHALLENGES_PATH}/{challenge_id}/response"


@dataclass
class PushDevice:
    """A paired companion: its private key, the id the server gave it, and the server's public URL."""

    key: ECKey
    device_id: str
    public_url: str
    device_name: str = "Pixel 8"
    platform: str = "android"


def new_jti() -> str:
    return secrets.token_urlsafe(18)


def device_token(
    key: ECKey, *, device_id: str, method: str, url: str, jti: str | None = None, iat: int | None = None
) -> str:
    """A ``Twofold-Device`` proof for one method and URL (``url`` is the htu: public URL + path)."""
    return sign_device_request(key, device_id=device_id, htm=method, htu=url, jti=jti or new_jti(), iat=iat)


def device_headers(
    device: PushDevice,
    method: str,
    path: str,
    *,
    public_url: str | None = None,
    key: ECKey | None = None,
    device_id: str | None = None,
    jti: str | None = None,
    iat: int | None = None,
) -> dict[str, str]:
    """The ``Authorization`` header of one device request; each argument overrides what the device
    would sign (another URL, another key, another claimed device, a chosen ``jti`` or ``iat``)."""
    token = device_token(
        key or device.key,
        device_id=device_id or device.device_id,
        method=method,
        url=(public_url or device.public_url) + path,
        jti=jti,
        iat=iat,
    )
    return {"Authorization": f"Twofold-Device {token}"}


# -- pairing ------------------------------------------------------------------------------------------


def pairing_code_of(enrollment: Mapping[str, Any]) -> str:
    """The single-use code of a push enrollment start (from the login or the profile), checked against
    the code its ``pairing_uri`` carries."""
    code = str(enrollment["pairing_code"])
    uri = urlsplit(str(enrollment["pairing_uri"]))
    assert (uri.scheme, uri.netloc) == ("twofold", "pair"), enrollment["pairing_uri"]
    assert parse_qs(uri.query)["code"] == [code], enrollment["pairing_uri"]
    return code


def pairing_server_of(enrollment: Mapping[str, Any]) -> str:
    """The server a device pairs with, as the pairing URI names it: the base of every htu."""
    return str(parse_qs(urlsplit(str(enrollment["pairing_uri"])).query)["server"][0])


def pair(
    client: Any,
    pairing_code: str,
    *,
    public_key: Any = None,
    key: ECKey | None = None,
    device_name: str = "Pixel 8",
    platform: str = "android",
) -> Any:
    """``POST /api/v1/push/pair``; the response as it came (``public_key`` overrides the key's JWK)."""
    body = {
        "pairing_code": pairing_code,
        "public_key": public_key if public_key is not None else public_jwk(key or new_device_key()),
        "device_name": device_name,
        "platform": platform,
    }
    return client.post(PAIR_PATH, json=body)


def pair_device(
    client: Any,
    enrollment: Mapping[str, Any],
    *,
    public_url: str | None = None,
    device_name: str = "Pixel 8",
    platform: str = "android",
    key: ECKey | None = None,
) -> PushDevice:
    """Pair a new device with a push enrollment start; ``public_url`` defaults to the pairing URI's server."""
    key = key or new_device_key()
    response = pair(client, pairing_code_of(enrollment), key=key, device_name=device_name, platform=platform)
    assert response.status_code == 201, response.text
    return PushDevice(
        key=key,
        device_id=str(response.json()["device_id"]),
        public_url=public_url or pairing_server_of(enrollment),
        device_name=device_name,
        platform=platform,
    )


def begin_push_enrollment(client: Any, token: str, *, name: str = "") -> dict[str, Any]:
    """``POST /api/v1/me/methods`` with type push (the session needs a fresh step-up)."""
    response = client.post(
        "/api/v1/me/methods", json={"type": "push", "name": name}, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def complete_push_enrollment(client: Any, token: str, enrollment_id: str) -> Any:
    return client.post(
        f"/api/v1/me/methods/{enrollment_id}/complete", json={}, headers={"Authorization": f"Bearer {token}"}
    )


def add_push_device(
    client: Any,
    token: str,
    *,
    public_url: str | None = None,
    device_name: str = "Pixel 8",
    platform: str = "android",
    name: str = "",
) -> PushDevice:
    """Add a paired device from the profile: start, pair, complete (200)."""
    started = begin_push_enrollment(client, token, name=name)
    device = pair_device(client, started, public_url=public_url, device_name=device_name, platform=platform)
    completed = complete_push_enrollment(client, token, started["enrollment_id"])
    assert completed.status_code == 200, completed.text
    assert completed.json()["id"] == device.device_id, completed.json()
    return device


# -- the device's calls --------------------------------------------------------------------------------


def list_challenges(client: Any, device: PushDevice, *, wait: int | None = None, **signing: Any) -> Any:
    """``GET /api/v1/push/challenges`` (``wait`` is the long poll's seconds); the response as it came.
    ``signing`` goes to ``device_headers`` (``public_url``, ``key``, ``device_id``, ``jti``, ``iat``)."""
    params = {"wait": wait} if wait is not None else None
    return client.get(CHALLENGES_PATH, params=params, headers=device_headers(device, "GET", CHALLENGES_PATH, **signing))


def open_challenges(client: Any, device: PushDevice, *, wait: int | None = None) -> list[dict[str, Any]]:
    response = list_challenges(client, device, wait=wait)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


def respond(client: Any, device: PushDevice, challenge_id: str, response: str, **signing: Any) -> Any:
    """Post a signed answer (a JWS) to a challenge, in a request the device signs afresh."""
    path = response_path(challenge_id)
    return client.post(path, json={"response": response}, headers=device_headers(device, "POST", path, **signing))


def approve(client: Any, device: PushDevice, challenge_id: str, number: int, *, key: ECKey | None = None) -> Any:
    """Approve, picking ``number``; ``key`` signs the answer instead of the device's own key."""
    answer = sign_answer(key or device.key, challenge_id=challenge_id, decision="approve", number=number)
    return respond(client, device, challenge_id, answer)


def deny(client: Any, device: PushDevice, challenge_id: str, *, not_me: bool = False) -> Any:
    answer = sign_answer(device.key, challenge_id=challenge_id, decision="deny", number=None, not_me=not_me)
    return respond(client, device, challenge_id, answer)


# -- the signing-in side ---------------------------------------------------------------------------


def start_login_push(client: Any, transaction: str, *, method_id: str | None = None) -> Any:
    """``POST /api/v1/login/push`` for an mfa_required transaction."""
    body: dict[str, Any] = {"transaction": transaction}
    if method_id is not None:
        body["method_id"] = method_id
    return client.post("/api/v1/login/push", json=body)


def verify_push(client: Any, transaction: str, challenge_id: str) -> Any:
    """``POST /api/v1/login/verify`` with type push: 202 while unanswered, 200 once approved."""
    return client.post(
        "/api/v1/login/verify", json={"transaction": transaction, "type": "push", "challenge_id": challenge_id}
    )
