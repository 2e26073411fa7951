"""The way back to LeRobot, exact: one list per LeRobot dataset of a joined dataset, no empty
list, no index twice in a list, and the complement (the episodes to drop)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from tessera_gpu.cli.main import cli
from tessera_gpu.errors import Conflict
from tessera_gpu.exports import lerobot_document
from tessera_gpu.io.shards import load_shards
from tessera_gpu.io.writer import write_dataset
from tessera_gpu.selections import SelectionRequest

from .api_calls import Client, error

pytest_plugins = ("tests.api_fixtures",)


def write(path: Path, prefix: str, n: int = 10, dataset: str | None = None) -> Path:
    metadata: dict[str, Any] = {"episode_length": np.arange(n) + 20}
    if dataset is not None:
        metadata["dataset"] = [dataset] * n
    return write_dataset(
        path,
        embeddings=np.random.default_rng(len(prefix)).normal(size=(n, 4)),
        episode_ids=[f"{prefix}{i:06d}" for i in range(n)],
        metadata=metadata,
    )


async def selection(client: Client, dataset_id: str, name: str, ids: list[str]) -> None:
    r = await client.post(
        f"/api/datasets/{dataset_id}/selections", json={"name": name, "episode_ids": ids}
    )
    assert r.status_code == 201, r.text


async def export(client: Client, dataset_id: str, name: str, **params: Any) -> Any:
    return await client.get(
        f"/api/datasets/{dataset_id}/selections/{name}/export",
        params={"format": "lerobot", **params},
    )


@pytest.mark.anyio
async def test_a_joined_dataset_without_a_dataset_field_exports_one_list_per_file(
    client: Client, allowed: Path
) -> None:
    write(allowed / "sim.h5", "sim_ep_")
    write(allowed / "real.h5", "real_ep_")
    r = await client.post(
        "/api/datasets",
        json={"paths": [str(allowed / "sim.h5"), str(allowed / "real.h5")], "name": "both"},
    )
    assert r.status_code == 201, r.text
    dataset_id = r.json()["id"]
    await selection(
        client,
        dataset_id,
        "pick",
        ["sim_ep_000006", "real_ep_000009", "sim_ep_000009", "real_ep_000006"],
    )
    r = await export(client, dataset_id, "pick")
    assert r.status_code == 200
    # before: {"episodes": [6, 6, 9, 9]}, which LeRobot counts as 4 episodes and loads as 2
    assert r.json() == {"datasets": {"real.h5": [6, 9], "sim.h5": [6, 9]}}


@pytest.mark.anyio
async def test_an_empty_selection_is_a_409_not_an_empty_list(client: Client, allowed: Path) -> None:
    path = write(allowed / "x.h5", "ep_")
    r = await client.post("/api/datasets", json={"path": str(path)})
    dataset_id = r.json()["id"]
    r = await client.post(
        f"/api/datasets/{dataset_id}/selections",
        json={"name": "none", "filter": [{"field": "episode_length", "op": "gt", "value": 1000}]},
    )
    assert r.status_code == 201, r.text
    r = await export(client, dataset_id, "none")
    assert r.status_code == 409
    assert r.json() == error(
        "the set is empty; LeRobot refuses an empty episode list ('corresponds to no data')",
        "empty_export",
        409,
    )
    assert (await export(client, dataset_id, "none", format="txt")).text == ""  # txt may be empty


@pytest.mark.anyio
async def test_the_complement_lists_the_episodes_to_drop(client: Client, allowed: Path) -> None:
    path = write(allowed / "x.h5", "ep_")
    dataset_id = (await client.post("/api/datasets", json={"path": str(path)})).json()["id"]
    await selection(client, dataset_id, "keep", [f"ep_{i:06d}" for i in (1, 2, 3, 5, 8)])
    r = await export(client, dataset_id, "keep", complement="true")
    assert r.status_code == 200
    assert r.json() == {"episodes": [0, 4, 6, 7, 9]}
    assert (
        r.headers["content-disposition"] == 'attachment; filename="x-keep-complement.lerobot.json"'
    )
    r = await export(client, dataset_id, "keep", format="txt", complement="true")
    assert r.text.split() == [f"ep_{i:06d}" for i in (0, 4, 6, 7, 9)]
    r = await export(client, dataset_id, "keep", format="json", complement="true")
    assert r.status_code == 400
    await selection(client, dataset_id, "all", [f"ep_{i:06d}" for i in range(10)])
    r = await export(client, dataset_id, "all", complement="true")
    assert r.status_code == 409
    assert r.json()["error"].startswith("the complement is empty: the set holds every episode")


@pytest.mark.anyio
async def test_a_sample_exports_its_complement_too(client: Client, allowed: Path) -> None:
    path = write(allowed / "x.h5", "ep_")
    dataset_id = (await client.post("/api/datasets", json={"path": str(path)})).json()["id"]
    r = await client.post(
        f"/api/datasets/{dataset_id}/samples", json={"method": "random", "n": 4, "seed": 0}
    )
    sample = r.json()
    picked = {int(i[3:]) for i in sample["episode_ids"]}
    r = await client.get(
        f"/api/datasets/{dataset_id}/samples/{sample['sample_id']}/export",
        params={"format": "lerobot", "complement": "true"},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"episodes": sorted(set(range(10)) - picked)}
    assert "-complement.lerobot.json" in r.headers["content-disposition"]


def test_one_lerobot_dataset_across_shards_is_one_flat_list(tmp_path: Path) -> None:
    """Shards of one ingest (one `dataset` value) are one LeRobot dataset: a flat list."""
    a = write(tmp_path / "pusht-000.h5", "ep_", dataset="pusht")
    b = write_dataset(
        tmp_path / "pusht-001.h5",
        embeddings=np.ones((2, 4)),
        episode_ids=["ep_000010", "ep_000011"],
        metadata={"episode_length": [1, 2], "dataset": ["pusht", "pusht"]},
    )
    joined = load_shards([a, b])
    assert lerobot_document(joined, ["ep_000011", "ep_000002"]) == {"episodes": [2, 11]}


def test_an_index_twice_in_one_list_is_refused(tmp_path: Path) -> None:
    a = write(tmp_path / "a.h5", "a_", dataset="pusht")
    b = write(tmp_path / "b.h5", "b_", dataset="pusht")  # the same name, other episodes
    joined = load_shards([a, b])
    with pytest.raises(Conflict, match="episode index 3 appears more than once") as info:
        lerobot_document(joined, ["a_000003", "b_000003"])
    assert info.value.code == "duplicate_episode_index"


def test_the_cli_exports_the_complement(tmp_path: Path) -> None:
    from tessera_gpu.core import Tessera
    from tessera_gpu.settings import Settings

    path = write(tmp_path / "x.h5", "ep_")
    data = tmp_path / "data"
    with Tessera(Settings(device="cpu", data_dir=data)) as core:  # as the server keeps it
        core.open()
        live = core.register_path(path, check_allowed=False)
        core.curation.create_selection(
            live, SelectionRequest("keep", episode_ids=["ep_000001", "ep_000007"])
        )
    out = tmp_path / "drop.json"
    result = CliRunner(env={"TESSERA_DATA_DIR": str(data)}).invoke(
        cli,
        [
            "export",
            str(path),
            "--selection",
            "keep",
            "--format",
            "lerobot",
            "--complement",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text()) == {"episodes": [0, 2, 3, 4, 5, 6, 8, 9]}


def test_an_episode_without_its_episode_index_is_a_409_naming_it(tmp_path: Path) -> None:
    """A joined dataset where one file lacks `episode_index`: those rows have no index."""
    a = write_dataset(tmp_path / "a.h5", embeddings=np.ones((2, 4)), episode_ids=["a0", "a1"],
                      metadata={"episode_index": [4, 5], "dataset": ["x", "x"]})  # fmt: skip
    b = write_dataset(tmp_path / "b.h5", embeddings=np.ones((2, 4)), episode_ids=["b0", "b1"],
                      metadata={"dataset": ["y", "y"]})  # fmt: skip
    joined = load_shards([a, b])
    assert lerobot_document(joined, ["a1"]) == {"datasets": {"x": [5]}}
    with pytest.raises(
        Conflict, match=r"episode .b0. has no episode_index \(its file b\.h5 has none\)"
    ) as info:
        lerobot_document(joined, ["a0", "b0"])
    assert info.value.code == "no_episode_index"
