"""Lloyd's K-means on the GPU with CuPy (imported only by GPU backends).

* Seeding: k-means++ (D^2 sampling) run on a 64-dim PCA of the rows, where each of the k
  sequential steps touches ``n x 64`` floats instead of ``n x D``; the seeds are rows, so
  the centroids start in the full space.
* Iterations: blocked GEMM distances + ``argmin``, centroid sums by ``scatter_add``;
  empty clusters are re-seeded with the points farthest from their centroid.
"""

from __future__ import annotations

import cupy as cp
import cupyx
import numpy as np

__all__ = ["assign", "lloyd", "pca_reduce", "seed_rows"]

GRAM_BYTES = 1 << 29


def pca_reduce(
    data: cp.ndarray, n_components: int, *, seed: int, sample_size: int = 20_000
) -> cp.ndarray:
    """Rows projected on the top principal axes of a seeded row sample (float32)."""
    n, d = data.shape
    if d <= n_components:
        return data
    rng = np.random.default_rng(seed)
    rows = cp.asarray(np.sort(rng.choice(n, min(n, sample_size), replace=False)))
    sample = data[rows]
    mean = sample.mean(axis=0)
    centred = sample - mean
    cov = centred.T @ centred
    _, vecs = cp.linalg.eigh(cov.astype(cp.float64))
    basis = cp.ascontiguousarray(vecs[:, ::-1][:, :n_components].astype(cp.float32))
    return data @ basis - mean @ basis


def seed_rows(reduced: cp.ndarray, k: int, *, seed: int) -> cp.ndarray:
    """k-means++ seeding; returns ``k`` row indices (device int64)."""
    rng = np.random.default_rng(seed)
    n = len(reduced)
    draws = cp.asarray(rng.random(k))
    chosen = cp.empty(k, dtype=cp.int64)
    chosen[0] = int(rng.integers(n))
    mind = cp.full(n, cp.inf, dtype=cp.float32)
    for j in range(1, k):
        diff = reduced - reduced[chosen[j - 1]]
        cp.minimum(mind, cp.einsum("ij,ij->i", diff, diff), out=mind)
        cum = cp.cumsum(mind, dtype=cp.float64)
        pick = cp.searchsorted(cum, (draws[j] * cum[-1])[None], side="right")
        chosen[j] = cp.minimum(pick[0], n - 1)
    return chosen


def assign(data: cp.ndarray, centroids: cp.ndarray) -> tuple[cp.ndarray, cp.ndarray]:
    """Nearest centroid per row and the squared distance to it."""
    n = len(data)
    labels = cp.empty(n, dtype=cp.int64)
    mind = cp.empty(n, dtype=cp.float32)
    cn = cp.einsum("ij,ij->i", centroids, centroids)
    step = max(1, GRAM_BYTES // (4 * len(centroids)))
    for start in range(0, n, step):
        block = data[start : start + step]
        d2 = cn[None, :] - 2.0 * (block @ centroids.T)
        labels[start : start + step] = cp.argmin(d2, axis=1)
        best = cp.take_along_axis(d2, labels[start : start + step, None], 1)[:, 0]
        mind[start : start + step] = cp.maximum(best + cp.einsum("ij,ij->i", block, block), 0)
    return labels, mind


def _update(data: cp.ndarray, labels: cp.ndarray, mind: cp.ndarray, centroids: cp.ndarray) -> None:
    k = len(centroids)
    sums = cp.zeros_like(centroids)
    cupyx.scatter_add(sums, labels, data)
    counts = cp.bincount(labels, minlength=k)
    filled = counts > 0
    centroids[filled] = sums[filled] / counts[filled].astype(cp.float32)[:, None]
    n_empty = int((~filled).sum())
    if n_empty:
        far = cp.argsort(-mind)[:n_empty]
        centroids[cp.flatnonzero(~filled)] = data[far]


def lloyd(
    data: cp.ndarray, k: int, *, n_iter: int, seed: int
) -> tuple[cp.ndarray, cp.ndarray, float]:
    """``(centroids, labels, inertia)`` on device; stops early once labels are stable."""
    start = seed_rows(pca_reduce(data, 64, seed=seed), k, seed=seed)
    centroids = data[start].astype(cp.float32, copy=True)
    labels, mind = assign(data, centroids)
    for _ in range(n_iter):
        _update(data, labels, mind, centroids)
        new_labels, mind = assign(data, centroids)
        if bool(cp.array_equal(new_labels, labels)):
            break
        labels = new_labels
    return centroids, labels, float(mind.sum(dtype=cp.float64))
