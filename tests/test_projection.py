"""Projection quality, determinism, progress and the disk cache."""

from __future__ import annotations

import time
from pathlib import Path

import numba
import numpy as np
import pytest
from sklearn.manifold import trustworthiness

from tessera_gpu.backends import Backend, get_backend
from tessera_gpu.errors import InvalidRequest
from tessera_gpu.projection.cache import (
    ALGORITHM_VERSION,
    ProjectionCache,
    backend_tag,
    project_cached,
)
from tessera_gpu.projection.graph import ab_params, fuzzy_graph
from tessera_gpu.projection.layout import optimize_layout
from tessera_gpu.projection.params import Projection, ProjectionParams
from tessera_gpu.projection.project import project

from .backend_params import BACKEND_PARAMS, backend_for, clustered

FAST = ProjectionParams(n_epochs=60)


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request: pytest.FixtureRequest) -> Backend:
    return backend_for(request.param)


@pytest.fixture(scope="module")
def blobs() -> np.ndarray:
    return clustered(1500, 64, centres=6, seed=11, latent=6)[0]


@pytest.fixture(scope="module")
def small() -> np.ndarray:
    return clustered(400, 16, centres=4, seed=14, latent=4)[0]


# ---- quality --------------------------------------------------------------------------------


def test_map_keeps_neighbourhoods(backend: Backend, blobs: np.ndarray) -> None:
    """umap-learn 0.5.12 (seeded) scores 0.976 on these blobs; allow 0.01 less."""
    result = project(backend.to_device(blobs), backend=backend)
    assert result.coords.shape == (1500, 2)
    assert result.coords.dtype == np.float32
    assert np.isfinite(result.coords).all()
    assert trustworthiness(blobs, result.coords, n_neighbors=15) >= 0.966
    assert result.info["backend"] == backend.name


def test_coarse_path_keeps_neighbourhoods() -> None:
    """Cell-probe kNN + coarse spectral init + cell-ordered layout, as used above 25k rows.

    umap-learn scores 0.980 here with its 500 epochs; 60 epochs keep 0.974.
    """
    b = get_backend("cpu")
    b.coarse_above = 1000  # type: ignore[attr-defined]
    x = clustered(3000, 160, centres=10, seed=12, latent=8)[0]
    result = project(b.to_device(x), backend=b, params=FAST)
    assert result.info["init"] == "coarse-spectral"
    assert result.info["knn"].startswith("pca64+cell-probe(")
    assert trustworthiness(x, result.coords, n_neighbors=15) >= 0.96


def test_info_reports_method_and_timings(blobs: np.ndarray) -> None:
    b = get_backend("cpu")
    info = project(b.to_device(blobs), backend=b, params=FAST).info
    assert info["knn"] == "exact"
    assert info["init"] == "spectral"
    assert info["n_epochs"] == 60
    assert set(info["timings"]) == {"knn", "graph", "init", "layout", "total"}
    assert info["params"]["seed"] == 0


# ---- determinism ----------------------------------------------------------------------------


def test_same_seed_same_map_on_cpu(blobs: np.ndarray) -> None:
    b = get_backend("cpu")
    x = b.to_device(blobs)
    first = project(x, backend=b, params=FAST).coords
    np.testing.assert_array_equal(project(x, backend=b, params=FAST).coords, first)
    other = project(x, backend=b, params=ProjectionParams(n_epochs=60, seed=1)).coords
    assert not np.array_equal(other, first)


def test_layout_does_not_depend_on_thread_count(blobs: np.ndarray) -> None:
    from tessera_gpu.backends.cpu_knn import exact_knn

    graph = fuzzy_graph(*exact_knn(blobs[:600], 10))
    init = np.random.default_rng(0).uniform(0, 10, (600, 2)).astype(np.float32)
    a, b = ab_params(1.0, 0.1)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = optimize_layout(init, graph, a=a, b=b, n_epochs=30, seed=3)
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_array_equal(optimize_layout(init, graph, a=a, b=b, n_epochs=30, seed=3), one)


# ---- progress, params and edge cases ----------------------------------------------------------


def test_progress_rises_to_one(small: np.ndarray) -> None:
    seen: list[tuple[str, float]] = []
    b = get_backend("cpu")
    project(b.to_device(small), backend=b, params=FAST, progress=lambda s, f: seen.append((s, f)))
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions)
    assert fractions[0] == 0.0
    assert seen[-1] == ("done", 1.0)
    assert {"knn", "graph", "init", "layout"} <= {s for s, _ in seen}


def test_progress_callback_can_cancel(small: np.ndarray) -> None:
    def cancel(stage: str, fraction: float) -> None:
        if stage == "layout":
            raise KeyboardInterrupt

    b = get_backend("cpu")
    with pytest.raises(KeyboardInterrupt):
        project(b.to_device(small), backend=b, params=FAST, progress=cancel)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_neighbors": 1}, "n_neighbors"),
        ({"min_dist": 2.0}, "min_dist"),
        ({"metric": "cosine"}, "unsupported metric"),
        ({"n_epochs": 0}, "n_epochs"),
        ({"negative_sample_rate": 0}, "negative_sample_rate"),
    ],
)
def test_bad_params_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        ProjectionParams(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 20])
def test_tiny_inputs_give_a_map(n: int) -> None:
    b = get_backend("cpu")
    x = np.random.default_rng(n).normal(size=(n, 5)).astype(np.float32)
    coords = project(b.to_device(x), backend=b, params=FAST).coords
    assert coords.shape == (n, 2)
    assert np.isfinite(coords).all()


def test_duplicate_points_give_a_finite_map() -> None:
    b = get_backend("cpu")
    x = np.repeat(np.eye(4, 6, dtype=np.float32), 50, axis=0)
    coords = project(b.to_device(x), backend=b, params=FAST).coords
    assert np.isfinite(coords).all()


# ---- cache ----------------------------------------------------------------------------------


def _cached(x: np.ndarray, cache: ProjectionCache, content: str = "abc123") -> Projection:
    b = get_backend("cpu")
    return project_cached(x, backend=b, params=FAST, cache=cache, content_hash=content)


def test_second_load_comes_from_the_cache(tmp_path: Path, small: np.ndarray) -> None:
    cache = ProjectionCache(tmp_path / "cache")
    first = _cached(small, cache)
    assert first.info["cache"] == "stored"
    start = time.perf_counter()
    second = _cached(small, cache)
    assert time.perf_counter() - start < 1.0
    assert second.info["cache"] == "hit"
    np.testing.assert_array_equal(second.coords, first.coords)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [
        f"{cache.key('abc123', FAST, backend='cpu')}.proj"
    ]


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_damaged_cache_file_is_recomputed(tmp_path: Path, small: np.ndarray, damage: str) -> None:
    cache = ProjectionCache(tmp_path)
    good = _cached(small, cache)
    path = cache.path(cache.key("abc123", FAST, backend="cpu"))
    raw = path.read_bytes()
    broken = {
        "truncate": raw[: len(raw) - 100],
        "flip": raw[:-5] + bytes([raw[-5] ^ 0xFF]) + raw[-4:],
        "garbage": b"not a projection at all" * 10,
        "empty": b"",
    }[damage]
    path.write_bytes(broken)
    assert cache.load(cache.key("abc123", FAST, backend="cpu")) is None
    again = _cached(small, cache)
    assert again.info["cache"] == "stored"
    np.testing.assert_array_equal(again.coords, good.coords)
    assert cache.load(cache.key("abc123", FAST, backend="cpu")) is not None


def test_cache_key_covers_content_params_backend_and_version() -> None:
    key = ProjectionCache.key("abc", FAST, backend="cpu")
    assert key != ProjectionCache.key("abd", FAST, backend="cpu")
    assert key != ProjectionCache.key("abc", ProjectionParams(n_epochs=60, seed=1), backend="cpu")
    keys = {ProjectionCache.key("abc", FAST, backend=b) for b in ("cpu", "cupy", "cuml")}
    assert len(keys) == 3
    assert key in keys
    assert len(key) == 65
    assert key[32] == "-"
    assert ALGORITHM_VERSION


def test_a_map_is_served_only_to_its_own_backend(tmp_path: Path, small: np.ndarray) -> None:
    """A cuML (or CuPy, or stand-in) map is never a CPU request's cache hit, nor the reverse."""
    from tessera_gpu.backends.cupy_backend import CupyBackend
    from tessera_gpu.backends.standin import NumpyDevice

    cache = ProjectionCache(tmp_path)
    cpu, standin = get_backend("cpu"), CupyBackend(NumpyDevice())
    assert backend_tag(cpu) == "cpu"
    assert backend_tag(standin) == "cupy+numpy-standin"
    for b in (cpu, standin):
        first = project_cached(small, backend=b, params=FAST, cache=cache, content_hash="abc")
        assert first.info["cache"] == "stored"
        assert first.info["backend"] == b.name
    again = project_cached(small, backend=cpu, params=FAST, cache=cache, content_hash="abc")
    assert again.info["cache"] == "hit"
    assert again.info["backend"] == "cpu"
    assert len(list(tmp_path.iterdir())) == 2
    assert cache.forget("abc") == 2


def test_forget_removes_every_map_of_one_content(tmp_path: Path) -> None:
    cache = ProjectionCache(tmp_path)
    coords = np.zeros((4, 2), dtype=np.float32)
    other = ProjectionParams(n_epochs=60, seed=1)
    for content, params in (("abc", FAST), ("abc", other), ("xyz", FAST)):
        assert cache.store(cache.key(content, params, backend="cpu"), Projection(coords, {"n": 4}))
    assert cache.forget("abc") == 2
    assert [p.name for p in tmp_path.iterdir()] == [f"{cache.key('xyz', FAST, backend='cpu')}.proj"]
    assert cache.forget("abc") == 0


def test_no_hash_means_no_cache(tmp_path: Path, small: np.ndarray) -> None:
    cache = ProjectionCache(tmp_path)
    b = get_backend("cpu")
    result = project_cached(small, backend=b, params=FAST, cache=cache, content_hash=None)
    assert result.info["cache"] == "off"
    assert list(tmp_path.iterdir()) == []


# ---- the command line -------------------------------------------------------------------------


def test_project_command_writes_the_map_and_uses_the_cache(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from tessera_gpu.cli.main import cli
    from tessera_gpu.io.writer import write_dataset

    x = clustered(300, 16, seed=13)[0]
    data = write_dataset(tmp_path / "d.h5", embeddings=x, episode_ids=[f"e{i}" for i in range(300)])
    args = ["project", str(data), "--device", "cpu", "--cache-dir", str(tmp_path / "c")]
    first = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "a.npy")])
    assert first.exit_code == 0, first.output
    assert "projected 300 episodes" in first.output
    assert "cache stored" in first.output
    second = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "b.npy"), "--seed", "0"])
    assert "cache hit" in second.output
    coords = np.load(tmp_path / "a.npy")
    assert coords.shape == (300, 2)
    assert coords.dtype == np.float32
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), coords)


def test_a_cached_project_reads_no_embeddings_of_an_unchanged_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second `tessera project` of an unchanged file finds its map by the file's path, size
    and mtime: it neither hashes nor loads the file (on main it did both, 10-21 s at 200k x
    2,048). A file that changed is read again."""
    import os

    from click.testing import CliRunner

    from tessera_gpu.cli.main import cli
    from tessera_gpu.core import registry
    from tessera_gpu.io.writer import write_dataset

    x = clustered(300, 16, seed=13)[0]
    data = write_dataset(tmp_path / "d.h5", embeddings=x, episode_ids=[f"e{i}" for i in range(300)])
    args = ["project", str(data), "--device", "cpu", "--cache-dir", str(tmp_path / "c")]
    first = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "a.npy")])
    assert "cache stored" in first.output

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("the file was read")

    with monkeypatch.context() as patch:
        patch.setattr(registry, "load_dataset", refuse)
        patch.setattr(registry, "file_sha256", refuse)
        second = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "b.npy")])
    assert second.exit_code == 0, second.output
    assert "projected 300 episodes" in second.output
    assert "cache hit" in second.output
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), np.load(tmp_path / "a.npy"))
    st = data.stat()
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: read it again
    with monkeypatch.context() as patch:
        patch.setattr(registry, "load_dataset", refuse)
        third = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "c.npy")])
    assert third.exit_code == 1
    assert "the file was read" in str(third.exception)


def test_project_command_refuses_metadata_only_files(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from tessera_gpu.cli.main import cli
    from tessera_gpu.io.writer import write_dataset

    data = write_dataset(tmp_path / "m.h5", episode_ids=["a", "b", "c"])
    result = CliRunner().invoke(cli, ["project", str(data), "--no-cache"])
    assert result.exit_code == 1
    assert "error: m.h5 has no embeddings (metadata-only): nothing to project" in result.output
