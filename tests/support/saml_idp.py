"""A SAML 2.0 identity provider run by the tests (pysaml2's Server with its own key and certificate): an external
party to Twofold, as a company's IdP would be. It reads the AuthnRequest Twofold sends (HTTP-Redirect) and answers
with a Response for the HTTP-POST binding, signed or not, for this SP or another, now or an hour ago."""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime as dt
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import saml2
import saml2.time_util
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT, saml
from saml2.config import IdPConfig
from saml2.metadata import entity_descriptor, metadata_tostring_fix
from saml2.saml import NAMEID_FORMAT_PERSISTENT, NameID
from saml2.server import Server

from twofold.sso.saml import new_key_pair

REFEDS_MFA = "https://refeds.org/profile/mfa"
PASSWORD = saml.AUTHN_PASSWORD_PROTECTED


def _key_pair(folder: str, name: str) -> tuple[str, str]:
    """The IdP's own signing key and certificate, as files (pysaml2 hands them to xmlsec1 by path)."""
    key_pem, cert_pem = new_key_pair(name)
    key_path, cert_path = os.path.join(folder, f"{name}.key"), os.path.join(folder, f"{name}.crt")
    for path, pem in ((key_path, key_pem), (cert_path, cert_pem)):
        with open(path, "w") as handle:
            handle.write(pem)
    return key_path, cert_path


def _metadata(config: IdPConfig) -> str:
    xml = metadata_tostring_fix(entity_descriptor(config), {"md": saml2.md.NAMESPACE, "ds": saml2.xmldsig.NAMESPACE})
    return xml.decode() if isinstance(xml, bytes) else str(xml)


@dataclass
class SamlIdentityProvider:
    entity_id: str
    sso_url: str
    folder: str
    key_file: str
    cert_file: str
    sp_metadata: list[str]

    @classmethod
    def create(cls, entity_id: str = "https://idp.example.org/saml") -> SamlIdentityProvider:
        folder = tempfile.mkdtemp(prefix="test-idp-")
        key_file, cert_file = _key_pair(folder, "idp")
        return cls(entity_id, f"{entity_id}/sso", folder, key_file, cert_file, [])

    def _config(self, *, with_sps: bool, lifetime_minutes: int = 5) -> IdPConfig:
        config: dict[str, Any] = {
            "entityid": self.entity_id,
            "xmlsec_binary": "/usr/bin/xmlsec1",
            "key_file": self.key_file,
            "cert_file": self.cert_file,
            "service": {
                "idp": {
                    "name": "Test IdP",
                    "endpoints": {"single_sign_on_service": [(self.sso_url, BINDING_HTTP_REDIRECT)]},
                    "policy": {
                        "default": {
                            "lifetime": {"minutes": lifetime_minutes},
                            "name_form": saml.NAME_FORMAT_URI,
                            "attribute_restrictions": None,
                        }
                    },
                    "name_id_format": [NAMEID_FORMAT_PERSISTENT],
                    "sign_response": True,
                    "sign_assertion": True,
                }
            },
        }
        if with_sps:
            config["metadata"] = {"inline": list(self.sp_metadata)}
        return IdPConfig().load(copy.deepcopy(config))

    @property
    def metadata_xml(self) -> str:
        return _metadata(self._config(with_sps=False))

    def trust(self, sp_metadata_xml: str) -> None:
        """Register a service provider (its metadata, as the IdP's administrator would import it)."""
        self.sp_metadata.append(sp_metadata_xml)

    def respond(
        self,
        redirect_url: str,
        *,
        subject: str = "opaque-bob",
        attributes: dict[str, list[str]] | None = None,
        class_ref: str = REFEDS_MFA,
        sign_assertion: bool = True,
        sign_response: bool = True,
        overrides: dict[str, Any] | None = None,
        hours_ago: float = 0,
    ) -> tuple[str, str | None]:
        """The (SAMLResponse, RelayState) for the AuthnRequest in ``redirect_url``. ``hours_ago`` answers as if
        the IdP's own clock were that far behind (an assertion that has since expired)."""
        query = parse_qs(urlsplit(redirect_url).query)
        server = Server(config=self._config(with_sps=True))
        request = server.parse_authn_request(query["SAMLRequest"][0], BINDING_HTTP_REDIRECT)
        arguments = server.response_args(request.message)
        assert arguments["binding"] == BINDING_HTTP_POST
        arguments.update(overrides or {})
        shift = hours_ago * 3600
        with _idp_clock_behind(shift):
            response = server.create_authn_response(
                identity=attributes or {"uid": ["bob"], "mail": ["bob@example.com"], "displayName": ["Bob Builder"]},
                userid="bob",
                name_id=NameID(format=NAMEID_FORMAT_PERSISTENT, text=subject),
                authn={"class_ref": class_ref, "authn_instant": int(time.time() - shift) - 5},
                sign_assertion=sign_assertion,
                sign_response=sign_response,
                **arguments,
            )
        relay = query.get("RelayState", [None])[0]
        return base64.b64encode(str(response).encode()).decode(), relay


class _ShiftedTime:
    """The ``time`` module as pysaml2's time_util sees it, ``seconds`` behind."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def time(self) -> float:
        return time.time() - self.seconds

    def gmtime(self, moment: float | None = None) -> time.struct_time:
        return time.gmtime(self.time() if moment is None else moment)


@contextlib.contextmanager
def _idp_clock_behind(seconds: float) -> Iterator[None]:
    """This IdP's clock only (it issues IssueInstant, NotBefore and NotOnOrAfter through saml2.time_util)."""
    if not seconds:
        yield
        return

    class ShiftedDatetime(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> ShiftedDatetime:  # type: ignore[override]
            return super().now(tz) - dt.timedelta(seconds=seconds)

    with (
        mock.patch.object(saml2.time_util, "time", _ShiftedTime(seconds)),
        mock.patch.object(saml2.time_util, "datetime", ShiftedDatetime),
    ):
        yield


def tamper(saml_response: str, old: str, new: str) -> str:
    xml = base64.b64decode(saml_response).decode()
    assert old in xml
    return base64.b64encode(xml.replace(old, new).encode()).decode()
