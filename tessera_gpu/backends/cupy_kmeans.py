"""Lloyd's K-means for the CuPy tier, written once against ``dev.xp`` (cupy, or numpy).

* Seeding: greedy k-means++ (D^2 sampling, the best of ``n_trials`` candidates per centre)
  run on a 64-dim PCA of the rows, where each of the k sequential steps touches ``n x 64``
  floats instead of ``n x D``: one kernel launch per centre, all trials at once, every sum
  in a fixed order (:mod:`.seeding`); the seeds are rows, so the centroids start in the
  full space.
* Iterations: blocked GEMM distances + ``argmin``; centroid sums by :func:`segment_sums`,
  which sorts the rows by label and differences a float64 running sum.  It adds in the same
  order on every run, unlike ``cupyx.scatter_add``'s float32 atomics, so the same seed gives
  the same centroids, labels and diversity sample.  Empty clusters are re-seeded with the
  points farthest from their centroid.
* The inertia is recomputed from exact fp32 differences at the end: GEMM distances (TF32
  when ``CUPY_TF32=1``) only choose labels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tessera_gpu.backends.cupy_knn import sq_norms
from tessera_gpu.backends.protocol import KMEANS_TOL
from tessera_gpu.backends.seeding import MAX_TRIALS, default_trials

__all__ = ["assign", "exact_inertia", "lloyd", "pca_reduce", "seed_rows", "segment_sums"]

GRAM_BYTES = 1 << 29
SUM_BYTES = 1 << 28  # float64 running sums per column block
REDUCE_TO = 64
SEED_TRIALS: int | None = None  # candidates per k-means++ centre; None: 2 + ln k (scikit-learn)


def pca_reduce(
    dev: Any, data: Any, n_components: int, *, seed: int, sample_size: int = 20_000
) -> Any:
    """Rows projected on the top principal axes of a seeded row sample (float32)."""
    xp = dev.xp
    n, d = data.shape
    if d <= n_components:
        return data
    rng = np.random.default_rng(seed)
    rows = dev.asarray(np.sort(rng.choice(n, min(n, sample_size), replace=False)))
    sample = data[rows]
    mean = sample.mean(axis=0, dtype=xp.float64).astype(xp.float32)
    centred = sample - mean
    cov = dev.matmul(centred.T, centred)
    _, vecs = xp.linalg.eigh(cov.astype(xp.float64))
    basis = xp.ascontiguousarray(vecs[:, ::-1][:, :n_components].astype(xp.float32))
    return dev.matmul(data, basis) - dev.matmul(mean[None, :], basis)


def seed_rows(dev: Any, reduced: Any, k: int, *, seed: int, n_trials: int | None = None) -> Any:
    """Greedy k-means++ seeding, ``n_trials`` candidates per centre (None: ``SEED_TRIALS``,
    else scikit-learn's ``2 + ln k``); returns ``k`` row indices (device int64).  One kernel
    launch per centre on a GPU (:mod:`.seeding`), the same centres on the stand-in."""
    trials = n_trials or SEED_TRIALS or default_trials(k)
    rng = np.random.default_rng(seed)
    first = int(rng.integers(len(reduced)))
    draws = rng.random((k, MAX_TRIALS))
    return dev.kmeanspp(reduced, k, first=first, draws=draws, n_trials=trials)


def assign(dev: Any, data: Any, centroids: Any) -> tuple[Any, Any]:
    """Nearest centroid per row (by GEMM distances) and that squared distance."""
    xp = dev.xp
    n = len(data)
    labels = xp.empty(n, dtype=xp.int64)
    mind = xp.empty(n, dtype=xp.float32)
    cn = sq_norms(dev, centroids)
    step = max(1, GRAM_BYTES // (4 * len(centroids)))
    for start in range(0, n, step):
        block = data[start : start + step]
        d2 = cn[None, :] - 2.0 * dev.matmul(block, centroids.T)
        best_at = xp.argmin(d2, axis=1)
        labels[start : start + step] = best_at
        best = xp.take_along_axis(d2, best_at[:, None], 1)[:, 0]
        mind[start : start + step] = xp.maximum(best + sq_norms(dev, block), 0)
    return labels, mind


def segment_sums(dev: Any, data: Any, labels: Any, k: int) -> tuple[Any, Any]:
    """``(sums (k, d) float32, counts (k,))`` of the rows per label, in a fixed order.

    Rows are sorted by label (a stable sort), summed cumulatively in float64 and differenced
    at the label boundaries: the same bits on every run, whatever the thread schedule.
    """
    xp = dev.xp
    n, d = data.shape
    order = xp.argsort(labels, kind="stable")
    counts = xp.bincount(labels, minlength=k)
    ends = xp.cumsum(counts)
    starts = ends - counts
    sums = xp.empty((k, d), dtype=xp.float32)
    step = max(1, SUM_BYTES // (8 * (n + 1)))
    for c0 in range(0, d, step):
        running = xp.zeros((n + 1, min(step, d - c0)), dtype=xp.float64)
        xp.cumsum(data[order, c0 : c0 + step], axis=0, dtype=xp.float64, out=running[1:])
        sums[:, c0 : c0 + step] = running[ends] - running[starts]
    return sums, counts


def exact_inertia(dev: Any, data: Any, centroids: Any, labels: Any) -> float:
    """Sum of squared distances to the own centroid, from fp32 differences (float64 total)."""
    xp = dev.xp
    total = 0.0
    step = max(1, GRAM_BYTES // (4 * data.shape[1]))
    for start in range(0, len(data), step):
        diff = data[start : start + step] - centroids[labels[start : start + step]]
        total += float((diff * diff).sum(axis=1).sum(dtype=xp.float64))
    return total


def _update(dev: Any, data: Any, labels: Any, mind: Any, centroids: Any) -> None:
    xp = dev.xp
    sums, counts = segment_sums(dev, data, labels, len(centroids))
    filled = counts > 0
    centroids[filled] = sums[filled] / counts[filled].astype(xp.float32)[:, None]
    n_empty = int((~filled).sum())
    if n_empty:
        far = xp.argsort(-mind, kind="stable")[:n_empty]
        centroids[xp.flatnonzero(~filled)] = data[far]


def lloyd(
    dev: Any, data: Any, k: int, *, n_iter: int, seed: int, n_trials: int | None = None
) -> tuple[Any, Any, float]:
    """``(centroids, labels, inertia)`` on device.  The CPU backend's rule: greedy k-means++
    seeds (2 + ln k trials), then Lloyd in the full space until an iteration changes no label
    or lowers the inertia by less than ``KMEANS_TOL`` of it, at most ``n_iter``."""
    xp = dev.xp
    reduced = pca_reduce(dev, data, REDUCE_TO, seed=seed)
    start = seed_rows(dev, reduced, k, seed=seed, n_trials=n_trials)
    centroids = data[start].astype(xp.float32, copy=True)
    labels, mind = assign(dev, data, centroids)
    before = float(mind.sum(dtype=xp.float64))
    for _ in range(n_iter):
        _update(dev, data, labels, mind, centroids)
        new_labels, mind = assign(dev, data, centroids)
        if bool(xp.array_equal(new_labels, labels)):
            break
        labels = new_labels
        after = float(mind.sum(dtype=xp.float64))
        if before - after <= KMEANS_TOL * before:
            break
        before = after
    return centroids, labels, exact_inertia(dev, data, centroids, labels)
