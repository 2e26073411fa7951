"""One map across files, over HTTP and the CLI: ``{"paths": [...]}`` and globs under
``--allow-path``, ``source`` to colour by, the 422/404/403/507 answers, a joined dataset kept
across restarts; and a server with ``--dask`` on a LocalCluster of 2 workers that projects,
samples, finds similar episodes and near-duplicates, and clusters a sharded dataset, the work
showing up as tasks on the scheduler."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from click.testing import CliRunner
from litestar.testing import AsyncTestClient
from tessera_app.main import create_app

from benchmarks.data import clustered_embeddings
from tessera_gpu.cli.main import cli
from tessera_gpu.io.writer import write_dataset
from tessera_gpu.settings import Settings

from .api_calls import TEST_HOSTS, Client, wait_for_projection
from .conftest import local_dask_client

pytest_plugins = ("tests.api_fixtures",)
pytestmark = pytest.mark.anyio


def write(path: Path, emb: np.ndarray | None, ids: list[str], **metadata: Any) -> Path:
    write_dataset(path, embeddings=emb, episode_ids=ids, metadata=metadata or None)
    return path


@pytest.fixture
def pair(allowed: Path) -> tuple[Path, Path]:
    """sim.h5 (150 episodes, success) and real.h5 (90, success and a ``robot`` field), 16-d."""
    x = clustered_embeddings(240, 16, seed=3)
    rng = np.random.default_rng(0)
    sim = write(allowed / "sim.h5", x[:150], [f"sim-{i}" for i in range(150)],
                success=rng.random(150) < 0.5)  # fmt: skip
    real = write(allowed / "real.h5", x[150:], [f"real-{i}" for i in range(90)],
                 success=rng.random(90) < 0.5, robot=["franka"] * 90)  # fmt: skip
    return sim, real


def joined_id(*files: Path) -> str:
    hashes = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    return hashlib.sha256(("tessera-shards-1\n" + "\n".join(hashes)).encode()).hexdigest()[:16]


async def register(client: Client, body: dict[str, Any]) -> Any:
    return await client.post("/api/datasets", json=body)


# ---- one map across files ---------------------------------------------------------------------


async def test_two_files_join_into_one_map_coloured_by_source(
    client: Client, pair: tuple[Path, Path]
) -> None:
    sim, real = pair
    r = await register(client, {"paths": [str(sim), str(real)], "name": "sim + real"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["id"], body["name"], body["n_episodes"]) == (joined_id(sim, real), "sim + real",
                                                              240)  # fmt: skip
    fields = {f["name"]: f for f in body["fields"]}
    assert fields["source"]["values"] == {"sim.h5": 150, "real.h5": 90}
    assert (await wait_for_projection(client, body["id"])).json()["status"] == "done"

    r = await client.get(f"/api/datasets/{body['id']}/legend", params={"color_by": "source"})
    entries = {e["value"]: e["count"] for e in r.json()["entries"]}
    assert entries == {"sim.h5": 150, "real.h5": 90}
    r = await client.get(f"/api/datasets/{body['id']}/tiles/0/0/0.png",
                         params={"color_by": "source"})  # fmt: skip
    assert (r.status_code, r.content[:4]) == (200, b"\x89PNG")

    # a field only real.h5 has: sim.h5's rows are missing, and no condition matches them
    count = await client.post(f"/api/datasets/{body['id']}/count",
                              json={"filter": [{"field": "robot", "op": "ne", "value": "x"}]})  # fmt: skip
    assert count.json()["count"] == 90
    r = await client.get(f"/api/datasets/{body['id']}/episodes/150")
    assert (r.json()["episode_id"], r.json()["metadata"]["source"]) == ("real-0", "real.h5")


async def test_a_glob_joins_its_matches_in_sorted_order(
    client: Client, pair: tuple[Path, Path], allowed: Path
) -> None:
    sim, real = pair
    r = await register(client, {"path": str(allowed / "*.h5")})
    assert r.status_code == 201, r.text
    assert r.json()["id"] == joined_id(real, sim)  # real.h5 < sim.h5
    assert r.json()["name"] == "real +1"
    again = await register(client, {"paths": [str(allowed / "real.h5"), str(allowed / "s*.h5")]})
    assert again.json()["id"] == r.json()["id"]
    assert len((await client.get("/api/datasets")).json()) == 1


async def test_files_that_do_not_join_are_422s_that_name_them(
    client: Client, allowed: Path
) -> None:
    x = np.random.default_rng(1).normal(size=(10, 8)).astype(np.float32)
    a = write(allowed / "a.h5", x, [f"a{i}" for i in range(10)])
    wide = write(allowed / "wide.h5", np.zeros((4, 16), np.float32) + 1, ["w0", "w1", "w2", "w3"])
    bare = write(allowed / "bare.h5", None, ["n0", "n1"])
    clash = write(allowed / "clash.h5", x[:3], ["c0", "a7", "c2"])
    cases = [
        ([a, wide], "dimension"),
        ([a, bare], "bare.h5"),
        ([a, clash], "a7"),
    ]
    for files, word in cases:
        r = await register(client, {"paths": [str(f) for f in files]})
        assert r.status_code == 422, (files, r.text)
        message = r.json()["error"]
        assert word in message
        assert all(f.name in message for f in files), message
    assert (await client.get("/api/datasets")).json() == []


async def test_globs_are_confined_to_the_allowed_directories(
    client: Client, pair: tuple[Path, Path], allowed: Path, tmp_path: Path
) -> None:
    r = await register(client, {"path": str(allowed / "nothing-*.h5")})
    assert (r.status_code, r.json()["code"]) == (404, "no_match")
    r = await register(client, {"path": str(tmp_path / "*" / "*.h5")})
    assert (r.status_code, r.json()["code"]) == (403, "forbidden")
    r = await register(client, {"path": str(allowed / ".." / "*" / "*.h5")})
    assert (r.status_code, r.json()["code"]) == (403, "forbidden")
    outside = write(tmp_path / "outside.h5", None, ["o1"])
    (allowed / "link.h5").symlink_to(outside)
    r = await register(client, {"path": str(allowed / "*.h5")})
    assert (r.status_code, r.json()["code"]) == (403, "forbidden")
    assert "link.h5" in r.json()["error"]
    for bad in ({"paths": []}, {"paths": ["a"], "path": "b"}, {"paths": [""]},
                {"paths": ["a"], "name": "\n"}):  # fmt: skip
        r = await register(client, bad)
        assert (r.status_code, r.json()["code"]) == (400, "invalid_request"), bad


async def test_dataset_names_follow_the_selection_name_rule(
    client: Client, pair: tuple[Path, Path]
) -> None:
    paths = [str(p) for p in pair]
    for name in ("\u202eevil\u0000x", "a\r\nb", "tab\there", "zero\u200bwidth", " ", "x" * 201):
        r = await register(client, {"paths": paths, "name": name})
        assert (r.status_code, r.json()["code"]) == (400, "invalid_request"), name
        assert "dataset" in r.json()["error"], r.json()
    assert (
        "holds U+202E (RIGHT-TO-LEFT OVERRIDE)"
        in (await register(client, {"paths": paths, "name": "\u202eevil"})).json()["error"]
    )
    assert (await client.get("/api/datasets")).json() == []
    r = await register(client, {"paths": paths, "name": "  sim · réel 2  "})
    assert (r.status_code, r.json()["name"]) == (201, "sim · réel 2")


async def test_the_same_files_under_another_name_are_a_409_naming_the_dataset(
    client: Client, pair: tuple[Path, Path]
) -> None:
    paths = [str(p) for p in pair]
    first = await register(client, {"paths": paths, "name": "sim + real"})
    assert first.status_code == 201
    again = await register(client, {"paths": paths, "name": "sim + real"})
    assert (again.status_code, again.json()["id"]) == (201, first.json()["id"])
    unnamed = await register(client, {"paths": paths})
    assert (unnamed.status_code, unnamed.json()["name"]) == (201, "sim + real")
    other = await register(client, {"paths": paths, "name": "fleet"})
    assert (other.status_code, other.json()["code"]) == (409, "dataset_exists")
    assert other.json()["error"] == (
        f"These files are already registered as dataset 'sim + real' (id {first.json()['id']}): "
        "use it, or delete it first to register them as 'fleet'"
    )
    listed = (await client.get("/api/datasets")).json()
    assert [d["name"] for d in listed] == ["sim + real"]


async def test_embeddings_too_large_for_memory_are_a_507_naming_dask(
    client: Client, pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import tessera_gpu.io.shards as shards

    monkeypatch.setattr(shards, "free_host_memory", lambda: 4_000)
    for body in ({"path": str(pair[0])}, {"paths": [str(p) for p in pair]}):
        r = await register(client, body)
        assert (r.status_code, r.json()["code"]) == (507, "insufficient_memory"), r.text
        assert "--dask" in r.json()["error"]
    assert (await client.get("/api/datasets")).json() == []


async def test_a_joined_dataset_is_kept_across_restarts(
    settings: Settings, pair: tuple[Path, Path]
) -> None:
    sim, real = pair
    async with AsyncTestClient(create_app(settings)) as client:
        r = await register(client, {"paths": [str(sim), str(real)], "name": "both"})
        dataset_id = r.json()["id"]
        sample = await client.post(f"/api/datasets/{dataset_id}/samples",
                                   json={"method": "random", "n": 5})  # fmt: skip
        assert sample.status_code == 201
    async with AsyncTestClient(create_app(settings)) as client:
        r = await client.get(f"/api/datasets/{dataset_id}")
        assert (r.json()["name"], r.json()["n_episodes"]) == ("both", 240)
        assert len((await client.get(f"/api/datasets/{dataset_id}/samples")).json()) == 1
        assert (await wait_for_projection(client, dataset_id)).json()["status"] == "done"


def test_serve_and_project_join_files(
    pair: tuple[Path, Path], allowed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tessera_gpu.core import Tessera

    monkeypatch.setenv("TESSERA_DATA_DIR", str(tmp_path / "cli-data"))
    out = tmp_path / "both.npy"
    result = CliRunner().invoke(cli, ["project", str(allowed / "*.h5"), "-o", str(out),
                                      "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert np.load(out).shape == (240, 2)

    settings = Settings(device="cpu", data_dir=tmp_path / "serve-data")
    with Tessera(settings) as core:
        core.open([pair[0], pair[1]], join="both")
        (live,) = core.registry.all()
        assert (live.id, live.dataset.name) == (joined_id(*pair), "both")

    result = CliRunner().invoke(cli, ["serve", "--join", "x"])
    assert result.exit_code != 0
    assert "--join NAME needs the FILES" in result.output


# ---- on a Dask cluster ------------------------------------------------------------------------

N_SHARD, D, SHARDS, PLANTED = 700, 32, 3, 6


@pytest.fixture(scope="module")
def cluster_client() -> Iterator[Any]:
    with local_dask_client() as c:
        yield c


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """3 shards of 700 rows; the last ``PLANTED`` rows of shard 2 copy rows of shard 0."""
    folder = tmp_path_factory.mktemp("cluster-allowed")
    x = clustered_embeddings(N_SHARD * SHARDS, D, seed=11)
    rng = np.random.default_rng(2)
    copies = np.arange(PLANTED) * 7
    x[-PLANTED:] = x[copies] + rng.normal(scale=1e-4, size=(PLANTED, D)).astype(np.float32)
    tasks = np.array(["pick", "place", "push"])[rng.integers(0, 3, size=len(x))]
    for i in range(SHARDS):
        rows = slice(i * N_SHARD, (i + 1) * N_SHARD)
        write(folder / f"shard-{i}.h5", x[rows], [f"s{i}-{j}" for j in range(N_SHARD)],
              task=list(tasks[rows]))  # fmt: skip
    return folder, x


@pytest.fixture
async def dask_client(
    cluster_client: Any, sharded: tuple[Path, np.ndarray], tmp_path: Path
) -> AsyncIterator[Client]:
    from tessera_gpu.distributed import DaskEngine

    settings = Settings(device="cpu", data_dir=tmp_path / "data", allow_path=(sharded[0],),
                        allowed_host=TEST_HOSTS, dask_landmarks=600)  # fmt: skip
    engine = DaskEngine(cluster_client, partition_bytes=40_000)  # 3 partitions a shard
    async with AsyncTestClient(create_app(settings, engine=engine)) as c:
        yield c


async def wait_for(client: Client, url: str, timeout: float = 240) -> Any:
    with anyio.fail_after(timeout):
        while True:
            r = await client.get(url)
            if r.json()["status"] in ("done", "failed"):
                assert r.json()["status"] == "done", r.text
                return r
            await anyio.sleep(0.1)


def exact_cosine_neighbours(x: np.ndarray, row: int, k: int) -> np.ndarray:
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = 1 - unit @ unit[row]
    d[row] = np.inf
    return np.argsort(d, kind="stable")[:k]


async def test_a_dask_server_maps_samples_and_dedups_a_sharded_dataset(
    dask_client: Client, cluster_client: Any, sharded: tuple[Path, np.ndarray]
) -> None:
    folder, x = sharded
    client = dask_client
    health = (await client.get("/api/health")).json()
    assert (health["status"], health["dask"]["workers"]) == ("ok", 2)

    r = await register(client, {"path": str(folder / "shard-*.h5"), "name": "fleet"})
    assert r.status_code == 201, r.text
    body = r.json()
    dataset_id = body["id"]
    assert (body["n_episodes"], body["mode"], body["dim"]) == (N_SHARD * SHARDS, "full", D)

    projection = (await wait_for_projection(client, dataset_id, timeout=240)).json()
    assert projection["status"] == "done", projection
    r = await client.get(f"/api/datasets/{dataset_id}/points/nearest",
                         params={"x": projection["bounds"][0], "y": projection["bounds"][1]})  # fmt: skip
    assert r.status_code == 200

    r = await client.post(f"/api/datasets/{dataset_id}/samples",
                          json={"method": "kmeans", "n": 12, "stratify_by": "task"})  # fmt: skip
    assert r.status_code == 201, r.text
    manifest = r.json()
    assert len(set(manifest["episode_ids"])) == 12
    assert sum(manifest["stats"]["per_stratum"].values()) == 12

    await wait_for(client, f"/api/datasets/{dataset_id}/similarity")
    r = await client.post(f"/api/datasets/{dataset_id}/duplicates", json={"threshold": 0.001})
    groups = [sorted(g) for g in r.json()["groups"]]
    planted = [sorted([int(c), N_SHARD * SHARDS - PLANTED + i])
               for i, c in enumerate(np.arange(PLANTED) * 7)]  # fmt: skip
    assert sorted(groups) == sorted(planted)
    count = await client.post(f"/api/datasets/{dataset_id}/count",
                              json={"filter": [], "dedup_threshold": 0.001})  # fmt: skip
    assert count.json()["removed"] == PLANTED

    for k in (5, 60):  # from the graph, then an exact scan on the workers
        r = await client.get(f"/api/datasets/{dataset_id}/episodes/100/similar", params={"k": k})
        found = [n["index"] for n in r.json()["neighbors"]]
        truth = exact_cosine_neighbours(x, 100, k).tolist()
        assert len(set(found) & set(truth)) >= 0.9 * k, (k, found, truth)
        if k == 60:
            assert found == truth

    r = await client.post(f"/api/datasets/{dataset_id}/clusters", json={"k": 5})
    assert r.status_code in (200, 202), r.text
    await wait_for(client, f"/api/datasets/{dataset_id}/clusters")
    fields = {f["name"] for f in (await client.get(f"/api/datasets/{dataset_id}")).json()["fields"]}
    assert {"source", "task", "cluster", "uniqueness", "duplicate_group"} <= fields

    def prefixes(dask_scheduler: Any) -> list[str]:
        return sorted(dask_scheduler.task_prefixes)

    seen = set(cluster_client.run_on_scheduler(prefixes))
    wanted = {"tessera-hash", "tessera-check", "tessera-project-fit", "tessera-sample-near",
              "tessera-similar", "tessera-take"}  # fmt: skip
    assert wanted <= seen, sorted(seen)
    assert any(p.startswith("tessera-knn") or p.startswith("tessera-search") for p in seen), seen


def test_project_on_a_dask_cluster_from_the_cli(
    cluster_client: Any, sharded: tuple[Path, np.ndarray], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    folder, x = sharded
    monkeypatch.setenv("TESSERA_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TESSERA_DASK_LANDMARKS", "500")
    out = tmp_path / "fleet.npy"
    address = cluster_client.scheduler.address
    result = CliRunner().invoke(cli, ["project", str(folder / "shard-*.h5"), "--dask", address,
                                      "-o", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"projected {len(x):,} episodes on Dask at {address} (umap+landmarks" in result.output
    coords = np.load(out)
    assert coords.shape == (len(x), 2)
    assert np.isfinite(coords).all()

    result = CliRunner().invoke(cli, ["project", str(folder / "shard-0.h5"), "--dask",
                                      "tcp://127.0.0.1:9"])  # fmt: skip
    assert result.exit_code == 1
    assert result.output.startswith("error: ")
    assert result.output.count("\n") == 1


def test_a_map_on_its_way_on_the_cluster_is_not_ready_rather_than_metadata_only(
    pair: tuple[Path, Path],
) -> None:
    """Embeddings left on disk for Dask workers are still embeddings: while their projection
    runs, a tile is 503 ``projection_not_ready``, not 409 ``metadata_only``."""
    from tessera_gpu.errors import Unavailable
    from tessera_gpu.io.dataset import load_dataset
    from tessera_gpu.render.mapcache import MapCache

    on_disk = load_dataset(pair[0], read_embeddings=False)
    assert (on_disk.embeddings, on_disk.mode) == (None, "full")
    with pytest.raises(Unavailable) as info:
        MapCache().get("d", on_disk, None)
    assert info.value.code == "projection_not_ready"
