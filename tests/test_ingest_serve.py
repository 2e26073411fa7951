"""`tessera serve ROOT`: a LeRobot root (or robomimic file) is ingested into the data directory
once per content and served; over HTTP, only under --allow-path."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from litestar.testing import TestClient

from tessera_gpu.cli.main import cli
from tessera_gpu.core import Tessera
from tessera_gpu.ingest import ingested as ingested_module
from tessera_gpu.settings import Settings
from tests.api_calls import JSON, Client, error

pytest_plugins = ("tests.api_fixtures", "tests.ingest_fixtures")


def serve(monkeypatch: pytest.MonkeyPatch, *args: str | Path) -> tuple[Any, str]:
    """``tessera serve ARGS`` up to the point it would listen: the app and what it printed."""
    import tessera_app.server as server

    seen: dict[str, Any] = {}
    monkeypatch.setattr(server, "run", lambda app, settings, sock: seen.update(app=app))
    cmd = ["serve", *map(str, args), "--device", "cpu", "--allowed-host", "testserver.local",
           "--port", "0"]  # fmt: skip
    result = CliRunner().invoke(cli, cmd)
    assert result.exit_code == 0, result.output
    return seen["app"], result.output


def test_serve_root_ingests_it_once_and_serves_its_map(
    v30_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    app, out = serve(monkeypatch, v30_root, "--data-dir", data)
    [ingested] = list((data / "ingested").glob("*/*.h5"))
    assert ingested.name == "pusht_sim.h5"
    assert f"{v30_root} is served from {ingested}" in out
    with TestClient(app) as c:
        [summary] = c.get("/api/datasets").json()
        assert summary["name"] == "pusht_sim"
        assert summary["n_episodes"] == 24
        assert summary["dim"] == 252
        assert summary["has_gifs"] is True
    # a second start finds the same content and does not ingest again
    monkeypatch.setattr(ingested_module, "ingest", lambda *a, **k: pytest.fail("ingested twice"))
    app, _ = serve(monkeypatch, v30_root, "--data-dir", data)
    assert list((data / "ingested").glob("*/*.h5")) == [ingested]


def test_a_changed_source_is_ingested_again(
    v21_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = shutil.copytree(v21_root, tmp_path / "src")
    data = tmp_path / "data"
    with Tessera(Settings(device="cpu", data_dir=data)) as core:
        core.open([root])
        first = {e.entry.path for e in core.registry.all()}
    episodes = root / "meta" / "episodes.jsonl"
    lines = episodes.read_text().splitlines()
    lines[0] = lines[0].replace('"tasks": ["', '"tasks": ["Renamed: ')
    episodes.write_text("\n".join(lines) + "\n")
    with Tessera(Settings(device="cpu", data_dir=data)) as core:
        core.open([root])
        paths = {e.entry.path for e in core.registry.all()}
    assert len(list((data / "ingested").glob("*/*.h5"))) == 2
    assert first < paths


def test_two_roots_joined_keep_their_episode_ids_apart(
    v30_root: Path, v21_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, _ = serve(monkeypatch, v30_root, v21_root, "--join", "sim", "--data-dir", tmp_path / "d")
    with TestClient(app):  # the app registers its files when it starts
        [live] = app.state.tessera.registry.all()
        assert live.dataset.n_episodes == 32
        ids = live.dataset.episode_ids.tolist()
    assert ids[0] == "pusht_sim/ep_000000"
    assert ids[-1] == "pusht_v21/ep_000007"


@pytest.mark.anyio
async def test_registering_a_root_by_path_ingests_it_under_allow_path(
    client: Client, allowed: Path, v21_root: Path, tmp_path: Path
) -> None:
    inside = shutil.copytree(v21_root, allowed / "pusht")
    r = await client.post("/api/datasets", json={"path": str(inside)})
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "pusht"
    assert r.json()["n_episodes"] == 8
    outside = shutil.copytree(v21_root, tmp_path / "elsewhere")
    r = await client.post("/api/datasets", json={"path": str(outside)})
    assert r.status_code == 403
    assert r.headers["content-type"].startswith(JSON)
    assert r.json() == error(
        f"Path not allowed: {outside} is outside the --allow-path directories", "forbidden", 403
    )


@pytest.mark.anyio
async def test_a_bad_root_over_http_is_a_422_naming_the_file(
    client: Client, allowed: Path, v21_root: Path
) -> None:
    root = shutil.copytree(v21_root, allowed / "broken")
    video = root / "videos/chunk-000/observation.image/episode_000003.mp4"
    video.unlink()
    r = await client.post("/api/datasets", json={"path": str(root)})
    assert r.status_code == 422
    assert r.json() == error(
        f"video file {video} is missing (episode 3 of broken)", "missing_video", 422
    )
    assert list((client.app.state.tessera.data.root / "ingested").glob("**/*.h5")) == []


def test_a_template_that_leaves_the_root_is_refused(v21_root: Path, tmp_path: Path) -> None:
    import json

    from tessera_gpu.errors import InvalidDataset
    from tessera_gpu.ingest.lerobot import LeRobotSource

    root = shutil.copytree(v21_root, tmp_path / "evil")
    info = json.loads((root / "meta/info.json").read_text())
    info["data_path"] = "../../secrets/episode_{episode_index:06d}.parquet"
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(InvalidDataset, match="data_path leads outside the dataset root"):
        LeRobotSource(root)
    info["data_path"] = "data/{episode_index.__class__}.parquet"
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(InvalidDataset, match="which LeRobot does not define"):
        LeRobotSource(root)
