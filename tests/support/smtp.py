"""A real SMTP server for tests: aiosmtpd's threaded Controller on 127.0.0.1, collecting what it receives.

    with smtp_server() as server:
        twofold = make_twofold(smtp_url=server.url())
        ...
        (message,) = server.wait_for(1)

Twofold sends a notice inside the request that causes it, and aiosmtpd stores a message before it
answers the DATA command, so once a response is back ``server.messages`` already holds its mail;
``wait_for`` is the patient way to read them all the same.

The listening socket is bound before the server starts (``reserve_port``), so no other process can take
the port in between, and a bound socket that is not listening yet refuses connections: a mail server
that is down, on a port that can later come up.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

HOST = "127.0.0.1"
WAIT_SECONDS = 10.0


@dataclass(frozen=True)
class ReceivedMail:
    """One message as the server got it: envelope, raw bytes, and the parsed message."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    message: EmailMessage
    tls: bool  # whether the connection it came over was encrypted
    login: str | None  # the SMTP AUTH user, when the client logged in

    @property
    def body(self) -> str:
        part = self.message.get_body(preferencelist=("plain",))
        assert part is not None, "no text/plain part"
        return str(part.get_content())  # type: ignore[attr-defined]

    @property
    def text(self) -> str:
        """Headers and decoded body together, for "this never appears anywhere in the mail" checks."""
        return self.raw.decode("utf-8", "replace") + "\n" + self.body


class CollectingHandler:
    """aiosmtpd handler that keeps every message and wakes up whoever waits for them."""

    def __init__(self) -> None:
        self.messages: list[ReceivedMail] = []
        self._arrived = threading.Condition()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        transport = server.transport
        auth = session.auth_data if session.authenticated else None
        mail = ReceivedMail(
            mail_from=str(envelope.mail_from),
            rcpt_tos=tuple(envelope.rcpt_tos),
            raw=raw,
            message=BytesParser(policy=policy.default).parsebytes(raw),  # type: ignore[arg-type]
            tls=transport is not None and transport.get_extra_info("ssl_object") is not None,
            login=auth.login.decode() if isinstance(auth, LoginPassword) else None,
        )
        with self._arrived:
            self.messages.append(mail)
            self._arrived.notify_all()
        return "250 Message accepted for delivery"

    def wait_for(self, count: int, timeout: float = WAIT_SECONDS) -> list[ReceivedMail]:
        with self._arrived:
            arrived = self._arrived.wait_for(lambda: len(self.messages) >= count, timeout)
            assert arrived, f"expected {count} message(s), the server got {len(self.messages)}"
            return list(self.messages)


class _BoundController(Controller):
    """Controller that serves on a socket bound beforehand (port 0 means "any free port")."""

    def __init__(self, handler: Any, listening: socket.socket, **kwargs: Any) -> None:
        super().__init__(handler, hostname=HOST, port=listening.getsockname()[1], **kwargs)
        self._listening = listening

    def _create_server(self) -> Awaitable[Any]:
        return self.loop.create_server(self._factory_invoker, sock=self._listening, ssl=self.ssl_context)


@dataclass
class SmtpServer:
    handler: CollectingHandler
    port: int

    @property
    def messages(self) -> list[ReceivedMail]:
        return list(self.handler.messages)

    def wait_for(self, count: int, timeout: float = WAIT_SECONDS) -> list[ReceivedMail]:
        """All messages received so far, once there are at least ``count`` of them (fails after ``timeout``)."""
        return self.handler.wait_for(count, timeout)

    def url(self, scheme: str = "smtp", *, userinfo: str = "", query: str = "") -> str:
        at = f"{userinfo}@" if userinfo else ""
        return f"{scheme}://{at}{HOST}:{self.port}" + (f"?{query}" if query else "")


def reserve_port() -> socket.socket:
    """A TCP socket bound to a free port on 127.0.0.1 but not listening: connections to it are refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    return sock


@contextmanager
def smtp_server(
    *,
    listening: socket.socket | None = None,
    starttls: ssl.SSLContext | None = None,
    implicit_tls: ssl.SSLContext | None = None,
    credentials: tuple[str, str] | None = None,
) -> Iterator[SmtpServer]:
    """Run a collecting SMTP server until the block ends.

    ``starttls``: offer STARTTLS with this server context and refuse mail before it. ``implicit_tls``:
    TLS from the first byte (what ``smtps://`` expects). ``credentials``: require SMTP AUTH with this
    user and password (aiosmtpd only offers AUTH over TLS).
    """
    sock = listening or reserve_port()
    handler = CollectingHandler()
    kwargs: dict[str, Any] = {"server_hostname": "localhost", "ready_timeout": WAIT_SECONDS}
    if starttls is not None:
        kwargs.update(tls_context=starttls, require_starttls=True)
    if implicit_tls is not None:
        kwargs["ssl_context"] = implicit_tls
    if credentials is not None:
        kwargs.update(authenticator=_authenticator(*credentials), auth_required=True)
    controller = _BoundController(handler, sock, **kwargs)
    controller.start()
    try:
        yield SmtpServer(handler=handler, port=sock.getsockname()[1])
    finally:
        controller.stop()
        sock.close()


def _authenticator(user: str, password: str) -> Any:
    def authenticate(server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
        valid = isinstance(data, LoginPassword) and (data.login, data.password) == (user.encode(), password.encode())
        return AuthResult(success=valid, handled=False, auth_data=data if valid else None)

    return authenticate


def self_signed_server_context(directory: Path) -> ssl.SSLContext:
    """A server TLS context with a fresh self-signed certificate for localhost and 127.0.0.1, kept in ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context
