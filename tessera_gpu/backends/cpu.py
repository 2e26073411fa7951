"""The CPU backend: numpy arrays in host memory, BLAS for distances, numba for the rest.

kNN for the projection (:meth:`CpuBackend.neighbors`) is where the CPU path wins its speed:
wide embeddings go through a 64-dimensional PCA (fitted on 10k rows), then an exact search
for up to ``COARSE_ABOVE`` (25k) rows, or a cell-probe search
(:func:`.cpu_knn.cell_probe_knn`) above that.
"""

from __future__ import annotations

import os
from typing import Any

import numba
import numpy as np

from tessera_gpu.backends.cpu_cosine import cosine_knn
from tessera_gpu.backends.cpu_kmeans import kmeans as cpu_kmeans
from tessera_gpu.backends.cpu_knn import (
    cell_probe_knn,
    exact_distances,
    exact_knn,
    merge_block,
    reranked_search,
)
from tessera_gpu.backends.cpu_pca import fit_pca
from tessera_gpu.backends.protocol import COARSE_ABOVE, Neighbors
from tessera_gpu.backends.rows import as_rows, check_embeddings
from tessera_gpu.errors import InvalidRequest

__all__ = ["CpuBackend", "nearest_rows"]

REDUCE_TO = 64  # PCA width used for kNN candidates
_BLOCK_BYTES = 32 * 2**20  # GEMM output per block


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _probe_plan(n: int) -> tuple[int, int]:
    """``(n_cells, n_probe)`` for the cell-probe search: ~sqrt(n) cells, 8 probed."""
    return max(8, int(np.sqrt(n))), 8


def nearest_rows(data: np.ndarray, points: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` rows nearest each point, exactly: ``(indices int64, Euclidean
    distances float32)``, nearest first.  Blocks of rows against all points, so the rows are
    read once however many points there are (the centroids of a large K-means).  Equal
    distances are ordered by row."""
    points = np.ascontiguousarray(points, dtype=np.float32)
    count = min(count, len(data))
    best_d = np.full((len(points), count), np.inf, dtype=np.float32)
    best_i = np.full((len(points), count), -1, dtype=np.int64)
    every = np.arange(len(points), dtype=np.int64)
    p_norms = _sq_norms(points)
    step = max(64, _BLOCK_BYTES // (4 * max(1, len(points))))
    for start in range(0, len(data), step):
        block = data[start : start + step]
        cols = np.arange(start, start + len(block), dtype=np.int64)
        merge_block(points @ block.T, every, p_norms, cols, _sq_norms(block), best_d, best_i)
    dist = exact_distances(data, points, best_i)
    order = np.lexsort((best_i, dist), axis=1)  # ties by row, as a merge of shards orders them
    return np.take_along_axis(best_i, order, 1), np.take_along_axis(dist, order, 1)


def _sq_norms(a: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, a, dtype=np.float32)


class CpuBackend:
    """Host-memory backend. ``to_device`` returns the array itself (float32, C order)."""

    name = "cpu"
    coarse_above = COARSE_ABOVE  # rows above which neighbors() also returns cells
    fallback_reason: str | None = None  # set by get_backend("auto") when no GPU was usable

    def __init__(self) -> None:
        self.device = f"CPU ({_cores()} cores)"

    def describe(self) -> dict[str, Any]:
        """Name, device, cores, numba threads, and why ``auto`` did not pick a GPU (if so)."""
        out: dict[str, Any] = {
            "name": self.name,
            "device": self.device,
            "cores": _cores(),
            "threads": numba.get_num_threads(),
        }
        if self.fallback_reason:
            out["gpu_fallback"] = self.fallback_reason
        return out

    # ---- arrays -----------------------------------------------------------------------

    def to_device(self, embeddings: np.ndarray) -> np.ndarray:
        """The embeddings as float32 C-contiguous; no copy when they already are."""
        check_embeddings(embeddings)
        return np.ascontiguousarray(embeddings, dtype=np.float32)

    def take(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` of ``x`` (a copy)."""
        return x[as_rows(rows, len(x))]

    def to_host(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def n_rows(self, x: np.ndarray) -> int:
        return int(x.shape[0])

    def _subset(self, x: np.ndarray, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if rows is None:
            return x, np.arange(len(x), dtype=np.int64)
        picked = as_rows(rows, len(x))
        return x[picked], picked

    # ---- neighbours -------------------------------------------------------------------

    def neighbors(self, x: np.ndarray, k: int, *, seed: int = 0) -> Neighbors:
        """kNN table of all rows (itself included) for the projection; see the module doc."""
        n, d = x.shape
        k = min(k, n)
        prefix = ""
        data = x
        if d > 2 * REDUCE_TO and n > 4 * REDUCE_TO:
            data = fit_pca(x, REDUCE_TO, seed=seed).apply(x)
            prefix = f"pca{REDUCE_TO}+"
        if n <= self.coarse_above:
            idx, dist = exact_knn(data, k)
            return Neighbors(idx, dist, prefix + "exact")
        n_cells, n_probe = _probe_plan(n)
        idx, dist, cells = cell_probe_knn(data, k, n_cells=n_cells, n_probe=n_probe, seed=seed)
        return Neighbors(idx, dist, f"{prefix}cell-probe({n_cells}x{n_probe})", cells)

    def cosine_knn(
        self,
        x: np.ndarray,
        k: int,
        *,
        seed: int = 0,
        reduction: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> Neighbors:
        """Each row's ``k`` nearest rows by cosine distance (itself first), with exact
        distances: k-means cells of the PCA-64 rows compared on the full vectors
        (:mod:`.cpu_cosine`); ``reduction`` (norms, reduced) is reused, not computed again."""
        norms, reduced = reduction if reduction is not None else (None, None)
        idx, dist, method = cosine_knn(x, k, seed=seed, norms=norms, reduced=reduced)
        return Neighbors(idx, dist, method)

    def knn(
        self, x: np.ndarray, k: int, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(indices, distances)`` of each row's ``k`` nearest rows among ``rows``.

        Indices are global row numbers; each row's first neighbour is itself (distance 0).
        """
        data, picked = self._subset(x, rows)
        if k < 1:
            raise InvalidRequest(f"k must be at least 1: got {k}")
        nb = self.neighbors(data, k)
        return picked[nb.indices], nb.distances

    def nearest_rows(
        self, x: np.ndarray, points: np.ndarray, count: int, *, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``count`` rows (global indices) nearest each of ``points``, exactly, and their
        distances (:func:`nearest_rows`)."""
        data, picked = self._subset(x, rows)
        idx, dist = nearest_rows(data, points, count)
        return picked[idx], dist

    def nearest_sample_distances(
        self, x: np.ndarray, query_rows: np.ndarray, sample_rows: np.ndarray
    ) -> np.ndarray:
        """Distance from each query row to its nearest sampled row (float32)."""
        queries = x[as_rows(query_rows, len(x))]
        sample = x[as_rows(sample_rows, len(x))]
        if len(sample) == 0:
            raise InvalidRequest("the sample is empty: nothing to measure distances to")
        _, dist = reranked_search(sample, queries, 1, reduce_to=REDUCE_TO)
        return np.ascontiguousarray(dist[:, 0], dtype=np.float32)

    # ---- clustering -------------------------------------------------------------------

    def kmeans(
        self, x: np.ndarray, k: int, *, rows: np.ndarray | None, seed: int, n_iter: int
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """``(centroids, labels, inertia)`` of K-means over ``rows``: greedy k-means++ seeds,
        Lloyd's iterations (the first ones in a PCA space for wide rows) ending in the full
        space, at most ``n_iter`` per space (:mod:`.cpu_kmeans`)."""
        data, _ = self._subset(x, rows)
        fit = cpu_kmeans(data, k, n_iter=n_iter, seed=seed)
        return fit.centroids, fit.labels, fit.inertia
