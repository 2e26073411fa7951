"""Backend choice, device arrays and kNN, on every backend present (GPU ones marked ``gpu``)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tessera_gpu.backends import Backend, get_backend, gpu_status, make_backend
from tessera_gpu.backends.cpu_knn import cell_probe_knn, exact_knn, reranked_search
from tessera_gpu.errors import InvalidRequest, Unavailable

from .backend_params import BACKEND_PARAMS, backend_for, brute_knn, clustered


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request: pytest.FixtureRequest) -> Backend:
    return backend_for(request.param)


no_gpu = pytest.mark.skipif(gpu_status()[0] is not None, reason="a GPU is present here")


# ---- choosing a backend ---------------------------------------------------------------


def test_cpu_backend_names_itself() -> None:
    b = get_backend("cpu")
    assert b.name == "cpu"
    assert b.device.startswith("CPU (")
    assert b.device.endswith("cores)")
    info = b.describe()
    assert info["name"] == "cpu"
    assert info["device"] == b.device


@pytest.mark.parametrize("mode", ["tpu", "", "GPUs"])
def test_unknown_mode_is_refused(mode: str) -> None:
    with pytest.raises(InvalidRequest, match="unknown device"):
        get_backend(mode)


def test_mode_is_case_and_space_insensitive() -> None:
    assert get_backend(" CPU ").name == "cpu"


def test_none_reads_tessera_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_DEVICE", "cpu")
    assert get_backend(None).name == "cpu"
    monkeypatch.setenv("TESSERA_DEVICE", "quantum")
    with pytest.raises(InvalidRequest, match="'quantum'"):
        get_backend(None)


@no_gpu
def test_gpu_without_gpu_is_unavailable() -> None:
    with pytest.raises(Unavailable, match="GPU asked for but not available") as err:
        get_backend("gpu")
    assert err.value.status == 503
    with pytest.raises(Unavailable):
        make_backend("cupy")


@no_gpu
def test_auto_without_gpu_is_cpu() -> None:
    assert get_backend("auto").name == "cpu"


@pytest.mark.gpu
def test_auto_and_gpu_pick_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU machine the GPU; elsewhere the stand-in, which both modes pick when asked."""
    if gpu_status()[0] is None:
        monkeypatch.setenv("TESSERA_GPU_STANDIN", "numpy")
    best, _ = gpu_status()
    assert best is not None
    assert get_backend("auto").name == best == get_backend("gpu").name
    info = get_backend("gpu").describe()
    if info.get("standin"):
        assert info["standin"] == "numpy"
        assert "stand-in" in info["device"]
    else:
        assert info["gpu_memory_total_gib"] > 0
        assert info["allocator"] in ("rmm", "cupy-pool")


def test_importing_tessera_never_imports_cupy() -> None:
    code = (
        "import sys, numpy as np\n"
        "import tessera_gpu, tessera_gpu.backends, tessera_gpu.projection.project\n"
        "import tessera_gpu.clustering, tessera_gpu.projection.cache\n"
        "from tessera_gpu.backends import get_backend\n"
        "b = get_backend('cpu'); x = b.to_device(np.ones((5, 3), np.float32))\n"
        "print(sorted(m for m in ('cupy', 'cuml') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- device arrays ----------------------------------------------------------------------


def test_cpu_to_device_does_not_copy_float32() -> None:
    b = get_backend("cpu")
    x = np.ones((10, 4), dtype=np.float32)
    assert b.to_device(x) is x
    wide = b.to_device(np.asfortranarray(np.ones((10, 4), dtype=np.float64)))
    assert wide.dtype == np.float32
    assert wide.flags.c_contiguous


def test_to_device_round_trips(backend: Backend) -> None:
    x, _ = clustered(300, 16)
    dev = backend.to_device(x)
    np.testing.assert_array_equal(backend.to_host(dev), x)
    np.testing.assert_array_equal(backend.to_host(backend.to_device(x.astype(np.float64))), x)
    rows = np.array([5, 0, 299, 5])
    np.testing.assert_array_equal(backend.to_host(backend.take(dev, rows)), x[rows])
    assert backend.n_rows(dev) == 300


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (None, "metadata-only"),
        (np.ones(5, np.float32), "non-empty"),
        (np.ones((0, 4), np.float32), "non-empty"),
        (np.ones((3, 4), np.int32), "floating point"),
    ],
)
def test_to_device_refuses(bad: object, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        get_backend("cpu").to_device(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("rows", "message"), [([0, 10], "out of range"), ([-1], "out of range"), ([0.5], "integers")]
)
def test_take_refuses_bad_rows(rows: list[float], message: str) -> None:
    b = get_backend("cpu")
    with pytest.raises(InvalidRequest, match=message):
        b.take(b.to_device(np.ones((10, 2), np.float32)), np.array(rows))


# ---- nearest neighbours -------------------------------------------------------------------


def test_knn_is_exact_on_small_data(backend: Backend) -> None:
    x, _ = clustered(400, 24, seed=1)
    idx, dist = backend.knn(backend.to_device(x), 10)
    ref_idx, ref_dist = brute_knn(x, x, 10)
    assert idx.shape == (400, 10)
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(idx[:, 0], np.arange(400))
    assert np.all(dist[:, 0] == 0)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-4, atol=1e-4)
    assert np.mean(idx == ref_idx) > 0.99  # float32 may swap exact near-ties


def test_knn_of_a_subset_returns_global_rows(backend: Backend) -> None:
    x, _ = clustered(300, 8, seed=2)
    rows = np.arange(1, 300, 3)
    idx, dist = backend.knn(backend.to_device(x), 5, rows=rows)
    ref_idx, ref_dist = brute_knn(x[rows], x[rows], 5)
    np.testing.assert_array_equal(idx, rows[ref_idx])
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-4, atol=1e-4)


def test_knn_refuses_k_below_one(backend: Backend) -> None:
    with pytest.raises(InvalidRequest, match="k must be at least 1"):
        backend.knn(backend.to_device(np.ones((4, 2), np.float32)), 0)


def test_cpu_neighbors_reduce_wide_data() -> None:
    x, _ = clustered(2000, 256, seed=3)
    nb = get_backend("cpu").neighbors(x, 15)
    assert nb.method == "pca64+exact"
    assert nb.cells is None
    assert nb.indices.shape == nb.distances.shape == (2000, 15)
    np.testing.assert_array_equal(nb.indices[:, 0], np.arange(2000))


def test_cpu_neighbors_switch_to_cell_probe_above_the_threshold() -> None:
    b = get_backend("cpu")
    b.coarse_above = 1000  # type: ignore[attr-defined]
    x, _ = clustered(3000, 8, seed=3)
    nb = b.neighbors(x, 10)
    assert nb.method.startswith("cell-probe(")
    assert nb.cells is not None
    assert nb.cells.shape == (3000,)


def test_cell_probe_recall() -> None:
    x, _ = clustered(6000, 16, centres=20, seed=4)
    idx, dist, cells = cell_probe_knn(x, 15, n_cells=40, n_probe=6, seed=0)
    ref, _ = exact_knn(x, 15)
    recall = np.mean([len(set(a) & set(b)) / 15 for a, b in zip(idx, ref, strict=True)])
    assert recall > 0.95
    assert cells.shape == (6000,)
    assert set(np.unique(cells)) <= set(range(40))
    np.testing.assert_array_equal(idx[:, 0], np.arange(6000))
    assert np.all(np.diff(dist, axis=1) >= 0)


def test_reranked_search_matches_exact_search() -> None:
    latent, _ = clustered(3000, 8, seed=5)  # wide data of low intrinsic dimension
    mixing = np.random.default_rng(5).normal(size=(8, 300)).astype(np.float32)
    x = latent @ mixing + np.float32(0.01) * np.random.default_rng(6).normal(
        size=(3000, 300)
    ).astype(np.float32)
    queries = x[:500] + 0.01
    idx, dist = reranked_search(x, queries, 3, reduce_to=16, reduce_above=0)
    ref_idx, ref_dist = brute_knn(x, queries, 3)
    assert np.mean(idx == ref_idx) > 0.99
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-3, atol=1e-3)


def test_nearest_sample_distances_of_backend(backend: Backend) -> None:
    x, _ = clustered(500, 12, seed=6)
    dev = backend.to_device(x)
    sample = np.arange(0, 500, 7)
    got = backend.nearest_sample_distances(dev, np.arange(500), sample)
    _, ref = brute_knn(x[sample], x, 1)
    np.testing.assert_allclose(got, ref[:, 0], rtol=1e-4, atol=1e-4)
    assert got.dtype == np.float32
    assert np.all(got[sample] == 0)
