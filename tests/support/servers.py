"""Real uvicorn servers in subprocesses, for end-to-end and multi-process tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(base_url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode(errors="replace") if process.stdout else ""
            raise RuntimeError(f"server exited with {process.returncode}:\n{output}")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server at {base_url} not ready after {timeout}s")


@contextlib.contextmanager
def running_server(
    env: dict[str, str], *, port: int | None = None, command: Sequence[str] | None = None, host: str = "localhost"
) -> Iterator[str]:
    """Start a server with the given TWOFOLD_* settings; yields its base URL (http://localhost:PORT)."""
    port = port or free_port()
    base_url = f"http://{host}:{port}"
    full_env = {**os.environ, "TWOFOLD_PUBLIC_URL": base_url, **env}
    argv = list(command) if command else [sys.executable, "-m", "twofold.cli.main", "serve", "--port", str(port)]
    if command:
        argv.append(str(port))
    process = subprocess.Popen(argv, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_ready(base_url, process)
        yield base_url
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate gracefully, and kill what does not end within 15 s."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


TEST_METHOD_SERVER = [sys.executable, "-m", "tests.support.serve_with_test_method"]
