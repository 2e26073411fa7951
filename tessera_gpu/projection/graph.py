"""UMAP's fuzzy neighbour graph from a kNN table, and the a/b constants of its 2-D curve.

This is the algorithm of umap-learn 0.5 (``smooth_knn_dist``, ``compute_membership_strengths``,
fuzzy union, ``find_ab_params``) rewritten as cached, parallel numba kernels, so that a CPU
projection pays no first-call JIT of umap-learn's (uncached) functions in each process.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
import scipy.optimize
import scipy.sparse

from tessera_gpu.projection.parallel import kernel

__all__ = ["ab_params", "fuzzy_graph"]

_TOLERANCE = 1e-5
_MIN_SCALE = 1e-3


@kernel
def sigmas_rhos(dists, n_iter):  # pragma: no cover - compiled
    """Per row: ``rho`` = nearest non-zero distance; ``sigma`` by bisection (umap-learn)."""
    n, k = dists.shape
    target = np.log2(k)
    mean_all = dists.mean()
    sigmas = np.zeros(n, dtype=np.float32)
    rhos = np.zeros(n, dtype=np.float32)
    for i in numba.prange(n):
        rho = 0.0
        for j in range(k):
            if dists[i, j] > 0.0:
                rho = dists[i, j]
                break
        lo, hi, mid = 0.0, np.inf, 1.0
        for _ in range(n_iter):
            psum = 0.0
            for j in range(1, k):
                d = dists[i, j] - rho
                psum += np.exp(-(d / mid)) if d > 0 else 1.0
            if np.fabs(psum - target) < _TOLERANCE:
                break
            if psum > target:
                hi = mid
                mid = (lo + hi) / 2.0
            else:
                lo = mid
                mid = mid * 2.0 if hi == np.inf else (lo + hi) / 2.0
        floor = _MIN_SCALE * (dists[i].mean() if rho > 0.0 else mean_all)
        sigmas[i] = max(mid, floor)
        rhos[i] = rho
    return sigmas, rhos


@kernel
def _memberships(indices, dists, sigmas, rhos):  # pragma: no cover - compiled
    n, k = indices.shape
    vals = np.zeros((n, k), dtype=np.float32)
    for i in numba.prange(n):
        for j in range(k):
            if indices[i, j] < 0 or indices[i, j] == i:
                continue
            d = dists[i, j] - rhos[i]
            vals[i, j] = 1.0 if (d <= 0.0 or sigmas[i] == 0.0) else np.exp(-(d / sigmas[i]))
    return vals


def fuzzy_graph(indices: np.ndarray, dists: np.ndarray) -> scipy.sparse.csr_matrix:
    """Return the symmetric fuzzy-union graph ``P + P.T - P*P.T`` of a kNN table.

    ``indices``/``dists`` are ``(n, k)``; each row lists its nearest neighbours in increasing
    distance, itself included (it gets no edge).  Missing neighbours are ``-1``.
    """
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    dists = np.ascontiguousarray(dists, dtype=np.float32)
    n, k = indices.shape
    sigmas, rhos = sigmas_rhos(dists, 64)
    vals = _memberships(indices, dists, sigmas, rhos)
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    keep = vals.ravel() > 0
    p = scipy.sparse.csr_matrix(
        (vals.ravel()[keep], (rows[keep], indices.ravel()[keep])), shape=(n, n)
    )
    pt = p.T.tocsr()
    graph = p + pt - p.multiply(pt)
    graph.eliminate_zeros()
    return graph.tocsr()


@functools.lru_cache(maxsize=32)
def ab_params(spread: float, min_dist: float) -> tuple[float, float]:
    """Fit ``1 / (1 + a d^(2b))`` to UMAP's target membership curve (as umap-learn does)."""
    xv = np.linspace(0.0, spread * 3.0, 300)
    yv = np.where(xv < min_dist, 1.0, np.exp(-(xv - min_dist) / spread))

    def curve(x: np.ndarray, a: float, b: float) -> np.ndarray:
        return 1.0 / (1.0 + a * x ** (2.0 * b))

    params, _ = scipy.optimize.curve_fit(curve, xv, yv)
    return float(params[0]), float(params[1])
