"""`twofold serve --workers N` (src/twofold/cli/serving.py): each worker listens on a socket of its own
under SO_REUSEPORT, so keep-alive connections spread over the workers instead of all landing on the one
that woke first; workers end with their supervisor, even when it is killed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import SECRET_KEY
from .support.servers import ROOT, free_port, stop, wait_ready

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT balancing is Linux's")


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(child) for child in text)
    return found


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:"):
            inodes.add(target)
    return inodes


def start_server(tmp_path: Path, port: int, workers: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TWOFOLD_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}",
        "TWOFOLD_SECRET_KEY": SECRET_KEY,
        "TWOFOLD_ENV": "prod",
        "TWOFOLD_PUBLIC_URL": f"http://localhost:{port}",
    }
    argv = [sys.executable, "-m", "twofold.cli.main", "serve", "--port", str(port), "--workers", str(workers)]
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_ready(f"http://localhost:{port}", process)
    return process


def workers_of(process: subprocess.Popen[bytes], expected: int) -> list[int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        # Python's spawn start method adds a resource tracker child; the workers are the others.
        found = [
            pid for pid in children(process.pid) if "resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_text()
        ]
        if len(found) == expected:
            return found
        time.sleep(0.2)
    raise AssertionError(f"expected {expected} workers, found {children(process.pid)}")


def test_keep_alive_connections_spread_over_both_workers(tmp_path):
    port = free_port()
    process = start_server(tmp_path, port, workers=2)
    try:
        workers = workers_of(process, 2)
        before = {pid: socket_inodes(pid) for pid in workers}
        connections = []
        for _ in range(32):
            connection = socket.create_connection(("127.0.0.1", port))
            connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert connection.recv(64).startswith(b"HTTP/1.1 200")
            connections.append(connection)  # kept open: a keep-alive connection stays with its worker
        gained = {pid: len(socket_inodes(pid) - before[pid]) for pid in workers}
        for connection in connections:
            connection.close()
        # The kernel hashes each connection to a worker; 32 of them never all land on one (odds 2**-31).
        assert sum(gained.values()) >= 32 and all(count > 0 for count in gained.values()), gained
    finally:
        stop(process)
    assert process.returncode == 0


def test_workers_end_with_their_supervisor_even_when_it_is_killed(tmp_path):
    port = free_port()
    process = start_server(tmp_path, port, workers=2)
    workers = workers_of(process, 2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.2)
    alive = [
        pid
        for pid in workers
        if Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    ]
    assert alive == [], "workers outlived their supervisor"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_a_taken_port_is_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "TWOFOLD_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "TWOFOLD_SECRET_KEY": SECRET_KEY}
        result = subprocess.run(
            [sys.executable, "-m", "twofold.cli.main", "serve", "--port", str(port), "--workers", "2"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    assert "cannot listen on 127.0.0.1" in result.stderr and "Traceback" not in result.stderr
