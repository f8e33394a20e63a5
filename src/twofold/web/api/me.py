"""Self-service with a full session (API.md "Self-service")."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from twofold.domain.errors import ProofPending

from ..deps import App, Context, CurrentPrincipal
from .login import enrollment_body, push_started_body
from .schemas import (
    PROBLEM_RESPONSES,
    MethodCompleteBody,
    MethodEnrollBody,
    MethodRenameBody,
    PasswordChangeBody,
    StepUpBody,
    StepUpPushBody,
    StepUpWebAuthnOptionsBody,
    ts,
)

router = APIRouter(prefix="/api/v1/me", tags=["self-service"], responses=PROBLEM_RESPONSES)


@router.get("", summary="The signed-in user and their session")
def me(principal: CurrentPrincipal, twofold: App) -> dict[str, Any]:
    user = principal.user
    view = twofold.admin.self_view(principal)
    provider = view.identity_provider
    session = principal.session
    assert session is not None
    identity_provider: dict[str, Any] = {
        "id": provider.id if provider else None,
        "type": provider.type if provider else "local",
        "name": provider.name if provider else None,
    }
    if provider is not None and provider.type != "local":
        identity_provider["issuer"] = provider.issuer
        identity_provider["external_subject"] = user.external_subject
    return {
        "id": user.id,
        "username": user.username,
        "email": user.email,
        "display_name": user.display_name,
        "kind": user.kind,
        "service_type": user.service_type,
        "organization_id": user.organization_id,
        "identity_provider": identity_provider,
        "mfa_exempt": view.exemption_in_force,
        "is_organization_administrator": view.is_admin,
        "session": {
            "amr": session.amr,
            "acr": session.acr,
            "auth_time": ts(session.auth_time),
            "step_up_until": ts(session.step_up_until),
            "expires_at": ts(session.expires_at),
            "idle_expires_at": ts(twofold.sessions.idle_deadline(session)),
        },
    }


@router.get("/methods", summary="Active verification methods")
def methods(principal: CurrentPrincipal, twofold: App) -> list[dict[str, Any]]:
    view = twofold.admin.self_view(principal)
    return [method_view(m) for m in view.methods]


def method_view(method: Any) -> dict[str, Any]:
    return {
        "id": method.id,
        "type": method.type,
        "name": method.name,
        "created_at": ts(method.created_at),
        "last_used_at": ts(method.last_used_at),
    }


_NO_STORE = {"Cache-Control": "no-store"}


@router.post("/methods", status_code=201, summary="Start adding a verification method (needs a step-up)")
def add_method(body: MethodEnrollBody, principal: CurrentPrincipal, twofold: App, context: Context) -> JSONResponse:
    started = twofold.methods.begin(principal, method_type=body.type, name=body.name, context=context)
    return JSONResponse(enrollment_body(started), status_code=201, headers=_NO_STORE)


@router.post("/methods/{enrollment_id}/complete", summary="Prove the new method; it becomes active")
def complete_method(
    enrollment_id: str, body: MethodCompleteBody, principal: CurrentPrincipal, twofold: App, context: Context
) -> JSONResponse:
    try:
        completed = twofold.methods.complete(
            principal, enrollment_id=enrollment_id[:64], proof=body.proof(), context=context
        )
    except ProofPending:
        return JSONResponse({"status": "pending"}, status_code=202, headers=_NO_STORE)
    result = method_view(completed.method)
    if completed.recovery_codes:
        result["recovery_codes"] = completed.recovery_codes
    return JSONResponse(result, headers=_NO_STORE)


@router.patch("/methods/{method_id}", summary="Rename a verification method")
def rename_method(
    method_id: str, body: MethodRenameBody, principal: CurrentPrincipal, twofold: App, context: Context
) -> dict[str, Any]:
    return method_view(twofold.methods.rename(principal, method_id[:64], name=body.name, context=context))


@router.delete("/methods/{method_id}", status_code=204, summary="Remove a verification method (not the last; step-up)")
def remove_method(method_id: str, principal: CurrentPrincipal, twofold: App, context: Context) -> Response:
    twofold.methods.remove(principal, method_id[:64], context=context)
    return Response(status_code=204)


@router.post("/recovery-codes", status_code=201, summary="New recovery codes, replacing the earlier ones (step-up)")
def recovery_codes(principal: CurrentPrincipal, twofold: App, context: Context) -> JSONResponse:
    codes = twofold.methods.regenerate_recovery_codes(principal, context=context)
    return JSONResponse({"codes": codes}, status_code=201, headers=_NO_STORE)


@router.post("/step-up/webauthn/options", summary="WebAuthn request options for a step-up")
def step_up_webauthn_options(
    body: StepUpWebAuthnOptionsBody, principal: CurrentPrincipal, twofold: App, context: Context
) -> JSONResponse:
    options = twofold.step_up.verification_options(principal, method_type=body.type, context=context)
    return JSONResponse(options, headers=_NO_STORE)


@router.post("/step-up/push", summary="Send a push notification for a step-up")
def step_up_push(body: StepUpPushBody, principal: CurrentPrincipal, twofold: App, context: Context) -> JSONResponse:
    started = twofold.push.start_for_step_up(principal, method_id=body.method_id, context=context)
    return JSONResponse(push_started_body(started), headers=_NO_STORE)


@router.post("/step-up", summary="A fresh second factor renews step_up_until")
def step_up(body: StepUpBody, principal: CurrentPrincipal, twofold: App, context: Context) -> JSONResponse:
    try:
        until = twofold.step_up.step_up(principal, verification_type=body.type, proof=body.proof(), context=context)
    except ProofPending:
        return JSONResponse({"status": "pending"}, status_code=202, headers=_NO_STORE)
    return JSONResponse({"step_up_until": ts(until)}, headers=_NO_STORE)


@router.post("/password", status_code=204, summary="Change the password; other sessions end, MFA stays")
def change_password(body: PasswordChangeBody, principal: CurrentPrincipal, twofold: App, context: Context) -> Response:
    twofold.accounts.change_password(
        principal, current_password=body.current_password, new_password=body.new_password, context=context
    )
    return Response(status_code=204)


@router.post("/sessions/revoke", status_code=204, summary="Sign out everywhere else")
def revoke_sessions(principal: CurrentPrincipal, twofold: App, context: Context) -> Response:
    twofold.sessions.revoke_others(principal, context)
    return Response(status_code=204)


@router.get("/consents", summary="Applications the user allowed (not first-party ones, which ask no consent)")
def consents(principal: CurrentPrincipal, twofold: App) -> list[dict[str, Any]]:
    return [
        {
            "app_id": view.app_id,
            "client_id": view.client_id,
            "name": view.app_name,
            "scopes": view.scopes,
            "granted_at": view.granted_at.isoformat(),
        }
        for view in twofold.oauth.consents(principal)
    ]


@router.delete("/consents/{app_id}", status_code=204, summary="Withdraw consent; the app's refresh tokens end")
def withdraw_consent(app_id: str, principal: CurrentPrincipal, twofold: App, context: Context) -> Response:
    twofold.oauth.withdraw_consent(principal, app_id[:64], context)
    return Response(status_code=204)
