#!/usr/bin/env python3
"""Benchmark of push sign-in: from the device's approval to the browser being signed in, on a real `twofold serve`.

    python bench/push.py [--signins 200] [--concurrency 8] [--warmup 16] [--think 0.2] [--workers 1]
                         [--database-url postgresql://...] [--port N] [--json]

Each sign-in is one simulated browser and its user's device, as the sign-in page and Twofold Authenticator
do it:

1. browser: POST /api/v1/login/push {transaction} -> {challenge_id, number} (the page's "Send push notification");
2. browser: the page's long poll, GET /login/push/status?challenge_id=...&wait=25 with the login cookie
   (`Cookie: __Host-twofold_login=<transaction token>`, set by hand: the cookie is a Secure `__Host-` one and
   the bench speaks plain HTTP; the page's cookie holds the same token as the JSON API's transaction);
3. device: GET /api/v1/push/challenges?wait=0 (`Twofold-Device` JWS), where it finds the challenge and its
   three numbers; then `--think` seconds, the user looking at the page's number;
4. device: POST /api/v1/push/challenges/{id}/response {response: JWS approving with the number} -> 204;
5. browser: the long poll answers {"status": "approved"}; then POST /api/v1/login/verify {transaction,
   type: "push", challenge_id} -> 200 authenticated (what the page's form post does, through the JSON API).

Timed, per sign-in: the device's answer (4: sent -> 204), the long poll's wake-up (204 -> "approved" read),
approval -> signed in (204 -> 200 authenticated) and tap -> signed in (4 sent -> 200). The wake-up runs in
parallel with the delivery of the 204, so it can be slightly negative.

Users have passwords and a paired device, both set up through the real API before the timed part (pairing:
login, enroll "push", POST /api/v1/push/pair with a fresh P-256 key, enroll/complete), and every password step is
done before the timed part too (one argon2 verification each), so that only push is measured. The fatigue limit
allows 3 prompts per user per 10 minutes: the bench seeds ceil((signins + warmup) / 3) users and gives each 3
sign-ins, never two at once. The database is fresh and thrown away, as in bench/login.py. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The password-step benchmark's machinery: database, seeding, server, HTTP/1.1 client, percentiles.
# Importing it also puts the checkout's src/ on sys.path.
from login import (
    RawClient,
    Server,
    _new_event_loop_runner,
    free_port,
    fresh_database,
    log,
    percentile,
    seed,
    settings_overrides,
)

LOGIN_COOKIE = "__Host-twofold_login"
CHALLENGES_PATH = "/api/v1/push/challenges"
PROMPTS_PER_USER = 3  # the fatigue limit: prompts per user per 10 minutes (services/push.py PROMPT_LIMIT)
# Every password step is done before the timed part; the transactions must outlive a long run.
TRANSACTION_SETTINGS = {"transaction_mfa_seconds": 3600}
LONG_POLL_WAIT = 25
METRICS = (
    ("device_answer", "device answer (tap -> 204)"),
    ("wake", "long-poll wake-up (204 -> approved)"),
    ("approval_to_signed_in", "approval -> signed in (204 -> 200)"),
    ("tap_to_signed_in", "tap -> signed in"),
)


class BenchError(Exception):
    pass


class Connection(RawClient):
    """bench/login.py's raw HTTP/1.1 keep-alive client, for any method, path and headers."""

    async def call(
        self, method: str, path: str, payload: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self.head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUser-Agent: twofold-bench\r\n"
            f"Content-Type: application/json\r\nAccept: application/json\r\n{extra}"
        ).encode()
        status, body = await self.post(b"" if payload is None else json.dumps(payload).encode())
        return status, json.loads(body) if body else None


def expect(status: int, body: Any, wanted: int, what: str) -> Any:
    if status != wanted:
        raise BenchError(f"{what}: {status} {str(body)[:160]}")
    return body


@dataclass
class Device:
    """A paired Twofold Authenticator: its id, its private key, and the server's public URL (for `htu`)."""

    device_id: str
    key: Any
    public_url: str

    def signed(self, method: str, path: str) -> dict[str, str]:
        from twofold.methods.push.device import sign_device_request

        token = sign_device_request(
            self.key, device_id=self.device_id, htm=method, htu=self.public_url + path, jti=secrets.token_urlsafe(24)
        )
        return {"Authorization": f"Twofold-Device {token}"}


@dataclass
class SignIn:
    device: Device
    transaction: str


@dataclass
class Results:
    samples: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name, _ in METRICS})
    failures: Counter[str] = field(default_factory=Counter)
    repolls: int = 0  # long polls that answered "pending" and were asked again
    wall: float = 0.0


# -- set-up through the API --------------------------------------------------------------------


async def in_lanes(concurrency: int, items: Sequence[Any], work: Any, port: int) -> list[Any]:
    """`work(connection, item)` for every item, `concurrency` at once, each lane on its own connection."""
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    for index, item in enumerate(items):
        queue.put_nowait((index, item))
    done: list[Any] = [None] * len(items)

    async def lane() -> None:
        connection = Connection("127.0.0.1", port)
        try:
            while not queue.empty():
                index, item = queue.get_nowait()
                done[index] = await work(connection, item)
        finally:
            await connection.close()

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return done


async def pair(connection: Connection, user: tuple[str, str], public_url: str) -> Device:
    """Password step, a push enrollment at the forced enrollment, pairing by the device, completion."""
    from twofold.methods.push.device import new_device_key, public_jwk

    username, password = user
    body = expect(
        *await connection.call("POST", "/api/v1/login", {"username": username, "password": password}), 200, "login"
    )
    transaction = body["transaction"]
    started = expect(
        *await connection.call("POST", "/api/v1/login/enroll", {"transaction": transaction, "type": "push"}),
        200,
        "enroll",
    )
    key = new_device_key()
    paired = expect(
        *await connection.call(
            "POST",
            "/api/v1/push/pair",
            {
                "pairing_code": started["pairing_code"],
                "public_key": public_jwk(key),
                "device_name": f"{username}'s phone",
                "platform": "twofold-bench",
            },
        ),
        201,
        "pair",
    )
    completed = expect(
        *await connection.call(
            "POST",
            "/api/v1/login/enroll/complete",
            {"transaction": transaction, "enrollment_id": started["enrollment_id"]},
        ),
        200,
        "enroll/complete",
    )
    if completed.get("status") != "authenticated":
        raise BenchError(f"enroll/complete: {completed}")
    return Device(paired["device_id"], key, public_url)


async def open_transaction(connection: Connection, item: tuple[tuple[str, str], Device]) -> SignIn:
    (username, password), device = item
    body = expect(
        *await connection.call("POST", "/api/v1/login", {"username": username, "password": password}), 200, "login"
    )
    if body["status"] != "mfa_required":
        raise BenchError(f"login: {body}")
    return SignIn(device, body["transaction"])


# -- the timed part ----------------------------------------------------------------------------


async def long_poll(connection: Connection, challenge_id: str, transaction: str, results: Results) -> tuple[str, float]:
    """The page's long poll, asked again while it answers "pending"; (status, when it was read)."""
    path = f"/login/push/status?challenge_id={challenge_id}&wait={LONG_POLL_WAIT}"
    while True:
        status, body = await connection.call("GET", path, headers={"Cookie": f"{LOGIN_COOKIE}={transaction}"})
        read_at = time.perf_counter()
        expect(status, body, 200, "push/status")
        if body["status"] != "pending":
            return body["status"], read_at
        results.repolls += 1


async def sign_in(lane: dict[str, Connection], item: SignIn, think: float, results: Results, measured: bool) -> None:
    from twofold.methods.push.device import sign_answer

    browser, poll, phone = lane["browser"], lane["poll"], lane["device"]
    device, transaction = item.device, item.transaction
    started = expect(*await browser.call("POST", "/api/v1/login/push", {"transaction": transaction}), 200, "login/push")
    challenge_id, number = started["challenge_id"], started["number"]
    polling = asyncio.create_task(long_poll(poll, challenge_id, transaction, results))
    try:
        listed = expect(
            *await phone.call("GET", f"{CHALLENGES_PATH}?wait=0", headers=device.signed("GET", CHALLENGES_PATH)),
            200,
            "push/challenges",
        )
        shown = [c for c in listed if c["challenge_id"] == challenge_id]
        if not shown or number not in shown[0]["numbers"]:
            raise BenchError(f"the device does not see challenge {challenge_id} with {number}: {listed}")
        # Signed before the clock starts: the device's CPU is not the server's latency.
        path = f"{CHALLENGES_PATH}/{challenge_id}/response"
        answer = {"response": sign_answer(device.key, challenge_id=challenge_id, decision="approve", number=number)}
        headers = device.signed("POST", path)
        await asyncio.sleep(think)
        if polling.done():
            polling.result()  # its error, if it failed
            raise BenchError("the long poll answered before the device did")
        tapped = time.perf_counter()
        expect(*await phone.call("POST", path, answer, headers), 204, "push response")
        answered = time.perf_counter()
        status, woken = await polling
    finally:
        if not polling.done():
            polling.cancel()
            with contextlib.suppress(BaseException):
                await polling
    if status != "approved":
        raise BenchError(f"the long poll answered {status!r}")
    verified = expect(
        *await browser.call(
            "POST",
            "/api/v1/login/verify",
            {"transaction": transaction, "type": "push", "challenge_id": challenge_id},
        ),
        200,
        "login/verify",
    )
    signed_in = time.perf_counter()
    if verified.get("status") != "authenticated":
        raise BenchError(f"login/verify: {verified}")
    if measured:
        for name, value in (
            ("device_answer", answered - tapped),
            ("wake", woken - answered),
            ("approval_to_signed_in", signed_in - answered),
            ("tap_to_signed_in", signed_in - tapped),
        ):
            results.samples[name].append(value)


async def run_load(port: int, items: list[SignIn], *, warmup: int, concurrency: int, think: float) -> Results:
    """`concurrency` lanes, each a browser (two connections: requests and the long poll) and a device."""
    results = Results()
    queue: asyncio.Queue[tuple[int, SignIn]] = asyncio.Queue()
    for index, item in enumerate(items):
        queue.put_nowait((index, item))

    async def lane() -> None:
        connections = {name: Connection("127.0.0.1", port) for name in ("browser", "poll", "device")}
        try:
            while not queue.empty():
                index, item = queue.get_nowait()
                try:
                    await sign_in(connections, item, think, results, measured=index >= warmup)
                except (BenchError, OSError, asyncio.IncompleteReadError, ValueError) as error:
                    results.failures[f"{type(error).__name__}: {str(error)[:120]}"] += 1
                    for connection in connections.values():  # a request may be half-read: start afresh
                        await connection.close()
        finally:
            for connection in connections.values():
                await connection.close()

    began = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    results.wall = time.perf_counter() - began
    return results


# -- the run -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python bench/push.py")
    parser.add_argument("--signins", type=int, default=200, help="measured sign-ins (200)")
    parser.add_argument("--concurrency", type=int, default=8, help="simulated users signing in at once (8)")
    parser.add_argument("--warmup", type=int, default=16, help="sign-ins before the measured ones (16)")
    parser.add_argument(
        "--think", type=float, default=0.2, help="seconds between the device seeing the challenge and approving (0.2)"
    )
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes: twofold serve --workers (1)")
    parser.add_argument("--database-url", help="postgresql://... : benchmark in a fresh database on that server")
    parser.add_argument("--port", type=int, help="server port (a free one by default)")
    parser.add_argument("--json", action="store_true", help="also print one JSON line with every figure")
    args = parser.parse_args(argv)
    if args.signins < 1 or args.concurrency < 1 or args.workers < 1 or args.warmup < 0 or args.think < 0:
        parser.error("--signins, --concurrency and --workers must be >= 1, --warmup and --think >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cores = os.cpu_count() or 1
    workdir = Path(tempfile.mkdtemp(prefix="twofold-bench-"))
    server: Server | None = None

    def on_sigterm(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    total = args.signins + args.warmup
    user_count = math.ceil(total / PROMPTS_PER_USER)
    runner = _new_event_loop_runner()
    try:
        with fresh_database(args.database_url, workdir) as database:
            port = args.port or free_port()
            public_url = f"http://127.0.0.1:{port}"
            overrides = {
                **settings_overrides(database.url, public_url, secrets.token_urlsafe(48)),
                **TRANSACTION_SETTINGS,
            }
            log(f"database: {database.label}")
            log(f"seeding 1 organization and {user_count} users with passwords ...")
            users, _ = seed(overrides, user_count, cores)

            server_env = {f"TWOFOLD_{k.upper()}": str(v) for k, v in overrides.items()}
            server = Server(server_env, port, args.workers, workdir)
            server.wait_ready()
            log(f"server up: {server.command} (pid {server.pid})")

            log(f"pairing a device for each of the {user_count} users through the API ...")
            devices = runner(in_lanes(args.concurrency, users, lambda c, user: pair(c, user, public_url), port))
            # Round-robin: a user's sign-ins are a round apart, so never two of them at once.
            plan = [(users[i % user_count], devices[i % user_count]) for i in range(total)]
            log(f"{total} password steps ({args.warmup} warm-up + {args.signins} measured sign-ins) ...")
            items = runner(in_lanes(args.concurrency, plan, open_transaction, port))

            log(f"load: {total} push sign-ins, {args.concurrency} at once, think time {args.think:g} s ...")
            results = runner(run_load(port, items, warmup=args.warmup, concurrency=args.concurrency, think=args.think))
            server.stop()
            server_log = quiet_notices(server.log_summary())
            server = None
            report = summarize(args, database.label, cores, user_count, results)
            report["server_log"] = server_log
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print_report(report, as_json=args.json)
    return 1 if report["failures"] or report["signed_in"] < args.signins else 0


def quiet_notices(server_log: dict[str, int]) -> dict[str, int]:
    """Pairing emails each user a security notice, which the server logs as a warning without TWOFOLD_SMTP_URL:
    counted on one line, not one line per user."""
    kept = {line: n for line, n in server_log.items() if not line.startswith("twofold.notifications: message to")}
    notices = sum(server_log.values()) - sum(kept.values())
    if notices:
        kept["security notices logged, not sent (no TWOFOLD_SMTP_URL)"] = notices
    return kept


def summarize(
    args: argparse.Namespace, database_label: str, cores: int, user_count: int, results: Results
) -> dict[str, Any]:
    def figures(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        return {
            name: round(percentile(ordered, q) * 1000, 1)
            for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("max", 1.0))
        }

    return {
        "database": "postgresql" if args.database_url else "sqlite",
        "database_detail": database_label,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "signins": args.signins,
        "warmup": args.warmup,
        "think_s": args.think,
        "users": user_count,
        "cores": cores,
        "signed_in": len(results.samples["tap_to_signed_in"]),
        "failures": dict(results.failures),
        "repolls": results.repolls,
        "wall_s": round(results.wall, 2),
        "latency_ms": {name: figures(results.samples[name]) for name, _ in METRICS},
    }


def print_report(report: dict[str, Any], *, as_json: bool) -> None:
    latency = report["latency_ms"]
    lines = [
        "",
        "Twofold push benchmark: device approval -> browser signed in (long poll GET /login/push/status, "
        "then POST /api/v1/login/verify)",
        f"  database     {report['database_detail']}",
        f"  server       twofold serve --workers {report['workers']}",
        f"  load         {report['signins']} measured sign-ins (+{report['warmup']} warm-up) by {report['users']} "
        f"users with a paired device, {report['concurrency']} at once, think time {report['think_s']:g} s, "
        f"{report['wall_s']:g} s in all, {report['cores']} cores",
        f"  signed in    {report['signed_in']} of {report['signins']}; failures: {report['failures'] or 'none'}; "
        f"long polls answered 'pending': {report['repolls']}",
        f"  server log   {report['server_log'] or 'no warnings or errors'}",
        f"  {'ms':<38}{'median':>8}{'p90':>8}{'p99':>8}{'max':>8}",
    ]
    for name, label in METRICS:
        row = latency[name]
        lines.append(f"  {label:<38}" + "".join(f"{row[q]:>8.1f}" for q in ("p50", "p90", "p99", "max")))
    approval = latency["approval_to_signed_in"]
    lines += [
        "",
        f"approval -> signed in: median {approval['p50']:.1f} ms, p99 {approval['p99']:.1f} ms; "
        f"long-poll wake-up median {latency['wake']['p50']:.1f} ms",
    ]
    print("\n".join(lines), flush=True)
    if as_json:
        print(json.dumps(report, sort_keys=True), flush=True)


if __name__ == "__main__":
    sys.exit(main())
