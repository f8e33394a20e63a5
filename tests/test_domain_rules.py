"""Pure rules of the domain: usernames, names, passwords, amr/acr, exemptions, back-off."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from twofold.domain.entities import Exemption, User
from twofold.domain.errors import ValidationFailed
from twofold.domain.rules import (
    acr_for,
    check_password_policy,
    clean_display_name,
    clean_email,
    clean_username,
    exemption_applies,
    mfa_amr,
    username_key,
    validate_kind,
)
from twofold.services.throttle import _backoff

NOW = datetime(2026, 1, 1, tzinfo=UTC)
CUTOFF = date(2023, 8, 1)


def test_usernames_compare_after_nfkc_and_case_folding():
    assert username_key("Alice") == username_key("ALICE") == username_key("alice")
    assert username_key("Ｂｏｂ") == username_key("bob")  # fullwidth letters fold by NFKC
    assert username_key("Straße") == username_key("STRASSE")
    assert username_key("ﬁle") == username_key("file")


@pytest.mark.parametrize("bad", ["", "   ", "a b", "tab\tname", "nul\x00", "x" * 129, "bell\x07"])
def test_bad_usernames_are_refused(bad):
    with pytest.raises(ValidationFailed):
        clean_username(bad)


def test_display_names_are_trimmed_printable_and_bounded():
    assert clean_display_name("  Phone  ") == "Phone"
    for bad in ["", "   ", "x" * 65, "line\nbreak", "\u202e"]:
        with pytest.raises(ValidationFailed):
            clean_display_name(bad)


def test_email_shape():
    assert clean_email(" a@example.com ") == "a@example.com"
    for bad in ["a", "a@", "@example.com", "a@localhost", "a b@example.com"]:
        with pytest.raises(ValidationFailed):
            clean_email(bad)


def test_password_policy_is_length_and_breach_lists_only():
    check_password_policy("lowercase only passphrase", kind="user", username="u", is_common=False)
    check_password_policy("x" * 64, kind="user", username="u", is_common=False)
    check_password_policy("12345678", kind="user", username="u", is_common=False)  # no composition rules
    with pytest.raises(ValidationFailed):
        check_password_policy("short", kind="user", username="u", is_common=False)
    with pytest.raises(ValidationFailed):
        check_password_policy("fourteen chars", kind="service", username="u", is_common=False)
    check_password_policy("fifteen chars!!", kind="service", username="u", is_common=False)
    with pytest.raises(ValidationFailed):
        check_password_policy("x" * 129, kind="user", username="u", is_common=False)
    with pytest.raises(ValidationFailed):
        check_password_policy("password1", kind="user", username="u", is_common=True)
    with pytest.raises(ValidationFailed):
        check_password_policy("Alice.Smith", kind="user", username="alice.smith", is_common=False)


def test_kind_and_service_type():
    assert validate_kind("service", "rpa") == ("service", "rpa")
    assert validate_kind("user", None) == ("user", None)
    for kind, service_type in [("service", None), ("user", "rpa"), ("robot", None), ("service", "other")]:
        with pytest.raises(ValidationFailed):
            validate_kind(kind, service_type)


def test_amr_and_acr():
    assert mfa_amr(("otp",)) == ["pwd", "otp", "mfa"]
    assert mfa_amr(()) == ["pwd", "mfa"]
    assert acr_for(["pwd"]) == "0"
    assert acr_for(["pwd", "otp", "mfa"]) == "urn:twofold:acr:mfa"
    assert acr_for(["pwd", "hwk", "user", "mfa"]) == "phr"
    assert acr_for(["pwd", "swk", "user", "mfa"]) == "phr"
    assert acr_for(["pwd", "swk", "mfa"]) == "urn:twofold:acr:mfa"  # push


def _account(kind: str, service_type: str | None = None, subject: str | None = None) -> User:
    return User(organization_id="o", identity_provider_id="p", username="u", username_key="u", email="u@e.com",
                kind=kind, service_type=service_type, external_subject=subject)


def _exemption(days: int) -> Exemption:
    return Exemption(identity_provider_id="p", user_id="u", expires_at=NOW + timedelta(days=days))


def test_exemptions_apply_only_to_local_service_accounts_until_expiry():
    service = _account("service", "test_automation")
    assert exemption_applies(service, _exemption(10), now=NOW, cutoff=CUTOFF)
    assert not exemption_applies(service, _exemption(-1), now=NOW, cutoff=CUTOFF)  # expired
    assert not exemption_applies(service, None, now=NOW, cutoff=CUTOFF)
    assert not exemption_applies(_account("service", "rpa", subject="sso"), _exemption(10), now=NOW, cutoff=CUTOFF)
    human = _account("user")
    assert not exemption_applies(human, _exemption(10), now=NOW, cutoff=CUTOFF)  # after the cut-off
    before_cutoff = datetime(2023, 7, 1, tzinfo=UTC)
    assert exemption_applies(human, Exemption(identity_provider_id="p", user_id="u",
                                              expires_at=before_cutoff + timedelta(days=5)),
                             now=before_cutoff, cutoff=CUTOFF)


def test_backoff_doubles_after_the_free_attempts_and_is_capped():
    delays = [_backoff(n, free=5, base=1.0, maximum=900) for n in range(1, 20)]
    assert delays[:5] == [0.0] * 5
    assert delays[5:9] == [1.0, 2.0, 4.0, 8.0]
    assert max(delays) == 900
    assert _backoff(10_000, free=5, base=1.0, maximum=900) == 900
