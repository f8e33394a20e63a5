"""Server-rendered pages on the same services as the API. Labels are the contract of API.md "Web pages".

The password step gives the browser a login-transaction cookie; a completed authentication replaces it
with a new session cookie, so the identifier changes at each step (DESIGN.md §3).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from twofold.domain.clock import as_utc, utcnow
from twofold.domain.entities import TokenPurpose
from twofold.domain.errors import (
    Forbidden,
    ProofPending,
    RateLimited,
    TransactionExpired,
    TwofoldError,
    ValidationFailed,
)
from twofold.services.login import EnrollmentStarted, LoginOutcome
from twofold.services.push import enrollment_key

from .. import problems
from ..deps import LOGIN_COOKIE, SESSION_COOKIE, request_context
from .authorize import resume_response
from .common import (
    WEBAUTHN_TYPES,
    clear_cookie,
    csrf_refused,
    current_principal,
    enrollment_page,
    long_poll_status,
    problem_message,
    push_refused_message,
    push_status_answer,
    read_form,
    recovery_codes_context,
    render,
    seconds_until,
    set_cookie,
    twofold_of,
    verification_failed_message,
)

router = APIRouter(include_in_schema=False)


def _signed_in(request: Request, outcome: LoginOutcome, target: str = "/") -> Response:
    assert outcome.session is not None
    response = RedirectResponse(target, status_code=303)
    set_cookie(
        response, SESSION_COOKIE, outcome.session.token, max_age=seconds_until(outcome.session.session.expires_at)
    )
    clear_cookie(response, LOGIN_COOKIE)
    return response


# -- home ----------------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
def home(request: Request) -> Response:
    principal = current_principal(request)
    if principal is None:
        return RedirectResponse("/login", status_code=303)
    resumed = resume_response(request)  # an application's sign-in that the login interrupted
    if resumed is not None:
        return resumed
    twofold = twofold_of(request)
    view = twofold.admin.self_view(principal)
    remaining = twofold.methods.recovery_codes_remaining(principal.user.id)
    notice = None
    if request.query_params.get("signed_in_with") == "recovery_code":
        notice = (
            f"You signed in with a recovery code. You have {remaining} unused recovery "
            f"code{'s' if remaining != 1 else ''} left."
        )
    return render(
        request,
        "home.html",
        {"view": view, "is_admin": view.is_admin, "notice": notice, "recovery_codes_remaining": remaining},
        principal=principal,
    )


@router.post("/logout")
async def logout(request: Request) -> Response:
    try:
        await read_form(request)
    except Forbidden as error:
        return csrf_refused(request, error)
    principal = current_principal(request)
    if principal is not None:
        twofold_of(request).sessions.logout(principal, request_context(request))
    response = RedirectResponse("/login?signed_out=1", status_code=303)
    clear_cookie(response, SESSION_COOKIE)
    clear_cookie(response, LOGIN_COOKIE)
    return response


# -- password step -------------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, signed_out: str | None = None, expired: str | None = None) -> Response:
    if current_principal(request) is not None:
        return RedirectResponse("/", status_code=303)
    notice = None
    if signed_out:
        notice = "You are signed out."
    elif expired:
        notice = "Your sign-in expired. Please sign in again."
    return render(request, "login.html", {"notice": notice, "username": ""})


@router.post("/login", response_class=HTMLResponse)
async def login_submit(request: Request) -> Response:
    try:
        form = await read_form(request)
    except Forbidden as error:
        return csrf_refused(request, error)
    username = form.get("username", "")[:256]
    password = form.get("password", "")[:1024]
    twofold = twofold_of(request)
    if not username or not password:
        return render(
            request, "login.html", {"error": "Enter your username and password.", "username": username}, status=422
        )
    try:
        outcome = twofold.login.start(username=username, password=password, context=request_context(request))
    except TwofoldError as error:
        message = "Invalid username or password." if error.code == "invalid_credentials" else problem_message(error)
        response = render(request, "login.html", {"error": message, "username": username}, status=error.status)
        if isinstance(error, RateLimited):
            response.headers["Retry-After"] = str(error.retry_after)
        return response
    if outcome.status == "authenticated":
        return _signed_in(request, outcome)
    target = "/login/verify" if outcome.status == "mfa_required" else "/login/enroll"
    response = RedirectResponse(target, status_code=303)
    assert outcome.transaction_token is not None
    set_cookie(response, LOGIN_COOKIE, outcome.transaction_token, max_age=seconds_until(outcome.expires_at))
    # A new login drops any earlier session cookie of this browser: the session id changes at each step.
    clear_cookie(response, SESSION_COOKIE)
    return response


def _transaction_or_restart(request: Request) -> tuple[str, Any] | Response:
    token = request.cookies.get(LOGIN_COOKIE)
    if not token:
        return RedirectResponse("/login?expired=1", status_code=303)
    try:
        return token, twofold_of(request).login.transaction_view(token)
    except TransactionExpired:
        response = RedirectResponse("/login?expired=1", status_code=303)
        clear_cookie(response, LOGIN_COOKIE)
        return response


# -- second factor -------------------------------------------------------------------------------


def _verify_context(request: Request, view: Any, *, method: str | None) -> dict[str, Any]:
    transaction, user, methods = view
    twofold = twofold_of(request)
    recovery_codes_left = twofold.methods.recovery_codes_remaining(user.id)
    registered = {m.type for m in methods}
    known = {m.method_type: m for m in twofold.registry}
    return {
        "username": user.username,
        "methods": methods,
        "method_types": registered,
        "display_names": {t: known[t].display_name for t in registered if t in known},
        "chosen": method,
        "expires_at": transaction.expires_at,
        "recovery_codes_available": recovery_codes_left > 0,
    }


@router.get("/login/verify", response_class=HTMLResponse)
def verify_page(request: Request, method: str | None = None) -> Response:
    found = _transaction_or_restart(request)
    if isinstance(found, Response):
        return found
    _, view = found
    if view[0].state != "mfa_required":
        return RedirectResponse("/login/enroll", status_code=303)
    return render(request, "verify.html", _verify_context(request, view, method=method))


@router.post("/login/verify", response_class=HTMLResponse)
async def verify_submit(request: Request) -> Response:
    try:
        form = await read_form(request)
    except Forbidden as error:
        return csrf_refused(request, error)
    found = _transaction_or_restart(request)
    if isinstance(found, Response):
        return found
    token, view = found
    verification_type = form.get("type", "totp")[:32]
    proof: dict[str, Any] = {}
    if form.get("code"):
        proof["code"] = form["code"].strip()[:64]
    for name in ("credential_json", "challenge_id"):
        if form.get(name):
            proof[name.removesuffix("_json")] = form[name][:16384]
    try:
        outcome = twofold_of(request).login.verify(
            transaction_token=token,
            verification_type=verification_type,
            proof=proof,
            context=request_context(request),
        )
    except ProofPending:
        return RedirectResponse("/login/verify?method=push", status_code=303)
    except TransactionExpired:
        response = RedirectResponse("/login?expired=1", status_code=303)
        clear_cookie(response, LOGIN_COOKIE)
        return response
    except TwofoldError as error:
        attempts_left = error.extra.get("attempts_left")
        message = verification_failed_message(error, verification_type)
        if error.code == "invalid_code" and attempts_left is not None:
            message += f" {attempts_left} attempt{'s' if attempts_left != 1 else ''} left."
        if attempts_left == 0 or isinstance(error, RateLimited):
            response = render(request, "login.html", {"error": message, "username": ""}, status=error.status)
            clear_cookie(response, LOGIN_COOKIE)
            return response
        context = _verify_context(request, view, method=verification_type)
        context["error"] = message
        return render(request, "verify.html", context, status=error.status)
    if outcome.recovery_codes_remaining is not None:
        return _signed_in(request, outcome, "/?signed_in_with=recovery_code")
    return _signed_in(request, outcome)


@router.post("/login/push", response_class=HTMLResponse)
async def push_send(request: Request) -> Response:
    """ "Send push notification": a challenge for this login, then the page that shows its number."""
    try:
        form = await read_form(request)
    except Forbidden as error:
        return csrf_refused(request, error)
    found = _transaction_or_restart(request)
    if isinstance(found, Response):
        return found
    token, view = found
    context = _verify_context(request, view, method="push")
    try:
        started = twofold_of(request).push.start_for_login(
            transaction_token=token, method_id=form.get("method_id") or None, context=request_context(request)
        )
    except TransactionExpired:
        return RedirectResponse("/login?expired=1", status_code=303)
    except TwofoldError as error:
        context["error"] = push_refused_message(error)
        response = render(request, "verify.html", context, status=error.status)
        if isinstance(error, RateLimited):
            response.headers["Retry-After"] = str(error.retry_after)
        return response
    context.update(push_challenge=started, push_status_url="/login/push/status")
    return render(request, "verify.html", context)


@router.get("/login/push/status")
async def push_status(request: Request, challenge_id: str = "", wait: int = 0) -> Response:
    token = request.cookies.get(LOGIN_COOKIE) or ""
    twofold = twofold_of(request)
    try:
        transaction, user, _ = await run_in_threadpool(twofold.login.transaction_view, token)
    except TwofoldError as error:
        return problems.from_error(error)

    def read() -> str:
        return twofold.push.status(challenge_id[:64], user_id=user.id, login_transaction_id=transaction.id)

    return await push_status_answer(request, challenge_id[:64], wait, read)


@router.get("/login/enroll/status")
async def enroll_status(request: Request, enrollment_id: str = "", wait: int = 0) -> Response:
    """A push enrollment page's long poll: has the device paired yet?"""
    token = request.cookies.get(LOGIN_COOKIE) or ""
    twofold = twofold_of(request)
    try:
        transaction, user, _ = await run_in_threadpool(twofold.login.transaction_view, token)
    except TwofoldError as error:
        return problems.from_error(error)

    def read() -> str:
        return twofold.push.pairing_status(enrollment_id[:64], user_id=user.id, login_transaction_id=transaction.id)

    return await long_poll_status(request, enrollment_key(enrollment_id[:64]), wait, read)


@router.post("/login/webauthn/options")
async def webauthn_options(request: Request) -> Response:
    """The pages' own call for WebAuthn request options: the transaction rides on its HttpOnly cookie,
    which the JSON API never reads (API.md: /api/v1/login* sets and reads no cookie)."""
    try:
        form = await read_form(request)
    except Forbidden as error:
        return problems.from_error(error)
    token = request.cookies.get(LOGIN_COOKIE)
    method_type = form.get("type") or None
    if method_type not in (None, *WEBAUTHN_TYPES):
        return problems.from_error(ValidationFailed("unknown authenticator type"))
    try:
        options = twofold_of(request).login.verification_options(
            transaction_token=token or "", method_type=method_type, context=request_context(request)
        )
    except TwofoldError as error:
        return problems.from_error(error)
    return JSONResponse(options, headers={"Cache-Control": "no-store"})


# -- forced enrollment (R3) ----------------------------------------------------------------------


@router.get("/login/enroll", response_class=HTMLResponse)
def enroll_page(request: Request) -> Response:
    found = _transaction_or_restart(request)
    if isinstance(found, Response):
        return found
    _, view = found
    transaction, user, _methods = view
    if transaction.state != "enrollment_required":
        return RedirectResponse("/login/verify", status_code=303)
    twofold = twofold_of(request)
    with twofold.uow(read_only=True) as uow:
        enrollable = twofold.login.enrollable_types(uow, user, request_context(request))
    known = {m.method_type: m for m in twofold.registry}
    return render(
        request,
        "enroll.html",
        {
            "username": user.username,
            "enrollable": [(t, known[t].display_name) for t in enrollable],
            "expires_at": transaction.expires_at,
        },
    )


@router.post("/login/enroll", response_class=HTMLResponse)
async def enroll_add(request: Request) -> Response:
    try:
        form = await read_form(request)
    except Forbidden as error:
        return csrf_refused(request, error)
    found = _transaction_or_restart(request)
    if isinstance(found, Response):
        return found
    token, view = found
    twofold = twofold_of(request)
    method_type = form.get("type", "")[:32]
    try:
        started = twofold.login.begin_enrollment(
            transaction_token=token,
            method_type=method_type,
            name=form.get("name", "")[:256],
            context=request_context(request),
        )
    except TwofoldError as error:
        return render(
            request,
            "message.html",
            {"title": "Cannot add this method", "message": error.detail, "back": "/login/enroll"},
            status=error.status,
        )
    return enrollment_page(
        request, started, username=view[1].username, complete_action="/login/enroll/complete", back="/login/enroll"
    )


@router.post("/login/enroll/complete", response_class=HTMLResponse)
async def enroll_complete(request: Request) -> Response:
    try:
        form = await read_form(request)
    except Forbidden as error:
        return csrf_refused(request, error)
    found = _transaction_or_restart(request)
    if isinstance(found, Response):
        return found
    token, _view = found
    proof: dict[str, Any] = {k: v[:16384] for k, v in form.items() if k not in {"csrf_token", "enrollment_id"}}
    if "credential_json" in proof:  # the WebAuthn page posts the browser's credential as JSON text
        proof["credential"] = proof.pop("credential_json")
    try:
        outcome = twofold_of(request).login.complete_enrollment(
            transaction_token=token,
            enrollment_id=form.get("enrollment_id", "")[:64],
            proof=proof,
            context=request_context(request),
        )
    except ProofPending:
        return RedirectResponse("/login/enroll", status_code=303)
    except TwofoldError as error:
        attempts_left = error.extra.get("attempts_left")
        pending = None
        if error.code == "invalid_code" and attempts_left and "code" in proof:
            pending = twofold_of(request).login.pending_enrollment(token, form.get("enrollment_id", "")[:64])
        if pending is not None:
            # The app already holds the secret: ask for another code on the same enrollment, not a new scan.
            retry = EnrollmentStarted(
                pending.id, pending.type, pending.name, as_utc(pending.expires_at or utcnow()), {}
            )
            response = enrollment_page(
                request,
                retry,
                username=_view[1].username,
                complete_action="/login/enroll/complete",
                back="/login/enroll",
                error=f"That code did not work. {attempts_left} attempt{'s' if attempts_left != 1 else ''} left. "
                "Check that the time on your device is right, then enter the new code your app shows.",
            )
            response.status_code = error.status
            return response
        return render(
            request,
            "message.html",
            {"title": "The method was not added", "message": error.detail, "back": "/login/enroll"},
            status=error.status,
        )
    response = render(request, "enrolled.html", recovery_codes_context(outcome.recovery_codes))
    assert outcome.session is not None
    set_cookie(
        response, SESSION_COOKIE, outcome.session.token, max_age=seconds_until(outcome.session.session.expires_at)
    )
    clear_cookie(response, LOGIN_COOKIE)
    return response


# -- set-up and password-reset links -------------------------------------------------------------


def _link_page(request: Request, token: str, purpose: TokenPurpose, *, error: str | None = None) -> HTMLResponse:
    title = "Set your password" if purpose is TokenPurpose.SETUP else "Choose a new password"
    action = ("/setup/" if purpose is TokenPurpose.SETUP else "/password-reset/") + quote(token, safe="")
    return render(
        request, "set_password.html", {"title": title, "action": action, "error": error}, status=422 if error else 200
    )


@router.get("/setup/{token}", response_class=HTMLResponse)
def setup_page(request: Request, token: str) -> Response:
    return _link_page(request, token, TokenPurpose.SETUP)


@router.get("/password-reset/{token}", response_class=HTMLResponse)
def reset_page(request: Request, token: str) -> Response:
    return _link_page(request, token, TokenPurpose.PASSWORD_RESET)


async def _redeem(request: Request, token: str, purpose: TokenPurpose) -> Response:
    try:
        form = await read_form(request)
    except Forbidden as error:
        return csrf_refused(request, error)
    password = form.get("password", "")[:1024]
    if password != form.get("confirm_password", "")[:1024]:
        return _link_page(request, token, purpose, error="The two passwords differ.")
    try:
        twofold_of(request).accounts.redeem_link(
            token=token[:512], password=password, purpose=purpose, context=request_context(request)
        )
    except TwofoldError as error:
        return _link_page(request, token, purpose, error=error.detail)
    return render(
        request,
        "message.html",
        {
            "title": "Password saved",
            "message": "Your password is set. Sign in to continue; you will be asked for your verification method.",
            "back": "/login",
            "back_label": "Sign in",
        },
    )


@router.post("/setup/{token}", response_class=HTMLResponse)
async def setup_submit(request: Request, token: str) -> Response:
    return await _redeem(request, token, TokenPurpose.SETUP)


@router.post("/password-reset/{token}", response_class=HTMLResponse)
async def reset_submit(request: Request, token: str) -> Response:
    return await _redeem(request, token, TokenPurpose.PASSWORD_RESET)


@router.get("/password-reset", response_class=HTMLResponse)
def reset_request_page(request: Request) -> Response:
    return render(request, "reset_request.html", {})


@router.post("/password-reset", response_class=HTMLResponse)
async def reset_request_submit(request: Request) -> Response:
    try:
        form = await read_form(request)
    except Forbidden as error:
        return csrf_refused(request, error)
    username = form.get("username", "").strip()[:256]
    if username:
        twofold_of(request).accounts.request_password_reset(username=username, context=request_context(request))
    return render(
        request,
        "message.html",
        {
            "title": "Check your email",
            "message": "If an account with this username exists, we sent it a link to choose a new password.",
            "back": "/login",
            "back_label": "Back to sign in",
        },
    )
