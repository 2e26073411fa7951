"""Fault tests: kill -9 the server mid-projection and mid-upload, restart, nothing is lost.

Each test runs ``tessera serve`` as a real process on a loopback port with its own data
directory, kills it with SIGKILL (no shutdown code runs), and starts it again on the same
directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import free_port, write_episode_file

pytestmark = pytest.mark.slow


class Server:
    """``tessera serve`` on a free loopback port; ``kill()`` is SIGKILL."""

    def __init__(self, data_dir: Path, files: list[Path], log: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "tessera_gpu.cli", "serve", *map(str, files),
                "--port", str(self.port), "--data-dir", str(data_dir), "--device", "cpu"]  # fmt: skip
        self._log = log.open("ab")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.base}/api/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        pytest.fail("the server did not start within 90 s")

    def get(self, path: str) -> Any:
        r = httpx.get(self.base + path, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.base + path, timeout=60, **kwargs)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()

    def wait_projection(self, dataset_id: str, until: Any, timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status: dict[str, Any] = self.get(f"/api/datasets/{dataset_id}/projection")
            if until(status):
                return status
            time.sleep(0.05)
        pytest.fail(f"projection never reached the wanted state: {status}")


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def _listing(server: Server) -> list[dict[str, Any]]:
    """The dataset list without the live projection status."""
    return [{k: v for k, v in d.items() if k != "projection"} for d in server.get("/api/datasets")]


def _partial_files(data_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*") if ".tmp" in p.name)


def _cache_files(data_dir: Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "cache").glob("*") if p.is_file())


def test_kill_during_projection_then_restart(tmp_path: Path, servers: list[Server]) -> None:
    data_dir, log = tmp_path / "data", tmp_path / "server.log"
    big = write_episode_file(tmp_path / "big.h5", n=30_000, dim=48, previews=False)
    small = write_episode_file(tmp_path / "small.h5", n=300, previews=False)

    first = Server(data_dir, [small, big], log)
    servers.append(first)
    datasets = _listing(first)
    ids = {d["name"]: d["id"] for d in datasets}
    first.wait_projection(ids["small"], lambda s: s["status"] == "done")
    cached_before = _cache_files(data_dir)
    samples = {}
    for dataset_id in ids.values():
        r = first.post(f"/api/datasets/{dataset_id}/samples", json={"method": "random", "n": 7})
        assert r.status_code == 201, r.text
        samples[dataset_id] = r.json()
    # Kill it while the big projection is in its layout epochs: well past the kNN, not done.
    first.wait_projection(ids["big"], lambda s: s["stage"] == "layout" and s["progress"] > 0.2)
    first.kill()

    second = Server(data_dir, [small, big], log)
    servers.append(second)
    assert not _partial_files(data_dir)  # swept at start-up, before anything could see them
    assert _listing(second) == datasets  # same ids, names, order, added_at
    for dataset_id, manifest in samples.items():
        assert second.get(f"/api/datasets/{dataset_id}/samples") == [manifest]
        sample_id = manifest["sample_id"]
        ids_txt = httpx.get(f"{second.base}/api/datasets/{dataset_id}/samples/{sample_id}/export")
        assert ids_txt.text.split() == manifest["episode_ids"]
    # The killed job runs again from the start and finishes; the finished one comes from cache.
    status = second.wait_projection(ids["big"], lambda s: s["status"] in ("done", "failed"))
    assert status["status"] == "done", status
    assert second.wait_projection(ids["small"], lambda s: s["status"] == "done")
    assert set(cached_before) < set(_cache_files(data_dir))  # the big map was added, whole
    assert not _partial_files(data_dir)
    r = httpx.get(f"{second.base}/api/datasets/{ids['big']}/tiles/0/0/0.png", timeout=30)
    assert r.status_code == 200
    assert r.content.startswith(b"\x89PNG")


def test_kill_during_upload_then_restart(tmp_path: Path, servers: list[Server]) -> None:
    data_dir, log = tmp_path / "data", tmp_path / "server.log"
    kept = write_episode_file(tmp_path / "kept.h5", n=300, previews=False)
    upload = write_episode_file(tmp_path / "upload.h5", n=20_000, dim=256, previews=False)
    payload = upload.read_bytes()

    first = Server(data_dir, [kept], log)
    servers.append(first)
    before = _listing(first)
    sent = threading.Event()

    def slow_body() -> Iterator[bytes]:
        boundary = b"tessera-fault-test"
        yield b"--" + boundary + b"\r\n"
        yield b'Content-Disposition: form-data; name="file"; filename="upload.h5"\r\n'
        yield b"Content-Type: application/x-hdf5\r\n\r\n"
        for start in range(0, len(payload), 1 << 20):
            yield payload[start : start + (1 << 20)]
            if start >= len(payload) // 2:
                sent.set()  # half the file is on its way: the server is writing it now
                time.sleep(0.2)
        yield b"\r\n--" + boundary + b"--\r\n"

    def client() -> None:
        headers = {"Content-Type": "multipart/form-data; boundary=tessera-fault-test"}
        with contextlib.suppress(httpx.TransportError):  # the server dies under it, as meant
            httpx.post(f"{first.base}/api/datasets", content=slow_body(), headers=headers,
                       timeout=60)  # fmt: skip

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    assert sent.wait(60)
    deadline = time.monotonic() + 30
    while not [p for p in (data_dir / "uploads").iterdir() if p.name.endswith(".tmp")]:
        assert time.monotonic() < deadline, "the upload never reached the disk"
        time.sleep(0.02)
    first.kill()
    thread.join(30)
    assert _partial_files(data_dir)  # the half-written upload is there, on disk, after the kill

    second = Server(data_dir, [kept], log)
    servers.append(second)
    assert not _partial_files(data_dir)
    assert _listing(second) == before
    assert sorted(os.listdir(data_dir / "uploads")) == []
    # The same upload, whole, now succeeds.
    r = second.post("/api/datasets", files={"file": ("upload.h5", payload, "application/x-hdf5")})
    assert r.status_code == 201, r.text
    assert len(second.get("/api/datasets")) == len(before) + 1
