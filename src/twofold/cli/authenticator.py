"""``twofold authenticator``: the reference push companion (API.md "Command line").

It pairs with a ``twofold://pair`` URI, keeps its P-256 private key in a file only its owner can read
(mode 0600), and signs every request (``Twofold-Device``) and every answer with it. ``watch`` shows each
challenge's context and asks which number the sign-in page shows, so that approving needs that look.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from joserfc.jwk import ECKey

from twofold.methods.push.device import new_device_key, public_jwk, sign_answer, sign_device_request
from twofold.methods.push.pairing import parse_pairing_uri

CHALLENGES_PATH = "/api/v1/push/challenges"


class CompanionError(Exception):
    pass


def default_store() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "twofold" / "authenticator.json"


# -- the key file --------------------------------------------------------------------------------


def save_store(path: Path, values: dict[str, Any]) -> None:
    """Written with mode 0600 from the start (never readable by others, even for a moment)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(values, handle, indent=2)
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def load_store(path: Path) -> dict[str, Any]:
    try:
        mode = path.stat().st_mode & 0o777
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise CompanionError(f"{path} does not exist: pair first with `twofold authenticator pair URI`") from None
    except (OSError, ValueError) as error:
        raise CompanionError(f"cannot read {path}: {error}") from None
    if mode & 0o077:
        raise CompanionError(f"{path} is readable by others (mode {mode:o}); run chmod 600 on it")
    if not isinstance(values, dict) or not {"server", "device_id", "private_jwk"} <= values.keys():
        raise CompanionError(f"{path} is not a Twofold Authenticator key file")
    return values


# -- HTTP ----------------------------------------------------------------------------------------


def _call(
    method: str, url: str, *, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None, timeout: float
) -> tuple[int, Any]:
    if urlsplit(url).scheme not in {"http", "https"}:
        raise CompanionError(f"not an http(s) URL: {url}")
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
        url,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", "Accept": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310
            text = answer.read().decode()
            return answer.status, json.loads(text) if text else None
    except urllib.error.HTTPError as error:
        text = error.read().decode(errors="replace")
        try:
            detail = json.loads(text).get("detail") or text
        except ValueError:
            detail = text
        raise CompanionError(f"the server answered {error.code}: {detail}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        raise CompanionError(f"cannot reach {url}: {getattr(error, 'reason', error)}") from None


class Companion:
    def __init__(self, store: dict[str, Any]) -> None:
        self.server = str(store["server"]).rstrip("/")
        self.device_id = str(store["device_id"])
        self.key = ECKey.import_key(store["private_jwk"])

    def _signed(self, method: str, path: str) -> dict[str, str]:
        token = sign_device_request(
            self.key, device_id=self.device_id, htm=method, htu=self.server + path, jti=secrets.token_urlsafe(24)
        )
        return {"Authorization": f"Twofold-Device {token}"}

    def challenges(self, wait: int = 0) -> list[dict[str, Any]]:
        _, found = _call(
            "GET",
            f"{self.server}{CHALLENGES_PATH}?wait={wait}",
            headers=self._signed("GET", CHALLENGES_PATH),
            timeout=wait + 15,
        )
        return list(found or [])

    def answer(self, challenge_id: str, *, decision: str, number: int | None, not_me: bool = False) -> None:
        path = f"{CHALLENGES_PATH}/{challenge_id}/response"
        response = sign_answer(self.key, challenge_id=challenge_id, decision=decision, number=number, not_me=not_me)
        _call("POST", self.server + path, body={"response": response}, headers=self._signed("POST", path), timeout=15)


# -- commands ------------------------------------------------------------------------------------


def _store_path(args: argparse.Namespace) -> Path:
    return Path(args.store).expanduser() if args.store else default_store()


def cmd_pair(args: argparse.Namespace) -> int:
    try:
        server, code = parse_pairing_uri(args.pairing_uri)
    except ValueError as error:
        raise CompanionError(str(error)) from None
    path = _store_path(args)
    if path.exists() and not args.force:
        raise CompanionError(f"{path} already holds a paired device; use --store for another or --force")
    key = new_device_key()
    _, answer = _call(
        "POST",
        f"{server}/api/v1/push/pair",
        body={"pairing_code": code, "public_key": public_jwk(key), "device_name": args.name, "platform": args.platform},
        timeout=15,
    )
    device_id = answer["device_id"]
    save_store(
        path,
        {
            "server": server,
            "device_id": device_id,
            "device_name": args.name,
            "private_jwk": key.as_dict(private=True),
            "paired_at": datetime.now(UTC).isoformat(),
        },
    )
    print(f"Paired {args.name!r} with {server} as device {device_id}. The key is in {path}.")
    return 0


def _describe(challenge: dict[str, Any]) -> str:
    numbers = ", ".join(str(n) for n in challenge.get("numbers", []))
    address = challenge.get("ip") or "an unknown address"
    return (
        f"{challenge['challenge_id']}: sign-in to {challenge.get('app')} from {address}"
        f" ({challenge.get('user_agent') or 'unknown browser'}) at {challenge.get('created_at')},"
        f" expires {challenge.get('expires_at')}; numbers: {numbers}"
    )


def cmd_list(args: argparse.Namespace) -> int:
    companion = Companion(load_store(_store_path(args)))
    found = companion.challenges(wait=args.wait)
    if not found:
        print("No sign-in is waiting for this device.")
    for challenge in found:
        print(_describe(challenge))
    return 0


def _pick(companion: Companion, challenge_id: str | None) -> str:
    if challenge_id:
        return challenge_id
    found = companion.challenges(wait=0)
    if len(found) == 1:
        return str(found[0]["challenge_id"])
    if not found:
        raise CompanionError("no sign-in is waiting for this device")
    raise CompanionError("several sign-ins are waiting; name one: " + ", ".join(str(c["challenge_id"]) for c in found))


def cmd_approve(args: argparse.Namespace) -> int:
    companion = Companion(load_store(_store_path(args)))
    challenge_id = _pick(companion, args.challenge_id)
    companion.answer(challenge_id, decision="approve", number=args.number)
    print(f"Sent approval with number {args.number} for {challenge_id}.")
    return 0


def cmd_deny(args: argparse.Namespace) -> int:
    companion = Companion(load_store(_store_path(args)))
    challenge_id = _pick(companion, args.challenge_id)
    companion.answer(challenge_id, decision="deny", number=None, not_me=args.not_me)
    print(f"Denied {challenge_id}{' and reported it as not you' if args.not_me else ''}.")
    return 0


def cmd_watch(args: argparse.Namespace, ask: Callable[[str], str] = input) -> int:
    companion = Companion(load_store(_store_path(args)))
    print("Waiting for sign-ins (Ctrl-C to stop)…", flush=True)
    answered: set[str] = set()
    try:
        while True:
            for challenge in companion.challenges(wait=25):
                challenge_id = str(challenge["challenge_id"])
                if challenge_id in answered:
                    continue
                answered.add(challenge_id)
                print(_describe(challenge), flush=True)
                numbers = [int(n) for n in challenge.get("numbers", [])]
                reply = (
                    ask(
                        f"Which number does the sign-in page show? {' / '.join(map(str, numbers))}"
                        " (or 'd' to deny, 'n' if this was not you): "
                    )
                    .strip()
                    .lower()
                )
                try:
                    if reply in {"n", "not me"}:
                        companion.answer(challenge_id, decision="deny", number=None, not_me=True)
                        print("Denied and reported as not you.", flush=True)
                    elif reply.isdigit():
                        companion.answer(challenge_id, decision="approve", number=int(reply))
                        print(f"Approved with {reply}.", flush=True)
                    else:
                        companion.answer(challenge_id, decision="deny", number=None)
                        print("Denied.", flush=True)
                except CompanionError as error:
                    print(f"Not sent: {error}", file=sys.stderr, flush=True)
    except (KeyboardInterrupt, EOFError):
        print("Stopped.")
    return 0


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("authenticator", help="the push companion: pair, list, approve, deny, watch")
    commands = parser.add_subparsers(dest="authenticator_command", required=True, metavar="COMMAND")

    def with_store(command: argparse.ArgumentParser) -> argparse.ArgumentParser:
        command.add_argument("--store", metavar="FILE", help=f"the device key file (default {default_store()})")
        return command

    pair = with_store(commands.add_parser("pair", help="pair with a twofold://pair URI from the enrollment page"))
    pair.add_argument("pairing_uri", metavar="PAIRING_URI")
    pair.add_argument("--name", default=os.uname().nodename if hasattr(os, "uname") else "this device")
    pair.add_argument("--platform", default=f"twofold-cli ({sys.platform})")
    pair.add_argument("--force", action="store_true", help="replace the key file's device")
    pair.set_defaults(handler=cmd_pair)

    listing = with_store(commands.add_parser("list", help="pending sign-ins with their context"))
    listing.add_argument("--wait", type=int, default=0, choices=range(0, 26), metavar="SECONDS")
    listing.set_defaults(handler=cmd_list)

    approve = with_store(commands.add_parser("approve", help="approve a sign-in with the number it shows"))
    approve.add_argument("--number", type=int, required=True, metavar="N")
    approve.add_argument("challenge_id", nargs="?", metavar="CHALLENGE_ID")
    approve.set_defaults(handler=cmd_approve)

    deny = with_store(commands.add_parser("deny", help="deny a sign-in"))
    deny.add_argument("--not-me", action="store_true", help="report that you did not try to sign in")
    deny.add_argument("challenge_id", nargs="?", metavar="CHALLENGE_ID")
    deny.set_defaults(handler=cmd_deny)

    watch = with_store(commands.add_parser("watch", help="wait for sign-ins and answer them"))
    watch.set_defaults(handler=cmd_watch)
