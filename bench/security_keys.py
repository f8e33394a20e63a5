#!/usr/bin/env python3
"""Benchmark of the WebAuthn second factor: a real `twofold serve`, POST /api/v1/login/verify with assertions.

    python bench/security_keys.py [--users 200] [--verifications N] [--concurrency 16] [--duration 20] [--warmup 3]
                             [--workers 1] [--database-url postgresql://...] [--port N] [--raw-seconds 5]
                             [--client raw|httpx] [--json]

It prints WebAuthn assertion verifications/s and latency percentiles over HTTP, and py_webauthn's raw rate
measured in the same run: `webauthn.verify_authentication_response` in this process, on one core, with the
same kind of credential (an ES256 security key), server idle, right before and right after the load. That is
the most verifications/s one server core could give if a verification cost nothing but py_webauthn.

Only the second factor is timed. Before the server starts, users with a registered security key (ES256,
`none` attestation, verified by the `security_key` method's own complete_enrollment) and their open login
transactions (`mfa_required`, one per verification to come) are written to the database through Twofold's
own services, methods and repositories, with the server's secret key. Then, right before the load, a
preparation phase asks the running server for a challenge for each transaction through the real API
(POST /api/v1/login/webauthn/options); challenges live 2 minutes, so the load (warm-up + measured) is kept
to at most 60 s. During the load each request carries a fresh assertion over its transaction's challenge
with the next signature count, signed before the request is timed by the software authenticator of the tests
(tests/support/authenticator.py: real P-256 keys, `cryptography`), in this process.

The database is fresh and thrown away, as in bench/login.py: a SQLite file in a temporary folder by default,
or, with --database-url postgresql://..., a new database `twofold_bench_<random>` created on that server and
dropped at the end. See bench/README.md for results.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
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
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

# The password-step benchmark's machinery (database set-up, server, HTTP client, CPU accounting) and the
# TOTP benchmark's open login transactions and verification client. Importing `login` also puts the
# checkout's src/ on sys.path.
from login import (
    ORGANIZATION,
    ROOT,
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
    own_cpu,
    percentile,
    settings_overrides,
    system_cpu,
)
from totp import MFA_THROTTLE_SETTINGS, VERIFY_PATH, VerifyClient, open_transactions

# The software authenticator the tests use (the repository root makes `tests` importable).
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))
from tests.support.authenticator import ES256, SoftAuthenticator, SoftCredential, b64url, b64url_decode

OPTIONS_PATH = "/api/v1/login/webauthn/options"
METHOD_TYPE = "security_key"  # cross-platform, UV preferred: what an ES256 USB key registers as
# Challenges are issued for this long (twofold.services.login.CHALLENGE_LIFETIME); one that would be older
# than the lifetime minus this margin when sent is dropped instead (and counted).
CHALLENGE_LIFETIME_SECONDS = 120.0
CHALLENGE_MARGIN_SECONDS = 10.0
MAX_LOAD_SECONDS = 60.0  # warm-up + measured: the challenges are issued before the load
# Challenges are prepared for this many verifications/s over warm-up + measured window (--verifications overrides).
EXPECTED_RATE = 200
SEED_BATCH = 100  # users per unit of work when recording their security keys
RAW_SAMPLES = 512  # distinct prepared assertions the py_webauthn loop cycles through


# -- the software authenticator ----------------------------------------------------------------


def security_key() -> SoftAuthenticator:
    """An ES256 USB security key, played by the tests' software authenticator (browser + authenticator,
    real cryptography, tests/support/authenticator.py): user presence and verification, an incrementing
    signature counter, `none` attestation unless asked for one."""
    return SoftAuthenticator(
        uv=True, attachment="cross-platform", transports=("usb",), attestation="none", algorithms=(ES256,)
    )


def key_id(credential: dict[str, Any]) -> bytes:
    return b64url_decode(credential["rawId"])


def request_options(challenge: str, rp_id: str, credential_id: bytes) -> dict[str, Any]:
    """The parts of the request options the authenticator reads (the rest is for the browser)."""
    return {
        "challenge": challenge,
        "rpId": rp_id,
        "allowCredentials": [{"id": b64url(credential_id), "type": "public-key"}],
    }


# -- seeding -----------------------------------------------------------------------------------


@dataclass
class WebAuthnUser:
    """A seeded user as the client knows it: the security key's credential (private scalar, id, user
    handle, signature count at registration), the open login transactions, and later the challenge
    issued for each of them."""

    user_id: str
    private_value: int
    credential_id: bytes
    user_handle: bytes | None
    sign_count: int
    tokens: list[str] = field(default_factory=list)
    # (transaction token, challenge as sent in the options, perf_counter before it was asked for)
    prepared: collections.deque[tuple[str, str, float]] = field(default_factory=collections.deque)
    key: SoftAuthenticator | None = field(default=None, repr=False, compare=False)

    @classmethod
    def enrolled(cls, user_id: str, key: SoftAuthenticator, credential_id: bytes) -> WebAuthnUser:
        held = key.credentials[credential_id]
        private_value = held.private_key.private_numbers().private_value
        return cls(user_id, private_value, credential_id, held.user_handle, held.sign_count)

    def authenticator(self, rp_id: str) -> SoftAuthenticator:
        """The security key again, in this process (key objects do not cross processes)."""
        if self.key is None:
            self.key = security_key()
            self.key.credentials[self.credential_id] = SoftCredential(
                credential_id=self.credential_id,
                private_key=ec.derive_private_key(self.private_value, ec.SECP256R1()),
                alg=ES256,
                rp_id=rp_id,
                user_handle=self.user_handle,
                sign_count=self.sign_count,
            )
        return self.key

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "key": None}


_SEED_CONTAINER: Any = None


def _seed_init(overrides: dict[str, Any]) -> None:
    global _SEED_CONTAINER
    from twofold.config import load_settings
    from twofold.container import build

    _SEED_CONTAINER = build(load_settings(**overrides))


def _seed_users(organization_id: str, usernames: list[str]) -> list[WebAuthnUser]:
    """Create users through the account service and give each an active security key the way the login's
    enrollment does: the method's own begin_enrollment (creation options, challenge sealed with the
    server's key), its complete_enrollment with the software key's `none` attestation (py_webauthn's
    registration checks), then activation by the method repository with the signature count it returned."""
    from twofold.domain.clock import utcnow
    from twofold.services.context import RequestContext

    twofold = _SEED_CONTAINER
    context = RequestContext(ip=None)
    method = twofold.registry.method(METHOD_TYPE)
    origin = twofold.settings.public_url.rstrip("/")
    with twofold.uow(read_only=True) as uow:
        organization = uow.organizations.get(organization_id)
    seeded: list[WebAuthnUser] = []
    for start in range(0, len(usernames), SEED_BATCH):
        enrolled = []
        for username in usernames[start : start + SEED_BATCH]:
            # No password: the password step is not part of this benchmark (argon2 would cost ~40 ms a user).
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
            method_context = twofold.login.method_context(organization, context)
            started = method.begin_enrollment(user=user, name="Security key", context=method_context)
            key = security_key()
            credential = key.create(started.client_data, origin=origin)  # navigator.credentials.create()
            result = method.complete_enrollment(
                user=user, record=started.record, proof={"credential": credential}, context=method_context
            )
            seeded_user = WebAuthnUser.enrolled(user.id, key, key_id(credential))
            enrolled.append((started.record, result.counter, seeded_user))
        now = utcnow()
        with twofold.uow() as uow:
            for record, _, _ in enrolled:
                uow.methods.add(record)
            uow.flush()
            for record, counter, _ in enrolled:
                if not uow.methods.activate(record.id, counter=counter, now=now):
                    raise RuntimeError(f"could not activate the security key {record.id}")
        seeded.extend(seeded_user for _, _, seeded_user in enrolled)
    return seeded


def seed(overrides: dict[str, Any], count: int, processes: int) -> list[WebAuthnUser]:
    """Migrate, create the organization, then `count` users with an active security key each."""
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
    # One process per core, on SQLite too: the CPU (registration checks) is spent outside the write
    # transactions, which hold SQLite's lock for a few ms each.
    processes = max(1, min(processes, count // SEED_BATCH or 1))
    chunks = [usernames[i::processes] for i in range(processes)]
    with _pool(processes, _seed_init, (overrides,)) as pool:
        users = [user for chunk in pool.map(_seed_users, [organization.id] * processes, chunks) for user in chunk]
    assert len(users) == count
    return users


# -- preparation: a challenge per transaction, through the API ---------------------------------


class OptionsClient(RawClient):
    """bench/login.py's raw HTTP/1.1 client, posting to the WebAuthn options endpoint."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.head = self.head.replace(b"POST /api/v1/login ", f"POST {OPTIONS_PATH} ".encode(), 1)


@dataclass
class Preparation:
    asked: int = 0
    prepared: int = 0
    seconds: float = 0.0
    failures: Counter[str] = field(default_factory=Counter)  # non-200 answers and unusable options
    errors: Counter[str] = field(default_factory=Counter)  # connection-level failures


async def prepare_challenges(server: Server, users: list[WebAuthnUser], *, concurrency: int, rp_id: str) -> Preparation:
    """POST /api/v1/login/webauthn/options {transaction, type: security_key} for every open transaction,
    in the order the load will use them (round robin over the users), and keep each challenge with its
    transaction. The options must name the server's RP id and the user's credential."""
    per_user = max(len(user.tokens) for user in users)
    slots: list[list[tuple[str, str, float] | None]] = [[None] * len(user.tokens) for user in users]
    order = collections.deque((u, k) for k in range(per_user) for u, user in enumerate(users) if k < len(user.tokens))
    result = Preparation(asked=len(order))
    clock = time.perf_counter
    began = clock()

    async def worker() -> None:
        connection = OptionsClient("127.0.0.1", server.port)
        try:
            while order:
                u, k = order.popleft()
                user, token = users[u], users[u].tokens[k]
                body = json.dumps({"transaction": token, "type": METHOD_TYPE}).encode()
                asked_at = clock()
                try:
                    status, payload = await connection.post(body)
                except (OSError, asyncio.IncompleteReadError, ValueError) as error:
                    result.errors[type(error).__name__] += 1
                    await asyncio.sleep(0.05)
                    continue
                if status != 200:
                    result.failures[f"{status} {payload[:80].decode(errors='replace')}"] += 1
                    continue
                public_key = json.loads(payload).get("publicKey", {})
                allowed = {c.get("id") for c in public_key.get("allowCredentials") or []}
                if public_key.get("rpId") != rp_id or b64url(user.credential_id) not in allowed:
                    result.failures["200 options for another RP id or without the credential"] += 1
                    continue
                slots[u][k] = (token, public_key["challenge"], asked_at)
        finally:
            await connection.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = clock() - began
    for user, user_slots in zip(users, slots, strict=True):
        user.prepared.extend(slot for slot in user_slots if slot is not None)
        result.prepared += sum(slot is not None for slot in user_slots)
    return result


# -- the work queue ----------------------------------------------------------------------------


class UserPool:
    """Hands out (user, transaction token, challenge): never two requests for one user at once, so each
    user's signature counts (its authenticator adds one per assertion, made right after the hand-out)
    reach the server in increasing order (a higher count accepted first would make the lower one look
    like a cloned authenticator's). Users rotate FIFO, so the challenges are
    used in about the order they were issued. A challenge that would be too old when sent is dropped."""

    def __init__(self, users: Sequence[WebAuthnUser]) -> None:
        self.ready: collections.deque[WebAuthnUser] = collections.deque(u for u in users if u.prepared)
        self.left = sum(len(u.prepared) for u in users)
        self.expired = 0
        self.oldest_used = 0.0  # seconds between asking for a challenge and sending its assertion
        self.youngest_used = math.inf

    def take(self, now: float) -> tuple[WebAuthnUser, str, str] | None:
        while self.ready:
            user = self.ready.popleft()
            while user.prepared:
                token, challenge, asked_at = user.prepared.popleft()
                self.left -= 1
                age = now - asked_at
                if age > CHALLENGE_LIFETIME_SECONDS - CHALLENGE_MARGIN_SECONDS:
                    self.expired += 1
                    continue
                self.oldest_used = max(self.oldest_used, age)
                self.youngest_used = min(self.youngest_used, age)
                return user, token, challenge
        return None

    def give_back(self, user: WebAuthnUser) -> None:
        """After the answer, whatever it was: the signature count and the transaction stay used (a request
        that failed in transit may have been accepted)."""
        if user.prepared:
            self.ready.append(user)


# -- the load ----------------------------------------------------------------------------------


@dataclass
class WebAuthnLoadResult(LoadResult):
    dry_worker_seconds: float = 0.0  # in the window, summed over the workers waiting for a challenge
    first_dry_at: float | None = None  # seconds into the window


def _verify_body(token: str, credential: dict[str, Any]) -> bytes:
    return json.dumps({"transaction": token, "type": "webauthn", "credential": credential}).encode()


async def run_load(
    server: Server,
    pool: UserPool,
    *,
    rp_id: str,
    origin: str,
    concurrency: int,
    warmup: float,
    duration: float,
    client: str,
    database_name: str | None,
) -> WebAuthnLoadResult:
    result = WebAuthnLoadResult()
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

    def count_dry(began: float, ended: float) -> None:
        dry = min(ended, window_end) - max(began, window_start)
        if dry > 0:
            result.dry_worker_seconds += dry
            at = max(began, window_start) - window_start
            result.first_dry_at = at if result.first_dry_at is None else min(result.first_dry_at, at)

    async def worker() -> None:
        connection: Any = (
            VerifyClient("127.0.0.1", server.port)
            if shared_httpx is None
            else HttpxClient(shared_httpx, f"{server.base_url}{VERIFY_PATH}")
        )
        try:
            while clock() < window_end:
                item = pool.take(clock())
                if item is None:
                    began = clock()
                    if pool.left == 0:  # no challenge left at all: this worker is done
                        count_dry(began, window_end)
                        break
                    await asyncio.sleep(0.002)  # every user with a challenge left is in flight
                    count_dry(began, clock())
                    continue
                user, token, challenge = item
                # Signed (with the next signature count) before the clock starts: the authenticator's time
                # is not the server's.
                key = user.authenticator(rp_id)
                body = _verify_body(
                    token, key.get(request_options(challenge, rp_id, user.credential_id), origin=origin)
                )
                began = clock()
                try:
                    status, payload = await connection.post(body)
                except (OSError, asyncio.IncompleteReadError, ValueError) as error:
                    result.errors[type(error).__name__] += 1
                    pool.give_back(user)
                    await asyncio.sleep(0.05)
                    continue
                ended = clock()
                pool.give_back(user)
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


# -- py_webauthn's raw rate --------------------------------------------------------------------


@dataclass
class RawRate:
    per_second: float  # verify_authentication_response calls/s, one thread, this process
    cpu_ms: float  # CPU milliseconds per call
    other_cores: float  # cores busy with anything but this process meanwhile (other load on the machine)


def py_webauthn_rate(seconds: float, rp_id: str, origin: str) -> RawRate:
    """`webauthn.verify_authentication_response` on prepared ES256 assertions, back to back in this
    process for `seconds`, with the server's arguments for a security key (UV not required). Each
    call checks a distinct assertion (own 64-byte challenge, count above the one it is told is stored).
    The public key comes from py_webauthn's registration check of the key's attestation, as the server's."""
    from webauthn import (
        generate_authentication_options,
        generate_registration_options,
        options_to_json,
        verify_authentication_response,
        verify_registration_response,
    )

    key = security_key()
    creation = generate_registration_options(rp_id=rp_id, rp_name="Bench", user_name="bench-raw")
    registered = verify_registration_response(
        credential=key.create(json.loads(options_to_json(creation)), origin=origin),
        expected_challenge=creation.challenge,
        expected_rp_id=rp_id,
        expected_origin=origin,
    )
    samples = []
    for count in range(1, RAW_SAMPLES + 1):
        request = generate_authentication_options(rp_id=rp_id)  # a 64-byte challenge, as the server issues
        assertion = key.get(request_options(b64url(request.challenge), rp_id, registered.credential_id), origin=origin)
        samples.append((assertion, request.challenge, count - 1))

    def verify(sample: tuple[dict[str, Any], bytes, int]) -> int:
        credential, challenge, stored = sample
        return verify_authentication_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=rp_id,
            expected_origin=origin,
            credential_public_key=registered.credential_public_key,
            credential_current_sign_count=stored,
            require_user_verification=False,
        ).new_sign_count

    for sample in samples[:32]:  # warm: imports, caches
        assert verify(sample) == sample[2] + 1
    busy0, _ = system_cpu()
    cpu0, started = own_cpu(), time.perf_counter()
    process0 = time.process_time()
    deadline, count = started + seconds, 0
    while time.perf_counter() < deadline:
        for sample in samples:
            verify(sample)
        count += len(samples)
    wall = time.perf_counter() - started
    process_cpu = time.process_time() - process0
    busy1, _ = system_cpu()
    other = max(0.0, (busy1 - busy0) - (own_cpu() - cpu0)) / wall
    return RawRate(count / wall, 1000 * process_cpu / count, other)


def measure_raw(when: str, seconds: float, rp_id: str, origin: str) -> RawRate:
    log(f"py_webauthn raw rate {when} the load (1 core, in-process, {seconds:g} s, server idle) ...")
    rate = py_webauthn_rate(seconds, rp_id, origin)
    log(f"  {rate.per_second:.0f} verifications/s, {rate.cpu_ms:.3f} CPU ms each, other load {rate.other_cores:.2f}")
    return rate


# -- the run -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python bench/security_keys.py")
    parser.add_argument("--users", type=int, default=200, help="users to seed, each with a security key (200)")
    parser.add_argument(
        "--verifications",
        type=int,
        help=f"login transactions to open and challenges to prepare (default: enough for {EXPECTED_RATE}/s over "
        "warm-up + duration: 4600 for the defaults)",
    )
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight at once (16)")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds (20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring (3)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes: twofold serve --workers (1)")
    parser.add_argument("--database-url", help="postgresql://... : benchmark in a fresh database on that server")
    parser.add_argument("--port", type=int, help="server port (a free one by default)")
    parser.add_argument(
        "--raw-seconds", type=float, default=5.0, help="seconds per py_webauthn raw-rate measurement (5)"
    )
    parser.add_argument(
        "--client", choices=["raw", "httpx"], default="raw", help="load generator: raw asyncio HTTP/1.1 or httpx"
    )
    parser.add_argument("--json", action="store_true", help="also print one JSON line with every figure")
    args = parser.parse_args(argv)
    if args.verifications is None:
        args.verifications = math.ceil(EXPECTED_RATE * (args.warmup + args.duration) / 100) * 100
    if args.users < 1 or args.concurrency < 1 or args.workers < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("--users, --concurrency and --workers must be >= 1, --duration > 0, --warmup >= 0")
    if args.verifications < 1 or args.raw_seconds <= 0:
        parser.error("--verifications must be >= 1, --raw-seconds > 0")
    if args.warmup + args.duration > MAX_LOAD_SECONDS:
        parser.error(
            f"--warmup + --duration must be <= {MAX_LOAD_SECONDS:g} s: the challenges are issued before the "
            f"load and live {CHALLENGE_LIFETIME_SECONDS:g} s"
        )
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
    per_user = math.ceil(args.verifications / args.users)
    try:
        with fresh_database(args.database_url, workdir) as database:
            port = args.port or free_port()
            # A host name, not 127.0.0.1: WebAuthn needs a domain as RP id (an IP address is none). The
            # client still connects to 127.0.0.1; the server binds there.
            public_url = f"http://localhost:{port}"
            origin, rp_id = public_url, urlsplit(public_url).hostname or "localhost"
            overrides = {
                **settings_overrides(database.url, public_url, secrets.token_urlsafe(48)),
                **MFA_THROTTLE_SETTINGS,
            }
            log(f"database: {database.label}")
            log(f"seeding 1 organization and {args.users} users with a security key ({cores} processes) ...")
            seeded_at = time.perf_counter()
            users = seed(overrides, args.users, cores)
            log(f"  users in {time.perf_counter() - seeded_at:.1f} s; {per_user} open login transactions each ...")
            # Open for the whole run, preparation included, even if it is longer than the server's 5 minutes.
            open_transactions(overrides, users, per_user, max(600.0, load_seconds + 600))
            seed_seconds = time.perf_counter() - seeded_at
            log(f"seeded in {seed_seconds:.1f} s")

            server_env = {f"TWOFOLD_{k.upper()}": str(v) for k, v in overrides.items()}
            server = Server(server_env, port, args.workers, workdir)
            server.wait_ready()
            log(f"server up: {server.command} (pid {server.pid}), public URL {public_url}")

            raw = [measure_raw("before", args.raw_seconds, rp_id, origin)]
            runner = _new_event_loop_runner()
            log(
                f"preparing {args.users * per_user} challenges: POST {OPTIONS_PATH} at concurrency "
                f"{args.concurrency} ..."
            )
            preparation = runner(prepare_challenges(server, users, concurrency=args.concurrency, rp_id=rp_id))
            log(
                f"  {preparation.prepared} challenges in {preparation.seconds:.1f} s "
                f"({preparation.prepared / preparation.seconds:.0f}/s)"
                + (f"; failures {dict(preparation.failures)}" if preparation.failures else "")
                + (f"; connection errors {dict(preparation.errors)}" if preparation.errors else "")
            )
            log(
                f"load: {args.concurrency} concurrent verifications for {args.warmup:g} s warm-up + "
                f"{args.duration:g} s measured ({args.client} client) ..."
            )
            pool = UserPool(users)
            load = runner(
                run_load(
                    server,
                    pool,
                    rp_id=rp_id,
                    origin=origin,
                    concurrency=args.concurrency,
                    warmup=args.warmup,
                    duration=args.duration,
                    client=args.client,
                    database_name=database.name,
                )
            )
            time.sleep(1.0)  # let the requests still in flight at the end of the window drain
            raw.append(measure_raw("after", args.raw_seconds, rp_id, origin))
            server.stop()
            server_log = server.log_summary()
            server = None
            report = summarize(args, database.label, cores, seed_seconds, per_user, preparation, load, pool, raw)
            report["server_log"] = server_log
            report["public_url"] = public_url
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print_report(report, as_json=args.json)
    failures = (
        sum(n for s, n in report["statuses"].items() if not s.startswith("200 "))
        + sum(report["errors"].values())
        + sum(report["preparation"]["failures"].values())
        + sum(report["preparation"]["errors"].values())
    )
    return 1 if failures or not report["responses"] else 0


def summarize(
    args: argparse.Namespace,
    database_label: str,
    cores: int,
    seed_seconds: float,
    per_user: int,
    preparation: Preparation,
    load: WebAuthnLoadResult,
    pool: UserPool,
    raw: list[RawRate],
) -> dict[str, Any]:
    latencies = sorted(load.latencies)
    ok = sum(n for s, n in load.statuses.items() if s.startswith("200 "))
    rate = ok / load.window if load.window else 0.0
    raw_rate = sum(r.per_second for r in raw) / len(raw)
    raw_ms = sum(r.cpu_ms for r in raw) / len(raw)
    server_ms = load.cpu["server_ms_per_verification"]
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
        "preparation": {
            "asked": preparation.asked,
            "prepared": preparation.prepared,
            "seconds": round(preparation.seconds, 2),
            "per_s": round(preparation.prepared / preparation.seconds, 1) if preparation.seconds else 0.0,
            "failures": dict(preparation.failures),
            "errors": dict(preparation.errors),
        },
        "challenge_age_at_use_s": {
            "min": None if pool.youngest_used == math.inf else round(pool.youngest_used, 1),
            "max": round(pool.oldest_used, 1),
        },
        "challenges_expired_before_use": pool.expired,
        "challenges_left": pool.left,
        "responses": len(latencies),
        "statuses": dict(load.statuses),
        "warmup_statuses": dict(load.warmup_statuses),
        "errors": dict(load.errors),
        "verifications_per_s": round(rate, 2),
        "latency_ms": {
            name: round(percentile(latencies, q) * 1000, 1)
            for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("max", 1.0))
        },
        # Worker-seconds in the window spent without a challenge to answer: 0 unless the prepared
        # challenges ran out (then the figures above understate the server).
        "pool_dry_worker_s": round(load.dry_worker_seconds, 2),
        "pool_first_dry_at_s": None if load.first_dry_at is None else round(load.first_dry_at, 2),
        "py_webauthn_per_s": round(raw_rate, 1),
        "py_webauthn_before_per_s": round(raw[0].per_second, 1),
        "py_webauthn_after_per_s": round(raw[-1].per_second, 1),
        "py_webauthn_cpu_ms": round(raw_ms, 3),
        # The raw rate a core would give with nothing else running: 1000 / CPU ms per call.
        "py_webauthn_per_cpu_s": round(1000 / raw_ms) if raw_ms else None,
        "py_webauthn_other_cores": [round(r.other_cores, 2) for r in raw],
        # What one server core gives over HTTP (1000 / server CPU ms per verification), and py_webauthn's
        # share of that CPU: the HTTP figure per core can reach the raw rate only if that share is 100 %.
        "verifications_per_server_core_s": round(1000 / server_ms, 1) if server_ms else None,
        "py_webauthn_share_pct": round(100 * raw_ms / server_ms, 1) if server_ms else None,
        "cpu": load.cpu,
    }


def print_report(report: dict[str, Any], *, as_json: bool) -> None:
    lat = report["latency_ms"]
    cpu = report["cpu"]
    prep = report["preparation"]
    age = report["challenge_age_at_use_s"]
    non_200 = {s: n for s, n in report["statuses"].items() if not s.startswith("200 ")}
    postgresql = report["database"] == "postgresql"
    database_cpu = f", its PostgreSQL backends {cpu['database_cores']:.2f}" if postgresql else ""
    if report["pool_dry_worker_s"]:
        pool_line = (
            f"WARNING: ran dry {report['pool_first_dry_at_s']:g} s into the window; workers waited "
            f"{report['pool_dry_worker_s']:g} worker-s for a challenge: the rate is understated, "
            f"rerun with more --verifications (e.g. {report['users'] * report['transactions_per_user'] * 2})"
        )
    else:
        pool_line = f"never ran dry ({report['challenges_left']} challenges left unused)"
    prep_problems = {**prep["failures"], **prep["errors"]}
    lines = [
        "",
        "Twofold WebAuthn benchmark: second-factor step, POST /api/v1/login/verify (type webauthn, ES256 security key)",
        f"  database     {report['database_detail']}",
        f"  server       twofold serve --workers {report['workers']} (public URL {report['public_url']})",
        f"  load         {report['users']} users with a security key and {report['transactions_per_user']} "
        f"open login transactions each (seeded in {report['seed_s']} s), concurrency {report['concurrency']}, "
        f"warm-up {report['warmup_s']:g} s, measured {report['duration_s']:g} s, {report['client']} client",
        f"  challenges   {prep['prepared']} of {prep['asked']} from POST {OPTIONS_PATH} in {prep['seconds']:g} s "
        f"({prep['per_s']:g}/s) right before the load; {prep_problems or 'no failures'}; age when used "
        f"{age['min']}-{age['max']} s (lifetime {CHALLENGE_LIFETIME_SECONDS:g} s), "
        f"dropped as too old: {report['challenges_expired_before_use']}",
        f"  responses    {report['responses']} in the window: "
        + ", ".join(f"{n} x {s}" for s, n in sorted(report["statuses"].items())),
        f"  non-200      {non_200 or 'none'}; connection errors: {report['errors'] or 'none'}",
        f"  pool         {pool_line}",
        f"  server log   {report['server_log'] or 'no warnings or errors'}",
        f"  verifications/s {report['verifications_per_s']:.1f}",
        f"  latency      p50 {lat['p50']:.1f} ms, p90 {lat['p90']:.1f} ms, p99 {lat['p99']:.1f} ms, "
        f"max {lat['max']:.1f} ms",
        f"  py_webauthn  {report['py_webauthn_per_s']:.0f}/s on one core, in-process (before "
        f"{report['py_webauthn_before_per_s']:.0f}, after {report['py_webauthn_after_per_s']:.0f}; "
        f"verify_authentication_response, ES256, {report['py_webauthn_cpu_ms']:.3f} CPU ms each = "
        f"{report['py_webauthn_per_cpu_s']} per CPU-second); "
        f"other load meanwhile: {', '.join(f'{c:.2f}' for c in report['py_webauthn_other_cores'])}",
        f"  CPU (cores)  server {cpu['server_cores']:.2f}{database_cpu}, client {cpu['client_cores']:.2f}, "
        f"other processes {cpu['other_cores']:.2f}, idle {cpu['idle_cores']:.2f} (of {report['cores']})",
        f"  CPU / verify  server {cpu['server_ms_per_verification']:.2f} ms"
        + (f" + PostgreSQL {cpu['database_ms_per_verification']:.2f} ms" if postgresql else "")
        + f" + client {cpu['client_ms_per_verification']:.2f} ms (signing included); py_webauthn's own "
        f"{report['py_webauthn_cpu_ms']:.3f} ms is {report['py_webauthn_share_pct']} % of the server's",
        "",
        f"verifications/s = {report['verifications_per_s']:.1f} over HTTP "
        f"({report['verifications_per_server_core_s']} per server core-second), p50 {lat['p50']:.1f} ms, "
        f"p99 {lat['p99']:.1f} ms; py_webauthn raw = {report['py_webauthn_per_s']:.0f}/s on one core ("
        f"{report['py_webauthn_per_cpu_s']} per CPU-second)"
        + ("" if report["pool_dry_worker_s"] == 0 else " (challenges ran out: understated)"),
    ]
    print("\n".join(lines), flush=True)
    if report["pool_dry_worker_s"]:
        log("warning: the prepared challenges ran out; rerun with more --verifications")
    if as_json:
        print(json.dumps(report, sort_keys=True), flush=True)


if __name__ == "__main__":
    sys.exit(main())
