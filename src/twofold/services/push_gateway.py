"""Telling a phone that a push challenge waits (DESIGN.md §6, API.md "Push companion").

Devices long-poll ``GET /api/v1/push/challenges``; a deployment may also forward a wake-up to an HTTP
endpoint of its choice (its own relay to FCM, APNs or a chat bot). The webhook carries no secret and
no number: only which devices should poll now. Its body is signed with HMAC-SHA-256 under
``TWOFOLD_PUSH_WEBHOOK_SECRET`` over ``"<timestamp>.<body>"`` (header ``X-Twofold-Signature: t=…,v1=…``),
so the receiver can refuse forgeries and replays. Delivery runs on a thread of its own: a slow or dead
endpoint never delays a sign-in.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import threading
import time
import urllib.request
from collections.abc import Sequence
from typing import Protocol

logger = logging.getLogger("twofold.push")

SIGNATURE_HEADER = "X-Twofold-Signature"


class PushGateway(Protocol):
    def wake(self, *, user_id: str, device_ids: Sequence[str], challenge_id: str) -> None: ...


class NoGateway:
    """Devices only long-poll; nothing is forwarded."""

    def wake(self, *, user_id: str, device_ids: Sequence[str], challenge_id: str) -> None:
        return None


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


class WebhookGateway:
    """POSTs ``{"type": "push.challenge", "challenge_id", "device_ids"}`` to the configured URL."""

    QUEUE_LIMIT = 1000

    def __init__(self, url: str, secret: str, *, timeout: float = 5.0) -> None:
        self.url = url
        self.secret = secret.encode()
        self.timeout = timeout
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=self.QUEUE_LIMIT)
        self._thread = threading.Thread(target=self._run, name="twofold-push-webhook", daemon=True)
        self._thread.start()

    def wake(self, *, user_id: str, device_ids: Sequence[str], challenge_id: str) -> None:
        body = json.dumps(
            {"type": "push.challenge", "challenge_id": challenge_id, "device_ids": list(device_ids)},
            separators=(",", ":"),
        ).encode()
        try:
            self._queue.put_nowait(body)
        except queue.Full:  # the endpoint is down and wake-ups pile up: devices still long-poll
            logger.warning("push webhook queue is full; a wake-up was dropped")

    def _run(self) -> None:
        while True:
            body = self._queue.get()
            # The URL's scheme is checked to be http(s) when the settings load.
            request = urllib.request.Request(  # noqa: S310
                self.url,
                data=body,
                method="POST",
                headers={
                    "Content-Type": "application/json",
                    SIGNATURE_HEADER: signature(self.secret, int(time.time()), body),
                    "User-Agent": "Twofold push gateway",
                },
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as answer:  # noqa: S310
                    answer.read(1024)
            except Exception as error:  # never let one endpoint failure stop the thread
                logger.warning("push webhook failed: %s", error.__class__.__name__)
