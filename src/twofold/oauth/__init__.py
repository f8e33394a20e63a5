"""OAuth 2.0 and OpenID Connect (R5): connected apps' credentials, signing keys, tokens."""
