"""Operations: structured logs, health with memory, graceful shutdown on SIGTERM."""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from tessera_app.access_log import JsonFormatter

from .conftest import free_port

pytest_plugins = ["tests.api_fixtures"]
pytestmark = pytest.mark.anyio


async def test_health_reports_backend_and_memory(client) -> None:
    body = (await client.get("/api/health")).json()
    assert body["status"] == "ok"
    assert body["backend"]["name"] == "cpu"
    memory = body["memory"]
    assert 0 < memory["process_rss_gib"] < memory["host_total_gib"]
    assert 0 < memory["host_available_gib"] <= memory["host_total_gib"]


async def test_one_log_line_per_request(client, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tessera.http"):
        await client.get("/api/datasets/nope")
    records = [r for r in caplog.records if r.name == "tessera.http"]
    assert len(records) == 1
    line = json.loads(JsonFormatter().format(records[0]))
    assert line["event"] == "request"
    assert line["method"] == "GET"
    assert line["path"] == "/api/datasets/nope"
    assert line["status"] == 404
    assert line["duration_ms"] >= 0


@pytest.mark.slow
def test_sigterm_shuts_down_cleanly(tmp_path: Path, episode_file: Path) -> None:
    port, data_dir = free_port(), tmp_path / "data"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tessera_gpu.cli",
            "serve",
            str(episode_file),
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--device",
            "cpu",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        else:
            pytest.fail("server did not start")
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    # uvicorn finishes in-flight requests and the app's shutdown, then re-raises the signal.
    assert server.returncode in (0, -signal.SIGTERM), stderr
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert events[-1]["event"] == "shutdown"
    assert events[-1]["datasets"] == 1
    assert any(e["event"] == "request" and e["path"] == "/api/health" for e in events)
    leftovers = [p for p in data_dir.rglob("*") if ".tmp" in p.name]
    assert not leftovers
    db = sqlite3.connect(data_dir / "catalog.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert db.execute("SELECT count(*) FROM datasets").fetchone() == (1,)
    db.close()
