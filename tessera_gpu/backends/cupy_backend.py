"""The CuPy backend: embeddings in device memory, exact kNN and Lloyd's K-means on the device.

The device is a :class:`~.cupy_device.CupyDevice` on a GPU, or the numpy stand-in
(:class:`~.standin.NumpyDevice`, ``TESSERA_GPU_STANDIN=numpy``) that runs this same code on
the CPU for tests and rehearsals.  This module imports neither cupy nor cupyx: the kernels
(:mod:`.cupy_knn`, :mod:`.cupy_kmeans`) reach the arrays through ``device.xp``.  The
projection's graph, initialisation and layout run on the CPU (numba, all cores) from the
device-built kNN table.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tessera_gpu.backends.cupy_kmeans import lloyd
from tessera_gpu.backends.cupy_knn import exact_search, sq_norms
from tessera_gpu.backends.protocol import COARSE_ABOVE, Neighbors
from tessera_gpu.backends.rows import as_rows, check_embeddings, self_first
from tessera_gpu.errors import InvalidRequest

__all__ = ["H2D_BLOCK_BYTES", "CupyBackend"]

H2D_BLOCK_BYTES = 256 << 20  # float64 input is converted on the host this much at a time


class CupyBackend:
    """GPU backend on plain CuPy (no RAPIDS needed), or on the numpy stand-in."""

    name = "cupy"
    coarse_above = COARSE_ABOVE  # rows above which neighbors() also returns cells

    def __init__(self, device: Any = None) -> None:
        if device is None:
            from tessera_gpu.backends.cupy_device import CupyDevice

            device = CupyDevice()
        self.dev = device
        self.standin: str | None = device.standin
        self.device = device.label

    def describe(self) -> dict[str, Any]:
        """Name, device, and the device's own report (GPU memory, CUDA runtime; or stand-in)."""
        return {"name": self.name, "device": self.device, **self.dev.describe()}

    # ---- arrays -----------------------------------------------------------------------

    def to_device(self, embeddings: np.ndarray) -> Any:
        """One host-to-device copy of float32 data (other floats converted block by block)."""
        check_embeddings(embeddings)
        xp = self.dev.xp
        if embeddings.dtype == np.float32:
            return xp.ascontiguousarray(self.dev.asarray(embeddings))
        n, d = embeddings.shape
        out = xp.empty((n, d), dtype=xp.float32)
        step = max(1, H2D_BLOCK_BYTES // (8 * d))
        for start in range(0, n, step):
            block = np.ascontiguousarray(embeddings[start : start + step], dtype=np.float32)
            out[start : start + step] = self.dev.asarray(block)
        return out

    def take(self, x: Any, rows: np.ndarray) -> Any:
        """Rows ``rows`` of ``x``, gathered on the device."""
        return x[self.dev.asarray(as_rows(rows, len(x)))]

    def to_host(self, x: Any) -> np.ndarray:
        return self.dev.to_host(x)

    def n_rows(self, x: Any) -> int:
        return int(x.shape[0])

    def _subset(self, x: Any, rows: np.ndarray | None) -> tuple[Any, np.ndarray]:
        if rows is None:
            return x, np.arange(len(x), dtype=np.int64)
        picked = as_rows(rows, len(x))
        return x[self.dev.asarray(picked)], picked

    # ---- neighbours -------------------------------------------------------------------

    def neighbors(self, x: Any, k: int, *, seed: int = 0) -> Neighbors:
        """Exact kNN table on the device; above ``coarse_above`` rows also a k-means cell
        partition (about sqrt(n) cells) for the projection's coarse initialisation."""
        host = self.dev.to_host
        idx, dist = exact_search(self.dev, x, x, min(k, len(x)))
        cells = None
        if len(x) > self.coarse_above:
            n_cells = max(8, int(np.sqrt(len(x))))
            _, labels, _ = lloyd(self.dev, x, n_cells, n_iter=5, seed=seed)
            cells = host(labels)
        method = "exact-gpu" if self.standin is None else f"exact-{self.standin}-standin"
        return Neighbors(host(idx), host(dist), method, cells)

    def cosine_knn(
        self,
        x: Any,
        k: int,
        *,
        seed: int = 0,
        reduction: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> Neighbors:
        """Each row's ``k`` nearest rows by cosine distance (itself first): an exact search of
        the unit rows on the device (cosine distance = half the squared Euclidean one); an
        exact search needs no ``reduction``."""
        xp = self.dev.xp
        norms = xp.sqrt(sq_norms(self.dev, x))
        unit = x / xp.where(norms > 0, norms, xp.float32(1.0))[:, None]
        idx, dist = exact_search(self.dev, unit, unit, min(k, len(x)))
        cosine = np.clip(self.dev.to_host(dist).astype(np.float32) ** 2 / 2, 0.0, 2.0)
        idx = self.dev.to_host(idx).astype(np.int64)
        fixed = self_first(idx)
        moved = ~(fixed == idx).all(axis=1)
        for i in np.flatnonzero(moved):  # exact duplicates put another row first: reorder
            where = {int(r): j for j, r in enumerate(idx[i])}
            cosine[i] = [0.0 if r == i else cosine[i, where[r]] if r in where else np.inf
                         for r in fixed[i]]  # fmt: skip
        method = "exact-gpu" if self.standin is None else f"exact-{self.standin}-standin"
        return Neighbors(fixed, cosine, f"{method}-cosine")

    def knn(self, x: Any, k: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact ``(indices, distances)``; global row numbers, nearest first, ties by row."""
        if k < 1:
            raise InvalidRequest(f"k must be at least 1: got {k}")
        data, picked = self._subset(x, rows)
        idx, dist = exact_search(self.dev, data, data, min(k, len(data)))
        return picked[self.dev.to_host(idx)], self.dev.to_host(dist)

    def nearest_rows(
        self, x: Any, points: np.ndarray, count: int, *, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``count`` rows (global indices) nearest each of ``points``, and distances."""
        data, picked = self._subset(x, rows)
        queries = self.dev.asarray(np.ascontiguousarray(points, dtype=np.float32))
        idx, dist = exact_search(self.dev, data, queries, count)
        return picked[self.dev.to_host(idx)], self.dev.to_host(dist)

    def nearest_sample_distances(
        self, x: Any, query_rows: np.ndarray, sample_rows: np.ndarray
    ) -> np.ndarray:
        """Distance from each query row to its nearest sampled row (float32)."""
        queries = x[self.dev.asarray(as_rows(query_rows, len(x)))]
        sample = x[self.dev.asarray(as_rows(sample_rows, len(x)))]
        if len(sample) == 0:
            raise InvalidRequest("the sample is empty: nothing to measure distances to")
        _, dist = exact_search(self.dev, sample, queries, 1)
        return self.dev.to_host(dist[:, 0]).astype(np.float32)

    # ---- clustering -------------------------------------------------------------------

    def kmeans(
        self, x: Any, k: int, *, rows: np.ndarray | None, seed: int, n_iter: int
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """``(centroids, labels, inertia)`` of Lloyd's K-means on the device (k-means++ seeds);
        the same seed gives the same result, and the inertia is exact fp32."""
        data, _ = self._subset(x, rows)
        centroids, labels, inertia = lloyd(self.dev, data, k, n_iter=n_iter, seed=seed)
        return self.dev.to_host(centroids), self.dev.to_host(labels), inertia
