"""External identity providers of an organization (API.md "identity-providers"; R2). Writes are ★: an
administrator's session with a fresh step-up; connected apps cannot change providers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from twofold.services.identity_providers import ProviderView

from ..deps import App, Context, CurrentActor
from .schemas import IdentityProviderBody, IdentityProviderUpdateBody

router = APIRouter(prefix="/api/v1/organizations/{org}/identity-providers", tags=["administration"])


def provider_body(view: ProviderView) -> dict[str, Any]:
    provider, settings = view.provider, view.oidc
    body: dict[str, Any] = {
        "id": provider.id,
        "type": provider.type,
        "name": provider.name,
        "issuer": provider.issuer,
        "login_url": view.login_url,
        "users": view.users,
        "created_at": provider.created_at.isoformat(),
    }
    if view.saml is not None:
        body.update(
            {
                "acs_url": view.acs_url,
                "sp_metadata_url": view.sp_metadata_url,
                "sp_entity_id": view.sp_metadata_url,
                "metadata_url": view.saml.metadata_url,
                "claim_mapping": view.saml.claims,
                "jit_provisioning": view.saml.jit_provisioning,
                "allowed_email_domains": view.saml.allowed_email_domains,
                "require_mfa": view.saml.require_mfa,
                "accepted_authn_contexts": view.saml.accepted_authn_contexts,
            }
        )
    if settings is not None:
        body.update(
            {
                "redirect_uri": view.redirect_uri,
                "client_id": settings.client_id,
                "token_endpoint_auth_method": settings.auth_method,
                "jwks": settings.public_jwks(),  # register this at the provider for private_key_jwt
                "scopes": settings.scopes,
                "claim_mapping": settings.claims,
                "jit_provisioning": settings.jit_provisioning,
                "allowed_email_domains": settings.allowed_email_domains,
                "require_mfa": settings.require_mfa,
                "accepted_amr": settings.accepted_amr,
            }
        )
    return body


@router.post("", status_code=201, summary="Add an external identity provider (OpenID Connect or SAML 2.0) ★")
def create_identity_provider(
    org: str, body: IdentityProviderBody, principal: CurrentActor, twofold: App, context: Context
) -> JSONResponse:
    view = twofold.identity_providers.create(principal, org, body.model_dump(exclude_none=True), context)
    return JSONResponse(provider_body(view), status_code=201)


@router.get("/{provider_id}", summary="An external identity provider")
def identity_provider(org: str, provider_id: str, principal: CurrentActor, twofold: App) -> dict[str, Any]:
    return provider_body(twofold.identity_providers.get(principal, org, provider_id))


@router.patch("/{provider_id}", summary="Change an external identity provider ★")
def update_identity_provider(
    org: str,
    provider_id: str,
    body: IdentityProviderUpdateBody,
    principal: CurrentActor,
    twofold: App,
    context: Context,
) -> dict[str, Any]:
    changes = body.model_dump(exclude_none=True)
    return provider_body(twofold.identity_providers.update(principal, org, provider_id, changes, context))


@router.delete("/{provider_id}", status_code=204, summary="Remove an external identity provider with no users ★")
def delete_identity_provider(
    org: str, provider_id: str, principal: CurrentActor, twofold: App, context: Context
) -> Response:
    twofold.identity_providers.delete(principal, org, provider_id, context)
    return Response(status_code=204)
