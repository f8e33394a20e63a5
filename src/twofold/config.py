"""Settings from the environment (prefix ``TWOFOLD_``) and an optional ``.env`` file.

Outside dev mode the process refuses to start without a real ``TWOFOLD_SECRET_KEY``: it encrypts
every secret at rest (DESIGN.md §7), so a default one would be a published key.
"""

from __future__ import annotations

import ipaddress
import secrets
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET_FILE = Path("var") / "dev-secret-key"
MIN_SECRET_KEY_LENGTH = 32
PLACEHOLDER_SECRETS = {"changeme", "change-me", "secret", "dev", "development", "twofold"}


class ConfigurationError(Exception):
    """The settings cannot run a server; the message says which one and why."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TWOFOLD_", env_file=".env", extra="ignore")

    env: Literal["prod", "dev"] = "prod"
    database_url: str = "sqlite:///./var/twofold.db"
    secret_key: SecretStr | None = None
    # Earlier keys, comma separated, still readable while `twofold secrets rotate` runs.
    old_secret_keys: SecretStr | None = None
    public_url: str = "http://localhost:8000"
    user_exemption_cutoff: date = date(2023, 8, 1)
    smtp_url: str | None = None
    # Push: an optional webhook that is told of each new challenge (a deployment's own relay to phones).
    push_webhook_url: str | None = None
    push_webhook_secret: SecretStr | None = None
    trusted_proxies: str = ""

    # Lifetimes (DESIGN.md §2, API.md "Transaction lifecycle", SECURITY.md AAL2 sessions).
    transaction_mfa_seconds: int = 5 * 60
    transaction_enroll_seconds: int = 15 * 60
    session_idle_seconds: int = 30 * 60
    session_absolute_seconds: int = 12 * 3600
    step_up_seconds: int = 10 * 60
    setup_link_seconds: int = 7 * 24 * 3600
    password_reset_seconds: int = 3600

    # Throttling (DESIGN.md §3).
    password_free_attempts: int = 5
    password_backoff_base_seconds: float = 1.0
    password_backoff_max_seconds: float = 15 * 60
    ip_failure_budget: int = 300
    ip_failure_window_seconds: int = 15 * 60
    mfa_free_attempts: int = 10
    mfa_backoff_base_seconds: float = 1.0
    mfa_backoff_max_seconds: float = 5 * 60
    mfa_lock_threshold: int = 100
    transaction_max_failures: int = 5

    audit_retention_days: int = 400
    housekeeping_interval_seconds: int = 300
    max_body_bytes: int = 256 * 1024
    # How long a request waits for a lock held by another (SQLite busy timeout, PostgreSQL lock_timeout)
    # before it gives up with a 503.
    database_lock_timeout_ms: int = 5000

    # Argon2id, OWASP's first recommended profile (m=19 MiB, t=2, p=1).
    argon2_memory_kib: int = 19 * 1024
    argon2_time_cost: int = 2
    argon2_parallelism: int = 1

    @field_validator("public_url")
    @classmethod
    def _public_url_is_an_origin(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError("TWOFOLD_PUBLIC_URL must be an http(s) origin such as https://id.example.com")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _use_psycopg3(cls, value: str) -> str:
        for prefix in ("postgresql://", "postgres://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        return value

    @property
    def dev(self) -> bool:
        return self.env == "dev"

    @property
    def public_origin(self) -> str:
        parts = urlsplit(self.public_url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def public_host(self) -> str:
        return urlsplit(self.public_url).hostname or "localhost"

    @property
    def public_host_is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.public_host)
        except ValueError:
            return False
        return True

    @cached_property
    def trusted_proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        networks = []
        for item in self.trusted_proxies.split(","):
            item = item.strip()
            if item:
                try:
                    networks.append(ipaddress.ip_network(item, strict=False))
                except ValueError as error:
                    raise ConfigurationError(f"TWOFOLD_TRUSTED_PROXIES: {item!r} is not an address") from error
        return tuple(networks)

    def secret_keys(self) -> tuple[str, list[str]]:
        """The current secret key and the older ones still accepted for decryption."""
        current = self.secret_key.get_secret_value() if self.secret_key else None
        if not current:
            if not self.dev:
                raise ConfigurationError(
                    "TWOFOLD_SECRET_KEY is required outside dev mode: set it to at least "
                    f"{MIN_SECRET_KEY_LENGTH} random characters (e.g. `openssl rand -base64 48`) and back it up."
                )
            current = _dev_secret_key()
        elif not self.dev and (len(current) < MIN_SECRET_KEY_LENGTH or current.lower() in PLACEHOLDER_SECRETS):
            raise ConfigurationError(
                f"TWOFOLD_SECRET_KEY must be a real secret of at least {MIN_SECRET_KEY_LENGTH} characters."
            )
        old = []
        if self.old_secret_keys:
            old = [k.strip() for k in self.old_secret_keys.get_secret_value().split(",") if k.strip()]
        return current, old

    def validate_for_serving(self) -> None:
        self.secret_keys()
        _ = self.trusted_proxy_networks
        if self.push_webhook_url:
            if urlsplit(self.push_webhook_url).scheme not in {"http", "https"}:
                raise ConfigurationError("TWOFOLD_PUSH_WEBHOOK_URL must be an http(s) URL")
            secret = self.push_webhook_secret.get_secret_value() if self.push_webhook_secret else ""
            if len(secret) < 32:
                raise ConfigurationError(
                    "TWOFOLD_PUSH_WEBHOOK_SECRET (at least 32 characters) signs the webhook's calls; set it"
                )


def _dev_secret_key() -> str:
    """Dev mode keeps a random key under ./var so that restarts can still read their secrets."""
    if DEV_SECRET_FILE.exists():
        return DEV_SECRET_FILE.read_text().strip()
    DEV_SECRET_FILE.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    DEV_SECRET_FILE.write_text(key)
    DEV_SECRET_FILE.chmod(0o600)
    return key


def load_settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]
