"""The similarity routes over HTTP: find similar, near-duplicate groups, dedup in count and
samples, uniqueness and duplicate_group as ordinary fields, and the CLI agreeing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from click.testing import CliRunner

from tessera_gpu.io.writer import write_dataset

from .api_calls import Client, add, error, wait_for_projection
from .test_similarity import brute_cosine, planted

pytestmark = pytest.mark.anyio
pytest_plugins = ("tests.api_fixtures",)


@pytest.fixture(scope="module")
def planted_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x, _ = planted(1200, 48, groups=25, seed=5)
    n = len(x)
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("planted") / "planted.h5"
    write_dataset(
        path,
        embeddings=x,
        episode_ids=[f"ep_{i:05d}" for i in range(n)],
        metadata={
            "success": rng.random(n) < 0.7,
            "task": np.array(["pick", "place", "stack"])[rng.integers(0, 3, n)],
            "episode_length": rng.integers(50, 200, n),
        },
    )
    return path


async def ready(client: Client, dataset_id: str) -> dict[str, Any]:
    """Wait for the similarity job; the route answers 202 with its status until then."""
    with anyio.fail_after(120):
        while True:
            r = await client.get(f"/api/datasets/{dataset_id}/similarity")
            assert r.status_code == 200, r.text
            if r.json()["status"] in ("done", "failed"):
                body: dict[str, Any] = r.json()
                return body
            await anyio.sleep(0.05)


async def test_find_similar(client: Client, planted_file: Path) -> None:
    dataset_id = await add(client, planted_file)
    url = f"/api/datasets/{dataset_id}/episodes/7/similar"
    status = (await ready(client, dataset_id))["status"]
    assert status == "done"
    r = await client.get(url, params={"k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["index"], body["episode_id"], body["metric"]) == (7, "ep_00007", "cosine")
    x, _ = planted(1200, 48, groups=25, seed=5)
    d = brute_cosine(x)[7]
    d[7] = np.inf
    want = np.lexsort((np.arange(len(d)), d))[:5]
    assert [n["index"] for n in body["neighbors"]] == want.tolist()
    assert [n["episode_id"] for n in body["neighbors"]] == [f"ep_{i:05d}" for i in want]
    np.testing.assert_allclose([n["distance"] for n in body["neighbors"]], d[want], atol=2e-5)
    flt = json.dumps([{"field": "task", "op": "eq", "value": "pick"}])
    r = await client.get(url, params={"k": 20, "filter": flt})
    picks = {n["index"] for n in r.json()["neighbors"]}
    tasks = (await client.get(f"/api/datasets/{dataset_id}/episodes/0")).json()  # smoke
    assert tasks["index"] == 0
    for i in list(picks)[:5]:
        meta = (await client.get(f"/api/datasets/{dataset_id}/episodes/{i}")).json()["metadata"]
        assert meta["task"] == "pick"


async def test_similar_errors(client: Client, planted_file: Path, metadata_only_file: Path) -> None:
    dataset_id = await add(client, planted_file)
    url = f"/api/datasets/{dataset_id}/episodes"
    r = await client.get(f"{url}/0/similar", params={"k": 1001})
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_request"
    r = await client.get(f"{url}/99999/similar")
    assert r.status_code == 404
    assert r.json()["code"] == "episode_not_found"
    meta_id = await add(client, metadata_only_file)
    r = await client.get(f"/api/datasets/{meta_id}/episodes/0/similar")
    assert r.json() == error(
        "This dataset is metadata-only: similarity needs embeddings", "metadata_only", 409
    )


async def test_a_running_job_is_joined_not_repeated(client: Client, planted_file: Path) -> None:
    dataset_id = await add(client, planted_file)
    first = await client.get(f"/api/datasets/{dataset_id}/episodes/1/similar")
    second = await client.post(f"/api/datasets/{dataset_id}/duplicates", json={})
    done = await ready(client, dataset_id)
    assert done["status"] == "done"
    for r in (first, second):
        assert r.status_code in (200, 202)
        if r.status_code == 202:
            assert r.json()["kind"] == "similarity"
    jobs = client.app.state.tessera.catalog.jobs.of(dataset_id)
    assert [(j.kind, j.status) for j in jobs if j.kind == "similarity"] == [("similarity", "done")]


async def test_duplicate_groups(client: Client, planted_file: Path) -> None:
    dataset_id = await add(client, planted_file)
    await ready(client, dataset_id)
    url = f"/api/datasets/{dataset_id}/duplicates"
    r = await client.post(url, json={"threshold": 0.01})
    assert r.status_code == 200, r.text
    body = r.json()
    _, pairs = planted(1200, 48, groups=25, seed=5)
    members = {i for p in pairs for i in p}
    assert (body["threshold"], body["metric"], body["n_groups"]) == (0.01, "cosine", 25)
    assert body["n_in_groups"] == len(members)
    assert body["removed"] == len(members) - 25
    assert {i for g in body["groups"] for i in g} == members
    assert [len(g) for g in body["groups"]] == sorted(
        (len(g) for g in body["groups"]), reverse=True
    )
    paged = (await client.post(url, json={"threshold": 0.01, "limit": 3, "offset": 2})).json()
    assert paged["groups"] == body["groups"][2:5]
    assert (paged["limit"], paged["offset"], paged["n_groups"]) == (3, 2, 25)
    flt = [{"field": "episode_id", "op": "in", "value": [f"ep_{i:05d}" for i in range(1100)]}]
    some = (await client.post(url, json={"threshold": 0.01, "filter": flt})).json()
    assert all(i < 1100 for g in some["groups"] for i in g)
    for bad in ({"threshold": 0}, {"threshold": 1.5}, {"threshold": "x"}, {"limit": 5000},
                {"colour": 1}):  # fmt: skip
        r = await client.post(url, json=bad)
        assert r.status_code == 400, bad
    r = await client.post(url, json={"threshold": 2})
    assert "threshold" in r.json()["error"]


async def test_dedup_in_count_and_samples(client: Client, planted_file: Path) -> None:
    dataset_id = await add(client, planted_file)
    await ready(client, dataset_id)
    base = f"/api/datasets/{dataset_id}"
    groups = (await client.post(f"{base}/duplicates", json={"threshold": 0.01})).json()
    count = (await client.post(f"{base}/count", json={"dedup_threshold": 0.01})).json()
    total = 1200 + _copies()
    assert count == {
        "count": total - groups["removed"],
        "total": total,
        "removed": groups["removed"],
    }
    keep_one = [{"field": "duplicates", "op": "keep_one", "value": 0.01}]
    as_filter = (await client.post(f"{base}/count", json={"filter": keep_one})).json()
    assert as_filter["count"] == count["count"]
    body = {"method": "random", "n": count["count"], "seed": 1, "dedup_threshold": 0.01}
    r = await client.post(f"{base}/samples", json=body)
    assert r.status_code == 201, r.text
    manifest = r.json()
    assert manifest["stats"]["dedup"] == {"threshold": 0.01, "removed": groups["removed"]}
    assert manifest["params"]["dedup_threshold"] == 0.01
    removed = {f"ep_{i:05d}" for g in groups["groups"] for i in g[1:]}
    assert not removed & set(manifest["episode_ids"])  # no near-copy survives
    success = [{"field": "success", "op": "eq", "value": True}]
    kmeans = {"method": "kmeans", "n": 50, "seed": 0, "dedup_threshold": 0.01, "filter": success}
    r = await client.post(f"{base}/samples", json=kmeans)
    assert r.status_code == 201, r.text
    within = (
        await client.post(f"{base}/duplicates", json={"threshold": 0.01, "filter": success})
    ).json()
    assert r.json()["stats"]["dedup"]["removed"] == within["removed"]
    removed = {f"ep_{i:05d}" for g in within["groups"] for i in g[1:]}  # keepers among matches
    assert not removed & set(r.json()["episode_ids"])


def _copies() -> int:
    _, pairs = planted(1200, 48, groups=25, seed=5)
    return len({i for p in pairs for i in p}) - 25


async def test_scores_are_ordinary_fields(client: Client, planted_file: Path) -> None:
    dataset_id = await add(client, planted_file)
    await ready(client, dataset_id)
    base = f"/api/datasets/{dataset_id}"
    fields = {f["name"]: f for f in (await client.get(base)).json()["fields"]}
    assert fields["uniqueness"]["kind"] == "float"
    assert fields["duplicate_group"]["kind"] == "int"
    assert fields["duplicate_group"]["min"] == 0
    flt = [{"field": "duplicate_group", "op": "gt", "value": 0}]
    in_groups = (await client.post(f"{base}/count", json={"filter": flt})).json()["count"]
    groups = (await client.post(f"{base}/duplicates", json={"threshold": 0.05})).json()
    assert in_groups == groups["n_in_groups"]
    body = {"method": "stratified", "n": 50, "stratify_by": "uniqueness", "allocation": "equal"}
    r = await client.post(f"{base}/samples", json=body)
    assert r.status_code == 201, r.text
    assert list(r.json()["stats"]["per_stratum"].values()) == [10] * 5
    assert (await wait_for_projection(client, dataset_id)).json()["status"] == "done"
    legend = (await client.get(f"{base}/legend", params={"color_by": "uniqueness"})).json()
    assert legend["kind"] == "number"
    assert legend["field"] == "uniqueness"
    tile = await client.get(f"{base}/tiles/0/0/0.png", params={"color_by": "uniqueness"})
    assert tile.status_code == 200


async def test_the_cli_agrees(client: Client, planted_file: Path) -> None:
    from tessera_gpu.cli.main import cli

    dataset_id = await add(client, planted_file)
    await ready(client, dataset_id)
    r = await client.get(f"/api/datasets/{dataset_id}/episodes/3/similar", params={"k": 8})
    result = CliRunner().invoke(cli, ["similar", str(planted_file), "ep_00003", "-k", "8",
                                      "--device", "cpu", "--format", "json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == r.json()
    result = CliRunner().invoke(cli, ["similar", str(planted_file), "nope"])
    assert result.exit_code == 1
    assert "Episode not found: 'nope'" in result.stderr
    result = CliRunner().invoke(cli, ["sample", str(planted_file), "--method", "random", "-n",
                                      "40", "--dedup", "0.01", "--format", "json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["stats"]["dedup"]["removed"] == _copies()
