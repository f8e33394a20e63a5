"""Sign-in at an upstream SAML 2.0 identity provider, as a service provider, on pysaml2 (with Debian's xmlsec1).

Twofold sends a signed AuthnRequest (HTTP-Redirect binding) and takes the Response at its ACS (HTTP-POST). pysaml2
verifies the signatures (``want_assertions_signed``: an unsigned or tampered assertion is refused), the validity
window, the audience and InResponseTo against the one request we expect. What it leaves to its caller, and this
module does (SAML 2.0 Core §3.4, Profiles §4.1.4.3): a Response that failed verification softly (no assertion),
the Destination and every SubjectConfirmationData Recipient equal to our ACS, the issuer equal to the provider's
entity id; the assertion id is returned for the caller's replay cache, and the AuthnContextClassRef for its MFA
policy. Each check that fails raises ``SamlError`` naming it.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from defusedxml import ElementTree
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.client import Saml2Client
from saml2.config import SPConfig
from saml2.metadata import entity_descriptor, metadata_tostring_fix
from saml2.saml import NAMEID_FORMAT_PERSISTENT, AuthnContextClassRef
from saml2.samlp import RequestedAuthnContext
from saml2.sigver import SIG_RSA_SHA256

METADATA_NS = "urn:oasis:names:tc:SAML:2.0:metadata"
CLOCK_SKEW = 60  # seconds allowed between us and the provider on NotBefore / NotOnOrAfter


class SamlError(Exception):
    """The provider's metadata or response cannot be used; the message names the check that failed."""


@dataclass(frozen=True)
class ServiceProvider:
    """Twofold as the SAML service provider of one identity provider."""

    entity_id: str
    acs_url: str
    key_pem: str
    cert_pem: str


@dataclass(frozen=True)
class Assertion:
    subject: str
    issuer: str
    attributes: dict[str, list[str]]
    assertion_id: str
    in_response_to: str
    class_ref: str | None
    authn_instant: dt.datetime | None
    not_on_or_after: float


def new_key_pair(common_name: str) -> tuple[str, str]:
    """An RSA-2048 key and a self-signed certificate (10 years) for signing AuthnRequests, as PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return key_pem, cert.public_bytes(serialization.Encoding.PEM).decode()


def idp_entity_id(metadata_xml: str) -> str:
    """The entity id of the one identity provider the metadata describes, with a Redirect-binding SSO service."""
    try:
        root = ElementTree.fromstring(metadata_xml)  # defusedxml: no entity expansion, no external references
    except (ElementTree.ParseError, ValueError) as error:
        raise SamlError(f"the metadata is not XML ({error})") from None
    entities = (
        [root]
        if root.tag == f"{{{METADATA_NS}}}EntityDescriptor"
        else root.findall(f"{{{METADATA_NS}}}EntityDescriptor")
    )
    providers = [e for e in entities if e.find(f"{{{METADATA_NS}}}IDPSSODescriptor") is not None]
    if len(providers) != 1:
        raise SamlError("the metadata must describe exactly one identity provider")
    descriptor = providers[0].find(f"{{{METADATA_NS}}}IDPSSODescriptor")
    assert descriptor is not None
    bindings = {s.get("Binding") for s in descriptor.findall(f"{{{METADATA_NS}}}SingleSignOnService")}
    if BINDING_HTTP_REDIRECT not in bindings:
        raise SamlError("the identity provider offers no HTTP-Redirect SingleSignOnService")
    if descriptor.find(".//{http://www.w3.org/2000/09/xmldsig#}X509Certificate") is None:
        raise SamlError("the metadata holds no signing certificate of the identity provider")
    entity_id = str(providers[0].get("entityID") or "")
    if not entity_id:
        raise SamlError("the identity provider has no entityID")
    return entity_id


def xmlsec_binary() -> str:
    found = shutil.which("xmlsec1")
    if found is None:
        raise SamlError("xmlsec1 is not installed on this server (Debian: apt-get install xmlsec1)")
    return found


@contextlib.contextmanager
def _client(sp: ServiceProvider, idp_metadata_xml: str | None, *, with_key: bool) -> Iterator[Saml2Client]:
    """A pysaml2 client trusting only this provider's metadata. pysaml2 hands keys to xmlsec1 by path: they are
    written to a private temporary directory for the call and removed after it."""
    with tempfile.TemporaryDirectory(prefix="twofold-saml-") as folder:
        cert_file = os.path.join(folder, "sp.crt")
        with open(cert_file, "w") as handle:
            handle.write(sp.cert_pem)
        config: dict[str, Any] = {
            "entityid": sp.entity_id,
            "xmlsec_binary": xmlsec_binary(),
            "cert_file": cert_file,
            "accepted_time_diff": CLOCK_SKEW,
            "allow_unknown_attributes": True,
            "service": {
                "sp": {
                    "name": "Twofold",
                    "endpoints": {"assertion_consumer_service": [(sp.acs_url, BINDING_HTTP_POST)]},
                    "allow_unsolicited": False,
                    "want_assertions_signed": True,
                    "want_response_signed": False,  # many providers sign the assertion only; one present is checked
                    "authn_requests_signed": True,  # published in the metadata; requests are signed
                    "name_id_format": [NAMEID_FORMAT_PERSISTENT],
                    "name_id_format_allow_create": True,
                }
            },
        }
        if with_key:
            key_file = os.path.join(folder, "sp.key")
            descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(sp.key_pem)
            config["key_file"] = key_file
        if idp_metadata_xml is not None:
            config["metadata"] = {"inline": [idp_metadata_xml]}
        try:
            settings = SPConfig().load(config)
            yield Saml2Client(config=settings)
        except SamlError:
            raise
        except Exception as error:  # pysaml2 raises plain Exceptions for bad metadata
            raise SamlError(f"the provider's metadata cannot be used ({error.__class__.__name__})") from None


def sp_metadata(sp: ServiceProvider) -> str:
    """Twofold's SP metadata for this provider (public: the provider's administrator imports it)."""
    with _client(sp, None, with_key=False) as client:
        descriptor = entity_descriptor(client.config)
        import saml2.md
        import saml2.xmldsig

        xml = metadata_tostring_fix(descriptor, {"md": saml2.md.NAMESPACE, "ds": saml2.xmldsig.NAMESPACE})
        return xml.decode() if isinstance(xml, bytes) else str(xml)


def authn_request(
    sp: ServiceProvider,
    idp_metadata_xml: str,
    *,
    idp_entity: str,
    relay_state: str,
    mfa_classes: list[str],
    force_authn: bool = False,
) -> tuple[str, str]:
    """A signed AuthnRequest asking for one of ``mfa_classes`` (minimum comparison); returns its id (the
    InResponseTo the answer must carry) and the provider's URL to send the browser to."""
    requested = RequestedAuthnContext(
        authn_context_class_ref=[AuthnContextClassRef(text=ref) for ref in mfa_classes], comparison="minimum"
    )
    with _client(sp, idp_metadata_xml, with_key=True) as client:
        try:
            request_id, info = client.prepare_for_authenticate(
                entityid=idp_entity,
                relay_state=relay_state,
                binding=BINDING_HTTP_REDIRECT,
                requested_authn_context=requested if mfa_classes else None,
                sign=True,
                sigalg=SIG_RSA_SHA256,
                **({"force_authn": "true"} if force_authn else {}),  # a step-up: sign in again (Core §3.4.1)
            )
        except Exception as error:
            raise SamlError(f"no request can be made for this provider ({error.__class__.__name__})") from None
    location = dict(info["headers"]).get("Location")
    if not location:
        raise SamlError("the provider has no sign-in address for the Redirect binding")
    return str(request_id), str(location)


def parse_response(
    sp: ServiceProvider, idp_metadata_xml: str, saml_response: str, *, request_id: str, idp_entity: str
) -> Assertion:
    """The verified assertion of a Response to ``request_id`` (HTTP-POST binding, base64)."""
    try:
        base64.b64decode(saml_response, validate=True)
    except (ValueError, TypeError):
        raise SamlError("the SAMLResponse is not base64") from None
    with _client(sp, idp_metadata_xml, with_key=False) as client:
        try:
            response = client.parse_authn_request_response(
                saml_response,
                BINDING_HTTP_POST,
                outstanding={request_id: "/"},
                conv_info={"entity_id": sp.entity_id},  # makes pysaml2 check the Recipient too
            )
        except Exception as error:  # signature, validity window, audience (a bare Exception), InResponseTo, status
            raise SamlError(f"the response was refused ({error.__class__.__name__}: {str(error)[:120]})") from None
    if response is None or response.assertion is None or response.name_id is None:
        raise SamlError("the response did not verify (destination, issue instant or structure)")
    if response.response.destination not in (None, sp.acs_url):
        raise SamlError("the response is for another destination")
    for confirmation in response.assertion.subject.subject_confirmation:
        data = confirmation.subject_confirmation_data
        if data is None or data.recipient != sp.acs_url:
            raise SamlError("the assertion is for another recipient")
    if response.issuer() != idp_entity or response.assertion.issuer.text != idp_entity:
        raise SamlError("the response comes from another issuer")
    if response.in_response_to != request_id:
        raise SamlError("the response answers another request")
    authn = response.authn_info()
    class_ref = authn[0][0] if authn else None
    instant = None
    if response.assertion.authn_statement and response.assertion.authn_statement[0].authn_instant:
        with contextlib.suppress(ValueError):
            instant = dt.datetime.fromisoformat(
                response.assertion.authn_statement[0].authn_instant.replace("Z", "+00:00")
            )
    attributes = {str(k): [str(v) for v in values] for k, values in (response.ava or {}).items()}
    return Assertion(
        subject=str(response.name_id.text),
        issuer=idp_entity,
        attributes=attributes,
        assertion_id=str(response.assertion.id),
        in_response_to=request_id,
        class_ref=class_ref,
        authn_instant=instant,
        not_on_or_after=float(response.not_on_or_after or 0),
    )
