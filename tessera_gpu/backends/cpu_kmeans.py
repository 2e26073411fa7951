"""Lloyd's k-means on the CPU: k-means++ seeding in numba, assignments by BLAS blocks.

The assignment step reuses the distance-block idea of :mod:`.cpu_knn` (GEMM, then a parallel
numba arg-min); the update step is a sparse one-hot product.  Empty clusters are re-seeded
with the points farthest from their centroid, as scikit-learn does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import scipy.sparse

from tessera_gpu.backends.cpu_pca import fit_pca
from tessera_gpu.projection.parallel import kernel

__all__ = ["LloydFit", "assign", "kmeans", "kmeans_pp", "lloyd"]

_BLOCK_BYTES = 32 * 2**20  # GEMM output per block (smaller blocks starve BLAS)


@dataclass(frozen=True)
class LloydFit:
    """Centroids ``(k, d)``, labels ``(n,)`` and inertia (sum of squared distances)."""

    centroids: np.ndarray
    labels: np.ndarray
    inertia: float


@kernel
def _argmin_block(gram, x_norms, c_norms, labels, mind, offset):  # pragma: no cover
    """Per row: arg-min over centroids of ``|c|^2 - 2 x.c`` (a vectorised min, then a find)."""
    b, k = gram.shape
    for r in numba.prange(b):
        row = gram[r]
        best = np.inf
        for c in range(k):
            best = min(best, c_norms[c] - 2.0 * row[c])
        arg = 0
        for c in range(k):
            if c_norms[c] - 2.0 * row[c] == best:
                arg = c
                break
        labels[offset + r] = arg
        mind[offset + r] = max(x_norms[r] + best, 0.0)


def assign(data: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every row and the squared distance to it."""
    n = len(data)
    labels = np.empty(n, dtype=np.int64)
    mind = np.empty(n, dtype=np.float32)
    c_norms = np.einsum("ij,ij->i", centroids, centroids, dtype=np.float32)
    block = max(64, _BLOCK_BYTES // (4 * max(1, len(centroids))))
    for start in range(0, n, block):
        chunk = data[start : start + block]
        x_norms = np.einsum("ij,ij->i", chunk, chunk, dtype=np.float32)
        _argmin_block(chunk @ centroids.T, x_norms, c_norms, labels, mind, start)
    return labels, mind


@kernel
def _seed_rows(data, k, first, draws, n_chunks):  # pragma: no cover - compiled
    """k-means++ seeding: D^2 sampling with per-chunk sums (deterministic on any thread count)."""
    n, d = data.shape
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = first
    mind = np.full(n, np.inf, dtype=np.float64)
    sums = np.zeros(n_chunks, dtype=np.float64)
    size = (n + n_chunks - 1) // n_chunks
    for j in range(1, k + 1):
        centre = data[chosen[j - 1]]
        for t in numba.prange(n_chunks):
            acc_sum = 0.0
            for i in range(t * size, min(n, (t + 1) * size)):
                acc = 0.0
                for u in range(d):
                    diff = data[i, u] - centre[u]
                    acc += diff * diff
                mind[i] = min(mind[i], acc)
                acc_sum += mind[i]
            sums[t] = acc_sum
        if j == k:
            break
        target = draws[j] * sums.sum()
        t = 0
        while t < n_chunks - 1 and target >= sums[t]:
            target -= sums[t]
            t += 1
        pick = min(n, (t + 1) * size) - 1
        for i in range(t * size, min(n, (t + 1) * size)):
            target -= mind[i]
            if target < 0.0:
                pick = i
                break
        chosen[j] = pick
    return chosen


def kmeans_pp(data: np.ndarray, k: int, *, seed: int) -> np.ndarray:
    """Indices of ``k`` rows chosen by k-means++ (D^2 sampling, one trial per centre).

    Rows equal to a chosen one have zero weight, so picks are distinct while the data has
    at least ``k`` distinct rows; otherwise the remaining picks are unused random rows.
    """
    rng = np.random.default_rng(seed)
    n = len(data)
    chosen = _seed_rows(data, k, int(rng.integers(n)), rng.random(k), 64)
    uniq, first = np.unique(chosen, return_index=True)
    if len(uniq) < k:
        spare = rng.permutation(np.setdiff1d(np.arange(n), uniq))[: k - len(uniq)]
        chosen = np.concatenate([chosen[np.sort(first)], spare])
    return chosen


def _update(data: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(data)
    onehot = scipy.sparse.csr_matrix(
        (np.ones(n, dtype=np.float32), (labels, np.arange(n))), shape=(k, n)
    )
    counts = np.bincount(labels, minlength=k)
    sums = np.asarray(onehot @ data, dtype=np.float32)
    return sums, counts


def _reseed_empty(
    centroids: np.ndarray, counts: np.ndarray, data: np.ndarray, mind: np.ndarray
) -> None:
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        far = np.argsort(-mind, kind="stable")[: len(empty)]
        centroids[empty] = data[far]


def lloyd(
    data: np.ndarray,
    k: int,
    *,
    n_iter: int = 25,
    seed: int = 0,
    init: str = "k-means++",
) -> LloydFit:
    """Lloyd iterations from ``init`` ("k-means++" or "random" rows) until stable or ``n_iter``."""
    rng = np.random.default_rng(seed)
    if init == "random":
        start = np.sort(rng.choice(len(data), k, replace=False))
    else:
        start = kmeans_pp(data, k, seed=seed)
    centroids = data[start].astype(np.float32, copy=True)
    labels, mind = assign(data, centroids)
    for _ in range(n_iter):
        sums, counts = _update(data, labels, k)
        nonzero = counts > 0
        centroids[nonzero] = sums[nonzero] / counts[nonzero, None]
        _reseed_empty(centroids, counts, data, mind)
        new_labels, mind = assign(data, centroids)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
    return LloydFit(centroids, labels, float(mind.sum(dtype=np.float64)))


def _full_space(data: np.ndarray, labels: np.ndarray, k: int, fallback: np.ndarray) -> LloydFit:
    """Centroids as member means in the full space (``fallback`` rows for empty clusters)."""
    sums, counts = _update(data, labels, k)
    centroids = np.empty((k, data.shape[1]), dtype=np.float32)
    filled = counts > 0
    centroids[filled] = sums[filled] / counts[filled, None]
    centroids[~filled] = data[fallback[~filled]]
    inertia = 0.0
    step = max(1, _BLOCK_BYTES // (4 * data.shape[1]))
    for start in range(0, len(data), step):
        diff = data[start : start + step] - centroids[labels[start : start + step]]
        inertia += float(np.einsum("ij,ij->", diff, diff, dtype=np.float64))
    return LloydFit(centroids, labels, inertia)


def kmeans(
    data: np.ndarray,
    k: int,
    *,
    n_iter: int = 25,
    seed: int = 0,
    reduce_to: int = 64,
    reduce_above: float = 2e9,
) -> LloydFit:
    """K-means in the full space, or -- when ``n*k*d > reduce_above`` and ``d > 2*reduce_to`` --
    Lloyd on a ``reduce_to``-dim PCA of the rows, with centroids and inertia then taken in
    the full space.  The discarded PCA tail is mostly isotropic noise whose share of the
    inertia barely depends on the assignment, so this costs little inertia (see the
    benchmarks) for a ``d / reduce_to`` cheaper assignment step.
    """
    n, d = data.shape
    if d <= 2 * reduce_to or float(n) * k * d <= reduce_above:
        return lloyd(data, k, n_iter=n_iter, seed=seed)
    reduced = fit_pca(data, reduce_to, seed=seed).apply(data)
    fit = lloyd(reduced, k, n_iter=n_iter, seed=seed)
    nearest, _ = assign(fit.centroids, reduced)  # per centroid: nearest row, for empties
    return _full_space(data, fit.labels, k, nearest)
