"""Cosine neighbours on the CPU: exact distances in the full space, compared cell by cell.

The similarity features (find similar, near-duplicates, uniqueness) measure cosine distance
``1 - x.y / (|x| |y|)`` in the full embedding space. The kNN graph (:func:`cosine_knn`) never
ranks rows in a reduced space: on held-out data, what lies beyond the first principal axes
(a cluster's own directions, isotropic noise) decides which rows are nearest within a
cluster, and PCA-64 candidates re-ranked exactly found under half of the true neighbours.

Instead the rows are cut into k-means **cells** in a 64-d PCA of the unit rows (about sqrt(N)
cells), and every row is compared, in the full space, with every member of its own cell and
of each cell whose centroid is nearly as near as its own (within ``1 + PROBE_MARGIN`` times
the squared distance; at least ``4k`` rows in all, at most ``MAX_PROBES`` cells). The
comparisons are BLAS GEMMs of a cell's members against the rows that probe it, and each
result is used both ways (a row that probes a cell also enters its members' lists). When
two cells' members probe each other so much that comparing the two cells whole costs less,
the whole block is computed once. Small inputs (``n^2 d`` under ``EXACT_WORK``) form one
cell: every pair is compared. Distances come from float32 dot products of the full vectors;
the merge into each row's top-k is serial and in a fixed order, so the graph is the same for
a seed, run to run and on any number of numba threads (BLAS on another number of threads
rounds the GEMMs, and the PCA, differently: distances agree to float32 rounding, near-ties
may swap).

Nothing here copies the embeddings: norms are computed once and the PCA is applied as
``(X @ W) / |x| - mean @ W``; the GEMMs gather a cell's rows at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from tessera_gpu.backends.cpu_kmeans import lloyd
from tessera_gpu.backends.cpu_knn import blocked_search, key_ranges
from tessera_gpu.backends.cpu_pca import Pca, fit_pca
from tessera_gpu.projection.parallel import kernel

__all__ = [
    "MAX_PROBES",
    "PROBE_MARGIN",
    "compare_probed",
    "cosine_distances",
    "cosine_knn",
    "normalized_pca",
    "row_norms",
    "safe_norms",
]

REDUCE_TO = 64
PROBE_MARGIN = 0.4  # probe a cell within (1 + margin) x the squared distance to the row's own
MAX_PROBES = 24  # cells a row may probe, its own included
EXACT_WORK = 1e11  # n * n * d below which every pair is compared (about a second of BLAS)
_BLOCK = 16_384  # rows per block when reducing
_GEMM_ROWS = 1024  # rows of one GEMM at most
_GRAM_BYTES = 32 * 2**20  # and its result at most this (smaller starves BLAS)
_MIN_CELL = 256  # rows per cell at least, on average (smaller GEMMs run far below peak)


@kernel
def _norms(x):  # pragma: no cover - compiled
    n, d = x.shape
    out = np.empty(n, dtype=np.float32)
    for i in numba.prange(n):
        acc = 0.0
        for t in range(d):
            acc += x[i, t] * x[i, t]
        out[i] = np.sqrt(acc)
    return out


def row_norms(x: np.ndarray) -> np.ndarray:
    """``|x_i|`` per row (float32); a zero row has norm 0."""
    return np.asarray(_norms(x), dtype=np.float32)


def safe_norms(norms: np.ndarray) -> np.ndarray:
    """Norms to divide by: a zero row stays a zero vector (cosine distance 1 to all)."""
    return np.where(norms > 0, norms, np.float32(1.0)).astype(np.float32)


@kernel
def _pair_distances(x, norms, left, right):  # pragma: no cover - compiled
    n = left.shape[0]
    d = x.shape[1]
    out = np.empty(n, dtype=np.float32)
    for p in numba.prange(n):
        i = left[p]
        j = right[p]
        acc = 0.0
        for t in range(d):
            acc += x[i, t] * x[j, t]
        out[p] = 1.0 - acc / (norms[i] * norms[j])
    return out


def cosine_distances(
    x: np.ndarray, norms: np.ndarray, left: np.ndarray, right: np.ndarray
) -> np.ndarray:
    """Exact cosine distance of each pair ``(left[p], right[p])`` of rows (float32)."""
    left = np.ascontiguousarray(left, dtype=np.int64)
    right = np.ascontiguousarray(right, dtype=np.int64)
    out = _pair_distances(x, safe_norms(norms), left, right)
    return np.clip(out, 0.0, 2.0)


def normalized_pca(
    x: np.ndarray, norms: np.ndarray, *, n_components: int = REDUCE_TO, seed: int = 0
) -> tuple[np.ndarray, Pca | None]:
    """The rows scaled to unit length, projected on the top principal axes of a seeded sample
    of them: ``(reduced (n, c) float32, pca)``. Narrow data is only normalised (no PCA).

    Euclidean distance in this space is a lower bound of the distance between the unit
    vectors (an orthonormal projection never lengthens a difference)."""
    safe = safe_norms(norms)
    n, d = x.shape
    if d <= 2 * n_components:
        return np.ascontiguousarray(x / safe[:, None], dtype=np.float32), None
    rng = np.random.default_rng(seed)
    sample_rows = np.sort(rng.choice(n, min(n, 10_000), replace=False))
    sample = x[sample_rows] / safe[sample_rows, None]
    pca = fit_pca(sample, n_components, seed=seed)
    shift = pca.mean @ pca.basis
    out = np.empty((n, pca.basis.shape[1]), dtype=np.float32)
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        block = x[start:stop] @ pca.basis
        block /= safe[start:stop, None]
        block -= shift
        out[start:stop] = block
    return out, pca


@numba.njit(cache=True, nogil=True)
def _merge(gram, rows, row_inv, cols, col_inv, best_d, best_i):  # pragma: no cover - compiled
    """Fold ``gram`` (rows x cols dot products) into each row's sorted top-k, as cosine
    distances; a row itself and a column already listed are skipped (a pair may be met
    twice). Serial: the order of insertions, so the result, is fixed."""
    b, m = gram.shape
    k = best_d.shape[1]
    for r in range(b):
        q = rows[r]
        worst = best_d[q, k - 1]
        scale = row_inv[r]
        for c in range(m):
            d = np.float32(1.0) - gram[r, c] * scale * col_inv[c]
            if d >= worst:
                continue
            j = cols[c]
            if j == q:
                continue
            listed = False
            for t in range(k):
                if best_i[q, t] == j:
                    listed = True
                    break
            if listed:
                continue
            pos = k - 1
            while pos > 0 and best_d[q, pos - 1] > d:
                best_d[q, pos] = best_d[q, pos - 1]
                best_i[q, pos] = best_i[q, pos - 1]
                pos -= 1
            best_d[q, pos] = d
            best_i[q, pos] = j
            worst = best_d[q, k - 1]


@dataclass(frozen=True, eq=False)
class _Plan:
    """Which blocks to compare: cell ``c``'s members are ``order[ptr[c]:ptr[c + 1]]``; its
    askers (rows of other cells probing it) ``askers[a_ptr[c]:a_ptr[c + 1]]``; ``whole[c]``
    the later cells compared with it whole."""

    order: np.ndarray
    ptr: np.ndarray
    askers: np.ndarray
    a_ptr: np.ndarray
    whole: list[np.ndarray]

    @property
    def n_cells(self) -> int:
        return len(self.ptr) - 1


def _one_cell(n: int) -> _Plan:
    return _Plan(np.arange(n, dtype=np.int64), np.array([0, n], dtype=np.int64),
                 np.zeros(0, dtype=np.int64), np.zeros(2, dtype=np.int64),
                 [np.zeros(0, dtype=np.int64)])  # fmt: skip


def _plan(reduced: np.ndarray, k: int, *, seed: int) -> _Plan:
    """Cells, each row's probes (see the module docstring) and the blocks that cover them."""
    n = len(reduced)
    n_cells = max(2, int(min(np.sqrt(n), n / _MIN_CELL)))
    rng = np.random.default_rng(seed)
    train = reduced[np.sort(rng.choice(n, min(n, 50_000), replace=False))]
    centroids = lloyd(train, n_cells, n_iter=8, seed=seed, init="random").centroids
    sq, probes = blocked_search(centroids, reduced, min(MAX_PROBES, n_cells))
    own = probes[:, 0]
    sizes = np.bincount(own, minlength=n_cells)
    covered = np.cumsum(sizes[probes], axis=1) - sizes[probes]  # rows in the nearer cells
    use = (sq <= sq[:, :1] * (1 + PROBE_MARGIN)) | (covered < 4 * k)
    use[:, 0] = False  # its own cell: a row is a member there
    rows, slot = np.nonzero(use)
    target, source = probes[rows, slot], own[rows]
    asked = np.zeros((n_cells, n_cells), dtype=np.float64)
    np.add.at(asked, (source, target), 1.0)
    s = sizes.astype(np.float64)
    by_askers = asked * s[None, :]  # [a, b]: a's rows probing b, against b's members
    whole = (s[:, None] * s[None, :] <= by_askers + by_askers.T) & ((asked + asked.T) > 0)
    np.fill_diagonal(whole, False)
    keep = ~whole[source, target]
    rows, target = rows[keep], target[keep]
    by_target = np.argsort(target, kind="stable")
    return _Plan(
        order=np.argsort(own, kind="stable").astype(np.int64),
        ptr=key_ranges(own, n_cells),
        askers=rows[by_target].astype(np.int64),
        a_ptr=key_ranges(target, n_cells),
        whole=[np.flatnonzero(whole[c, c + 1 :]) + c + 1 for c in range(n_cells)],
    )


def compare_probed(
    x: np.ndarray, norms: np.ndarray, ptr: np.ndarray, probes: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cells laid out by the caller (one group of cells on a Dask worker): rows
    ``ptr[c]:ptr[c + 1]`` of ``x`` are cell ``c``'s members; every row of ``x`` is compared,
    on the full vectors, with the members of the cells in its row of ``probes`` (``-1``:
    none), and each result is used both ways. Returns each row's ``k`` nearest other rows
    (``-1`` where fewer) and their cosine distances, nearest first."""
    n_cells = len(ptr) - 1
    member_of = np.full(len(x), -1, dtype=np.int64)
    member_of[: ptr[-1]] = np.repeat(np.arange(n_cells), np.diff(ptr))
    asks = (probes >= 0) & (probes != member_of[:, None])
    rows, slot = np.nonzero(asks)
    target = probes[rows, slot].astype(np.int64)
    by_target = np.argsort(target, kind="stable")
    plan = _Plan(np.arange(ptr[-1], dtype=np.int64), np.asarray(ptr, dtype=np.int64),
                 rows[by_target].astype(np.int64), key_ranges(target, n_cells),
                 [np.zeros(0, dtype=np.int64)] * n_cells)  # fmt: skip
    inv = (np.float32(1.0) / safe_norms(norms)).astype(np.float32)
    return _scan(np.ascontiguousarray(x, dtype=np.float32), inv, plan, k)


def _compare(x, inv, rows, cols, best_d, best_i, *, mirrored: int) -> None:  # type: ignore[no-untyped-def]
    """Every row of ``rows`` against every row of ``cols`` on the full vectors (GEMMs of at
    most ``_GEMM_ROWS`` rows and ``_GRAM_BYTES``), folded into the rows' lists, and into the
    lists of the columns from ``mirrored`` on (the earlier ones are rows too)."""
    right = x[cols]
    step = max(16, min(_GEMM_ROWS, _GRAM_BYTES // (4 * len(cols))))
    for start in range(0, len(rows), step):
        part = rows[start : start + step]
        gram = x[part] @ right.T
        _merge(gram, part, inv[part], cols, inv[cols], best_d, best_i)
        if mirrored < len(cols):
            back = np.ascontiguousarray(gram[:, mirrored:].T)
            _merge(back, cols[mirrored:], inv[cols[mirrored:]], part, inv[part], best_d, best_i)


def _scan(x: np.ndarray, inv: np.ndarray, plan: _Plan, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` nearest other rows among the blocks of ``plan``, nearest first: per
    cell, its members against themselves and the cells compared whole (one GEMM), then its
    askers against its members."""
    n = len(x)
    best_d = np.full((n, k), np.inf, dtype=np.float32)
    best_i = np.full((n, k), -1, dtype=np.int64)
    cell_rows = [plan.order[plan.ptr[c] : plan.ptr[c + 1]] for c in range(plan.n_cells)]
    for c, members in enumerate(cell_rows):
        if members.size == 0:
            continue
        cols = np.concatenate([members, *(cell_rows[o] for o in plan.whole[c])])
        _compare(x, inv, members, cols, best_d, best_i, mirrored=members.size)
        askers = plan.askers[plan.a_ptr[c] : plan.a_ptr[c + 1]]
        if askers.size:
            _compare(x, inv, askers, members, best_d, best_i, mirrored=0)
    return best_i, best_d


def cosine_knn(
    x: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    norms: np.ndarray | None = None,
    reduced: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Each row's ``k`` nearest rows by cosine distance (itself first, at distance 0), with
    distances computed on the full vectors; see the module docstring.

    Returns ``(indices int64 (n, k), distances float32 (n, k), method)``; ``-1`` / ``inf``
    where a row met fewer than ``k - 1`` others. ``norms`` and ``reduced``
    (:func:`normalized_pca`) are computed when not given.
    """
    n, d = x.shape
    k = min(k, n)
    norms = row_norms(x) if norms is None else norms
    inv = (np.float32(1.0) / safe_norms(norms)).astype(np.float32)
    if float(n) * n * d <= EXACT_WORK or n <= 16 * k:
        plan, method = _one_cell(n), "exact-cosine"
    else:
        if reduced is None:
            reduced, _ = normalized_pca(x, norms, seed=seed)
        plan = _plan(reduced, k, seed=seed)
        space = f"pca{reduced.shape[1]}" if reduced.shape[1] < d else "unit"
        method = f"{space}-cells({plan.n_cells}, margin {PROBE_MARGIN})+exact-cosine-blocks"
    others_i, others_d = _scan(x, inv, plan, max(k - 1, 1))
    idx = np.concatenate([np.arange(n, dtype=np.int64)[:, None], others_i], axis=1)[:, :k]
    dist = np.concatenate([np.zeros((n, 1), np.float32), others_d], axis=1)[:, :k]
    np.clip(dist, 0.0, 2.0, out=dist)
    return idx, np.ascontiguousarray(dist), method
