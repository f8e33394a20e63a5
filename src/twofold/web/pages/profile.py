"""The profile's "Manage Your Verification Methods" page (R6) and the step-up page that guards it and the
console (API.md "Web pages").

The page stages renames and removals until "Save", which applies them as one change; "Save" is refused
when no active method would remain. Adding or removing needs a step-up within the last 10 minutes: the
page asks for a verification first, and an action that met a stale step-up is carried through the
verification and finished after it, so nothing the user staged is lost.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, unquote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from twofold.domain.errors import (
    Forbidden,
    ProofPending,
    RateLimited,
    StepUpRequired,
    TwofoldError,
    Unauthenticated,
    ValidationFailed,
)
from twofold.services.context import Principal
from twofold.services.login import EnrollmentStarted
from twofold.services.push import enrollment_key

from .. import problems
from ..deps import SESSION_COOKIE, request_context
from .common import (
    WEBAUTHN_TYPES,
    clear_cookie,
    csrf_refused,
    current_principal,
    enrollment_page,
    long_poll_status,
    push_refused_message,
    push_status_answer,
    read_form,
    recovery_codes_context,
    render,
    twofold_of,
    verification_failed_message,
)

router = APIRouter(include_in_schema=False)

MANAGE = "/profile/mfa"
RESUME_LIMIT = 16384
RESUMABLE = ("/profile/", "/admin/")


def _signed_in_or_redirect(request: Request) -> Principal | Response:
    principal = current_principal(request)
    if principal is None:
        response = RedirectResponse("/login?expired=1", status_code=303)
        clear_cookie(response, SESSION_COOKIE)
        return response
    return principal


def _manager_or_response(request: Request) -> Principal | Response:
    """A session that has local methods to manage; others get the page that says why they have none."""
    found = _signed_in_or_redirect(request)
    if isinstance(found, Response) or manages_methods(found):
        return found
    return _no_methods_page(request, found)


def safe_next(target: str | None, default: str = "/") -> str:
    """Only a path on this site: an open redirect would hand a fresh step-up to someone else's page."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target or len(target) > 512:
        return default
    return target


def manages_methods(principal: Principal) -> bool:
    """Exempt sessions (password only) and SSO users (MFA at their provider) have no local methods."""
    return principal.session is not None and principal.session.mfa_verified and not principal.user.is_federated


def step_up_is_fresh(request: Request, principal: Principal) -> bool:
    try:
        twofold_of(request).sessions.require_step_up(principal)
    except StepUpRequired:
        return False
    return True


def step_up_page(
    request: Request,
    principal: Principal,
    *,
    next_path: str,
    resume: dict[str, Any] | None = None,
    reason: str | None = None,
    error: str | None = None,
    method: str | None = None,
    status: int = 200,
    push_challenge: Any = None,
) -> HTMLResponse:
    """The verification step for a full session: the same controls as the login's second step. An SSO user has
    no local factor: they verify by signing in again at their own provider, which must show MFA (R2)."""
    twofold = twofold_of(request)
    if principal.user.is_federated:
        target = f"/login/sso/{principal.user.identity_provider_id}?step_up=1&next={quote(next_path, safe='')}"
        return render(
            request,
            "message.html",
            {
                "title": "Verify it's you",
                "message": (reason or "Verify it's you before you continue.")
                + " Sign in again at your organization's identity provider.",
                "back": target,
                "back_label": "Continue to your identity provider",
            },
            principal=principal,
            status=status,
        )
    with twofold.uow(read_only=True) as uow:
        methods = list(uow.methods.active_for_user(principal.user.id))
        recovery_codes_left = uow.recovery_codes.count_unused(principal.user.id)
    registered = {m.type for m in methods}
    known = {m.method_type: m for m in twofold.registry}
    hidden = {"next": next_path}
    if resume is not None:
        hidden["resume"] = json.dumps(resume, separators=(",", ":"))
    return render(
        request,
        "verify.html",
        {
            "step_up": True,
            "verify_action": "/profile/verify",
            "options_url": "/profile/verify/webauthn/options",
            "method_link": f"/profile/verify?next={quote(next_path, safe='')}&method=",
            "hidden": hidden,
            "username": principal.user.username,
            "methods": methods,
            "method_types": registered,
            "display_names": {t: known[t].display_name for t in registered if t in known},
            "chosen": method,
            "recovery_codes_available": recovery_codes_left > 0,
            "notice": reason,
            "error": error,
            "push_action": "/profile/verify/push",
            "push_challenge": push_challenge,
            "push_status_url": "/profile/verify/push/status",
        },
        principal=principal,
        status=status,
    )


# -- step-up -------------------------------------------------------------------------------------


@router.get("/profile/verify", response_class=HTMLResponse)
def verify_page(request: Request, next: str | None = None, method: str | None = None) -> Response:
    found = _manager_or_response(request)
    if isinstance(found, Response):
        return found
    return step_up_page(request, found, next_path=safe_next(next), method=method)


@router.post("/profile/verify", response_class=HTMLResponse)
async def verify_submit(request: Request) -> Response:
    try:
        form = await read_form(request)
    except Forbidden as error:
        return csrf_refused(request, error)
    found = _manager_or_response(request)
    if isinstance(found, Response):
        return found
    principal = found
    next_path = safe_next(form.get("next"))
    resume = _resume(form.get("resume"))
    if form.get("choose"):
        # "Try another method" on a page that carries an interrupted form: a post, so the form stays.
        return step_up_page(request, principal, next_path=next_path, resume=resume, method=form["choose"][:32])
    verification_type = form.get("type", "totp")[:32]
    proof: dict[str, Any] = {}
    if form.get("code"):
        proof["code"] = form["code"].strip()[:64]
    if form.get("credential_json"):
        proof["credential"] = form["credential_json"][:16384]
    twofold = twofold_of(request)
    try:
        twofold.step_up.step_up(
            principal, verification_type=verification_type, proof=proof, context=request_context(request)
        )
    except ProofPending:
        return step_up_page(request, principal, next_path=next_path, resume=resume, method="push")
    except Unauthenticated:
        return RedirectResponse("/login?expired=1", status_code=303)
    except TwofoldError as error:
        message = verification_failed_message(error, verification_type)
        return step_up_page(
            request,
            principal,
            next_path=next_path,
            resume=resume,
            error=message,
            method=verification_type if verification_type != "webauthn" else None,
            status=error.status,
        )
    if resume is not None:
        return _resume_action(request, principal, resume)
    return RedirectResponse(next_path, status_code=303)


@router.post("/profile/verify/push", response_class=HTMLResponse)
async def verify_push_send(request: Request) -> Response:
    try:
        form = await read_form(request)
    except Forbidden as error:
        return csrf_refused(request, error)
    found = _manager_or_response(request)
    if isinstance(found, Response):
        return found
    principal = found
    next_path = safe_next(form.get("next"))
    resume = _resume(form.get("resume"))
    try:
        started = twofold_of(request).push.start_for_step_up(
            principal, method_id=form.get("method_id") or None, context=request_context(request)
        )
    except Unauthenticated:
        return RedirectResponse("/login?expired=1", status_code=303)
    except TwofoldError as error:
        refused = step_up_page(
            request,
            principal,
            next_path=next_path,
            resume=resume,
            error=push_refused_message(error),
            method="push",
            status=error.status,
        )
        if isinstance(error, RateLimited):
            refused.headers["Retry-After"] = str(error.retry_after)
        return refused
    return step_up_page(request, principal, next_path=next_path, resume=resume, method="push", push_challenge=started)


@router.get("/profile/verify/push/status")
async def verify_push_status(request: Request, challenge_id: str = "", wait: int = 0) -> Response:
    principal = current_principal(request)
    if principal is None or principal.session is None:
        return problems.from_error(Unauthenticated("sign in again"))
    session_id = principal.session.id
    twofold = twofold_of(request)

    def read() -> str:
        return twofold.push.status(challenge_id[:64], user_id=principal.user.id, session_id=session_id)

    return await push_status_answer(request, challenge_id[:64], wait, read)


@router.get("/profile/mfa/status")
async def enrollment_status(request: Request, enrollment_id: str = "", wait: int = 0) -> Response:
    """A push enrollment page's long poll (from the profile): has the device paired yet?"""
    principal = current_principal(request)
    if principal is None:
        return problems.from_error(Unauthenticated("sign in again"))
    twofold = twofold_of(request)

    def read() -> str:
        return twofold.push.pairing_status(enrollment_id[:64], user_id=principal.user.id, login_transaction_id=None)

    return await long_poll_status(request, enrollment_key(enrollment_id[:64]), wait, read)


@router.post("/profile/verify/webauthn/options")
async def verify_webauthn_options(request: Request) -> Response:
    """WebAuthn request options for the page's step-up, on the session cookie (a form post with the
    page's CSRF token)."""
    try:
        form = await read_form(request)
    except Forbidden as error:
        return problems.from_error(error)
    principal = current_principal(request)
    if principal is None:
        return problems.from_error(Unauthenticated("sign in again"))
    method_type = form.get("type") or None
    if method_type not in (None, *WEBAUTHN_TYPES):
        return problems.from_error(ValidationFailed("unknown authenticator type"))
    try:
        options = twofold_of(request).step_up.verification_options(
            principal, method_type=method_type, context=request_context(request)
        )
    except TwofoldError as error:
        return problems.from_error(error)
    return JSONResponse(options, headers={"Cache-Control": "no-store"})


def _resume(text: str | None) -> dict[str, Any] | None:
    """The form that met a stale step-up: where it was posted and its fields (without the CSRF token)."""
    if not text or len(text) > RESUME_LIMIT:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("fields"), dict):
        return None
    action = value.get("action")
    if not isinstance(action, str) or not action.startswith(RESUMABLE) or safe_next(action, "") != action:
        return None
    # A browser resolves "..", also written "%2e%2e", before posting: "/profile/../logout" is "/logout".
    if {".", ".."} & set(unquote(action.partition("?")[0]).split("/")):
        return None
    # Taken whole (RESUME_LIMIT bounds it): a shortened field would post another change than the one staged,
    # such as the exemption of another account whose username is the first part of the staged one.
    fields = value["fields"]
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items()):
        return None
    return {"action": action, "fields": dict(fields)}


def resume_form(request: Request, form: dict[str, str]) -> dict[str, Any]:
    """What to post again once the user has verified: this request's path and fields."""
    return {"action": request.url.path, "fields": {k: v for k, v in form.items() if k != "csrf_token"}}


def _resume_action(request: Request, principal: Principal, resume: dict[str, Any]) -> Response:
    """Post the interrupted form again, now that the step-up is fresh: a page that submits itself (or
    waits for "Continue" without JavaScript), carrying a new CSRF token."""
    return render(
        request,
        "continue.html",
        {"action": resume["action"], "fields": resume["fields"]},
        principal=principal,
    )


# -- Manage Your Verification Methods ------------------------------------------------------------


def _no_methods_page(request: Request, principal: Principal) -> HTMLResponse:
    if principal.user.is_federated:
        message = "Your account signs in through your organization's identity provider, which does your MFA."
    else:
        message = (
            "This account is exempt from multi-factor authentication and has no verification methods. "
            "Ask your administrator to move it to a connected app."
        )
    return render(
        request,
        "message.html",
        {"title": "Manage Your Verification Methods", "message": message, "back": "/", "back_label": "Back"},
        principal=principal,
        status=403,
    )


def manage_page(
    request: Request,
    principal: Principal,
    *,
    notice: str | None = None,
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    twofold = twofold_of(request)
    with twofold.uow(read_only=True) as uow:
        user = uow.users.get(principal.user.id)
        assert user is not None
        methods = list(uow.methods.active_for_user(user.id))
        enrollable = set(twofold.login.enrollable_types(uow, user, request_context(request)))
        recovery_codes_left = uow.recovery_codes.count_unused(user.id)
    sections = []
    for method in twofold.registry:
        mine = [m for m in methods if m.type == method.method_type]
        if method.method_type in enrollable or mine:
            sections.append(
                {
                    "type": method.method_type,
                    "label": method.display_name,
                    "can_add": method.method_type in enrollable,
                    "methods": mine,
                }
            )
    return render(
        request,
        "manage_methods.html",
        {
            "sections": sections,
            "active_count": len(methods),
            "recovery_codes_left": recovery_codes_left,
            "notice": notice,
            "error": error,
        },
        principal=principal,
        status=status,
    )


@router.get("/profile/mfa", response_class=HTMLResponse)
def manage(request: Request, saved: str | None = None, added: str | None = None) -> Response:
    found = _manager_or_response(request)
    if isinstance(found, Response):
        return found
    if not step_up_is_fresh(request, found):
        return step_up_page(
            request,
            found,
            next_path=MANAGE,
            reason="Verify it's you before you change your verification methods.",
        )
    notice = "Your changes were saved." if saved else None
    if added:
        # The id, not the name, rides in the link: only a method of this user can be announced.
        with twofold_of(request).uow(read_only=True) as uow:
            method = uow.methods.get(added[:64])
        if method is not None and method.user_id == found.user.id and method.is_active:
            notice = f"{method.name} was added."
    return manage_page(request, found, notice=notice)


@router.post("/profile/mfa", response_class=HTMLResponse)
async def save(request: Request) -> Response:
    """ "Save": the staged renames (``rename:<id>``) and removals (``remove:<id>``) as one change."""
    try:
        form = await read_form(request)
    except Forbidden as error:
        return csrf_refused(request, error)
    found = _manager_or_response(request)
    if isinstance(found, Response):
        return found
    return _save(request, found, form)


def _save(request: Request, principal: Principal, form: dict[str, str]) -> Response:
    """Apply what the page staged; a stale step-up asks for a verification and then posts this again."""
    renames = {
        key.removeprefix("rename:")[:64]: value[:256] for key, value in form.items() if key.startswith("rename:")
    }
    removals = [key.removeprefix("remove:")[:64] for key, value in form.items() if key.startswith("remove:") and value]
    if not renames and not removals:
        return RedirectResponse(f"{MANAGE}?saved=1", status_code=303)
    try:
        twofold_of(request).methods.save_changes(
            principal, renames=renames, removals=removals, context=request_context(request)
        )
    except StepUpRequired:
        return step_up_page(
            request,
            principal,
            next_path=MANAGE,
            resume=resume_form(request, form),
            reason="Verify it's you to save your changes.",
        )
    except Unauthenticated:
        return RedirectResponse("/login?expired=1", status_code=303)
    except TwofoldError as error:
        message = error.detail
        if error.code == "last_method":
            message = "You must keep at least one verification method. Add another method before you remove this one."
        return manage_page(request, principal, error=f"Your changes were not saved. {message}", status=error.status)
    return RedirectResponse(f"{MANAGE}?saved=1", status_code=303)


@router.post("/profile/mfa/add", response_class=HTMLResponse)
async def add(request: Request) -> Response:
    try:
        form = await read_form(request)
    except Forbidden as error:
        return csrf_refused(request, error)
    found = _manager_or_response(request)
    if isinstance(found, Response):
        return found
    principal = found
    method_type, name = form.get("type", "")[:32], form.get("name", "")[:256]
    try:
        started = twofold_of(request).methods.begin(
            principal, method_type=method_type, name=name, context=request_context(request)
        )
    except StepUpRequired:
        return step_up_page(
            request,
            principal,
            next_path=MANAGE,
            resume=resume_form(request, {"type": method_type, "name": name}),
            reason="Verify it's you before you add a verification method.",
        )
    except Unauthenticated:
        return RedirectResponse("/login?expired=1", status_code=303)
    except TwofoldError as error:
        return manage_page(request, principal, error=f"The method was not added. {error.detail}", status=error.status)
    return enrollment_page(
        request,
        started,
        username=principal.user.username,
        complete_action="/profile/mfa/complete",
        back=MANAGE,
        principal=principal,
    )


@router.post("/profile/mfa/complete", response_class=HTMLResponse)
async def complete(request: Request) -> Response:
    try:
        form = await read_form(request)
    except Forbidden as error:
        return csrf_refused(request, error)
    found = _manager_or_response(request)
    if isinstance(found, Response):
        return found
    principal = found
    twofold = twofold_of(request)
    enrollment_id = form.get("enrollment_id", "")[:64]
    proof: dict[str, Any] = {k: v[:16384] for k, v in form.items() if k not in {"csrf_token", "enrollment_id"}}
    if "credential_json" in proof:
        proof["credential"] = proof.pop("credential_json")
    try:
        completed = twofold.methods.complete(
            principal, enrollment_id=enrollment_id, proof=proof, context=request_context(request)
        )
    except ProofPending:
        return RedirectResponse(MANAGE, status_code=303)
    except Unauthenticated:
        return RedirectResponse("/login?expired=1", status_code=303)
    except TwofoldError as error:
        pending = twofold.methods.pending_enrollment(principal, enrollment_id) if "code" in proof else None
        if error.code == "invalid_code" and pending is not None:
            # The app already holds the secret: ask for another code on the same enrollment, not a new scan.
            retry = EnrollmentStarted(pending.id, pending.type, pending.name, pending.expires_at, {})
            response = enrollment_page(
                request,
                retry,
                username=principal.user.username,
                complete_action="/profile/mfa/complete",
                back=MANAGE,
                error="That code did not work. Check that the time on your device is right, then enter the new "
                "code your app shows.",
                principal=principal,
            )
            response.status_code = error.status
            return response
        return manage_page(request, principal, error=f"The method was not added. {error.detail}", status=error.status)
    added = f"{completed.method.name} ({twofold.registry.method(completed.method.type).display_name})"
    if completed.recovery_codes:
        context = recovery_codes_context(completed.recovery_codes, added=added)
        context["next"] = MANAGE
        return render(request, "enrolled.html", context, principal=principal)
    return RedirectResponse(f"{MANAGE}?added={completed.method.id}", status_code=303)


@router.post("/profile/recovery-codes", response_class=HTMLResponse)
async def recovery_codes(request: Request) -> Response:
    try:
        await read_form(request)
    except Forbidden as error:
        return csrf_refused(request, error)
    found = _manager_or_response(request)
    if isinstance(found, Response):
        return found
    principal = found
    try:
        codes = twofold_of(request).methods.regenerate_recovery_codes(principal, context=request_context(request))
    except StepUpRequired:
        return step_up_page(
            request,
            principal,
            next_path=MANAGE,
            resume=resume_form(request, {}),
            reason="Verify it's you before you generate new recovery codes.",
        )
    except TwofoldError as error:
        return manage_page(request, principal, error=error.detail, status=error.status)
    context = recovery_codes_context(codes)
    context["next"] = MANAGE
    return render(request, "enrolled.html", context, principal=principal)
