"""The `twofold` command: serve, init, users, secrets (API.md "Command line and configuration")."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from twofold.config import ConfigurationError, Settings, load_settings
from twofold.domain.errors import TwofoldError

from .authenticator import CompanionError
from .serving import APP, reuse_port_supported, serve_with_reuse_port

DEV_CREDENTIALS = Path("var") / "dev-admin.txt"


class CommandError(Exception):
    pass


def _settings() -> Settings:
    try:
        settings = load_settings()
        settings.validate_for_serving()
        if settings.smtp_url:
            from twofold.services.notifications import SmtpNotifier

            SmtpNotifier(settings.smtp_url)  # a malformed URL is one line here, not a traceback in a worker
    except ValidationError as error:
        problems = "; ".join(
            f"TWOFOLD_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in error.errors()
        )
        raise CommandError(f"invalid settings: {problems}") from None
    except ConfigurationError as error:
        raise CommandError(str(error)) from None
    return settings


def _migrate(settings: Settings) -> None:
    from twofold.storage.migrate import upgrade

    try:
        upgrade(settings.database_url)
    except Exception as error:  # any failure here is the operator's to see, in one line
        raise CommandError(f"could not migrate the database: {error.__class__.__name__}: {error}") from None


def _container(settings: Settings):  # type: ignore[no-untyped-def]
    from twofold.container import build

    _migrate(settings)
    return build(settings)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = _settings()
    _migrate(settings)  # once, under a lock, before any worker starts (DESIGN.md §6)
    if args.dev_bootstrap:
        if not settings.dev:
            raise CommandError("--dev-bootstrap needs TWOFOLD_ENV=dev")
        _dev_bootstrap(settings, args.port)
    print(f"Twofold serving on http://{args.host}:{args.port} (public URL {settings.public_url})", flush=True)
    if args.workers > 1 and settings.database_url.startswith("sqlite"):
        # One writer at a time: more processes add lock waits, not throughput (bench/README.md).
        print("twofold: with SQLite, more workers do not serve more; use PostgreSQL to scale out", file=sys.stderr)
    options: dict[str, Any] = {
        "log_level": "info" if settings.dev else "warning",
        "proxy_headers": False,  # X-Forwarded-For is judged by Twofold against TWOFOLD_TRUSTED_PROXIES
        "server_header": False,
        "timeout_graceful_shutdown": 30,
    }
    if args.workers > 1 and reuse_port_supported():
        try:
            return serve_with_reuse_port(host=args.host, port=args.port, workers=args.workers, options=options)
        except OSError as error:
            raise CommandError(f"cannot listen on {args.host}:{args.port}: {error.strerror or error}") from None
    uvicorn.run(APP, factory=True, host=args.host, port=args.port, workers=args.workers, **options)
    return 0


def _dev_bootstrap(settings: Settings, port: int) -> None:
    from twofold.container import build
    from twofold.domain.errors import Conflict

    twofold = build(settings)
    try:
        if not DEV_CREDENTIALS.exists():
            password = "-".join(secrets.token_hex(3) for _ in range(4))
            try:
                twofold.accounts.init_organization(
                    organization_name="Demo",
                    admin_username="admin",
                    admin_email="admin@example.com",
                    admin_password=password,
                )
            except Conflict:
                password = "(set when the database was created; see var/dev-admin.txt or delete var/ to start over)"
            DEV_CREDENTIALS.parent.mkdir(parents=True, exist_ok=True)
            DEV_CREDENTIALS.write_text(f"admin\n{password}\n")
            DEV_CREDENTIALS.chmod(0o600)
        username, password = DEV_CREDENTIALS.read_text().splitlines()[:2]
    finally:
        twofold.close()
    print(
        '\n  Development instance of Twofold (organization "Demo").\n'
        f"  Sign in at {settings.public_url}/login\n"
        f"    Username: {username}\n"
        f"    Password: {password}\n"
        "  You will be asked to register a verification method first: MFA is mandatory.\n",
        flush=True,
    )


def cmd_init(args: argparse.Namespace) -> int:
    twofold = _container(_settings())
    try:
        organization, created = twofold.accounts.init_organization(
            organization_name=args.organization,
            admin_username=args.admin_username,
            admin_email=args.admin_email,
            admin_password=args.admin_password,
        )
    finally:
        twofold.close()
    print(f"Created organization {organization.name!r} (id {organization.id}).")
    print(f"Organization Administrator: {created.user.username} (id {created.user.id}).")
    if created.setup_url:
        print(f"One-time set-up link (valid 7 days): {created.setup_url}")
    return 0


def cmd_users_create(args: argparse.Namespace) -> int:
    from twofold.services.context import RequestContext

    twofold = _container(_settings())
    try:
        organization = twofold.accounts.root_by_name(args.organization)
        created = twofold.accounts.create_user(
            organization_id=organization.id,
            username=args.username,
            email=args.email,
            kind=args.kind,
            service_type=args.service_type,
            password=args.password,
            actor_id=None,
            context=RequestContext(ip=None),
        )
    finally:
        twofold.close()
    print(f"Created {created.user.kind} {created.user.username} (id {created.user.id}).")
    if created.setup_url:
        print(f"One-time set-up link (valid 7 days): {created.setup_url}")
    return 0


def cmd_users_unlock(args: argparse.Namespace) -> int:
    twofold = _container(_settings())
    try:
        user = twofold.admin.unlock_by_operator(args.username)
    finally:
        twofold.close()
    print(f"Unlocked {user.username}; the second-factor failure count is reset.")
    return 0


def cmd_users_reset_mfa(args: argparse.Namespace) -> int:
    twofold = _container(_settings())
    try:
        user = twofold.admin.reset_mfa_by_operator(args.username)
    finally:
        twofold.close()
    print(
        f"Reset the multi-factor authentication of {user.username}: methods and recovery codes deleted, "
        "sessions ended. The next sign-in asks for a new verification method."
    )
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    twofold = _container(_settings())
    try:
        kid, starts = twofold.signing_keys.rotate(immediately=args.now)
    finally:
        twofold.close()
    if args.now:
        print(f"New token-signing key {kid}, signing now; the earlier keys are unpublished and their tokens refused.")
    else:
        print(
            f"New token-signing key {kid}, published now, signing from {starts.isoformat(timespec='seconds')}; "
            "earlier keys stay published for a day after that so that their tokens verify."
        )
    return 0


def cmd_secrets_rotate(args: argparse.Namespace) -> int:
    settings = _settings()
    if settings.old_secret_keys is None:
        raise CommandError(
            "set TWOFOLD_SECRET_KEY to the new key and TWOFOLD_OLD_SECRET_KEYS to the previous one(s), then run again"
        )
    from twofold.services.crypto import SealedValueError

    twofold = _container(settings)
    try:
        count = twofold.maintenance.rotate_secrets()
    except SealedValueError as error:
        # Nothing was re-encrypted (one transaction); the operator needs to hear which key is missing.
        raise CommandError(
            f"{error}: add the key it was sealed with to TWOFOLD_OLD_SECRET_KEYS; nothing was changed"
        ) from None
    finally:
        twofold.close()
    print(f"Re-encrypted {count} secret(s) under the current key. The old key(s) can now be removed.")
    return 0


def cmd_housekeeping(args: argparse.Namespace) -> int:
    twofold = _container(_settings())
    try:
        counts = twofold.maintenance.housekeeping()
    finally:
        twofold.close()
    print(", ".join(f"{name}: {count}" for name, count in counts.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twofold", description="Twofold identity and access management.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="apply migrations, then serve the API, the pages and OAuth 2.0")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument(
        "--dev-bootstrap",
        action="store_true",
        help="dev mode: create the Demo organization and its admin on first start, and print how to sign in",
    )
    serve.set_defaults(handler=cmd_serve)

    init = sub.add_parser("init", help="create a root organization and its first Organization Administrator")
    init.add_argument("--organization", required=True, metavar="NAME")
    init.add_argument("--admin-username", required=True, metavar="U")
    init.add_argument("--admin-email", required=True, metavar="E")
    init.add_argument("--admin-password", metavar="P", help="without it, a one-time set-up link is printed")
    init.set_defaults(handler=cmd_init)

    users = sub.add_parser("users", help="manage user accounts").add_subparsers(
        dest="users_command", required=True, metavar="COMMAND"
    )
    create = users.add_parser("create", help="create a user or service account")
    create.add_argument("--organization", required=True, metavar="NAME")
    create.add_argument("--username", required=True, metavar="U")
    create.add_argument("--email", required=True, metavar="E")
    create.add_argument("--kind", required=True, choices=["user", "service"])
    create.add_argument("--service-type", choices=["test_automation", "rpa"])
    create.add_argument("--password", metavar="P", help="without it, a one-time set-up link is printed")
    create.set_defaults(handler=cmd_users_create)
    unlock = users.add_parser("unlock", help="lift a second-factor lock (break-glass, audited)")
    unlock.add_argument("username", metavar="USERNAME")
    unlock.set_defaults(handler=cmd_users_unlock)
    reset_mfa = users.add_parser(
        "reset-mfa", help="delete a user's verification methods and end their sessions (break-glass, audited)"
    )
    reset_mfa.add_argument("username", metavar="USERNAME")
    reset_mfa.set_defaults(handler=cmd_users_reset_mfa)

    keys_parser = sub.add_parser("keys", help="token-signing keys").add_subparsers(
        dest="keys_command", required=True, metavar="COMMAND"
    )
    keys_rotate = keys_parser.add_parser(
        "rotate",
        help="publish a new token-signing key; it signs in 5 minutes, once cached key sets have been refreshed",
    )
    keys_rotate.add_argument(
        "--now",
        action="store_true",
        help="for a key that may have leaked: the new key signs at once, the old ones are unpublished and "
        "every token they signed is refused",
    )
    keys_rotate.set_defaults(handler=cmd_keys_rotate)

    secrets_parser = sub.add_parser("secrets", help="secrets at rest").add_subparsers(
        dest="secrets_command", required=True, metavar="COMMAND"
    )
    rotate = secrets_parser.add_parser(
        "rotate", help="re-encrypt secrets at rest under TWOFOLD_SECRET_KEY (old keys in TWOFOLD_OLD_SECRET_KEYS)"
    )
    rotate.set_defaults(handler=cmd_secrets_rotate)

    housekeeping = sub.add_parser("housekeeping", help="purge expired rows and old audit events now")
    housekeeping.set_defaults(handler=cmd_housekeeping)

    from . import authenticator

    authenticator.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("TWOFOLD_LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (CommandError, TwofoldError, CompanionError) as error:
        detail = error.detail if isinstance(error, TwofoldError) else str(error)
        print(f"twofold: error: {detail}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
