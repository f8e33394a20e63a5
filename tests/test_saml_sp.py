"""SAML 2.0 as a service provider (issue 8; SECURITY.md): Twofold's requests are signed and ask for MFA, and a
Response is accepted only when its assertion is signed by the provider's key, untouched, within its validity
window, for this SP (audience), for our ACS (Destination and Recipient), from the provider's entity id, and in
answer to the one request we sent (InResponseTo). `sso/saml.py` against a pysaml2 identity provider of the test."""

from __future__ import annotations

import base64
import zlib
from urllib.parse import parse_qs, urlsplit

import pytest

from twofold.sso import saml
from twofold.sso.saml import SamlError

from .support.saml_idp import PASSWORD, REFEDS_MFA, SamlIdentityProvider, tamper

BASE = "http://localhost:8000/sso/saml/idp1"


@pytest.fixture(scope="module")
def sp() -> saml.ServiceProvider:
    return saml.ServiceProvider(f"{BASE}/metadata", f"{BASE}/acs", *saml.new_key_pair("twofold-sp"))


@pytest.fixture(scope="module")
def idp(sp: saml.ServiceProvider) -> SamlIdentityProvider:
    provider = SamlIdentityProvider.create()
    provider.trust(saml.sp_metadata(sp))
    other = saml.ServiceProvider("https://other.example/sp", "https://other.example/acs", *saml.new_key_pair("other"))
    provider.trust(saml.sp_metadata(other))  # the IdP also serves another SP (for the audience test)
    return provider


def request(sp: saml.ServiceProvider, idp: SamlIdentityProvider) -> tuple[str, str]:
    return saml.authn_request(
        sp, idp.metadata_xml, idp_entity=idp.entity_id, relay_state="relay-1", mfa_classes=[REFEDS_MFA]
    )


def parse(sp: saml.ServiceProvider, idp: SamlIdentityProvider, response: str, request_id: str) -> saml.Assertion:
    return saml.parse_response(sp, idp.metadata_xml, response, request_id=request_id, idp_entity=idp.entity_id)


def test_the_metadata_names_the_provider_and_the_sp_metadata_is_ours(sp, idp):
    assert saml.idp_entity_id(idp.metadata_xml) == idp.entity_id
    metadata = saml.sp_metadata(sp)
    assert f'entityID="{sp.entity_id}"' in metadata
    assert sp.acs_url in metadata and "HTTP-POST" in metadata
    assert "PRIVATE KEY" not in metadata
    assert 'AuthnRequestsSigned="true"' in metadata and 'WantAssertionsSigned="true"' in metadata


@pytest.mark.parametrize(
    "metadata",
    [
        "not xml",
        "<a/>",
        '<!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>',
        "<EntityDescriptor xmlns='urn:oasis:names:tc:SAML:2.0:metadata'/>",
    ],
)
def test_unusable_metadata_is_refused_with_a_reason(metadata):
    with pytest.raises(SamlError):
        saml.idp_entity_id(metadata)


def test_the_request_is_signed_and_asks_for_mfa(sp, idp):
    request_id, url = request(sp, idp)
    query = parse_qs(urlsplit(url).query)
    assert url.startswith(idp.sso_url)
    assert query["RelayState"] == ["relay-1"]
    assert query["SigAlg"] == ["http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"] and query["Signature"][0]
    xml = zlib.decompress(base64.b64decode(query["SAMLRequest"][0]), -15).decode()
    assert f'ID="{request_id}"' in xml
    assert REFEDS_MFA in xml and f"{BASE}/acs" in xml


def test_a_signed_answer_gives_the_subject_attributes_and_authn_context(sp, idp):
    request_id, url = request(sp, idp)
    response, relay = idp.respond(url)
    assertion = parse(sp, idp, response, request_id)
    assert relay == "relay-1"
    assert assertion.subject == "opaque-bob"
    assert assertion.issuer == idp.entity_id
    assert assertion.attributes["mail"] == ["bob@example.com"]
    assert assertion.class_ref == REFEDS_MFA
    assert assertion.in_response_to == request_id
    assert assertion.assertion_id and assertion.authn_instant is not None and assertion.not_on_or_after > 0


def test_a_password_only_context_is_reported_as_such(sp, idp):
    request_id, url = request(sp, idp)
    response, _ = idp.respond(url, class_ref=PASSWORD)
    assert parse(sp, idp, response, request_id).class_ref == PASSWORD  # the MFA policy decides (services/sso.py)


def test_a_tampered_assertion_is_refused(sp, idp):
    request_id, url = request(sp, idp)
    response, _ = idp.respond(url)
    with pytest.raises(SamlError, match="refused"):
        parse(sp, idp, tamper(response, "bob@example.com", "mallory@example.com"), request_id)


def test_an_unsigned_assertion_is_refused_even_in_a_signed_response(sp, idp):
    request_id, url = request(sp, idp)
    response, _ = idp.respond(url, sign_assertion=False, sign_response=True)
    with pytest.raises(SamlError, match="Signature"):
        parse(sp, idp, response, request_id)


def test_an_assertion_signed_by_another_key_is_refused(sp, idp):
    impostor = SamlIdentityProvider.create(entity_id=idp.entity_id)  # same entity id, its own key
    impostor.trust(saml.sp_metadata(sp))
    request_id, url = request(sp, idp)
    response, _ = impostor.respond(url)
    with pytest.raises(SamlError):
        parse(sp, idp, response, request_id)


def test_an_expired_assertion_is_refused(sp, idp):
    request_id, url = request(sp, idp)
    response, _ = idp.respond(url, hours_ago=2)
    with pytest.raises(SamlError):
        parse(sp, idp, response, request_id)


def test_an_assertion_for_another_sp_is_refused(sp, idp):
    request_id, url = request(sp, idp)
    response, _ = idp.respond(url, overrides={"sp_entity_id": "https://other.example/sp"})
    with pytest.raises(SamlError):
        parse(sp, idp, response, request_id)


def test_an_answer_to_another_request_or_to_none_is_refused(sp, idp):
    _, url = request(sp, idp)
    response, _ = idp.respond(url)
    other_id, _ = request(sp, idp)
    with pytest.raises(SamlError, match="Unsolicited"):
        parse(sp, idp, response, other_id)


def test_an_answer_for_another_destination_is_refused(sp, idp):
    request_id, url = request(sp, idp)
    response, _ = idp.respond(url, overrides={"destination": "https://other.example/acs"})
    with pytest.raises(SamlError, match=r"destination|recipient|verify"):
        parse(sp, idp, response, request_id)


def test_an_answer_from_another_issuer_is_refused(sp, idp):
    request_id, url = request(sp, idp)
    response, _ = idp.respond(url)
    with pytest.raises(SamlError):
        saml.parse_response(
            sp, idp.metadata_xml, response, request_id=request_id, idp_entity="https://someone-else.example/idp"
        )


@pytest.mark.parametrize("garbage", ["", "%%%", base64.b64encode(b"<x/>").decode(), "A" * 10])
def test_garbage_is_a_saml_error_never_a_crash(sp, idp, garbage):
    request_id, _ = request(sp, idp)
    with pytest.raises(SamlError):
        parse(sp, idp, garbage, request_id)
