"""The one core object: :class:`Tessera` owns a data directory and everything in memory for it.

Both the CLI and the web app go through it (the way datasette's ``Datasette`` serves both). It
is the composition root and the owner of memory: it opens and closes the data directory
(:class:`.DataDir`) and its catalog (:class:`.Catalog`, SQLite), starts the jobs of what it
registers, and releases everything a dataset holds when it is deleted. The work is done by
services with one job each, every one taking a loaded dataset (:class:`.Live`):

* :attr:`registry` (:class:`.Registry`): load, register (paths, uploads), restore, rehash;
* :attr:`contexts` (:class:`.FilterContexts`): what filters refer to, and their masks;
* :attr:`graphs` (:class:`.SimilarityGraphs`): the similarity graph job and its fields;
* :attr:`similar` (:class:`.SimilarSearch`): similar episodes, near-duplicate groups;
* :attr:`curation` (:class:`.Curation`): episodes, counts, facets, summaries, clusters,
  selections;
* :attr:`samples` (:class:`.Samples`): draw, keep and export samples;
* :attr:`projections` (:class:`.Projections`): the map's job and its indexes.

Below them: the projection jobs and the device arrays they made (:class:`.ProjectionJobs`), the
analysis jobs (:class:`.Tasks`), the in-memory map caches (:class:`.MapCache`), the upload
limiter (:class:`.UploadSlots`) and, with ``--dask``, the cluster
(:class:`~tessera_gpu.distributed.DaskEngine`): datasets are then registered with their
embeddings left on disk, and their kNN graph, map, K-means and samples computed where the
files are. Methods are synchronous and may be slow: the HTTP layer calls them in a worker
thread.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from tessera_gpu.backends import Backend, get_backend, on_gpu
from tessera_gpu.core.catalog import open_catalog
from tessera_gpu.core.contexts import FilterContexts
from tessera_gpu.core.curation import Curation
from tessera_gpu.core.datadir import DataDir
from tessera_gpu.core.graphs import SimilarityGraphs
from tessera_gpu.core.jobs import ProjectionJobs, ProjectionStatus
from tessera_gpu.core.projections import Projections
from tessera_gpu.core.registry import Live, Registry
from tessera_gpu.core.samples import Samples
from tessera_gpu.core.similar import SimilarSearch
from tessera_gpu.core.tasks import Tasks
from tessera_gpu.core.uploads import Upload, UploadSlots
from tessera_gpu.errors import TesseraError, Unavailable
from tessera_gpu.io.artifacts import ArtifactStore
from tessera_gpu.io.dataset import DatasetFacts
from tessera_gpu.projection.cache import ProjectionCache
from tessera_gpu.projection.params import ProjectionParams
from tessera_gpu.render.mapcache import MapCache
from tessera_gpu.settings import Settings

if TYPE_CHECKING:
    from tessera_gpu.distributed import DaskEngine

__all__ = ["DatasetSummary", "Tessera"]

log = logging.getLogger("tessera.core")


class DatasetSummary(DatasetFacts):
    """A registered dataset: what validation found, where it came from, and its map."""

    id: str
    source: str
    added_at: str
    projection: ProjectionStatus


class Tessera:
    """One data directory's datasets, jobs and caches. ``open()`` before use, ``close()`` after.

    ``backend`` overrides ``get_backend(settings.device)``; ``isolate`` validates files that
    come over HTTP in a child process first. ``engine`` is the Dask cluster to use (default:
    one connected to ``settings.dask`` when set; a scheduler that cannot be reached is a 503
    ``dask_unavailable`` here, before anything starts).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        backend: Backend | None = None,
        isolate: bool = True,
        engine: DaskEngine | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend or get_backend(settings.device)
        self.data = DataDir(settings.data_dir)
        self._hold = self.data.share()  # released by close(); restore-catalog waits for it
        try:
            self.catalog = open_catalog(self.data)
        except BaseException:
            self._hold.close()
            raise
        if engine is None and settings.dask:
            from tessera_gpu.distributed import DaskEngine  # dask only with --dask

            engine = DaskEngine(settings.dask)
        self.engine = engine
        self.cache = ProjectionCache(self.data.cache_dir)
        self.jobs = ProjectionJobs(self.backend, self.cache, listener=self._record_job,
                                   engine=engine, landmarks=settings.dask_landmarks)  # fmt: skip
        self.tasks = Tasks(listener=self._record_task)
        self.maps = MapCache(gpu=on_gpu(self.backend))
        self.uploads = UploadSlots()
        self.graph_store = ArtifactStore(self.data.cache_dir, ".knn")
        self.cluster_store = ArtifactStore(self.data.cache_dir, ".clusters")
        self.registry = Registry(settings, self.data, self.catalog, self.backend,
                                 isolate=isolate, engine=engine)  # fmt: skip
        self.graphs = SimilarityGraphs(self.registry, self.tasks, self.jobs, self.graph_store,
                                       self.backend, engine)  # fmt: skip
        self.contexts = FilterContexts(self.registry, self.catalog, self.jobs, self.graphs)
        self.similar = SimilarSearch(self.graphs, self.contexts, engine)
        self.samples = Samples(self.catalog, self.contexts, self.jobs, self.backend, engine)
        self.curation = Curation(
            self.registry, self.catalog, self.contexts, self.graphs, self.samples, self.tasks,
            self.jobs, self.cluster_store, self.backend, engine,
        )  # fmt: skip
        self.projections = Projections(self.registry, self.catalog, self.jobs, self.maps,
                                       self.contexts, self.backend)  # fmt: skip

    # ---- life cycle -------------------------------------------------------------------------

    def open(self, files: Iterable[str | Path] = (), *, join: str | None = None) -> None:
        """Start up: sweep stale temp files, import an old-layout data directory, reload every
        dataset, start the jobs, register ``files`` (each on its own, or with ``join`` one
        dataset of that name across them all)."""
        for stale in self.data.sweep():
            log.info("removed stale temporary file %s", stale)
        if self.catalog.problem is None:
            self.catalog.import_legacy(self.data.root)
            self.catalog.backup("start")
        self.jobs.start()
        self.tasks.start()
        for entry in self.catalog.datasets.all():
            live = self.registry.restore(entry)
            if live is not None:
                self._start(live)
        groups = [list(files)] if join is not None else [[f] for f in files]
        for group in groups:
            if not group:
                continue
            try:
                self.register_paths(group, name=join, check_allowed=False)
            except TesseraError as exc:  # the server still serves the others
                log.error("could not register %s: %s", ", ".join(map(str, group)), exc.message)

    def close(self) -> None:
        self.jobs.stop()
        self.tasks.stop()
        self.catalog.backup("shutdown")
        self.catalog.close()
        self._hold.close()
        if self.engine is not None:
            self.engine.close()

    def __enter__(self) -> Tessera:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- registration: the registry adds, the root starts the jobs --------------------------

    def register_path(self, path: str | Path, *, check_allowed: bool = True) -> Live:
        """Register a file on the server's disk (by path, not copied); a glob joins the files
        it matches (:meth:`register_paths`)."""
        return self.register_paths([path], check_allowed=check_allowed)

    def register_paths(
        self,
        patterns: Sequence[str | Path],
        *,
        name: str | None = None,
        check_allowed: bool = True,
    ) -> Live:
        """:meth:`.Registry.register_paths`, then the new dataset's jobs started."""
        live, new = self.registry.register_paths(patterns, name=name, check_allowed=check_allowed)
        if new:
            self._start(live)
        return live

    def register_upload(self, upload: Upload) -> Live:
        """Validate a received upload and move it into place; the same bytes, the same dataset."""
        live, new = self.registry.register_upload(upload)
        if new:
            self._start(live)
        return live

    def _start(self, live: Live) -> None:
        """A dataset with embeddings gets its map and its similarity graph made."""
        if live.dataset.dim is not None:
            self.jobs.submit(live.id, live.dataset, ProjectionParams(**live.entry.projection))
            self.graphs.start(live)

    # ---- look-up and deletion ---------------------------------------------------------------

    def summary(self, live: Live) -> DatasetSummary:
        facts = live.dataset.summary()
        return DatasetSummary(
            **msgspec.structs.asdict(facts),
            id=live.id,
            source=live.entry.source,
            added_at=live.entry.added_at,
            projection=self.jobs.status(live.id),
        )

    def delete(self, dataset_id: str) -> None:
        """Forget a dataset and release its memory: its maps, its job and device array, its
        samples, its cache, and its upload (never a file registered by path)."""
        self.registry.get(dataset_id)
        self.catalog.check_writable()
        live, shared = self.registry.remove(dataset_id)
        self.jobs.forget(dataset_id)
        self.tasks.forget(dataset_id)
        self.maps.forget(dataset_id)
        self.contexts.forget(dataset_id)
        self.catalog.datasets.remove(dataset_id)
        if live.entry.source == "upload":
            self.data.upload_path(dataset_id).unlink(missing_ok=True)
        if live.dataset.embeddings_hash is not None and not shared:
            self.cache.forget(live.dataset.embeddings_hash)  # every map, whatever its params
            self.graph_store.forget(live.dataset.embeddings_hash)
            self.cluster_store.forget(live.dataset.embeddings_hash)

    def holds(self, dataset_id: str) -> bool:
        """Whether any memory is still held for ``dataset_id`` (after :meth:`delete`: False)."""
        held = (self.registry, self.jobs, self.tasks, self.maps)
        return any(part.holds(dataset_id) for part in held)

    # ---- the catalog's record of the jobs ---------------------------------------------------

    def _record_job(
        self, dataset_id: str, params: dict[str, Any], status: str, error: str | None,
        info: dict[str, Any],
    ) -> None:  # fmt: skip
        self._record_task(dataset_id, "projection", params, status, error, info)

    def _record_task(
        self, dataset_id: str, kind: str, params: dict[str, Any], status: str, error: str | None,
        info: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        """A job's state into the catalog; a damaged one only loses it (logged), not the job."""
        try:
            self.catalog.jobs.record(dataset_id, kind, params=params, status=status, error=error,
                                    info=info)  # fmt: skip
        except Unavailable as exc:
            log.warning("%s job of %s not recorded: %s", kind, dataset_id, exc.message)
