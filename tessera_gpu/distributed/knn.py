"""The kNN graph of every row, on Dask workers: cells, groups of cells, exact re-rank.

The CPU tier's search (:mod:`tessera_gpu.backends.cpu_knn`), cut so that no worker needs all
the rows:

1. **plan** (one task): on a 50k-row sample, a 64-d PCA (of the unit rows, for cosine), ``C =
   sqrt(N)`` k-means cells, and the cells cut into ``G`` groups of about equal size by
   recursive bisection along their principal axis (neighbouring cells share a group);
2. **probe** (a task per partition): each row's 8 nearest cells; the first is its own;
3. **route** (a task per partition and round): each row goes, with its full vector, to every
   group holding one of its 8 cells; its own cell's group holds it as a *member*;
4. **search** (a task per group): every routed row against the members of the cells it probes
   in the group. Cosine (the similarity graph), as in-process: one GEMM per cell on the full
   vectors, each result used both ways (:func:`~tessera_gpu.backends.cpu_cosine.
   compare_probed`); Euclidean (the map's graph): one GEMM per cell in PCA space, ``max(k,
   48)`` candidates, then an exact re-rank on the full vectors. A GPU worker searches all the
   group's members exactly instead;
5. **merge** (the caller): a row's neighbours from the groups it visited, each once, best
   ``k`` by distance (ties by row number, so the order tasks finish in does not matter),
   itself first.

Rounds bound memory: the groups are done a few at a time, so only that round's routed rows are
held (a partition is read again per round). What crosses the network: the sample, the plan
(PCA basis and centroids), each row about 1.5 times (its full vector, to its groups), and back
to the caller ``k`` neighbours per row.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tessera_gpu.backends import Neighbors
from tessera_gpu.backends.cpu_cosine import compare_probed, cosine_distances, row_norms, safe_norms
from tessera_gpu.backends.cpu_kmeans import lloyd
from tessera_gpu.backends.cpu_knn import exact_distances, nearest_centroids, probe_search
from tessera_gpu.backends.cpu_pca import Pca, fit_pca
from tessera_gpu.distributed.refs import (
    ShardRef,
    on_worker,
    read_block,
    split_rows,
    take_rows,
    worker_backend,
)

if TYPE_CHECKING:
    from tessera_gpu.distributed.cluster import Cluster

__all__ = ["CANDIDATES", "KnnPlan", "Piece", "distributed_knn", "fit_plan", "search_group"]

REDUCE_TO = 64
N_PROBE = 8
CANDIDATES = 48  # candidates per row and group re-ranked exactly (the Euclidean graph)
SAMPLE_ROWS = 50_000
GROUP_BYTES = 96 * 2**20  # a group task's working set, roughly


@dataclass(frozen=True, eq=False)
class KnnPlan:
    """What every task shares: the metric, the PCA (None: rows used as they are), the cell
    centroids in that space and each cell's group."""

    metric: str
    pca: Pca | None
    centroids: np.ndarray
    group_of_cell: np.ndarray
    n_groups: int

    def reduce(self, x: np.ndarray, norms: np.ndarray) -> np.ndarray:
        rows = x / safe_norms(norms)[:, None] if self.metric == "cosine" else x
        out = rows if self.pca is None else self.pca.apply(rows)
        return np.ascontiguousarray(out, dtype=np.float32)


@dataclass(frozen=True, eq=False)
class Piece:
    """Rows routed to one group: global rows, full and reduced vectors, norms, 8 cells each."""

    rows: np.ndarray
    full: np.ndarray
    reduced: np.ndarray
    norms: np.ndarray
    probes: np.ndarray


def _bisect(points: np.ndarray, weights: np.ndarray, n_groups: int) -> np.ndarray:
    """Groups of ``points`` of about equal total weight, neighbours together: split at the
    weighted median of the principal axis, recursively."""
    labels = np.zeros(len(points), dtype=np.int64)
    todo = [(np.arange(len(points)), 0, n_groups)]
    while todo:
        idx, first, count = todo.pop()
        if count <= 1 or len(idx) <= 1:
            labels[idx] = first
            continue
        centred = points[idx] - points[idx].mean(axis=0)
        axis = np.linalg.svd(centred, full_matrices=False)[2][0]
        order = idx[np.argsort(centred @ axis, kind="stable")]
        left = count // 2
        cum = np.cumsum(weights[order])
        cut = int(np.searchsorted(cum, cum[-1] * left / count))
        cut = min(max(cut, 1), len(order) - 1)
        todo += [(order[:cut], first, left), (order[cut:], first + left, count - left)]
    return labels


@on_worker
def fit_plan(metric: str, n_cells: int, n_groups: int, seed: int, *blocks: np.ndarray) -> KnnPlan:
    """The plan from sample rows (see the module docstring, step 1)."""
    x = np.ascontiguousarray(np.vstack(blocks), dtype=np.float32)
    if metric == "cosine":
        x = x / safe_norms(row_norms(x))[:, None]
    n, d = x.shape
    pca = fit_pca(x, REDUCE_TO, seed=seed) if d > 2 * REDUCE_TO and n > 4 * REDUCE_TO else None
    reduced = x if pca is None else pca.apply(x)
    n_cells = max(1, min(n_cells, n))
    centroids = lloyd(reduced, n_cells, n_iter=8, seed=seed, init="random").centroids
    sizes = np.bincount(nearest_centroids(reduced, centroids, 1)[:, 0], minlength=n_cells)
    groups = _bisect(centroids.astype(np.float64), sizes + 1.0, min(n_groups, n_cells))
    return KnnPlan(metric, pca, centroids, groups, int(groups.max()) + 1)


@on_worker
def probe_block(ref: ShardRef, limits: Any, plan: KnnPlan) -> tuple[np.ndarray, np.ndarray]:
    """Each row's 8 nearest cells (its own first) and how many rows each group will get."""
    x = read_block(ref, limits).x
    reduced = plan.reduce(x, row_norms(x))
    probes = nearest_centroids(reduced, plan.centroids, min(N_PROBE, len(plan.centroids)))
    visits = np.zeros(plan.n_groups, dtype=np.int64)
    groups = plan.group_of_cell[probes]
    for g in range(plan.n_groups):
        visits[g] = int(np.count_nonzero((groups == g).any(axis=1)))
    return probes.astype(np.int32), visits


@on_worker
def route_block(
    ref: ShardRef, limits: Any, plan: KnnPlan, probes: np.ndarray, groups: list[int]
) -> dict[int, Piece]:
    """The ref's rows for each group of this round (step 3)."""
    block = read_block(ref, limits)
    norms = row_norms(block.x)
    reduced = plan.reduce(block.x, norms)
    of_probe = plan.group_of_cell[probes]
    out = {}
    for g in groups:
        sel = np.flatnonzero((of_probe == g).any(axis=1))
        out[g] = Piece(block.rows[sel], block.x[sel], reduced[sel], norms[sel], probes[sel])
    return out


def piece_of(routed: dict[int, Piece], group: int) -> Piece:
    """One group's piece of a route task's output (a task, so only that piece moves)."""
    return routed[group]


def _layout(plan: KnnPlan, group: int, pieces: tuple[Piece, ...]) -> tuple[Piece, np.ndarray, int]:
    """The group's rows, members first sorted by cell, with cell ranges and local probes."""
    whole = Piece(*(np.concatenate([getattr(p, f) for p in pieces]) for f in Piece.__annotations__))
    cells = np.flatnonzero(plan.group_of_cell == group)
    lut = np.full(len(plan.group_of_cell), -1, dtype=np.int64)
    lut[cells] = np.arange(len(cells))
    own = lut[whole.probes[:, 0]]
    members = np.flatnonzero(own >= 0)
    members = members[np.argsort(own[members], kind="stable")]
    order = np.concatenate([members, np.flatnonzero(own < 0)])
    whole = Piece(*(getattr(whole, f)[order] for f in Piece.__annotations__))
    ptr = np.zeros(len(cells) + 1, dtype=np.int64)
    np.cumsum(np.bincount(own[members], minlength=len(cells)), out=ptr[1:])
    local = Piece(whole.rows, whole.full, whole.reduced, whole.norms, lut[whole.probes])
    return local, ptr, len(members)


def _exact(metric: str, group: Piece, cand: np.ndarray) -> np.ndarray:
    """Exact distances of every row of the group to its candidates (``inf`` for ``-1``)."""
    if metric != "cosine":
        dist = exact_distances(group.full, group.full, np.ascontiguousarray(cand))
        dist[cand < 0] = np.inf
        return dist
    dist = np.full(cand.shape, np.inf, dtype=np.float32)
    ok = cand >= 0
    left = np.broadcast_to(np.arange(len(cand))[:, None], cand.shape)[ok]
    dist[ok] = cosine_distances(group.full, group.norms, left, cand[ok])
    return dist


def _candidates(group: Piece, ptr: np.ndarray, m: int, wanted: int, metric: str) -> np.ndarray:
    """Candidate members (local indices, -1 if fewer) of every row of the group."""
    backend = worker_backend()
    if backend.name == "cpu":
        cand, _ = probe_search(group.reduced[:m], ptr, group.reduced, group.probes, wanted)
        return cand
    # GPU worker: an exact search of all the group's members on the device (CuPy tier or
    # cuML backend), on unit rows for cosine; the exact re-rank below stays on the host.
    rows = group.full / safe_norms(group.norms)[:, None] if metric == "cosine" else group.full
    device = backend.to_device(np.ascontiguousarray(rows[:m], dtype=np.float32))
    cand, _ = backend.nearest_rows(device, rows, min(wanted, m))
    return np.asarray(cand, dtype=np.int64)


@on_worker
def search_group(
    plan: KnnPlan, group: int, k: int, *pieces: Piece
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 4 for one group: ``(global rows, their k best members (global), exact
    distances)``, nearest first; ``-1`` / ``inf`` where a row saw fewer than ``k``."""
    pieces = tuple(p for p in pieces if len(p.rows))
    if not pieces:
        return np.zeros(0, np.int64), np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    local, ptr, m = _layout(plan, group, pieces)
    if m == 0:
        n = len(local.rows)
        return local.rows, np.full((n, k), -1, np.int64), np.full((n, k), np.inf, np.float32)
    if plan.metric == "cosine" and worker_backend().name == "cpu":
        # as the in-process graph: the probed cells compared on the full vectors, both ways
        cand, dist = compare_probed(local.full, local.norms, ptr, local.probes, k)
    else:
        cand = _candidates(local, ptr, m, max(k, CANDIDATES), plan.metric)
        dist = _exact(plan.metric, local, cand)
    order = np.lexsort((cand, dist), axis=-1)[:, :k]
    cand, dist = np.take_along_axis(cand, order, 1), np.take_along_axis(dist, order, 1)
    ids = np.where(cand >= 0, local.rows[np.maximum(cand, 0)], -1)
    if ids.shape[1] < k:  # fewer members than k
        pad = k - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        dist = np.pad(dist, ((0, 0), (0, pad)), constant_values=np.inf)
    return local.rows, ids, np.ascontiguousarray(dist, dtype=np.float32)


class Best:
    """Each row's best ``k`` so far, on the caller; folding is order-independent."""

    def __init__(self, n: int, k: int) -> None:
        self.idx = np.full((n, k), -1, dtype=np.int64)
        self.dist = np.full((n, k), np.inf, dtype=np.float32)

    def fold(self, rows: np.ndarray, idx: np.ndarray, dist: np.ndarray) -> None:
        """Each row's best ``k`` of both lists; a neighbour met in two groups (a cosine
        graph compares pairs both ways) counts once, at its smaller distance."""
        k = self.idx.shape[1]
        both_i = np.hstack([self.idx[rows], idx])
        both_d = np.hstack([self.dist[rows], dist])
        by_id = np.lexsort((both_d, both_i), axis=-1)
        both_i, both_d = np.take_along_axis(both_i, by_id, 1), np.take_along_axis(both_d, by_id, 1)
        again = np.zeros(both_i.shape, dtype=bool)
        again[:, 1:] = (both_i[:, 1:] == both_i[:, :-1]) & (both_i[:, 1:] >= 0)
        both_i[again], both_d[again] = -1, np.inf
        order = np.lexsort((both_i, both_d), axis=-1)[:, :k]
        self.idx[rows] = np.take_along_axis(both_i, order, 1)
        self.dist[rows] = np.take_along_axis(both_d, order, 1)

    def self_first(self) -> None:
        """Each row itself in column 0 at distance 0 (an exact duplicate may precede it)."""
        n, k = self.idx.shape
        for i in np.flatnonzero(self.idx[:, 0] != np.arange(n)).tolist():
            keep = self.idx[i] != i
            others_i, others_d = self.idx[i][keep][: k - 1], self.dist[i][keep][: k - 1]
            self.idx[i, 0], self.dist[i, 0] = i, 0.0
            self.idx[i, 1:], self.dist[i, 1:] = others_i, others_d
        self.dist[:, 0] = 0.0


def _rounds(visits: np.ndarray, row_bytes: int, budget: int) -> list[list[int]]:
    """Groups in rounds whose routed rows take at most ``budget`` bytes (one group at least)."""
    rounds: list[list[int]] = [[]]
    used = 0
    for g in np.flatnonzero(visits).tolist():
        size = int(visits[g]) * row_bytes
        if rounds[-1] and used + size > budget:
            rounds.append([])
            used = 0
        rounds[-1].append(g)
        used += size
    return rounds if rounds[0] else []


def distributed_knn(
    engine: Cluster,
    refs: list[ShardRef],
    k: int,
    *,
    metric: str,
    seed: int = 0,
    progress: Callable[[str, float], None] | None = None,
) -> Neighbors:
    """Each row's ``k`` nearest rows (itself first) with exact distances; see the docstring."""
    report = progress or (lambda stage, fraction: None)
    n, d = refs[-1].stop, refs[0].dim
    k = min(k, n)
    n_cells = max(8, int(math.sqrt(n)))
    n_groups = max(2 * engine.n_workers(), math.ceil(1.5 * n * (4 * d + 600) / GROUP_BYTES))
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, min(n, SAMPLE_ROWS), replace=False))
    blocks = [
        engine.submit(take_rows, ref, engine.limits, local, name="knn-sample")
        for ref, local in zip(refs, split_rows(refs, sample), strict=True)
        if len(local)
    ]
    plan_f = engine.submit(fit_plan, metric, n_cells, n_groups, seed, *blocks, name="knn-plan")
    report("knn", 0.02)
    probed = [
        engine.submit(probe_block, ref, engine.limits, plan_f, name="knn-probe") for ref in refs
    ]
    probes = [engine.submit(_first, f, name="knn-probes") for f in probed]
    counts = engine.gather([engine.submit(_second, f, name="knn-visits") for f in probed])
    visits = np.sum(counts, axis=0)
    del probed
    report("knn", 0.1)
    row_bytes = 4 * (d + REDUCE_TO + N_PROBE + 3)
    rounds = _rounds(np.asarray(visits), row_bytes, engine.round_bytes())
    best = Best(n, k)
    done, total = 0, sum(len(r) for r in rounds)
    for groups in rounds:
        routed = [
            engine.submit(route_block, ref, engine.limits, plan_f, pf, groups, name="knn-route")
            for ref, pf in zip(refs, probes, strict=True)
        ]
        searches = []
        for g in groups:
            pieces = [engine.submit(piece_of, r, g, name="knn-piece") for r in routed]
            searches.append(engine.submit(search_group, plan_f, g, k, *pieces, name="knn-search"))
        for rows, idx, dist in engine.as_completed(searches):
            best.fold(rows, idx, dist)
            done += 1
            report("knn", 0.1 + 0.9 * done / max(total, 1))
        del routed, searches, pieces  # this round's rows leave the workers
    best.self_first()
    plan = engine.gather([plan_f])[0]
    space = f"pca{REDUCE_TO}" if plan.pca is not None else ("unit" if metric == "cosine" else "raw")
    method = (
        f"dask:{space}-cell-probe({len(plan.centroids)}x{N_PROBE}, {plan.n_groups} groups, "
        f"{len(rounds)} rounds)+"
        + (
            "full-space-cosine"
            if metric == "cosine"
            else f"exact-{metric}-rerank({max(k, CANDIDATES)})"
        )
    )
    return Neighbors(best.idx, best.dist, method)


def _first(pair: tuple[Any, Any]) -> Any:
    return pair[0]


def _second(pair: tuple[Any, Any]) -> Any:
    return pair[1]


@on_worker
def nearest_in_ref(
    ref: ShardRef, limits: Any, query: np.ndarray, k: int, local: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of the ref (or of its ``local`` rows) nearest ``query`` by cosine
    distance: ``(global rows int64, distances float32)``, unordered."""
    block = read_block(ref, limits, local)
    if block.rows.size == 0:
        return block.rows, np.zeros(0, dtype=np.float32)
    q = np.asarray(query, dtype=np.float32)
    q_norm = float(np.linalg.norm(q)) or 1.0
    norms = safe_norms(row_norms(block.x))
    dist = np.clip(1.0 - (block.x @ q) / (norms * q_norm), 0.0, 2.0).astype(np.float32)
    if dist.size > k:
        keep = np.argpartition(dist, k - 1)[:k]
        return block.rows[keep], dist[keep]
    return block.rows, dist


def exact_nearest(
    engine: Cluster,
    refs: list[ShardRef],
    row: int,
    k: int,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact: the ``k`` rows nearest ``row`` by cosine distance (itself excluded), among
    ``allowed``, nearest first (ties by row). Every partition is scanned where it lies; only
    the query vector goes out and ``k`` candidates per partition come back."""
    query = engine.take_refs(refs, np.array([row], dtype=np.int64))[0]
    shared = engine.scatter(query)
    futures = []
    for ref in refs:
        local = None
        if allowed is not None:
            local = np.flatnonzero(allowed[ref.start : ref.stop])
            if local.size == 0:
                continue
        futures.append(engine.submit(nearest_in_ref, ref, engine.limits, shared, k + 1, local,
                                     name="similar"))  # fmt: skip
    found = engine.gather(futures)
    if not found:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    rows = np.concatenate([f[0] for f in found]).astype(np.int64)
    dist = np.concatenate([f[1] for f in found]).astype(np.float32)
    other = rows != row
    rows, dist = rows[other], dist[other]
    keep = np.lexsort((rows, dist))[:k]
    return rows[keep], dist[keep]
