"""Fault tests: kill -9 the server mid-projection, mid-upload and mid-write, restart, nothing
is lost.

Each test runs ``tessera serve`` as a real process on a loopback port with its own data
directory, kills it with SIGKILL (no shutdown code runs), and starts it again on the same
directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sqlite3
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

    def __init__(
        self, data_dir: Path, files: list[Path], log: Path, extra_args: list[str] | None = None
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "tessera_gpu.cli", "serve", *map(str, files),
                "--port", str(self.port), "--data-dir", str(data_dir), "--device", "cpu",
                *(extra_args or [])]  # fmt: skip
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
    """The dataset list without the live projection status, and without the fields a
    similarity job adds whenever it finishes."""
    derived = ("uniqueness", "duplicate_group")
    return [
        {**{k: v for k, v in d.items() if k != "projection"},
         "fields": [f for f in d["fields"] if f["name"] not in derived]}
        for d in server.get("/api/datasets")
    ]  # fmt: skip


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


def test_killed_during_catalog_writes_keeps_every_committed_write(
    tmp_path: Path, servers: list[Server]
) -> None:
    """Clients keep writing to the catalog (samples; datasets registered and deleted) while
    the server is SIGKILLed; after a restart, every write that was answered is there, whole,
    and the database passes its integrity check."""
    data_dir = tmp_path / "data"
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    base = write_episode_file(allowed / "base.h5", n=300, dim=8, previews=False)
    extra = [write_episode_file(allowed / f"x{i}.h5", n=30, dim=4, seed=i, previews=False)
             for i in range(3)]  # fmt: skip
    first = Server(data_dir, [base], tmp_path / "first.log")
    servers.append(first)
    (dataset_id,) = [d["id"] for d in first.get("/api/datasets")]
    answered: dict[str, dict[str, Any]] = {}
    registered: dict[str, bool] = {}
    stop = threading.Event()

    def write_samples() -> None:
        seed = 0
        while not stop.is_set():
            seed += 1
            body = {"method": "random", "n": 5, "seed": seed}
            with contextlib.suppress(httpx.TransportError):
                r = first.post(f"/api/datasets/{dataset_id}/samples", json=body)
                if r.status_code == 201:
                    answered[r.json()["sample_id"]] = r.json()

    in_flight: list[str] = []  # the dataset whose last request got no answer (the kill's)
    selections: dict[str, dict[str, Any]] = {}

    def write_selections() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            body = {"name": f"sel {i}", "filter": [{"field": "episode_length", "op": "gt",
                                                      "value": 50 + i}]}  # fmt: skip
            with contextlib.suppress(httpx.TransportError):
                r = first.post(f"/api/datasets/{dataset_id}/selections", json=body)
                if r.status_code == 201:
                    selections[body["name"]] = r.json()

    def register_and_delete() -> None:
        ids = [hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in extra]
        i = 0
        while not stop.is_set():
            path, other_id = extra[i % len(extra)], ids[i % len(extra)]
            i += 1
            in_flight[:] = [other_id]
            with contextlib.suppress(httpx.TransportError):
                r = first.post("/api/datasets", json={"path": str(path)})
                if r.status_code == 201:
                    registered[other_id] = True
                if r.status_code == 201 and i % 2 == 0:
                    gone = httpx.delete(f"{first.base}/api/datasets/{other_id}", timeout=30)
                    if gone.status_code == 204:
                        registered[other_id] = False
                in_flight.clear()

    # --allow-path is needed to register by path: restart the first server with it.
    first.stop()
    servers.remove(first)
    first = Server(data_dir, [], tmp_path / "first.log", extra_args=["--allow-path", str(allowed)])
    servers.append(first)
    workers = [threading.Thread(target=f)
               for f in (write_samples, register_and_delete, write_selections)]  # fmt: skip
    for w in workers:
        w.start()
    deadline = time.monotonic() + 60
    while (len(answered) < 15 or len(selections) < 5) and time.monotonic() < deadline:
        time.sleep(0.05)
    first.kill()  # mid-write: the clients are still posting
    stop.set()
    for w in workers:
        w.join(30)
    assert len(answered) >= 15

    second = Server(data_dir, [], tmp_path / "second.log")
    servers.append(second)
    assert _partial_files(data_dir) == []
    stored = {m["sample_id"]: m for m in second.get(f"/api/datasets/{dataset_id}/samples")}
    assert set(answered) <= set(stored)  # at most the one in flight at the kill is extra
    assert len(stored) - len(answered) <= 1
    for sample_id, manifest in answered.items():
        assert stored[sample_id] == manifest
    kept = {s["name"]: s for s in second.get(f"/api/datasets/{dataset_id}/selections")}
    assert set(selections) <= set(kept)
    assert len(kept) - len(selections) <= 1
    for name, made in selections.items():
        assert kept[name] == made
    listed = {d["id"] for d in second.get("/api/datasets")}
    for other_id, kept in registered.items():
        if other_id not in in_flight:  # a request cut by the kill may have landed, or not
            assert (other_id in listed) == kept, (other_id, kept)
    second.stop()
    db = sqlite3.connect(data_dir / "catalog.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()


def raw_get(port: int, target: bytes) -> tuple[int, dict[str, str], bytes]:
    """One GET as bytes on a socket (no client library shortens or refuses the line)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def test_long_request_lines_get_the_json_error_shape(tmp_path: Path, servers: list[Server]) -> None:
    """uvicorn's h11 refused a request line over 16 KiB with a plain-text 400 and a reset."""
    server = Server(tmp_path / "data", [], tmp_path / "server.log")
    servers.append(server)
    status, headers, body = raw_get(server.port, b"/api/datasets?pad=" + b"a" * 100_000)
    assert (status, headers["content-type"], body) == (200, "application/json", b"[]")
    status, headers, body = raw_get(server.port, b"/api/datasets?pad=" + b"a" * 600_000)
    assert (status, headers["content-type"]) == (414, "application/json")
    assert json.loads(body) == {
        "error": "The URL is too long: 600,017 bytes, more than 524,288; send long filters in a "
        "POST body (count, samples, selections)",
        "code": "uri_too_long",
        "status": 414,
    }
    status, headers, body = raw_get(server.port, b"/api/datasets?pad=" + b"a" * 2_000_000)
    assert (status, headers["content-type"]) == (400, "application/json")
    assert json.loads(body)["code"] == "bad_http_request"
    assert server.get("/api/health")["status"] == "ok"
