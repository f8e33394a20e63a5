"""The "Access Management" console for Organization Administrators (API.md "Web pages"): what needs
attention, Users (a user's page with "Reset multi-factor authentication" → "Confirm reset MFA"),
Identity Providers (the local provider's "Exempt Accounts"), Audit Log, and the MFA coverage report.

The pages call the same services as the admin API, so the same permission checks and rules apply. A
write that needs a fresh step-up (★ in API.md) sends the administrator through a verification and then
posts the interrupted form again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from twofold.domain.clock import utcnow
from twofold.domain.errors import Forbidden, NotFound, StepUpRequired, TwofoldError, ValidationFailed
from twofold.oauth.scopes import ADMIN_SCOPES, USER_SCOPES
from twofold.services.context import Principal
from twofold.services.exemptions import DEFAULT_LIFETIME, MAXIMUM_LIFETIME

from ..api.admin import event_body
from ..deps import request_context
from .common import csrf_refused, current_principal, read_form, render, twofold_of
from .profile import resume_form, step_up_page

router = APIRouter(include_in_schema=False, prefix="/admin")

PAGE_SIZE = 25
# What a redirect after a write says: fixed messages by key, so that a crafted link cannot put words
# of its own into the console.
DONE = {
    "reset": "Multi-factor authentication was reset. The user must register a verification method at the next sign-in.",
    "unlocked": "The account was unlocked.",
    "disabled": "The account was disabled; its sessions ended.",
    "enabled": "The account was enabled.",
}
AUDIT_PAGE_SIZE = 50


def _admin_or_response(request: Request) -> Principal | Response:
    principal = current_principal(request)
    if principal is None:
        return RedirectResponse("/login?expired=1", status_code=303)
    if not twofold_of(request).admin.is_administrator(principal):
        return render(
            request,
            "message.html",
            {
                "title": "Access Management",
                "message": "Only Organization Administrators can open Access Management.",
                "back": "/",
            },
            principal=principal,
            status=403,
        )
    return principal


def _org(principal: Principal) -> str:
    return principal.user.organization_id


def _console(
    request: Request,
    principal: Principal,
    template: str,
    section: str,
    context: dict[str, Any],
    *,
    status: int = 200,
) -> HTMLResponse:
    return render(request, template, {"section": section, **context}, principal=principal, status=status)


def _error_page(request: Request, principal: Principal, error: TwofoldError, back: str) -> HTMLResponse:
    return render(
        request,
        "message.html",
        {"title": "Access Management", "message": error.detail, "back": back},
        principal=principal,
        status=error.status,
    )


async def _admin_form(request: Request) -> tuple[Principal, dict[str, str]] | Response:
    try:
        form = await read_form(request)
    except Forbidden as error:
        return csrf_refused(request, error)
    found = _admin_or_response(request)
    if isinstance(found, Response):
        return found
    return found, form


def _needs_step_up(request: Request, principal: Principal, form: dict[str, str], back: str) -> HTMLResponse:
    return step_up_page(
        request,
        principal,
        next_path=back,
        resume=resume_form(request, form),
        reason="Verify it's you before you change what administrators control.",
    )


# -- overview: what needs attention ---------------------------------------------------------------


@router.get("", response_class=HTMLResponse)
def overview(request: Request, done: str | None = None) -> Response:
    found = _admin_or_response(request)
    if isinstance(found, Response):
        return found
    twofold = twofold_of(request)
    attention = twofold.admin.attention(found, _org(found))
    report = twofold.admin.mfa_report(found, _org(found))
    return _console(
        request,
        found,
        "admin/overview.html",
        "overview",
        {"attention": attention, "report": report, "notice": DONE.get(done or "")},
    )


# -- users ----------------------------------------------------------------------------------------


@router.get("/users", response_class=HTMLResponse)
def users(request: Request, q: str | None = None, cursor: str | None = None) -> Response:
    found = _admin_or_response(request)
    if isinstance(found, Response):
        return found
    query = (q or "").strip()[:256]
    try:
        page = twofold_of(request).admin.list_users(
            found, _org(found), query=query or None, limit=PAGE_SIZE, cursor=(cursor or "")[:1024] or None
        )
    except ValidationFailed as error:
        return _error_page(request, found, error, "/admin/users")
    next_link = f"/admin/users?{urlencode({'q': query, 'cursor': page.next_cursor})}" if page.next_cursor else None
    return _console(
        request,
        found,
        "admin/users.html",
        "users",
        {"views": page.items, "q": query, "next_link": next_link, "paged": bool(cursor)},
    )


@router.get("/users/{user_id}", response_class=HTMLResponse)
def user_page(request: Request, user_id: str, confirm: str | None = None, done: str | None = None) -> Response:
    found = _admin_or_response(request)
    if isinstance(found, Response):
        return found
    try:
        view = twofold_of(request).admin.get_user(found, _org(found), user_id[:64])
    except TwofoldError as error:
        return _error_page(request, found, error, "/admin/users")
    return _console(
        request,
        found,
        "admin/user.html",
        "users",
        {
            "view": view,
            "confirm_reset": confirm == "reset-mfa",
            "is_self": view.user.id == found.user.id,
            "notice": DONE.get(done or ""),
        },
    )


@router.post("/users/{user_id}/reset-mfa", response_class=HTMLResponse)
async def reset_mfa(request: Request, user_id: str) -> Response:
    found = await _admin_form(request)
    if isinstance(found, Response):
        return found
    principal, form = found
    back = f"/admin/users/{user_id[:64]}"
    try:
        twofold_of(request).admin.reset_mfa(principal, _org(principal), user_id[:64], request_context(request))
    except StepUpRequired:
        return _needs_step_up(request, principal, form, back)
    except TwofoldError as error:
        return _error_page(request, principal, error, back)
    if user_id == principal.user.id:
        return RedirectResponse("/login?signed_out=1", status_code=303)  # one's own sessions ended too
    return RedirectResponse(f"{back}?done=reset", status_code=303)


@router.post("/users/{user_id}/unlock", response_class=HTMLResponse)
async def unlock(request: Request, user_id: str) -> Response:
    found = await _admin_form(request)
    if isinstance(found, Response):
        return found
    principal, form = found
    back = safe_back(form.get("back"), f"/admin/users/{user_id[:64]}")
    try:
        twofold_of(request).admin.unlock(principal, _org(principal), user_id[:64], request_context(request))
    except StepUpRequired:
        return _needs_step_up(request, principal, form, back)
    except TwofoldError as error:
        return _error_page(request, principal, error, back)
    return RedirectResponse(f"{back}?done=unlocked", status_code=303)


@router.post("/users/{user_id}/status", response_class=HTMLResponse)
async def set_status(request: Request, user_id: str) -> Response:
    found = await _admin_form(request)
    if isinstance(found, Response):
        return found
    principal, form = found
    back = safe_back(form.get("back"), f"/admin/users/{user_id[:64]}")
    status = form.get("status", "")
    try:
        twofold_of(request).admin.update_user(
            principal, _org(principal), user_id[:64], {"status": status}, request_context(request)
        )
    except StepUpRequired:
        return _needs_step_up(request, principal, form, back)
    except TwofoldError as error:
        return _error_page(request, principal, error, back)
    return RedirectResponse(f"{back}?done={'disabled' if status == 'disabled' else 'enabled'}", status_code=303)


def safe_back(target: str | None, default: str) -> str:
    return target if target and target.startswith("/admin") and "//" not in target and len(target) < 300 else default


# -- identity providers and exempt accounts -------------------------------------------------------


@router.get("/identity-providers", response_class=HTMLResponse)
def identity_providers(request: Request) -> Response:
    found = _admin_or_response(request)
    if isinstance(found, Response):
        return found
    return _providers_page(request, found)


def _providers_page(
    request: Request,
    principal: Principal,
    *,
    created: Any = None,
    error: str | None = None,
    form: dict[str, str] | None = None,
    status: int = 200,
) -> HTMLResponse:
    twofold = twofold_of(request)
    providers = twofold.admin.identity_providers(principal, _org(principal))
    external = {view.provider.id: view for view in twofold.identity_providers.list_external(principal, _org(principal))}
    return _console(
        request,
        principal,
        "admin/identity_providers.html",
        "identity_providers",
        {"providers": providers, "external": external, "created": created, "error": error, "form": form or {}},
        status=status,
    )


@router.post("/identity-providers", response_class=HTMLResponse)
async def create_identity_provider(request: Request) -> Response:
    """ "Add OpenID Connect provider": the redirect URI to register at the provider is shown once it exists."""
    found = await _admin_form(request)
    if isinstance(found, Response):
        return found
    principal, form = found
    domains = [d.strip() for d in form.get("allowed_email_domains", "").replace(",", " ").split() if d.strip()]
    body: dict[str, Any] = {
        "type": "saml" if form.get("type") == "saml" else "oidc",
        "name": form.get("name", "")[:256],
        "allowed_email_domains": domains[:60],
        "require_mfa": bool(form.get("require_mfa")),
    }
    if body["type"] == "saml":
        body["metadata_xml"] = form.get("metadata_xml", "")[:1_000_001] or None
    else:
        body["issuer"] = form.get("issuer", "").strip()[:600]
        body["client_id"] = form.get("client_id", "").strip()[:300]
        body["client_secret"] = form.get("client_secret", "")[:1100]
    try:
        view = twofold_of(request).identity_providers.create(principal, _org(principal), body, request_context(request))
    except StepUpRequired:
        return _needs_step_up(request, principal, form, "/admin/identity-providers")
    except TwofoldError as error:
        safe_form = {k: v for k, v in form.items() if k != "client_secret"}
        return _providers_page(request, principal, error=error.detail, form=safe_form, status=error.status)
    return _providers_page(request, principal, created=view)


@router.post("/identity-providers/{provider_id}/delete", response_class=HTMLResponse)
async def delete_identity_provider(request: Request, provider_id: str) -> Response:
    found = await _admin_form(request)
    if isinstance(found, Response):
        return found
    principal, form = found
    try:
        twofold_of(request).identity_providers.delete(
            principal, _org(principal), provider_id[:64], request_context(request)
        )
    except StepUpRequired:
        return _needs_step_up(request, principal, form, "/admin/identity-providers")
    except TwofoldError as error:
        return _providers_page(request, principal, error=error.detail, status=error.status)
    return RedirectResponse("/admin/identity-providers", status_code=303)


def _exempt_page(
    request: Request,
    principal: Principal,
    *,
    notice: str | None = None,
    errors: list[str] | None = None,
    status: int = 200,
) -> HTMLResponse:
    twofold = twofold_of(request)
    return _console(
        request,
        principal,
        "admin/local_provider.html",
        "identity_providers",
        {
            "exemptions": twofold.exemptions.exempt_accounts(principal, _org(principal)),
            "candidates": twofold.exemptions.candidates(principal, _org(principal)),
            "default_days": DEFAULT_LIFETIME.days,
            "maximum_days": MAXIMUM_LIFETIME.days,
            "cutoff": twofold.settings.user_exemption_cutoff,
            "notice": notice,
            "errors": errors or [],
        },
        status=status,
    )


@router.get("/identity-providers/local", response_class=HTMLResponse)
def local_provider(request: Request, saved: str | None = None) -> Response:
    found = _admin_or_response(request)
    if isinstance(found, Response):
        return found
    return _exempt_page(request, found, notice="Exempt Accounts saved." if saved else None)


@router.post("/identity-providers/local", response_class=HTMLResponse)
async def save_exempt_accounts(request: Request) -> Response:
    """ "Save" of the Exempt Accounts section: staged removals (``remove:<user id>``) and additions
    (``add:<username>`` = days, or the add field itself). Each change is its own audited action; refused
    ones are listed with their reason and the rest still apply."""
    found = await _admin_form(request)
    if isinstance(found, Response):
        return found
    principal, form = found
    back = "/admin/identity-providers/local"
    removals = [key.removeprefix("remove:")[:64] for key, value in form.items() if key.startswith("remove:") and value]
    additions = {key.removeprefix("add:")[:256]: value for key, value in form.items() if key.startswith("add:")}
    typed = form.get("add_username", "").strip()[:256]
    if typed:
        additions[typed] = form.get("add_days", "")
    if not removals and not additions:
        return RedirectResponse(f"{back}?saved=1", status_code=303)
    twofold = twofold_of(request)
    context = request_context(request)
    org = _org(principal)
    errors: list[str] = []
    try:
        twofold.sessions.require_step_up(principal)
    except StepUpRequired:
        return _needs_step_up(request, principal, form, back)
    for user_id in removals:
        try:
            twofold.exemptions.remove(principal, org, user_id, context=context)
        except TwofoldError as error:
            errors.append(f"Could not remove an exemption: {error.detail}.")
    for username, days_text in additions.items():
        try:
            days = int(days_text or DEFAULT_LIFETIME.days)
        except ValueError:
            errors.append(f"{username} was not exempted: the expiry must be a number of days.")
            continue
        if not 1 <= days <= MAXIMUM_LIFETIME.days:
            errors.append(f"{username} was not exempted: an exemption lasts 1 to {MAXIMUM_LIFETIME.days} days.")
            continue
        try:
            user = twofold.admin.user_by_username(principal, org, username)
            twofold.exemptions.exempt(principal, org, user.id, expires_at=_days_from_now(days), context=context)
        except TwofoldError as error:
            errors.append(f"{username} was not exempted: {error.detail}.")
    if errors:
        return _exempt_page(request, principal, errors=errors, status=422)
    return RedirectResponse(f"{back}?saved=1", status_code=303)


def _days_from_now(days: int) -> datetime:
    return utcnow() + timedelta(days=days)


# -- connected apps -------------------------------------------------------------------------------


def _apps_page(
    request: Request,
    principal: Principal,
    *,
    created: Any = None,
    secret: str | None = None,
    error: str | None = None,
    form: dict[str, str] | None = None,
    status: int = 200,
) -> HTMLResponse:
    twofold = twofold_of(request)
    return _console(
        request,
        principal,
        "admin/connected_apps.html",
        "connected_apps",
        {
            "apps": twofold.connected_apps.list_apps(principal, _org(principal)),
            "admin_scopes": ADMIN_SCOPES,
            "user_scopes": USER_SCOPES,
            "created": created,
            "secret": secret,
            "error": error,
            "form": form or {},
            "notice": None,
        },
        status=status,
    )


@router.get("/connected-apps", response_class=HTMLResponse)
def connected_apps(request: Request) -> Response:
    found = _admin_or_response(request)
    if isinstance(found, Response):
        return found
    try:
        return _apps_page(request, found)
    except TwofoldError as error:
        return _error_page(request, found, error, "/admin")


@router.post("/connected-apps", response_class=HTMLResponse)
async def create_connected_app(request: Request) -> Response:
    found = await _admin_form(request)
    if isinstance(found, Response):
        return found
    principal, form = found
    back = "/admin/connected-apps"
    grant_type = form.get("grant_type", "")
    prefix = "scope:" if grant_type == "client_credentials" else "user_scope:"
    scopes = [key.removeprefix(prefix) for key, value in form.items() if key.startswith(prefix) and value]
    uris = [line.strip() for line in form.get("redirect_uris", "").splitlines() if line.strip()]
    try:
        created = twofold_of(request).connected_apps.create(
            principal,
            _org(principal),
            name=form.get("name", "")[:256],
            grant_type=grant_type,
            scopes=scopes,
            redirect_uris=uris if grant_type == "authorization_code" else [],
            first_party=bool(form.get("first_party")),
            context=request_context(request),
        )
    except StepUpRequired:
        return _needs_step_up(request, principal, form, back)
    except TwofoldError as error:
        return _apps_page(request, principal, error=error.detail, form=form, status=error.status)
    return _apps_page(request, principal, created=created.view.app, secret=created.client_secret)


@router.post("/connected-apps/{app_id}/{action}", response_class=HTMLResponse)
async def change_connected_app(request: Request, app_id: str, action: str) -> Response:
    """enable, disable, delete (after "Confirm"), or a new secret."""
    found = await _admin_form(request)
    if isinstance(found, Response):
        return found
    principal, form = found
    back = "/admin/connected-apps"
    service = twofold_of(request).connected_apps
    context = request_context(request)
    try:
        if action in {"enable", "disable"}:
            service.update(principal, _org(principal), app_id[:64], {"enabled": action == "enable"}, context)
        elif action == "delete":
            service.delete(principal, _org(principal), app_id[:64], context)
        elif action == "secret":
            secret = service.rotate_secret(principal, _org(principal), app_id[:64], grace=None, context=context)
            view = service.get(principal, _org(principal), app_id[:64])
            return _apps_page(request, principal, created=view.app, secret=secret)
        else:
            raise NotFound("no such action")
    except StepUpRequired:
        return _needs_step_up(request, principal, form, back)
    except TwofoldError as error:
        return _apps_page(request, principal, error=error.detail, status=error.status)
    return RedirectResponse(back, status_code=303)


# -- audit log ------------------------------------------------------------------------------------


def _audit_filters(type: str | None, user: str | None, since: str | None) -> dict[str, str]:
    return {k: v.strip()[:128] for k, v in {"type": type, "user": user, "since": since}.items() if v and v.strip()}


def _resolve_filters(request: Request, principal: Principal, filters: dict[str, str]) -> dict[str, Any]:
    """The page's filters as the service takes them: a username or id for the user, a date for since."""
    resolved: dict[str, Any] = {"type": filters.get("type"), "user_id": None, "since": None}
    if "user" in filters:
        try:
            resolved["user_id"] = (
                twofold_of(request).admin.user_by_username(principal, _org(principal), filters["user"]).id
            )
        except NotFound:
            resolved["user_id"] = filters["user"]  # an id, or a deleted user's id
    if "since" in filters:
        try:
            day = datetime.fromisoformat(filters["since"])
        except ValueError:
            raise ValidationFailed("“Since” must be a date such as 2026-01-31") from None
        resolved["since"] = datetime.combine(day.date(), time(), tzinfo=UTC) if len(filters["since"]) <= 10 else day
        if resolved["since"].tzinfo is None:
            resolved["since"] = resolved["since"].replace(tzinfo=UTC)
    return resolved


@router.get("/audit", response_class=HTMLResponse)
def audit_log(
    request: Request,
    type: str | None = None,
    user: str | None = None,
    since: str | None = None,
    cursor: str | None = None,
) -> Response:
    found = _admin_or_response(request)
    if isinstance(found, Response):
        return found
    filters = _audit_filters(type, user, since)
    twofold = twofold_of(request)
    try:
        resolved = _resolve_filters(request, found, filters)
        page = twofold.admin.audit_events(
            found, _org(found), limit=AUDIT_PAGE_SIZE, cursor=(cursor or "")[:1024] or None, **resolved
        )
    except TwofoldError as error:
        return _console(
            request,
            found,
            "admin/audit.html",
            "audit",
            {"events": [], "filters": filters, "names": {}, "error": error.detail, "next_link": None, "export": None},
            status=error.status,
        )
    ids = {e.actor_id for e in page.items if e.actor_id} | {e.subject_id for e in page.items if e.subject_id}
    with twofold.uow(read_only=True) as uow:
        names = {user_id: u.username for user_id, u in uow.users.by_ids(sorted(ids)).items()}
    next_link = f"/admin/audit?{urlencode({**filters, 'cursor': page.next_cursor})}" if page.next_cursor else None
    return _console(
        request,
        found,
        "admin/audit.html",
        "audit",
        {
            "events": page.items,
            "details": {e.id: json.dumps(e.details, sort_keys=True, ensure_ascii=False) for e in page.items},
            "names": names,
            "filters": filters,
            "next_link": next_link,
            "paged": bool(cursor),
            "export": f"/admin/audit/export?{urlencode(filters)}",
        },
    )


@router.get("/audit/export")
def audit_export(
    request: Request, type: str | None = None, user: str | None = None, since: str | None = None
) -> Response:
    """The filtered log as JSON lines, every page of it, as a download."""
    found = _admin_or_response(request)
    if isinstance(found, Response):
        return found
    principal = found
    twofold = twofold_of(request)
    try:
        resolved = _resolve_filters(request, principal, _audit_filters(type, user, since))
        first = twofold.admin.audit_events(principal, _org(principal), limit=1000, cursor=None, **resolved)
    except TwofoldError as error:
        return _error_page(request, principal, error, "/admin/audit")

    def lines() -> Iterator[str]:
        page = first
        while True:
            for event in page.items:
                yield json.dumps(event_body(event), separators=(",", ":")) + "\n"
            if not page.next_cursor:
                return
            page = twofold.admin.audit_events(
                principal, _org(principal), limit=1000, cursor=page.next_cursor, **resolved
            )

    return StreamingResponse(
        lines(),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": 'attachment; filename="twofold-audit.jsonl"', "Cache-Control": "no-store"},
    )


# -- MFA coverage ---------------------------------------------------------------------------------


@router.get("/mfa-report", response_class=HTMLResponse)
def mfa_report(request: Request) -> Response:
    found = _admin_or_response(request)
    if isinstance(found, Response):
        return found
    twofold = twofold_of(request)
    report = twofold.admin.mfa_report(found, _org(found))
    labels = {m.method_type: m.display_name for m in twofold.registry}
    return _console(request, found, "admin/mfa_report.html", "mfa_report", {"report": report, "labels": labels})
