"""Single sign-on pages (API.md "Single sign-on"; R2): finding the provider, the round trip, the session.

``/login/sso`` asks for the organization or a work email address and lists the providers that fit;
``/login/sso/{idp_id}`` sends the browser to the provider with a pending sign-in bound to a cookie of this
browser; ``/sso/oidc/{idp_id}/callback`` finishes it and lands on ``/``, which resumes an application's
``/oauth2/authorize`` request if one was waiting. Every refusal is a page that says what happened, in words.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from twofold.domain.errors import Forbidden
from twofold.services.sessions import IssuedSession
from twofold.services.sso import SSO_REQUEST_LIFETIME, SsoRefused, SteppedUp

from ..deps import LOGIN_COOKIE, SESSION_COOKIE, request_context
from .common import (
    clear_cookie,
    csrf_refused,
    current_principal,
    read_form,
    render,
    seconds_until,
    set_cookie,
    twofold_of,
)
from .profile import safe_next

router = APIRouter(include_in_schema=False)

#: Binds a pending upstream sign-in to the browser that started it. SameSite=Lax suffices for OpenID
#: Connect: the provider sends the browser back with a top-level GET, which carries Lax cookies.
SSO_COOKIE = "__Host-twofold_sso"


def _page(request: Request, *, organization: str = "", email: str = "", choices: list | None = None,
          error: str | None = None, status: int = 200) -> HTMLResponse:  # fmt: skip
    return render(
        request,
        "sso.html",
        {"organization": organization, "email": email, "choices": choices, "error": error},
        status=status,
    )


@router.get("/login/sso", response_class=HTMLResponse)
def sso_page(request: Request) -> Response:
    return _page(request)


@router.post("/login/sso", response_class=HTMLResponse)
async def sso_find(request: Request) -> Response:
    """The providers of an organization (by its name) or of a work email's domain."""
    try:
        form = await read_form(request)
    except Forbidden as error:
        return csrf_refused(request, error)
    organization = form.get("organization", "").strip()[:200]
    email = form.get("email", "").strip()[:254]
    if not organization and not email:
        return _page(request, error="Enter your organization or your work email address.", status=422)
    choices = twofold_of(request).sso.providers_for(organization=organization, email=email)
    if len(choices) == 1:
        # A page that moves on by itself, not a 303: redirects that follow a form POST are held to the CSP
        # ``form-action 'self'`` of the form's page, and this chain goes on to the provider's site.
        target = f"/login/sso/{choices[0].id}"
        response = render(
            request,
            "message.html",
            {
                "title": "Sign in with SSO",
                "message": f"Continuing to {choices[0].name}.",
                "back": target,
                "back_label": "Continue",
            },
        )
        response.headers["Refresh"] = f"0; url={target}"
        return response
    if not choices:
        return _page(
            request,
            organization=organization,
            email=email,
            error="No single sign-on provider was found for that. Check the spelling, or sign in with your "
            "username and password.",
            status=404,
        )
    return _page(request, organization=organization, email=email, choices=choices)


@router.get("/login/sso/{provider_id}")
def sso_start(request: Request, provider_id: str, step_up: str | None = None, next: str | None = None) -> Response:
    """A sign-in at the provider, or with ``step_up`` a signed-in federated user's re-authentication there
    (the step-up of SSO users, who have no local factor), coming back to ``next``."""
    principal = None
    if step_up:
        principal = current_principal(request)
        if principal is None:
            return RedirectResponse("/login", status_code=303)
    try:
        started = twofold_of(request).sso.start(
            provider_id[:64],
            request_context(request),
            step_up=principal,
            return_to=safe_next(next) if step_up else None,
        )
    except SsoRefused as refused:
        return _refused(request, refused, status=404)
    response = RedirectResponse(started.redirect_url, status_code=303)
    if started.browser_secret:  # OpenID Connect (SAML's answer is a cross-site POST: see finish_saml)
        set_cookie(response, SSO_COOKIE, started.browser_secret, max_age=int(SSO_REQUEST_LIFETIME.total_seconds()))
    return response


@router.get("/sso/oidc/{provider_id}/callback")
def sso_oidc_callback(
    request: Request,
    provider_id: str,
    state: str | None = None,
    code: str | None = None,
    error: str | None = None,
) -> Response:
    try:
        issued = twofold_of(request).sso.finish_oidc(
            provider_id[:64],
            state=state,
            code=code,
            error=error,
            browser_secret=request.cookies.get(SSO_COOKIE),
            context=request_context(request),
        )
    except SsoRefused as refused:
        response: Response = _refused(request, refused, status=403)
        clear_cookie(response, SSO_COOKIE)
        return response
    response = _finished(issued)
    clear_cookie(response, SSO_COOKIE)
    return response


def _finished(outcome: IssuedSession | SteppedUp) -> Response:
    """A sign-in lands on / with its session; a step-up goes back to the page that asked for it."""
    if isinstance(outcome, SteppedUp):
        return RedirectResponse(outcome.return_to, status_code=303)
    response = RedirectResponse("/", status_code=303)
    set_cookie(response, SESSION_COOKIE, outcome.token, max_age=seconds_until(outcome.session.expires_at))
    clear_cookie(response, LOGIN_COOKIE)
    return response


@router.get("/sso/saml/{provider_id}/metadata")
def sso_saml_metadata(request: Request, provider_id: str) -> Response:
    """Twofold's SP metadata for one SAML provider: public, for the provider's administrator to import."""
    metadata = twofold_of(request).sso.saml_metadata(provider_id[:64])
    if metadata is None:
        return Response("No such SAML identity provider.\n", status_code=404, media_type="text/plain")
    return Response(
        metadata, media_type="application/samlmetadata+xml", headers={"Cache-Control": "public, max-age=300"}
    )


@router.post("/sso/saml/{provider_id}/acs")
async def sso_saml_acs(request: Request, provider_id: str) -> Response:
    """The Assertion Consumer Service (HTTP-POST binding): a cross-site POST from the provider's page, so no
    CSRF token of ours; what makes it trustworthy is the signed assertion answering our single-use request."""
    try:
        form = await request.form(max_files=0, max_fields=10)
        saml_response = form.get("SAMLResponse")
        relay_state = form.get("RelayState")
    except Exception:  # not a form at all
        saml_response = relay_state = None
    try:
        issued = await run_in_threadpool(
            twofold_of(request).sso.finish_saml,
            provider_id[:64],
            saml_response=saml_response if isinstance(saml_response, str) else None,
            relay_state=relay_state if isinstance(relay_state, str) else None,
            context=request_context(request),
        )
    except SsoRefused as refused:
        return _refused(request, refused, status=403)
    return _finished(issued)


def _refused(request: Request, refused: SsoRefused, *, status: int) -> HTMLResponse:
    return render(
        request,
        "message.html",
        {
            "title": "Single sign-on did not complete",
            "message": refused.message,
            "back": "/login/sso",
            "back_label": "Back to sign in with SSO",
        },
        status=status,
    )
