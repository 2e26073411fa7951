"""K-means on the CPU: greedy k-means++ seeds, Lloyd's iterations that redo only what moved,
and a stopping rule on the objective.

:func:`kmeans`, for rows wider than ``2 * REDUCED`` (128) dimensions, runs:

1. a PCA of the rows to ``REDUCED`` (64) dimensions (:mod:`.cpu_pca`);
2. greedy k-means++ seeds there (:mod:`.cpu_seeding`);
3. Lloyd's iterations there until they stop;
4. each cluster's mean in the full space, then Lloyd's iterations on the full vectors until
   they stop.  The answer -- centroids, labels, inertia -- is the full space's, which the
   PCA only reaches sooner: most of the moving is done in 64 dimensions.

Narrower rows skip 1 and 3.  Iterations
stop when one changes no label, when one lowers the objective (the sum of squared distances,
"inertia") by less than ``TOL`` (1e-4, ``KMEANS_TOL``) of its value, or after ``n_iter``.

Lloyd's iterations (:func:`refine`) redo only what moved.  A centroid moves only when its
members change, so an iteration computes every row's distance to the moved centroids alone
(one GEMM); each row keeps its squared distance to its own centroid and a lower bound on
that to every other one, and a row whose own centroid moved away past the bound is assigned
again against all centroids.  The labels are a plain Lloyd iteration's; late iterations cost
a few percent of one.  Empty clusters take the rows farthest from their centroids, as in
scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numba
import numpy as np
import scipy.sparse

from tessera_gpu.backends.cpu_pca import fit_pca
from tessera_gpu.backends.cpu_seeding import Cells, greedy_kmeans_pp
from tessera_gpu.backends.protocol import KMEANS_MAX_ITER, KMEANS_TOL
from tessera_gpu.projection.parallel import kernel

__all__ = ["REDUCED", "LloydFit", "assign", "full_means", "kmeans", "lloyd", "refine", "seeds"]

MAX_ITER, TOL = KMEANS_MAX_ITER, KMEANS_TOL
REDUCED = 64  # PCA width of the seeding and the first Lloyd iterations
_BLOCK_BYTES = 32 * 2**20  # GEMM output per block (smaller blocks starve BLAS)


@dataclass(frozen=True)
class LloydFit:
    """Centroids ``(k, d)``, labels ``(n,)``, inertia (sum of squared distances) and the
    number of Lloyd iterations run (in both spaces)."""

    centroids: np.ndarray
    labels: np.ndarray
    inertia: float
    iterations: int = 0


def _sq_norms(a: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, a, dtype=np.float32)


def _step(width: int) -> int:
    """Rows per GEMM block against ``width`` columns (~32 MB of output)."""
    return max(64, _BLOCK_BYTES // (4 * max(1, width)))


@kernel
def _nearest_two(gram, x_norms, c_norms, rows, labels, u, lower):  # pragma: no cover
    """Per row of a block: its nearest centroid, that squared distance, and the second's."""
    for r in numba.prange(gram.shape[0]):
        best, second, arg = np.inf, np.inf, 0
        for c in range(gram.shape[1]):
            dist = c_norms[c] - 2.0 * gram[r, c]
            if dist < best:
                second, best, arg = best, dist, c
            elif dist < second:
                second = dist
        i = rows[r]
        labels[i] = arg
        u[i] = max(x_norms[r] + best, 0.0)
        lower[i] = max(x_norms[r] + second, 0.0)


@kernel
def _fold_moved(gram, xn, cn, cols, slot, start, labels, u, lower, redo):  # pragma: no cover
    """Fold the moved centroids ``cols`` (``slot[j]``: j's column, or -1) into each row's
    label, distance and lower bound; flag the rows that the bound no longer settles."""
    for r in numba.prange(gram.shape[0]):
        i = start + r
        own = labels[i]
        bound = lower[i]
        best, best_d, second = own, u[i], bound
        if slot[own] >= 0:
            best_d = max(xn[r] + cn[slot[own]] - 2.0 * gram[r, slot[own]], 0.0)
        for t in range(gram.shape[1]):
            j = cols[t]
            if j == own:
                continue
            dist = max(xn[r] + cn[t] - 2.0 * gram[r, t], 0.0)
            if dist < best_d:
                second, best, best_d = min(second, best_d), j, dist
            elif dist < second:
                second = dist
        redo[i] = slot[own] >= 0 and best_d > bound
        labels[i], u[i], lower[i] = best, best_d, second


@kernel
def _means(data, order, ptr, which, centroids):  # pragma: no cover - compiled
    """Centroids ``which`` := their members' mean (float64 sums over members in row order)."""
    for t in numba.prange(which.shape[0]):
        j = which[t]
        lo, hi = ptr[j], ptr[j + 1]
        acc = np.zeros(data.shape[1], dtype=np.float64)
        for p in range(lo, hi):
            acc += data[order[p]]
        centroids[j] = acc / max(hi - lo, 1)


@dataclass(frozen=True)
class _State:
    """Per row: label, squared distance to its centroid ``u``, lower bound on the squared
    distance to any other centroid ``lower``; and the rows' squared norms."""

    labels: np.ndarray
    u: np.ndarray
    lower: np.ndarray
    norms: np.ndarray

    @classmethod
    def of(cls, data: np.ndarray) -> _State:
        n = len(data)
        return cls(np.zeros(n, np.int64), np.zeros(n, np.float32), np.zeros(n, np.float32),
                   _sq_norms(data))  # fmt: skip

    def assign(self, data: np.ndarray, centroids: np.ndarray, rows: np.ndarray) -> None:
        """Exact nearest and second-nearest centroid of ``rows``."""
        c_norms = _sq_norms(centroids)
        step = _step(len(centroids))
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            x = data[chunk[0] : chunk[-1] + 1] if _contiguous(chunk) else data[chunk]
            _nearest_two(x @ centroids.T, self.norms[chunk], c_norms, chunk, self.labels,
                         self.u, self.lower)  # fmt: skip

    def fold(self, data: np.ndarray, centroids: np.ndarray, moved: np.ndarray) -> np.ndarray:
        """Update every row for the ``moved`` centroids; returns the rows to assign again."""
        slot = np.full(len(centroids), -1, dtype=np.int64)
        slot[moved] = np.arange(len(moved))
        cols = np.ascontiguousarray(centroids[moved])
        c_norms = _sq_norms(cols)
        redo = np.zeros(len(data), dtype=np.bool_)
        step = _step(len(moved))
        for start in range(0, len(data), step):
            x = data[start : start + step]
            _fold_moved(x @ cols.T, self.norms[start : start + step], c_norms, moved, slot,
                        start, self.labels, self.u, self.lower, redo)  # fmt: skip
        return np.flatnonzero(redo)


def _contiguous(rows: np.ndarray) -> bool:
    return len(rows) > 0 and int(rows[-1]) - int(rows[0]) == len(rows) - 1


def _new_means(
    data: np.ndarray, centroids: np.ndarray, state: _State, changed: np.ndarray
) -> np.ndarray:
    """Recompute the ``changed`` clusters' centroids; an empty one takes the row farthest
    from its centroid (rows already at distance 0 are no use).  Returns the moved ones."""
    k = len(centroids)
    counts = np.bincount(state.labels, minlength=k)
    order = np.argsort(state.labels, kind="stable")
    ptr = np.zeros(k + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    filled = changed[counts[changed] > 0]
    _means(data, order, ptr, filled, centroids)
    empty = changed[counts[changed] == 0]
    if len(empty):
        far = np.argsort(-state.u, kind="stable")[: len(empty)]
        far = far[state.u[far] > 0]
        empty = empty[: len(far)]
        centroids[empty] = data[far]
    return np.sort(np.concatenate([filled, empty]))


def _inertia(data: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> float:
    """Sum of squared distances to the own centroid, from exact differences."""
    total = 0.0
    for start in range(0, len(data), _step(data.shape[1])):
        stop = start + _step(data.shape[1])
        diff = data[start:stop] - centroids[labels[start:stop]]
        total += float(np.einsum("ij,ij->", diff, diff, dtype=np.float64))
    return total


def refine(
    data: np.ndarray,
    centroids: np.ndarray,
    *,
    n_iter: int = MAX_ITER,
    tol: float = TOL,
    labels: np.ndarray | None = None,
) -> LloydFit:
    """Lloyd's iterations from ``centroids`` until they stop (module docstring).

    ``labels``, when given, are the clusters ``centroids`` are the means of, so that only
    the clusters the first assignment changes are recomputed.  ``tol=0`` stops only when no
    label changes (or the inertia stops falling).
    """
    k = len(centroids)
    centroids = np.array(centroids, dtype=np.float32, order="C", copy=True)
    state = _State.of(data)
    state.assign(data, centroids, np.arange(len(data), dtype=np.int64))
    changed = np.arange(k) if labels is None else _clusters_changed(labels, state.labels)
    inertia = float(state.u.sum(dtype=np.float64))
    done = 0
    while done < n_iter:
        moved = _new_means(data, centroids, state, changed)
        if len(moved) == 0:
            break
        done += 1
        before = state.labels.copy()
        if 2 * len(moved) > k:  # most moved: a plain assignment is cheaper than folding
            redo = np.arange(len(data), dtype=np.int64)
        else:
            redo = state.fold(data, centroids, moved)
        if len(redo):
            state.assign(data, centroids, redo)
        changed = _clusters_changed(before, state.labels)
        now = float(state.u.sum(dtype=np.float64))
        if len(changed) == 0 or inertia - now <= tol * now:
            break
        inertia = now
    return LloydFit(centroids, state.labels, _inertia(data, centroids, state.labels), done)


def _clusters_changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    moved = np.flatnonzero(before != after)
    return np.union1d(before[moved], after[moved])


def assign(data: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every row and the squared distance to it."""
    state = _State.of(data)
    state.assign(data, np.ascontiguousarray(centroids, dtype=np.float32),
                 np.arange(len(data), dtype=np.int64))  # fmt: skip
    return state.labels, state.u


def cluster_sums(data: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster sums ``(k, d)`` and counts of the rows (a partition's share, on Dask)."""
    n = len(data)
    onehot = scipy.sparse.csr_matrix(
        (np.ones(n, dtype=np.float32), (labels, np.arange(n))), shape=(k, n)
    )
    return np.asarray(onehot @ data, dtype=np.float32), np.bincount(labels, minlength=k)


def seeds(data: np.ndarray, k: int, *, seed: int) -> np.ndarray:
    """``k`` rows chosen by greedy k-means++ (:mod:`.cpu_seeding`) over cells of ``data``."""
    n = len(data)
    n_cells = max(1, min(k, int(2 * np.sqrt(n))))
    rng = np.random.default_rng(seed)
    train = data[np.sort(rng.choice(n, min(n, 50 * n_cells), replace=False))]
    start = train[np.sort(rng.choice(len(train), n_cells, replace=False))]
    centres = refine(train, start, n_iter=8, tol=0.0).centroids
    cells = Cells.of(assign(data, centres)[0], centres)
    return greedy_kmeans_pp(data, k, seed=seed, cells=cells)


def lloyd(
    data: np.ndarray, k: int, *, n_iter: int = 25, seed: int = 0, init: str = "random"
) -> LloydFit:
    """Lloyd's iterations from ``k`` random rows (``init="random"``) or greedy k-means++
    seeds (``"k-means++"``) until no label changes or ``n_iter``; no PCA, no ``TOL``."""
    if init not in ("random", "k-means++"):
        raise ValueError(f"init must be 'random' or 'k-means++': got {init!r}")
    if init == "random":
        rng = np.random.default_rng(seed)
        start = np.sort(rng.choice(len(data), k, replace=False))
    else:
        start = seeds(data, k, seed=seed)
    return refine(data, data[start], n_iter=n_iter, tol=0.0)


def full_means(data: np.ndarray, labels: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Each cluster's mean of ``data`` rows (``fallback[j]`` for an empty cluster ``j``)."""
    k = len(fallback)
    centroids = np.array(fallback, dtype=np.float32, order="C", copy=True)
    counts = np.bincount(labels, minlength=k)
    ptr = np.zeros(k + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    _means(data, np.argsort(labels, kind="stable"), ptr, np.flatnonzero(counts), centroids)
    return centroids


def kmeans(
    data: np.ndarray, k: int, *, n_iter: int = MAX_ITER, seed: int = 0, tol: float = TOL
) -> LloydFit:
    """K-means of the rows of ``data`` into ``k`` clusters (module docstring)."""
    if data.shape[1] <= 2 * REDUCED:
        return refine(data, data[seeds(data, k, seed=seed)], n_iter=n_iter, tol=tol)
    reduced = fit_pca(data, REDUCED, seed=seed).apply(data)
    start = seeds(reduced, k, seed=seed)
    coarse = refine(reduced, reduced[start], n_iter=n_iter, tol=tol)
    del reduced
    centroids = full_means(data, coarse.labels, data[start])
    fit = refine(data, centroids, n_iter=n_iter, tol=tol, labels=coarse.labels)
    return replace(fit, iterations=coarse.iterations + fit.iterations)
