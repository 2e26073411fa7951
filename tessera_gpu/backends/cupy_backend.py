"""The CuPy backend: embeddings in GPU memory, exact kNN and Lloyd's K-means on the GPU.

This is the only module (with its :mod:`.cupy_knn` / :mod:`.cupy_kmeans` helpers and the
cuML backend built on it) that imports cupy.  The projection's graph, initialisation and
layout still run on the CPU (numba, all cores) from the GPU-built kNN table.
"""

from __future__ import annotations

from typing import Any

import cupy as cp
import numpy as np

from tessera_gpu.backends import COARSE_ABOVE, Neighbors
from tessera_gpu.backends.cupy_kmeans import lloyd
from tessera_gpu.backends.cupy_knn import exact_search
from tessera_gpu.backends.rows import as_rows, check_embeddings
from tessera_gpu.errors import InvalidRequest

__all__ = ["CupyBackend", "gpu_present"]

H2D_BLOCK_BYTES = 256 << 20  # float64 input is converted on the host this much at a time


def gpu_present() -> tuple[bool, str]:
    """``(True, description)`` when CUDA reports at least one device."""
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError, missing driver, ...
        return False, f"no usable CUDA device ({exc})"
    if count < 1:
        return False, "no CUDA device found"
    return True, f"{count} CUDA device(s)"


def _device_name() -> str:
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


class CupyBackend:
    """GPU backend on plain CuPy (no RAPIDS needed)."""

    name = "cupy"
    coarse_above = COARSE_ABOVE  # rows above which neighbors() also returns cells

    def __init__(self) -> None:
        self.device = _device_name()

    def describe(self) -> dict[str, Any]:
        """Name, device, free/total GPU memory (GiB) and the CUDA runtime version."""
        free, total = cp.cuda.runtime.memGetInfo()
        return {
            "name": self.name,
            "device": self.device,
            "gpu_memory_free_gib": round(free / 2**30, 2),
            "gpu_memory_total_gib": round(total / 2**30, 2),
            "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
            "cupy": cp.__version__,
        }

    # ---- arrays -----------------------------------------------------------------------

    def to_device(self, embeddings: np.ndarray) -> cp.ndarray:
        """One host-to-device copy of float32 data (float64 is converted block by block)."""
        check_embeddings(embeddings)
        if embeddings.dtype == np.float32:
            return cp.ascontiguousarray(cp.asarray(embeddings))
        n, d = embeddings.shape
        out = cp.empty((n, d), dtype=cp.float32)
        step = max(1, H2D_BLOCK_BYTES // (8 * d))
        for start in range(0, n, step):
            block = np.ascontiguousarray(embeddings[start : start + step], dtype=np.float32)
            out[start : start + step] = cp.asarray(block)
        return out

    def take(self, x: cp.ndarray, rows: np.ndarray) -> cp.ndarray:
        """Rows ``rows`` of ``x``, gathered on the device."""
        return x[cp.asarray(as_rows(rows, len(x)))]

    def to_host(self, x: Any) -> np.ndarray:
        return cp.asnumpy(x) if isinstance(x, cp.ndarray) else np.asarray(x)

    def n_rows(self, x: cp.ndarray) -> int:
        return int(x.shape[0])

    def _subset(self, x: cp.ndarray, rows: np.ndarray | None) -> tuple[cp.ndarray, np.ndarray]:
        if rows is None:
            return x, np.arange(len(x), dtype=np.int64)
        picked = as_rows(rows, len(x))
        return x[cp.asarray(picked)], picked

    # ---- neighbours -------------------------------------------------------------------

    def neighbors(self, x: cp.ndarray, k: int, *, seed: int = 0) -> Neighbors:
        """Exact kNN table on the GPU; above COARSE_ABOVE rows also a k-means cell partition."""
        idx, dist = exact_search(x, x, min(k, len(x)))
        cells = None
        if len(x) > self.coarse_above:
            n_cells = max(8, int(np.sqrt(len(x))))
            _, labels, _ = lloyd(x, n_cells, n_iter=5, seed=seed)
            cells = cp.asnumpy(labels)
        return Neighbors(cp.asnumpy(idx), cp.asnumpy(dist), "exact-gpu", cells)

    def knn(
        self, x: cp.ndarray, k: int, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact ``(indices, distances)``; global row numbers, each row first in its list."""
        if k < 1:
            raise InvalidRequest(f"k must be at least 1: got {k}")
        data, picked = self._subset(x, rows)
        idx, dist = exact_search(data, data, min(k, len(data)))
        return picked[cp.asnumpy(idx)], cp.asnumpy(dist)

    def nearest_rows(
        self, x: cp.ndarray, points: np.ndarray, count: int, *, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``count`` rows (global indices) nearest each of ``points``, and distances."""
        data, picked = self._subset(x, rows)
        queries = cp.asarray(np.ascontiguousarray(points, dtype=np.float32))
        idx, dist = exact_search(data, queries, count)
        return picked[cp.asnumpy(idx)], cp.asnumpy(dist)

    def nearest_sample_distances(
        self, x: cp.ndarray, query_rows: np.ndarray, sample_rows: np.ndarray
    ) -> np.ndarray:
        """Distance from each query row to its nearest sampled row (float32)."""
        queries = x[cp.asarray(as_rows(query_rows, len(x)))]
        sample = x[cp.asarray(as_rows(sample_rows, len(x)))]
        if len(sample) == 0:
            raise InvalidRequest("the sample is empty: nothing to measure distances to")
        _, dist = exact_search(sample, queries, 1)
        return cp.asnumpy(dist[:, 0]).astype(np.float32)

    # ---- clustering -------------------------------------------------------------------

    def kmeans(
        self, x: cp.ndarray, k: int, *, rows: np.ndarray | None, seed: int, n_iter: int
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """``(centroids, labels, inertia)`` of Lloyd's K-means on the GPU (k-means++ seeds)."""
        data, _ = self._subset(x, rows)
        centroids, labels, inertia = lloyd(data, k, n_iter=n_iter, seed=seed)
        return cp.asnumpy(centroids), cp.asnumpy(labels), inertia
