"""The push companion's device API (API.md "Push companion"): pairing, the long poll, signed answers.

Every call but pairing carries ``Authorization: Twofold-Device <JWS>``; a device holds no bearer secret.
The long poll waits on wake-ups (PostgreSQL ``NOTIFY``, or a short internal poll on SQLite) and always
re-reads the database, so any server process can serve a device.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from twofold.domain.entities import PushChallenge
from twofold.services.push import Device, user_key

from ..deps import App, Context
from .schemas import PROBLEM_RESPONSES, PushPairBody, PushResponseBody, ts

router = APIRouter(prefix="/api/v1/push", tags=["push companion"], responses=PROBLEM_RESPONSES)

MAX_WAIT = 25  # seconds (API.md; DESIGN.md §6: long polls end within 25 s)


def challenge_body(challenge: PushChallenge) -> dict[str, Any]:
    return {
        "challenge_id": challenge.id,
        "app": challenge.app,
        "ip": challenge.ip,
        "user_agent": challenge.user_agent,
        "created_at": ts(challenge.created_at),
        "expires_at": ts(challenge.expires_at),
        "numbers": list(challenge.choices),
    }


async def _device(request: Request, twofold: Any) -> Device:
    device: Device = await run_in_threadpool(
        twofold.push.authenticate_device,
        request.headers.get("authorization"),
        method=request.method,
        path=request.url.path,
    )
    return device


@router.post("/pair", status_code=201, summary="Pair a device with a pending push enrollment's code")
def pair(body: PushPairBody, twofold: App, context: Context) -> JSONResponse:
    device_id = twofold.push.pair(
        pairing_code=body.pairing_code,
        public_key=body.public_key,
        device_name=body.device_name,
        platform=body.platform,
        context=context,
    )
    return JSONResponse({"device_id": device_id}, status_code=201, headers={"Cache-Control": "no-store"})


@router.get("/challenges", summary="The device's open challenges; waits up to `wait` seconds for one")
async def challenges(
    request: Request, twofold: App, wait: Annotated[int, Query(ge=0, le=MAX_WAIT)] = 0
) -> JSONResponse:
    device = await _device(request, twofold)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    async with twofold.wakeups.subscribe([user_key(device.user.id)]) as subscription:
        while True:
            found = await run_in_threadpool(twofold.push.challenges_for, device)
            remaining = deadline - loop.time()
            if found or remaining <= 0 or await request.is_disconnected():
                break
            await subscription.wait(min(remaining, twofold.wakeups.interval))
    return JSONResponse([challenge_body(c) for c in found], headers={"Cache-Control": "no-store"})


@router.post("/challenges/{challenge_id}/response", status_code=204, summary="Approve or deny, signed by the device")
async def respond(
    challenge_id: str, body: PushResponseBody, request: Request, twofold: App, context: Context
) -> Response:
    device = await _device(request, twofold)
    await run_in_threadpool(twofold.push.respond, device, challenge_id[:64], body.response, context)
    return Response(status_code=204)
