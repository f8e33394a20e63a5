"""Administration API (API.md "Administration"): the organization, users, MFA reset, unlock, grants,
exempt accounts, audit, the MFA coverage report."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from twofold.domain.clock import as_utc
from twofold.domain.entities import AuditEvent, Organization
from twofold.domain.errors import ValidationFailed
from twofold.services.admin import UserView
from twofold.services.connected_apps import AppView
from twofold.services.exemptions import ExemptionView

from ..deps import App, Context, CurrentActor
from .identity_providers import provider_body
from .schemas import (
    PROBLEM_RESPONSES,
    BusinessGroupBody,
    ConnectedAppBody,
    ConnectedAppUpdateBody,
    CreateUserBody,
    ExemptionBody,
    OrganizationPolicyBody,
    SecretRotationBody,
    UpdateUserBody,
    ts,
)

router = APIRouter(prefix="/api/v1/organizations/{org}", tags=["administration"], responses=PROBLEM_RESPONSES)


def organization_body(organization: Organization, tree: list[Organization]) -> dict[str, Any]:
    children: dict[str | None, list[Organization]] = {}
    for node in tree:
        children.setdefault(node.parent_id, []).append(node)

    def render(node: Organization) -> dict[str, Any]:
        return {
            "id": node.id,
            "name": node.name,
            "parent_id": node.parent_id,
            **(
                {
                    "webauthn_attestation": node.webauthn_attestation,
                    "webauthn_allowed_aaguids": node.webauthn_allowed_aaguids,
                }
                if node.parent_id is None
                else {}
            ),
            "created_at": ts(node.created_at),
            "business_groups": [render(child) for child in children.get(node.id, [])],
        }

    return render(organization)


def user_body(view: UserView) -> dict[str, Any]:
    user = view.user
    provider = view.identity_provider
    flags = []
    if user.locked_at is not None:
        flags.append("locked")
    if any(method.cloned_at is not None for method in view.methods):
        flags.append("cloned_authenticator")
    if view.reported_not_me:
        flags.append("push_denied_not_me")
    return {
        "id": user.id,
        "username": user.username,
        "email": user.email,
        "display_name": user.display_name,
        "kind": user.kind,
        "service_type": user.service_type,
        "status": user.status,
        "identity_provider": {"id": provider.id, "type": provider.type, "name": provider.name} if provider else None,
        "mfa_exempt": view.exemption_in_force,
        "exemption_expires_at": ts(view.exemption.expires_at) if view.exemption else None,
        "methods": [
            {"type": m.type, "name": m.name, **({"cloned_at": ts(m.cloned_at)} if m.cloned_at else {})}
            for m in view.methods
        ],
        "locked": user.locked_at is not None,
        "locked_at": ts(user.locked_at),
        "locked_until": ts(view.locked_until),
        "flags": flags,
        "is_organization_administrator": view.is_admin,
        "last_login_at": ts(user.last_login_at),
        "created_at": ts(user.created_at),
    }


def event_body(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": ts(event.at),
        "type": event.type,
        "actor_id": event.actor_id,
        "subject_id": event.subject_id,
        "ip": event.ip,
        "details": event.details,
    }


@router.get("", summary="The organization with its business-group tree")
def get_organization(org: str, principal: CurrentActor, twofold: App) -> dict[str, Any]:
    organization, tree = twofold.admin.organization_tree(principal, org)
    root = next((node for node in tree if node.id == organization.root_id), organization)
    body = organization_body(root, tree)
    if organization.id != root.id:
        body = organization_body(organization, tree)
    return body


@router.patch("", summary="Organization policy: WebAuthn attestation and allowed authenticator models ★")
def update_organization(
    org: str, body: OrganizationPolicyBody, principal: CurrentActor, twofold: App, context: Context
) -> dict[str, Any]:
    organization = twofold.admin.update_webauthn_policy(
        principal, org, changes=body.model_dump(exclude_unset=True), context=context
    )
    return {
        "id": organization.id,
        "name": organization.name,
        "webauthn_attestation": organization.webauthn_attestation,
        "webauthn_allowed_aaguids": organization.webauthn_allowed_aaguids,
    }


@router.post("/business-groups", status_code=201, summary="Create a business group")
def create_business_group(
    org: str, body: BusinessGroupBody, principal: CurrentActor, twofold: App, context: Context
) -> JSONResponse:
    group = twofold.admin.create_business_group(
        principal, org, name=body.name, parent_id=body.parent_id, context=context
    )
    return JSONResponse(organization_body(group, [group]), status_code=201)


@router.get("/users", summary="Users, searchable, with cursor paging")
def list_users(
    org: str,
    principal: CurrentActor,
    twofold: App,
    q: Annotated[str | None, Query(max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=1024)] = None,
) -> dict[str, Any]:
    page = twofold.admin.list_users(principal, org, query=q, limit=limit, cursor=cursor)
    return {"items": [user_body(view) for view in page.items], "next_cursor": page.next_cursor}


@router.post("/users", status_code=201, summary="Create a user (no password: a one-time set-up link)")
def create_user(
    org: str, body: CreateUserBody, principal: CurrentActor, twofold: App, context: Context
) -> JSONResponse:
    organization = twofold.admin.authorize_user_write(principal, org)
    created = twofold.accounts.create_user(
        organization_id=organization.id,
        username=body.username,
        email=body.email,
        kind=body.kind,
        service_type=body.service_type,
        display_name=body.display_name,
        password=body.password,
        actor_id=principal.user_id,
        context=context,
    )
    result = user_body(twofold.admin.get_user(principal, org, created.user.id))
    if created.setup_url:
        result["setup_url"] = created.setup_url
    return JSONResponse(result, status_code=201, headers={"Cache-Control": "no-store"})


@router.get("/users/{user_id}", summary="One user")
def get_user(org: str, user_id: str, principal: CurrentActor, twofold: App) -> dict[str, Any]:
    return user_body(twofold.admin.get_user(principal, org, user_id))


@router.patch("/users/{user_id}", summary="Update display name, email or status (disabling ends sessions)")
def update_user(
    org: str, user_id: str, body: UpdateUserBody, principal: CurrentActor, twofold: App, context: Context
) -> dict[str, Any]:
    changes = body.model_dump(exclude_unset=True)
    if changes.get("email", "") is None:
        raise ValidationFailed("email cannot be removed")
    if changes.get("status", "") is None:
        raise ValidationFailed("status must be 'active' or 'disabled'")
    return user_body(twofold.admin.update_user(principal, org, user_id, changes, context))


@router.post("/users/{user_id}/unlock", status_code=204, summary="Lift a second-factor lock ★")
def unlock(org: str, user_id: str, principal: CurrentActor, twofold: App, context: Context) -> Response:
    twofold.admin.unlock(principal, org, user_id, context)
    return Response(status_code=204)


@router.post("/users/{user_id}/mfa/reset", status_code=204, summary="Reset the user's MFA (R7) ★")
def reset_mfa(org: str, user_id: str, principal: CurrentActor, twofold: App, context: Context) -> Response:
    twofold.admin.reset_mfa(principal, org, user_id, context)
    return Response(status_code=204)


@router.get("/attention", summary="Accounts that need an administrator: locked, cloned authenticator, disabled")
def attention(org: str, principal: CurrentActor, twofold: App) -> dict[str, Any]:
    found = twofold.admin.attention(principal, org)
    return {
        "locked": [user_body(v) for v in found.locked],
        "cloned_authenticator": [user_body(v) for v in found.cloned_authenticator],
        "push_denied_not_me": [user_body(v) for v in found.push_denied_not_me],
        "disabled": [user_body(v) for v in found.disabled],
    }


@router.get("/mfa-report", summary="Users by MFA state and active methods by type")
def mfa_report(org: str, principal: CurrentActor, twofold: App) -> dict[str, Any]:
    report = twofold.admin.mfa_report(principal, org)
    return {
        "users": report.users,
        "by_state": {
            "enrolled": report.enrolled,
            "pending_enrollment": report.pending_enrollment,
            "exempt": report.exempt,
            "sso": report.sso,
        },
        "locked": report.locked,
        "disabled": report.disabled,
        "methods_by_type": {
            method_type: {"methods": methods, "users": users}
            for method_type, (methods, users) in report.methods_by_type.items()
        },
    }


@router.put(
    "/users/{user_id}/permissions/organization_administrator",
    status_code=204,
    summary="Make the user an Organization Administrator ★",
)
def grant_administrator(org: str, user_id: str, principal: CurrentActor, twofold: App, context: Context) -> Response:
    twofold.admin.grant_administrator(principal, org, user_id, context)
    return Response(status_code=204)


@router.delete(
    "/users/{user_id}/permissions/organization_administrator",
    status_code=204,
    summary="Revoke Organization Administrator ★",
)
def revoke_administrator(org: str, user_id: str, principal: CurrentActor, twofold: App, context: Context) -> Response:
    twofold.admin.revoke_administrator(principal, org, user_id, context)
    return Response(status_code=204)


@router.get("/identity-providers", summary="The local identity provider and any external ones")
def identity_providers(org: str, principal: CurrentActor, twofold: App) -> list[dict[str, Any]]:
    external = {
        view.provider.id: provider_body(view) for view in twofold.identity_providers.list_external(principal, org)
    }
    return [
        external.get(p.id)
        or {"id": p.id, "type": p.type, "name": p.name, "issuer": p.issuer, "created_at": ts(p.created_at)}
        for p in twofold.admin.identity_providers(principal, org)
    ]


def exemption_body(view: ExemptionView) -> dict[str, Any]:
    return {
        "user_id": view.user.id,
        "username": view.user.username,
        "kind": view.user.kind,
        "service_type": view.user.service_type,
        "exempted_at": ts(view.exemption.exempted_at),
        "exempted_by": view.exemption.exempted_by,
        "exempted_by_username": view.exempted_by.username if view.exempted_by else None,
        "expires_at": ts(view.exemption.expires_at),
        "days_left": view.days_left,
        "in_force": view.in_force,
    }


@router.get("/identity-providers/local/exempt-accounts", summary="The exempt list of the local identity provider")
def exempt_accounts(org: str, principal: CurrentActor, twofold: App) -> list[dict[str, Any]]:
    return [exemption_body(view) for view in twofold.exemptions.exempt_accounts(principal, org)]


@router.get(
    "/identity-providers/local/exempt-accounts/candidates",
    summary="Accounts that may be exempted now: local test-automation and RPA service accounts",
)
def exempt_candidates(org: str, principal: CurrentActor, twofold: App) -> list[dict[str, Any]]:
    return [
        {
            "user_id": user.id,
            "username": user.username,
            "display_name": user.display_name,
            "kind": user.kind,
            "service_type": user.service_type,
        }
        for user in twofold.exemptions.candidates(principal, org)
    ]


@router.put(
    "/identity-providers/local/exempt-accounts/{user_id}",
    status_code=204,
    summary="Exempt an account from MFA until expires_at (default 90 days, at most a year) ★",
)
def exempt_account(
    org: str,
    user_id: str,
    principal: CurrentActor,
    twofold: App,
    context: Context,
    body: ExemptionBody | None = None,
) -> Response:
    expires_at = body.expires_at if body is not None else None
    twofold.exemptions.exempt(principal, org, user_id, expires_at=expires_at, context=context)
    return Response(status_code=204)


@router.delete(
    "/identity-providers/local/exempt-accounts/{user_id}",
    status_code=204,
    summary="Remove an exemption; the account's sessions end ★",
)
def remove_exemption(org: str, user_id: str, principal: CurrentActor, twofold: App, context: Context) -> Response:
    twofold.exemptions.remove(principal, org, user_id, context=context)
    return Response(status_code=204)


def app_body(view: AppView) -> dict[str, Any]:
    app = view.app
    return {
        "id": app.id,
        "name": app.name,
        "client_id": app.client_id,
        "grant_type": app.grant_type,
        "scopes": list(app.scopes),
        "redirect_uris": list(app.redirect_uris),
        "first_party": app.first_party,
        "enabled": app.enabled,
        "token_endpoint_auth_method": app.auth_method,
        "jwks": app.jwks,
        "secrets": [{"created_at": ts(x.created_at), "expires_at": ts(x.expires_at)} for x in view.secrets],
        "created_at": ts(app.created_at),
        "updated_at": ts(app.updated_at),
    }


@router.get("/connected-apps", summary="The organization's connected apps (OAuth 2.0 clients)")
def connected_apps(org: str, principal: CurrentActor, twofold: App) -> list[dict[str, Any]]:
    return [app_body(view) for view in twofold.connected_apps.list_apps(principal, org)]


@router.post("/connected-apps", status_code=201, summary="Create a connected app; its secret is shown this once ★")
def create_connected_app(
    org: str, body: ConnectedAppBody, principal: CurrentActor, twofold: App, context: Context
) -> JSONResponse:
    created = twofold.connected_apps.create(
        principal,
        org,
        name=body.name,
        grant_type=body.grant_type,
        scopes=body.scopes,
        redirect_uris=body.redirect_uris,
        first_party=body.first_party,
        auth_method=body.token_endpoint_auth_method,
        jwks=body.jwks,
        context=context,
    )
    result = {**app_body(created.view), "client_secret": created.client_secret}
    return JSONResponse(result, status_code=201, headers={"Cache-Control": "no-store"})


@router.get("/connected-apps/{app_id}", summary="One connected app")
def connected_app(org: str, app_id: str, principal: CurrentActor, twofold: App) -> dict[str, Any]:
    return app_body(twofold.connected_apps.get(principal, org, app_id[:64]))


@router.patch(
    "/connected-apps/{app_id}", summary="Rename, change scopes or redirect URIs, enable or disable (kills tokens) ★"
)
def update_connected_app(
    org: str, app_id: str, body: ConnectedAppUpdateBody, principal: CurrentActor, twofold: App, context: Context
) -> dict[str, Any]:
    changes = body.model_dump(exclude_unset=True)
    return app_body(twofold.connected_apps.update(principal, org, app_id[:64], changes, context))


@router.delete("/connected-apps/{app_id}", status_code=204, summary="Delete a connected app; its tokens die ★")
def delete_connected_app(org: str, app_id: str, principal: CurrentActor, twofold: App, context: Context) -> Response:
    twofold.connected_apps.delete(principal, org, app_id[:64], context)
    return Response(status_code=204)


@router.post(
    "/connected-apps/{app_id}/secret",
    status_code=201,
    summary="A new client secret; the old one works for grace_seconds more (default 24 h) ★",
)
def rotate_connected_app_secret(
    org: str,
    app_id: str,
    principal: CurrentActor,
    twofold: App,
    context: Context,
    body: SecretRotationBody | None = None,
) -> JSONResponse:
    grace = timedelta(seconds=body.grace_seconds) if body and body.grace_seconds is not None else None
    secret = twofold.connected_apps.rotate_secret(principal, org, app_id[:64], grace=grace, context=context)
    return JSONResponse({"client_secret": secret}, status_code=201, headers={"Cache-Control": "no-store"})


@router.get(
    "/audit-events",
    summary="Audit events, newest first; Accept: application/x-ndjson streams JSON lines",
    responses={200: {"content": {"application/json": {}, "application/x-ndjson": {}}}},
)
def audit_events(
    org: str,
    request: Request,
    principal: CurrentActor,
    twofold: App,
    type: Annotated[str | None, Query(max_length=64)] = None,
    user_id: Annotated[str | None, Query(max_length=64)] = None,
    since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=1024)] = None,
) -> Response:
    since_utc = as_utc(since) if since else None
    page = twofold.admin.audit_events(
        principal, org, type=type, user_id=user_id, since=since_utc, limit=limit, cursor=cursor
    )
    if "application/x-ndjson" in request.headers.get("accept", ""):
        return StreamingResponse(
            _ndjson(twofold, principal, org, type, user_id, since_utc, page.items, page.next_cursor),
            media_type="application/x-ndjson",
        )
    return JSONResponse({"items": [event_body(e) for e in page.items], "next_cursor": page.next_cursor})


def _ndjson(
    twofold: Any,
    principal: Any,
    org: str,
    type: str | None,
    user_id: str | None,
    since: datetime | None,
    first: list[AuditEvent],
    cursor: str | None,
) -> Iterator[str]:
    """The export walks every page, so one request gives the whole (filtered) log."""
    for event in first:
        yield json.dumps(event_body(event), separators=(",", ":")) + "\n"
    while cursor:
        page = twofold.admin.audit_events(
            principal, org, type=type, user_id=user_id, since=since, limit=1000, cursor=cursor
        )
        for event in page.items:
            yield json.dumps(event_body(event), separators=(",", ":")) + "\n"
        cursor = page.next_cursor
