"""Upstream identity providers (R2): OpenID Connect and SAML 2.0 sign-ins at an organization's own provider,
which does the user's MFA. One module per protocol; ``mfa`` judges what a provider asserted."""
