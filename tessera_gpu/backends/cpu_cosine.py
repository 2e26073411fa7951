"""Cosine neighbours on the CPU: PCA-64 candidates, then an exact cosine check on full vectors.

The similarity features (find similar, near-duplicates, uniqueness) measure cosine distance
``1 - x.y / (|x| |y|)`` in the full embedding space. For wide data, candidates come from a
64-dimensional PCA of the *normalised* rows (an exact search up to 25k rows, the cell-probe
search above), and every candidate is then re-ranked exactly on the full vectors by a parallel
numba kernel, so every distance returned is exact; only a true neighbour missing from the
candidates can be missed, and the benchmark measures how often that happens.

Nothing here copies the embeddings: norms are computed once and the PCA is applied as
``(X @ W) / |x| - mean @ W``.
"""

from __future__ import annotations

import numba
import numpy as np

from tessera_gpu.backends.cpu_knn import cell_probe_knn, exact_knn
from tessera_gpu.backends.cpu_pca import Pca, fit_pca
from tessera_gpu.backends.rows import self_first
from tessera_gpu.projection.parallel import kernel

__all__ = [
    "CANDIDATES",
    "cosine_distances",
    "cosine_knn",
    "normalized_pca",
    "row_norms",
    "safe_norms",
]

REDUCE_TO = 64
CANDIDATES = 48  # candidates per row re-ranked exactly (the graph keeps the best k of them)
EXACT_BELOW = 25_000  # rows: below, candidates come from an exact search in PCA space
_BLOCK = 16_384  # rows per block when reducing


@kernel
def _norms(x):  # pragma: no cover - compiled
    n, d = x.shape
    out = np.empty(n, dtype=np.float32)
    for i in numba.prange(n):
        acc = 0.0
        for t in range(d):
            acc += x[i, t] * x[i, t]
        out[i] = np.sqrt(acc)
    return out


def row_norms(x: np.ndarray) -> np.ndarray:
    """``|x_i|`` per row (float32); a zero row has norm 0."""
    return np.asarray(_norms(x), dtype=np.float32)


def safe_norms(norms: np.ndarray) -> np.ndarray:
    """Norms to divide by: a zero row stays a zero vector (cosine distance 1 to all)."""
    return np.where(norms > 0, norms, np.float32(1.0)).astype(np.float32)


@kernel
def _pair_distances(x, norms, left, right):  # pragma: no cover - compiled
    n = left.shape[0]
    d = x.shape[1]
    out = np.empty(n, dtype=np.float32)
    for p in numba.prange(n):
        i = left[p]
        j = right[p]
        acc = 0.0
        for t in range(d):
            acc += x[i, t] * x[j, t]
        out[p] = 1.0 - acc / (norms[i] * norms[j])
    return out


def cosine_distances(
    x: np.ndarray, norms: np.ndarray, left: np.ndarray, right: np.ndarray
) -> np.ndarray:
    """Exact cosine distance of each pair ``(left[p], right[p])`` of rows (float32)."""
    left = np.ascontiguousarray(left, dtype=np.int64)
    right = np.ascontiguousarray(right, dtype=np.int64)
    out = _pair_distances(x, safe_norms(norms), left, right)
    return np.clip(out, 0.0, 2.0)


def normalized_pca(
    x: np.ndarray, norms: np.ndarray, *, n_components: int = REDUCE_TO, seed: int = 0
) -> tuple[np.ndarray, Pca | None]:
    """The rows scaled to unit length, projected on the top principal axes of a seeded sample
    of them: ``(reduced (n, c) float32, pca)``. Narrow data is only normalised (no PCA).

    Euclidean distance in this space is a lower bound of the distance between the unit
    vectors (an orthonormal projection never lengthens a difference)."""
    safe = safe_norms(norms)
    n, d = x.shape
    if d <= 2 * n_components:
        return np.ascontiguousarray(x / safe[:, None], dtype=np.float32), None
    rng = np.random.default_rng(seed)
    sample_rows = np.sort(rng.choice(n, min(n, 10_000), replace=False))
    sample = x[sample_rows] / safe[sample_rows, None]
    pca = fit_pca(sample, n_components, seed=seed)
    shift = pca.mean @ pca.basis
    out = np.empty((n, pca.basis.shape[1]), dtype=np.float32)
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        block = x[start:stop] @ pca.basis
        block /= safe[start:stop, None]
        block -= shift
        out[start:stop] = block
    return out, pca


@kernel
def _rerank(x, norms, cand, out):  # pragma: no cover - compiled
    n, c = cand.shape
    d = x.shape[1]
    for i in numba.prange(n):
        for j in range(c):
            q = cand[i, j]
            if q < 0:
                out[i, j] = np.inf
                continue
            acc = 0.0
            for t in range(d):
                acc += x[i, t] * x[q, t]
            out[i, j] = 1.0 - acc / (norms[i] * norms[q])


def cosine_knn(
    x: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    norms: np.ndarray | None = None,
    reduced: np.ndarray | None = None,
    n_candidates: int = CANDIDATES,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Each row's ``k`` nearest rows by cosine distance (itself first), exact distances.

    Returns ``(indices int64 (n, k), distances float32 (n, k), method)``. ``norms`` and
    ``reduced`` (:func:`normalized_pca`) are computed when not given.
    """
    n = len(x)
    k = min(k, n)
    norms = row_norms(x) if norms is None else norms
    if reduced is None:
        reduced, _ = normalized_pca(x, norms, seed=seed)
    space = f"pca{reduced.shape[1]}" if reduced.shape[1] < x.shape[1] else "unit"
    wanted = min(n, max(k, n_candidates))
    if n <= EXACT_BELOW:
        cand, _ = exact_knn(reduced, wanted)
        method = f"{space}-exact"
    else:
        n_cells = max(8, int(np.sqrt(n)))
        cand, _, _ = cell_probe_knn(reduced, wanted, n_cells=n_cells, n_probe=8, seed=seed)
        method = f"{space}-cell-probe({n_cells}x8)"
    cand = self_first(np.ascontiguousarray(cand, dtype=np.int64))
    dist = np.empty(cand.shape, dtype=np.float32)
    _rerank(x, safe_norms(norms), cand, dist)
    dist[:, 0] = 0.0  # a row is at distance 0 from itself, whatever the rounding says
    np.clip(dist, 0.0, 2.0, out=dist)
    order = np.argsort(dist[:, 1:], axis=1, kind="stable") + 1
    idx = np.concatenate([cand[:, :1], np.take_along_axis(cand, order, 1)], axis=1)[:, :k]
    dist = np.concatenate([dist[:, :1], np.take_along_axis(dist, order, 1)], axis=1)[:, :k]
    return idx, np.ascontiguousarray(dist), f"{method}+exact-cosine-rerank({wanted})"
