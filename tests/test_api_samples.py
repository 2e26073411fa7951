"""The HTTP API through Litestar's AsyncTestClient: status, content type and exact JSON.

Samples and exports, projection jobs, restart, and the CLI agreeing with the API.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from litestar.testing import AsyncTestClient
from tessera_app.main import create_app

from tessera_gpu.settings import Settings

from .api_calls import (
    JSON,
    Client,
    add,
    error,
    register,
    upload,
    wait_for_projection,
)
from .conftest import write_episode_file

pytestmark = pytest.mark.anyio
pytest_plugins = ("tests.api_fixtures",)  # its fixtures: client, settings, allowed, ...


# ---- samples ----------------------------------------------------------------------------------


async def test_sample_lifecycle(client: Client, allowed: Path) -> None:
    dataset_id = await add(client, write_episode_file(allowed / "s.h5", previews=False))
    url = f"/api/datasets/{dataset_id}/samples"
    request = {
        "filter": [{"field": "success", "op": "eq", "value": True}],
        "method": "stratified",
        "n": 30,
        "seed": 4,
        "stratify_by": "task",
        "allocation": "equal",
    }
    r = await client.post(url, json=request)
    assert r.status_code == 201
    assert r.headers["content-type"] == JSON
    manifest = r.json()
    assert manifest["dataset_id"] == dataset_id
    assert manifest["n"] == 30
    assert manifest["method"] == "stratified"
    assert manifest["seed"] == 4
    assert len(set(manifest["episode_ids"])) == 30
    assert sum(manifest["stats"]["per_stratum"].values()) == 30
    again = (await client.post(url, json=request)).json()
    assert again["episode_ids"] == manifest["episode_ids"]  # same request + seed, same ids
    assert again["sample_id"] != manifest["sample_id"]

    listing = (await client.get(url)).json()
    assert [m["sample_id"] for m in listing] == [manifest["sample_id"], again["sample_id"]]
    r = await client.get(f"{url}/{manifest['sample_id']}")
    assert r.status_code == 200
    assert r.json() == manifest
    r = await client.get(f"{url}/no-such-sample")
    assert r.json() == error("Sample not found: 'no-such-sample'", "sample_not_found", 404)


async def test_map_selection_sample_records_its_projection(client: Client, allowed: Path) -> None:
    dataset_id = await add(client, write_episode_file(allowed / "m.h5", previews=False))
    done = (await wait_for_projection(client, dataset_id)).json()
    x0, y0, x1, y1 = done["bounds"]
    box = [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]  # the whole map
    url = f"/api/datasets/{dataset_id}/samples"
    body = {"method": "random", "n": 10, "filter": [{"field": "map", "op": "within", "value": box}]}
    manifest = (await client.post(url, json=body)).json()
    assert manifest["n"] == 10
    assert manifest["matched"] > 10
    info = client.app.state.tessera.jobs.info(dataset_id)
    dataset = client.app.state.tessera.registry.get(dataset_id).dataset
    assert manifest["projection"] == {
        "embeddings_hash": dataset.embeddings_hash,
        "algorithm": "umap",
        "params": info["params"],
        "backend": "cpu",
        "knn": info["knn"],
        "init": info["init"],
        "n_epochs": info["n_epochs"],
    }
    plain = (await client.post(url, json={"method": "random", "n": 10})).json()
    assert plain["projection"] is None  # no map condition, no map to name


async def test_sample_exports(client: Client, allowed: Path) -> None:
    dataset_id = await add(client, write_episode_file(allowed / "x.h5", previews=False))
    url = f"/api/datasets/{dataset_id}/samples"
    manifest = (await client.post(url, json={"method": "random", "n": 5, "seed": 1})).json()
    export = f"{url}/{manifest['sample_id']}/export"
    ids = manifest["episode_ids"]
    stem = "x-random-5-seed1"  # the dataset name, the method, n and the seed
    cases = {
        "txt": ("text/plain; charset=utf-8", "".join(f"{i}\n" for i in ids)),
        "csv": ("text/csv; charset=utf-8", None),
        "json": (JSON, None),
    }
    for fmt, (media_type, text) in cases.items():
        r = await client.get(export, params={"format": fmt})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == media_type
        assert r.headers["content-disposition"] == f'attachment; filename="{stem}.{fmt}"'
        if text is not None:
            assert r.text == text
    csv_lines = (await client.get(export, params={"format": "csv"})).text.splitlines()
    assert csv_lines[0].startswith("episode_id,")
    assert [line.split(",")[0] for line in csv_lines[1:]] == ids
    assert (await client.get(export, params={"format": "json"})).json() == manifest
    r = await client.get(export, params={"format": "xlsx"})
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_request"


async def test_sample_errors(client: Client, allowed: Path, metadata_only_file: Path) -> None:
    dataset_id = await add(client, write_episode_file(allowed / "n.h5", previews=False))
    url = f"/api/datasets/{dataset_id}/samples"
    r = await client.post(url, json={"method": "random", "n": 500})
    message = "n = 500 is larger than the 300 episodes that match the filter"
    assert r.json() == error(message, "invalid_request", 400)
    r = await client.post(url, json={"method": "magic", "n": 5})
    assert r.status_code == 400
    assert "method" in r.json()["error"]
    os.link(metadata_only_file, allowed / "meta.h5")
    meta_id = await add(client, allowed / "meta.h5")
    r = await client.post(f"/api/datasets/{meta_id}/samples", json={"method": "kmeans", "n": 5})
    message = "K-means sampling needs embeddings: this dataset is metadata-only"
    assert r.json() == error(message, "metadata_only", 409)


async def test_kmeans_sample_does_not_need_the_projection(client: Client, allowed: Path) -> None:
    dataset_id = await add(client, write_episode_file(allowed / "k.h5", previews=False))
    r = await client.post(
        f"/api/datasets/{dataset_id}/samples", json={"method": "kmeans", "n": 12, "seed": 0}
    )
    assert r.status_code == 201, r.text
    assert r.json()["n"] == 12
    assert len(set(r.json()["episode_ids"])) == 12


# ---- projection -------------------------------------------------------------------------------


async def test_projection_runs_to_done(client: Client, allowed: Path) -> None:
    dataset_id = await add(client, write_episode_file(allowed / "p.h5", previews=False))
    r = await wait_for_projection(client, dataset_id)
    status = r.json()
    assert status["status"] == "done", status
    assert status["progress"] == 1.0
    assert status["error"] is None
    assert status["elapsed_s"] > 0
    x0, y0, x1, y1 = status["bounds"]
    assert x0 < x1
    assert y0 < y1
    summary = (await client.get(f"/api/datasets/{dataset_id}")).json()
    assert summary["projection"] == status

    r = await client.post(
        f"/api/datasets/{dataset_id}/projection", json={"n_neighbors": 8, "seed": 3}
    )
    assert r.status_code == 202
    assert r.json()["status"] in ("queued", "running", "done")
    assert (await wait_for_projection(client, dataset_id)).json()["status"] == "done"
    entry = client.app.state.tessera.catalog.datasets.get(dataset_id)
    assert entry.projection == {"n_neighbors": 8, "seed": 3}


async def test_projection_parameters_are_bounded(client: Client, allowed: Path) -> None:
    dataset_id = await add(client, write_episode_file(allowed / "b.h5", previews=False))
    url = f"/api/datasets/{dataset_id}/projection"
    for body in ({"n_neighbors": 1}, {"min_dist": 2.0}, {"seed": -1}, {"colour": "red"}):
        r = await client.post(url, json=body)
        assert (r.status_code, r.json()["code"]) == (400, "invalid_request"), body
    r = await client.post(url, json={"n_neighbors": 1})
    assert "n_neighbors" in r.json()["error"]
    assert ">= 2" in r.json()["error"]


async def test_metadata_only_has_no_projection(
    client: Client, allowed: Path, metadata_only_file: Path
) -> None:
    os.link(metadata_only_file, allowed / "meta.h5")
    dataset_id = await add(client, allowed / "meta.h5")
    r = await client.get(f"/api/datasets/{dataset_id}/projection")
    assert r.json() == {
        "status": "absent",
        "progress": 0.0,
        "stage": None,
        "elapsed_s": 0.0,
        "error": None,
    }
    r = await client.post(f"/api/datasets/{dataset_id}/projection")
    message = "This dataset is metadata-only: there are no embeddings to project"
    assert r.json() == error(message, "metadata_only", 409)


async def test_restart_brings_everything_back(
    settings: Settings, allowed: Path, episode_file: Path
) -> None:
    path = write_episode_file(allowed / "r.h5", previews=False)
    async with AsyncTestClient(create_app(settings)) as client:
        uploaded = (await upload(client, episode_file)).json()["id"]
        registered = await register(client, path)
        done = [await wait_for_projection(client, d) for d in (uploaded, registered)]
        assert [r.json()["status"] for r in done] == ["done", "done"]
        samples = [
            (
                await client.post(f"/api/datasets/{d}/samples", json={"method": "random", "n": 4})
            ).json()
            for d in (uploaded, registered)
        ]
        before = (await client.get("/api/datasets")).json()
    stale = settings.data_dir / "uploads" / ".upload-deadbeef.tmp"
    stale.write_bytes(b"half an upload")
    async with AsyncTestClient(create_app(settings)) as client:
        assert not stale.exists()
        after = (await client.get("/api/datasets")).json()
        assert [d["id"] for d in after] == [d["id"] for d in before] == [uploaded, registered]
        assert [d["name"] for d in after] == [d["name"] for d in before]
        for manifest in samples:
            d = manifest["dataset_id"]
            assert (await client.get(f"/api/datasets/{d}/samples")).json() == [manifest]
        jobs = client.app.state.tessera.jobs
        for d in (uploaded, registered):  # the finished maps come back from the cache
            assert (await wait_for_projection(client, d)).json()["status"] == "done"
            assert jobs.info(d)["cache"] == "hit"


# ---- the CLI and the API agree ----------------------------------------------------------------


async def test_cli_sample_matches_the_api(client: Client, allowed: Path) -> None:
    from tessera_gpu.cli.sample import sample

    path = write_episode_file(allowed / "cli.h5", previews=False)
    dataset_id = await add(client, path)
    for method, extra in (
        ("random", []),
        ("stratified", ["--stratify-by", "task"]),
        ("kmeans", ["--device", "cpu"]),
    ):
        args = [str(path), "--method", method, "-n", "25", "--seed", "7", "--format", "json"]
        args += ["--where", "success == true", "--where", "episode_length > 80", *extra]
        result = CliRunner().invoke(sample, args)
        assert result.exit_code == 0, result.output
        body = {
            "method": method,
            "n": 25,
            "seed": 7,
            "filter": [
                {"field": "success", "op": "eq", "value": True},
                {"field": "episode_length", "op": "gt", "value": 80},
            ],
            "stratify_by": "task" if method == "stratified" else None,
        }
        r = await client.post(f"/api/datasets/{dataset_id}/samples", json=body)
        from_cli, from_http = json.loads(result.stdout), r.json()
        for varying in ("sample_id", "created_at"):
            assert from_cli.pop(varying) != from_http.pop(varying)
        assert from_cli == from_http  # the same dataset_id, hash, ids, stats: one manifest
