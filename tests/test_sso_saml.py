"""Single sign-on through a SAML 2.0 identity provider (issue 8): the administrator adds the provider from its
metadata, imports Twofold's public SP metadata there, and users sign in through the ACS. A pysaml2 identity
provider of the test (tests/support/saml_idp.py) answers; Twofold is the real app (TestClient). Covers the round
trip, the MFA policy on AuthnContextClassRef, replay (the same Response twice), a request's single use, and the
refusals of a tampered, unsigned, expired or wrong-audience assertion at the ACS."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import pytest

from twofold.container import Twofold

from .support.flows import Account, bearer, create_organization, enroll, login
from .support.saml_idp import PASSWORD, REFEDS_MFA, SamlIdentityProvider, tamper
from .test_connected_apps import audit_rows
from .test_pages import SESSION_COOKIE, set_cookies


@dataclass
class Corp:
    twofold: Twofold
    client: Any
    org: str
    alice: Account
    idp: SamlIdentityProvider
    provider: dict[str, Any]

    @property
    def idp_id(self) -> str:
        return str(self.provider["id"])

    def begin(self) -> str:
        """GET /login/sso/{id}: the 303 to the provider with a signed AuthnRequest; returns that URL."""
        response = self.client.get(f"/login/sso/{self.idp_id}", follow_redirects=False)
        assert response.status_code == 303, response.text
        return str(response.headers["location"])

    def post(self, saml_response: str, relay: str | None) -> Any:
        form = {"SAMLResponse": saml_response, **({"RelayState": relay} if relay else {})}
        return self.client.post(f"/sso/saml/{self.idp_id}/acs", data=form, follow_redirects=False)

    def sign_in(self, **answer: Any) -> Any:
        return self.post(*self.idp.respond(self.begin(), **answer))


@pytest.fixture(scope="module")
def idp() -> SamlIdentityProvider:
    return SamlIdentityProvider.create()


@pytest.fixture
def corp(twofold: Twofold, client: Any, idp: SamlIdentityProvider) -> Corp:
    organization, alice = create_organization(twofold)
    enroll(client, alice)
    created = client.post(
        f"/api/v1/organizations/{organization.id}/identity-providers",
        json={"type": "saml", "name": "Corp SAML", "metadata_xml": idp.metadata_xml},
        headers=bearer(alice.token),
    )
    assert created.status_code == 201, created.text
    provider = created.json()
    metadata = client.get(f"/sso/saml/{provider['id']}/metadata")  # public: no session
    assert metadata.status_code == 200
    idp.trust(metadata.text)
    return Corp(twofold, client, organization.id, alice, idp, provider)


def session_of(response: Any) -> str:
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/"
    return str(set_cookies(response)[SESSION_COOKIE]["value"])


def refused(response: Any, words: str) -> None:
    assert response.status_code == 403, response.text
    text = html.unescape(response.text)
    assert "Single sign-on did not complete" in text and words in text, text
    assert SESSION_COOKIE not in set_cookies(response)


def reasons(twofold: Twofold, event_type: str = "sso.refused") -> list[str]:
    return [row.details["reason"] for row in audit_rows(twofold, event_type)]


def test_the_provider_is_added_from_its_metadata_and_the_sp_metadata_is_public(corp):
    provider = corp.provider
    assert provider["type"] == "saml" and provider["name"] == "Corp SAML"
    assert provider["issuer"] == corp.idp.entity_id
    assert provider["acs_url"] == f"http://localhost:8000/sso/saml/{corp.idp_id}/acs"
    assert provider["sp_metadata_url"] == f"http://localhost:8000/sso/saml/{corp.idp_id}/metadata"
    assert provider["require_mfa"] is True and REFEDS_MFA in provider["accepted_authn_contexts"]
    metadata = corp.client.get(f"/sso/saml/{corp.idp_id}/metadata")
    assert metadata.headers["content-type"].startswith("application/samlmetadata+xml")
    assert provider["acs_url"] in metadata.text and "PRIVATE KEY" not in metadata.text
    assert corp.client.get("/sso/saml/0123456789abcdef0123456789abcdef/metadata").status_code == 404


@pytest.mark.parametrize("metadata", ["<not-metadata/>", "nonsense"])
def test_unusable_metadata_is_422(twofold, client, metadata):
    organization, alice = create_organization(twofold)
    enroll(client, alice)
    response = client.post(
        f"/api/v1/organizations/{organization.id}/identity-providers",
        json={"type": "saml", "name": "Broken", "metadata_xml": metadata},
        headers=bearer(alice.token),
    )
    assert response.status_code == 422, response.text


def test_a_signed_mfa_assertion_signs_a_federated_user_in(corp):
    token = session_of(corp.sign_in())
    me = corp.client.get("/api/v1/me", headers={"Cookie": f"{SESSION_COOKIE}={token}"}).json()
    assert me["username"] == "bob"
    assert me["email"] == "bob@example.com"
    assert me["identity_provider"]["type"] == "saml"
    assert me["identity_provider"]["external_subject"] == "opaque-bob"
    assert me["session"]["acr"] == REFEDS_MFA  # what the provider asserted, verbatim
    (event,) = audit_rows(corp.twofold, "login.succeeded")[-1:]
    assert event.details["method"] == "sso" and event.details["protocol"] == "saml"
    # The same subject again is the same user; the federated user has no local password.
    session_of(corp.sign_in())
    assert login(corp.client, Account(me_user(corp), "anything-at-all")).status_code == 401


def me_user(corp: Corp) -> Any:
    from twofold.storage import tables

    with corp.twofold.uow.engine.connect() as connection:
        (row,) = connection.execute(
            tables.users.select().where(tables.users.c.identity_provider_id == corp.idp_id)
        ).all()
    return row


def test_a_password_only_assertion_is_refused_by_the_mfa_policy(corp):
    refused(corp.sign_in(class_ref=PASSWORD), "without multi-factor authentication")
    (event,) = audit_rows(corp.twofold, "sso.mfa_missing")
    assert event.details["authn_context"] == PASSWORD


def test_the_same_response_twice_is_refused(corp):
    answer = corp.idp.respond(corp.begin())
    session_of(corp.post(*answer))
    refused(corp.post(*answer), "already been used")


def test_tampered_unsigned_expired_and_foreign_assertions_are_refused_at_the_acs(corp):
    response, relay = corp.idp.respond(corp.begin())
    refused(corp.post(tamper(response, "bob@example.com", "mallory@example.com"), relay), "cannot be trusted")
    refused(corp.post(*corp.idp.respond(corp.begin(), sign_assertion=False)), "cannot be trusted")
    refused(corp.post(*corp.idp.respond(corp.begin(), hours_ago=2)), "cannot be trusted")
    assert reasons(corp.twofold).count("invalid_response") == 3


def test_an_assertion_for_another_audience_is_refused(corp, idp):
    from twofold.sso import saml

    other = saml.ServiceProvider("https://other.example/sp", "https://other.example/acs", *saml.new_key_pair("o"))
    idp.trust(saml.sp_metadata(other))
    answer = idp.respond(corp.begin(), overrides={"sp_entity_id": other.entity_id})
    refused(corp.post(*answer), "cannot be trusted")


def test_an_answer_without_its_relay_state_or_with_another_is_refused(corp):
    response, _ = corp.idp.respond(corp.begin())
    refused(corp.post(response, None), "incomplete")
    refused(corp.post(response, "x" * 43), "unknown here")
    refused(corp.client.post(f"/sso/saml/{corp.idp_id}/acs", content=b"\x00\xff", follow_redirects=False), "incomplete")


def test_mfa_policy_can_be_relaxed_by_the_administrator(corp):
    changed = corp.client.patch(
        f"/api/v1/organizations/{corp.org}/identity-providers/{corp.idp_id}",
        json={"require_mfa": False},
        headers=bearer(corp.alice.token),
    )
    assert changed.status_code == 200, changed.text
    token = session_of(corp.sign_in(class_ref=PASSWORD))
    me = corp.client.get("/api/v1/me", headers={"Cookie": f"{SESSION_COOKIE}={token}"}).json()
    assert me["session"]["acr"] == PASSWORD


def test_the_console_adds_a_saml_provider_and_deletes_it(twofold, client, idp):
    from .test_profile_pages import browser_for

    organization, alice = create_organization(twofold)
    enroll(client, alice)
    browser = browser_for(client, alice)
    page = browser.get("/admin/identity-providers")
    assert page.status_code == 200 and "Add SAML 2.0 provider" in page.text
    csrf = html.unescape(page.text.split('name="csrf_token" value="')[1].split('"')[0])
    added = browser.post(
        "/admin/identity-providers",
        {
            "csrf_token": csrf,
            "type": "saml",
            "name": "Corp <SAML>",
            "metadata_xml": idp.metadata_xml,
            "require_mfa": "1",
        },
    )
    assert added.status_code == 200, added.text
    text = html.unescape(added.text)
    assert "Corp <SAML> was added." in text and "/metadata" in text
    assert "Corp &lt;SAML&gt;" in added.text  # escaped
    listed = client.get(
        f"/api/v1/organizations/{organization.id}/identity-providers", headers=bearer(alice.token)
    ).json()
    (saml_provider,) = [p for p in listed if p["type"] == "saml"]
    assert saml_provider["require_mfa"] is True

    refused_form = browser.post(
        "/admin/identity-providers", {"csrf_token": csrf, "type": "saml", "name": "Broken", "metadata_xml": "<x/>"}
    )
    assert refused_form.status_code == 422 and "cannot be used" in html.unescape(refused_form.text)

    deleted = browser.post(f"/admin/identity-providers/{saml_provider['id']}/delete", {"csrf_token": csrf})
    assert deleted.status_code == 303
    listed = client.get(
        f"/api/v1/organizations/{organization.id}/identity-providers", headers=bearer(alice.token)
    ).json()
    assert [p["type"] for p in listed] == ["local"]
