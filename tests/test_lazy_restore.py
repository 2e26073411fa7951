"""A restart with a warm cache reads no embeddings until something needs them: the catalog's
files, unchanged since their embeddings were read (path, size and mtime), come back with their
embeddings left on disk (:class:`~tessera_gpu.io.dataset.DeferredEmbeddings`), their maps and
similarity graphs from the cache; the first K-means sample reads them, once."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest
from litestar.testing import AsyncTestClient
from tessera_app.main import create_app

from tessera_gpu.core import Tessera
from tessera_gpu.core.graphs import SIMILARITY
from tessera_gpu.core.registry import Live
from tessera_gpu.errors import InvalidDataset
from tessera_gpu.io import dataset as dataset_module
from tessera_gpu.io.dataset import DeferredEmbeddings, load_dataset
from tessera_gpu.sampling import SampleRequest
from tessera_gpu.settings import Settings

from .api_calls import TEST_HOSTS, error
from .conftest import write_episode_file

pytest_plugins = ("tests.api_fixtures",)  # anyio_backend

KMEANS = SampleRequest(method="kmeans", n=12, seed=3)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many rows of embeddings were read from files since the fixture started."""
    counted: list[int] = []
    copy = dataset_module._copy_rows

    def counting(dset: h5py.Dataset, out: np.ndarray, start: int, hasher: object) -> None:
        counted.append(len(out))
        copy(dset, out, start, hasher)

    monkeypatch.setattr(dataset_module, "_copy_rows", counting)
    return counted


def spread(f: h5py.File) -> None:
    f["embeddings"][...] = np.random.default_rng(1).normal(size=f["embeddings"].shape)


def wait_until_ready(core: Tessera, dataset_id: str) -> None:
    """The map and the similarity graph (with its derived fields) finished."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        projection = core.jobs.status(dataset_id).status
        graph = core.tasks.status(dataset_id, SIMILARITY).status
        if projection == graph == "done":
            return
        assert "failed" not in (projection, graph), core.jobs.status(dataset_id)
        time.sleep(0.05)
    raise AssertionError(f"not ready: {core.jobs.status(dataset_id)}")


def opened(data_dir: Path, files: tuple[Path, ...] = ()) -> Tessera:
    core = Tessera(Settings(device="cpu", data_dir=data_dir), isolate=False)
    core.open(files)
    return core


@contextmanager
def restarted(data_dir: Path, dataset_id: str) -> Iterator[tuple[Tessera, Live]]:
    """The data directory opened again, as by a restart, once the dataset's map and graph
    are back; closed after."""
    core = opened(data_dir)
    try:
        wait_until_ready(core, dataset_id)
        yield core, core.registry.get(dataset_id)
    finally:
        core.close()


@pytest.fixture
def served(tmp_path: Path) -> tuple[Path, Path, str, list[str]]:
    """A file registered and served once (map and graph cached), then the server closed: the
    data directory, the file, its dataset id and the ids the first K-means sample drew. Its
    embeddings have no near-duplicates (whose keepers the graph's fields would read)."""
    path = write_episode_file(tmp_path / "lazy.h5", n=300, dim=16, previews=False, edit=spread)
    data_dir = tmp_path / "data"
    core = opened(data_dir, (path,))
    try:
        (live,) = core.registry.all()
        wait_until_ready(core, live.id)
        drawn = core.samples.draw(live, KMEANS, keep=False).episode_ids
    finally:
        core.close()
    return data_dir, path, live.id, list(drawn)


def test_a_restart_reads_no_embeddings_until_a_sample_needs_them(
    served: tuple[Path, Path, str, list[str]], reads: list[int]
) -> None:
    data_dir, _, dataset_id, drawn = served
    with restarted(data_dir, dataset_id) as (core, live):
        assert core.jobs.info(dataset_id)["cache"] == "hit"
        assert "uniqueness" in live.dataset.fields  # the graph's fields, from the cached graph
        assert reads == []
        assert not live.dataset.embeddings_loaded
        assert core.jobs.device_embeddings(dataset_id) is None  # no device memory held yet
        random = core.samples.draw(live, SampleRequest(method="random", n=5), keep=False)
        assert len(random.episode_ids) == 5
        assert reads == []  # a random sample needs no embeddings
        again = core.samples.draw(live, KMEANS, keep=False)
        assert list(again.episode_ids) == drawn  # the same sample as before the restart
        assert sum(reads) == 300  # every row read once
        assert live.dataset.embeddings_loaded
        assert core.jobs.device_embeddings(dataset_id) is not None  # moved once, kept
        core.samples.draw(live, KMEANS, keep=False)
        assert sum(reads) == 300  # not read again
        core.delete(dataset_id)
        assert not core.holds(dataset_id)


def test_a_file_changed_after_the_restart_is_refused_at_first_use(
    served: tuple[Path, Path, str, list[str]],
) -> None:
    data_dir, path, dataset_id, _ = served
    with restarted(data_dir, dataset_id) as (core, live):
        write_episode_file(path, n=300, dim=16, seed=9, previews=False)  # same shape, new values
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        with pytest.raises(InvalidDataset) as caught:
            core.samples.draw(live, KMEANS, keep=False)
        assert caught.value.code == "file_changed"
        assert caught.value.message == (
            "lazy.h5 changed since it was registered (its size or modification time differs); "
            "register it again"
        )
        path.unlink()
        with pytest.raises(InvalidDataset, match=r"lazy.h5 changed since it was registered "
                           r"\(it no longer exists\); register it again"):  # fmt: skip
            core.samples.draw(live, KMEANS, keep=False)
        assert not live.dataset.embeddings_loaded


@pytest.mark.anyio
async def test_over_http_a_file_changed_after_the_restart_is_a_422(
    served: tuple[Path, Path, str, list[str]],
) -> None:
    data_dir, path, dataset_id, _ = served
    settings = Settings(device="cpu", data_dir=data_dir, allowed_host=TEST_HOSTS)
    async with AsyncTestClient(create_app(settings)) as client:
        listed = (await client.get("/api/datasets")).json()
        assert [d["id"] for d in listed] == [dataset_id]
        path.unlink()
        r = await client.post(f"/api/datasets/{dataset_id}/samples",
                              json={"method": "kmeans", "n": 5})  # fmt: skip
        message = "lazy.h5 changed since it was registered (it no longer exists); register it again"
        assert r.json() == error(message, "file_changed", 422)
        r = await client.post(f"/api/datasets/{dataset_id}/samples",
                              json={"method": "random", "n": 5})  # fmt: skip
        assert r.status_code == 201  # what needs no embeddings still works


def test_a_changed_file_with_the_same_size_and_mtime_is_caught_by_its_digest(
    tmp_path: Path,
) -> None:
    path = write_episode_file(tmp_path / "same.h5", n=50, dim=8, previews=False)
    digest = load_dataset(path).embeddings_hash
    assert digest is not None
    wrong = "0" * len(digest)
    with pytest.raises(InvalidDataset, match=r"same.h5 changed since it was registered "
                       r"\(its embeddings differ\); register it again"):  # fmt: skip
        DeferredEmbeddings(path, (50, 8), wrong).get()
    right = DeferredEmbeddings(path, (50, 8), digest)
    np.testing.assert_array_equal(right.get(), load_dataset(path).embeddings)


def test_concurrent_first_uses_read_once(
    served: tuple[Path, Path, str, list[str]], reads: list[int]
) -> None:
    data_dir, _, dataset_id, _ = served
    with restarted(data_dir, dataset_id) as (_, live):
        assert reads == []
        start = threading.Barrier(8)
        got: list[object] = []

        def use() -> None:
            start.wait()
            got.append(live.dataset.embeddings)

        threads = [threading.Thread(target=use) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(reads) == 300
        assert len(got) == 8
        assert all(x is got[0] for x in got)
        assert live.dataset.deferred is not None
        assert len(reads) == 1  # one read of the file's embeddings


def test_a_changed_file_is_read_again_at_restart(
    served: tuple[Path, Path, str, list[str]], reads: list[int]
) -> None:
    data_dir, path, _, _ = served
    write_episode_file(path, n=300, dim=16, seed=9, previews=False)
    core = opened(data_dir)
    try:
        (live,) = core.registry.all()
        assert live.dataset.embeddings_loaded  # rehashed and read whole, as before
        assert sum(reads) == 300
    finally:
        core.close()


def test_a_few_rows_are_read_from_their_blocks_only(tmp_path: Path, reads: list[int]) -> None:
    """The graph's fields choose near-duplicate keepers by their vectors: a few rows, read
    without reading (or keeping) the rest."""
    n = 4 * dataset_module.BLOCK_ROWS
    x = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)
    path = tmp_path / "blocks.h5"
    with h5py.File(path, "w") as f:
        f["embeddings"] = x
        f["episode_ids"] = [f"e{i}" for i in range(n)]
    deferred = load_dataset(path, known_digest=load_dataset(path).embeddings_hash).deferred
    assert deferred is not None
    reads.clear()
    rows = np.array([n - 1, 5, 7], dtype=np.int64)  # the first and the last block
    np.testing.assert_array_equal(deferred.rows(rows), x[rows])
    assert sum(reads) == 2 * dataset_module.BLOCK_ROWS
    assert not deferred.loaded
    np.testing.assert_array_equal(deferred.rows(np.arange(0, n, 1000)), x[::1000])
    assert deferred.loaded  # most blocks wanted: read whole, once, and kept
