"""Scopes by kind of connected app (API.md "OAuth 2.0 / OpenID Connect")."""

from __future__ import annotations

from twofold.domain.entities import GrantType

#: an app acting on its own behalf gets admin-API permissions of its organization, nothing more
ADMIN_SCOPES = ("users:read", "users:write", "mfa:reset", "exempt_accounts:write", "audit:read", "connected_apps:write")
#: an app acting on behalf of a user signs them in with OpenID Connect
USER_SCOPES = ("openid", "profile", "email", "offline_access")

ALLOWED = {
    GrantType.CLIENT_CREDENTIALS.value: frozenset(ADMIN_SCOPES),
    GrantType.AUTHORIZATION_CODE.value: frozenset(USER_SCOPES),
}
