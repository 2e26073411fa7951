"""Similar episodes, near-duplicate groups and uniqueness: cosine distance in the full space.

One :class:`SimilarityIndex` per dataset serves all three:

* a kNN graph by cosine distance over the full embeddings (``backend.cosine_knn``: on the CPU,
  k-means cells compared block by block on the full vectors; on a GPU, an exact search), with
  the distances of the full vectors;
* the rows scaled to unit length and reduced to 64 PCA dimensions: distances there are lower
  bounds of the true ones, so :meth:`SimilarityIndex.similar` prunes with them and checks the
  survivors exactly, and its answer is exact;
* the row norms.

Near-duplicate groups at a threshold ``t`` are the connected components of the graph's edges
with cosine distance ``<= t`` (both ends in the filter); each group's **keeper** is the member
nearest the mean of the group's unit vectors. Groups are listed largest first, the keeper
first, the others in index order. ``uniqueness`` is the cosine distance to the 10th neighbour.

A dataset whose embeddings stay on a Dask cluster gets a *graph-only* index
(:func:`load_or_build_graph`: ``reduced`` and ``norms`` are None): its graph comes from the
cluster, groups fetch only their members' vectors (``vectors`` may be a function of rows), and
:meth:`SimilarityIndex.similar_in_graph` answers from the graph when it can; the core asks the
cluster for an exact scan when it cannot.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph

from tessera_gpu.backends import Backend, Neighbors
from tessera_gpu.backends.cpu_cosine import (
    cosine_distances,
    normalized_pca,
    row_norms,
    safe_norms,
)
from tessera_gpu.errors import InvalidRequest
from tessera_gpu.io.artifacts import ArtifactStore
from tessera_gpu.io.dataset import Field
from tessera_gpu.progress import Progress

__all__ = [
    "DEFAULT_THRESHOLD",
    "GRAPH_K",
    "MAX_SIMILAR",
    "SIMILARITY_VERSION",
    "UNIQUENESS_K",
    "Groups",
    "SimilarityIndex",
    "Vectors",
    "build_index",
    "cached_index",
    "check_threshold",
    "derived_fields",
    "load_or_build",
    "load_or_build_graph",
]

SIMILARITY_VERSION = "tessera-cosine-2"  # 2: the CPU graph compares cells on the full vectors
GRAPH_K = 32  # columns of the graph, the row itself first
UNIQUENESS_K = 10
DEFAULT_THRESHOLD = 0.05
MAX_SIMILAR = 1_000
_EXACT_BATCH = 512
_BOUND_SLACK = 1e-4  # float32 rounding of the bounds: err on the side of checking more rows
_KEEPER_BATCH = 65_536  # member rows fetched at once to choose keepers

#: A function giving the vectors of some rows (float32, in that order): a cluster's embeddings.
Rows = Callable[[np.ndarray], np.ndarray]
#: The embeddings: in memory, or a :data:`Rows` function.
Vectors = np.ndarray | Rows


@dataclass(frozen=True)
class Groups:
    """Near-duplicate groups: each an int64 array of rows, the keeper first."""

    threshold: float
    groups: list[np.ndarray]

    @property
    def n_in_groups(self) -> int:
        return int(sum(len(g) for g in self.groups))

    def removed(self) -> np.ndarray:
        """The rows that keeping one per group drops (every member but the keepers)."""
        if not self.groups:
            return np.zeros(0, dtype=np.int64)
        return np.sort(np.concatenate([g[1:] for g in self.groups]))


@dataclass(eq=False)
class SimilarityIndex:
    """The cosine kNN graph of one dataset and what exact queries need."""

    indices: np.ndarray  # (n, k) int32, the row itself first
    distances: np.ndarray  # (n, k) float32 cosine distances, exact
    reduced: np.ndarray | None  # (n, c) float32: unit rows in PCA space (lower bounds); or None
    norms: np.ndarray | None  # (n,) float32; None for a graph-only index
    info: dict[str, Any] = field(default_factory=dict)
    _edges: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    _sq: np.ndarray | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return int(self.indices.shape[0])

    # ---- find similar -----------------------------------------------------------------------

    def similar(
        self, embeddings: np.ndarray, row: int, k: int, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` rows nearest ``row`` by cosine distance (itself excluded), among ``mask``:
        ``(rows int64, distances float32)``, nearest first, ties by row. Exact: candidates are
        taken in order of their lower bound and checked on the full vectors until no unchecked
        row can be nearer than the k-th found. Needs the in-memory index (``reduced``)."""
        if self.reduced is None or self.norms is None:
            raise ValueError("a graph-only index answers with similar_in_graph")
        allowed = np.ones(self.n, dtype=bool) if mask is None else mask.copy()
        allowed[row] = False
        n_allowed = int(np.count_nonzero(allowed))
        k = min(k, n_allowed)
        if k == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        bound = self._bounds(row)
        bound[~allowed] = np.inf
        first = min(n_allowed, max(_EXACT_BATCH, 4 * k))
        if first < self.n:  # the nearest candidates by bound, in O(n)
            part = np.argpartition(bound, first)
            batch, next_bound = part[:first], float(bound[part[first]])
        else:
            batch, next_bound = np.arange(self.n), np.inf
        batch = batch[allowed[batch]]
        dist = cosine_distances(embeddings, self.norms, np.full(batch.size, row), batch)
        keep = np.lexsort((batch, dist))[:k]
        if dist[keep[-1]] <= next_bound:  # nothing unchecked can be nearer: exact
            return batch[keep].astype(np.int64), dist[keep]
        return self._similar_slow(embeddings, row, k, bound, allowed)

    def similar_in_graph(
        self, row: int, k: int, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """``row``'s ``k`` nearest among ``mask`` from its graph neighbours alone (distances
        exact, as the graph's); None when fewer than ``k`` of them are allowed."""
        rows = self.indices[row, 1:].astype(np.int64)
        dist = self.distances[row, 1:]
        ok = (rows >= 0) & (rows != row)
        if mask is not None:
            ok &= mask[np.where(rows >= 0, rows, 0)]
        rows, dist = rows[ok], dist[ok]
        if rows.size < k:
            return None
        keep = np.lexsort((rows, dist))[:k]
        return rows[keep], dist[keep].astype(np.float32)

    def _bounds(self, row: int) -> np.ndarray:
        """Lower bounds of every row's cosine distance to ``row`` (from the PCA space)."""
        assert self.reduced is not None
        if self._sq is None:
            self._sq = np.einsum("ij,ij->i", self.reduced, self.reduced)
        dot = self.reduced @ self.reduced[row]
        return (self._sq + self._sq[row] - 2 * dot) / 2 - _BOUND_SLACK

    def _similar_slow(
        self, embeddings: np.ndarray, row: int, k: int, bound: np.ndarray, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Candidates in order of their bounds, checked in batches until none left unchecked
        can be nearer than the k-th found."""
        assert self.norms is not None
        order = np.argsort(bound, kind="stable")
        order = order[allowed[order]]
        best_rows = np.zeros(0, dtype=np.int64)
        best_d = np.zeros(0, dtype=np.float32)
        step = max(_EXACT_BATCH, 4 * k)
        for start in range(0, order.size, step):
            batch = order[start : start + step]
            d = cosine_distances(embeddings, self.norms, np.full(batch.size, row), batch)
            best_rows = np.concatenate([best_rows, batch])
            best_d = np.concatenate([best_d, d])
            keep = np.lexsort((best_rows, best_d))[:k]
            best_rows, best_d = best_rows[keep], best_d[keep]
            done = start + batch.size
            if done >= order.size or best_d[-1] <= bound[order[done]]:
                break
        return best_rows.astype(np.int64), best_d

    # ---- near-duplicates --------------------------------------------------------------------

    def edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every graph edge once, ``(i, j, distance)`` with ``i < j``, by distance."""
        if self._edges is None:
            n, k = self.indices.shape
            left = np.repeat(np.arange(n, dtype=np.int64), k - 1)
            right = self.indices[:, 1:].astype(np.int64).ravel()
            dist = self.distances[:, 1:].ravel()
            ok = right >= 0
            left, right, dist = left[ok], right[ok], dist[ok]
            lo, hi = np.minimum(left, right), np.maximum(left, right)
            keys = lo * n + hi
            _, first = np.unique(keys, return_index=True)
            order = first[np.argsort(dist[first], kind="stable")]
            self._edges = (lo[order], hi[order], dist[order])
        return self._edges

    def groups(self, vectors: Vectors, threshold: float, mask: np.ndarray | None = None) -> Groups:
        """Near-duplicate groups at ``threshold`` among ``mask`` (see the module docstring);
        ``vectors`` (or a function of rows) give the members' vectors, to choose keepers."""
        lo, hi, dist = self.edges()
        cut = int(np.searchsorted(dist, threshold, side="right"))
        lo, hi = lo[:cut], hi[:cut]
        if mask is not None:
            inside = mask[lo] & mask[hi]
            lo, hi = lo[inside], hi[inside]
        if lo.size == 0:
            return Groups(threshold, [])
        members = np.unique(np.concatenate([lo, hi]))
        local = np.searchsorted(members, np.concatenate([lo, hi]))
        half = lo.size
        graph = scipy.sparse.coo_matrix(
            (np.ones(half, dtype=np.int8), (local[:half], local[half:])),
            shape=(members.size, members.size),
        )
        _, labels = scipy.sparse.csgraph.connected_components(graph, directed=False)
        return Groups(threshold, _keepers_first(_rows_of(vectors), members, labels))

    def keep_mask(
        self, vectors: Vectors, threshold: float, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, int]:
        """``mask`` with every group cut to its keeper, and how many rows that removed."""
        out = np.ones(self.n, dtype=bool) if mask is None else mask.copy()
        removed = self.groups(vectors, threshold, mask).removed()
        out[removed] = False
        return out, int(removed.size)

    # ---- per-episode scores -----------------------------------------------------------------

    def uniqueness(self) -> np.ndarray:
        """Cosine distance to the 10th nearest other episode (float64; NaN when fewer)."""
        if self.indices.shape[1] <= UNIQUENESS_K:
            return np.full(self.n, np.nan)
        return self.distances[:, UNIQUENESS_K].astype(np.float64)


def _rows_of(vectors: Vectors) -> Rows:
    if callable(vectors):
        return vectors
    return lambda rows: vectors[rows]


def _keepers_first(take: Rows, members: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
    """Groups of ``members`` by ``labels``: largest first (ties: smallest keeper), each with
    the member nearest its unit-vector mean first, then the others in index order. The
    members' vectors are fetched with ``take``, a batch of groups at a time."""
    order = np.lexsort((members, labels))
    rows, labels = members[order], labels[order]
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
    bounds = np.r_[starts, rows.size]
    spans = np.column_stack([bounds[:-1], bounds[1:]])
    batch_of = spans[:, 0] // _KEEPER_BATCH  # whole groups, about _KEEPER_BATCH rows a batch
    groups: list[np.ndarray] = []
    for batch in np.split(spans, np.flatnonzero(np.diff(batch_of)) + 1):
        a, b = int(batch[0, 0]), int(batch[-1, 1])
        vectors = np.asarray(take(rows[a:b]), dtype=np.float32)
        norms = row_norms(vectors)
        unit = vectors / safe_norms(norms)[:, None]
        for lo, hi in batch.tolist():
            group, u = rows[lo:hi], unit[lo - a : hi - a]
            keeper = int(group[int(np.argmax(u @ u.mean(axis=0)))])
            groups.append(
                np.array([keeper, *[int(r) for r in group if r != keeper]], dtype=np.int64)
            )
    groups.sort(key=lambda g: (-len(g), int(g[0])))
    return groups


def check_threshold(threshold: Any, name: str = "threshold") -> float:
    """A cosine-distance threshold in (0, 1]; else 400 naming the field."""
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise InvalidRequest(f"{name} must be a number in (0, 1]: got {threshold!r}")
    if not 0 < threshold <= 1:
        raise InvalidRequest(f"{name} must be a cosine distance in (0, 1]: got {threshold}")
    return float(threshold)


# ---- building, caching, fields ----------------------------------------------------------------


def build_index(
    embeddings: np.ndarray,
    device: Any,
    backend: Backend,
    *,
    k: int = GRAPH_K,
    seed: int = 0,
    progress: Progress | None = None,
) -> SimilarityIndex:
    """The index of ``embeddings`` (host), its graph built by ``backend`` on ``device``."""
    report = progress or (lambda stage, fraction: None)
    started = time.perf_counter()
    report("norms", 0.0)
    norms = row_norms(embeddings)
    reduced, _ = normalized_pca(embeddings, norms, seed=seed)
    report("knn", 0.15)
    graph_started = time.perf_counter()
    nb = backend.cosine_knn(device, min(k, len(embeddings)), seed=seed,
                            reduction=(norms, reduced))  # fmt: skip
    report("knn", 0.9)
    info = {
        "algorithm": SIMILARITY_VERSION,
        "metric": "cosine",
        "k": int(nb.indices.shape[1]),
        "knn": nb.method,
        "backend": backend.name,
        "timings": {
            "reduce": round(graph_started - started, 3),
            "knn": round(time.perf_counter() - graph_started, 3),
        },
    }
    return SimilarityIndex(
        indices=np.ascontiguousarray(nb.indices, dtype=np.int32),
        distances=np.ascontiguousarray(nb.distances, dtype=np.float32),
        reduced=reduced,
        norms=norms,
        info=info,
    )


def cached_index(
    store: ArtifactStore | None,
    content_hash: str | None,
    n: int,
    *,
    seed: int = 0,
    progress: Progress | None = None,
) -> SimilarityIndex | None:
    """The index :func:`load_or_build` stored for ``n`` embeddings of this content, or None:
    found without the embeddings themselves."""
    if store is None or not content_hash:
        return None
    found = store.load(ArtifactStore.key(content_hash, {"k": GRAPH_K, "seed": seed},
                                         SIMILARITY_VERSION))  # fmt: skip
    if found is None or found[0]["indices"].shape[0] != n:
        return None
    arrays, info = found
    if progress is not None:
        progress("done", 1.0)
    return SimilarityIndex(
        indices=arrays["indices"], distances=arrays["distances"],
        reduced=arrays["reduced"], norms=arrays["norms"], info={**info, "cache": "hit"},
    )  # fmt: skip


def load_or_build(
    store: ArtifactStore | None,
    content_hash: str | None,
    embeddings: np.ndarray,
    device: Any,
    backend: Backend,
    *,
    seed: int = 0,
    progress: Progress | None = None,
) -> SimilarityIndex:
    """:func:`build_index`, served from / stored to ``store`` when given. The graph is a
    pure function of the content, ``k`` and ``seed`` (whatever the backend: every distance
    is exact), so the key leaves the backend out; ``info["cache"]`` says hit or stored."""
    found = cached_index(store, content_hash, len(embeddings), seed=seed, progress=progress)
    if found is not None:
        return found
    params = {"k": GRAPH_K, "seed": seed}
    key = ArtifactStore.key(content_hash, params, SIMILARITY_VERSION) if content_hash else None
    index = build_index(embeddings, device, backend, seed=seed, progress=progress)
    stored = False
    if store is not None and key is not None:
        assert index.reduced is not None
        assert index.norms is not None
        arrays = {"indices": index.indices, "distances": index.distances,
                  "reduced": index.reduced, "norms": index.norms}  # fmt: skip
        stored = store.store(key, arrays, index.info)
    index.info["cache"] = "stored" if stored else "off"
    return index


def load_or_build_graph(
    store: ArtifactStore | None,
    content_hash: str | None,
    knn: Callable[[int], Neighbors],
    *,
    engine: str,
    progress: Progress | None = None,
) -> SimilarityIndex:
    """A graph-only index (no ``reduced``, no ``norms``): the graph from ``knn(k)`` (a
    cluster's cosine kNN), served from / stored to ``store`` under ``engine``'s name (its
    graph may differ from the in-memory one's: it is approximate)."""
    params = {"k": GRAPH_K, "seed": 0, "engine": engine}
    key = ArtifactStore.key(content_hash, params, SIMILARITY_VERSION) if content_hash else None
    if store is not None and key is not None:
        found = store.load(key)
        if found is not None:
            arrays, cached = found
            if progress is not None:
                progress("done", 1.0)
            return SimilarityIndex(arrays["indices"], arrays["distances"], None, None,
                                   info={**cached, "cache": "hit"})  # fmt: skip
    started = time.perf_counter()
    nb = knn(GRAPH_K)
    info: dict[str, Any] = {
        "algorithm": SIMILARITY_VERSION, "metric": "cosine", "k": int(nb.indices.shape[1]),
        "knn": nb.method, "backend": engine,
        "timings": {"knn": round(time.perf_counter() - started, 3)},
    }  # fmt: skip
    index = SimilarityIndex(
        indices=np.ascontiguousarray(nb.indices, dtype=np.int32),
        distances=np.ascontiguousarray(nb.distances, dtype=np.float32),
        reduced=None, norms=None, info=info,
    )  # fmt: skip
    stored = False
    if store is not None and key is not None:
        stored = store.store(key, {"indices": index.indices, "distances": index.distances}, info)
    index.info["cache"] = "stored" if stored else "off"
    return index


def derived_fields(
    index: SimilarityIndex, vectors: Vectors, *, threshold: float = DEFAULT_THRESHOLD
) -> dict[str, Field]:
    """``uniqueness`` (float) and ``duplicate_group`` (int: 0 = none, else the group's number,
    1 for the largest) as ordinary metadata fields."""
    labels = np.zeros(index.n, dtype=np.int64)
    for number, group in enumerate(index.groups(vectors, threshold).groups, 1):
        labels[group] = number
    return {
        "uniqueness": Field("uniqueness", "float", index.uniqueness()),
        "duplicate_group": Field("duplicate_group", "int", labels),
    }
