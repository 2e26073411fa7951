"""Placing new points on a fitted map with the map held fixed (UMAP's ``transform``).

The Dask scale-out (:mod:`tessera_gpu.distributed`) fits a map on a sample of *landmarks* with
:func:`~.project.project`, then places every other point on its own, so points placed by
different workers never interact:

1. its ``n_neighbors`` nearest landmarks, searched in a 64-d PCA of the landmarks (wide data) by
   a cell-probe search (8 of ``sqrt(L)`` cells, :func:`~tessera_gpu.backends.cpu_knn.probe_search`);
2. UMAP's membership strengths to them (``smooth_knn``, the nearest at strength 1);
3. a start at the strength-weighted mean of those landmarks' positions on the map;
4. :data:`PLACE_EPOCHS` epochs of UMAP's SGD at a quarter of the learning rate in which only the
   point moves: pulled toward its landmarks on their epochs-per-sample schedule, pushed away
   from ``negative_sample_rate`` random landmarks per pull.

This is umap-learn's ``UMAP.transform`` (and cuML's, which ``cuml.dask.manifold.UMAP`` runs on
every partition); the neighbour search differs, and every pull draws exactly
``negative_sample_rate`` negatives, as in :mod:`.layout`. Negatives come from a counter-based
hash of (seed, the point's global row, epoch, edge), so where a point lands depends only on the
landmarks, its vector and its row: not on the worker, the partition or the thread count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from tessera_gpu.backends.cpu_kmeans import lloyd
from tessera_gpu.backends.cpu_knn import exact_distances, nearest_centroids, probe_search
from tessera_gpu.backends.cpu_pca import Pca, fit_pca
from tessera_gpu.projection.graph import ab_params, sigmas_rhos
from tessera_gpu.projection.layout import MIX2, MIX3, clip_gradient, fast_pow, splitmix
from tessera_gpu.projection.parallel import kernel
from tessera_gpu.projection.project import ProjectionParams

__all__ = ["N_PROBE", "PLACE_EPOCHS", "LandmarkIndex", "build_landmark_index", "place"]

PLACE_EPOCHS = 30  # umap-learn's transform epochs above 10,000 points
N_PROBE = 8
REDUCE_TO = 64
_TRAIN_ROWS = 50_000


@dataclass(frozen=True, eq=False)
class LandmarkIndex:
    """Landmarks ready for placement: their map ``coords (L, 2)``, and a cell-probe index of
    their (PCA-reduced) vectors: ``reduced`` sorted by cell (``order[i]`` is the landmark at
    sorted position ``i``; cell ``c`` is ``reduced[ptr[c]:ptr[c + 1]]``) and the centroids."""

    coords: np.ndarray
    pca: Pca | None
    centroids: np.ndarray
    ptr: np.ndarray
    reduced: np.ndarray
    order: np.ndarray

    @property
    def n(self) -> int:
        return int(self.coords.shape[0])

    def reduce(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x if self.pca is None else self.pca.apply(x), dtype=np.float32)


def build_landmark_index(x: np.ndarray, coords: np.ndarray, *, seed: int = 0) -> LandmarkIndex:
    """Index the landmarks ``x (L, D)`` whose map positions are ``coords (L, 2)``."""
    n, d = x.shape
    pca = fit_pca(x, REDUCE_TO, seed=seed) if d > 2 * REDUCE_TO and n > 4 * REDUCE_TO else None
    reduced = x if pca is None else pca.apply(x)
    reduced = np.ascontiguousarray(reduced, dtype=np.float32)
    n_cells = max(1, min(n, int(np.sqrt(n))))
    rng = np.random.default_rng(seed)
    train = reduced[np.sort(rng.choice(n, min(n, _TRAIN_ROWS), replace=False))]
    centroids = lloyd(train, n_cells, n_iter=8, seed=seed, init="random").centroids
    labels = nearest_centroids(reduced, centroids, 1)[:, 0]
    order = np.argsort(labels, kind="stable")
    ptr = np.zeros(n_cells + 1, dtype=np.int64)
    np.cumsum(np.bincount(labels, minlength=n_cells), out=ptr[1:])
    return LandmarkIndex(
        coords=np.ascontiguousarray(coords, dtype=np.float32),
        pca=pca,
        centroids=np.ascontiguousarray(centroids, dtype=np.float32),
        ptr=ptr,
        reduced=np.ascontiguousarray(reduced[order]),
        order=order.astype(np.int64),
    )


def _neighbours(index: LandmarkIndex, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` nearest landmarks (ids, -1 if fewer) and distances in index space."""
    queries = index.reduce(x)
    probes = nearest_centroids(queries, index.centroids, min(N_PROBE, len(index.centroids)))
    cand, _ = probe_search(index.reduced, index.ptr, queries, probes, k)
    dist = exact_distances(index.reduced, queries, cand)
    order = np.argsort(dist, axis=1, kind="stable")
    cand, dist = np.take_along_axis(cand, order, 1), np.take_along_axis(dist, order, 1)
    ids = np.where(cand >= 0, index.order[np.maximum(cand, 0)], -1)
    return ids, dist


def _strengths(dist: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """UMAP memberships of each row's landmarks, the nearest at 1 (as a point's own row would be
    in the fitted graph: a zero column stands in for it)."""
    padded = np.hstack([np.zeros((len(dist), 1), np.float32), np.where(ok, dist, 0)])
    sigmas, rhos = sigmas_rhos(np.ascontiguousarray(padded, dtype=np.float32), 64)
    over = np.maximum(dist - rhos[:, None], 0.0)
    weights = np.exp(-over / np.maximum(sigmas[:, None], 1e-12))
    return np.where(ok, weights, 0.0).astype(np.float32)


@kernel
def _place(pos, nbr, eps, land, rows, n_epochs, a, b, n_neg, seed, alpha0):  # pragma: no cover
    n, k = nbr.shape
    n_land = land.shape[0]
    two_ab = np.float32(2.0 * a * b)
    two_b = np.float32(2.0 * b)
    a32 = np.float32(a)
    b32 = np.float32(b)
    for i in numba.prange(n):
        x = pos[i, 0]
        y = pos[i, 1]
        due = eps[i].copy()
        key = splitmix(np.uint64(seed) ^ (np.uint64(rows[i]) * MIX2))
        for e in range(n_epochs):
            step = np.float32(alpha0 * (1.0 - e / n_epochs))
            for j in range(k):
                m = nbr[i, j]
                if m < 0 or due[j] > e:
                    continue
                due[j] += eps[i, j]
                dx = x - land[m, 0]
                dy = y - land[m, 1]
                d2 = dx * dx + dy * dy
                if d2 > 0:
                    p = fast_pow(d2, b32)
                    g = -two_ab * p / (d2 * (a32 * p + np.float32(1.0)))
                    x += clip_gradient(g * dx) * step
                    y += clip_gradient(g * dy) * step
                base = key ^ (np.uint64(e * k + j) * MIX3)
                for t in range(n_neg):
                    h = splitmix(base + np.uint64(t))
                    r = np.int64(((h >> np.uint64(32)) * np.uint64(n_land)) >> np.uint64(32))
                    dx = x - land[r, 0]
                    dy = y - land[r, 1]
                    d2 = dx * dx + dy * dy
                    if d2 > 0:
                        p = fast_pow(d2, b32)
                        g = two_b / ((np.float32(0.001) + d2) * (a32 * p + np.float32(1.0)))
                        x += clip_gradient(g * dx) * step
                        y += clip_gradient(g * dy) * step
        pos[i, 0] = x
        pos[i, 1] = y


def place(
    index: LandmarkIndex,
    x: np.ndarray,
    rows: np.ndarray,
    *,
    params: ProjectionParams | None = None,
    n_epochs: int = PLACE_EPOCHS,
) -> np.ndarray:
    """Map positions ``(n, 2)`` float32 of the points ``x (n, D)`` (global row numbers ``rows``,
    which seed their negative samples) on the landmarks' fixed map; see the module docstring."""
    if len(x) == 0:
        return np.zeros((0, 2), dtype=np.float32)
    params = params or ProjectionParams()
    k = min(params.n_neighbors, index.n)
    ids, dist = _neighbours(index, np.ascontiguousarray(x, dtype=np.float32), k)
    ok = ids >= 0
    weights = _strengths(dist, ok)
    total = weights.sum(axis=1, keepdims=True)
    near = index.coords[np.maximum(ids, 0)]
    start = (weights[:, :, None] * near).sum(axis=1) / np.where(total > 0, total, 1.0)
    start = np.where(total > 0, start, near[:, 0])  # no strength at all: on the nearest
    with np.errstate(divide="ignore"):
        eps = np.where(weights > 0, 1.0 / weights, np.inf).astype(np.float32)
    a, b = ab_params(params.spread, params.min_dist)
    pos = np.ascontiguousarray(start, dtype=np.float32)
    _place(
        pos, ids, eps, index.coords, np.ascontiguousarray(rows, dtype=np.int64),
        n_epochs, a, b, params.negative_sample_rate, params.seed, 0.25,
    )  # fmt: skip
    return pos
