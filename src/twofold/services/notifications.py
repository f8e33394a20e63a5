"""Messages to users (set-up links, password resets, security notices) by SMTP, or to the log in dev."""

from __future__ import annotations

import logging
import smtplib
import ssl
from collections import deque
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from urllib.parse import parse_qs, unquote, urlsplit

from twofold.config import ConfigurationError

logger = logging.getLogger("twofold.notifications")

DEFAULT_SENDER = "twofold@localhost"
# Scheme -> (default port, how TLS is set up): none, implicit TLS from the first byte, or STARTTLS.
SCHEMES = {"smtp": (25, "none"), "smtps": (465, "tls"), "smtp+starttls": (587, "starttls")}
SEND_TIMEOUT_SECONDS = 10


class LogNotifier:
    """Dev mode: messages go to the log, so links can be followed without a mail server."""

    def __init__(self, *, include_body: bool) -> None:
        self.include_body = include_body
        # The latest messages, for a look from a shell or a test; bounded so a long-running server keeps none.
        self.sent: deque[tuple[str, str, str]] = deque(maxlen=100)

    def notify(self, *, to: str, subject: str, body: str) -> None:
        self.sent.append((to, subject, body))
        if self.include_body:
            logger.warning("message to %s: %s\n%s", to, subject, body)
        else:
            logger.warning("message to %s: %s (no TWOFOLD_SMTP_URL: body not sent)", to, subject)


class SmtpNotifier:
    """Sends each message at once, in the caller's thread, and never raises: a notice that cannot be
    delivered is logged (without its body, which may hold a link) and dropped, never queued.

    ``TWOFOLD_SMTP_URL`` forms: ``smtp://host:25`` (plain), ``smtps://user:pass@host:465`` (TLS from the
    start), ``smtp+starttls://user:pass@host:587`` (STARTTLS before login); query ``?from=addr`` sets the
    sender and ``?verify=false`` accepts a server certificate that does not verify.
    """

    def __init__(self, url: str, *, sender: str = DEFAULT_SENDER) -> None:
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES:
            forms = ", ".join(f"{scheme}://" for scheme in SCHEMES)
            raise ConfigurationError(f"TWOFOLD_SMTP_URL must start with one of {forms}")
        default_port, self.security = SCHEMES[parts.scheme]
        self.host = parts.hostname or "localhost"
        self.port = parts.port or default_port
        self.tls = self.security == "tls"
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        query = parse_qs(parts.query)
        self.sender = query["from"][-1] if query.get("from") else sender
        address = parseaddr(self.sender)[1]
        if "@" not in address or "\r" in self.sender or "\n" in self.sender:
            raise ConfigurationError("TWOFOLD_SMTP_URL: ?from= must be an email address")
        self.sender_domain = address.rpartition("@")[2]
        self.verify = query.get("verify", ["true"])[-1].lower() not in {"false", "0", "no"}

    def tls_context(self) -> ssl.SSLContext:
        # smtplib's own default context verifies nothing; a mature default checks the chain and the name.
        context = ssl.create_default_context()
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def message(self, *, to: str, subject: str, body: str) -> EmailMessage:
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = self.sender, to, subject
        message["Date"] = formatdate(localtime=False, usegmt=True)
        message["Message-ID"] = make_msgid(domain=self.sender_domain)
        # RFC 3834: out-of-office replies and the like should not answer a machine.
        message["Auto-Submitted"] = "auto-generated"
        message.set_content(body)
        return message

    def notify(self, *, to: str, subject: str, body: str) -> None:
        try:
            message = self.message(to=to, subject=subject, body=body)
            smtp: smtplib.SMTP = (
                smtplib.SMTP_SSL(self.host, self.port, timeout=SEND_TIMEOUT_SECONDS, context=self.tls_context())
                if self.tls
                else smtplib.SMTP(self.host, self.port, timeout=SEND_TIMEOUT_SECONDS)
            )
            with smtp:
                if self.security == "starttls":
                    smtp.starttls(context=self.tls_context())  # fails unless the server offers it
                if self.username and self.password:
                    smtp.login(self.username, self.password)
                smtp.send_message(message)
        except Exception as error:
            # The action that asked for the notice has already happened; its request must not fail now.
            # Only the class name: an exception's text may quote the message, its link or a code.
            logger.error("could not send a message to %s: %s", to, error.__class__.__name__)
