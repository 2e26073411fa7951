"""The CuPy tier's own code, on the CPU: the numpy stand-in runs it where no GPU is present.

Marked ``gpu``: on a GPU machine (benchmarks/gpu_check.sh) the same tests run on CuPy.  The
top-k kernel's algorithm is checked against a full sort here, and the kernel itself against
that emulation on a real GPU (``real_gpu``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.manifold import trustworthiness

from tessera_gpu.backends import Backend, gpu_probe
from tessera_gpu.backends import cupy_backend as cupy_backend_module
from tessera_gpu.backends.cupy_device import CUPY_ADDS, kernel_builds
from tessera_gpu.backends.cupy_kmeans import segment_sums
from tessera_gpu.backends.cupy_knn import exact_search
from tessera_gpu.backends.standin import NumpyDevice, round_to_tf32, topk_emulated
from tessera_gpu.clustering import diversity_sample, kmeans
from tessera_gpu.projection.project import ProjectionParams, project

from .backend_params import brute_knn, clustered, cupy_backend

pytestmark = pytest.mark.gpu


@pytest.fixture
def gpu() -> Backend:
    return cupy_backend()


def _sorted_reference(gram: np.ndarray, qn: np.ndarray, dn: np.ndarray, kk: int):  # type: ignore[no-untyped-def]
    """A full sort of every row: by value, then lane (column % 32), then column."""
    d2 = (qn[:, None] + dn[None, :]) - np.float32(2.0) * gram
    cols = np.arange(gram.shape[1])
    idx = np.array([np.lexsort((cols, cols % 32, row))[:kk] for row in d2])
    return np.take_along_axis(d2, idx, 1), idx


# ---- the top-k kernel's algorithm --------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "cols", "kk"),
    [(6, 70, 9), (5, 32, 32), (4, 33, 31), (3, 100, 100), (8, 1000, 216), (2, 5000, 56)],
)
@pytest.mark.parametrize("ties", [False, True])
def test_topk_emulation_matches_a_full_sort(rows: int, cols: int, kk: int, ties: bool) -> None:
    rng = np.random.default_rng(rows * cols + kk)
    gram = rng.integers(0, 4, (rows, cols)) if ties else rng.normal(size=(rows, cols))
    gram = gram.astype(np.float32)
    qn, dn = rng.random(rows).astype(np.float32), np.zeros(cols, np.float32)
    if not ties:
        dn = rng.random(cols).astype(np.float32)
    got_d, got_i = topk_emulated(gram, qn, dn, kk)
    want_d, want_i = _sorted_reference(gram, qn, dn, kk)
    np.testing.assert_array_equal(got_d, want_d)  # the kk smallest values, in order
    np.testing.assert_array_equal(got_i, want_i)  # equal values: lowest lane, then column
    assert got_i.dtype == np.int64
    assert got_d.dtype == np.float32


def test_topk_emulation_fills_missing_slots_like_the_kernel() -> None:
    gram = np.zeros((2, 3), np.float32)
    gram[1, 2] = np.nan
    d, i = topk_emulated(gram, np.zeros(2, np.float32), np.zeros(3, np.float32), 3)
    assert i[1].tolist() == [0, 1, -1]
    assert np.isinf(d[1, 2])


def test_topk_emulation_flushes_subnormals_as_the_kernel_does() -> None:
    """CuPy 14 compiles every kernel with -ftz=true, after our options: the kernel's float
    arithmetic reads a subnormal as 0 and writes 0 for a subnormal result.  So do these
    distances, which IEEE arithmetic would keep apart: they tie at 0, ordered by lane."""
    tiny = np.float32(2.0**-140)  # subnormal: below float32's smallest normal, 2**-126
    dn = tiny * np.arange(64, 0, -1, dtype=np.float32)  # IEEE order: column 63 first
    gram = np.zeros((2, 64), np.float32)
    gram[1] = -tiny  # 2 * g is subnormal: 0 under ftz
    qn = np.array([0.0, 2.0**-127], np.float32)  # a subnormal row norm reads as 0
    d, i = topk_emulated(gram, qn, dn, 8)
    assert not d.any()
    lanes_first = [0, 32, 1, 33, 2, 34, 3, 35]  # equal values: lowest lane, then column
    assert i.tolist() == [lanes_first, lanes_first]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs the CUDA compiler (nvcc)")
def test_kernels_compile_with_cupys_options_to_flushing_unfused_arithmetic(tmp_path: Path) -> None:
    """nvcc (NVRTC's front end) with the options CuPy 14 compiles our kernels with, for the
    H200 (sm_90): every float32 operation flushes subnormals and none is fused, which is
    what the emulation assumes (no GPU needed to check that)."""
    for name, source, options in kernel_builds():
        cu = tmp_path / f"{name}.cu"
        cu.write_text(source)
        args = ["nvcc", "-ptx", "-arch=sm_90", *options, *CUPY_ADDS, str(cu), "-o", f"{cu}.ptx"]
        run = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, f"{name}: {run.stderr}"
        ops = set(re.findall(r"\b(?:add|sub|mul|fma|div|min|max|setp\.\w+)\.[\w.]*f32\b",
                             Path(f"{cu}.ptx").read_text()))  # fmt: skip
        assert ops, name
        assert all(".ftz" in op for op in ops), (name, ops)
        assert not any(op.startswith("fma") for op in ops), (name, ops)


@pytest.mark.real_gpu
def test_kernel_matches_its_emulation_bit_for_bit(gpu: Backend) -> None:
    dev = gpu.dev  # type: ignore[attr-defined]
    if dev.standin:
        pytest.skip("needs a real GPU: the stand-in runs the emulation itself")
    rng = np.random.default_rng(1)
    # Column counts on both sides of the unrolled rounds (4 x 32 columns) and their remainder.
    for cols, kk in ((70, 9), (127, 9), (4000, 31), (4001, 56), (4127, 116), (20000, 216)):
        gram = rng.integers(0, 50, (64, cols)).astype(np.float32)
        qn, dn = rng.random(64).astype(np.float32), rng.random(cols).astype(np.float32)
        got = dev.topk(*(dev.asarray(a) for a in (gram, qn, dn)), kk)
        want = topk_emulated(gram, qn, dn, kk)
        np.testing.assert_array_equal(dev.to_host(got[0]), want[0])
        np.testing.assert_array_equal(dev.to_host(got[1]), want[1])


# ---- kNN --------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [15, 40, 100])
def test_knn_recall_on_wide_data(gpu: Backend, k: int) -> None:
    x = clustered(1200, 96, centres=6, seed=31, latent=8)[0]
    idx, dist = gpu.knn(gpu.to_device(x), k)
    ref_idx, ref_dist = brute_knn(x, x, k)
    assert idx.shape == dist.shape == (1200, k)
    recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(idx, ref_idx, strict=True)])
    assert recall > 0.999
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(dist, axis=1) >= 0)


def test_a_search_wider_than_the_kernel_is_exact(gpu: Backend) -> None:
    """k + margin beyond the kernel's 256 slots (a diversity sample widening its candidates)
    takes the partition path, with the same exact answer."""
    from tessera_gpu.backends.cupy_device import KMAX_STEPS

    assert NumpyDevice.max_topk == KMAX_STEPS[-1]
    x, _ = clustered(1_500, 24, seed=4)
    dev = gpu.dev  # type: ignore[attr-defined]
    idx, dist = exact_search(dev, dev.xp.asarray(x), dev.xp.asarray(x[:40]), 300)
    truth_idx, truth_dist = brute_knn(x, x[:40], 300)
    np.testing.assert_allclose(gpu.to_host(dist), truth_dist, rtol=1e-5, atol=1e-5)
    assert (gpu.to_host(idx) == truth_idx).mean() > 0.99


def test_knn_with_fewer_rows_than_k(gpu: Backend) -> None:
    x = clustered(7, 80, seed=32)[0]
    idx, dist = gpu.knn(gpu.to_device(x), 15)
    ref_idx, ref_dist = brute_knn(x, x, 7)
    assert idx.shape == (7, 7)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-5, atol=1e-5)
    near, _ = gpu.nearest_rows(gpu.to_device(x), x[:2] + 0.01, 20)
    assert near.shape == (2, 7)


def test_knn_of_duplicate_rows(gpu: Backend) -> None:
    base = clustered(40, 70, seed=33)[0]
    x = np.repeat(base, 25, axis=0)  # 25 copies of each row: more ties than candidates
    idx, dist = gpu.knn(gpu.to_device(x), 15)
    assert np.all(dist == 0)  # every row has 24 exact copies
    assert np.all(idx // 25 == (np.arange(1000) // 25)[:, None])
    assert all(len(set(row)) == 15 for row in idx)


def test_float64_input_is_copied_in_blocks(gpu: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cupy_backend_module, "H2D_BLOCK_BYTES", 8 * 70 * 13)  # 13 rows a block
    x = np.random.default_rng(34).normal(size=(100, 70))
    dev = gpu.to_device(x)
    np.testing.assert_array_equal(gpu.to_host(dev), x.astype(np.float32))
    assert gpu.to_host(dev).dtype == np.float32


def test_distances_and_inertia_stay_exact_under_tf32(monkeypatch: pytest.MonkeyPatch) -> None:
    """With CUPY_TF32=1 the GEMMs round to TF32 (the stand-in as cuBLAS does); the kNN
    distances and the inertia must not: they come from fp32 differences."""
    monkeypatch.setenv("CUPY_TF32", "1")
    dev = NumpyDevice()
    x = clustered(600, 128, seed=35, latent=6)[0] + np.float32(10.0)  # large norms: TF32 hurts
    assert not np.array_equal(dev.matmul(x, x.T), x @ x.T)  # the GEMM is TF32 here
    assert np.array_equal(round_to_tf32(np.float32([1.0])), np.float32([1.0]))
    idx, dist = exact_search(dev, x, x, 10)
    ref = np.sqrt(((x[idx].astype(np.float64) - x[:, None, :]) ** 2).sum(axis=2))
    np.testing.assert_allclose(dist, ref, rtol=2e-6)
    ref_idx, _ = brute_knn(x, x, 10)
    assert np.mean(idx == ref_idx) > 0.99
    backend = cupy_backend_module.CupyBackend(dev)
    fit = kmeans(backend.to_device(x), 12, backend=backend, seed=0)
    exact = ((x.astype(np.float64) - fit.centroids[fit.labels]) ** 2).sum()
    assert fit.inertia == pytest.approx(exact, rel=1e-6)


# ---- neighbours above the coarse threshold, and the projection ---------------------------------


def test_coarse_cells_above_the_threshold(gpu: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu, "coarse_above", 1000)
    x = clustered(2500, 96, centres=10, seed=36, latent=8)[0]
    nb = gpu.neighbors(gpu.to_device(x), 15)
    assert nb.cells is not None
    assert nb.cells.shape == (2500,)
    assert len(np.unique(nb.cells)) > 10
    result = project(gpu.to_device(x), backend=gpu, params=ProjectionParams(n_epochs=60))
    assert result.info["init"] == "coarse-spectral"
    assert trustworthiness(x, result.coords, n_neighbors=15) >= 0.96


def test_projection_is_close_to_the_cpu_tier(gpu: Backend) -> None:
    from tessera_gpu.backends import get_backend

    x = clustered(1500, 96, centres=6, seed=37, latent=6)[0]
    params = ProjectionParams(n_epochs=100)
    mine = project(gpu.to_device(x), backend=gpu, params=params)
    cpu = get_backend("cpu")
    theirs = project(cpu.to_device(x), backend=cpu, params=params)
    t_gpu = trustworthiness(x, mine.coords, n_neighbors=15)
    t_cpu = trustworthiness(x, theirs.coords, n_neighbors=15)
    assert t_gpu >= t_cpu - 0.01, (t_gpu, t_cpu)
    assert mine.info["knn"].startswith("exact-")
    assert mine.info["n_epochs"] == 100


# ---- K-means ----------------------------------------------------------------------------------


def test_segment_sums_are_exact_and_repeatable() -> None:
    dev = NumpyDevice()
    rng = np.random.default_rng(38)
    data = rng.normal(size=(5000, 33)).astype(np.float32) * 100
    labels = rng.integers(0, 40, 5000)
    labels[labels == 7] = 8  # an empty label
    sums, counts = segment_sums(dev, data, labels, 40)
    ref = np.zeros((40, 33))
    np.add.at(ref, labels, data.astype(np.float64))
    np.testing.assert_allclose(sums, ref.astype(np.float32), rtol=1e-6, atol=1e-3)
    assert counts.tolist() == np.bincount(labels, minlength=40).tolist()
    assert counts[7] == 0
    again, _ = segment_sums(dev, data, labels, 40)
    assert np.array_equal(again, sums)


def test_kmeans_on_wide_data_keeps_inertia(gpu: Backend) -> None:
    """d > 64: k-means++ seeds come from the 64-dim PCA path."""
    x = clustered(1500, 160, centres=15, seed=39, latent=12)[0]
    fit = kmeans(gpu.to_device(x), 40, backend=gpu, seed=0)
    baseline = KMeans(n_clusters=40, n_init=1, random_state=0).fit(x).inertia_
    assert fit.inertia <= 1.05 * baseline
    exact = ((x.astype(np.float64) - fit.centroids[fit.labels]) ** 2).sum()
    assert fit.inertia == pytest.approx(exact, rel=1e-5)


def test_same_seed_same_clusters_and_sample(gpu: Backend) -> None:
    x = clustered(2000, 72, centres=10, seed=40, latent=8)[0]
    dev = gpu.to_device(x)
    first = kmeans(dev, 30, backend=gpu, seed=5)
    again = kmeans(dev, 30, backend=gpu, seed=5)
    np.testing.assert_array_equal(again.centroids, first.centroids)
    np.testing.assert_array_equal(again.labels, first.labels)
    sample = diversity_sample(dev, 50, backend=gpu, seed=5)
    np.testing.assert_array_equal(diversity_sample(dev, 50, backend=gpu, seed=5), sample)
    assert set(diversity_sample(dev, 50, backend=gpu, seed=6).tolist()) != set(sample.tolist())


def test_kmeans_with_fewer_distinct_rows_than_k(gpu: Backend) -> None:
    x = np.repeat(np.eye(4, 70, dtype=np.float32) * 5, 10, axis=0)
    fit = kmeans(gpu.to_device(x), 10, backend=gpu, seed=0)
    assert fit.inertia == pytest.approx(0.0, abs=1e-6)
    picked = diversity_sample(gpu.to_device(x), 10, backend=gpu, seed=0)
    assert len(set(picked.tolist())) == 10


def test_the_probe_saw_no_warning_turned_error() -> None:
    """On this machine the probe's verdict is a GPU, the stand-in, or a named cause."""
    status = gpu_probe()
    assert status.cause in {"ok", "standin", "no_cupy", "no_driver", "no_device", "no_toolkit",
                            "unsupported_gpu", "probe_failed", "kernel_error"}  # fmt: skip
    assert status.reason


def test_duplicate_rows_give_a_finite_map(gpu: Backend) -> None:
    x = np.repeat(np.eye(4, 70, dtype=np.float32), 50, axis=0)
    coords = project(gpu.to_device(x), backend=gpu, params=ProjectionParams(n_epochs=60)).coords
    assert coords.shape == (200, 2)
    assert np.isfinite(coords).all()
