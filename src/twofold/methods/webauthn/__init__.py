"""Built-in authenticators and security keys (R8 ``platform_authenticator``, ``security_key``): WebAuthn
on py_webauthn. ``ceremonies`` holds the relying-party checks, ``method`` the two method types."""

from .ceremonies import Assertion, ClonedAuthenticator, Credential, RelyingParty, WebAuthnError
from .method import PlatformAuthenticatorMethod, SecurityKeyMethod, WebAuthnMethod, lookup_key

__all__ = [
    "Assertion",
    "ClonedAuthenticator",
    "Credential",
    "PlatformAuthenticatorMethod",
    "RelyingParty",
    "SecurityKeyMethod",
    "WebAuthnError",
    "WebAuthnMethod",
    "lookup_key",
]
