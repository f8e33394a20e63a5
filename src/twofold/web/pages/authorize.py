"""``/oauth2/authorize``: an application sends the browser here to sign its user in (OpenID Connect).

The sign-in is the same state machine and pages as any other (password, then MFA or forced enrollment):
an unauthenticated browser keeps the request in a signed ``__Host-`` cookie and is sent to ``/login``;
every sign-in lands on ``/``, which resumes the request. A first-party app gets its code at once;
others ask for consent. Errors that cannot go back to the app (unknown client, unregistered redirect URI)
are shown here; the rest go back to the app's redirect URI (RFC 6749 §4.1.2.1) with ``iss`` (RFC 9207).
"""

from __future__ import annotations

import re
import time
from urllib.parse import parse_qsl, urlencode, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from twofold.domain.errors import Forbidden, NotFound
from twofold.oauth.scopes import USER_SCOPES
from twofold.services.context import Principal
from twofold.services.oauth import AuthorizationError, AuthorizationRedirect, AuthorizationRequest

from ..deps import SESSION_COOKIE, request_context
from ..middleware import SECURITY_HEADERS
from .common import clear_cookie, csrf_refused, current_principal, read_form, render, set_cookie, twofold_of

router = APIRouter(include_in_schema=False)

AUTHORIZE_COOKIE = "__Host-twofold_authorize"
PENDING_SECONDS = 15 * 60  # as long as an enrolling login transaction lives
QUERY_LIMIT = 4096
SCOPE_WORDS = {
    "openid": "Know who you are (your Twofold account)",
    "profile": "See your username and name",
    "email": "See your email address",
    "offline_access": "Stay signed in to it until you sign out",
}
assert set(SCOPE_WORDS) == set(USER_SCOPES)
CSP = dict(SECURITY_HEADERS)[b"content-security-policy"].decode()
ORIGIN = re.compile(r"^[a-z][a-z0-9+.-]*:(//[A-Za-z0-9.\-\[\]:]+)?$")


def _back_to_app(error: AuthorizationRedirect, issuer: str) -> RedirectResponse:
    params = {"error": error.error, "error_description": error.description, "iss": issuer}
    if error.state:
        params["state"] = error.state
    separator = "&" if "?" in error.redirect_uri else "?"
    return RedirectResponse(f"{error.redirect_uri}{separator}{urlencode(params)}", status_code=303)


def _refused_page(request: Request, error: AuthorizationError) -> HTMLResponse:
    return render(
        request,
        "message.html",
        {"title": "This application cannot sign you in", "message": str(error), "back": "/", "back_label": "Home"},
        principal=current_principal(request),
        status=400,
    )


def pending_query(request: Request) -> str | None:
    """The authorization request a sign-in interrupted, when its cookie is intact and fresh."""
    value = request.cookies.get(AUTHORIZE_COOKIE) or ""
    stamp, _, rest = value.partition(".")
    signature, _, query = rest.partition(".")
    twofold = twofold_of(request)
    if not stamp.isdigit() or not twofold.mac.verify(f"authorize:{stamp}:{query}", signature):
        return None
    if int(stamp) + PENDING_SECONDS < time.time():
        return None
    return query


def resume_response(request: Request) -> Response | None:
    """Home's hook: after a sign-in, go back to the interrupted authorization request.

    A page that moves on by itself (``Refresh``), not a 303: the sign-in that lands here was a form POST, and
    browsers hold every redirect that follows a form submission to the CSP ``form-action 'self'`` of the form's
    page, so a redirect chain on to the app's own site would be blocked."""
    query = pending_query(request)
    if query is None:
        return None
    # The sign-in that lands here was the one the request asked for: prompt=login is met (OIDC Core §3.1.2.1).
    params = parse_qsl(query, keep_blank_values=True)
    prompts = [p for name, value in params if name == "prompt" for p in value.split() if p != "login"]
    kept = [(name, value) for name, value in params if name != "prompt"]
    target = "/oauth2/authorize?" + urlencode(kept + ([("prompt", " ".join(prompts))] if prompts else []))
    response = render(
        request,
        "message.html",
        {
            "title": "Signed in",
            "message": "Returning to the application that asked you to sign in.",
            "back": target,
            "back_label": "Continue",
        },
        principal=current_principal(request),
    )
    response.headers["Refresh"] = f"0; url={target}"
    clear_cookie(response, AUTHORIZE_COOKIE)
    return response


def _allowing_form_action_to(response: Response, redirect_uri: str) -> Response:
    """The consent form's answer redirects to the app: its page lets forms lead to the app's origin too."""
    parts = urlsplit(redirect_uri)
    source = f"{parts.scheme}://{parts.netloc}" if parts.netloc else f"{parts.scheme}:"
    if ORIGIN.match(source):
        response.headers["Content-Security-Policy"] = CSP.replace("form-action 'self'", f"form-action 'self' {source}")
    return response


def _code_redirect(request: Request, authorization: AuthorizationRequest, code: str) -> RedirectResponse:
    params = {"code": code, "iss": twofold_of(request).settings.public_url}
    if authorization.state:
        params["state"] = authorization.state
    separator = "&" if "?" in authorization.redirect_uri else "?"
    response = RedirectResponse(f"{authorization.redirect_uri}{separator}{urlencode(params)}", status_code=303)
    clear_cookie(response, AUTHORIZE_COOKIE)
    return response


@router.get("/oauth2/authorize", response_class=HTMLResponse)
def authorize(request: Request) -> Response:
    twofold = twofold_of(request)
    query = request.url.query
    if len(query) > QUERY_LIMIT:
        return _refused_page(request, AuthorizationError("The request is too large."))
    try:
        authorization = twofold.oauth.check_authorization_request(dict(request.query_params))
    except AuthorizationError as error:
        return _refused_page(request, error)
    except AuthorizationRedirect as error:
        return _back_to_app(error, twofold.settings.public_url)
    principal = current_principal(request)
    if principal is None or "login" in authorization.prompt:
        if "none" in authorization.prompt:
            return _back_to_app(
                _refusal(authorization, "login_required", "no one is signed in"), twofold.settings.public_url
            )
        if principal is not None:
            # prompt=login asks for a new sign-in; one signed-in session is never replaced behind the user's back.
            return _back_to_app(
                _refusal(authorization, "login_required", "sign out first to sign in again"),
                twofold.settings.public_url,
            )
        # Sign in first (password, MFA or forced enrollment); "/" brings the browser back here.
        response = RedirectResponse("/login", status_code=303)
        stamp = str(int(time.time()))
        signature = twofold.mac.sign(f"authorize:{stamp}:{query}")
        set_cookie(response, AUTHORIZE_COOKIE, f"{stamp}.{signature}.{query}", max_age=PENDING_SECONDS)
        return response
    if not twofold.oauth.needs_consent(principal, authorization):
        return _grant(request, authorization)
    if "none" in authorization.prompt:
        return _back_to_app(
            _refusal(authorization, "consent_required", "the user has not allowed this application"),
            twofold.settings.public_url,
        )
    page = render(
        request,
        "consent.html",
        {
            "app": authorization.app,
            "scopes": [(scope, SCOPE_WORDS[scope]) for scope in authorization.scopes],
            "query": query,
        },
        principal=principal,
    )
    return _allowing_form_action_to(page, authorization.redirect_uri)


def _refusal(authorization: AuthorizationRequest, error: str, description: str) -> AuthorizationRedirect:
    return AuthorizationRedirect(error, description, redirect_uri=authorization.redirect_uri, state=authorization.state)


def _grant(request: Request, authorization: AuthorizationRequest) -> Response:
    twofold = twofold_of(request)
    principal = current_principal(request)
    if principal is None:
        return RedirectResponse("/login", status_code=303)
    try:
        code = twofold.oauth.issue_code(principal, authorization, request_context(request))
    except AuthorizationRedirect as error:
        return _back_to_app(error, twofold.settings.public_url)
    return _code_redirect(request, authorization, code)


@router.post("/oauth2/authorize", response_class=HTMLResponse)
async def consent(request: Request) -> Response:
    """ "Allow" or "Deny" on the consent page: the request is checked again from its own parameters."""
    try:
        form = await read_form(request)
    except Forbidden as error:
        return csrf_refused(request, error)
    twofold = twofold_of(request)
    query = form.get("query", "")[:QUERY_LIMIT]
    from urllib.parse import parse_qsl

    try:
        authorization = twofold.oauth.check_authorization_request(dict(parse_qsl(query)))
    except AuthorizationError as error:
        return _refused_page(request, error)
    except AuthorizationRedirect as error:
        return _back_to_app(error, twofold.settings.public_url)
    if form.get("decision") != "allow":
        return _back_to_app(
            _refusal(authorization, "access_denied", "the user did not allow it"), twofold.settings.public_url
        )
    principal = current_principal(request)
    if principal is None:
        return RedirectResponse("/login", status_code=303)
    twofold.oauth.remember_consent(principal, authorization, request_context(request))
    return _grant(request, authorization)


@router.get("/oauth2/logout", response_class=HTMLResponse)
def logout(
    request: Request,
    id_token_hint: str | None = None,
    post_logout_redirect_uri: str | None = None,
    state: str | None = None,
) -> Response:
    """OpenID Connect RP-Initiated Logout 1.0: with the app's ID token for the signed-in user, the Twofold
    session ends at once and the browser goes back to the app's registered address; without one, the
    user is asked (a link alone must not sign anyone out)."""
    twofold = twofold_of(request)
    subject, target = twofold.oauth.logout_target((id_token_hint or "")[:4096], post_logout_redirect_uri)
    principal = current_principal(request)
    if principal is not None and subject != principal.user.id:
        return render(
            request,
            "message.html",
            {"title": "Sign out?", "message": "An application asked to sign you out of Twofold.", "signout": True},
            principal=principal,
        )
    if principal is not None:
        twofold.sessions.logout(principal, request_context(request))
    if target:
        separator = "&" if "?" in target else "?"
        location = f"{target}{separator}{urlencode({'state': state})}" if state else target
        response: Response = RedirectResponse(location, status_code=303)
    else:
        response = render(
            request,
            "message.html",
            {
                "title": "You are signed out",
                "message": "You are signed out of Twofold.",
                "back": "/login",
                "back_label": "Sign in",
            },
        )
    clear_cookie(response, SESSION_COOKIE)
    return response


# -- "Connected applications": what the user allowed, and withdrawing it ----------------------------------

APPLICATIONS = "/profile/applications"
WITHDRAWN_NOTICE = "Access removed. {name} will ask for your consent again."


@router.get(APPLICATIONS, response_class=HTMLResponse)
def applications(request: Request, removed: str | None = None) -> Response:
    principal = current_principal(request)
    if principal is None:
        return RedirectResponse(f"/login?next={APPLICATIONS}", status_code=303)
    # The link names the app by id, never by text, and is signed for this user: a crafted link can neither put
    # words on the page nor claim that access was removed.
    name = None
    if removed:
        app_id, _, signature = removed[:200].partition(".")
        if twofold_of(request).mac.verify(f"consent-withdrawn:{principal.user.id}:{app_id}", signature):
            name = twofold_of(request).oauth.application_name(principal, app_id)
    return _applications_page(request, principal, notice=WITHDRAWN_NOTICE.format(name=name) if name else None)


def _applications_page(
    request: Request, principal: Principal, *, notice: str | None = None, error: str | None = None, status: int = 200
) -> HTMLResponse:
    views = twofold_of(request).oauth.consents(principal)
    listed = [(view, [SCOPE_WORDS.get(scope, scope) for scope in view.scopes]) for view in views]
    return render(
        request,
        "applications.html",
        {"applications": listed, "notice": notice, "error": error},
        principal=principal,
        status=status,
    )


@router.post(APPLICATIONS, response_class=HTMLResponse)
async def withdraw(request: Request) -> Response:
    """ "Remove access" for one application: its refresh tokens end and it asks for consent again."""
    try:
        form = await read_form(request)
    except Forbidden as error:
        return csrf_refused(request, error)
    principal = current_principal(request)
    if principal is None:
        return RedirectResponse(f"/login?next={APPLICATIONS}", status_code=303)
    app_id = form.get("app_id", "")[:64]
    try:
        twofold_of(request).oauth.withdraw_consent(principal, app_id, request_context(request))
    except NotFound:
        return _applications_page(
            request, principal, error="That application no longer has access to your account.", status=404
        )
    signature = twofold_of(request).mac.sign(f"consent-withdrawn:{principal.user.id}:{app_id}")
    return RedirectResponse(f"{APPLICATIONS}?{urlencode({'removed': f'{app_id}.{signature}'})}", status_code=303)
