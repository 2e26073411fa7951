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

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tessera_gpu.backends import KMEANS_MAX_ITER, Neighbors
from tessera_gpu.clustering import KMeansResult
from tessera_gpu.distributed.cluster import Cluster
from tessera_gpu.errors import InvalidRequest
from tessera_gpu.io.dataset import Dataset, Part
from tessera_gpu.progress import Progress
from tessera_gpu.projection.params import Projection, ProjectionParams

__all__ = ["DaskEngine"]


class DaskEngine(Cluster):
    """The embedding-space work of a sharded dataset on a :class:`~.cluster.Cluster` (same
    constructor): the algorithms of :mod:`.knn`, :mod:`.kmeans`, :mod:`.landmarks` and
    :mod:`.rapids`, given this cluster, with the shapes of the in-process results.
    """

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
            with self.translated():
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
            with self.translated():
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
