"""Login transactions, logout, set-up links and password reset (API.md "Login")."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from twofold.domain.entities import TokenPurpose
from twofold.domain.errors import ProofPending
from twofold.services.login import EnrollmentStarted, LoginOutcome

from ..deps import App, Context, CurrentPrincipal
from .schemas import (
    PROBLEM_RESPONSES,
    EnrollBody,
    EnrollCompleteBody,
    LoginBody,
    PasswordResetCompleteBody,
    PasswordResetRequestBody,
    PushStartBody,
    SetupBody,
    VerifyBody,
    WebAuthnOptionsBody,
    ts,
)

router = APIRouter(prefix="/api/v1", tags=["login"], responses=PROBLEM_RESPONSES)

_NO_STORE = {"Cache-Control": "no-store"}


def outcome_body(twofold: Any, outcome: LoginOutcome) -> dict[str, Any]:
    if outcome.status == "authenticated":
        assert outcome.session is not None
        body: dict[str, Any] = {
            "status": "authenticated",
            "token": outcome.session.token,
            "expires_at": ts(outcome.expires_at),
            "amr": outcome.amr,
        }
        if outcome.recovery_codes_remaining is not None:
            # A recovery code made this session: tell the client how many are left.
            body["recovery_codes_remaining"] = outcome.recovery_codes_remaining
        return body
    body = {"status": outcome.status, "transaction": outcome.transaction_token, "expires_at": ts(outcome.expires_at)}
    if outcome.status == "mfa_required":
        body["methods"] = [{"id": m.id, "type": m.type, "name": m.name} for m in outcome.methods]
        body["recovery_codes_available"] = outcome.recovery_codes_available
    else:
        body["enrollable_types"] = outcome.enrollable_types
    return body


def enrollment_body(started: EnrollmentStarted) -> dict[str, Any]:
    """An enrollment start (API.md): the same shape from the login and from the profile."""
    return {
        "enrollment_id": started.enrollment_id,
        "type": started.type,
        "name": started.name,
        "expires_at": ts(started.expires_at),
        **started.client_data,
    }


@router.post("/login", summary="Password step: starts a login transaction")
def login(body: LoginBody, twofold: App, context: Context) -> JSONResponse:
    outcome = twofold.login.start(username=body.username, password=body.password, context=context)
    return JSONResponse(outcome_body(twofold, outcome), headers=_NO_STORE)


@router.post("/login/verify", summary="Second factor of an mfa_required transaction")
def verify(body: VerifyBody, twofold: App, context: Context) -> JSONResponse:
    try:
        outcome = twofold.login.verify(
            transaction_token=body.transaction, verification_type=body.type, proof=body.proof(), context=context
        )
    except ProofPending:
        return JSONResponse({"status": "pending"}, status_code=202, headers=_NO_STORE)
    return JSONResponse(outcome_body(twofold, outcome), headers=_NO_STORE)


@router.post("/login/webauthn/options", summary="WebAuthn request options for an mfa_required transaction")
def webauthn_options(body: WebAuthnOptionsBody, twofold: App, context: Context) -> JSONResponse:
    options = twofold.login.verification_options(
        transaction_token=body.transaction, method_type=body.type, context=context
    )
    return JSONResponse(options, headers=_NO_STORE)


@router.post("/login/push", summary="Send a push notification to the user's paired devices")
def push(body: PushStartBody, twofold: App, context: Context) -> JSONResponse:
    started = twofold.push.start_for_login(
        transaction_token=body.transaction, method_id=body.method_id, context=context
    )
    return JSONResponse(push_started_body(started), headers=_NO_STORE)


def push_started_body(started: Any) -> dict[str, Any]:
    return {"challenge_id": started.challenge_id, "number": started.number, "expires_at": ts(started.expires_at)}


@router.post("/login/enroll", summary="Start enrolling the first method of an enrollment_required transaction")
def enroll(body: EnrollBody, twofold: App, context: Context) -> JSONResponse:
    started = twofold.login.begin_enrollment(
        transaction_token=body.transaction, method_type=body.type, name=body.name, context=context
    )
    return JSONResponse(enrollment_body(started), headers=_NO_STORE)


@router.post("/login/enroll/complete", summary="Prove the new method; the login is then authenticated")
def enroll_complete(body: EnrollCompleteBody, twofold: App, context: Context) -> JSONResponse:
    try:
        outcome = twofold.login.complete_enrollment(
            transaction_token=body.transaction, enrollment_id=body.enrollment_id, proof=body.proof(), context=context
        )
    except ProofPending:
        return JSONResponse({"status": "pending"}, status_code=202, headers=_NO_STORE)
    result = outcome_body(twofold, outcome)
    result["recovery_codes"] = outcome.recovery_codes
    return JSONResponse(result, headers=_NO_STORE)


@router.post("/logout", status_code=204, summary="End this session server-side")
def logout(principal: CurrentPrincipal, twofold: App, context: Context) -> Response:
    twofold.sessions.logout(principal, context)
    return Response(status_code=204)


@router.post("/setup", status_code=204, summary="Redeem a one-time set-up link")
def setup(body: SetupBody, twofold: App, context: Context) -> Response:
    twofold.accounts.redeem_link(token=body.token, password=body.password, purpose=TokenPurpose.SETUP, context=context)
    return Response(status_code=204)


@router.post("/password-reset", status_code=202, summary="Email a reset link if the account exists")
def password_reset(body: PasswordResetRequestBody, twofold: App, context: Context) -> Response:
    twofold.accounts.request_password_reset(username=body.username, context=context)
    return Response(status_code=202)


@router.post("/password-reset/complete", status_code=204, summary="Set a new password from a reset link")
def password_reset_complete(body: PasswordResetCompleteBody, twofold: App, context: Context) -> Response:
    twofold.accounts.redeem_link(
        token=body.token, password=body.new_password, purpose=TokenPurpose.PASSWORD_RESET, context=context
    )
    return Response(status_code=204)
