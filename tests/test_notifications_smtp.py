"""Email notices through a real SMTP server (aiosmtpd on 127.0.0.1): the security notices of API.md
(method added or removed, recovery code used, codes regenerated, MFA reset), the password-reset link
("Account set-up and recovery"), and the notifier's own promises: well-formed messages with no secret in
them, `?from=`, STARTTLS before login, certificates checked unless `?verify=false`, and a mail server
that is down failing no request and leaving nothing queued."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable, Iterator
from email.utils import parseaddr, parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from twofold.container import Twofold
from twofold.methods.registry import default_registry
from twofold.services.notifications import LogNotifier, SmtpNotifier
from twofold.web.app import create_app

from .conftest import PUBLIC_URL
from .support.flows import ADMIN_PASSWORD, USER_PASSWORD, bearer, create_organization, create_user, login
from .support.smtp import (
    ReceivedMail,
    SmtpServer,
    reserve_port,
    self_signed_server_context,
    smtp_server,
)
from .support.totp import TotpAccount, code_at_step, current_step, enroll_totp

NEW_PASSWORD = "a brand new and long passphrase"
DEFAULT_SENDER = "twofold@localhost"
RESET_LINK = re.compile(re.escape(PUBLIC_URL) + r"/password-reset/(\S+)")


@contextlib.contextmanager
def app_client(twofold: Twofold) -> Iterator[TestClient]:
    with TestClient(create_app(twofold, housekeeping=False), base_url=PUBLIC_URL) as test_client:
        yield test_client


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with smtp_server() as server:
        yield server


@pytest.fixture
def mailing(make_twofold: Any, smtp: SmtpServer) -> Iterator[tuple[Twofold, TestClient]]:
    """The product registry (TOTP), mailing through the test's SMTP server."""
    twofold = make_twofold(registry=default_registry(), smtp_url=smtp.url())
    with app_client(twofold) as client:
        yield twofold, client


def assert_well_formed(mail: ReceivedMail, *, to: str, never: Iterable[str] = (), sender: str = DEFAULT_SENDER) -> None:
    """Envelope and headers a mail client and a spam filter expect, and none of ``never`` anywhere in it."""
    message = mail.message
    assert (mail.mail_from, mail.rcpt_tos) == (sender, (to,))
    assert (message["From"], message["To"]) == (sender, to)
    assert message["Subject"]
    assert parsedate_to_datetime(message["Date"]).tzinfo is not None
    domain = sender.rpartition("@")[2]
    assert re.fullmatch(rf"<[^<>@\s]+@{re.escape(domain)}>", message["Message-ID"]), message["Message-ID"]
    for secret in never:
        assert secret not in mail.text, f"{secret!r} is in a message"


def add_method(client: TestClient, enrolled: TotpAccount, name: str) -> tuple[str, str]:
    """Add an authenticator app from the profile; returns (method id, its TOTP secret)."""
    started = client.post("/api/v1/me/methods", json={"type": "totp", "name": name}, headers=bearer(enrolled.token))
    assert started.status_code == 201, started.text
    secret = started.json()["secret"]
    done = client.post(
        f"/api/v1/me/methods/{started.json()['enrollment_id']}/complete",
        json={"code": code_at_step(secret, current_step())},
        headers=bearer(enrolled.token),
    )
    assert done.status_code == 200, done.text
    return str(done.json()["id"]), secret


def test_adding_and_removing_a_method_are_mailed_to_the_user(mailing, smtp):
    twofold, client = mailing
    organization, _ = create_organization(twofold)
    bob = enroll_totp(client, create_user(twofold, organization, "bob"), name="Phone")
    assert smtp.messages == []  # the forced first enrollment at login is not a change to tell about

    tablet, tablet_secret = add_method(client, bob, "Tablet")
    (added,) = smtp.wait_for(1)
    never = [bob.secret, tablet_secret, USER_PASSWORD, *bob.recovery_codes]
    assert_well_formed(added, to="bob@example.com", never=never)
    assert "A verification method was added to your account: Tablet." in added.body

    removed = client.delete(f"/api/v1/me/methods/{tablet}", headers=bearer(bob.token))
    assert removed.status_code == 204, removed.text
    _, notice = smtp.wait_for(2)
    assert_well_formed(notice, to="bob@example.com", never=never)
    assert "A verification method was removed from your account: Tablet." in notice.body
    assert notice.message["Message-ID"] != added.message["Message-ID"]


def test_a_recovery_code_used_at_login_is_mailed_with_how_many_remain(mailing, smtp):
    twofold, client = mailing
    organization, _ = create_organization(twofold)
    bob = enroll_totp(client, create_user(twofold, organization, "bob"))
    used, *others = bob.recovery_codes

    transaction = login(client, bob.account).json()["transaction"]
    verified = client.post(
        "/api/v1/login/verify", json={"transaction": transaction, "type": "recovery_code", "code": used}
    )
    assert verified.status_code == 200, verified.text
    assert verified.json()["recovery_codes_remaining"] == len(others)

    (notice,) = smtp.wait_for(1)
    assert_well_formed(notice, to="bob@example.com", never=[used, *others, bob.secret, USER_PASSWORD])
    assert notice.message["Subject"] == "A recovery code was used to sign in to Twofold"
    assert f"{len(others)} unused recovery codes remain" in notice.body


def test_regenerated_recovery_codes_are_mailed_without_the_codes(mailing, smtp):
    twofold, client = mailing
    organization, _ = create_organization(twofold)
    bob = enroll_totp(client, create_user(twofold, organization, "bob"))

    regenerated = client.post("/api/v1/me/recovery-codes", headers=bearer(bob.token))
    assert regenerated.status_code == 201, regenerated.text
    new_codes = regenerated.json()["codes"]

    (notice,) = smtp.wait_for(1)
    assert_well_formed(notice, to="bob@example.com", never=[*new_codes, *bob.recovery_codes, bob.secret])
    assert "New recovery codes were generated for your account" in notice.body


def test_an_mfa_reset_by_an_administrator_is_mailed(mailing, smtp):
    twofold, client = mailing
    organization, alice = create_organization(twofold)
    admin = enroll_totp(client, alice)  # a fresh MFA session: the reset's step-up holds
    bob = enroll_totp(client, create_user(twofold, organization, "bob"))

    reset = client.post(
        f"/api/v1/organizations/{organization.id}/users/{bob.account.user.id}/mfa/reset", headers=bearer(admin.token)
    )
    assert reset.status_code == 204, reset.text
    (notice,) = smtp.wait_for(1)
    assert_well_formed(notice, to="bob@example.com", never=[bob.secret, admin.secret, USER_PASSWORD, ADMIN_PASSWORD])
    assert notice.message["Subject"] == "Your multi-factor authentication was reset"
    assert login(client, bob.account).json()["status"] == "enrollment_required"


def test_forgot_password_mails_a_link_that_sets_the_password_and_nothing_else(mailing, smtp):
    twofold, client = mailing
    organization, _ = create_organization(twofold)
    bob = enroll_totp(client, create_user(twofold, organization, "bob"))

    asked = client.post("/api/v1/password-reset", json={"username": "bob"})
    assert asked.status_code == 202, asked.text
    (mail,) = smtp.wait_for(1)
    assert_well_formed(mail, to="bob@example.com", never=[USER_PASSWORD, bob.secret])
    links = RESET_LINK.findall(mail.body)
    assert len(links) == 1, mail.body
    token = links[0]

    done = client.post("/api/v1/password-reset/complete", json={"token": token, "new_password": NEW_PASSWORD})
    assert done.status_code == 204, done.text
    assert done.content == b"" and "set-cookie" not in done.headers  # nobody is signed in

    # The new password works, and the second factor is still asked for and still the same app.
    assert login(client, bob.account).status_code == 401
    bob.account.password = NEW_PASSWORD
    answer = login(client, bob.account)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "mfa_required"
    assert [m["type"] for m in answer.json()["methods"]] == ["totp"]
    verified = client.post(
        "/api/v1/login/verify",
        json={"transaction": answer.json()["transaction"], "type": "totp", "code": bob.next_code()},
    )
    assert verified.status_code == 200, verified.text
    # Setting the password sent nothing that could hold it.
    assert len(smtp.messages) == 1


def test_forgot_password_for_an_unknown_username_answers_the_same_and_mails_nothing(mailing, smtp):
    twofold, client = mailing
    create_organization(twofold)
    answer = client.post("/api/v1/password-reset", json={"username": "nobody"})
    assert answer.status_code == 202
    # The notifier sends within the request, so anything it sent is already at the server.
    assert smtp.messages == []


def test_sender_from_the_url_names_every_message_and_its_message_id(make_twofold, smtp):
    twofold = make_twofold(smtp_url=smtp.url(query="from=twofold%40example.com"))
    organization, _ = create_organization(twofold)
    create_user(twofold, organization, "bob")
    create_user(twofold, organization, "carol")
    with app_client(twofold) as client:
        for username in ("bob", "carol", "bob"):
            assert client.post("/api/v1/password-reset", json={"username": username}).status_code == 202
    mails = smtp.wait_for(3)
    for mail, to in zip(mails, ["bob@example.com", "carol@example.com", "bob@example.com"], strict=True):
        assert_well_formed(mail, to=to, sender="twofold@example.com", never=[USER_PASSWORD])
    assert len({mail.message["Message-ID"] for mail in mails}) == 3


def test_a_mail_server_that_is_down_fails_no_request_and_nothing_is_queued(make_twofold, tmp_path: Path, caplog):
    listening = reserve_port()  # bound, not listening: connections are refused until the server starts on it
    port = listening.getsockname()[1]
    url = f"smtp+starttls://mailer:s3cret@127.0.0.1:{port}?verify=false"
    twofold = make_twofold(registry=default_registry(), smtp_url=url)
    organization, alice = create_organization(twofold)
    with app_client(twofold) as client:
        admin = enroll_totp(client, alice)
        bob = enroll_totp(client, create_user(twofold, organization, "bob"))

        with caplog.at_level(logging.INFO, logger="twofold.notifications"):
            reset = client.post(
                f"/api/v1/organizations/{organization.id}/users/{bob.account.user.id}/mfa/reset",
                headers=bearer(admin.token),
            )
            asked = client.post("/api/v1/password-reset", json={"username": "bob"})
        assert reset.status_code == 204, reset.text
        assert asked.status_code == 202, asked.text
        assert login(client, bob.account).json()["status"] == "enrollment_required"  # the reset happened

        failures = [r for r in caplog.records if r.name == "twofold.notifications"]
        assert [(r.levelno, r.getMessage()) for r in failures] == [
            (logging.ERROR, "could not send a message to bob@example.com: ConnectionRefusedError")
        ] * 2
        logged = caplog.text
        for secret in ("password-reset/", "multi-factor", "s3cret", bob.secret):
            assert secret not in logged

        # The server comes up: only what is asked from now on arrives; the earlier notices were dropped.
        server_tls = self_signed_server_context(tmp_path)
        with smtp_server(listening=listening, starttls=server_tls, credentials=("mailer", "s3cret")) as smtp:
            assert client.post("/api/v1/password-reset", json={"username": "bob"}).status_code == 202
            (mail,) = smtp.wait_for(1)
            assert mail.message["Subject"] == "Reset your Twofold password"
            assert smtp.messages == [mail]


def test_dev_mode_without_an_smtp_url_writes_messages_to_the_log(make_twofold, caplog):
    twofold = make_twofold(env="dev")
    assert isinstance(twofold.notifier, LogNotifier)
    organization, _ = create_organization(twofold)
    create_user(twofold, organization, "bob")
    with app_client(twofold) as client, caplog.at_level(logging.WARNING, logger="twofold.notifications"):
        assert client.post("/api/v1/password-reset", json={"username": "bob"}).status_code == 202
    ((to, subject, body),) = twofold.notifier.sent
    assert (to, subject) == ("bob@example.com", "Reset your Twofold password")
    (link,) = RESET_LINK.findall(body)
    # In dev the link is in the log, so it can be followed without a mail server.
    assert link in caplog.text and "bob@example.com" in caplog.text


def test_starttls_comes_before_login_and_a_self_signed_certificate_needs_verify_false(
    make_twofold, tmp_path: Path, caplog
):
    context = self_signed_server_context(tmp_path)
    with smtp_server(starttls=context, credentials=("mailer", "s3cret")) as smtp:
        # aiosmtpd refuses mail before STARTTLS and offers AUTH only after it.
        trusting = make_twofold(smtp_url=smtp.url("smtp+starttls", userinfo="mailer:s3cret", query="verify=false"))
        checking = make_twofold(smtp_url=smtp.url("smtp+starttls", userinfo="mailer:s3cret"))
        organization, _ = create_organization(trusting)
        create_user(trusting, organization, "bob")

        with app_client(checking) as client, caplog.at_level(logging.ERROR, logger="twofold.notifications"):
            assert client.post("/api/v1/password-reset", json={"username": "bob"}).status_code == 202
        assert smtp.messages == []  # the certificate does not verify, so nothing was sent over it
        assert "could not send a message to bob@example.com: SSLCertVerificationError" in caplog.text

        with app_client(trusting) as client:
            assert client.post("/api/v1/password-reset", json={"username": "bob"}).status_code == 202
        (mail,) = smtp.wait_for(1)
        assert (mail.tls, mail.login) == (True, "mailer")
        assert_well_formed(mail, to="bob@example.com", never=["s3cret", USER_PASSWORD])


def test_smtps_speaks_tls_from_the_first_byte(make_twofold, tmp_path: Path):
    with smtp_server(implicit_tls=self_signed_server_context(tmp_path)) as smtp:
        twofold = make_twofold(smtp_url=smtp.url("smtps", query="verify=false"))
        organization, _ = create_organization(twofold)
        create_user(twofold, organization, "bob")
        with app_client(twofold) as client:
            assert client.post("/api/v1/password-reset", json={"username": "bob"}).status_code == 202
        (mail,) = smtp.wait_for(1)
        assert mail.tls
        assert_well_formed(mail, to="bob@example.com")


@pytest.mark.parametrize(
    ("url", "host", "port", "security", "sender"),
    [
        ("smtp://mail.example.com", "mail.example.com", 25, "none", DEFAULT_SENDER),
        ("smtps://u:p@mail.example.com", "mail.example.com", 465, "tls", DEFAULT_SENDER),
        (
            "smtp+starttls://u:p@mail.example.com?from=id%40example.org",
            "mail.example.com",
            587,
            "starttls",
            "id@example.org",
        ),
        (
            "smtp+starttls://10.0.0.5:2525?from=Twofold%20%3Cid%40example.org%3E",
            "10.0.0.5",
            2525,
            "starttls",
            "Twofold <id@example.org>",
        ),
    ],
)
def test_the_smtp_url_forms(url, host, port, security, sender):
    """Unit check of the URL grammar documented next to TWOFOLD_SMTP_URL in API.md."""
    notifier = SmtpNotifier(url)
    assert (notifier.host, notifier.port, notifier.security, notifier.sender) == (host, port, security, sender)
    assert notifier.verify
    assert notifier.sender_domain == parseaddr(sender)[1].rpartition("@")[2]


@pytest.mark.parametrize("url", ["smtpx://mail.example.com", "smtp://mail.example.com?from=nobody"])
def test_an_smtp_url_that_cannot_work_is_refused_at_start(url):
    from twofold.config import ConfigurationError

    with pytest.raises(ConfigurationError):
        SmtpNotifier(url)
