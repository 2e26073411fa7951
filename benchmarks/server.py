"""A real ``tessera serve`` for the serving benchmarks: started on a free loopback port with
its own data directory, its log in a file, stopped when the block ends."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

__all__ = ["finished", "free_port", "tessera_server", "wait_for"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def tessera_server(
    *args: str, folder: Path, timeout: float = 900, start_timeout: float = 600
) -> Iterator[httpx.Client]:
    """``tessera serve ARGS --device cpu`` with its data dir and log in ``folder``; yields a
    client once ``/api/health`` answers. The process is terminated afterwards."""
    port = free_port()
    log = (folder / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "tessera_gpu.cli", "serve", *args, "--port", str(port),
         "--data-dir", str(folder / "data"), "--device", "cpu"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=timeout) as client:
            wait_for(client, "/api/health", lambda body: body.get("status") == "ok",
                     timeout=start_timeout)  # fmt: skip
            client.server_pid = server.pid  # type: ignore[attr-defined]
            yield client
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def wait_for(
    client: httpx.Client,
    url: str,
    ready: Callable[[Any], Any],
    *,
    timeout: float = 3600,
    every: float = 0.3,
) -> Any:
    """GET ``url`` until ``ready(body)`` is truthy; return the body (TimeoutError otherwise)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            body = client.get(url).json()
            if ready(body):
                return body
        except (httpx.HTTPError, ValueError):
            pass  # still starting
        time.sleep(every)
    raise TimeoutError(url)


def finished(status: dict[str, Any]) -> bool:
    """A job's status body says it ended (done or failed): what :func:`wait_for` waits for."""
    return status.get("status") in ("done", "failed")
