#!/usr/bin/env python3
"""Benchmark of the second-factor step: a real `twofold serve`, POST /api/v1/login/verify with TOTP codes.

    python bench/totp.py [--users N] [--concurrency 16] [--duration 20] [--warmup 3] [--workers 1]
                         [--database-url postgresql://...] [--port N] [--client raw|httpx] [--json]

It prints TOTP verifications/s and latency percentiles. Only the second factor is timed: the password step
(one argon2 verification, ~30 ms of CPU, measured by bench/login.py) is left out. Before the server starts,
the users, their authenticator apps and the open login transactions (`mfa_required`, one per verification
to come) are written to the database through Twofold's own services, methods and repositories, with the
server's secret key; during the load every request is a TOTP code the server has not accepted yet, computed
by the client with pyotp before the request is timed.

The server accepts each time step once per method, from now-1 to now+1, so a user gives at most three
verifications at first and then one per 30 s: the benchmark seeds enough users for the expected rate and
warns when it ran out of them.

The database is fresh and thrown away, as in bench/login.py: a SQLite file in a temporary folder by default,
or, with --database-url postgresql://..., a new database `twofold_bench_<random>` created on that server and
dropped at the end. See bench/README.md for results.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import math
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyotp

# The password-step benchmark's machinery: database set-up, server, HTTP client, CPU accounting.
# Importing it also puts the checkout's src/ on sys.path.
from login import (
    ORGANIZATION,
    CpuSnapshot,
    HttpxClient,
    LoadResult,
    RawClient,
    Server,
    _classify,
    _new_event_loop_runner,
    _pool,
    cpu_use,
    free_port,
    fresh_database,
    log,
    percentile,
    settings_overrides,
)

VERIFY_PATH = "/api/v1/login/verify"
# Every code of the benchmark is right, so the second-factor back-off would never delay one (a success
# resets the count); raised anyway so that a stray failure cannot turn into a back-off.
MFA_THROTTLE_SETTINGS = {"mfa_free_attempts": 1_000_000}
# Users are sized for this many verifications/s over warm-up + measured window (--users overrides).
EXPECTED_RATE = 250
# A code of step now-1 is sent only while the server will still take it for this long: its window
# closes at the next step boundary, and a request in flight across it would fail for the benchmark's sake.
STEP_MARGIN_SECONDS = 5.0
SEED_BATCH = 100  # users per unit of work when recording their authenticator apps


# -- seeding -----------------------------------------------------------------------------------


@dataclass
class TotpUser:
    """A seeded user as the client knows it: the authenticator app's secret and parameters, the last
    time step the server accepted for it, and open login transactions, one per verification to come."""

    user_id: str
    secret: str
    digest: str
    digits: int
    period: int
    last_step: int | None
    tokens: list[str] = field(default_factory=list)

    def code(self, step: int) -> str:
        digest = getattr(hashlib, self.digest.lower())
        return pyotp.TOTP(self.secret, digits=self.digits, digest=digest, interval=self.period).at(step * self.period)


_SEED_CONTAINER: Any = None


def _seed_init(overrides: dict[str, Any]) -> None:
    global _SEED_CONTAINER
    from twofold.config import load_settings
    from twofold.container import build

    _SEED_CONTAINER = build(load_settings(**overrides))


def _seed_users(organization_id: str, usernames: list[str]) -> list[TotpUser]:
    """Create users through the account service and give each an active authenticator app the way the
    login's enrollment does: the method's own begin_enrollment (secret sealed with the server's key),
    its complete_enrollment with a code of the previous step, then activation by the method repository."""
    from twofold.domain.clock import utcnow
    from twofold.services.context import RequestContext

    twofold = _SEED_CONTAINER
    context = RequestContext(ip=None)
    method = twofold.registry.method("totp")
    with twofold.uow(read_only=True) as uow:
        organization = uow.organizations.get(organization_id)
    seeded: list[TotpUser] = []
    for start in range(0, len(usernames), SEED_BATCH):
        enrolled = []
        for username in usernames[start : start + SEED_BATCH]:
            # No password: the password step is not part of this benchmark, and argon2 would make
            # seeding thousands of users take minutes. The unused set-up link does not matter.
            user = twofold.accounts.create_user(
                organization_id=organization_id,
                username=username,
                email=f"{username}@bench.example.com",
                kind="user",
                service_type=None,
                password=None,
                actor_id=None,
                context=context,
            ).user
            # The QR code costs tens of ms of CPU: made here, outside any database transaction.
            method_context = twofold.login.method_context(organization, context)
            started = method.begin_enrollment(user=user, name="Bench phone", context=method_context)
            data = started.client_data
            totp_user = TotpUser(user.id, data["secret"], data["algorithm"], data["digits"], data["period"], None)
            step = int(time.time() // totp_user.period) - 1  # the oldest step accepted: the most left for later
            result = method.complete_enrollment(
                user=user, record=started.record, proof={"code": totp_user.code(step)}, context=method_context
            )
            totp_user.last_step = result.counter
            enrolled.append((started.record, result.counter, totp_user))
        now = utcnow()
        with twofold.uow() as uow:
            for record, _, _ in enrolled:
                uow.methods.add(record)
            uow.flush()
            for record, counter, _ in enrolled:
                if not uow.methods.activate(record.id, counter=counter, now=now):
                    raise RuntimeError(f"could not activate the authenticator app {record.id}")
        seeded.extend(totp_user for _, _, totp_user in enrolled)
    return seeded


def seed(overrides: dict[str, Any], count: int, processes: int) -> list[TotpUser]:
    """Migrate, create the organization, then `count` users with an active authenticator app each."""
    from twofold.config import load_settings
    from twofold.container import build
    from twofold.storage.migrate import upgrade

    settings = load_settings(**overrides)
    upgrade(settings.database_url)
    twofold = build(settings)
    try:
        organization, _ = twofold.accounts.init_organization(
            organization_name=ORGANIZATION,
            admin_username="bench-admin",
            admin_email="bench-admin@bench.example.com",
            admin_password=None,
        )
    finally:
        twofold.close()
    usernames = [f"bench-user-{i:05d}" for i in range(count)]
    # One process per core, on SQLite too: the CPU (the QR code) is spent outside the write transactions,
    # which hold SQLite's lock for a few ms each.
    processes = max(1, min(processes, count // SEED_BATCH or 1))
    chunks = [usernames[i::processes] for i in range(processes)]
    with _pool(processes, _seed_init, (overrides,)) as pool:
        users = [user for chunk in pool.map(_seed_users, [organization.id] * processes, chunks) for user in chunk]
    assert len(users) == count
    return users


def open_transactions(overrides: dict[str, Any], users: list[TotpUser], per_user: int, lifetime: float) -> None:
    """`per_user` open `mfa_required` login transactions for each user, as the password step leaves them:
    LoginTransaction rows holding the hash of a fresh `tft_` token; the tokens stay with the client."""
    from twofold.config import load_settings
    from twofold.container import build
    from twofold.domain.clock import utcnow
    from twofold.domain.entities import LoginTransaction, TransactionState
    from twofold.services.crypto import hash_token, new_token
    from twofold.services.login import TRANSACTION_TOKEN_PREFIX

    twofold = build(load_settings(**overrides))
    try:
        expires_at = utcnow() + timedelta(seconds=lifetime)
        for start in range(0, len(users), 500):
            with twofold.uow() as uow:
                for user in users[start : start + 500]:
                    for _ in range(per_user):
                        token = new_token(TRANSACTION_TOKEN_PREFIX)
                        uow.transactions.add(
                            LoginTransaction(
                                user_id=user.user_id,
                                token_hash=hash_token(token),
                                state=TransactionState.MFA_REQUIRED.value,
                                expires_at=expires_at,
                                ip="127.0.0.1",
                                user_agent="twofold-bench",
                            )
                        )
                        user.tokens.append(token)
    finally:
        twofold.close()


# -- the work queue ----------------------------------------------------------------------------


class UserPool:
    """Hands out (user, time step, transaction token): the next step the server will accept for a user,
    in increasing order, and never two requests for one user at once (a later step accepted first
    would make the earlier one a replay). A user whose next step is ahead of the window waits for
    the clock; users arrive and leave in FIFO order, so the load spreads over all of them."""

    def __init__(self, users: Sequence[TotpUser]) -> None:
        periods = {user.period for user in users}
        assert len(periods) == 1, f"one TOTP period for every user, not {periods}"
        self.period = periods.pop()
        self.ready: collections.deque[TotpUser] = collections.deque(users)
        # Users whose next step is ahead of the window, by that step: ready when the clock reaches the one before.
        self.waiting: dict[int, list[TotpUser]] = {}
        self.out_of_transactions = 0

    def take(self, unix_time: float) -> tuple[TotpUser, int, str] | None:
        period = self.period
        now_step = int(unix_time // period)
        for step in [s for s in self.waiting if s <= now_step + 1]:
            self.ready.extend(self.waiting.pop(step))
        oldest = int((unix_time + STEP_MARGIN_SECONDS) // period) - 1
        while self.ready:
            user = self.ready.popleft()
            if not user.tokens:
                self.out_of_transactions += 1
                continue
            step = oldest if user.last_step is None else max(user.last_step + 1, oldest)
            if step > now_step + 1:
                self.waiting.setdefault(step, []).append(user)
                continue
            return user, step, user.tokens.pop()
        return None

    def give_back(self, user: TotpUser, step: int) -> None:
        """After the answer, whatever it was: the step counts as used (a request that failed in transit
        may have been accepted), and so does the transaction."""
        user.last_step = step
        self.ready.append(user)

    def next_ready_at(self) -> float | None:
        """Unix time at which a waiting user has a code to give again, or None when nobody waits."""
        if not self.waiting:
            return None
        return (min(self.waiting) - 1) * self.period


# -- the load ----------------------------------------------------------------------------------


@dataclass
class VerifyLoadResult(LoadResult):
    dry_worker_seconds: float = 0.0  # in the window, summed over the concurrent workers waiting for a user
    first_dry_at: float | None = None  # seconds into the window


class VerifyClient(RawClient):
    """bench/login.py's raw HTTP/1.1 client, posting to the verification endpoint."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.head = self.head.replace(b"POST /api/v1/login ", f"POST {VERIFY_PATH} ".encode(), 1)


def _verify_body(token: str, code: str) -> bytes:
    return json.dumps({"transaction": token, "type": "totp", "code": code}).encode()


async def run_load(
    server: Server,
    pool: UserPool,
    *,
    concurrency: int,
    warmup: float,
    duration: float,
    client: str,
    database_name: str | None,
) -> VerifyLoadResult:
    result = VerifyLoadResult()
    snapshots: list[CpuSnapshot] = []
    # perf_counter, not loop.time(): uvloop's clock ticks in whole milliseconds, too coarse for these latencies.
    clock = time.perf_counter
    start = clock()
    window_start, window_end = start + warmup, start + warmup + duration
    shared_httpx: Any = None
    if client == "httpx":
        import httpx

        shared_httpx = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency), timeout=120
        )

    async def wait_for_users() -> bool:
        """Sleep until some user has a code to give again; False when none will before the end."""
        ready_at = pool.next_ready_at()
        began = clock()
        until = window_end if ready_at is None else min(window_end, began + max(0.01, ready_at - time.time() + 0.01))
        await asyncio.sleep(max(0.0, until - began))
        ended = clock()
        dry = min(ended, window_end) - max(began, window_start)
        if dry > 0:
            result.dry_worker_seconds += dry
            at = max(began, window_start) - window_start
            result.first_dry_at = at if result.first_dry_at is None else min(result.first_dry_at, at)
        return ready_at is not None and ended < window_end

    async def worker() -> None:
        connection: Any = (
            VerifyClient("127.0.0.1", server.port)
            if shared_httpx is None
            else HttpxClient(shared_httpx, f"{server.base_url}{VERIFY_PATH}")
        )
        try:
            while clock() < window_end:
                item = pool.take(time.time())
                if item is None:
                    await connection.close()  # uvicorn drops keep-alive connections idle for 5 s
                    if not await wait_for_users():
                        break
                    continue
                user, step, token = item
                body = _verify_body(token, user.code(step))  # computed before the clock starts
                began = clock()
                try:
                    status, payload = await connection.post(body)
                except (OSError, asyncio.IncompleteReadError, ValueError) as error:
                    result.errors[type(error).__name__] += 1
                    pool.give_back(user, step)
                    await asyncio.sleep(0.05)
                    continue
                ended = clock()
                pool.give_back(user, step)
                outcome = _classify(status, payload)
                if window_start <= ended < window_end:
                    result.latencies.append(ended - began)
                    result.statuses[outcome] += 1
                elif ended < window_start:
                    result.warmup_statuses[outcome] += 1
        finally:
            await connection.close()

    async def meter() -> None:
        await asyncio.sleep(max(0.0, window_start - clock()))
        first, t0 = CpuSnapshot.take(server.pid, database_name), clock()
        await asyncio.sleep(max(0.0, window_end - clock()))
        last, t1 = CpuSnapshot.take(server.pid, database_name), clock()
        result.window = t1 - t0
        snapshots.extend([first, last])

    try:
        await asyncio.gather(meter(), *(worker() for _ in range(concurrency)))
    finally:
        if shared_httpx is not None:
            await shared_httpx.aclose()
    cpu = cpu_use(snapshots[0], snapshots[1], result.window, len(result.latencies))
    result.cpu = {name.replace("_per_login", "_per_verification"): value for name, value in cpu.items()}
    return result


# -- the run -----------------------------------------------------------------------------------


def default_users(warmup: float, duration: float) -> int:
    """Enough users for EXPECTED_RATE verifications/s over the whole load. Each gives at least two steps
    (now and now+1; now-1 too unless the step is about to end) and one more per step boundary crossed."""
    return max(100, math.ceil(EXPECTED_RATE * (warmup + duration) / 2 / 100) * 100)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python bench/totp.py")
    parser.add_argument(
        "--users",
        type=int,
        help=f"users to seed, each with an authenticator app (default: enough for {EXPECTED_RATE}/s over "
        "warm-up + duration: 2900 for the defaults)",
    )
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight at once (16)")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds (20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring (3)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes: twofold serve --workers (1)")
    parser.add_argument("--database-url", help="postgresql://... : benchmark in a fresh database on that server")
    parser.add_argument("--port", type=int, help="server port (a free one by default)")
    parser.add_argument(
        "--client", choices=["raw", "httpx"], default="raw", help="load generator: raw asyncio HTTP/1.1 or httpx"
    )
    parser.add_argument("--json", action="store_true", help="also print one JSON line with every figure")
    args = parser.parse_args(argv)
    if args.users is None:
        args.users = default_users(args.warmup, args.duration)
    if args.users < 1 or args.concurrency < 1 or args.workers < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("--users, --concurrency and --workers must be >= 1, --duration > 0, --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cores = os.cpu_count() or 1
    workdir = Path(tempfile.mkdtemp(prefix="twofold-bench-"))
    server: Server | None = None

    def on_sigterm(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    load_seconds = args.warmup + args.duration
    # The steps a user can give during the load: from now-1 at the start to now+1 at the end.
    per_user = math.ceil(load_seconds / 30) + 3
    try:
        with fresh_database(args.database_url, workdir) as database:
            port = args.port or free_port()
            public_url = f"http://127.0.0.1:{port}"
            overrides = {
                **settings_overrides(database.url, public_url, secrets.token_urlsafe(48)),
                **MFA_THROTTLE_SETTINGS,
            }
            log(f"database: {database.label}")
            log(f"seeding 1 organization and {args.users} users with an authenticator app ({cores} processes) ...")
            seeded_at = time.perf_counter()
            users = seed(overrides, args.users, cores)
            log(f"  users in {time.perf_counter() - seeded_at:.1f} s; {per_user} open login transactions each ...")
            # Open for the whole run even if it is longer than the server's own 5 minutes.
            lifetime = max(300.0, load_seconds + 300)
            open_transactions(overrides, users, per_user, lifetime)
            seed_seconds = time.perf_counter() - seeded_at
            log(f"seeded in {seed_seconds:.1f} s")

            server_env = {f"TWOFOLD_{k.upper()}": str(v) for k, v in overrides.items()}
            server = Server(server_env, port, args.workers, workdir)
            server.wait_ready()
            log(f"server up: {server.command} (pid {server.pid})")

            log(
                f"load: {args.concurrency} concurrent verifications for {args.warmup:g} s warm-up + "
                f"{args.duration:g} s measured ({args.client} client) ..."
            )
            pool = UserPool(users)
            load = _new_event_loop_runner()(
                run_load(
                    server,
                    pool,
                    concurrency=args.concurrency,
                    warmup=args.warmup,
                    duration=args.duration,
                    client=args.client,
                    database_name=database.name,
                )
            )
            time.sleep(1.0)  # let the requests still in flight at the end of the window drain
            server.stop()
            server_log = server.log_summary()
            server = None
            report = summarize(args, database.label, cores, seed_seconds, per_user, load, pool)
            report["server_log"] = server_log
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print_report(report, as_json=args.json)
    failures = sum(n for s, n in report["statuses"].items() if not s.startswith("200 ")) + sum(
        report["errors"].values()
    )
    return 1 if failures or not report["responses"] else 0


def summarize(
    args: argparse.Namespace,
    database_label: str,
    cores: int,
    seed_seconds: float,
    per_user: int,
    load: VerifyLoadResult,
    pool: UserPool,
) -> dict[str, Any]:
    latencies = sorted(load.latencies)
    ok = sum(n for s, n in load.statuses.items() if s.startswith("200 "))
    return {
        "database": "postgresql" if args.database_url else "sqlite",
        "database_detail": database_label,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "users": args.users,
        "transactions_per_user": per_user,
        "duration_s": round(load.window, 2),
        "warmup_s": args.warmup,
        "client": args.client,
        "cores": cores,
        "seed_s": round(seed_seconds, 1),
        "responses": len(latencies),
        "statuses": dict(load.statuses),
        "warmup_statuses": dict(load.warmup_statuses),
        "errors": dict(load.errors),
        "verifications_per_s": round(ok / load.window, 2) if load.window else 0.0,
        "latency_ms": {
            name: round(percentile(latencies, q) * 1000, 1)
            for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("max", 1.0))
        },
        # Worker-seconds in the window spent waiting for a user with a code left: 0 unless the pool
        # of users was too small for the rate (then the figures above understate the server).
        "pool_dry_worker_s": round(load.dry_worker_seconds, 2),
        "pool_first_dry_at_s": None if load.first_dry_at is None else round(load.first_dry_at, 2),
        "users_out_of_transactions": pool.out_of_transactions,
        "cpu": load.cpu,
    }


def print_report(report: dict[str, Any], *, as_json: bool) -> None:
    lat = report["latency_ms"]
    cpu = report["cpu"]
    non_200 = {s: n for s, n in report["statuses"].items() if not s.startswith("200 ")}
    postgresql = report["database"] == "postgresql"
    database_cpu = f", its PostgreSQL backends {cpu['database_cores']:.2f}" if postgresql else ""
    if report["pool_dry_worker_s"]:
        pool_line = (
            f"WARNING: ran dry {report['pool_first_dry_at_s']:g} s into the window; workers waited "
            f"{report['pool_dry_worker_s']:g} worker-s for a user with a code left: the rate is understated, "
            f"rerun with more --users (e.g. {report['users'] * 2})"
        )
    else:
        pool_line = "never ran dry"
    lines = [
        "",
        "Twofold TOTP benchmark: second-factor step, POST /api/v1/login/verify (type totp)",
        f"  database     {report['database_detail']}",
        f"  server       twofold serve --workers {report['workers']}",
        f"  load         {report['users']} users with an authenticator app and {report['transactions_per_user']} "
        f"open login transactions each (seeded in {report['seed_s']} s), concurrency {report['concurrency']}, "
        f"warm-up {report['warmup_s']:g} s, measured {report['duration_s']:g} s, {report['client']} client",
        f"  responses    {report['responses']} in the window: "
        + ", ".join(f"{n} x {s}" for s, n in sorted(report["statuses"].items())),
        f"  non-200      {non_200 or 'none'}; connection errors: {report['errors'] or 'none'}",
        f"  user pool    {pool_line}",
        f"  server log   {report['server_log'] or 'no warnings or errors'}",
        f"  verifications/s {report['verifications_per_s']:.1f}",
        f"  latency      p50 {lat['p50']:.1f} ms, p90 {lat['p90']:.1f} ms, p99 {lat['p99']:.1f} ms, "
        f"max {lat['max']:.1f} ms",
        f"  CPU (cores)  server {cpu['server_cores']:.2f}{database_cpu}, client {cpu['client_cores']:.2f}, "
        f"other processes {cpu['other_cores']:.2f}, idle {cpu['idle_cores']:.2f} (of {report['cores']})",
        f"  CPU / verify  server {cpu['server_ms_per_verification']:.2f} ms"
        + (f" + PostgreSQL {cpu['database_ms_per_verification']:.2f} ms" if postgresql else "")
        + f" + client {cpu['client_ms_per_verification']:.2f} ms",
        "",
        f"verifications/s = {report['verifications_per_s']:.1f}, p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms"
        + ("" if report["pool_dry_worker_s"] == 0 else " (user pool ran dry: understated)"),
    ]
    print("\n".join(lines), flush=True)
    if report["pool_dry_worker_s"]:
        log(f"warning: the user pool ran dry; rerun with more --users (e.g. {report['users'] * 2})")
    if as_json:
        print(json.dumps(report, sort_keys=True), flush=True)


if __name__ == "__main__":
    sys.exit(main())
