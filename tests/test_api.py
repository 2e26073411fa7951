"""The HTTP API through Litestar's AsyncTestClient: status, content type and exact JSON.

Health, schema, datasets (upload, path, delete), episodes, counts and error shapes.
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from litestar.testing import AsyncTestClient
from tessera_app.main import create_app

from tessera_gpu import __version__, load_dataset
from tessera_gpu.settings import Settings

from .api_calls import (
    DERIVED,
    JSON,
    TEST_HOSTS,
    Client,
    add,
    dataset_id_of,
    error,
    expected_summary,
    upload,
    uploads_dir,
    wait_for_projection,
    without_derived,
)
from .conftest import write_episode_file

pytestmark = pytest.mark.anyio
pytest_plugins = ("tests.api_fixtures",)  # its fixtures: client, settings, allowed, ...


# ---- health and schema ------------------------------------------------------------------------


async def test_health(client: Client) -> None:
    r = await client.get("/api/health")
    assert r.status_code == 200
    assert r.headers["content-type"] == JSON
    backend = client.app.state.tessera.backend
    body = r.json()
    assert set(body.pop("memory")) == {"process_rss_gib", "host_total_gib", "host_available_gib"}
    assert body == {
        "status": "ok",
        "version": __version__,
        "backend": {"name": backend.name, "device": backend.device},
        "hdf5_version": h5py.version.hdf5_version,
        "datasets": 0,
        "catalog": {"status": "ok", "backups": 0},
    }


async def test_every_json_success_response_names_its_fields(client: Client) -> None:
    """A 2xx JSON body documented as a bare object would let any answer pass the schema
    checks; every one is a Struct with named properties (or a list of them)."""
    doc = (await client.get("/api/schema/openapi.json")).json()
    schemas = doc["components"]["schemas"]

    def resolve(schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
        return schema

    checked = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for status, response in op["responses"].items():
                content = response.get("content", {}).get("application/json")
                if not status.startswith("2") or content is None:
                    continue
                schema = resolve(content["schema"])
                if schema.get("type") == "array":
                    schema = resolve(schema["items"])
                assert schema.get("type") == "object", (method, path, schema)
                assert schema.get("properties"), (method, path, schema)
                assert schema.get("required"), (method, path, schema)
                checked.append(f"{method} {path}")
    assert len(checked) >= 15, checked


async def test_every_route_is_documented(client: Client) -> None:
    r = await client.get("/api/schema/openapi.json")
    assert r.status_code == 200
    operations = [op for item in r.json()["paths"].values() for op in item.values()]
    for op in operations:
        assert op["operationId"], op
        assert op["summary"], op
        assert op["description"], op
    api = {
        "getHealth", "listDatasets", "addDataset", "getDataset", "deleteDataset",
        "getProjection", "startProjection", "getEpisode", "countEpisodes",
        "createSample", "listSamples", "getSample", "exportSample",
    }  # fmt: skip
    assert api <= {op["operationId"] for op in operations}
    add = r.json()["paths"]["/api/datasets"]["post"]["requestBody"]["content"]
    assert sorted(add) == ["application/json", "multipart/form-data"]
    # Every error answer is documented with the one shape the handlers produce.
    error = {"$ref": "#/components/schemas/Error"}
    assert r.json()["components"]["schemas"]["Error"]["required"] == ["error", "code", "status"]
    for op in operations:
        errors = {k: v for k, v in op["responses"].items() if k[0] in "45"}
        assert {"4XX", "5XX"} <= set(errors), op["operationId"]
        for response in errors.values():
            assert response["content"]["application/json"]["schema"] == error, op["operationId"]


# ---- uploads ----------------------------------------------------------------------------------


async def test_upload_creates_a_dataset(client: Client, episode_file: Path) -> None:
    r = await upload(client, episode_file, "droid_v2.h5")
    assert r.status_code == 201
    assert r.headers["content-type"] == JSON
    body = r.json()
    assert body["name"] == "droid_v2"
    assert without_derived(body) == expected_summary(episode_file, body, "upload")
    assert body["projection"]["status"] in ("queued", "running", "done")
    stored = client.app.state.tessera.data.upload_path(body["id"])
    assert stored.read_bytes() == episode_file.read_bytes()


async def test_same_bytes_give_the_same_dataset(client: Client, episode_file: Path) -> None:
    first = await upload(client, episode_file, "a.h5")
    second = await upload(client, episode_file, "b.h5")
    assert second.status_code == 201
    assert first.json()["id"] == second.json()["id"] == dataset_id_of(episode_file)
    listing = (await client.get("/api/datasets")).json()
    assert [d["id"] for d in listing] == [dataset_id_of(episode_file)]


async def test_not_hdf5_is_415(client: Client, tmp_path: Path) -> None:
    junk = tmp_path / "notes.h5"
    junk.write_bytes(b"<html>not an hdf5 file</html>")
    r = await upload(client, junk)
    assert r.status_code == 415
    assert r.headers["content-type"] == JSON
    assert r.json()["code"] == "not_hdf5"
    assert r.json()["status"] == 415
    assert (
        r.json()["error"] == "Not an HDF5 file: notes.h5 has no HDF5 signature"
    )  # not .upload-*.tmp
    assert uploads_dir(client) == []


async def test_an_upload_error_names_the_users_file(client: Client, tmp_path: Path) -> None:
    broken = write_episode_file(tmp_path / "x.h5", previews=False)
    raw = bytearray(broken.read_bytes())
    raw[len(raw) // 2 :] = b"\x00" * (len(raw) - len(raw) // 2)  # HDF5 header, then zeros
    r = await client.post("/api/datasets", files={"file": ("run 7/droid_v2.h5", bytes(raw))})
    assert (r.status_code, r.json()["code"]) == (422, "corrupt_file"), r.text
    assert r.json()["error"].startswith("File is corrupt: reading droid_v2.h5 failed (")
    assert ".upload-" not in r.json()["error"]
    assert str(client.app.state.tessera.data.uploads_dir) not in r.json()["error"]


async def test_invalid_file_is_422_with_the_rule(client: Client, tmp_path: Path) -> None:
    def nan_row(f: h5py.File) -> None:
        emb = f["embeddings"][()]
        emb[7, 3] = np.nan
        del f["embeddings"]
        f.create_dataset("embeddings", data=emb)

    bad = write_episode_file(tmp_path / "bad.h5", edit=nan_row)
    r = await upload(client, bad)
    assert r.status_code == 422
    assert r.json() == error("Embeddings contain NaN values (first at row 7)", "non_finite", 422)
    assert uploads_dir(client) == []


async def test_too_large_is_413_and_leaves_nothing(tmp_path: Path, episode_file: Path) -> None:
    settings = Settings(
        device="cpu", data_dir=tmp_path / "small", max_upload_mb=0.2, allowed_host=TEST_HOSTS
    )
    async with AsyncTestClient(create_app(settings)) as client:
        assert episode_file.stat().st_size > 0.3e6  # over the limit and its multipart slack
        r = await upload(client, episode_file)
        assert r.status_code == 413
        assert r.headers["content-type"] == JSON
        message = (
            "File too large: more than 0.2 MB, the upload limit "
            "(start the server with --max-upload-mb to raise it)"
        )
        assert r.json() == error(message, "file_too_large", 413)
        assert uploads_dir(client) == []
        assert (await client.get("/api/datasets")).json() == []


async def test_upload_without_the_file_field_is_400(client: Client) -> None:
    r = await client.post("/api/datasets", files={"other": ("x.h5", b"abc", "text/plain")})
    assert r.status_code == 400
    assert r.json()["code"] == "missing_file"
    assert uploads_dir(client) == []


async def test_other_content_types_are_415(client: Client) -> None:
    r = await client.post("/api/datasets", content=b"x", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    assert r.json()["code"] == "unsupported_media_type"


async def test_facets_count_each_value_among_the_other_conditions(
    client: Client, episode_file: Path
) -> None:
    """Embedding Atlas's cross-filter: a field's counts ignore its own conditions."""
    dataset_id = await add(client, episode_file)
    ds = load_dataset(episode_file)
    task = np.asarray(ds.fields["task"].categories)[ds.fields["task"].values]
    success = ds.fields["success"].values
    body = {"filter": [{"field": "success", "op": "eq", "value": True},
                       {"field": "task", "op": "in", "value": ["pick"]}]}  # fmt: skip
    r = await client.post(f"/api/datasets/{dataset_id}/facets", json=body)
    assert r.status_code == 200, r.text
    facets = r.json()
    assert (facets["total"], facets["matched"]) == (300, int((success & (task == "pick")).sum()))
    assert facets["fields"]["task"] == {v: int((success & (task == v)).sum())
                                        for v in ds.fields["task"].categories}  # fmt: skip
    picks = task == "pick"
    assert facets["fields"]["success"] == {"true": int((picks & success).sum()),
                                           "false": int((picks & ~success).sum())}  # fmt: skip
    assert "episode_length" not in facets["fields"]  # numbers have ranges, not counts
    r = await client.post(f"/api/datasets/{dataset_id}/facets", json={"where": []})
    assert (r.status_code, r.json()["code"]) == (400, "invalid_request")


# ---- registration by path ---------------------------------------------------------------------


async def test_path_inside_an_allowed_root(client: Client, allowed: Path) -> None:
    path = write_episode_file(allowed / "inside.h5", n=120, previews=False)
    r = await client.post("/api/datasets", json={"path": str(path)})
    assert r.status_code == 201
    body = r.json()
    assert without_derived(body) == expected_summary(path, body, "path")
    assert body["name"] == "inside"


async def test_paths_outside_the_roots_are_403(
    client: Client, allowed: Path, tmp_path: Path, episode_file: Path
) -> None:
    (allowed / "escape.h5").symlink_to(episode_file)
    for path in (episode_file, allowed / "escape.h5", allowed / ".." / episode_file.name):
        r = await client.post("/api/datasets", json={"path": str(path)})
        assert r.status_code == 403, path
        message = f"Path not allowed: {path} is outside the --allow-path directories"
        assert r.json() == error(message, "forbidden", 403)


async def test_path_registration_needs_allow_path(tmp_path: Path, episode_file: Path) -> None:
    settings = Settings(device="cpu", data_dir=tmp_path / "d", allowed_host=TEST_HOSTS)
    async with AsyncTestClient(create_app(settings)) as client:
        r = await client.post("/api/datasets", json={"path": str(episode_file)})
    assert r.status_code == 403
    assert r.json()["code"] == "forbidden"


async def test_missing_path_and_bad_body(client: Client, allowed: Path) -> None:
    r = await client.post("/api/datasets", json={"path": str(allowed / "nope.h5")})
    assert r.status_code == 404
    assert r.json()["code"] == "file_not_found"
    r = await client.post("/api/datasets", json={"file": "x"})
    assert r.json()["code"] == "invalid_request"
    assert r.json()["error"].startswith(
        'The JSON body must be {"path": "/path/to/file.h5"} or {"paths": [...], "name": ...}'
    )


# ---- unknown things ---------------------------------------------------------------------------


async def test_unknown_dataset_is_404_everywhere(client: Client) -> None:
    body = error("Dataset not found: 'nope'", "dataset_not_found", 404)
    calls = [
        client.get("/api/datasets/nope"),
        client.delete("/api/datasets/nope"),
        client.get("/api/datasets/nope/projection"),
        client.post("/api/datasets/nope/projection"),
        client.get("/api/datasets/nope/episodes/0"),
        client.post("/api/datasets/nope/count", json={"filter": []}),
        client.post("/api/datasets/nope/samples", json={"method": "random", "n": 1}),
        client.get("/api/datasets/nope/samples"),
        client.get("/api/datasets/nope/samples/abc"),
        client.get("/api/datasets/nope/samples/abc/export"),
    ]
    for call in calls:
        r = await call
        assert (r.status_code, r.headers["content-type"], r.json()) == (404, JSON, body)


async def test_unknown_route_and_wrong_method(client: Client) -> None:
    r = await client.get("/api/nothing-here")
    assert r.json() == error("Not found: GET /api/nothing-here", "not_found", 404)
    r = await client.put("/api/health")
    assert r.status_code == 405
    assert r.json() == error("Method not allowed: PUT /api/health", "method_not_allowed", 405)


# ---- episodes and counts ----------------------------------------------------------------------


async def test_episode(client: Client, allowed: Path) -> None:
    def empty_thumbnail(f: h5py.File) -> None:
        thumbs = f["thumbnails"][()]
        thumbs[1] = np.zeros(0, dtype=np.uint8)
        del f["thumbnails"]
        f.create_dataset("thumbnails", data=thumbs, dtype=h5py.vlen_dtype(np.uint8))

    path = write_episode_file(allowed / "e.h5", n=40, edit=empty_thumbnail)
    dataset_id = await add(client, path)
    ds = load_dataset(path)
    r = await client.get(f"/api/datasets/{dataset_id}/episodes/0")
    assert r.status_code == 200
    body = r.json()
    derived = {k: body["metadata"].pop(k) for k in DERIVED if k in body["metadata"]}
    assert body == {
        "index": 0,
        "episode_id": "ep_00000",
        "metadata": ds.metadata_at(0),
        "has_thumbnail": True,
        "has_gif": True,
    }
    assert set(derived) in (set(), set(DERIVED))  # both once the similarity job is done
    r = await client.get(f"/api/datasets/{dataset_id}/episodes/1")
    assert r.json()["has_thumbnail"] is False
    assert r.json()["has_gif"] is True
    r = await client.get(f"/api/datasets/{dataset_id}/episodes/40")
    message = "Episode 40 not found: e has 40 episodes (0 to 39)"
    assert r.json() == error(message, "episode_not_found", 404)
    r = await client.get(f"/api/datasets/{dataset_id}/episodes/-1")
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_request"
    assert "index" in r.json()["error"]


async def test_count(client: Client, allowed: Path) -> None:
    path = write_episode_file(allowed / "c.h5", previews=False)
    dataset_id = await add(client, path)
    conditions = [
        {"field": "success", "op": "eq", "value": True},
        {"field": "task", "op": "in", "value": ["pick", "place"]},
        {"field": "episode_length", "op": "between", "value": [60, 150]},
    ]
    r = await client.post(f"/api/datasets/{dataset_id}/count", json={"filter": conditions})
    ds = load_dataset(path)
    f = ds.fields
    task = np.asarray(f["task"].categories)[f["task"].values]
    expected = (
        f["success"].values
        & np.isin(task, ["pick", "place"])
        & (f["episode_length"].values >= 60)
        & (f["episode_length"].values <= 150)
    )
    assert r.status_code == 200
    assert r.json() == {"count": int(expected.sum()), "total": 300}
    r = await client.post(f"/api/datasets/{dataset_id}/count", json={})
    assert r.json() == {"count": 300, "total": 300}


async def test_bad_filters_are_400_naming_field_and_op(client: Client, allowed: Path) -> None:
    dataset_id = await add(client, write_episode_file(allowed / "f.h5", previews=False))
    url = f"/api/datasets/{dataset_id}/count"
    r = await client.post(url, json={"filter": [{"field": "task", "op": "lt", "value": "a"}]})
    message = "filter on 'task' (category): op 'lt' is not allowed; use eq, ne, in or not_in"
    assert r.json() == error(message, "invalid_request", 400)
    r = await client.post(url, json={"filter": [{"field": "nope", "op": "eq", "value": 1}]})
    assert r.status_code == 400
    assert "'nope'" in r.json()["error"]
    r = await client.post(url, json={"where": []})
    assert r.json() == error(
        "unknown key 'where' in count request; keys: dedup_threshold, filter",
        "invalid_request",
        400,
    )
    r = await client.post(url, content=b"{not json", headers={"content-type": JSON})
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_request"
    r = await client.post(url, json=[1, 2])
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_request"


# ---- deletion and restart ---------------------------------------------------------------------


async def test_delete_removes_everything(client: Client, episode_file: Path) -> None:
    dataset_id = (await upload(client, episode_file)).json()["id"]
    url = f"/api/datasets/{dataset_id}"
    await client.post(f"{url}/samples", json={"method": "random", "n": 3})
    assert (await wait_for_projection(client, dataset_id)).json()["status"] == "done"
    core = client.app.state.tessera
    data, catalog = core.data, core.catalog
    assert data.upload_path(dataset_id).exists()
    assert catalog.samples.manifests(dataset_id)
    assert len(list(data.cache_dir.glob("*.proj"))) == 1
    r = await client.post(f"{url}/projection", json={"n_neighbors": 10, "seed": 3})
    assert r.status_code == 202, r.text
    assert (await wait_for_projection(client, dataset_id)).json()["status"] == "done"
    r = await client.post(f"{url}/projection", json={"n_neighbors": 12, "seed": 4})
    assert (await wait_for_projection(client, dataset_id)).json()["status"] == "done"
    assert len(list(data.cache_dir.glob("*.proj"))) == 3  # one map per parameter set
    r = await client.delete(url)
    assert r.status_code == 204
    assert r.content == b""
    assert (await client.get(url)).status_code == 404
    assert not data.upload_path(dataset_id).exists()
    assert catalog.samples.manifests(dataset_id) == []
    assert catalog.jobs.of(dataset_id) == []
    assert list(data.cache_dir.iterdir()) == []
    assert (await client.get("/api/datasets")).json() == []


async def test_delete_releases_the_datasets_memory(client: Client, allowed: Path) -> None:
    path = write_episode_file(allowed / "mem.h5", n=400, dim=32, previews=False)
    dataset_id = await add(client, path)
    url = f"/api/datasets/{dataset_id}"
    assert (await wait_for_projection(client, dataset_id)).json()["status"] == "done"
    assert (await client.get(f"{url}/tiles/0/0/0.png")).status_code == 200  # builds the maps
    assert (await client.get(f"{url}/points/nearest?x=0&y=0")).status_code == 200
    core = client.app.state.tessera
    dataset = weakref.ref(core.registry.get(dataset_id).dataset)
    maps = weakref.ref(core.projections.map(core.registry.get(dataset_id)))
    assert core.holds(dataset_id)
    assert core.maps.holds(dataset_id)
    assert (await client.delete(url)).status_code == 204
    gc.collect()
    assert not core.holds(dataset_id)
    assert dataset() is None
    assert maps() is None


async def test_delete_keeps_a_registered_file(client: Client, allowed: Path) -> None:
    path = write_episode_file(allowed / "keep.h5", n=50, previews=False)
    dataset_id = await add(client, path)
    assert (await client.delete(f"/api/datasets/{dataset_id}")).status_code == 204
    assert path.exists()
