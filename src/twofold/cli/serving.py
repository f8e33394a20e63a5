"""`twofold serve --workers N`: one listening socket per worker process, bound with SO_REUSEPORT.

uvicorn's own multi-worker mode shares one socket among the workers, and the first worker to wake
accepts every connection in the queue. With keep-alive clients (a reverse proxy's upstream pool, a
load generator) one worker then serves everything while the others idle: measured here, 16 of 16
connections on one of two workers. With a socket per worker under SO_REUSEPORT, Linux spreads new
connections over the workers by a hash of their addresses. Where the option is missing (not Linux),
`serve` falls back to uvicorn's mode.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import socket
import sys
import time
from typing import Any

APP = "twofold.web.app:app_from_environment"
RESTART_PAUSE_SECONDS = 1.0


def reuse_port_supported() -> bool:
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _die_with_parent() -> None:
    """A worker ends when the supervisor ends, even by SIGKILL: no orphan keeps serving the port."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _worker(host: str, port: int, options: dict[str, Any]) -> None:
    import logging

    import uvicorn

    # A spawned worker starts a fresh interpreter: it sets up logging as `twofold` does in the supervisor.
    logging.basicConfig(
        level=os.environ.get("TWOFOLD_LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _die_with_parent()
    sock = _listening_socket(host, port)
    config = uvicorn.Config(APP, factory=True, host=host, port=port, **options)
    uvicorn.Server(config).run(sockets=[sock])


def serve_with_reuse_port(*, host: str, port: int, workers: int, options: dict[str, Any]) -> int:
    """Start ``workers`` processes, restart any that dies, and stop them all on SIGINT or SIGTERM."""
    # Fail fast, in the supervisor, when the address is taken by something that does not share it.
    _listening_socket(host, port).close()
    context = multiprocessing.get_context("spawn")
    stopping = False

    def start() -> multiprocessing.process.BaseProcess:
        process = context.Process(target=_worker, args=(host, port, options), name="twofold-worker")
        process.start()
        return process

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    processes = [start() for _ in range(workers)]
    try:
        while not stopping:
            time.sleep(0.2)
            for index, process in enumerate(processes):
                if not process.is_alive() and not stopping:
                    print(f"twofold: worker {process.pid} exited with {process.exitcode}; restarting", flush=True)
                    time.sleep(RESTART_PAUSE_SECONDS)
                    processes[index] = start()
    finally:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + float(options.get("timeout_graceful_shutdown") or 30) + 5
        for process in processes:
            process.join(timeout=max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
