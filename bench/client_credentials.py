#!/usr/bin/env python3
"""Benchmark of OAuth 2.0 client credentials on a real `twofold serve`: grants, token uses and introspections
per second.

    python bench/client_credentials.py [--concurrency 16] [--duration 20] [--warmup 3] [--workers 1]
                                       [--database-url postgresql://...] [--port N] [--client httpx|raw]
                                       [--floor] [--py-spy PATH [--py-spy-output FILE]] [--json]

One organization and one connected app acting on its own behalf (scope users:read) are seeded, then three
phases run one after the other, each with C clients in flight on HTTP/1.1 keep-alive connections, a warm-up
and a measured window:

1. grants: POST /oauth2/token `grant_type=client_credentials` with HTTP Basic (client_secret_basic), every
   answer expected 200 with an access token;
2. token uses: GET /api/v1/organizations/{org}/users?limit=1 with `Authorization: Bearer <the app's JWT>`
   (one token per client, granted before the phase), every answer expected 200;
3. introspections: POST /oauth2/introspect `token=<the app's JWT>` with HTTP Basic, every answer expected
   200 `"active": true` (RFC 7662);
4. with --floor, GET /healthz the same way: what the HTTP stack alone costs (no database, no authentication).

For each phase it prints requests/s, latency p50/p90/p99/max, and the CPU the server's processes (uvicorn and
its workers, from /proc/<pid>/stat before and after the window), the PostgreSQL backends of the benchmark's
database and the load generator used: requests per server CPU-second is the figure to hold against the
target of >= 1,500 grants/s per core. With --py-spy PATH (a py-spy binary; install it with pip) the server is
sampled during the grants window and the time is broken down by what it was doing.

The database is fresh and thrown away, as in bench/login.py. See bench/README.md for results.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

# The password-step benchmark's machinery: database, server, CPU accounting, HTTP/1.1 client, percentiles.
# Importing it also puts the checkout's src/ on sys.path.
from login import (
    CpuSnapshot,
    RawClient,
    Server,
    _new_event_loop_runner,
    cpu_use,
    free_port,
    fresh_database,
    log,
    percentile,
    settings_overrides,
)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.support: the seeding signs the administrator in with the test method

ORGANIZATION = "Bench"
SCOPE = "users:read"
SEEDED_USERS = 20
PHASES = ("grants", "uses", "introspections")
FLOOR = "floor"  # --floor: GET /healthz, the cost of the HTTP stack alone (no database, no authentication)


# -- seeding through the API -------------------------------------------------------------------------------


@dataclass
class Seeded:
    organization_id: str
    client_id: str
    client_secret: str


def seed(overrides: dict[str, Any]) -> Seeded:
    """Migrate; the organization and its administrator through the services; the administrator signs in
    (password and the test method, in-process) and creates the app through the admin API, as a person would."""
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient
    from tests.support.flows import bearer, create_organization, create_user, enroll
    from tests.support.methods import KnownCodeMethod

    from twofold.config import load_settings
    from twofold.container import build
    from twofold.methods.registry import MethodRegistry
    from twofold.storage.migrate import upgrade
    from twofold.web.app import create_app

    settings = load_settings(**overrides)
    upgrade(settings.database_url)
    twofold = build(settings, registry=MethodRegistry([KnownCodeMethod()]))
    try:
        organization, admin = create_organization(twofold, ORGANIZATION, "bench-admin")
        for i in range(SEEDED_USERS):
            create_user(twofold, organization, f"bench-user-{i:03d}")
        with TestClient(create_app(twofold, housekeeping=False), base_url=settings.public_url) as client:
            enroll(client, admin)
            response = client.post(
                f"/api/v1/organizations/{organization.id}/connected-apps",
                json={"name": "Bench robot", "grant_type": "client_credentials", "scopes": [SCOPE]},
                headers=bearer(admin.token),
            )
            if response.status_code != 201:
                raise RuntimeError(f"creating the app failed: {response.status_code} {response.text[:200]}")
            app = response.json()
    finally:
        twofold.close()
    return Seeded(organization.id, app["client_id"], app["client_secret"])


# -- clients -----------------------------------------------------------------------------------------------


class RawConnection(RawClient):
    """bench/login.py's raw HTTP/1.1 keep-alive client, for one fixed method, path and headers."""

    def __init__(self, host: str, port: int, method: str, path: str, headers: dict[str, str]) -> None:
        super().__init__(host, port)
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self.head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: twofold-bench\r\n{extra}".encode()


Call = Callable[[], Awaitable[tuple[int, bytes]]]


class Clients:
    """Makes the two kinds of calls, over httpx.AsyncClient (one pool, a connection per client in flight) or
    over the raw client (a connection per client in flight)."""

    def __init__(self, kind: str, server: Server, seeded: Seeded, concurrency: int) -> None:
        self.kind, self.port, self.base_url = kind, server.port, server.base_url
        credentials = f"{quote(seeded.client_id, safe='')}:{quote(seeded.client_secret, safe='')}"
        self.basic = "Basic " + base64.b64encode(credentials.encode()).decode()
        self.users_path = f"/api/v1/organizations/{seeded.organization_id}/users?limit=1"
        self.httpx: Any = None
        if kind == "httpx":
            import httpx

            self.httpx = httpx.AsyncClient(
                base_url=self.base_url,
                limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
                timeout=120,
                headers={"User-Agent": "twofold-bench"},
            )

    async def close(self) -> None:
        if self.httpx is not None:
            await self.httpx.aclose()

    def grant(self) -> tuple[Call, Callable[[], Awaitable[None]]]:
        """A grant call and its closer."""
        body = b"grant_type=client_credentials"
        headers = {"Authorization": self.basic, "Content-Type": "application/x-www-form-urlencoded"}
        if self.httpx is not None:

            async def call() -> tuple[int, bytes]:
                response = await self.httpx.post("/oauth2/token", content=body, headers=headers)
                return response.status_code, response.content

            return call, _nothing
        connection = RawConnection("127.0.0.1", self.port, "POST", "/oauth2/token", headers)
        return (lambda: connection.post(body)), connection.close

    def floor(self) -> tuple[Call, Callable[[], Awaitable[None]]]:
        if self.httpx is not None:

            async def call() -> tuple[int, bytes]:
                response = await self.httpx.get("/healthz")
                return response.status_code, response.content

            return call, _nothing
        connection = RawConnection("127.0.0.1", self.port, "GET", "/healthz", {})
        return (lambda: connection.post(b"")), connection.close

    def use(self, token: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        if self.httpx is not None:

            async def call() -> tuple[int, bytes]:
                response = await self.httpx.get(self.users_path, headers=headers)
                return response.status_code, response.content

            return call, _nothing
        connection = RawConnection("127.0.0.1", self.port, "GET", self.users_path, headers)
        return (lambda: connection.post(b"")), connection.close

    def introspect(self, token: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
        """RFC 7662: the app asks about its own token (client_secret_basic)."""
        body = f"token={token}".encode()
        headers = {"Authorization": self.basic, "Content-Type": "application/x-www-form-urlencoded"}
        if self.httpx is not None:

            async def call() -> tuple[int, bytes]:
                response = await self.httpx.post("/oauth2/introspect", content=body, headers=headers)
                return response.status_code, response.content

            return call, _nothing
        connection = RawConnection("127.0.0.1", self.port, "POST", "/oauth2/introspect", headers)
        return (lambda: connection.post(body)), connection.close

    def with_token(self, phase: str, token: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
        return self.use(token) if phase == "uses" else self.introspect(token)


async def _nothing() -> None:
    return None


# -- the load ----------------------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    latencies: list[float] = field(default_factory=list)  # seconds, responses completed in the window
    statuses: Counter[str] = field(default_factory=Counter)  # in the window
    warmup_statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    regrants: int = 0  # token uses that found their token expired and got a new one
    window: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    server_cpu_s: float = 0.0
    database_cpu_s: float = 0.0


def _expired(token: str) -> bool:
    """Whether a JWT's exp has passed (read without verifying: the load generator's own token)."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return bool(claims.get("exp", 0) <= time.time())


def _outcome(phase: str, status: int, body: bytes) -> str:
    expected = {"grants": b'"access_token"', "uses": b'"items"', "introspections": b'"active":true', FLOOR: b""}[phase]
    if status == 200 and expected in body:
        return "200"
    return f"{status} {body[:100].decode(errors='replace')}"


async def run_phase(
    name: str,
    clients: Clients,
    server: Server,
    *,
    concurrency: int,
    warmup: float,
    duration: float,
    database_name: str | None,
    on_window: Callable[[float], None] | None = None,
) -> Phase:
    result = Phase(name)
    loop = asyncio.get_running_loop()

    async def fresh_token() -> str:
        call, close = clients.grant()
        try:
            status, body = await call()
        finally:
            await close()
        if status != 200:
            raise RuntimeError(f"a grant for the token-use phase failed: {status} {body[:200]!r}")
        return str(json.loads(body)["access_token"])

    with_tokens = name in ("uses", "introspections")
    tokens = [await fresh_token() for _ in range(concurrency)] if with_tokens else []
    start = loop.time()
    window_start, window_end = start + warmup, start + warmup + duration
    snapshots: list[CpuSnapshot] = []

    async def worker(index: int) -> None:
        if name == "grants":
            call, close = clients.grant()
        else:
            call, close = clients.with_token(name, tokens[index]) if with_tokens else clients.floor()
        try:
            while loop.time() < window_end:
                began = time.perf_counter()  # uvloop's loop.time() has whole milliseconds
                try:
                    status, body = await call()
                except (OSError, asyncio.IncompleteReadError, ValueError) as error:
                    result.errors[type(error).__name__] += 1
                    await asyncio.sleep(0.05)
                    continue
                except Exception as error:  # httpx's own transport errors
                    result.errors[type(error).__name__] += 1
                    await asyncio.sleep(0.05)
                    continue
                ended, latency = loop.time(), time.perf_counter() - began
                if with_tokens and _expired(tokens[index]) and (status == 401 or b'"active":false' in body):
                    # The token outlived its 10 minutes (a long --duration): take a new one, uncounted.
                    await close()
                    tokens[index] = await fresh_token()
                    call, close = clients.with_token(name, tokens[index])
                    result.regrants += 1
                    continue
                outcome = _outcome(name, status, body)
                if window_start <= ended < window_end:
                    result.latencies.append(latency)
                    result.statuses[outcome] += 1
                elif ended < window_start:
                    result.warmup_statuses[outcome] += 1
        finally:
            await close()

    async def meter() -> None:
        await asyncio.sleep(max(0.0, window_start - loop.time()))
        if on_window is not None:
            on_window(duration)
        first, t0 = CpuSnapshot.take(server.pid, database_name), loop.time()
        await asyncio.sleep(max(0.0, window_end - loop.time()))
        last, t1 = CpuSnapshot.take(server.pid, database_name), loop.time()
        result.window = t1 - t0
        snapshots.extend([first, last])

    await asyncio.gather(meter(), *(worker(i) for i in range(concurrency)))
    ok = result.statuses.get("200", 0)
    result.cpu = cpu_use(snapshots[0], snapshots[1], result.window, ok)
    result.server_cpu_s = snapshots[1].server - snapshots[0].server
    result.database_cpu_s = snapshots[1].database - snapshots[0].database
    return result


async def run_load(
    kind: str,
    server: Server,
    seeded: Seeded,
    *,
    concurrency: int,
    warmup: float,
    duration: float,
    database_name: str | None,
    on_grants_window: Callable[[float], None] | None,
    floor: bool = False,
) -> list[Phase]:
    clients = Clients(kind, server, seeded, concurrency)
    phases = []
    try:
        for name in (*PHASES, FLOOR) if floor else PHASES:
            log(f"{name}: {concurrency} clients, {warmup:g} s warm-up + {duration:g} s measured ({kind} client) ...")
            phases.append(
                await run_phase(
                    name,
                    clients,
                    server,
                    concurrency=concurrency,
                    warmup=warmup,
                    duration=duration,
                    database_name=database_name,
                    on_window=on_grants_window if name == "grants" else None,
                )
            )
            await asyncio.sleep(0.5)  # let the last requests drain before the next phase
    finally:
        await clients.close()
    return phases


# -- profile (py-spy) --------------------------------------------------------------------------------------

#: What a sample of the grants window was doing, by a frame on its stack ("inclusive": a sample can be in
#: several rows, e.g. the audit write is also SQLAlchemy time). Matched against py-spy's "function (file:line)".
OPERATIONS = (
    ("event loop thread: uvicorn, HTTP parsing, routing, middleware, form, response", r"^Server\.run \(uvicorn/"),
    ("the token endpoint (authlib's create_token_response)", r"^OAuthService\.token_endpoint \("),
    ("  answered on the event loop (client and signing key in memory)", r"^OAuthService\.token_endpoint_from_memory"),
    ("  client authentication (authlib)", r"^ClientAuthentication\.authenticate \("),
    ("    client lookup: the app + its live secrets, one read transaction", r"^OAuthService\.client \("),
    ("    secret check (HMAC-SHA-256 digests)", r"^OAuthClient\.check_client_secret \("),
    ("  signing key: read + unseal (SigningKeyService.current)", r"^SigningKeyService\.current \("),
    ("  JWT signing (access_tokens.issue: claims, ES256)", r"^issue \(twofold/oauth/access_tokens\.py"),
    ("  the audit event (OAuthService.granted: queued for the batch writer)", r"^OAuthService\.granted \("),
    ("the batch writer of audit events (its own thread)", r"^DeferredAuditTrail\._run \("),
    ("  unit of work begin/commit (SqlUnitOfWork)", r"^SqlUnitOfWork\.(__enter__|__exit__) \("),
    ("FastAPI dependencies (solve_dependencies)", r"^solve_dependencies \("),
    ("threadpool hand-offs (run_in_threadpool: queue a call, wake a worker)", r"^run_in_threadpool \("),
)
#: Where the leaf frame (the code holding the GIL) lives, first match wins ("exclusive": the rows add up to 100 %).
LAYERS = (
    ("psycopg (the PostgreSQL driver's Python code)", r"psycopg"),
    ("SQLAlchemy (ORM, Core, pool; SQLite's C calls count here, in the frame that makes them)", r"sqlalchemy"),
    ("cryptography / OpenSSL (ECDSA, AES-GCM unseal)", r"cryptography|hazmat"),
    ("joserfc (JWT/JWS, JWK import)", r"joserfc"),
    ("authlib", r"authlib"),
    ("pydantic", r"pydantic"),
    (
        "HTTP: uvicorn, httptools/h11, starlette, fastapi, anyio, asyncio",
        r"uvicorn|httptools|h11|starlette|fastapi|anyio|asyncio|uvloop|selectors",
    ),
    ("Twofold's own code", r"twofold"),
    ("other Python (stdlib: threading, json, hmac, logging, ...)", r"."),
)


def start_py_spy(binary: str, pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes]:
    argv = [binary, "record", "--pid", str(pid), "--subprocesses", "--duration", str(max(1, int(seconds)))]
    argv += ["--rate", "250", "--format", "raw", "--output", str(output), "--nonblocking", "--gil"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def breakdown(raw: Path) -> dict[str, Any]:
    """Samples by operation (inclusive) and by layer (exclusive), in % of the samples on the CPU."""
    total, ops, layers = 0, Counter[str](), Counter[str]()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        count = int(count_text)
        total += count
        for label, pattern in OPERATIONS:
            if any(re.search(pattern, frame) for frame in frames):
                ops[label] += count
        leaf = frames[-1]
        layers[next(label for label, pattern in LAYERS if re.search(pattern, leaf))] += count
    pct = {label: round(100 * n / total, 1) for label, n in ops.items()} if total else {}
    return {
        "samples": total,
        "operations_pct": {label: pct.get(label, 0.0) for label, _ in OPERATIONS},
        "layers_pct": {label: round(100 * layers[label] / total, 1) if total else 0.0 for label, _ in LAYERS},
    }


# -- the run -----------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python bench/client_credentials.py")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight at once (16)")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per phase (20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring (3)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes: twofold serve --workers (1)")
    parser.add_argument("--database-url", help="postgresql://... : benchmark in a fresh database on that server")
    parser.add_argument("--port", type=int, help="server port (a free one by default)")
    parser.add_argument(
        "--client", choices=["httpx", "raw"], default="httpx", help="load generator: httpx.AsyncClient or raw HTTP/1.1"
    )
    parser.add_argument(
        "--floor", action="store_true", help="a third phase: GET /healthz, the HTTP stack alone, for comparison"
    )
    parser.add_argument("--py-spy", dest="py_spy", help="path of a py-spy binary: sample the server during the grants")
    parser.add_argument("--py-spy-output", dest="py_spy_output", help="keep py-spy's raw stacks in this file")
    parser.add_argument("--json", action="store_true", help="also print one JSON line with every figure")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.workers < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("--concurrency and --workers must be >= 1, --duration > 0, --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="twofold-bench-"))
    server: Server | None = None
    spy: subprocess.Popen[bytes] | None = None

    def on_sigterm(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with fresh_database(args.database_url, workdir) as database:
            port = args.port or free_port()
            public_url = f"http://127.0.0.1:{port}"
            overrides = settings_overrides(database.url, public_url, secrets.token_urlsafe(48))
            log(f"database: {database.label}")
            log("seeding 1 organization, its administrator, and a client-credentials app through the API ...")
            seeded = seed(overrides)

            server_env = {f"TWOFOLD_{k.upper()}": str(v) for k, v in overrides.items()}
            server = Server(server_env, port, args.workers, workdir)
            server.wait_ready()
            log(f"server up: {server.command} (pid {server.pid})")
            raw_profile = workdir / "py-spy.txt"

            def on_grants_window(seconds: float) -> None:
                nonlocal spy
                if args.py_spy and server is not None:
                    spy = start_py_spy(args.py_spy, server.pid, seconds, raw_profile)

            phases = _new_event_loop_runner()(
                run_load(
                    args.client,
                    server,
                    seeded,
                    concurrency=args.concurrency,
                    warmup=args.warmup,
                    duration=args.duration,
                    database_name=database.name,
                    on_grants_window=on_grants_window,
                    floor=args.floor,
                )
            )
            profile = None
            if spy is not None:
                _, err = spy.communicate(timeout=120)
                profile = breakdown(raw_profile) if raw_profile.exists() else {"error": err.decode()[-400:]}
                if args.py_spy_output and raw_profile.exists():
                    shutil.copyfile(raw_profile, args.py_spy_output)
                spy = None
            server.stop()
            server_log = server.log_summary()
            server = None
            report = summarize(args, database.label, phases)
            report["server_log"] = server_log
            if profile is not None:
                report["profile"] = profile
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print_report(report, as_json=args.json)
    failures = sum(n for phase in report["phases"].values() for s, n in phase["statuses"].items() if s != "200") + sum(
        sum(phase["errors"].values()) for phase in report["phases"].values()
    )
    return 1 if failures or not all(p["responses"] for p in report["phases"].values()) else 0


def summarize(args: argparse.Namespace, database_label: str, phases: list[Phase]) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    report: dict[str, Any] = {
        "database": "postgresql" if args.database_url else "sqlite",
        "database_detail": database_label,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "client": args.client,
        "cores": cores,
        "warmup_s": args.warmup,
        "phases": {},
    }
    for phase in phases:
        latencies = sorted(phase.latencies)
        ok = phase.statuses.get("200", 0)
        server_and_db = phase.server_cpu_s + phase.database_cpu_s
        report["phases"][phase.name] = {
            "duration_s": round(phase.window, 2),
            "responses": len(latencies),
            "statuses": dict(phase.statuses),
            "warmup_statuses": dict(phase.warmup_statuses),
            "errors": dict(phase.errors),
            "regrants": phase.regrants,
            "per_s": round(ok / phase.window, 1) if phase.window else 0.0,
            "latency_ms": {
                name: round(percentile(latencies, q) * 1000, 2)
                for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("max", 1.0))
            },
            "cpu": phase.cpu,
            "per_server_cpu_s": round(ok / phase.server_cpu_s, 1) if phase.server_cpu_s else None,
            "per_server_and_database_cpu_s": round(ok / server_and_db, 1) if server_and_db else None,
        }
    return report


def print_report(report: dict[str, Any], *, as_json: bool) -> None:
    postgres = report["database"] == "postgresql"
    lines = [
        "",
        "Twofold client-credentials benchmark: POST /oauth2/token, then GET .../users?limit=1 with the token",
        f"  database     {report['database_detail']}",
        f"  server       twofold serve --workers {report['workers']} ({report['cores']} cores)",
        f"  load         concurrency {report['concurrency']}, warm-up {report['warmup_s']:g} s, "
        f"{report['client']} client",
        f"  server log   {report['server_log'] or 'no warnings or errors'}",
    ]
    titles = {
        "grants": "grants",
        "uses": "token uses",
        "introspections": "token introspections (POST /oauth2/introspect, RFC 7662)",
        FLOOR: "HTTP floor: GET /healthz (no database, no auth)",
    }
    for name, phase in report["phases"].items():
        lat, cpu = phase["latency_ms"], phase["cpu"]
        non_200 = {s: n for s, n in phase["statuses"].items() if s != "200"}
        database_cpu = f", its PostgreSQL backends {cpu['database_cores']:.2f}" if postgres else ""
        database_ms = f" + PostgreSQL {cpu['database_ms_per_login']:.2f} ms" if postgres else ""
        both = (
            f"; {phase['per_server_and_database_cpu_s']:.0f} per (server + PostgreSQL) CPU-second" if postgres else ""
        )
        lines += [
            f"  {titles[name]}",
            f"    responses    {phase['responses']} in {phase['duration_s']:g} s; non-200 {non_200 or 'none'}; "
            f"connection errors {phase['errors'] or 'none'}"
            + (f"; {phase['regrants']} expired tokens renewed" if phase["regrants"] else ""),
            f"    per second   {phase['per_s']:.1f}",
            f"    latency      p50 {lat['p50']:.1f} ms, p90 {lat['p90']:.1f} ms, p99 {lat['p99']:.1f} ms, "
            f"max {lat['max']:.1f} ms",
            f"    CPU (cores)  server {cpu['server_cores']:.2f}{database_cpu}, client {cpu['client_cores']:.2f}, "
            f"other {cpu['other_cores']:.2f}, idle {cpu['idle_cores']:.2f}",
            f"    CPU / call   server {cpu['server_ms_per_login']:.2f} ms{database_ms} + client "
            f"{cpu['client_ms_per_login']:.2f} ms",
            f"    per CPU-s    {phase['per_server_cpu_s'] or 0:.0f} per server CPU-second{both}",
        ]
    profile = report.get("profile")
    if profile and "operations_pct" in profile:
        lines.append(f"  where the server's time went during the grants (py-spy, {profile['samples']} samples)")
        lines += [f"    {pct:5.1f} %  {label}" for label, pct in profile["operations_pct"].items()]
        lines.append("    by the code on the CPU:")
        lines += [f"    {pct:5.1f} %  {label}" for label, pct in profile["layers_pct"].items()]
    elif profile:
        lines.append(f"  py-spy failed: {profile.get('error')}")
    grants = report["phases"]["grants"]
    lines += [
        "",
        f"grants/s = {grants['per_s']:.1f}, {grants['per_server_cpu_s'] or 0:.0f} per server CPU-second "
        f"(target >= 1,500 per core); token uses/s = {report['phases']['uses']['per_s']:.1f}; "
        f"introspections/s = {report['phases']['introspections']['per_s']:.1f}",
    ]
    print("\n".join(lines), flush=True)
    if as_json:
        print(json.dumps(report, sort_keys=True), flush=True)


if __name__ == "__main__":
    sys.exit(main())
