"""Limits under load: the projection queue, concurrent uploads, free disk."""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path

import pytest
import tessera_app.controllers
from tessera_app.controllers import DISK_MARGIN

import tessera_gpu.core.jobs

from .api_calls import Client, add, upload, uploads_dir
from .conftest import write_episode_file

pytestmark = pytest.mark.anyio
pytest_plugins = ("tests.api_fixtures",)
Usage = namedtuple("Usage", "total used free")


async def test_a_full_projection_queue_is_a_503_with_retry_after(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert tessera_gpu.core.jobs.MAX_QUEUED == 32
    dataset_id = await add(client, write_episode_file(tmp_path / "q.h5", n=40, previews=False))
    before = (await client.get(f"/api/datasets/{dataset_id}")).json()["projection"]
    monkeypatch.setattr(
        tessera_gpu.core.jobs, "MAX_QUEUED", 0
    )  # full, whatever the worker is doing
    r = await client.post(f"/api/datasets/{dataset_id}/projection", json={"seed": 5})
    assert r.status_code == 503
    assert r.headers["retry-after"] == "30"
    assert r.json()["code"] == "queue_full"
    after = client.app.state.tessera.registry.get(dataset_id).entry.projection
    assert after == {}
    assert before["status"] in ("queued", "running", "done")


async def test_too_many_uploads_at_once_is_a_503(client: Client, episode_file: Path) -> None:
    slots = client.app.state.tessera.uploads
    assert slots.limit == 4
    held = [slots.slot() for _ in range(slots.limit)]
    for s in held:
        s.__enter__()
    r = await upload(client, episode_file)
    assert r.status_code == 503
    assert r.headers["retry-after"] == "10"
    assert r.json()["code"] == "too_many_uploads"
    for s in held:
        s.__exit__(None, None, None)
    assert (await upload(client, episode_file)).status_code == 201
    assert slots.active == 0


async def test_a_full_disk_is_a_507_before_anything_is_written(
    client: Client, episode_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    free = episode_file.stat().st_size + DISK_MARGIN - 1
    monkeypatch.setattr(
        tessera_app.controllers.shutil, "disk_usage", lambda _: Usage(1e12, 0, free)
    )
    r = await upload(client, episode_file)
    assert (r.status_code, r.json()["code"]) == (507, "insufficient_storage")
    assert uploads_dir(client) == []
