"""Request bodies. Unknown fields are refused, strings are bounded: bad input is a 422, never a 500."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StringConstraints, model_validator

from twofold.domain.clock import rfc3339

Short = Annotated[str, StringConstraints(max_length=256)]
Username = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Password = Annotated[str, StringConstraints(max_length=1024)]
Token = Annotated[str, StringConstraints(min_length=1, max_length=512)]


def _encodable(value: Any) -> Any:
    """Free-form JSON (a method's proof) may carry a lone surrogate escaped as \\ud800, which no
    UTF-8 encoder accepts further on: refuse it here as a 422 instead of a 500 (typed str fields
    already refuse it)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("text must be valid Unicode") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _encodable(key)
            _encodable(item)
    elif isinstance(value, list):
        for item in value:
            _encodable(item)
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_encodable)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class LoginBody(Body):
    username: Username
    password: Password


class VerifyBody(Body):
    transaction: Token
    type: Short
    code: Annotated[str, StringConstraints(max_length=64)] | None = None
    credential: JsonObject | None = None
    challenge_id: Short | None = None

    def proof(self) -> dict[str, Any]:
        return self.model_dump(exclude={"transaction", "type"}, exclude_none=True)


class StepUpBody(Body):
    type: Short
    code: Annotated[str, StringConstraints(max_length=64)] | None = None
    credential: JsonObject | None = None
    challenge_id: Short | None = None

    def proof(self) -> dict[str, Any]:
        return self.model_dump(exclude={"type"}, exclude_none=True)


class WebAuthnOptionsBody(Body):
    transaction: Token
    type: Literal["platform_authenticator", "security_key"] | None = None


class StepUpWebAuthnOptionsBody(Body):
    type: Literal["platform_authenticator", "security_key"] | None = None


class EnrollBody(Body):
    transaction: Token
    type: Short
    name: Annotated[str, StringConstraints(max_length=256)] = ""


class EnrollCompleteBody(BaseModel):
    # A proof's fields belong to its method, so other fields are allowed here, and passed on.
    model_config = ConfigDict(extra="allow")
    transaction: Token
    enrollment_id: Short

    @model_validator(mode="after")
    def _proof_is_encodable(self) -> EnrollCompleteBody:
        _encodable(self.model_extra or {})
        return self

    def proof(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class MethodEnrollBody(Body):
    type: Short
    name: Annotated[str, StringConstraints(max_length=256)] = ""


class MethodRenameBody(Body):
    name: Annotated[str, StringConstraints(max_length=256)]


class MethodCompleteBody(BaseModel):
    # The proof's fields belong to the method (totp {code}, webauthn {credential}, push {}).
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _proof_is_encodable(self) -> MethodCompleteBody:
        _encodable(self.model_extra or {})
        return self

    def proof(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SetupBody(Body):
    token: Token
    password: Password


class PasswordResetRequestBody(Body):
    username: Username


class PasswordResetCompleteBody(Body):
    token: Token
    new_password: Password


class PasswordChangeBody(Body):
    current_password: Password
    new_password: Password


class BusinessGroupBody(Body):
    name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    parent_id: Short | None = None


Aaguid = Annotated[
    str, StringConstraints(pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
]


class OrganizationPolicyBody(Body):
    webauthn_attestation: Literal["none", "direct"] | None = None
    webauthn_allowed_aaguids: Annotated[list[Aaguid], Field(max_length=200)] | None = None


class CreateUserBody(Body):
    username: Username
    email: Annotated[str, StringConstraints(min_length=3, max_length=254)]
    display_name: Annotated[str, StringConstraints(max_length=256)] | None = None
    kind: Literal["user", "service"]
    service_type: Literal["test_automation", "rpa"] | None = None
    password: Password | None = None


class UpdateUserBody(Body):
    display_name: Annotated[str, StringConstraints(max_length=256)] | None = None
    email: Annotated[str, StringConstraints(min_length=3, max_length=254)] | None = None
    status: Literal["active", "disabled"] | None = None


class PushPairBody(Body):
    pairing_code: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    public_key: JsonObject
    device_name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    platform: Annotated[str, StringConstraints(min_length=1, max_length=64)]


class PushResponseBody(Body):
    response: Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class PushStartBody(Body):
    transaction: Token
    method_id: Short | None = None


class StepUpPushBody(Body):
    method_id: Short | None = None


ScopeName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
RedirectUri = Annotated[str, StringConstraints(min_length=1, max_length=2000)]


class ConnectedAppBody(Body):
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    grant_type: Literal["client_credentials", "authorization_code"]
    scopes: Annotated[list[ScopeName], Field(min_length=1, max_length=20)]
    redirect_uris: Annotated[list[RedirectUri], Field(max_length=10)] | None = None
    first_party: bool = False
    token_endpoint_auth_method: Literal["client_secret_basic", "client_secret_post", "private_key_jwt"] = (
        "client_secret_basic"
    )
    jwks: JsonObject | None = None


class ConnectedAppUpdateBody(Body):
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    scopes: Annotated[list[ScopeName], Field(min_length=1, max_length=20)] | None = None
    redirect_uris: Annotated[list[RedirectUri], Field(max_length=10)] | None = None
    enabled: bool | None = None


class SecretRotationBody(Body):
    grace_seconds: Annotated[int, Field(ge=0, le=604800)] | None = None


class ExemptionBody(Body):
    expires_at: datetime | None = None


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    code: str


def ts(value: datetime | None) -> str | None:
    return rfc3339(value)


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "content": {"application/problem+json": {}}}
    for status in (400, 401, 403, 404, 409, 410, 422, 429, 503)
}


class ClaimMapping(Body):
    username: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None
    email: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None


class IdentityProviderOptions(Body):
    scopes: Annotated[list[str], Field(min_length=1, max_length=50)] | None = None
    claim_mapping: ClaimMapping | None = None
    jit_provisioning: StrictBool | None = None
    allowed_email_domains: Annotated[list[str], Field(max_length=50)] | None = None
    require_mfa: StrictBool | None = None
    accepted_amr: Annotated[list[str], Field(min_length=1, max_length=50)] | None = None
    accepted_authn_contexts: Annotated[list[str], Field(min_length=1, max_length=50)] | None = None


class IdentityProviderBody(IdentityProviderOptions):
    type: Literal["oidc", "saml"]
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    issuer: Annotated[str, StringConstraints(min_length=1, max_length=500)] | None = None
    client_id: Annotated[str, StringConstraints(min_length=1, max_length=255)] | None = None
    client_secret: Annotated[str, StringConstraints(min_length=1, max_length=1000)] | None = None
    token_endpoint_auth_method: Literal["client_secret_basic", "client_secret_post", "private_key_jwt"] = (
        "client_secret_basic"
    )
    # No schema maximum: the request body limit (TWOFOLD_MAX_BODY_BYTES, 256 KiB) bounds it, and a provider's own
    # metadata is a few kilobytes.
    metadata_xml: Annotated[str, StringConstraints(min_length=1)] | None = None
    metadata_url: Annotated[str, StringConstraints(min_length=1, max_length=2000)] | None = None


class IdentityProviderUpdateBody(IdentityProviderOptions):
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    client_id: Annotated[str, StringConstraints(min_length=1, max_length=255)] | None = None
    metadata_xml: Annotated[str, StringConstraints(min_length=1)] | None = None
    client_secret: Annotated[str, StringConstraints(min_length=1, max_length=1000)] | None = None
