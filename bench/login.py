#!/usr/bin/env python3
"""Benchmark of the password step: a real `twofold serve`, N users, POST /api/v1/login at a given concurrency.

    python bench/login.py [--users 200] [--concurrency 16] [--duration 20] [--warmup 3] [--workers 1]
                          [--database-url postgresql://...] [--port N] [--bound-seconds 5]
                          [--client raw|httpx] [--json]

It prints logins/s, latency percentiles and the argon2 bound measured in the same run on the same cores:
argon2id verifications per second with the server's parameters (m=19456 KiB, t=2, p=1) in one process per
core, with the server idle, right before and right after the load. Every password login costs one such
verification, so the bound is the most logins/s the machine could do; the target is >= 90 % of it.

The database is fresh and thrown away: a SQLite file in a temporary folder by default, or, with
--database-url postgresql://..., a new database `twofold_bench_<random>` created on that server and dropped
at the end (nothing else on the server is touched). See bench/README.md for results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))  # run from a checkout even without `pip install -e .`

ORGANIZATION = "Bench"
# Every login here uses the right password, so the throttle never delays one; the limits are raised
# anyway so that a stray failure (or a re-run on the same database) cannot turn into a back-off.
THROTTLE_SETTINGS = {"password_free_attempts": 1_000_000, "ip_failure_budget": 1_000_000_000}
BOUND_PASSWORD = "bench password for the argon2 bound"


# -- small helpers -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(-(-fraction * len(sorted_values) // 1))))
    return sorted_values[rank - 1]


def _ignore_sigint() -> None:
    # Pool workers leave Ctrl-C to the parent, which shuts the pool down and cleans up.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _pool(workers: int, initializer: Any = None, initargs: tuple[Any, ...] = ()) -> ProcessPoolExecutor:
    # spawn: workers start clean (no inherited engine, loop or threads) whatever ran before in this process.
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_pool_init, initargs=(initializer, initargs)
    )


def _pool_init(initializer: Any, initargs: tuple[Any, ...]) -> None:
    _ignore_sigint()
    if initializer is not None:
        initializer(*initargs)


# -- CPU accounting (Linux /proc) --------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user+system CPU seconds) of a process, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _all_processes() -> dict[int, tuple[int, float]]:
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            found = _proc_stat(int(entry))
            if found is not None:
                stats[int(entry)] = found
    return stats


def process_tree_cpu(root_pid: int, stats: dict[int, tuple[int, float]]) -> float:
    """CPU seconds used so far by a process and all its living descendants (uvicorn's workers)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, stack = 0.0, [root_pid]
    while stack:
        pid = stack.pop()
        if pid in stats:
            total += stats[pid][1]
        stack.extend(children.get(pid, []))
    return total


def database_backends_cpu(database_name: str | None, stats: dict[int, tuple[int, float]]) -> float:
    """CPU seconds used so far by the PostgreSQL backends serving our database (their process title
    names it: "postgres: USER DATABASE HOST(PORT) STATE"). SQLite runs inside the server: 0."""
    if not database_name:
        return 0.0
    needle = f" {database_name} ".encode()
    total = 0.0
    for pid, (_, cpu) in stats.items():
        with contextlib.suppress(OSError):
            if needle in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" "):
                total += cpu
    return total


def system_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, summed over cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    idle = values[3] + values[4]
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


@dataclass
class CpuSnapshot:
    server: float
    database: float
    client: float
    busy: float
    total: float

    @classmethod
    def take(cls, server_pid: int, database_name: str | None) -> CpuSnapshot:
        busy, total = system_cpu()
        stats = _all_processes()
        return cls(
            process_tree_cpu(server_pid, stats), database_backends_cpu(database_name, stats), own_cpu(), busy, total
        )


def cpu_use(start: CpuSnapshot, end: CpuSnapshot, wall: float, logins: int) -> dict[str, float]:
    """Average cores used over the window (by the server, its PostgreSQL backends, this load generator,
    anything else, nothing), and the CPU milliseconds each login cost the server, the database and the client."""
    server = end.server - start.server
    database = end.database - start.database
    client = end.client - start.client
    busy = end.busy - start.busy
    cores = end.total - start.total
    per_login = 1000 / logins if logins else 0.0
    return {
        "server_cores": round(server / wall, 3),
        "database_cores": round(database / wall, 3),
        "client_cores": round(client / wall, 3),
        "other_cores": round(max(0.0, busy - server - database - client) / wall, 3),
        "idle_cores": round(max(0.0, cores - busy) / wall, 3),
        "server_ms_per_login": round(server * per_login, 2),
        "database_ms_per_login": round(database * per_login, 2),
        "client_ms_per_login": round(client * per_login, 2),
    }


# -- the argon2 bound --------------------------------------------------------------------------


def _argon2_verify_loop(params: dict[str, int], start_at: float, seconds: float) -> tuple[float, float]:
    """(verifications per second, CPU seconds per verification) in this process, from start_at for
    `seconds` (wall clock, shared by every process of the pool)."""
    from argon2 import PasswordHasher, Type

    hasher = PasswordHasher(
        time_cost=params["time_cost"],
        memory_cost=params["memory_kib"],
        parallelism=params["parallelism"],
        hash_len=32,
        salt_len=16,
        type=Type.ID,
    )
    stored = hasher.hash(BOUND_PASSWORD)
    hasher.verify(stored, BOUND_PASSWORD)  # warm: page in the library and the memory
    while (pause := start_at - time.time()) > 0:
        time.sleep(min(pause, 0.05))
    deadline, count, cpu_start = start_at + seconds, 0, time.process_time()
    while time.time() < deadline:
        hasher.verify(stored, BOUND_PASSWORD)
        count += 1
    return count / (time.time() - start_at), (time.process_time() - cpu_start) / max(count, 1)


@dataclass
class Bound:
    per_second: float  # verifications/s across all the processes
    cpu_ms: float  # CPU milliseconds per verification
    other_cores: float  # cores busy with anything but the pool meanwhile (other load on the machine)


def argon2_bound(params: dict[str, int], processes: int, seconds: float) -> Bound:
    """argon2id verifications/s across `processes` processes running at once: the password-login bound."""
    with _pool(processes) as pool:
        list(pool.map(_ignore_and_return, range(processes)))  # every worker up before the clock starts
        start_at = time.time() + 0.3
        futures = [pool.submit(_argon2_verify_loop, params, start_at, seconds) for _ in range(processes)]
        while time.time() < start_at:
            time.sleep(0.01)
        busy0, _ = system_cpu()
        pool_cpu0 = sum(cpu for pid, (ppid, cpu) in _all_processes().items() if ppid == os.getpid())
        results = [f.result() for f in futures]
        busy1, _ = system_cpu()
        pool_cpu1 = sum(cpu for pid, (ppid, cpu) in _all_processes().items() if ppid == os.getpid())
        wall = time.time() - start_at
    rate = sum(r for r, _ in results)
    cpu_ms = 1000 * sum(c for _, c in results) / len(results)
    other = max(0.0, (busy1 - busy0) - (pool_cpu1 - pool_cpu0)) / wall
    return Bound(rate, cpu_ms, other)


def _ignore_and_return(value: int) -> int:
    return value


# -- database set-up ---------------------------------------------------------------------------


@dataclass
class Database:
    url: str  # what the server gets as TWOFOLD_DATABASE_URL
    label: str
    name: str | None = None  # the PostgreSQL database's name (to find its backends' CPU)


@contextlib.contextmanager
def fresh_database(database_url: str | None, workdir: Path) -> Iterator[Database]:
    if database_url is None:
        path = workdir / "bench.db"
        yield Database(url=f"sqlite:///{path}", label=f"sqlite (fresh file {path})")
        return
    if not database_url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        raise SystemExit("--database-url takes a postgresql:// URL; without it the benchmark uses a fresh SQLite file")
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    admin_url = make_url("postgresql+psycopg://" + database_url.split("://", 1)[1])
    name = f"twofold_bench_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    target = admin_url.set(database=name)
    label = f"postgresql (database {name} on {target.host}:{target.port or 5432}, dropped at the end)"
    try:
        yield Database(url=target.render_as_string(hide_password=False), label=label, name=name)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        log(f"dropped database {name}")


def settings_overrides(database_url: str, public_url: str, secret_key: str) -> dict[str, Any]:
    return {
        "env": "prod",
        "secret_key": secret_key,
        "database_url": database_url,
        "public_url": public_url,
        **THROTTLE_SETTINGS,
    }


_SEED_CONTAINER: Any = None


def _seed_init(overrides: dict[str, Any]) -> None:
    global _SEED_CONTAINER
    from twofold.config import load_settings
    from twofold.container import build

    _SEED_CONTAINER = build(load_settings(**overrides))


def _seed_users(organization_id: str, users: list[tuple[str, str]]) -> int:
    from twofold.services.context import RequestContext

    for username, password in users:
        _SEED_CONTAINER.accounts.create_user(
            organization_id=organization_id,
            username=username,
            email=f"{username}@bench.example.com",
            kind="user",
            service_type=None,
            password=password,
            actor_id=None,
            context=RequestContext(ip=None),
        )
    return len(users)


def seed(overrides: dict[str, Any], count: int, processes: int) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """Migrate, create the organization and `count` users with passwords through the real services."""
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
            admin_password=secrets.token_urlsafe(18),
        )
    finally:
        twofold.close()
    params = {
        "memory_kib": settings.argon2_memory_kib,
        "time_cost": settings.argon2_time_cost,
        "parallelism": settings.argon2_parallelism,
    }
    users = [(f"bench-user-{i:05d}", secrets.token_urlsafe(15)) for i in range(count)]
    # Hashing costs tens of milliseconds a user: one process per core on PostgreSQL. Not on SQLite:
    # there each creation hashes while it holds the write lock, so parallel creators only take turns,
    # and back to back they can starve one another past the busy timeout ("database is locked").
    if settings.database_url.startswith("sqlite"):
        processes = 1
    if processes == 1:
        _seed_init(overrides)
        try:
            created = _seed_users(organization.id, users)
        finally:
            _SEED_CONTAINER.close()
    else:
        chunks = [users[i::processes] for i in range(processes)]
        with _pool(processes, _seed_init, (overrides,)) as pool:
            created = sum(pool.map(_seed_users, [organization.id] * processes, chunks))
    assert created == count
    return users, params


# -- the server --------------------------------------------------------------------------------


class Server:
    def __init__(self, env: dict[str, str], port: int, workers: int, workdir: Path) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = workdir / "server.log"
        argv = [sys.executable, "-m", "twofold.cli.main", "serve", "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--workers", str(workers)]
        self.command = " ".join(["twofold", *argv[3:]])
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        pythonpath = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)
        # Its own session: Ctrl-C in the terminal reaches only the benchmark, which then stops the server
        # (and uvicorn's workers) as a group.
        self.process = subprocess.Popen(
            argv,
            cwd=workdir,  # so no ./.env or ./var of the checkout is picked up
            env={**os.environ, **env, "PYTHONPATH": pythonpath},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.output()}")

    def log_summary(self) -> dict[str, int]:
        """Warning and error lines the server logged (e.g. "database unavailable" behind a 503), by text."""
        found: Counter[str] = Counter()
        with contextlib.suppress(OSError):
            for line in self.log_path.read_text(errors="replace").splitlines():
                for level in (" WARNING ", " ERROR ", " CRITICAL "):
                    if level in line:
                        found[line.split(level, 1)[1][:160]] += 1
                if line.startswith(("WARNING:", "ERROR:", "CRITICAL:")):  # uvicorn's own format
                    found[line[:160]] += 1
                if line.startswith("Traceback"):
                    found["Traceback"] += 1
        return dict(found)

    def output(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-4000:]
        return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=35)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        # uvicorn's worker processes are in the same group; make sure none outlives the parent.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()


# -- the load generator ------------------------------------------------------------------------


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)  # seconds, responses completed in the window
    statuses: Counter[str] = field(default_factory=Counter)  # in the window: "200 enrollment_required", ...
    warmup_statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # connection-level failures, whole run
    window: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)


def _classify(status: int, body: bytes) -> str:
    for outcome in (b"enrollment_required", b"mfa_required", b"authenticated"):
        if b'"' + outcome + b'"' in body:
            return f"{status} {outcome.decode()}"
    return f"{status} {body[:80].decode(errors='replace')}" if status != 200 else "200 (unexpected body)"


def _login_body(username: str, password: str) -> bytes:
    return json.dumps({"username": username, "password": password}).encode()


class RawClient:
    """HTTP/1.1 keep-alive over one asyncio stream: a few microseconds of client CPU per request."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.head = (
            f"POST /api/v1/login HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: twofold-bench\r\n"
            "Content-Type: application/json\r\nAccept: application/json\r\n"
        ).encode()

    async def post(self, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        try:
            self.writer.write(self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            status_line = await self.reader.readuntil(b"\r\n")
            status = int(status_line.split(b" ", 2)[1])
            length, chunked, close = None, False, False
            while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
                elif name == b"connection" and b"close" in value.lower():
                    close = True
            if chunked:
                parts = []
                while (size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)) > 0:
                    parts.append(await self.reader.readexactly(size + 2))
                await self.reader.readuntil(b"\r\n")
                payload = b"".join(p[:-2] for p in parts)
            else:
                payload = await self.reader.readexactly(length or 0)
        except BaseException:
            await self.close()
            raise
        if close:
            await self.close()
        return status, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None


class HttpxClient:
    def __init__(self, client: Any, url: str) -> None:
        self.client, self.url = client, url

    async def post(self, body: bytes) -> tuple[int, bytes]:
        response = await self.client.post(self.url, content=body, headers={"Content-Type": "application/json"})
        return response.status_code, response.content

    async def close(self) -> None:
        pass


async def run_load(
    server: Server,
    users: list[tuple[str, str]],
    *,
    concurrency: int,
    warmup: float,
    duration: float,
    client: str,
    database_name: str | None,
) -> LoadResult:
    bodies = [_login_body(u, p) for u, p in users]
    result = LoadResult()
    snapshots: list[CpuSnapshot] = []
    loop = asyncio.get_running_loop()
    start = loop.time()
    window_start, window_end = start + warmup, start + warmup + duration
    shared_httpx: Any = None
    if client == "httpx":
        import httpx

        shared_httpx = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency), timeout=120
        )

    async def worker() -> None:
        connection: Any = (
            RawClient("127.0.0.1", server.port)
            if shared_httpx is None
            else HttpxClient(shared_httpx, f"{server.base_url}/api/v1/login")
        )
        rng = random.Random()
        try:
            while loop.time() < window_end:
                body = bodies[rng.randrange(len(bodies))]
                began = loop.time()
                try:
                    status, payload = await connection.post(body)
                except (OSError, asyncio.IncompleteReadError, ValueError) as error:
                    result.errors[type(error).__name__] += 1
                    await asyncio.sleep(0.05)
                    continue
                ended = loop.time()
                outcome = _classify(status, payload)
                if window_start <= ended < window_end:
                    result.latencies.append(ended - began)
                    result.statuses[outcome] += 1
                elif ended < window_start:
                    result.warmup_statuses[outcome] += 1
        finally:
            await connection.close()

    async def meter() -> None:
        await asyncio.sleep(max(0.0, window_start - loop.time()))
        first, t0 = CpuSnapshot.take(server.pid, database_name), loop.time()
        await asyncio.sleep(max(0.0, window_end - loop.time()))
        last, t1 = CpuSnapshot.take(server.pid, database_name), loop.time()
        result.window = t1 - t0
        snapshots.extend([first, last])

    try:
        await asyncio.gather(meter(), *(worker() for _ in range(concurrency)))
    finally:
        if shared_httpx is not None:
            await shared_httpx.aclose()
    result.cpu = cpu_use(snapshots[0], snapshots[1], result.window, len(result.latencies))
    return result


def _new_event_loop_runner() -> Any:
    with contextlib.suppress(ImportError):
        import uvloop  # the server uses it too when installed (uvicorn[standard])

        return uvloop.run
    return asyncio.run


# -- the run -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python bench/login.py")
    parser.add_argument("--users", type=int, default=200, help="users to seed and log in at random (200)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight at once (16)")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds (20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring (3)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes: twofold serve --workers (1)")
    parser.add_argument("--database-url", help="postgresql://... : benchmark in a fresh database on that server")
    parser.add_argument("--port", type=int, help="server port (a free one by default)")
    parser.add_argument("--bound-seconds", type=float, default=5.0, help="seconds per argon2 bound measurement (5)")
    parser.add_argument(
        "--client", choices=["raw", "httpx"], default="raw", help="load generator: raw asyncio HTTP/1.1 or httpx"
    )
    parser.add_argument("--json", action="store_true", help="also print one JSON line with every figure")
    args = parser.parse_args(argv)
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
    try:
        with fresh_database(args.database_url, workdir) as database:
            port = args.port or free_port()
            public_url = f"http://127.0.0.1:{port}"
            overrides = settings_overrides(database.url, public_url, secrets.token_urlsafe(48))
            log(f"database: {database.label}")
            log(f"seeding 1 organization and {args.users} users through the services ...")
            seeded_at = time.perf_counter()
            users, params = seed(overrides, args.users, cores)
            seed_seconds = time.perf_counter() - seeded_at
            log(f"seeded in {seed_seconds:.1f} s")

            server_env = {f"TWOFOLD_{k.upper()}": str(v) for k, v in overrides.items()}
            server = Server(server_env, port, args.workers, workdir)
            server.wait_ready()
            log(f"server up: {server.command} (pid {server.pid})")

            bounds = [measure_bound("before", params, cores, args.bound_seconds)]
            log(
                f"load: {args.concurrency} concurrent logins for {args.warmup:g} s warm-up + "
                f"{args.duration:g} s measured ({args.client} client) ..."
            )
            load = _new_event_loop_runner()(
                run_load(
                    server,
                    users,
                    concurrency=args.concurrency,
                    warmup=args.warmup,
                    duration=args.duration,
                    client=args.client,
                    database_name=database.name,
                )
            )
            time.sleep(1.0)  # let the requests still in flight at the end of the window drain
            bounds.append(measure_bound("after", params, cores, args.bound_seconds))
            server.stop()
            server_log = server.log_summary()
            server = None
            report = summarize(args, database.label, cores, params, seed_seconds, load, bounds)
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


def measure_bound(when: str, params: dict[str, int], cores: int, seconds: float) -> Bound:
    log(f"argon2 bound {when} the load ({cores} processes, {seconds:g} s, server idle) ...")
    bound = argon2_bound(params, cores, seconds)
    log(f"  {bound.per_second:.1f} verifications/s, {bound.cpu_ms:.1f} CPU ms each, other load {bound.other_cores:.2f}")
    return bound


def summarize(
    args: argparse.Namespace,
    database_label: str,
    cores: int,
    params: dict[str, int],
    seed_seconds: float,
    load: LoadResult,
    bounds: list[Bound],
) -> dict[str, Any]:
    latencies = sorted(load.latencies)
    ok = sum(n for s, n in load.statuses.items() if s.startswith("200 "))
    logins = ok / load.window if load.window else 0.0
    bound = sum(b.per_second for b in bounds) / len(bounds)
    argon2_ms = sum(b.cpu_ms for b in bounds) / len(bounds)
    cpu = load.cpu
    login_ms = cpu["server_ms_per_login"] + cpu["database_ms_per_login"] + cpu["client_ms_per_login"]
    return {
        "database": "postgresql" if args.database_url else "sqlite",
        "database_detail": database_label,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "users": args.users,
        "duration_s": round(load.window, 2),
        "warmup_s": args.warmup,
        "client": args.client,
        "cores": cores,
        "argon2": {
            "memory_kib": params["memory_kib"],
            "time_cost": params["time_cost"],
            "parallelism": params["parallelism"],
        },
        "seed_s": round(seed_seconds, 1),
        "responses": len(latencies),
        "statuses": dict(load.statuses),
        "warmup_statuses": dict(load.warmup_statuses),
        "errors": dict(load.errors),
        "logins_per_s": round(logins, 2),
        "latency_ms": {
            name: round(percentile(latencies, q) * 1000, 1)
            for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("max", 1.0))
        },
        "argon2_bound_per_s": round(bound, 2),
        "argon2_bound_before_per_s": round(bounds[0].per_second, 2),
        "argon2_bound_after_per_s": round(bounds[-1].per_second, 2),
        "argon2_cpu_ms": round(argon2_ms, 2),
        "bound_other_cores": [round(b.other_cores, 2) for b in bounds],
        "ratio_pct": round(100 * logins / bound, 1) if bound else None,
        # What the ratio would be with every core busy on this benchmark alone: argon2's CPU per
        # verification over the whole CPU a login costs (server, its database backends, the client).
        "cpu_ratio_pct": round(100 * argon2_ms / login_ms, 1) if login_ms else None,
        "cpu": cpu,
    }


def print_report(report: dict[str, Any], *, as_json: bool) -> None:
    lat = report["latency_ms"]
    cpu = report["cpu"]
    a2 = report["argon2"]
    non_200 = {s: n for s, n in report["statuses"].items() if not s.startswith("200 ")}
    database_cpu = (
        f", its PostgreSQL backends {cpu['database_cores']:.2f}" if report["database"] == "postgresql" else ""
    )
    lines = [
        "",
        "Twofold login benchmark: password step, POST /api/v1/login",
        f"  database     {report['database_detail']}",
        f"  server       twofold serve --workers {report['workers']}",
        f"  load         {report['users']} users (seeded in {report['seed_s']} s), "
        f"concurrency {report['concurrency']}, warm-up {report['warmup_s']:g} s, "
        f"measured {report['duration_s']:g} s, {report['client']} client",
        f"  responses    {report['responses']} in the window: "
        + ", ".join(f"{n} x {s}" for s, n in sorted(report["statuses"].items())),
        f"  non-200      {non_200 or 'none'}; connection errors: {report['errors'] or 'none'}",
        f"  server log   {report['server_log'] or 'no warnings or errors'}",
        f"  logins/s     {report['logins_per_s']:.1f}",
        f"  latency      p50 {lat['p50']:.0f} ms, p90 {lat['p90']:.0f} ms, p99 {lat['p99']:.0f} ms, "
        f"max {lat['max']:.0f} ms",
        f"  argon2 bound {report['argon2_bound_per_s']:.1f}/s on {report['cores']} cores "
        f"(before {report['argon2_bound_before_per_s']:.1f}, after {report['argon2_bound_after_per_s']:.1f}; "
        f"argon2id m={a2['memory_kib']} KiB, t={a2['time_cost']}, p={a2['parallelism']}; "
        f"{report['argon2_cpu_ms']:.1f} CPU ms per verification)",
        f"  CPU (cores)  server {cpu['server_cores']:.2f}{database_cpu}, client {cpu['client_cores']:.2f}, "
        f"other processes {cpu['other_cores']:.2f}, idle {cpu['idle_cores']:.2f} (of {report['cores']}); "
        f"other load during the bound: {', '.join(f'{c:.2f}' for c in report['bound_other_cores'])}",
        f"  CPU / login  server {cpu['server_ms_per_login']:.1f} ms"
        + (f" + PostgreSQL {cpu['database_ms_per_login']:.1f} ms" if report["database"] == "postgresql" else "")
        + f" + client {cpu['client_ms_per_login']:.1f} ms, of which argon2 ~{report['argon2_cpu_ms']:.1f} ms: "
        f"CPU ratio {report['cpu_ratio_pct']} % (the ratio to expect with the cores to this benchmark alone)",
        "",
        f"logins/s = {report['logins_per_s']:.1f}, argon2 bound = {report['argon2_bound_per_s']:.1f}/s on "
        f"{report['cores']} cores, ratio {report['ratio_pct']} % (target >= 90 %)",
    ]
    print("\n".join(lines), flush=True)
    if as_json:
        print(json.dumps(report, sort_keys=True), flush=True)


if __name__ == "__main__":
    sys.exit(main())
