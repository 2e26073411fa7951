"""The similarity graph of each dataset: the job that builds its cosine kNN graph (and the
``uniqueness`` and ``duplicate_group`` fields it adds back), the graph once built, and the
near-duplicate cut filters use. On a Dask cluster the graph is built where the files are."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tessera_gpu.backends import Backend
from tessera_gpu.core.jobs import ProjectionJobs, dask_required
from tessera_gpu.core.registry import Live, Registry
from tessera_gpu.core.tasks import Tasks, TaskStatus
from tessera_gpu.errors import Unavailable, needs_embeddings
from tessera_gpu.io.artifacts import ArtifactStore
from tessera_gpu.progress import Progress
from tessera_gpu.similarity import (
    GRAPH_K,
    SimilarityIndex,
    Vectors,
    cached_index,
    derived_fields,
    load_or_build,
    load_or_build_graph,
)

if TYPE_CHECKING:
    from tessera_gpu.distributed import DaskEngine

__all__ = ["SIMILARITY", "SimilarityGraphs", "on_cluster"]

SIMILARITY = "similarity"  # the analysis job that builds the similarity index
NEEDS_EMBEDDINGS = "This dataset is metadata-only: similarity needs embeddings"


def on_cluster(engine: DaskEngine | None) -> DaskEngine:
    """The Dask cluster, for a dataset whose embeddings are on it (409 without one)."""
    if engine is None:
        raise dask_required()
    return engine


@dataclass(eq=False)
class SimilarityGraphs:
    """Each dataset's similarity index, built once per embeddings (cached on disk)."""

    registry: Registry
    tasks: Tasks
    jobs: ProjectionJobs
    store: ArtifactStore
    backend: Backend
    engine: DaskEngine | None

    def index(
        self, live: Live, *, wait: bool = False, progress: Progress | None = None
    ) -> SimilarityIndex | TaskStatus:
        """The dataset's similarity index; or (without ``wait``) the status of the job
        building it, started or joined here (a failed one is started again). ``wait`` builds
        it in this thread, or reads it from the cache: what the CLI does. 409 in
        metadata-only mode."""
        needs_embeddings(live.dataset.dim, NEEDS_EMBEDDINGS)
        if wait:
            embeddings = live.dataset.embeddings
            if embeddings is None:
                raise dask_required()
            device = self.backend.to_device(embeddings)
            return load_or_build(self.store, live.dataset.embeddings_hash, embeddings, device,
                                 self.backend, progress=progress)  # fmt: skip
        found = self.tasks.result(live.id, SIMILARITY)
        if isinstance(found, SimilarityIndex):
            return found
        return self.start(live)

    def start(self, live: Live) -> TaskStatus:
        """Start (or join) the job building the graph and its derived fields."""
        dataset_id, dataset = live.id, live.dataset
        needs_embeddings(dataset.dim, NEEDS_EMBEDDINGS)
        vectors = self.vectors(live)

        def run(progress: Progress) -> SimilarityIndex:
            if dataset.on_cluster:
                engine = on_cluster(self.engine)
                index = load_or_build_graph(
                    self.store, dataset.embeddings_hash,
                    lambda k: engine.cosine_knn(dataset.parts, k, progress=progress),
                    engine="dask", progress=progress,
                )  # fmt: skip
            else:
                index = self._build(live, progress)
            progress("fields", 0.95)
            self.registry.set_derived(dataset_id, derived_fields(index, vectors))
            return index

        return self.tasks.submit(dataset_id, SIMILARITY, {"k": GRAPH_K}, run)

    def _build(self, live: Live, progress: Progress) -> SimilarityIndex:
        """The graph from the cache (no embeddings read, none moved), else built here."""
        dataset = live.dataset
        found = cached_index(self.store, dataset.embeddings_hash, dataset.n_episodes,
                             progress=progress)  # fmt: skip
        if found is not None:
            return found
        device = self.jobs.device_array(live.id, dataset)
        embeddings = dataset.embeddings
        assert embeddings is not None  # device_array read them
        return load_or_build(self.store, dataset.embeddings_hash, embeddings, device,
                             self.backend, progress=progress)  # fmt: skip

    def status(self, live: Live) -> TaskStatus:
        """The job building the graph (started here if there is none): absent, queued,
        running, done or failed. 409 in metadata-only mode."""
        self.index(live)
        return self.tasks.status(live.id, SIMILARITY)

    def ready(self, live: Live) -> SimilarityIndex:
        """The index, or 503 ``similarity_not_ready`` while it is being built."""
        index = self.index(live)
        if isinstance(index, SimilarityIndex):
            return index
        raise Unavailable(
            f"The similarity graph is being built ({index.status}, "
            f"{round(100 * index.progress)}%); try again shortly",
            code="similarity_not_ready",
            retry_after=5,
        )

    def vectors(self, live: Live) -> Vectors:
        """The embeddings in memory, or a function fetching rows: from the Dask cluster, or
        from deferred embeddings (read then)."""
        dataset, deferred = live.dataset, live.dataset.deferred
        if deferred is not None and not deferred.loaded:  # read when some rows are wanted
            return deferred.rows
        if dataset.embeddings is not None:
            return dataset.embeddings
        return functools.partial(on_cluster(self.engine).take, dataset.parts)

    def keep_one(self, live: Live, threshold: float, mask: np.ndarray) -> np.ndarray:
        """The near-duplicate cut of ``mask``: one episode kept per group within
        ``threshold``."""
        return self.ready(live).keep_mask(self.vectors(live), threshold, mask)[0]
