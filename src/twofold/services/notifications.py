"""Messages to users (set-up links, password resets, security notices) by SMTP, or to the log in dev."""

from __future__ import annotations

import logging
import smtplib
from collections import deque
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

logger = logging.getLogger("twofold.notifications")


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
    def __init__(self, url: str, *, sender: str = "twofold@localhost") -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (465 if parts.scheme == "smtps" else 25)
        self.tls = parts.scheme == "smtps"
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.sender = sender

    def notify(self, *, to: str, subject: str, body: str) -> None:
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = self.sender, to, subject
        message.set_content(body)
        try:
            smtp_class = smtplib.SMTP_SSL if self.tls else smtplib.SMTP
            with smtp_class(self.host, self.port, timeout=10) as smtp:
                if self.username and self.password:
                    smtp.login(self.username, self.password)
                smtp.send_message(message)
        except (OSError, smtplib.SMTPException) as error:
            logger.error("could not send a message to %s: %s", to, error.__class__.__name__)
