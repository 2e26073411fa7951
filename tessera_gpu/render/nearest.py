"""The episode nearest to a point of the map: a k-d tree over the projection, built once.

With a filter, the search runs over a tree of the matching points only (built once per
filter and kept in a small LRU), so the answer is always the nearest *match*.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["NearestIndex"]

FILTERED_TREES = 8  # per projection


class NearestIndex:
    """Nearest-episode look-ups on one projection's ``(N, 2)`` coordinates."""

    def __init__(self, coords: np.ndarray) -> None:
        self.coords = np.ascontiguousarray(coords, dtype=np.float64)
        self._tree = cKDTree(self.coords)
        self._filtered: OrderedDict[str, tuple[cKDTree | None, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def nearest(
        self,
        x: float,
        y: float,
        *,
        radius: float | None = None,
        mask: np.ndarray | None = None,
        key: str = "",
    ) -> int | None:
        """The row of the nearest episode within ``radius`` (any distance when None).

        ``mask`` restricts the search to matching rows; ``key`` names that mask in the cache.
        Returns None when nothing qualifies.
        """
        tree, rows = (self._tree, None) if mask is None else self._subset(key, mask)
        if tree is None:
            return None
        bound = np.inf if radius is None else float(radius)
        dist, at = tree.query((x, y), k=1, distance_upper_bound=bound)
        if not np.isfinite(dist):
            return None
        return int(at if rows is None else rows[at])

    def _subset(self, key: str, mask: np.ndarray) -> tuple[cKDTree | None, np.ndarray]:
        with self._lock:
            if key in self._filtered:
                self._filtered.move_to_end(key)
                return self._filtered[key]
        rows = np.flatnonzero(mask)
        entry = (cKDTree(self.coords[rows]) if rows.size else None, rows)
        with self._lock:
            self._filtered[key] = entry
            while len(self._filtered) > FILTERED_TREES:
                self._filtered.popitem(last=False)
        return entry
