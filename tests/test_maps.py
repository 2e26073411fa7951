"""The map routes over HTTP: tiles, legend, nearest, points, previews, the page and its assets.

The projection is stubbed with fixed coordinates (the first two embedding dimensions), so these
tests check the map routes, not UMAP, and start no projection job.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from PIL import Image
from tessera_app.main import create_app

from tessera_gpu import load_dataset
from tessera_gpu.render.tiles import empty_tile
from tessera_gpu.settings import Settings

from .api_calls import DERIVED, TEST_HOSTS
from .conftest import write_episode_file

pytestmark = pytest.mark.anyio
Client = AsyncTestClient[Litestar]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def html_thumbnails(f: h5py.File) -> None:
    """Every thumbnail replaced by an HTML page posing as one."""
    del f["thumbnails"]
    page = np.frombuffer(b"<!doctype html><script>alert(document.cookie)</script>", np.uint8)
    data = np.empty(f["episode_ids"].shape[0], dtype=object)
    data[:] = [page] * data.shape[0]
    f.create_dataset("thumbnails", data=data, dtype=h5py.vlen_dtype(np.uint8))


@pytest.fixture(scope="module")
def html_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "html.h5"
    return write_episode_file(path, n=40, edit=html_thumbnails)


def coords_of(path: Path) -> np.ndarray:
    emb = load_dataset(path).embeddings
    assert emb is not None
    return np.ascontiguousarray(emb[:, :2])


@pytest.fixture
async def client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, episode_file: Path
) -> AsyncIterator[Client]:
    app = create_app(Settings(device="cpu", data_dir=tmp_path / "data", allowed_host=TEST_HOSTS))
    jobs = app.state.tessera.jobs
    projections: dict[str, np.ndarray] = {}
    monkeypatch.setattr(jobs, "submit", lambda *a, **k: None)
    monkeypatch.setattr(jobs, "coords", lambda dataset_id: projections.get(dataset_id))
    app.state.projections = projections
    async with AsyncTestClient(app) as c:
        yield c


def add(client: Client, path: Path, *, projected: bool = True) -> str:
    live = client.app.state.tessera.register_path(path, check_allowed=False)
    if projected and live.dataset.embeddings is not None:
        client.app.state.projections[live.entry.id] = coords_of(path)
    return str(live.entry.id)


def rgba(content: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(content))
    assert img.size == (256, 256)
    assert img.mode == "RGBA"
    return np.asarray(img)


def q(raw: Any) -> str:
    return json.dumps(raw)


# ---- tiles and legend --------------------------------------------------------------------------


async def test_tile_is_a_transparent_png(client: Client, episode_file: Path) -> None:
    ds = add(client, episode_file)
    r = await client.get(f"/api/datasets/{ds}/tiles/0/0/0.png")
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    px = rgba(r.content)
    assert px[0, 0, 3] == 0
    assert (px[..., 3] > 0).sum() > 100


@pytest.mark.parametrize("tile", ["1/2/0.png", "1/0/2.png", "13/0/0.png", "0/0/0.jpg", "0/0/x.png"])
async def test_tiles_outside_the_pyramid_are_400(
    client: Client, episode_file: Path, tile: str
) -> None:
    ds = add(client, episode_file)
    r = await client.get(f"/api/datasets/{ds}/tiles/{tile}")
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/json"
    assert r.json()["code"] == "tile_out_of_range"
    assert r.json()["status"] == 400


async def test_filter_hides_episodes_on_tiles(client: Client, episode_file: Path) -> None:
    ds = add(client, episode_file)
    url = f"/api/datasets/{ds}/tiles/0/0/0.png"
    everything = rgba((await client.get(url)).content)
    picks = rgba((await client.get(url, params={"filter": q([
        {"field": "task", "op": "eq", "value": "pick"}])})).content)  # fmt: skip
    nothing = await client.get(url, params={"filter": q([
        {"field": "episode_length", "op": "gt", "value": 10_000}])})  # fmt: skip
    assert 0 < (picks[..., 3] > 0).sum() < (everything[..., 3] > 0).sum()
    assert nothing.content == empty_tile()


async def test_a_bad_filter_or_colour_is_400(client: Client, episode_file: Path) -> None:
    ds = add(client, episode_file)
    url = f"/api/datasets/{ds}/tiles/0/0/0.png"
    r = await client.get(url, params={"filter": "[{"})
    assert r.status_code == 400
    assert "filter must be JSON" in r.json()["error"]
    r = await client.get(url, params={"color_by": "nope"})
    assert r.status_code == 400
    assert r.json()["code"] == "bad_color_by"


async def test_tile_colours_match_the_legend(client: Client, episode_file: Path) -> None:
    ds = add(client, episode_file)
    only_place = {"filter": q([{"field": "task", "op": "in", "value": ["place"]}]),
                  "color_by": "task"}  # fmt: skip
    legend = (await client.get(f"/api/datasets/{ds}/legend", params=only_place)).json()
    entries = {e["value"]: e for e in legend["entries"]}
    n_place = int((load_dataset(episode_file).fields["task"].values == 1).sum())
    assert legend["kind"] == "category"
    assert entries["place"]["count"] == n_place
    assert entries["pick"]["count"] == entries["stack"]["count"] == 0
    px = rgba((await client.get(f"/api/datasets/{ds}/tiles/0/0/0.png", params=only_place)).content)
    colours = {tuple(c) for c in px[px[..., 3] > 0][:, :3]}
    hex_place = entries["place"]["color"]
    assert colours == {tuple(int(hex_place[i : i + 2], 16) for i in (1, 3, 5))}


async def test_map_routes_before_the_projection_and_without_embeddings(
    client: Client, episode_file: Path, metadata_only_file: Path
) -> None:
    waiting = add(client, episode_file, projected=False)
    r = await client.get(f"/api/datasets/{waiting}/tiles/0/0/0.png")
    assert r.status_code == 503
    assert r.json()["code"] == "projection_not_ready"
    meta = add(client, metadata_only_file)
    r = await client.get(f"/api/datasets/{meta}/points/nearest", params={"x": 0, "y": 0})
    assert r.status_code == 409
    assert r.json()["code"] == "metadata_only"


# ---- nearest and points ------------------------------------------------------------------------


async def test_nearest_episode(client: Client, episode_file: Path) -> None:
    ds = add(client, episode_file)
    coords = coords_of(episode_file)
    x, y = float(coords[7, 0]) + 1e-3, float(coords[7, 1])
    r = await client.get(f"/api/datasets/{ds}/points/nearest", params={"x": x, "y": y})
    body = r.json()
    expected = int(np.argmin(np.hypot(coords[:, 0] - x, coords[:, 1] - y)))
    assert r.status_code == 200
    assert body["index"] == expected
    assert body["episode_id"] == f"ep_{expected:05d}"
    assert body["thumbnail_url"] == f"/api/datasets/{ds}/episodes/{expected}/thumbnail"
    assert body["gif_url"] == f"/api/datasets/{ds}/episodes/{expected}/gif"
    # the similarity job may have added its fields by now (it runs beside the request)
    assert set(body["metadata"]) - set(DERIVED) == {
        "success",
        "episode_length",
        "task",
        "dataset",
        "gripper_force",
    }


async def test_nearest_respects_radius_and_filter(client: Client, episode_file: Path) -> None:
    ds = add(client, episode_file)
    url = f"/api/datasets/{ds}/points/nearest"
    r = await client.get(url, params={"x": 1e6, "y": 1e6, "radius": 1.0})
    assert r.status_code == 404
    assert r.json()["code"] == "no_episode_near"
    failures = q([{"field": "success", "op": "eq", "value": False}])
    for i in range(0, 60, 7):
        r = await client.get(url, params={"x": 0.1 * i, "y": -0.1 * i, "filter": failures})
        assert r.json()["metadata"]["success"] is False


async def test_points_of_a_sample_and_of_a_filter(client: Client, episode_file: Path) -> None:
    ds = add(client, episode_file)
    sample = (await client.post(f"/api/datasets/{ds}/samples",
                                json={"method": "random", "n": 12, "seed": 3})).json()  # fmt: skip
    sid = sample.get("sample_id") or sample["id"]
    r = await client.get(f"/api/datasets/{ds}/points", params={"sample_id": sid, "fields": "task"})
    body = r.json()
    assert r.status_code == 200
    assert sorted(body["episode_id"]) == sorted(sample["episode_ids"])
    assert body["count"] == 12
    assert not body["truncated"]
    assert len(body["fields"]["task"]) == 12
    coords = coords_of(episode_file)
    assert body["x"][0] == pytest.approx(float(coords[body["index"][0], 0]))
    r = await client.get(f"/api/datasets/{ds}/points", params={"limit": 50})
    assert r.json()["count"] == 300
    assert r.json()["returned"] == 50
    assert r.json()["truncated"]
    picks = json.dumps([{"field": "task", "op": "eq", "value": "pick"}])
    r = await client.get(f"/api/datasets/{ds}/points", params={"sample_id": sid, "filter": picks})
    tasks = dict(zip(body["episode_id"], body["fields"]["task"], strict=True))
    assert sorted(r.json()["episode_id"]) == sorted(e for e, t in tasks.items() if t == "pick")
    assert 0 < r.json()["count"] < 12  # the sample's episodes the filter matches (page markers)
    r = await client.get(f"/api/datasets/{ds}/points", params={"limit": 20_001})
    assert r.status_code == 400


# ---- previews ----------------------------------------------------------------------------------


async def test_previews_are_served_as_what_their_bytes_are(
    client: Client, episode_file: Path
) -> None:
    ds = add(client, episode_file, projected=False)
    r = await client.get(f"/api/datasets/{ds}/episodes/3/thumbnail")
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/jpeg"
    assert r.content[:3] == b"\xff\xd8\xff"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-security-policy"] == "default-src 'none'; sandbox"
    assert "immutable" in r.headers["cache-control"]
    g = await client.get(f"/api/datasets/{ds}/episodes/3/gif")
    assert g.status_code == 200
    assert g.headers["content-type"] == "image/gif"
    again = await client.get(f"/api/datasets/{ds}/episodes/3/gif",
                             headers={"If-None-Match": g.headers["etag"]})  # fmt: skip
    assert again.status_code == 304


async def test_html_posing_as_a_thumbnail_is_415(client: Client, html_file: Path) -> None:
    ds = add(client, html_file, projected=False)
    r = await client.get(f"/api/datasets/{ds}/episodes/0/thumbnail")
    assert r.status_code == 415
    assert r.headers["content-type"] == "application/json"
    assert r.json()["code"] == "unsupported_media_type"
    assert b"<script" not in r.content


async def test_missing_previews_are_404(client: Client, metadata_only_file: Path) -> None:
    ds = add(client, metadata_only_file)
    r = await client.get(f"/api/datasets/{ds}/episodes/0/gif")
    assert r.status_code == 404
    assert r.json()["code"] == "preview_not_found"
    r = await client.get(f"/api/datasets/{ds}/episodes/100000/thumbnail")
    assert r.status_code == 404
    assert r.json()["code"] == "episode_not_found"


# ---- the page ----------------------------------------------------------------------------------


async def test_page_and_assets_are_local(client: Client, episode_file: Path) -> None:
    ds = add(client, episode_file)
    for path in ("/", f"/datasets/{ds}"):
        r = await client.get(path)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/html")
        assert "http://" not in r.text
        assert "https://" not in r.text
    for asset in ("/static/bokeh/js/bokeh.min.js", "/static/app/app.js", "/static/app/page.css"):
        r = await client.get(asset)
        assert r.status_code == 200, asset


async def test_map_document_matches_the_tile_pyramid(client: Client, episode_file: Path) -> None:
    ds = add(client, episode_file)
    body = (await client.get(f"/api/datasets/{ds}/map", params={"color_by": "task"})).json()
    pyramid = body["pyramid"]
    coords = coords_of(episode_file)
    assert pyramid["x0"] < coords[:, 0].min()
    assert pyramid["x0"] + pyramid["size"] > coords[:, 0].max()
    doc = json.dumps(body["doc"])
    assert f"/api/datasets/{ds}/tiles/{{Z}}/{{X}}/{{Y}}.png?color_by=task" in doc
    assert str(pyramid["initial_resolution"])[:10] in doc
