"""K-means and the diversity sample it serves, on any backend.

What every backend's K-means does (the CPU tier: :mod:`tessera_gpu.backends.cpu_kmeans`):
greedy k-means++ seeds -- each step draws ``2 + ln k`` candidate rows by D² sampling and keeps
the one that lowers the potential most, as scikit-learn does -- then Lloyd's iterations until
one changes no label or lowers the inertia by less than ``KMEANS_TOL`` (1e-4) of its value,
at most ``n_iter`` (``KMEANS_MAX_ITER``, 300; both in :mod:`tessera_gpu.backends`).
Centroids, labels and inertia are those of the full space.

``diversity_sample(x, n, ...)`` clusters the chosen rows into ``k = n`` clusters and returns,
per cluster, the episode nearest its centroid in the full space (an exact search).  When two
centroids share a nearest episode, the centroid closer to it keeps it and the other takes its
next nearest free episode, so the ``n`` returned rows are always distinct.  Centroids are
served in order of their distance to their nearest episode (ties by cluster number), which
makes the result a pure function of the data, ``rows`` and ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tessera_gpu.backends import KMEANS_MAX_ITER, Backend
from tessera_gpu.backends.rows import as_rows
from tessera_gpu.errors import InvalidRequest

__all__ = [
    "KMeansResult",
    "diversity_sample",
    "kmeans",
    "nearest_sample_distances",
]

CANDIDATES = 8  # nearest episodes fetched per centroid before falling back to a wider search


@dataclass(frozen=True)
class KMeansResult:
    """``centroids (k, D)`` float32, ``labels`` int64 (one per row of the clustered subset,
    in the order of ``rows``), ``inertia`` = sum of squared distances to the own centroid."""

    centroids: np.ndarray
    labels: np.ndarray
    inertia: float


def _rows(x: Any, rows: np.ndarray | None, backend: Backend) -> np.ndarray:
    n_total = backend.n_rows(x)
    if rows is None:
        return np.arange(n_total, dtype=np.int64)
    return as_rows(rows, n_total)


def kmeans(
    x: Any,
    k: int,
    *,
    backend: Backend,
    rows: np.ndarray | None = None,
    seed: int = 0,
    n_iter: int = KMEANS_MAX_ITER,
) -> KMeansResult:
    """K-means over ``rows`` (default: all rows) of ``x``, as the module docstring says.

    ``x`` is the backend's device array; ``n_iter`` caps Lloyd's iterations.  Raises
    :class:`InvalidRequest` unless ``1 <= k <= rows``.
    """
    subset = _rows(x, rows, backend)
    if not 1 <= k <= len(subset):
        raise InvalidRequest(
            f"K-means needs 1 <= k <= {len(subset):,} (the number of rows): got k={k:,}"
        )
    if n_iter < 0:
        raise InvalidRequest(f"n_iter must be >= 0: got {n_iter}")
    centroids, labels, inertia = backend.kmeans(
        x, k, rows=None if rows is None else subset, seed=seed, n_iter=n_iter
    )
    return KMeansResult(
        np.asarray(centroids, dtype=np.float32),
        np.asarray(labels, dtype=np.int64),
        float(inertia),
    )


def greedy_pick(
    cand: np.ndarray, dist: np.ndarray, todo: np.ndarray, taken: set[int], picked: np.ndarray
) -> np.ndarray:
    """Give centroid ``todo[i]`` its nearest untaken row among ``cand[i]``, nearest centroids
    first; return the centroids whose candidates were all taken."""
    left = []
    for i in np.lexsort((todo, dist[:, 0])):
        free = next((int(r) for r in cand[i] if int(r) not in taken), None)
        if free is None:
            left.append(int(todo[i]))
            continue
        taken.add(free)
        picked[todo[i]] = free
    return np.asarray(left, dtype=np.int64)


def diversity_sample(
    x: Any,
    n: int,
    *,
    backend: Backend,
    rows: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """``n`` distinct global row indices (int64): one episode per K-means cluster (k = n).

    Raises :class:`InvalidRequest` when ``n < 1`` or ``n`` exceeds the number of rows.
    """
    subset = _rows(x, rows, backend)
    if n < 1 or n > len(subset):
        raise InvalidRequest(
            f"a K-means sample needs 1 <= n <= {len(subset):,} (the matching episodes): got n={n:,}"
        )
    result = kmeans(x, n, backend=backend, rows=rows, seed=seed)  # None: no subset copy
    sub = None if rows is None else subset
    picked = np.full(n, -1, dtype=np.int64)
    taken: set[int] = set()
    todo = np.arange(n)
    count = min(CANDIDATES, len(subset))
    while len(todo):  # ends: with count = all rows, every centroid finds a free one
        cand, dist = backend.nearest_rows(x, result.centroids[todo], count, rows=sub)
        todo = greedy_pick(np.asarray(cand), np.asarray(dist), todo, taken, picked)
        count = min(count * 4, len(subset))
    return picked


def nearest_sample_distances(
    x: Any,
    query_rows: np.ndarray,
    sample_rows: np.ndarray,
    *,
    backend: Backend,
) -> np.ndarray:
    """Euclidean distance (float32) from each query row to its nearest row of the sample.

    Used to compare how well a sample covers the data against a random sample of equal size.
    """
    total = backend.n_rows(x)
    queries, sample = as_rows(query_rows, total), as_rows(sample_rows, total)
    if len(sample) == 0:
        raise InvalidRequest("the sample is empty: nothing to measure distances to")
    if len(queries) == 0:
        return np.zeros(0, dtype=np.float32)
    out = backend.nearest_sample_distances(x, queries, sample)
    return np.asarray(out, dtype=np.float32)
