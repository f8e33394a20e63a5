"""What every page module shares: templates, cookies, CSRF-checked forms, the signed-in principal, and
the second phase of an enrollment (used by the login's forced enrollment and by the profile).

Each form carries a CSRF token bound to a ``__Host-`` cookie and is refused from a foreign Origin.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from twofold.container import Twofold
from twofold.domain.clock import as_utc, utcnow
from twofold.domain.errors import CodeAlreadyUsed, Forbidden, RateLimited, TwofoldError, Unauthenticated
from twofold.services.context import Principal
from twofold.services.login import EnrollmentStarted

from ..deps import CSRF_COOKIE, SESSION_COOKIE, api_csrf_token, origin_allowed

_HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(_HERE / "templates"))

FORM_LIMIT = 64 * 1024
WEBAUTHN_TYPES = ("platform_authenticator", "security_key")


def mount_static(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static")


def twofold_of(request: Request) -> Twofold:
    return request.app.state.twofold  # type: ignore[no-any-return]


# -- cookies and CSRF ----------------------------------------------------------------------------


def set_cookie(response: Response, name: str, value: str, *, max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", secure=True, httponly=True, samesite="lax")


def clear_cookie(response: Response, name: str) -> None:
    response.delete_cookie(name, path="/", secure=True, httponly=True, samesite="lax")


def csrf_seed(request: Request) -> tuple[str, bool]:
    seed = request.cookies.get(CSRF_COOKIE)
    if seed and 20 <= len(seed) <= 100:
        return seed, False
    return secrets.token_urlsafe(32), True


def render(
    request: Request,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    status: int = 200,
    principal: Principal | None = None,
) -> HTMLResponse:
    twofold = twofold_of(request)
    seed, fresh = csrf_seed(request)
    values: dict[str, Any] = {
        "csrf_token": twofold.mac.sign(f"form-csrf:{seed}"),
        "principal": principal,
        "api_csrf_token": api_csrf_token(twofold, principal.session.id) if principal and principal.session else None,
        **(context or {}),
    }
    response = templates.TemplateResponse(request, template, values, status_code=status)
    response.headers["Cache-Control"] = "no-store"
    if fresh:
        set_cookie(response, CSRF_COOKIE, seed, max_age=None)
    return response


async def read_form(request: Request) -> dict[str, str]:
    """The posted form, after the CSRF checks: a token bound to the CSRF cookie and no foreign Origin."""
    twofold = twofold_of(request)
    if int(request.headers.get("content-length") or 0) > FORM_LIMIT:
        raise Forbidden("the form is too large")
    form = await request.form(max_files=0, max_fields=200)
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    seed = request.cookies.get(CSRF_COOKIE, "")
    origin = request.headers.get("origin")
    if origin is not None and not origin_allowed(twofold, request):
        raise Forbidden("this form was posted from another site")
    if not seed or not twofold.mac.verify(f"form-csrf:{seed}", fields.get("csrf_token", "")):
        raise Forbidden("the form expired or was not sent from this site; reload the page and try again")
    return fields


def current_principal(request: Request) -> Principal | None:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    try:
        return twofold_of(request).sessions.authenticate(token)
    except Unauthenticated:
        return None


def seconds_until(moment: datetime) -> int:
    return max(1, int((as_utc(moment) - utcnow()).total_seconds()))


def problem_message(error: TwofoldError) -> str:
    if isinstance(error, RateLimited):
        return f"Too many attempts. Try again in {error.retry_after} seconds."
    return error.detail


def push_refused_message(error: TwofoldError) -> str:
    """Why "Send push notification" sent nothing: a suspension after a wrong number and the fatigue limit each say
    so (use another method), rather than a bare "Too many attempts" the user never made."""
    if isinstance(error, RateLimited):
        return f"{error.detail[:1].upper()}{error.detail[1:]}. Try again in {error.retry_after} seconds."
    return problem_message(error)


def verification_failed_message(error: TwofoldError, verification_type: str) -> str:
    """What the verification step says when a second factor was refused (login and step-up alike)."""
    if error.code != "invalid_code" or isinstance(error, RateLimited):
        return problem_message(error)
    if verification_type == "webauthn":
        return "Your authenticator's answer was not accepted."
    if error.detail == CodeAlreadyUsed.title:
        return "That code was already used. Wait for the next code."
    return "That code did not work."


def csrf_refused(request: Request, error: Forbidden) -> HTMLResponse:
    return render(request, "message.html", {"title": "Request refused", "message": error.detail}, status=403)


def enrollment_page(
    request: Request,
    started: EnrollmentStarted,
    *,
    username: str,
    complete_action: str,
    back: str,
    error: str | None = None,
    principal: Principal | None = None,
) -> HTMLResponse:
    """The second phase of an enrollment: each method may bring its own template, others get the
    generic code form."""
    template = "enroll_webauthn.html" if started.type in WEBAUTHN_TYPES else f"enroll_{started.type}.html"
    if not (_HERE / "templates" / template).exists():
        template = "enroll_generic.html"
    secret = str(started.client_data.get("secret", ""))
    return render(
        request,
        template,
        {
            "enrollment": started,
            "display_name": twofold_of(request).registry.method(started.type).display_name,
            "username": username,
            # The secret in groups of four, as the apps' manual-entry screens show keys.
            "secret_groups": [secret[i : i + 4] for i in range(0, len(secret), 4)],
            "complete_action": complete_action,
            "back": back,
            "error": error,
            # A push enrollment's page asks here whether the device has paired.
            "pairing_status_url": "/login/enroll/status"
            if complete_action.startswith("/login")
            else "/profile/mfa/status",
        },
        principal=principal,
    )


def recovery_codes_context(codes: list[str], *, added: str | None = None) -> dict[str, Any]:
    text = "Twofold recovery codes. Each signs you in once, in place of a verification code.\n\n"
    return {"recovery_codes": codes, "recovery_codes_text": text + "\n".join(codes) + "\n", "added": added}


PUSH_WAIT_LIMIT = 25  # seconds (DESIGN.md §6)
PAGE_REREAD_SECONDS = 1.0


async def push_status_answer(
    request: Request, challenge_id: str, wait: int, read_status: Callable[[], str]
) -> JSONResponse:
    """The sign-in page's long poll of a push challenge: answers as soon as the device has answered
    (a wake-up), or with "pending" after ``wait`` seconds."""
    from twofold.services.push import challenge_key

    return await long_poll_status(request, challenge_key(challenge_id), wait, read_status)


async def long_poll_status(request: Request, key: str, wait: int, read_status: Callable[[], str]) -> JSONResponse:
    """``{"status": …}`` as soon as it is no longer "pending" (woken by ``key``), or after ``wait`` seconds."""
    twofold = twofold_of(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(0, min(wait, PUSH_WAIT_LIMIT))
    async with twofold.wakeups.subscribe([key]) as subscription:
        while True:
            try:
                status = await run_in_threadpool(read_status)
            except TwofoldError as error:
                return JSONResponse({"status": "unknown", "detail": error.detail}, status_code=error.status)
            remaining = deadline - loop.time()
            if status != "pending" or remaining <= 0 or await request.is_disconnected():
                break
            # A page waits on a challenge or pairing that expires by itself, which wakes no one: it
            # re-reads at least every second, so "expired" shows within a second, not a safety interval.
            await subscription.wait(min(remaining, twofold.wakeups.interval, PAGE_REREAD_SECONDS))
    return JSONResponse({"status": status}, headers={"Cache-Control": "no-store"})
