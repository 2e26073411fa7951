"""What a 2-D map is made with (:class:`ProjectionParams`, every field part of the cache key)
and what it is (:class:`Projection`): shared by the projection, its cache and the cluster's
landmark projection."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tessera_gpu.errors import InvalidRequest

__all__ = ["Projection", "ProjectionParams"]


@dataclass(frozen=True)
class ProjectionParams:
    """UMAP parameters; every field is part of the cache key.

    * ``n_neighbors`` (15): neighbourhood size of the fuzzy graph.
    * ``min_dist`` (0.1) / ``spread`` (1.0): how tightly points pack in the map.
    * ``metric`` ("euclidean"): the only metric; normalise embeddings for cosine.
    * ``seed`` (0): same seed, same map (CPU backend).
    * ``n_epochs`` (None = auto): layout epochs; auto is umap-learn's 500 up to 10,000
      points and 200 up to 50,000, then 100 (from a spectral init that is enough; see
      benchmarks/README.md for the trustworthiness it keeps).
    * ``negative_sample_rate`` (5): repulsive samples per attractive one.
    """

    n_neighbors: int = 15
    min_dist: float = 0.1
    spread: float = 1.0
    metric: str = "euclidean"
    seed: int = 0
    n_epochs: int | None = None
    negative_sample_rate: int = 5

    def __post_init__(self) -> None:
        if not 2 <= self.n_neighbors <= 200:
            raise InvalidRequest(f"n_neighbors must be in 2..200: got {self.n_neighbors}")
        if not 0.0 <= self.min_dist <= self.spread:
            raise InvalidRequest(
                f"min_dist must be in 0..spread ({self.spread}): got {self.min_dist}"
            )
        if self.metric != "euclidean":
            raise InvalidRequest(f"unsupported metric {self.metric!r}: only 'euclidean'")
        if self.n_epochs is not None and not 1 <= self.n_epochs <= 5000:
            raise InvalidRequest(f"n_epochs must be in 1..5000: got {self.n_epochs}")
        if not 1 <= self.negative_sample_rate <= 50:
            raise InvalidRequest(
                f"negative_sample_rate must be in 1..50: got {self.negative_sample_rate}"
            )

    def epochs_for(self, n: int) -> int:
        """The layout epochs used for ``n`` points."""
        if self.n_epochs is not None:
            return self.n_epochs
        return 500 if n <= 10_000 else (200 if n <= 50_000 else 100)


@dataclass(frozen=True)
class Projection:
    """``coords``: ``(N, 2)`` float32 map; ``info``: backend, algorithm, kNN method, timings."""

    coords: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
