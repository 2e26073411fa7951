"""What every compute backend offers (:class:`Backend`), the kNN table they return and the
constants they share. The concrete backends import this module, never the package (whose
``get_backend`` imports them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["COARSE_ABOVE", "KMEANS_MAX_ITER", "KMEANS_TOL", "Backend", "Neighbors"]

# Above this many rows, ``neighbors`` also returns a coarse cell partition of the rows, which
# the projection uses for a cheap spectral initialisation and a cache-friendly row order.
COARSE_ABOVE = 25_000
# Every backend's K-means: greedy k-means++ seeds (2 + ln k local trials), then Lloyd's
# iterations until one changes no label or lowers the inertia by less than KMEANS_TOL of it,
# at most n_iter (default KMEANS_MAX_ITER, scikit-learn's max_iter).
KMEANS_MAX_ITER = 300
KMEANS_TOL = 1e-4


@dataclass(frozen=True)
class Neighbors:
    """A kNN table: row ``i`` lists its ``k`` nearest rows (itself first), nearest first.

    ``method`` says how it was built (e.g. ``"exact"``, ``"pca64+cell-probe(447x8)"``);
    ``cells`` is a coarse partition of the rows found on the way (or None), which the
    projection reuses for its initialisation and memory layout.
    """

    indices: np.ndarray
    distances: np.ndarray
    method: str
    cells: np.ndarray | None = None


@runtime_checkable
class Backend(Protocol):
    """What projection, clustering and sampling need from a compute backend."""

    name: str
    device: str

    def describe(self) -> dict[str, Any]: ...

    def to_device(self, embeddings: np.ndarray) -> Any: ...

    def take(self, x: Any, rows: np.ndarray) -> Any: ...

    def to_host(self, x: Any) -> np.ndarray: ...

    def n_rows(self, x: Any) -> int: ...

    def knn(
        self, x: Any, k: int, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def neighbors(self, x: Any, k: int, *, seed: int = 0) -> Neighbors: ...

    def cosine_knn(
        self,
        x: Any,
        k: int,
        *,
        seed: int = 0,
        reduction: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> Neighbors:
        """``reduction``: ``(norms, reduced)`` of ``x`` on the host (:func:`.cpu_cosine.
        normalized_pca`, same seed) when the caller has them: the CPU tier cuts its cells
        in them; a GPU searches exactly and needs none."""
        ...

    def kmeans(
        self, x: Any, k: int, *, rows: np.ndarray | None, seed: int, n_iter: int
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """``(centroids, labels, inertia)``: greedy k-means++ seeds, Lloyd's iterations until
        one lowers the inertia by less than ``KMEANS_TOL`` of it (or changes no label), at
        most ``n_iter``; the full space's answer."""
        ...

    def nearest_rows(
        self, x: Any, points: np.ndarray, count: int, *, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def nearest_sample_distances(
        self, x: Any, query_rows: np.ndarray, sample_rows: np.ndarray
    ) -> np.ndarray: ...
