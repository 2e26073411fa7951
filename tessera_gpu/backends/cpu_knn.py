"""k-nearest-neighbour search on the CPU: BLAS distance blocks + a parallel numba top-k.

Two methods share one kernel (:func:`merge_block`, which folds a block of squared distances
``|q|^2 + |c|^2 - 2 q.c`` into per-query sorted top-k lists):

* :func:`exact_knn` -- every query against every row, in query blocks.
* :func:`cell_probe_knn` -- the rows are cut into ``n_cells`` k-means cells; each query scans
  the cells of its ``n_probe`` nearest centroids.  Unlike an IVF index, the scan of a cell is
  one GEMM of *all* queries that probe it against its members, so it runs at BLAS speed.
* :func:`probe_search` -- the same scan for queries that are not rows of the data, over cells
  laid out by the caller (new points placed on a map; one group of cells on a Dask worker).

Neighbour lists include the query itself; distances are Euclidean, recomputed exactly
(not through the norm identity) for the final k, so a row's distance to itself is 0.
"""

from __future__ import annotations

import numba
import numpy as np

from tessera_gpu.backends.cpu_kmeans import lloyd
from tessera_gpu.backends.cpu_pca import fit_pca
from tessera_gpu.projection.parallel import kernel

__all__ = [
    "cell_probe_knn",
    "exact_knn",
    "nearest_centroids",
    "probe_search",
    "reranked_search",
]

_BLOCK_BYTES = 32 * 2**20  # GEMM output per block (smaller blocks starve BLAS)


@kernel
def merge_block(gram, q_rows, q_norms, c_rows, c_norms, best_d, best_i):  # pragma: no cover
    b, m = gram.shape
    k = best_d.shape[1]
    for r in numba.prange(b):
        q = q_rows[r]
        worst = best_d[q, k - 1]
        for c in range(m):
            d = q_norms[r] + c_norms[c] - 2.0 * gram[r, c]
            if d < worst:
                pos = k - 1
                while pos > 0 and best_d[q, pos - 1] > d:
                    best_d[q, pos] = best_d[q, pos - 1]
                    best_i[q, pos] = best_i[q, pos - 1]
                    pos -= 1
                best_d[q, pos] = d
                best_i[q, pos] = c_rows[c]
                worst = best_d[q, k - 1]


@kernel
def exact_distances(data, queries, best_i):  # pragma: no cover - compiled
    n, k = best_i.shape
    out = np.empty((n, k), dtype=np.float32)
    for r in numba.prange(n):
        for j in range(k):
            c = best_i[r, j]
            if c < 0:
                out[r, j] = np.inf
                continue
            acc = 0.0
            for t in range(data.shape[1]):
                diff = queries[r, t] - data[c, t]
                acc += diff * diff
            out[r, j] = np.sqrt(acc)
    return out


def _sorted_by_distance(dist: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(dist, axis=1, kind="stable")
    return np.take_along_axis(idx, order, 1), np.take_along_axis(dist, order, 1)


def _empty(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((n, k), np.inf, dtype=np.float32), np.full((n, k), -1, dtype=np.int64)


def _sq_norms(a: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, a, dtype=np.float32)


def blocked_search(data: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of every query over every data row; returns (squared-ish dists, indices)."""
    best_d, best_i = _empty(len(queries), k)
    d_norms, q_norms = _sq_norms(data), _sq_norms(queries)
    rows = np.arange(len(data), dtype=np.int64)
    block = max(16, _BLOCK_BYTES // (4 * max(1, len(data))))
    for start in range(0, len(queries), block):
        stop = min(start + block, len(queries))
        gram = queries[start:stop] @ data.T
        q_rows = np.arange(start, stop, dtype=np.int64)
        merge_block(gram, q_rows, q_norms[start:stop], rows, d_norms, best_d, best_i)
    return best_d, best_i


def exact_knn(
    data: np.ndarray, k: int, *, queries: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of ``data`` for each row of ``queries`` (default: ``data``).

    Returns ``(indices int64 (q, k), distances float32 (q, k))`` sorted by distance.
    """
    queries = data if queries is None else queries
    k = min(k, len(data))
    _, idx = blocked_search(data, queries, k)
    return _sorted_by_distance(exact_distances(data, queries, idx), idx)


def nearest_centroids(data: np.ndarray, centroids: np.ndarray, p: int) -> np.ndarray:
    """Indices ``(n, p)`` of each row's ``p`` nearest centroids, nearest first."""
    _, best_i = blocked_search(centroids, data, min(p, len(centroids)))
    return best_i


def key_ranges(sorted_keys: np.ndarray, n_groups: int) -> np.ndarray:
    """``ptr`` with ``ptr[g]:ptr[g+1]`` the run of key ``g`` in ``sorted_keys``."""
    ptr = np.zeros(n_groups + 1, dtype=np.int64)
    np.cumsum(np.bincount(sorted_keys, minlength=n_groups), out=ptr[1:])
    return ptr


def _scan_cells(data, ptr, askers, a_ptr, best_d, best_i):  # type: ignore[no-untyped-def]
    """Fold each cell's members into the top-k of the rows in ``askers`` that probe it.

    ``askers=None`` means every cell is asked by its own members (the first pass).
    """
    norms = _sq_norms(data)
    for cell in range(len(ptr) - 1):
        start, stop = int(ptr[cell]), int(ptr[cell + 1])
        if askers is None:
            q_rows = np.arange(start, stop, dtype=np.int64)
        else:
            q_rows = askers[a_ptr[cell] : a_ptr[cell + 1]]
        if stop == start or len(q_rows) == 0:
            continue
        queries = data[start:stop] if askers is None else data[q_rows]
        gram = queries @ data[start:stop].T
        cols = np.arange(start, stop, dtype=np.int64)
        merge_block(gram, q_rows, norms[q_rows], cols, norms[start:stop], best_d, best_i)


def cell_probe_knn(
    data: np.ndarray,
    k: int,
    *,
    n_cells: int,
    n_probe: int,
    seed: int = 0,
    train_size: int = 50_000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Approximate kNN of every row among the rows (see the module docstring).

    Rows are first sorted by cell, so a cell's members are one contiguous slice, and every row
    scans its own (nearest) cell before the others, which fills its top-k with near
    candidates early and keeps later insertions rare.  Returns ``(indices, distances,
    cell_labels)``; the projection reuses the cells for its coarse spectral initialisation.
    """
    n = len(data)
    rng = np.random.default_rng(seed)
    train = data[np.sort(rng.choice(n, min(n, train_size), replace=False))]
    centroids = lloyd(train, n_cells, n_iter=8, seed=seed, init="random").centroids
    probes = nearest_centroids(data, centroids, n_probe)
    order = np.argsort(probes[:, 0], kind="stable")
    ordered = np.ascontiguousarray(data[order])
    probes = probes[order]
    ptr = key_ranges(probes[:, 0], n_cells)
    best_d, best_i = _empty(n, k)
    _scan_cells(ordered, ptr, None, None, best_d, best_i)
    if probes.shape[1] > 1:
        others = probes[:, 1:].ravel()
        a_order = np.argsort(others, kind="stable")
        askers = a_order // (probes.shape[1] - 1)
        _scan_cells(ordered, ptr, askers, key_ranges(others[a_order], n_cells), best_d, best_i)
    idx, dist = _sorted_by_distance(exact_distances(ordered, ordered, best_i), best_i)
    result_i = np.empty_like(idx)
    result_d = np.empty_like(dist)
    result_i[order] = order[idx]
    result_d[order] = dist
    labels = np.empty(n, dtype=np.int64)
    labels[order] = probes[:, 0]
    return result_i, result_d, labels


def reranked_search(
    data: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    reduce_to: int = 64,
    reduce_above: float = 1e11,
    margin: int = 32,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of ``data`` for each query, with exact Euclidean distances.

    Problems under ``reduce_above`` multiply-adds, or narrower than ``2 * reduce_to``, are
    searched exactly.  Others take ``k + margin`` candidates from a ``reduce_to``-dim PCA
    space and re-rank them exactly in the full space: the answer is exact unless a true
    neighbour falls outside the candidates there.
    """
    k = min(k, len(data))
    work = float(len(data)) * len(queries) * data.shape[1]
    if data.shape[1] <= 2 * reduce_to or work < reduce_above:
        return exact_knn(data, k, queries=queries)
    pca = fit_pca(data, reduce_to, seed=seed)
    _, candidates = blocked_search(pca.apply(data), pca.apply(queries), min(len(data), k + margin))
    idx, dist = _sorted_by_distance(exact_distances(data, queries, candidates), candidates)
    return np.ascontiguousarray(idx[:, :k]), np.ascontiguousarray(dist[:, :k])


def probe_search(
    data: np.ndarray, ptr: np.ndarray, queries: np.ndarray, probes: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of ``data`` for each query, among the cells the query probes.

    ``data`` is sorted by cell (cell ``c`` is ``data[ptr[c]:ptr[c + 1]]``); ``probes[q]`` lists
    the cells query ``q`` scans (``-1``: none). Each cell is one GEMM of all its askers against
    its members. Returns ``(indices into data (q, k), squared distances (q, k))``, nearest
    first; ``-1`` / ``inf`` where fewer than ``k`` were scanned. The squared distances come from
    the norm identity: re-rank them where exact values matter.
    """
    best_d, best_i = _empty(len(queries), k)
    d_norms, q_norms = _sq_norms(data), _sq_norms(queries)
    flat = probes.ravel()
    ok = flat >= 0
    cells = flat[ok]
    askers = np.flatnonzero(ok) // max(1, probes.shape[1])
    order = np.argsort(cells, kind="stable")
    cells, askers = cells[order], askers[order].astype(np.int64)
    a_ptr = key_ranges(cells, len(ptr) - 1)
    for cell in range(len(ptr) - 1):
        start, stop = int(ptr[cell]), int(ptr[cell + 1])
        q_rows = askers[a_ptr[cell] : a_ptr[cell + 1]]
        if stop == start or len(q_rows) == 0:
            continue
        gram = queries[q_rows] @ data[start:stop].T
        cols = np.arange(start, stop, dtype=np.int64)
        merge_block(gram, q_rows, q_norms[q_rows], cols, d_norms[start:stop], best_d, best_i)
    return best_i, best_d  # merge_block keeps each list sorted
