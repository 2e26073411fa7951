"""Named selections, set operations, group summaries, clusters, and the hand-off exports."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from click.testing import CliRunner
from litestar.testing import AsyncTestClient
from tessera_app.main import create_app

from tessera_gpu import load_dataset
from tessera_gpu.errors import Conflict, InvalidRequest
from tessera_gpu.exports import lerobot_document, mixture_weights
from tessera_gpu.settings import Settings

from .api_calls import Client, add, error, upload
from .conftest import write_episode_file

pytestmark = pytest.mark.anyio
pytest_plugins = ("tests.api_fixtures",)

SUCCESS = [{"field": "success", "op": "eq", "value": True}]
PICK = [{"field": "task", "op": "eq", "value": "pick"}]


def ids_where(path: Path, field: str, value: Any) -> list[str]:
    ds = load_dataset(path)
    return [
        str(ds.episode_ids[i]) for i in range(ds.n_episodes) if ds.metadata_at(i)[field] == value
    ]


async def make(client: Client, dataset_id: str, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post(f"/api/datasets/{dataset_id}/selections", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def export(client: Client, dataset_id: str, name: str, **query: Any) -> Any:
    r = await client.get(f"/api/datasets/{dataset_id}/selections/{name}/export", params=query)
    assert r.status_code == 200, r.text
    return r


async def test_selections_from_each_source_and_set_operations(
    client: Client, episode_file: Path
) -> None:
    dataset_id = await add(client, episode_file)
    ok = await make(client, dataset_id, {"name": "good", "filter": SUCCESS})
    assert (ok["name"], ok["source"]) == ("good", {"kind": "filter", "filter": SUCCESS})
    good = set(ids_where(episode_file, "success", True))
    assert ok["count"] == len(good)
    picks = set(ids_where(episode_file, "task", "pick"))
    await make(client, dataset_id, {"name": "picks", "filter": PICK})
    await make(client, dataset_id, {"name": "three", "episode_ids": ["ep_00001", "ep_00002",
                                                                     "ep_00003"]})  # fmt: skip
    expected = {"union": good | picks, "intersect": good & picks, "difference": good - picks}
    for op, want in expected.items():
        made = await make(client, dataset_id, {"name": op, "op": op, "of": ["good", "picks"]})
        assert made["source"] == {"kind": "op", "op": op, "of": ["good", "picks"]}
        txt = (await export(client, dataset_id, op)).text.split()
        assert set(txt) == want
        assert made["count"] == len(want)
    sample = await client.post(f"/api/datasets/{dataset_id}/samples",
                               json={"method": "random", "n": 7, "seed": 2})  # fmt: skip
    from_sample = await make(
        client, dataset_id, {"name": "s", "sample_id": sample.json()["sample_id"]}
    )
    assert from_sample["count"] == 7
    listing = (await client.get(f"/api/datasets/{dataset_id}/selections")).json()
    assert [s["name"] for s in listing] == ["good", "picks", "three", "union", "intersect",
                                            "difference", "s"]  # fmt: skip
    one = (await client.get(f"/api/datasets/{dataset_id}/selections/three")).json()
    assert (one["count"], one["source"]) == (3, {"kind": "episode_ids"})


@pytest.mark.parametrize("op", ["union", "difference"])
async def test_an_operand_deleted_meanwhile_is_a_400_naming_it(
    client: Client, episode_file: Path, monkeypatch: pytest.MonkeyPatch, op: str
) -> None:
    """Another client deletes an operand between this request's check and its read: the
    answer is the README's 400 naming it (it was a 404 selection_not_found)."""
    dataset_id = await add(client, episode_file)
    await make(client, dataset_id, {"name": "a", "filter": SUCCESS})
    await make(client, dataset_id, {"name": "b", "filter": PICK})
    core = client.app.state.tessera
    core.contexts.forget(dataset_id)  # as after a restart: the ids are read from the catalog
    read = core.catalog.selections.get

    def deleted_meanwhile(dataset: str, name: str) -> Any:
        if name == "b":
            core.catalog.selections.remove(dataset, "b")  # the other client's DELETE lands now
        return read(dataset, name)

    monkeypatch.setattr(core.catalog.selections, "get", deleted_meanwhile)
    r = await client.post(f"/api/datasets/{dataset_id}/selections",
                          json={"name": "c", "op": op, "of": ["a", "b"]})  # fmt: skip
    assert r.json() == error("unknown selection 'b'; selections: a", "unknown_selection", 400)


async def test_a_selection_is_a_filter_condition(client: Client, episode_file: Path) -> None:
    dataset_id = await add(client, episode_file)
    await make(client, dataset_id, {"name": "bad grasp", "filter": PICK})
    base = f"/api/datasets/{dataset_id}"
    not_bad = [{"field": "selection", "op": "not_in", "value": ["bad grasp"]}]
    count = (await client.post(f"{base}/count", json={"filter": not_bad})).json()
    assert count["count"] == 300 - len(ids_where(episode_file, "task", "pick"))
    r = await client.post(f"{base}/samples", json={"method": "kmeans", "n": 20, "filter": not_bad})
    assert r.status_code == 201, r.text
    assert not set(r.json()["episode_ids"]) & set(ids_where(episode_file, "task", "pick"))
    legend = await client.get(f"{base}/legend", params={"color_by": "selection:bad grasp"})
    if legend.status_code == 200:  # the map is done: colour by membership
        entries = {e["value"]: e["count"] for e in legend.json()["entries"]}
        assert entries == {"in bad grasp": 300 - count["count"], "not in bad grasp": count["count"]}
    r = await client.post(f"{base}/count", json={"filter": [{"field": "selection", "op": "in",
                                                             "value": ["nope", "bad grasp"]}]})  # fmt: skip
    assert r.json() == error("unknown selection 'nope'; selections: bad grasp",
                             "unknown_selection", 400)  # fmt: skip


async def test_selection_rules(client: Client, episode_file: Path) -> None:
    dataset_id = await add(client, episode_file)
    url = f"/api/datasets/{dataset_id}/selections"
    await make(client, dataset_id, {"name": "a", "filter": SUCCESS})
    r = await client.post(url, json={"name": "a", "filter": PICK})
    assert (r.status_code, r.json()["code"]) == (409, "selection_exists")
    for name in ("", "  ", "x" * 101, "a/b", "tab\there", "nul\x00"):
        r = await client.post(url, json={"name": name, "filter": PICK})
        assert r.status_code == 400, name
    r = await client.post(url, json={"name": "d", "op": "difference", "of": ["a"]})
    assert r.json() == error("difference needs at least 2 selection names in 'of': got 1",
                             "invalid_request", 400)  # fmt: skip
    r = await client.post(url, json={"name": "u", "op": "union", "of": ["a", "ghost", "spook"]})
    assert r.json() == error("unknown selections 'ghost', 'spook'; selections: a",
                             "unknown_selection", 400)  # fmt: skip
    r = await client.post(url, json={"name": "two", "filter": PICK, "episode_ids": ["ep_00001"]})
    assert r.status_code == 400
    assert "exactly one of" in r.json()["error"]
    assert (await client.delete(f"{url}/a")).status_code == 204
    assert (await client.get(f"{url}/a")).json()["code"] == "selection_not_found"
    assert (await client.delete(f"{url}/a")).status_code == 404


async def test_selections_survive_a_restart(settings: Settings, episode_file: Path) -> None:
    async with AsyncTestClient(create_app(settings)) as client:
        dataset_id = (await upload(client, episode_file)).json()["id"]
        made = await make(client, dataset_id, {"name": "keep me", "filter": SUCCESS})
        before = (await export(client, dataset_id, "keep me")).text
    async with AsyncTestClient(create_app(settings)) as client:
        listing = (await client.get(f"/api/datasets/{dataset_id}/selections")).json()
        assert listing == [made]
        assert (await export(client, dataset_id, "keep me")).text == before


async def test_exports(client: Client, allowed: Path) -> None:
    path = write_episode_file(allowed / "x.h5", n=60, previews=False)
    dataset_id = await add(client, path)
    await make(client, dataset_id, {"name": "all", "filter": []})
    lerobot = (await export(client, dataset_id, "all", format="lerobot")).json()
    ds = load_dataset(path)
    by_dataset: dict[str, list[int]] = {}
    for i in range(60):
        by_dataset.setdefault(ds.metadata_at(i)["dataset"], []).append(i)  # ids are ep_000ii
    assert lerobot == {"datasets": by_dataset}
    r = await export(client, dataset_id, "all", format="weights", by="task", tau=0)
    rows = list(csv.DictReader(io.StringIO(r.text)))
    weights = {row["episode_id"]: float(row["weight"]) for row in rows}
    assert sum(weights.values()) == pytest.approx(1.0)
    per_task: dict[str, float] = {}
    for i in range(60):
        task = ds.metadata_at(i)["task"]
        per_task[task] = per_task.get(task, 0.0) + weights[f"ep_{i:05d}"]
    assert list(per_task.values()) == pytest.approx([1 / 3] * 3)  # tau 0: the groups equal
    r = await client.get(f"/api/datasets/{dataset_id}/selections/all/export",
                         params={"format": "weights", "by": "task", "tau": 1.5})  # fmt: skip
    assert r.json() == error("tau must be a number in [0, 1]: got 1.5", "invalid_request", 400)
    r = await client.get(f"/api/datasets/{dataset_id}/selections/all/export",
                         params={"format": "weights"})  # fmt: skip
    assert r.status_code == 400
    r = await export(client, dataset_id, "all", format="csv")
    assert r.headers["content-disposition"] == 'attachment; filename="x-all.csv"'
    record = (await export(client, dataset_id, "all", format="json")).json()
    assert record["episode_ids"] == [f"ep_{i:05d}" for i in range(60)]
    assert record["source"] == {"kind": "filter", "filter": []}


def test_lerobot_indices_need_a_number() -> None:
    from .test_sampling import strata_dataset

    ds = strata_dataset({"a": 3})  # ids e0, e1, e2 end in a number
    assert lerobot_document(ds, ["e2", "e0"]) == {"episodes": [0, 2]}
    ds.episode_ids[:] = ["alpha", "beta", "gamma"]
    ds._id_index = None
    with pytest.raises(Conflict, match="Add an integer metadata field 'episode_index'"):
        lerobot_document(ds, ["alpha"])
    from tessera_gpu.io.dataset import Field

    ds.fields["episode_index"] = Field("episode_index", "int", np.array([7, 8, 9]))
    assert lerobot_document(ds, ["gamma", "alpha"]) == {"episodes": [7, 9]}


def test_mixture_weights_follow_n_to_the_tau() -> None:
    from .test_sampling import strata_dataset

    ds = strata_dataset({"a": 10, "b": 30})
    ids = ds.episode_ids.tolist()
    for tau in (0.0, 0.5, 1.0):
        w = mixture_weights(ds, ids, by="task", tau=tau)
        assert w.sum() == pytest.approx(1.0)
        share_a = w[:10].sum()
        assert share_a == pytest.approx(10**tau / (10**tau + 30**tau))
        assert np.allclose(w[:10], w[0])  # shared equally inside a group
    with pytest.raises(InvalidRequest, match="cannot weigh by 'nope'"):
        mixture_weights(ds, ids, by="nope", tau=1)


async def test_group_summary(client: Client, episode_file: Path) -> None:
    dataset_id = await add(client, episode_file)
    url = f"/api/datasets/{dataset_id}/summary"
    body = (await client.post(url, json={"group_by": "task", "filter": SUCCESS})).json()
    ds = load_dataset(episode_file)
    rows = [i for i in range(300) if ds.metadata_at(i)["success"]]
    assert body["group_by"] == "task"
    assert body["matched"] == len(rows)
    by_task: dict[str, list[int]] = {}
    for i in rows:
        by_task.setdefault(ds.metadata_at(i)["task"], []).append(i)
    assert [g["value"] for g in body["groups"]] == sorted(by_task, key=lambda t: -len(by_task[t]))
    for group in body["groups"]:
        members = by_task[group["value"]]
        lengths = [ds.metadata_at(i)["episode_length"] for i in members]
        assert group["count"] == len(members)
        assert group["success_rate"] == 1.0
        q1, median, q3 = np.quantile(lengths, [0.25, 0.5, 0.75])
        assert group["episode_length"] == pytest.approx(
            {"mean": np.mean(lengths), "q1": q1, "median": median, "q3": q3}
        )
        top = dict(group["top"]["dataset"])
        assert sum(top.values()) == len(members)
    hist = (await client.post(url, json={"group_by": "episode_length", "bins": 10})).json()
    assert len(hist["groups"]) <= 10
    assert sum(g["count"] for g in hist["groups"]) == 300
    r = await client.post(url, json={"group_by": "nope"})
    assert (r.status_code, r.json()["code"]) == (400, "invalid_request")
    assert r.json()["error"].startswith(
        "unknown field 'nope': group_by needs a category, bool or number field; fields: "
        "dataset, episode_length, gripper_force, success, task"
    )  # it named stratify_by, which this request does not have


async def test_clusters_become_a_field(
    client: Client, episode_file: Path, metadata_only_file: Path
) -> None:
    dataset_id = await add(client, episode_file)
    base = f"/api/datasets/{dataset_id}"
    r = await client.post(f"{base}/clusters", json={"k": 3})
    assert r.status_code == 202
    assert r.json()["kind"] == "clusters"
    with anyio.fail_after(120):
        while (await client.get(f"{base}/clusters")).json()["status"] != "done":
            await anyio.sleep(0.05)
    fields = {f["name"]: f for f in (await client.get(base)).json()["fields"]}
    counts = list(fields["cluster"]["values"].values())
    assert list(fields["cluster"]["values"]) == ["c1", "c2", "c3"]  # c1 the largest
    assert counts == sorted(counts, reverse=True)
    assert sum(counts) == 300
    summary = (await client.post(f"{base}/summary", json={"group_by": "cluster"})).json()
    assert [g["value"] for g in summary["groups"]] == ["c1", "c2", "c3"]
    tasks = {g["value"]: dict(g["top"]["task"]) for g in summary["groups"]}
    assert all(len(t) >= 1 for t in tasks.values())
    for bad in ({"k": 1}, {"k": 5000}, {"k": "x"}):
        assert (await client.post(f"{base}/clusters", json=bad)).status_code == 400
    meta_id = await add(client, metadata_only_file)
    r = await client.post(f"/api/datasets/{meta_id}/clusters", json={})
    assert r.json() == error("This dataset is metadata-only: clusters need embeddings",
                             "metadata_only", 409)  # fmt: skip


async def test_the_cli_sees_the_servers_selections(
    client: Client, episode_file: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tessera_gpu.cli.main import cli

    dataset_id = await add(client, episode_file)
    await make(client, dataset_id, {"name": "bad_grasp", "filter": PICK})
    monkeypatch.setenv("TESSERA_DATA_DIR", str(settings.data_dir))
    result = CliRunner().invoke(cli, ["sample", str(episode_file), "--method", "random", "-n",
                                      "30", "--where", "selection not in bad_grasp"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not set(result.stdout.split()) & set(ids_where(episode_file, "task", "pick"))
    result = CliRunner().invoke(cli, ["export", str(episode_file), "--selection", "bad_grasp",
                                      "--format", "lerobot"])  # fmt: skip
    assert result.exit_code == 0, result.output
    api = await export(client, dataset_id, "bad_grasp", format="lerobot")
    assert json.loads(result.stdout) == api.json()
    result = CliRunner().invoke(cli, ["export", str(episode_file), "--selection", "ghost"])
    assert result.exit_code == 1
    assert "Selection not found: 'ghost'" in result.stderr
