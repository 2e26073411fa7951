"""K-means and the K-means diversity sample on Dask workers: Lloyd's iterations, partition-local.

The in-process algorithm (:func:`tessera_gpu.backends.cpu_kmeans.kmeans`), with the rows left
where they are:

* the rows (all, or a filter's ``rows``) are read once per job by the workers and kept there;
* rows wider than 128 dimensions are first reduced by a 64-d PCA fitted on a sample of them;
* seeds: greedy k-means++ (:func:`~tessera_gpu.backends.cpu_kmeans.seeds`) on up to 50,000 of
  the (reduced) rows gathered on one worker -- on all of them when there are fewer, which
  gives the seeds of an in-process run;
* each iteration sends the centroids to every worker; each partition assigns its rows (BLAS
  blocks, :func:`~tessera_gpu.backends.cpu_kmeans.assign`) and returns per-cluster sums and
  counts, its inertia, how many labels changed and its farthest rows (empty clusters are
  re-seeded with the farthest rows of all, as in-process); the partial sums are added on the
  workers and only the ``k x D`` totals reach the caller.  Iterations stop as in-process: no
  label changed, or the inertia fell by less than ``KMEANS_TOL`` of it, or ``n_iter``;
* reduced rows: the clusters' full-space means, then the same iterations on the full rows.

The diversity sample is :func:`tessera_gpu.clustering.diversity_sample`'s: each partition's 8
nearest rows of each centroid (exact distances), merged, then the same greedy pick.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tessera_gpu.backends import KMEANS_MAX_ITER, KMEANS_TOL
from tessera_gpu.backends.cpu import nearest_rows
from tessera_gpu.backends.cpu_kmeans import REDUCED, assign, cluster_sums, seeds
from tessera_gpu.backends.cpu_pca import Pca, fit_pca
from tessera_gpu.clustering import CANDIDATES, KMeansResult, greedy_pick
from tessera_gpu.distributed.refs import (
    Block,
    ShardRef,
    on_worker,
    read_block,
    split_rows,
    worker_backend,
)
from tessera_gpu.errors import InvalidRequest
from tessera_gpu.progress import Progress

if TYPE_CHECKING:
    from tessera_gpu.distributed.cluster import Cluster

__all__ = ["distributed_diversity_sample", "distributed_kmeans", "lloyd_step"]

SEED_ROWS = 50_000
FARTHEST = 64  # rows per partition offered to re-seed empty clusters
_FAN_IN = 8


@dataclass(frozen=True, eq=False)
class Step:
    """One partition's assignment (kept on its worker: ``labels``) and its partial sums."""

    labels: np.ndarray
    sums: np.ndarray
    counts: np.ndarray
    inertia: float
    changed: int
    far_d: np.ndarray
    far_x: np.ndarray


@on_worker
def pick(block: Block, positions: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(block.x[positions])


def _stacked(samples: tuple[Block | np.ndarray, ...]) -> np.ndarray:
    """Sample rows in order: whole blocks (few rows) or picked arrays."""
    rows = [s.x if isinstance(s, Block) else s for s in samples]
    return np.ascontiguousarray(np.vstack(rows), dtype=np.float32)


@on_worker
def fit_sample_pca(seed: int, *samples: Block | np.ndarray) -> Pca:
    return fit_pca(_stacked(samples), REDUCED, seed=seed)


@on_worker
def reduce_block(block: Block, pca: Pca) -> Block:
    return Block(block.rows, pca.apply(block.x))


@on_worker
def reduce_rows(sample: Block | np.ndarray, pca: Pca) -> np.ndarray:
    return pca.apply(_stacked((sample,)))


@on_worker
def seed_centroids(
    k: int, seed: int, order: np.ndarray | None, *samples: Block | np.ndarray
) -> np.ndarray:
    """Greedy k-means++ over the sample rows, in row order or, when the sample is every row,
    in the order the caller gave them (``order``: sorted position -> given position): the
    seeds of an in-process run on the same rows."""
    data = _stacked(samples)
    if order is not None:
        given = np.empty_like(data)
        given[order] = data
        data = given
    return data[seeds(data, k, seed=seed)].astype(np.float32, copy=True)


def _assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    backend = worker_backend()
    if backend.name == "cpu":
        return assign(x, centroids)
    # GPU worker: nearest centroid by an exact search on the device (CuPy tier or cuML).
    idx, dist = backend.nearest_rows(backend.to_device(centroids), x, 1)
    return np.asarray(idx[:, 0], np.int64), np.square(np.asarray(dist[:, 0], np.float32))


@on_worker
def lloyd_step(block: Block, centroids: np.ndarray, previous: Step | None) -> Step:
    """Assign the block's rows to ``centroids``; their sums, counts, inertia, farthest rows."""
    k = len(centroids)
    labels, mind = _assign(block.x, centroids)
    sums, counts = cluster_sums(block.x, labels, k)
    far = np.argsort(-mind, kind="stable")[: min(FARTHEST, k)]
    changed = len(labels) if previous is None else int(np.count_nonzero(labels != previous.labels))
    return Step(labels, sums.astype(np.float64), counts, float(mind.sum(dtype=np.float64)),
                changed, mind[far], block.x[far])  # fmt: skip


@on_worker
def add_steps(*steps: Step) -> Step:
    """Partial sums added (labels are left on their workers)."""
    return Step(
        np.zeros(0, np.int64),
        np.sum([s.sums for s in steps], axis=0),
        np.sum([s.counts for s in steps], axis=0),
        float(sum(s.inertia for s in steps)),
        int(sum(s.changed for s in steps)),
        np.concatenate([s.far_d for s in steps]),
        np.concatenate([s.far_x for s in steps]),
    )


@on_worker
def labels_of(step: Step) -> np.ndarray:
    return step.labels


@on_worker
def full_space_sums(block: Block, step: Step, k: int) -> Step:
    sums, counts = cluster_sums(block.x, step.labels, k)
    empty = np.zeros(0, np.float32)
    return Step(np.zeros(0, np.int64), sums.astype(np.float64), counts, 0.0, 0, empty,
                np.zeros((0, block.x.shape[1]), np.float32))  # fmt: skip


@on_worker
def inertia_of(block: Block, step: Step, centroids: np.ndarray) -> float:
    diff = block.x - centroids[step.labels]
    return float(np.einsum("ij,ij->", diff, diff, dtype=np.float64))


@on_worker
def nearest_in_block(block: Block, centroids: np.ndarray, count: int) -> tuple[np.ndarray, ...]:
    """Each centroid's ``count`` nearest rows of the block (global rows) and distances."""
    idx, dist = nearest_rows(block.x, centroids, min(count, len(block.x)))
    return block.rows[idx], dist


def _total(engine: Cluster, steps: list[Any]) -> Step:
    """Add partial steps on the workers, ``_FAN_IN`` at a time; gather the one total."""
    while len(steps) > 1:
        steps = [
            engine.submit(add_steps, *steps[i : i + _FAN_IN], name="kmeans-add")
            for i in range(0, len(steps), _FAN_IN)
        ]
    total: Step = engine.gather([engine.submit(add_steps, *steps, name="kmeans-add")])[0]
    return total


def _updated(centroids: np.ndarray, total: Step) -> np.ndarray:
    """New centroids: member means; empty clusters re-seeded with the farthest rows."""
    out = centroids.copy()
    filled = total.counts > 0
    out[filled] = (total.sums[filled] / total.counts[filled, None]).astype(np.float32)
    empty = np.flatnonzero(~filled)
    if len(empty):
        far = np.argsort(-total.far_d, kind="stable")[: len(empty)]
        out[empty[: len(far)]] = total.far_x[far]
    return out


def _sorted_rows(rows: np.ndarray | None, n_total: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``(rows sorted, the sorting order or None when rows is None: all rows)``, checked."""
    if rows is None:
        return np.arange(n_total, dtype=np.int64), None
    rows = np.asarray(rows)
    if rows.ndim != 1 or (rows.size and rows.dtype.kind not in "iu"):
        raise InvalidRequest("row indices must be a 1-D array of integers")
    if rows.size and (rows.min() < 0 or rows.max() >= n_total):
        raise InvalidRequest(f"row index out of range for {n_total:,} rows")
    order = np.argsort(rows, kind="stable")
    return rows.astype(np.int64)[order], order


def _in_given_order(values: np.ndarray, order: np.ndarray | None) -> np.ndarray:
    if order is None:
        return values
    out = np.empty_like(values)
    out[order] = values
    return out


class _Rows:
    """A job's rows, read once and kept on the workers: ``blocks`` in global row order."""

    def __init__(self, engine: Cluster, refs: list[ShardRef], rows: np.ndarray | None) -> None:
        self.sorted, self.order = _sorted_rows(rows, refs[-1].stop)
        locals_ = split_rows(refs, self.sorted)
        self.blocks = [
            engine.submit(read_block, ref, engine.limits, None if rows is None else local,
                          name="kmeans-read")
            for ref, local in zip(refs, locals_, strict=True) if len(local)
        ]  # fmt: skip
        self.sizes = [len(local) for local in locals_ if len(local)]
        self.dim = refs[0].dim

    @property
    def n(self) -> int:
        return len(self.sorted)

    def in_given_order(self, values: np.ndarray) -> np.ndarray:
        return _in_given_order(values, self.order)

    def sample(self, engine: Cluster, seed: int) -> list[Any]:
        """Up to SEED_ROWS rows, all of them when fewer, in row order, as futures."""
        if self.n <= SEED_ROWS:
            return list(self.blocks)
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(self.n, SEED_ROWS, replace=False))
        cuts = np.searchsorted(chosen, np.cumsum([0, *self.sizes]))
        starts = np.cumsum([0, *self.sizes])
        return [
            engine.submit(pick, b, chosen[cuts[i] : cuts[i + 1]] - starts[i], name="kmeans-seed")
            for i, b in enumerate(self.blocks) if cuts[i + 1] > cuts[i]
        ]  # fmt: skip


def _lloyd(
    engine: Cluster, work: list[Any], centroids: np.ndarray, n_iter: int, report: Progress
) -> tuple[np.ndarray, list[Any], Step]:
    shared = engine.scatter(centroids)
    steps = [engine.submit(lloyd_step, w, shared, None, name="kmeans-step") for w in work]
    total = _total(engine, list(steps))
    for it in range(n_iter):
        centroids = _updated(centroids, total)
        shared = engine.scatter(centroids)
        steps = [engine.submit(lloyd_step, w, shared, s, name="kmeans-step")
                 for w, s in zip(work, steps, strict=True)]  # fmt: skip
        before, total = total.inertia, _total(engine, list(steps))
        report("kmeans", 0.1 + 0.8 * (it + 1) / max(n_iter, 1))
        if total.changed == 0 or before - total.inertia <= KMEANS_TOL * total.inertia:
            break
    return centroids, steps, total


@on_worker
def vectors_of(block: Block, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The block's vectors of those global ``rows`` it holds: ``(rows held, vectors)``."""
    held = np.flatnonzero(np.isin(block.rows, rows))
    return block.rows[held], block.x[held]


def _full_space(
    engine: Cluster, job: _Rows, work: list[Any], reduced: np.ndarray, full: Step
) -> np.ndarray:
    """Member means in the full space; an empty cluster takes the row nearest its reduced
    centroid, as in-process."""
    k = len(reduced)
    filled = full.counts > 0
    out = np.zeros((k, job.dim), np.float32)
    out[filled] = (full.sums[filled] / full.counts[filled, None]).astype(np.float32)
    empty = np.flatnonzero(~filled)
    if len(empty):
        shared = engine.scatter(reduced[empty])
        found = engine.gather([engine.submit(nearest_in_block, w, shared, 1, name="kmeans-empty")
                               for w in work])  # fmt: skip
        cand, dist = np.hstack([f[0] for f in found]), np.hstack([f[1] for f in found])
        nearest = cand[np.arange(len(empty)), np.argmin(dist, axis=1)]
        held = engine.gather([engine.submit(vectors_of, b, nearest, name="kmeans-empty")
                              for b in job.blocks])  # fmt: skip
        rows = np.concatenate([h[0] for h in held])
        vectors = np.concatenate([h[1] for h in held])
        out[empty] = vectors[np.searchsorted(rows, nearest)]
    return out


def _kmeans(
    engine: Cluster, job: _Rows, k: int, seed: int, n_iter: int, report: Progress
) -> KMeansResult:
    if not 1 <= k <= job.n:
        raise InvalidRequest(f"K-means needs 1 <= k <= {job.n:,} (the number of rows): got k={k:,}")
    if n_iter < 0:
        raise InvalidRequest(f"n_iter must be >= 0: got {n_iter}")
    reduce = job.dim > 2 * REDUCED
    sample = job.sample(engine, seed)
    work = job.blocks
    if reduce:
        pca = engine.submit(fit_sample_pca, seed, *sample, name="kmeans-pca")
        work = [engine.submit(reduce_block, b, pca, name="kmeans-reduce") for b in job.blocks]
        sample = [engine.submit(reduce_rows, s, pca, name="kmeans-reduce") for s in sample]
    order = job.order if job.n <= SEED_ROWS else None
    seeds_ = engine.submit(seed_centroids, k, seed, order, *sample, name="kmeans-seed")
    centroids: np.ndarray = engine.gather([seeds_])[0]
    report("kmeans", 0.1)
    centroids, steps, _ = _lloyd(engine, work, centroids, n_iter, report)
    if reduce:  # the full space: the clusters' means, then iterations on the full rows
        parts = [engine.submit(full_space_sums, b, s, k, name="kmeans-full")
                 for b, s in zip(job.blocks, steps, strict=True)]  # fmt: skip
        full = _total(engine, parts)
        centroids = _full_space(engine, job, work, centroids, full)
        centroids, steps, _ = _lloyd(engine, job.blocks, centroids, n_iter, report)
    labels = np.concatenate(engine.gather([engine.submit(labels_of, s, name="kmeans-labels")
                                           for s in steps]))  # fmt: skip
    shared = engine.scatter(centroids)
    inertia = float(sum(engine.gather([
        engine.submit(inertia_of, b, s, shared, name="kmeans-inertia")
        for b, s in zip(job.blocks, steps, strict=True)
    ])))  # fmt: skip
    report("kmeans", 1.0)
    return KMeansResult(centroids.astype(np.float32), job.in_given_order(labels), inertia)


def distributed_kmeans(
    engine: Cluster,
    refs: list[ShardRef],
    k: int,
    *,
    rows: np.ndarray | None = None,
    seed: int = 0,
    n_iter: int = KMEANS_MAX_ITER,
    progress: Progress | None = None,
) -> KMeansResult:
    """See the module docstring; the result is :func:`tessera_gpu.clustering.kmeans`'s."""
    report = progress or (lambda stage, fraction: None)
    return _kmeans(engine, _Rows(engine, refs, rows), k, seed, n_iter, report)


def distributed_diversity_sample(
    engine: Cluster,
    refs: list[ShardRef],
    n: int,
    *,
    rows: np.ndarray | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> np.ndarray:
    """``n`` distinct global rows, one per K-means cluster (k = n), nearest its centroid."""
    report = progress or (lambda stage, fraction: None)
    job = _Rows(engine, refs, rows)
    if n < 1 or n > job.n:
        raise InvalidRequest(
            f"a K-means sample needs 1 <= n <= {job.n:,} (the matching episodes): got n={n:,}"
        )
    result = _kmeans(engine, job, n, seed, KMEANS_MAX_ITER, report)
    picked = np.full(n, -1, dtype=np.int64)
    taken: set[int] = set()
    todo = np.arange(n)
    count = min(CANDIDATES, job.n)
    while len(todo):  # ends: with count = all rows, every centroid finds a free one
        shared = engine.scatter(result.centroids[todo])
        found = engine.gather([engine.submit(nearest_in_block, b, shared, count, name="sample-near")
                               for b in job.blocks])  # fmt: skip
        cand = np.hstack([f[0] for f in found])
        dist = np.hstack([f[1] for f in found])
        order = np.lexsort((cand, dist), axis=-1)[:, :count]
        cand, dist = np.take_along_axis(cand, order, 1), np.take_along_axis(dist, order, 1)
        todo = greedy_pick(cand, dist, todo, taken, picked)
        count = min(count * 4, job.n)
    return picked


def rapids_kmeans_of(
    engine: Cluster,
    refs: list[ShardRef],
    k: int,
    *,
    rows: np.ndarray | None,
    seed: int,
    n_iter: int,
) -> KMeansResult:
    """K-means with ``cuml.dask`` (GPU workers with RAPIDS, :mod:`.rapids`), same result type."""
    from tessera_gpu.distributed.rapids import rapids_kmeans

    ordered, order = _sorted_rows(rows, refs[-1].stop)
    if not 1 <= k <= len(ordered):
        raise InvalidRequest(
            f"K-means needs 1 <= k <= {len(ordered):,} (the number of rows): got k={k:,}"
        )
    locals_: list[np.ndarray | None] = (
        [None] * len(refs) if rows is None else list(split_rows(refs, ordered))
    )
    fit = rapids_kmeans(engine, refs, k, locals_=locals_, seed=seed,
                        n_iter=n_iter)  # fmt: skip
    return KMeansResult(fit.centroids, _in_given_order(fit.labels, order), fit.inertia)
