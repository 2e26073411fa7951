"""Greedy k-means++ seeding on the CuPy tier: one launch per centre, D^2 sampling, the best of
the trials, sums in a fixed order -- on the numpy stand-in, which runs the kernel's emulation
(tessera_gpu/backends/seeding.py), and on a real GPU against that emulation (``real_gpu``)."""

from __future__ import annotations

import numpy as np
import pytest

from tessera_gpu.backends import Backend
from tessera_gpu.backends.cupy_kmeans import lloyd, pca_reduce, seed_rows
from tessera_gpu.backends.launches import LAUNCHES
from tessera_gpu.backends.seeding import (
    BLOCK_ROWS,
    GRAPH_STEPS,
    MAX_TRIALS,
    THREADS,
    default_trials,
    seed_arguments,
)
from tessera_gpu.backends.standin import NumpyDevice, kmeanspp_step_emulated

from .backend_params import clustered, cupy_backend

pytestmark = pytest.mark.gpu


def _launches_of(fn) -> dict[str, int]:  # type: ignore[no-untyped-def]
    before = dict(LAUNCHES.by_name)
    fn()
    return {k: v - before.get(k, 0) for k, v in LAUNCHES.by_name.items() if v != before.get(k, 0)}


def test_seeding_is_one_launch_per_batch_of_centres_and_uses_no_float_scan() -> None:
    dev = NumpyDevice()
    x = dev.asarray(clustered(3000, 48, seed=1)[0])
    for k, steps, graphs in ((50, 50, 0), (200, 8, 3), (1000, 40, 15)):
        ops = _launches_of(lambda k=k: seed_rows(dev, x, k, seed=0))
        assert ops["kmeanspp_step"] == steps  # 1, then 64 per graph, then the rest one by one
        assert ops.get("kmeanspp_graph", 0) == graphs
        assert steps + graphs * GRAPH_STEPS == k
        assert sum(ops.values()) <= steps + graphs + 4, ops  # a few fills and copies first
        assert "cumsum" not in ops  # CUB's device scan: not run-to-run deterministic for floats
        assert "searchsorted" not in ops


def test_a_whole_kmeans_costs_o1_launches_per_batch_of_centres() -> None:
    """Seeding was ~8 device operations per centre on the stand-in (more kernels on CuPy);
    now one per 64 centres, and a Lloyd iteration costs the same whatever k."""
    dev = NumpyDevice()
    x = dev.asarray(clustered(3000, 96, centres=12, seed=2, latent=8)[0])
    counts = {k: sum(_launches_of(lambda k=k: lloyd(dev, x, k, n_iter=3, seed=0)).values())
              for k in (100, 1000)}  # fmt: skip
    assert counts[1000] - counts[100] <= 900 / GRAPH_STEPS + 2 * GRAPH_STEPS, counts


def _sample_order(n: int) -> np.ndarray:
    """Rows in the kernel's summing order: block, then thread, then the thread's rows."""
    r = np.arange(n)
    return np.lexsort(((r % BLOCK_ROWS) // THREADS, r % THREADS, r // BLOCK_ROWS))


@pytest.mark.parametrize("n", [200, 3_000, 270_000])  # 270k: more blocks than threads
def test_candidates_are_drawn_by_squared_distance(n: int) -> None:
    """One launch places the first centre and draws MAX_TRIALS candidates: each the first
    row, in the kernel's order, whose running sum of D^2 passes u * total."""
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 2)).astype(np.float32)
    d2 = ((x - x[7]) ** 2).sum(axis=1, dtype=np.float32)  # sequential over 2 columns: exact
    order = _sample_order(n)
    cum = np.cumsum(d2[order].astype(np.float64))
    agree = []
    for seed in range(8):
        draws = np.random.default_rng(seed).random((2, MAX_TRIALS))
        args, blocks = seed_arguments(np, x, 2, first=7, draws=draws, n_trials=MAX_TRIALS)
        kmeanspp_step_emulated(*args, blocks=blocks)
        want = order[np.searchsorted(cum, draws[1] * cum[-1], side="right")]
        agree += (args[10] == want).tolist()
    assert np.mean(agree) >= 0.99  # the reference sums in another association: rare ties


def test_the_best_of_the_trials_is_kept() -> None:
    x = clustered(2500, 8, centres=5, seed=3)[0]
    dev = NumpyDevice()
    draws = np.random.default_rng(4).random((2, MAX_TRIALS))
    args, blocks = seed_arguments(np, x, 2, first=11, draws=draws, n_trials=6)
    kmeanspp_step_emulated(*args, blocks=blocks)
    candidates = args[10][:6].copy()
    mind = ((x - x[11]) ** 2).sum(axis=1)
    potential = [np.minimum(mind, ((x - x[c]) ** 2).sum(axis=1)).sum() for c in candidates]
    chosen = dev.kmeanspp(x, 2, first=11, draws=draws, n_trials=6)
    assert chosen[0] == 11
    assert chosen[1] == candidates[int(np.argmin(potential))]


def test_more_trials_give_seeds_at_least_as_good_on_average() -> None:
    x = clustered(3000, 32, centres=20, seed=5, latent=6)[0]
    dev = NumpyDevice()

    def potential(rows: np.ndarray) -> float:
        d2 = ((x[:, None, :] - x[rows][None, :, :]) ** 2).sum(axis=2)
        return float(d2.min(axis=1).sum())

    plain = np.mean([potential(seed_rows(dev, x, 20, seed=s, n_trials=1)) for s in range(6)])
    greedy = np.mean([potential(seed_rows(dev, x, 20, seed=s)) for s in range(6)])
    assert default_trials(20) == 4
    assert greedy < plain


def test_seeds_are_distinct_rows_while_there_are_distinct_rows() -> None:
    x = clustered(1500, 16, seed=6)[0]
    seeds = seed_rows(NumpyDevice(), x, 300, seed=0)
    assert len(set(seeds.tolist())) == 300


@pytest.mark.real_gpu
def test_seeding_kernel_matches_its_emulation_and_repeats() -> None:
    gpu: Backend = cupy_backend()
    dev = gpu.dev  # type: ignore[attr-defined]
    if dev.standin:
        pytest.skip("needs a real GPU: the stand-in runs the emulation itself")
    x = clustered(5000, 256, centres=30, seed=7, latent=12)[0]
    reduced = pca_reduce(dev, dev.asarray(x), 64, seed=0)
    host = dev.to_host(reduced)
    draws = np.random.default_rng(8).random((400, MAX_TRIALS))
    runs = [dev.to_host(dev.kmeanspp(reduced, 400, first=3, draws=draws, n_trials=8))
            for _ in range(3)]  # fmt: skip
    want = NumpyDevice().kmeanspp(host, 400, first=3, draws=draws, n_trials=8)
    for got in runs:
        np.testing.assert_array_equal(got, want)
