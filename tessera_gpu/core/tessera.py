"""The one core object: :class:`Tessera` owns a data directory and everything in memory for it.

Both the CLI and the web app go through it (the way datasette's ``Datasette`` serves both):

* the data directory (:class:`.DataDir`) and its catalog (:class:`.Catalog`, SQLite);
* the loaded datasets (:class:`Live`: the validated :class:`~tessera_gpu.io.dataset.Dataset`
  with its catalog entry);
* the projection jobs and the device arrays they made (:class:`.ProjectionJobs`);
* the analysis jobs and their results: the similarity graph (:class:`.Tasks`);
* the in-memory map caches: tile index, k-d tree, rendered tiles (:class:`.MapCache`);
* the upload limiter (:class:`.UploadSlots`);
* with ``--dask``, the cluster (:class:`~tessera_gpu.distributed.DaskEngine`): datasets are
  then registered with their embeddings left on disk (``Dataset.embeddings`` None, ``dim``
  set), and their kNN graph, map, K-means and samples are computed where the files are.

Whatever holds memory for a dataset is owned here, so :meth:`Tessera.delete` releases it all.
Methods are synchronous and may be slow (loading, hashing, sampling): the HTTP layer calls them
in a worker thread.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from tessera_gpu import __version__
from tessera_gpu.backends import Backend, get_backend, on_gpu
from tessera_gpu.clustering import kmeans
from tessera_gpu.core.catalog import DatasetEntry, SelectionRecord, now, open_catalog
from tessera_gpu.core.datadir import DataDir
from tessera_gpu.core.jobs import ProjectionJobs, ProjectionStatus, dask_required
from tessera_gpu.core.tasks import Tasks, TaskStatus
from tessera_gpu.core.uploads import Upload, UploadSlots
from tessera_gpu.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    TesseraError,
    Unavailable,
)
from tessera_gpu.exports import export_ids, rows_of
from tessera_gpu.facets import Facets, facet_counts
from tessera_gpu.filters import (
    DUPLICATES_FIELD,
    MAP_FIELD,
    FilterContext,
    filter_mask,
    parse_filter,
)
from tessera_gpu.ingest.ingested import ingested_files
from tessera_gpu.io.artifacts import ArtifactStore
from tessera_gpu.io.dataset import Dataset, DatasetFacts, Field, load_dataset
from tessera_gpu.io.files import file_sha256
from tessera_gpu.io.isolation import validate_isolated
from tessera_gpu.io.safety import Limits, check_file_on_disk
from tessera_gpu.io.shards import check_fits_in_memory, expand_paths, glob_root, load_shards
from tessera_gpu.names import MAX_DATASET_NAME, check_dataset_name, without_unprintable
from tessera_gpu.progress import Progress
from tessera_gpu.projection.cache import ProjectionCache, backend_tag, project_cached
from tessera_gpu.projection.params import Projection, ProjectionParams
from tessera_gpu.render.maps import MapCache, ProjectionMaps
from tessera_gpu.sampling import (
    Manifest,
    SampleRequest,
    build_manifest,
    draw_sample,
    export_filename,
    export_sample,
    file_extension,
)
from tessera_gpu.selections import Selection, SelectionRequest, combine
from tessera_gpu.settings import Settings
from tessera_gpu.similarity import (
    DEFAULT_THRESHOLD,
    GRAPH_K,
    MAX_SIMILAR,
    SimilarityIndex,
    Vectors,
    check_threshold,
    derived_fields,
    load_or_build,
    load_or_build_graph,
)
from tessera_gpu.summary import Summary, summarize

if TYPE_CHECKING:
    from tessera_gpu.distributed import DaskEngine

__all__ = [
    "ID_LENGTH",
    "MAX_GROUPS_PAGE",
    "SIMILARITY",
    "Count",
    "DatasetSummary",
    "DuplicateGroups",
    "DuplicatesRequest",
    "Episode",
    "Live",
    "Neighbor",
    "SimilarEpisodes",
    "Tessera",
]

log = logging.getLogger("tessera.core")
ID_LENGTH = 16  # hex digits of the file's SHA-256
SIMILARITY = "similarity"  # the analysis job that builds the similarity index
CLUSTERS = "clusters"  # the analysis job behind the ``cluster`` field
CLUSTER_VERSION = "tessera-kmeans-2"  # greedy k-means++, stopping on the inertia
DEFAULT_CLUSTERS = 20
MAX_CLUSTERS = 1_000
MAX_GROUPS_PAGE = 1_000


@dataclass(frozen=True)
class Live:
    """A dataset, loaded: its catalog entry and the validated data (with the derived fields
    named in ``derived`` once their jobs are done)."""

    entry: DatasetEntry
    dataset: Dataset
    derived: frozenset[str] = frozenset()

    @property
    def id(self) -> str:
        return self.entry.id


class DatasetSummary(DatasetFacts):
    """A registered dataset: what validation found, where it came from, and its map."""

    id: str
    source: str
    added_at: str
    projection: ProjectionStatus


class Episode(msgspec.Struct):
    """One episode: its id, metadata, and whether it has a thumbnail and a GIF."""

    index: int
    episode_id: str
    metadata: dict[str, Any]
    has_thumbnail: bool
    has_gif: bool


class Count(msgspec.Struct, omit_defaults=True):
    """How many episodes match a filter, out of all; with ``dedup_threshold``, ``removed``
    is how many matching episodes the near-duplicate cut dropped (already left out of
    ``count``)."""

    count: int
    total: int
    removed: int | msgspec.UnsetType = msgspec.UNSET


class Neighbor(msgspec.Struct):
    index: int
    episode_id: str
    distance: float


class SimilarEpisodes(msgspec.Struct):
    """An episode's nearest episodes by cosine distance in the full embedding space (itself
    excluded, the filter applied), nearest first."""

    index: int
    episode_id: str
    metric: str
    neighbors: list[Neighbor]


class DuplicateGroups(msgspec.Struct):
    """Near-duplicate groups at a cosine-distance ``threshold``: connected components of the
    pairs within it, largest first; each group lists its keeper first. ``removed`` episodes
    go when every group keeps one; ``groups`` is the page ``offset``..``offset + limit``."""

    threshold: float
    metric: str
    n_groups: int
    n_in_groups: int
    removed: int
    offset: int
    limit: int
    groups: list[list[int]]


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
        self.isolate = isolate
        self.data = DataDir(settings.data_dir)
        self._hold = self.data.share()  # released by close(); restore-catalog waits for it
        try:
            self.catalog = open_catalog(self.data)
        except BaseException:
            self._hold.close()
            raise
        if engine is None and settings.dask:
            from tessera_gpu.distributed import DaskEngine

            engine = DaskEngine(settings.dask)
        self.engine = engine
        self.cache = ProjectionCache(self.data.cache_dir)
        self.jobs = ProjectionJobs(self.backend, self.cache, listener=self._record_job,
                                   engine=engine, landmarks=settings.dask_landmarks)  # fmt: skip
        self.tasks = Tasks(listener=self._record_task)
        self.graphs = ArtifactStore(self.data.cache_dir, ".knn")
        self.clusterings = ArtifactStore(self.data.cache_dir, ".clusters")
        self._selection_masks: dict[tuple[str, str], np.ndarray] = {}
        self._versions: dict[str, int] = {}
        self.maps = MapCache(gpu=on_gpu(self.backend))
        self.uploads = UploadSlots()
        self._live: dict[str, Live] = {}
        self._lock = threading.Lock()

    # ---- life cycle -------------------------------------------------------------------------

    def open(self, files: Iterable[str | Path] = (), *, join: str | None = None) -> None:
        """Start up: sweep stale temp files, import an old-layout data directory, reload every
        dataset, start the projection worker, register ``files`` (each on its own, or with
        ``join`` one dataset of that name across them all)."""
        for stale in self.data.sweep():
            log.info("removed stale temporary file %s", stale)
        if self.catalog.problem is None:
            self.catalog.import_legacy(self.data.root)
            self.catalog.backup("start")
        self.jobs.start()
        self.tasks.start()
        for entry in self.catalog.datasets():
            self._restore(entry)
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

    def _restore(self, entry: DatasetEntry) -> None:
        try:
            if entry.shards:
                entry = self._rehash_shards(entry)
                files = [Path(s["path"]) for s in entry.shards]
                self._add(entry, self._load_files(files, entry.name), save=False)
                return
            path = self._file_of(entry)
            if entry.source == "path" and _changed(entry, path):
                entry = self._rehash(entry, path)
            if entry.source == "path":
                dataset = self._load_files([path], entry.name)
            else:
                dataset = load_dataset(path, name=entry.name, check_memory=self._check_memory)
            self._add(entry, dataset, save=False)
        except Exception as exc:  # one unreadable dataset must not stop the server
            log.warning("could not reload dataset %s (%s): %s", entry.id, entry.path, exc)

    def _rehash_shards(self, entry: DatasetEntry) -> DatasetEntry:
        """A joined dataset's entry with the hash of every file that changed renewed."""
        shards = [dict(s) for s in entry.shards]
        stale = [s for s in shards if _changed_file(s, Path(s["path"]))]
        if not stale:
            return entry
        for s, digest in zip(stale, self._hash_files([Path(s["path"]) for s in stale]),
                             strict=True):  # fmt: skip
            log.warning("%s changed since it was registered; its samples predate it", s["path"])
            st = Path(s["path"]).stat()
            s.update(file_hash=digest, size=st.st_size, mtime_ns=st.st_mtime_ns)
        new = dataclasses.replace(
            entry, shards=shards, file_hash=_joined_hash([s["file_hash"] for s in shards]),
            size=sum(s["size"] for s in shards), mtime_ns=max(s["mtime_ns"] for s in shards),
        )  # fmt: skip
        self._save_quietly(new)
        return new

    def _file_of(self, entry: DatasetEntry) -> Path:
        """Uploads are found in the data directory wherever it has moved; paths are absolute."""
        return self.data.upload_path(entry.id) if entry.source == "upload" else Path(entry.path)

    def _rehash(self, entry: DatasetEntry, path: Path) -> DatasetEntry:
        digest = file_sha256(path)
        if digest != entry.file_hash:
            log.warning("%s changed since it was registered; its samples predate it", path)
        st = path.stat()
        new = dataclasses.replace(entry, file_hash=digest, size=st.st_size, mtime_ns=st.st_mtime_ns)
        self._save_quietly(new)
        return new

    def _save_quietly(self, entry: DatasetEntry) -> None:
        """Keep a reloaded dataset's new hash; a damaged catalog keeps the old one (logged)."""
        try:
            self.catalog.put_dataset(entry)
        except Unavailable as exc:
            log.warning("%s: %s", entry.id, exc.message)

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
            self.catalog.record_job(dataset_id, kind, params=params, status=status, error=error,
                                    info=info)  # fmt: skip
        except Unavailable as exc:
            log.warning("%s job of %s not recorded: %s", kind, dataset_id, exc.message)

    # ---- registration -----------------------------------------------------------------------

    def load(self, path: str | Path | list[str | Path], name: str | None = None) -> Live:
        """A file (or files and globs, joined) loaded as the server would register it (same
        id), without registering it: what the CLI works on."""
        patterns = path if isinstance(path, list) else [path]
        files = [Path(os.path.realpath(f)) for f in expand_paths(patterns)]
        for real in files:
            check_file_on_disk(real, Limits())
        hashes = self._hash_files(files)
        stem = Path(patterns[0]).stem if len(files) == 1 else None
        dataset = self._load_files(files, name or stem)
        return Live(_entry_for(files, hashes, dataset, "path"), dataset)

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
        """Register one dataset from files on the server's disk (by path, not copied): one
        file as it is, several (or a glob's matches) joined into one map, every episode with
        its file in the ``source`` field (:func:`~tessera_gpu.io.shards.load_shards`). Each
        file is validated on its own. ``check_allowed`` confines them to ``--allow-path``.

        The id is the file's SHA-256 (one file) or the SHA-256 of the files' hashes in order.
        With ``--dask`` the files are hashed and their embeddings checked on the workers, and
        the embeddings stay on disk.
        """
        if name is not None:
            name = check_dataset_name(name).strip()
        if check_allowed:
            for pattern in patterns:
                self._check_pattern(str(pattern))
        matched = expand_paths(patterns)
        files = [Path(os.path.realpath(f)) for f in matched]
        if check_allowed:
            for asked, real in zip(matched, files, strict=True):
                self._check_allowed(str(asked), real)
        # A LeRobot root or robomimic file is served as its ingested file (made once)
        files = ingested_files(files, self.data.root)
        known = self._known_files(files)
        if known is not None:
            return _named_as(known, name)
        self.catalog.check_writable()
        for real in files:  # missing, not a file, not HDF5: before hashing
            check_file_on_disk(real, Limits())
        hashes = self._hash_files(files)
        found = self._find(_dataset_hash(hashes)[:ID_LENGTH])
        if found is not None:
            return _named_as(found, name)
        if check_allowed and self.isolate:
            for real in files:
                validate_isolated(real)
        dataset = self._load_files(files, name)
        return self._add(_entry_for(files, hashes, dataset, "path"), dataset)

    def _hash_files(self, files: list[Path]) -> list[str]:
        """Each file's SHA-256: on the Dask workers when there are some (where the files lie),
        else here."""
        if self.engine is not None:
            return self.engine.hash_files(files)
        return [file_sha256(f) for f in files]

    def _load_files(self, files: list[Path], name: str | None) -> Dataset:
        """Validate and load files as one dataset: one file as it is, several joined with a
        ``source`` field; with ``--dask`` the embeddings stay on disk (a ``source`` field
        even for one file)."""
        if self.engine is not None:
            cap = self.settings.max_episodes_dask
            return self.engine.load_shards(files, name=name, max_episodes=cap)
        if len(files) == 1:
            return load_dataset(files[0], name=name, check_memory=self._check_memory)
        return load_shards(files, name=name, check_memory=self._check_memory)

    def _check_memory(self, n: int, d: int) -> None:
        """507 unless ``n x d`` embeddings fit in free host memory (and GPU memory, on one)."""
        device_free = None
        if on_gpu(self.backend):
            free_gib = self.backend.describe().get("gpu_memory_free_gib")
            device_free = None if free_gib is None else int(float(free_gib) * 2**30)
        check_fits_in_memory(n, d, device_free_bytes=device_free)

    def register_upload(self, upload: Upload) -> Live:
        """Validate a received upload and move it into place; the same bytes, the same dataset."""
        dataset_id = upload.sha256[:ID_LENGTH]
        try:
            found = self._find(dataset_id)
            if found is not None:
                return found
            self.catalog.check_writable()
            limits = Limits(max_file_bytes=self.settings.max_upload_bytes)
            try:
                if self.isolate:
                    validate_isolated(upload.path, limits=limits)
                dataset = load_dataset(upload.path, limits=limits, name=_stem(upload.filename),
                                       check_memory=self._check_memory)  # fmt: skip
            except TesseraError as exc:
                raise _as_uploaded(exc, upload) from None
            final = self.data.upload_path(dataset_id)
            os.replace(upload.path, final)
        finally:
            upload.discard()
        dataset = dataclasses.replace(dataset, path=final)
        return self._add(_entry_for([final], [upload.sha256], dataset, "upload"), dataset)

    def _check_pattern(self, pattern: str) -> None:
        """A glob from a client: no ``..``, and its fixed folder inside the allowed
        directories, before anything is listed (a plain path is checked once resolved)."""
        if "\x00" in pattern:
            raise InvalidRequest("The path contains a NUL byte")
        if not set("*?[") & set(pattern):
            return
        if ".." in Path(pattern).parts:
            raise Forbidden(f"Path not allowed: a glob may not contain '..': {pattern}")
        self._check_allowed(pattern, Path(os.path.realpath(glob_root(pattern))))

    def _check_allowed(self, asked: str, real: Path) -> None:
        roots = [os.path.realpath(r) for r in self.settings.allow_path]
        if not roots:
            raise Forbidden(
                "Registering files by path is off: start the server with --allow-path DIR "
                "(or upload the file)"
            )
        if not any(os.path.commonpath([root, real]) == root for root in roots):
            raise Forbidden(f"Path not allowed: {asked} is outside the --allow-path directories")

    def _known_files(self, files: list[Path]) -> Live | None:
        """The dataset registered from exactly these files, none changed since; else None."""
        wanted = [str(f) for f in files]
        with self._lock:
            for live in self._live.values():
                e = live.entry
                if e.source != "path":
                    continue
                if e.shards:
                    paths = [s["path"] for s in e.shards]
                    if paths == wanted and not any(
                        _changed_file(s, Path(s["path"])) for s in e.shards
                    ):
                        return live
                elif [e.path] == wanted and not _changed(e, files[0]):
                    return live
        return None

    def _find(self, dataset_id: str) -> Live | None:
        with self._lock:
            return self._live.get(dataset_id)

    def _add(self, entry: DatasetEntry, dataset: Dataset, *, save: bool = True) -> Live:
        with self._lock:
            if entry.id in self._live:
                return self._live[entry.id]
            live = self._live[entry.id] = Live(entry, dataset)
        if save:
            self.catalog.put_dataset(entry)
        if dataset.dim is not None:
            self.jobs.submit(entry.id, dataset, ProjectionParams(**entry.projection))
            self._start_similarity(live)
        return live

    # ---- look-up and deletion ---------------------------------------------------------------

    def get(self, dataset_id: str) -> Live:
        live = self._find(dataset_id)
        if live is None:
            raise NotFound(f"Dataset not found: {dataset_id!r}", code="dataset_not_found")
        return live

    def all(self) -> list[Live]:
        with self._lock:
            return sorted(self._live.values(), key=lambda v: (v.entry.added_at, v.entry.id))

    def summary(self, dataset_id: str) -> DatasetSummary:
        live = self.get(dataset_id)
        facts = live.dataset.summary()
        return DatasetSummary(
            **msgspec.structs.asdict(facts),
            id=live.id,
            source=live.entry.source,
            added_at=live.entry.added_at,
            projection=self.jobs.status(dataset_id),
        )

    def delete(self, dataset_id: str) -> None:
        """Forget a dataset and release its memory: its maps, its job and device array, its
        samples, its cache, and its upload (never a file registered by path)."""
        live = self.get(dataset_id)
        self.catalog.check_writable()
        with self._lock:
            self._live.pop(dataset_id, None)
            shared = any(
                v.dataset.embeddings_hash == live.dataset.embeddings_hash
                for v in self._live.values()
            )
        self.jobs.forget(dataset_id)
        self.tasks.forget(dataset_id)
        self.maps.forget(dataset_id)
        with self._lock:
            self._versions.pop(dataset_id, None)
            for key in [k for k in self._selection_masks if k[0] == dataset_id]:
                del self._selection_masks[key]
        self.catalog.remove_dataset(dataset_id)
        if live.entry.source == "upload":
            self.data.upload_path(dataset_id).unlink(missing_ok=True)
        if live.dataset.embeddings_hash is not None and not shared:
            self.cache.forget(live.dataset.embeddings_hash)  # every map, whatever its params
            self.graphs.forget(live.dataset.embeddings_hash)
            self.clusterings.forget(live.dataset.embeddings_hash)

    def holds(self, dataset_id: str) -> bool:
        """Whether any memory is still held for ``dataset_id`` (after :meth:`delete`: False)."""
        with self._lock:
            loaded = dataset_id in self._live
        held = (self.jobs, self.tasks, self.maps)
        return loaded or any(part.holds(dataset_id) for part in held)

    # ---- projection and maps ----------------------------------------------------------------

    def project(self, dataset_id: str, params: dict[str, Any]) -> ProjectionStatus:
        """(Re)start the projection; ``params`` (n_neighbors, min_dist, seed) are remembered."""
        live = self.get(dataset_id)
        if live.dataset.dim is None:
            raise Conflict("This dataset is metadata-only: there are no embeddings to project")
        projection = ProjectionParams(**params)  # checks them before anything is saved
        self.catalog.check_writable()
        self.jobs.check_room()
        entry = dataclasses.replace(live.entry, projection=dict(params))
        with self._lock:
            self._live[dataset_id] = dataclasses.replace(live, entry=entry)
        self.catalog.put_dataset(entry)
        self.jobs.submit(dataset_id, live.dataset, projection)
        return self.jobs.status(dataset_id)

    def project_now(
        self,
        live: Live,
        params: ProjectionParams,
        *,
        cache: ProjectionCache | None,
        progress: Progress | None = None,
    ) -> Projection:
        """Project a loaded dataset in this thread (what ``tessera project`` does; the server's
        jobs run the same :func:`project_cached` in their worker, or on the Dask cluster)."""
        dataset = live.dataset
        if dataset.dim is None:
            raise Conflict("This dataset is metadata-only: there are no embeddings to project")
        if dataset.embeddings is None:  # on the Dask cluster, as the server's jobs do
            return self.jobs.project_on_cluster(dataset, params, cache=cache, progress=progress)
        x = self.backend.to_device(dataset.embeddings)
        return project_cached(
            x, backend=self.backend, params=params, cache=cache,
            content_hash=live.dataset.embeddings_hash, progress=progress,
        )  # fmt: skip

    def projection(self, dataset_id: str) -> ProjectionStatus:
        self.get(dataset_id)
        return self.jobs.status(dataset_id)

    def map(self, dataset_id: str) -> ProjectionMaps:
        """The map indexes of a dataset's finished projection (409 metadata-only, 503 not yet)."""
        live = self.get(dataset_id)
        coords = self.jobs.coords(dataset_id)
        return self.maps.get(dataset_id, live.dataset, coords, self.context(dataset_id, coords))

    def context(self, dataset_id: str, coords: np.ndarray | None = None) -> FilterContext:
        """What a dataset's filters can refer to beyond its fields: the finished map, and
        (with embeddings) the near-duplicate cut of the similarity graph."""
        live = self.get(dataset_id)
        return self.context_for(
            live, coords=self.jobs.coords(dataset_id) if coords is None else coords
        )

    def _mask(self, live: Live, raw_filter: Any) -> np.ndarray:
        """The rows of a registered dataset that a request's filter matches (all, for none)."""
        ctx = self.context(live.id)
        ds = live.dataset
        return filter_mask(ds, parse_filter(raw_filter, ds, context=ctx), context=ctx)

    def context_for(
        self,
        live: Live,
        *,
        coords: np.ndarray | None = None,
        similarity: SimilarityIndex | None = None,
    ) -> FilterContext:
        """What filters on ``live`` can refer to beyond its fields: the map ``coords``, its
        named selections, and the near-duplicate cut (of ``similarity``, else of the server's
        similarity job). Works for a dataset the CLI loaded without registering it."""
        keep_one = None
        if live.dataset.dim is not None and similarity is not None:
            keep_one = functools.partial(_keep_with, similarity, self._vectors(live))
        elif live.dataset.dim is not None:
            keep_one = functools.partial(self._keep_one, live.id)
        with self._lock:
            version = str(self._versions.get(live.id, 0))
        selections = functools.partial(self._selection_mask, live)
        return FilterContext(
            coords=coords, selections=selections, keep_one=keep_one, version=version
        )

    # ---- similarity -------------------------------------------------------------------------

    def _engine(self) -> DaskEngine:
        """The Dask cluster, for a dataset whose embeddings are on it."""
        if self.engine is None:
            raise dask_required()
        return self.engine

    def _vectors(self, live: Live) -> Vectors:
        """The embeddings in memory, or a function fetching rows from the Dask cluster."""
        dataset = live.dataset
        if dataset.embeddings is not None:
            return dataset.embeddings
        return functools.partial(self._engine().take, dataset.parts)

    def _start_similarity(self, live: Live) -> TaskStatus:
        dataset_id, dataset = live.id, live.dataset
        if dataset.dim is None:
            raise Conflict(
                "This dataset is metadata-only: similarity needs embeddings",
                code="metadata_only",
            )
        vectors = self._vectors(live)

        def run(progress: Callable[[str, float], None]) -> SimilarityIndex:
            if dataset.embeddings is None:  # on the Dask cluster
                engine = self._engine()
                index = load_or_build_graph(
                    self.graphs, dataset.embeddings_hash,
                    lambda k: engine.cosine_knn(dataset.parts, k, progress=progress),
                    engine="dask", progress=progress,
                )  # fmt: skip
            else:
                device = self.jobs.device_array(dataset_id, dataset)
                index = load_or_build(
                    self.graphs, dataset.embeddings_hash, dataset.embeddings, device,
                    self.backend, progress=progress,
                )  # fmt: skip
            progress("fields", 0.95)
            self._set_derived(dataset_id, derived_fields(index, vectors))
            return index

        return self.tasks.submit(dataset_id, SIMILARITY, {"k": GRAPH_K}, run)

    def similarity_now(self, live: Live, progress: Progress | None = None) -> SimilarityIndex:
        """The similarity index of a loaded dataset, built in this thread (or read from the
        cache): what the CLI uses; the server builds it in a job."""
        embeddings = live.dataset.embeddings
        if embeddings is None:
            raise Conflict("This dataset is metadata-only: similarity needs embeddings",
                           code="metadata_only")  # fmt: skip
        device = self.backend.to_device(embeddings)
        return load_or_build(self.graphs, live.dataset.embeddings_hash, embeddings, device,
                             self.backend, progress=progress)  # fmt: skip

    def similarity(self, dataset_id: str) -> SimilarityIndex | TaskStatus:
        """The dataset's similarity index, or the status of the job building it (started or
        joined here; a failed one is started again). 409 in metadata-only mode."""
        live = self.get(dataset_id)
        index = self.tasks.result(dataset_id, SIMILARITY)
        if isinstance(index, SimilarityIndex):
            return index
        return self._start_similarity(live)

    def _ready_index(self, dataset_id: str) -> SimilarityIndex:
        index = self.similarity(dataset_id)
        if isinstance(index, SimilarityIndex):
            return index
        raise Unavailable(
            f"The similarity graph is being built ({index.status}, "
            f"{round(100 * index.progress)}%); try again shortly",
            code="similarity_not_ready",
            retry_after=5,
        )

    def _keep_one(self, dataset_id: str, threshold: float, mask: np.ndarray) -> np.ndarray:
        live = self.get(dataset_id)
        index = self._ready_index(dataset_id)
        return index.keep_mask(self._vectors(live), threshold, mask)[0]

    def _bump(self, dataset_id: str) -> None:
        """What filters refer to changed (a selection, a derived field): drop cached masks."""
        with self._lock:
            self._versions[dataset_id] = self._versions.get(dataset_id, 0) + 1

    def _set_derived(self, dataset_id: str, fields: dict[str, Field]) -> None:
        """Give a dataset derived fields (a field of the file's own with the name wins)."""
        with self._lock:
            live = self._live.get(dataset_id)
            if live is None:
                return
            own = {k: v for k, v in live.dataset.fields.items() if k not in live.derived}
            added = {k: v for k, v in fields.items() if k not in own}
            for name in sorted(set(fields) - set(added)):
                log.warning("%s already has a field %r: the derived one is not added",
                            dataset_id, name)  # fmt: skip
            dataset = dataclasses.replace(live.dataset, fields={**live.dataset.fields, **added})
            derived = live.derived | frozenset(added)
            self._live[dataset_id] = dataclasses.replace(live, dataset=dataset, derived=derived)
            self._versions[dataset_id] = self._versions.get(dataset_id, 0) + 1

    def similar(
        self, dataset_id: str, index: int, k: int, raw_filter: Any = None
    ) -> SimilarEpisodes | TaskStatus:
        """The ``k`` nearest episodes of episode ``index`` (cosine, full space), among the
        filter's matches; the job's status while the similarity graph is being built. On a
        Dask cluster: from the graph when its neighbours suffice, else an exact scan there."""
        live = self.get(dataset_id)
        check_episode(live.dataset, index)
        if not 1 <= k <= MAX_SIMILAR:
            raise InvalidRequest(f"k must be from 1 to {MAX_SIMILAR:,}: got {k}")
        found = self.similarity(dataset_id)
        if not isinstance(found, SimilarityIndex):
            return found
        mask = self._mask(live, raw_filter) if raw_filter else None
        return self.similar_in(live, found, index, k, mask)

    def similar_in(
        self, live: Live, found: SimilarityIndex, index: int, k: int, mask: np.ndarray | None
    ) -> SimilarEpisodes:
        """:meth:`similar`'s answer from a similarity index (the server's job's, or the one
        the CLI built). On a Dask cluster: from the graph when its neighbours suffice, else an
        exact scan there."""
        if live.dataset.embeddings is not None:
            rows, dist = found.similar(live.dataset.embeddings, index, k, mask)
        else:
            got = found.similar_in_graph(index, k, mask)
            rows, dist = got or self._engine().nearest(live.dataset.parts, index, k,
                                                       allowed=mask)  # fmt: skip
        ids = live.dataset.episode_ids
        return SimilarEpisodes(
            index=index, episode_id=str(ids[index]), metric="cosine",
            neighbors=[Neighbor(int(r), str(ids[r]), float(d))
                       for r, d in zip(rows, dist, strict=True)],
        )  # fmt: skip

    def duplicates(self, dataset_id: str, body: Any) -> DuplicateGroups | TaskStatus:
        """Near-duplicate groups (see :class:`DuplicateGroups`); the job's status while the
        similarity graph is being built."""
        live = self.get(dataset_id)
        request = DuplicatesRequest.from_dict(body)
        found = self.similarity(dataset_id)
        if not isinstance(found, SimilarityIndex):
            return found
        mask = self._mask(live, request.filter) if request.filter else None
        groups = found.groups(self._vectors(live), request.threshold, mask)
        page = groups.groups[request.offset : request.offset + request.limit]
        return DuplicateGroups(
            threshold=request.threshold, metric="cosine", n_groups=len(groups.groups),
            n_in_groups=groups.n_in_groups, removed=int(groups.removed().size),
            offset=request.offset, limit=request.limit, groups=[g.tolist() for g in page],
        )  # fmt: skip

    # ---- episodes, filters, samples ---------------------------------------------------------

    # ---- selections -------------------------------------------------------------------------

    def create_selection(self, dataset_id: str, body: Any) -> Selection:
        """Make a named selection (see :mod:`tessera_gpu.selections`) and keep it."""
        live = self.get(dataset_id)
        request = SelectionRequest.from_dict(body)
        self.catalog.check_writable()
        ds = live.dataset
        if request.kind == "op":
            names = list(request.of or [])
            self._selection_mask(live, names)  # first, a 400 naming every unknown one
            mask = combine(str(request.op), [self._selection_mask(live, [n]) for n in names])
        elif request.kind == "filter":
            mask = self._mask(live, request.filter)
        elif request.kind == "episode_ids":
            mask = np.zeros(ds.n_episodes, dtype=bool)
            mask[rows_of(ds, request.episode_ids or [])] = True
        elif request.kind == "sample":
            mask = np.zeros(ds.n_episodes, dtype=bool)
            mask[rows_of(ds, self.sample(dataset_id, str(request.sample_id)).episode_ids)] = True
        else:
            spec = request.duplicates or {}
            keep_one = {"field": DUPLICATES_FIELD, "op": "keep_one",
                        "value": spec.get("threshold", DEFAULT_THRESHOLD)}  # fmt: skip
            mask = self._mask(live, [*(spec.get("filter") or []), keep_one])
        ids = ds.episode_ids[mask].tolist()
        record = self.catalog.add_selection(dataset_id, request.name, request.source(), ids)
        with self._lock:
            self._selection_masks[(dataset_id, request.name)] = mask
        self._bump(dataset_id)
        return _selection(record)

    def selections(self, dataset_id: str) -> list[Selection]:
        self.get(dataset_id)
        return [_selection(r) for r in self.catalog.selections(dataset_id)]

    def selection(self, dataset_id: str, name: str) -> Selection:
        self.get(dataset_id)
        return _selection(self.catalog.selection(dataset_id, name))

    def delete_selection(self, dataset_id: str, name: str) -> None:
        self.get(dataset_id)
        self.catalog.remove_selection(dataset_id, name)
        with self._lock:
            self._selection_masks.pop((dataset_id, name), None)
        self._bump(dataset_id)

    def _selection_mask(self, live: Live, names: list[str]) -> np.ndarray:
        """The union of named selections as a mask; 400 naming the unknown ones, a selection
        another client deletes while this request reads it included."""
        known = {r.name for r in self.catalog.selections(live.id)}
        unknown = [n for n in names if n not in known]
        out = np.zeros(live.dataset.n_episodes, dtype=bool)
        for name in names:
            if name in unknown:
                continue
            with self._lock:
                mask = self._selection_masks.get((live.id, name))
            if mask is None:
                try:
                    ids = self.catalog.selection(live.id, name).episode_ids or ()
                except NotFound:  # deleted since the listing above
                    unknown.append(name)
                    continue
                mask = np.zeros(live.dataset.n_episodes, dtype=bool)
                rows = [r for r in map(live.dataset.index_of, ids) if r is not None]
                mask[rows] = True
                with self._lock:
                    self._selection_masks[(live.id, name)] = mask
            out |= mask
        if unknown:
            left = sorted({r.name for r in self.catalog.selections(live.id)})
            raise InvalidRequest(
                f"unknown selection{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}; "
                f"selections: {', '.join(left) or '(none)'}",
                code="unknown_selection",
            )
        return out

    def export_selection(
        self,
        live: Live,
        name: str,
        fmt: str,
        *,
        by: str | None = None,
        tau: float | None = None,
        complement: bool = False,
    ) -> tuple[bytes, str, str]:
        """A selection (or, ``complement``, the episodes not in it) as a file: its bytes,
        media type and download name."""
        record = self.catalog.selection(live.id, name)
        document = msgspec.json.format(msgspec.json.encode(
            {**msgspec.to_builtins(_selection(record)), "dataset_id": live.id,
             "dataset_name": live.dataset.name, "episode_ids": list(record.episode_ids or ())}
        ), indent=2) + b"\n"  # fmt: skip
        content, media = export_ids(live.dataset, list(record.episode_ids or ()), fmt,
                                    document=document, by=by, tau=tau,
                                    complement=complement)  # fmt: skip
        label = f"{live.dataset.name}-{name}" + ("-complement" if complement else "")
        label = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._")
        return content, media, f"{label or 'selection'}.{file_extension(fmt)}"

    # ---- groups and clusters ----------------------------------------------------------------

    def group_summary(self, dataset_id: str, body: Any) -> Summary:
        """The matching episodes split by a field (see :mod:`tessera_gpu.summary`)."""
        live = self.get(dataset_id)
        request = SummaryRequest.from_dict(body)
        mask = self._mask(live, request.filter) if request.filter else None
        return summarize(live.dataset, mask, request.group_by, bins=request.bins)

    def clusters(self, dataset_id: str, k: int = DEFAULT_CLUSTERS, seed: int = 0) -> TaskStatus:
        """Start (or join) K-means over the embeddings; its labels become the ``cluster``
        field (``c01`` the largest cluster). 409 in metadata-only mode."""
        live = self.get(dataset_id)
        dataset = live.dataset
        if dataset.dim is None:
            raise Conflict("This dataset is metadata-only: clusters need embeddings",
                           code="metadata_only")  # fmt: skip
        if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= MAX_CLUSTERS:
            raise InvalidRequest(f"k must be an integer from 2 to {MAX_CLUSTERS:,}: got {k!r}")
        if k > dataset.n_episodes:
            raise InvalidRequest(f"k = {k:,} is more than the {dataset.n_episodes:,} episodes")
        params = {"k": k, "seed": seed}

        def run(progress: Callable[[str, float], None]) -> np.ndarray:
            progress("kmeans", 0.05)
            on_cluster = dataset.embeddings is None
            tag = "dask" if on_cluster else backend_tag(self.backend)
            key = ArtifactStore.key(str(dataset.embeddings_hash), {**params, "backend": tag},
                                    CLUSTER_VERSION)  # fmt: skip
            found = self.clusterings.load(key)
            if found is not None:
                labels = found[0]["labels"]
            else:
                if on_cluster:
                    result = self._engine().kmeans(dataset.parts, k, seed=seed, progress=progress)
                else:
                    device = self.jobs.device_array(dataset_id, dataset)
                    result = kmeans(device, k, backend=self.backend, seed=seed)
                labels = result.labels
                info = {"k": k, "seed": seed, "inertia": result.inertia}
                self.clusterings.store(key, {"labels": labels}, info)
            self._set_derived(dataset_id, {"cluster": cluster_field(labels, k)})
            return labels

        return self.tasks.submit(dataset_id, CLUSTERS, params, run)

    def episode(self, dataset_id: str, index: int) -> Episode:
        ds = self.get(dataset_id).dataset
        check_episode(ds, index)
        return Episode(
            index=index,
            episode_id=str(ds.episode_ids[index]),
            metadata=ds.metadata_at(index),
            has_thumbnail=ds.thumbnail(index) is not None,
            has_gif=ds.gif(index) is not None,
        )

    def count(
        self, dataset_id: str, raw_filter: Any, dedup_threshold: float | None = None
    ) -> Count:
        live = self.get(dataset_id)
        ds = live.dataset
        mask = self._mask(live, raw_filter)
        if dedup_threshold is None:
            return Count(count=int(np.count_nonzero(mask)), total=ds.n_episodes)
        threshold = check_threshold(dedup_threshold, "dedup_threshold")
        if ds.dim is None:
            raise Conflict("This dataset is metadata-only: dedup needs embeddings",
                           code="metadata_only")  # fmt: skip
        kept = self._keep_one(dataset_id, threshold, mask)
        matched, count = int(np.count_nonzero(mask)), int(np.count_nonzero(kept))
        return Count(count=count, total=ds.n_episodes, removed=matched - count)

    def facets(self, dataset_id: str, raw_filter: Any) -> Facets:
        """Each category and bool value's count among the episodes matching every other
        condition of the filter (:mod:`tessera_gpu.facets`)."""
        live = self.get(dataset_id)
        ctx, ds = self.context(live.id), live.dataset
        conditions = parse_filter(raw_filter, ds, context=ctx)
        return facet_counts(ds, conditions, lambda c: filter_mask(ds, c, context=ctx))

    def draw(
        self, live: Live, request: SampleRequest, *, similarity: SimilarityIndex | None = None
    ) -> Manifest:
        """Draw a sample of a loaded dataset and describe it; nothing is saved. The CLI and
        :meth:`create_sample` both come here, so the same request gives the same manifest.
        ``similarity`` serves ``dedup_threshold`` (default: the server's job's index)."""
        coords, info = self.jobs.result(live.id)
        dataset = live.dataset
        if request.dedup_threshold is not None and dataset.dim is None:
            raise Conflict("This dataset is metadata-only: dedup needs embeddings",
                           code="metadata_only")  # fmt: skip
        diverse = None
        if dataset.embeddings is None and dataset.dim is not None:  # on the Dask cluster
            engine = self._engine()
            diverse = lambda rows, n, seed: engine.diversity_sample(  # noqa: E731
                dataset.parts, n, rows=rows, seed=seed
            )
        drawn = draw_sample(
            dataset,
            request,
            backend=self.backend,
            device_embeddings=self.jobs.device_embeddings(live.id),
            context=self.context_for(live, coords=coords, similarity=similarity),
            diverse=diverse,
        )
        return build_manifest(
            live.dataset, request, drawn, dataset_id=live.id, dataset_hash=live.entry.file_hash,
            sample_id=secrets.token_hex(6), created_at=now(), version=__version__,
            projection=_map_used(request, live.dataset, info),
        )  # fmt: skip

    def create_sample(self, dataset_id: str, body: Any) -> Manifest:
        """Draw a sample, keep its manifest in the catalog and return it."""
        live, request = self.get(dataset_id), SampleRequest.from_dict(body)
        self.catalog.check_writable()
        manifest = self.draw(live, request)
        self.catalog.add_sample(dataset_id, manifest.sample_id, manifest.created_at, manifest)
        return manifest

    def samples(self, dataset_id: str) -> list[Manifest]:
        self.get(dataset_id)
        stored = self.catalog.sample_manifests(dataset_id)
        with self.catalog.guarded("reading its samples"):
            return [msgspec.json.decode(m, type=Manifest) for m in stored]

    def sample(self, dataset_id: str, sample_id: str) -> Manifest:
        return self.sample_of(self.get(dataset_id), sample_id)

    def sample_of(self, live: Live, sample_id: str) -> Manifest:
        """A kept sample of a loaded dataset (registered or not: the CLI's case)."""
        stored = self.catalog.sample_manifest(live.id, sample_id)
        with self.catalog.guarded(f"reading sample {sample_id}"):
            return msgspec.json.decode(stored, type=Manifest)

    def export(
        self,
        dataset_id: str,
        sample_id: str,
        fmt: str,
        *,
        by: str | None = None,
        tau: float | None = None,
        complement: bool = False,
    ) -> tuple[bytes, str, str]:
        """The sample file's bytes, media type and download name (``complement``: of the
        dataset's episodes not in the sample)."""
        live = self.get(dataset_id)
        manifest = self.sample(dataset_id, sample_id)
        content, media_type = export_sample(live.dataset, manifest, fmt, by=by, tau=tau,
                                            complement=complement)  # fmt: skip
        return content, media_type, export_filename(manifest, fmt, complement=complement)


class DuplicatesRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``POST .../duplicates``: a cosine-distance threshold in (0, 1], a filter, a page."""

    threshold: float = DEFAULT_THRESHOLD
    filter: list[Any] | None = None
    limit: int = 100
    offset: int = 0

    @classmethod
    def from_dict(cls, body: Any) -> DuplicatesRequest:
        try:
            request = msgspec.convert(body or {}, cls)
        except msgspec.ValidationError as exc:
            raise InvalidRequest(f"duplicates request: {exc}") from None
        request.threshold = check_threshold(request.threshold)
        if not 0 <= request.limit <= MAX_GROUPS_PAGE:
            raise InvalidRequest(
                f"limit must be from 0 to {MAX_GROUPS_PAGE:,}: got {request.limit}"
            )
        if request.offset < 0:
            raise InvalidRequest(f"offset must be 0 or more: got {request.offset}")
        return request


class SummaryRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``POST .../summary``: the field to split by, a filter, and optional equal-width bins
    (number fields; the default is quantile bins)."""

    group_by: str
    filter: list[Any] | None = None
    bins: int | None = None

    @classmethod
    def from_dict(cls, body: Any) -> SummaryRequest:
        try:
            return msgspec.convert(body, cls)
        except msgspec.ValidationError as exc:
            raise InvalidRequest(f"summary request: {exc}") from None


def cluster_field(labels: np.ndarray, k: int) -> Field:
    """K-means labels as the ``cluster`` category field: ``c01`` the largest cluster."""
    counts = np.bincount(labels, minlength=k)
    order = np.argsort(-counts, kind="stable")
    rank = np.empty(k, dtype=np.int32)
    rank[order] = np.arange(k, dtype=np.int32)
    width = len(str(k))
    names = tuple(f"c{i + 1:0{width}d}" for i in range(k))
    return Field("cluster", "category", rank[labels].astype(np.int32), names)


def _named_as(live: Live, name: str | None) -> Live:
    """The dataset these files already are, unless it was asked for under another name:
    renaming it would change it for every client, so that is a 409 naming it."""
    if name is None or name == live.entry.name:
        return live
    raise Conflict(
        f"These files are already registered as dataset {live.entry.name!r} (id {live.id}): "
        f"use it, or delete it first to register them as {name!r}",
        code="dataset_exists",
    )


def _selection(record: SelectionRecord) -> Selection:
    return Selection(record.name, record.count, record.created_at, record.source)


def _keep_with(
    similarity: SimilarityIndex, vectors: Vectors, threshold: float, mask: np.ndarray
) -> np.ndarray:
    return similarity.keep_mask(vectors, threshold, mask)[0]


def check_episode(dataset: Dataset, index: int) -> None:
    """404 ``episode_not_found`` unless ``index`` is a row of ``dataset``."""
    if not 0 <= index < dataset.n_episodes:
        raise NotFound(
            f"Episode {index} not found: {dataset.name} has {dataset.n_episodes:,} episodes "
            f"(0 to {dataset.n_episodes - 1:,})",
            code="episode_not_found",
        )


def _entry_for(files: list[Path], hashes: list[str], dataset: Dataset, source: str) -> DatasetEntry:
    """The catalog entry of ``files`` (one, or the shards of a joined dataset)."""
    stats = [f.stat() for f in files]
    shards = []
    if len(files) > 1:
        shards = [{"path": str(f), "file_hash": h, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
                  for f, h, st in zip(files, hashes, stats, strict=True)]  # fmt: skip
    digest = _dataset_hash(hashes)
    return DatasetEntry(
        id=digest[:ID_LENGTH], name=dataset.name, source=source,  # type: ignore[arg-type]
        path=str(files[0]), file_hash=digest, size=sum(st.st_size for st in stats),
        mtime_ns=max(st.st_mtime_ns for st in stats), added_at=now(), shards=shards,
    )  # fmt: skip


def _dataset_hash(hashes: list[str]) -> str:
    """A dataset's hash: its file's SHA-256, or for several the SHA-256 of theirs in order."""
    return hashes[0] if len(hashes) == 1 else _joined_hash(hashes)


def _joined_hash(hashes: list[str]) -> str:
    return hashlib.sha256(("tessera-shards-1\n" + "\n".join(hashes)).encode()).hexdigest()


def _changed(entry: DatasetEntry, path: Path) -> bool:
    return _changed_file({"size": entry.size, "mtime_ns": entry.mtime_ns}, path)


def _changed_file(known: dict[str, Any], path: Path) -> bool:
    """Whether ``path``'s size or mtime differs from ``known``'s (a missing file: no; its
    load reports it)."""
    try:
        st = path.stat()
    except OSError:
        return False
    return (st.st_size, st.st_mtime_ns) != (known["size"], known["mtime_ns"])


def _as_uploaded(exc: TesseraError, upload: Upload) -> TesseraError:
    """The same error, naming the file the client sent instead of its temporary file here."""
    shown = without_unprintable(Path(upload.filename.replace("\\", "/")).name) or "the upload"
    message = exc.message.replace(str(upload.path), shown).replace(upload.path.name, shown)
    return type(exc)(message, code=exc.code, retry_after=exc.retry_after)


def _stem(filename: str) -> str:
    """A display name from a client's file name: no folders, no control characters."""
    name = Path(filename.replace("\\", "/")).name
    stem = Path(name).stem if name.lower().endswith((".h5", ".hdf5")) else name
    return without_unprintable(stem).strip()[:MAX_DATASET_NAME] or "upload"


def _map_used(
    request: SampleRequest, dataset: Dataset, info: dict[str, Any]
) -> dict[str, Any] | None:
    """The projection a ``map within`` condition refers to, for the manifest; else None."""
    if not any(isinstance(c, dict) and c.get("field") == MAP_FIELD for c in request.filter):
        return None
    keys = ("algorithm", "params", "backend", "knn", "init", "n_epochs")
    return {"embeddings_hash": dataset.embeddings_hash, **{k: info.get(k) for k in keys}}
