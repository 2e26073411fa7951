"""``DaskEngine``: the embedding-space work of a sharded dataset, on a Dask cluster.

``tessera serve --dask ADDRESS`` (or ``TESSERA_DASK``) makes the core hand its kNN graph,
K-means and diversity samples, projection and near-duplicate groups to this engine; without it
nothing here is imported, and neither is dask.

Data flow: what crosses the network
-----------------------------------
The engine works on *shard references* (a file on shared storage, a row range), never on
embeddings held by the caller: the server sends paths and row numbers, workers read their
partitions themselves (:mod:`.refs`, through the loader's checks) and keep them in their own
memory. What the server receives is small and already has the shape of the in-process results:

===================  ===================================================  =======================
method               between workers                                      back to the server
===================  ===================================================  =======================
``hash_files``       nothing                                              a SHA-256 per file
``check``            nothing                                              a digest per partition
``take``             nothing                                              the rows asked for
``nearest``          the query vector, out                                ``k`` candidates per
                                                                          partition
``cosine_knn/knn``   a 50k-row sample; each row ~1.5x (to its cell        ``k`` neighbours and
                     groups; :mod:`.knn`)                                 distances per row
``kmeans``           centroids out and partial sums back, per iteration   centroids, labels,
                     (:mod:`.kmeans`)                                     inertia
``diversity_sample``  as ``kmeans``, then ``n x 8`` candidates            ``n`` rows
``project``          the landmarks (at most 200k rows) to one worker,     ``(N, 2)`` coordinates
                     their index to every worker (:mod:`.landmarks`)
===================  ===================================================  =======================

Jobs are Dask futures (``client.submit`` with ``retries``), named ``tessera-<stage>-<id>`` so
they show as such on the scheduler's dashboard. A worker lost mid-job does not lose it: the
scheduler runs its tasks again elsewhere (and recomputes what it held). When a task still
fails -- its workers died ``allowed-failures`` times, or it raised after its retries -- the
job raises :class:`~tessera_gpu.errors.Unavailable` naming the task and the worker, and can
be started again; a :class:`~tessera_gpu.errors.TesseraError` from a worker (a shard that
changed, a NaN row) comes through unchanged.

GPU workers (``dask cuda worker``) pick their backend as the server does: cuML where it
imports, else the CuPy tier (:func:`.refs.worker_backend`); every GPU branch is marked as such.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tessera_gpu.backends import KMEANS_MAX_ITER, Neighbors
from tessera_gpu.clustering import KMeansResult
from tessera_gpu.errors import InvalidRequest, TesseraError, Unavailable
from tessera_gpu.io.dataset import Dataset, Part
from tessera_gpu.io.safety import Limits
from tessera_gpu.projection.project import Projection, ProjectionParams

__all__ = ["DaskEngine", "Progress"]

Progress = Callable[[str, float], None]
DEFAULT_RETRIES = 2


class DaskEngine:
    """The cluster at ``address`` (``tcp://host:8786``), or an existing ``Client``.

    ``limits`` bound every file a worker reads (as ``load_dataset``'s); ``retries`` is how
    often a task that raised runs again; ``partition_bytes`` and ``round_bytes`` bound a task's
    share of the embeddings and a kNN round's routed rows (default: a quarter of the workers'
    memory). ``rapids`` forces the ``cuml.dask`` branch on or off (default: on when every
    worker has cuML). Raises :class:`Unavailable` when the scheduler cannot be reached.
    """

    def __init__(
        self,
        address_or_client: Any,
        *,
        limits: Limits | None = None,
        retries: int = DEFAULT_RETRIES,
        timeout: float = 10.0,
        partition_bytes: int | None = None,
        round_bytes: int | None = None,
        rapids: bool | None = None,
    ) -> None:
        from tessera_gpu.distributed.refs import PARTITION_BYTES

        self.limits = limits or Limits()
        self.retries = retries
        self.timeout = timeout
        self.partition_bytes = partition_bytes or PARTITION_BYTES
        self._round_bytes = round_bytes
        self._rapids = rapids
        if isinstance(address_or_client, str):
            self.client = _connect(address_or_client, timeout)
            self._owns = True
        else:
            self.client = address_or_client
            self._owns = False
        self.address = str(self.client.scheduler.address)

    def close(self) -> None:
        if self._owns:
            self.client.close()

    def __enter__(self) -> DaskEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the cluster ------------------------------------------------------------------------

    def _workers(self) -> dict[str, Any]:
        try:
            workers = dict(self.client.scheduler_info(n_workers=-1)["workers"])
            if not workers:
                self.client.wait_for_workers(1, timeout=self.timeout)
                workers = dict(self.client.scheduler_info(n_workers=-1)["workers"])
        except (OSError, TimeoutError) as exc:
            raise Unavailable(
                f"The Dask scheduler at {self.address} has no workers ({exc}): start some with "
                f"`dask worker {self.address}` (or `dask cuda worker {self.address}`)",
                code="dask_no_workers",
            ) from None
        return workers

    def n_workers(self) -> int:
        return len(self._workers())

    def round_bytes(self) -> int:
        """Routed bytes one kNN round may hold across the cluster."""
        if self._round_bytes is not None:
            return self._round_bytes
        limits = [int(w.get("memory_limit") or 0) for w in self._workers().values()]
        total = sum(limits) if all(limits) else 8 * 2**30
        return max(total // 4, 64 * 2**20)

    def uses_rapids(self) -> bool:
        """Whether K-means and kNN go to ``cuml.dask`` (:mod:`.rapids`): GPU workers with cuML."""
        if self._rapids is None:
            from tessera_gpu.distributed.rapids import cluster_has_cuml

            with self._translated():
                self._rapids = cluster_has_cuml(self)
        return self._rapids

    def describe(self) -> dict[str, Any]:
        """The scheduler's address and its workers: count, threads, memory, GPUs."""
        workers = self._workers()
        return {
            "scheduler": self.address,
            "workers": len(workers),
            "threads": sum(int(w.get("nthreads", 0)) for w in workers.values()),
            "memory_limit": sum(int(w.get("memory_limit") or 0) for w in workers.values()),
            "gpus": sum(int(w.get("resources", {}).get("GPU", 0)) for w in workers.values()),
            "cuml_dask": self.uses_rapids(),
        }

    # ---- futures ----------------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], *args: Any, name: str, **kwargs: Any) -> Any:
        """``client.submit`` with retries and a key that says what the task is."""
        key = f"tessera-{name}-{uuid.uuid4().hex[:12]}"
        return self.client.submit(fn, *args, key=key, retries=self.retries, pure=False, **kwargs)

    def scatter(self, value: Any) -> Any:
        """A value (centroids, an index) placed on a worker once, for many tasks to use."""
        return self.client.scatter(value, hash=False)

    def gather(self, futures: Sequence[Any]) -> list[Any]:
        with self._translated():
            return list(self.client.gather(list(futures)))

    def as_completed(self, futures: Sequence[Any]) -> Iterator[Any]:
        """The futures' results in the order they finish (only Dask's errors are translated,
        not the caller's, raised at the ``yield``)."""
        from dask.distributed import as_completed

        with self._translated():
            finished = as_completed(list(futures), loop=self.client.loop)  # not a default client
        while True:
            with self._translated():
                future = next(finished, None)
                result = None if future is None else future.result()
            if future is None:
                return
            yield result

    def _translated(self) -> Any:
        return _Translate(self)

    # ---- datasets ---------------------------------------------------------------------------

    def refs(self, parts: Sequence[Part]) -> list[Any]:
        """The partitions of a dataset's parts (``Dataset.parts``)."""
        from tessera_gpu.distributed.refs import partitions

        if not parts or parts[0].dim is None:
            raise InvalidRequest("this dataset has no embeddings (metadata-only mode)")
        return partitions(parts, self.partition_bytes)

    def check(self, parts: Sequence[Part], progress: Progress | None = None) -> str:
        """Read every row on the workers with the loader's checks (a NaN is a 422 naming the
        file and row); return the embeddings' digest (a hash of the partitions' xxh3)."""
        import xxhash

        from tessera_gpu.distributed.refs import digest_block

        refs = self.refs(parts)
        futures = [self.submit(digest_block, r, self.limits, name="check") for r in refs]
        digests = self.gather(futures)
        if progress is not None:
            progress("check", 1.0)
        hasher = xxhash.xxh3_128()
        hasher.update(f"dask:{refs[-1].stop}x{refs[0].dim}:".encode())
        for digest in digests:
            hasher.update(digest.encode())
        return str(hasher.hexdigest())

    def hash_files(self, paths: Sequence[str | Path]) -> list[str]:
        """Each file's SHA-256, computed on the workers (the files are read where they lie,
        in parallel, not through the server)."""
        from tessera_gpu.distributed.refs import file_digest

        return [str(d) for d in self.gather(
            [self.submit(file_digest, str(p), name="hash") for p in paths]
        )]  # fmt: skip

    def load_shards(
        self,
        paths: Sequence[str | Path],
        *,
        name: str | None = None,
        max_episodes: int | None = None,
        progress: Progress | None = None,
    ) -> Dataset:
        """:func:`~tessera_gpu.io.shards.load_shards` with the embeddings left on disk: the
        server validates every file but their values, then the workers check those (finite)
        and hash them. ``Dataset.embeddings`` is None; ``dim``, ``parts`` and
        ``embeddings_hash`` are set."""
        from tessera_gpu.io.shards import load_shards

        dataset = load_shards(
            paths, name=name, limits=self.limits, load_embeddings=False, max_episodes=max_episodes
        )
        if dataset.dim is not None:
            dataset.embeddings_hash = self.check(dataset.parts, progress)
        return dataset

    def take(self, parts: Sequence[Part], rows: np.ndarray) -> np.ndarray:
        """The vectors of ``rows`` (any order, a few thousand at most: they come to the
        server), float32 ``(len(rows), D)`` in that order."""
        return self.take_refs(self.refs(parts), rows)

    def take_refs(self, refs: Sequence[Any], rows: np.ndarray) -> np.ndarray:
        """:meth:`take` on a dataset's partitions."""
        from tessera_gpu.distributed.refs import split_rows, take_rows

        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= refs[-1].stop):
            raise InvalidRequest(f"row index out of range for {refs[-1].stop:,} rows")
        uniq, back = np.unique(rows, return_inverse=True)
        wanted = [(r, loc) for r, loc in zip(refs, split_rows(refs, uniq), strict=True) if len(loc)]
        got = self.gather([self.submit(take_rows, r, self.limits, loc, name="take")
                           for r, loc in wanted])  # fmt: skip
        out = np.concatenate(got) if got else np.zeros((0, refs[0].dim), np.float32)
        return np.ascontiguousarray(out[back], dtype=np.float32)

    # ---- compute ----------------------------------------------------------------------------

    def cosine_knn(
        self, parts: Sequence[Part], k: int, *, seed: int = 0, progress: Progress | None = None
    ) -> Neighbors:
        """Each row's ``k`` nearest rows by cosine distance, itself first, with exact distances
        (``Backend.cosine_knn``'s contract; global rows)."""
        return self._knn(parts, k, "cosine", seed, progress)

    def knn(
        self, parts: Sequence[Part], k: int, *, seed: int = 0, progress: Progress | None = None
    ) -> Neighbors:
        """Each row's ``k`` nearest rows by Euclidean distance, itself first, exact distances."""
        return self._knn(parts, k, "euclidean", seed, progress)

    def _knn(
        self, parts: Sequence[Part], k: int, metric: str, seed: int, progress: Progress | None
    ) -> Neighbors:
        from tessera_gpu.distributed.knn import distributed_knn

        if k < 1:
            raise InvalidRequest(f"k must be at least 1: got {k}")
        if self.uses_rapids():  # GPU workers with RAPIDS
            from tessera_gpu.distributed.rapids import rapids_knn

            refs = self.refs(parts)
            with self._translated():
                return rapids_knn(self, refs, min(k, refs[-1].stop), metric=metric)
        return distributed_knn(self, self.refs(parts), k, metric=metric, seed=seed,
                               progress=progress)  # fmt: skip

    def nearest(
        self, parts: Sequence[Part], row: int, k: int, *, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact: the ``k`` rows nearest ``row`` by cosine distance (itself excluded) among
        ``allowed``, nearest first: a scan of every partition where it lies."""
        from tessera_gpu.distributed.knn import exact_nearest

        return exact_nearest(self, self.refs(parts), row, k, allowed)

    def kmeans(
        self,
        parts: Sequence[Part],
        k: int,
        *,
        rows: np.ndarray | None = None,
        seed: int = 0,
        n_iter: int = KMEANS_MAX_ITER,
        progress: Progress | None = None,
    ) -> KMeansResult:
        """:func:`tessera_gpu.clustering.kmeans` on the cluster: same result type; labels in
        the order of ``rows`` (default: all rows)."""
        from tessera_gpu.distributed.kmeans import distributed_kmeans, rapids_kmeans_of

        if self.uses_rapids():  # GPU workers with RAPIDS
            with self._translated():
                return rapids_kmeans_of(self, self.refs(parts), k, rows=rows, seed=seed,
                                        n_iter=n_iter)  # fmt: skip
        return distributed_kmeans(self, self.refs(parts), k, rows=rows, seed=seed,
                                  n_iter=n_iter, progress=progress)  # fmt: skip

    def diversity_sample(
        self,
        parts: Sequence[Part],
        n: int,
        *,
        rows: np.ndarray | None = None,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> np.ndarray:
        """:func:`tessera_gpu.clustering.diversity_sample` on the cluster: ``n`` distinct rows,
        one per K-means cluster (k = n), nearest its centroid."""
        from tessera_gpu.distributed.kmeans import distributed_diversity_sample

        return distributed_diversity_sample(self, self.refs(parts), n, rows=rows, seed=seed,
                                            progress=progress)  # fmt: skip

    def project(
        self,
        parts: Sequence[Part],
        params: ProjectionParams | None = None,
        *,
        landmarks: int = 200_000,
        progress: Progress | None = None,
    ) -> Projection:
        """A 2-D map: ``landmarks`` rows fitted by :func:`~tessera_gpu.projection.project.project`
        on one worker, the rest placed on their own workers (:mod:`.landmarks`)."""
        from tessera_gpu.distributed.landmarks import distributed_project

        if landmarks < 4:
            raise InvalidRequest(f"landmarks must be at least 4: got {landmarks}")
        params = params or ProjectionParams()
        return distributed_project(self, self.refs(parts), params, landmarks=landmarks,
                                   progress=progress)  # fmt: skip


def _connect(address: str, timeout: float) -> Any:
    from dask.distributed import Client

    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except ValueError as exc:
        raise InvalidRequest(
            f"--dask must be a scheduler address such as tcp://host:8786: got {address!r} ({exc})",
            code="bad_setting",
        ) from None
    except (OSError, TimeoutError) as exc:
        raise Unavailable(
            f"Cannot reach the Dask scheduler at {address} ({exc}). Start one with "
            f"`dask scheduler` and workers with `dask worker {address}`, or run without --dask",
            code="dask_unavailable",
        ) from None


class _Translate:
    """Turns what a gather raises into the errors a user sees (see the module docstring)."""

    def __init__(self, engine: DaskEngine) -> None:
        self.engine = engine

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: Any) -> None:
        if exc is not None and not isinstance(exc, TesseraError | GeneratorExit):
            raise _translate(exc, self.engine) from None


def _translate(exc: BaseException, engine: DaskEngine) -> TesseraError:
    from dask.distributed import CancelledError, KilledWorker

    from tessera_gpu.distributed.refs import TaskFailed

    again = "The job can be started again"
    if isinstance(exc, KilledWorker):
        return Unavailable(
            f"The Dask job lost task {exc.task!r}: every worker that ran it died "
            f"({exc.allowed_failures + 1} tries, the last on {exc.last_worker.address}). {again}",
            code="dask_worker_lost",
        )
    if isinstance(exc, TaskFailed):
        return Unavailable(
            f"The Dask job failed after {engine.retries} retries: {exc}. {again}",
            code="dask_task_failed",
        )
    if isinstance(exc, CancelledError):
        return Unavailable(
            f"The Dask job was cancelled (the scheduler at {engine.address} restarted or "
            f"lost it). {again}",
            code="dask_cancelled",
        )
    if isinstance(exc, OSError | TimeoutError):
        return Unavailable(
            f"Lost the Dask scheduler at {engine.address} ({exc}). {again} once it is back",
            code="dask_unavailable",
        )
    return Unavailable(
        f"The Dask job failed: {type(exc).__name__}: {exc}. {again}", code="dask_task_failed"
    )
