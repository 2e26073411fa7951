"""The one core object: :class:`Tessera` owns a data directory and everything in memory for it.

Both the CLI and the web app go through it (the way datasette's ``Datasette`` serves both):

* the data directory (:class:`.DataDir`) and its catalog (:class:`.Catalog`, SQLite);
* the loaded datasets (:class:`Live`: the validated :class:`~tessera_gpu.io.dataset.Dataset`
  with its catalog entry);
* the projection jobs and the device arrays they made (:class:`.ProjectionJobs`);
* the in-memory map caches: tile index, k-d tree, rendered tiles (:class:`.MapCache`);
* the upload limiter (:class:`.UploadSlots`).

Whatever holds memory for a dataset is owned here, so :meth:`Tessera.delete` releases it all.
Methods are synchronous and may be slow (loading, hashing, sampling): the HTTP layer calls them
in a worker thread.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from tessera_gpu import __version__
from tessera_gpu.backends import Backend, get_backend, on_gpu
from tessera_gpu.core.catalog import Catalog, DatasetEntry, now
from tessera_gpu.core.datadir import DataDir
from tessera_gpu.core.jobs import ProjectionJobs, ProjectionStatus
from tessera_gpu.core.uploads import Upload, UploadSlots
from tessera_gpu.errors import Conflict, Forbidden, NotFound, TesseraError
from tessera_gpu.filters import MAP_FIELD, filter_mask, parse_filter
from tessera_gpu.io.dataset import Dataset, DatasetFacts, load_dataset
from tessera_gpu.io.files import file_sha256
from tessera_gpu.io.isolation import validate_isolated
from tessera_gpu.io.safety import Limits, check_file_on_disk
from tessera_gpu.projection.cache import ProjectionCache
from tessera_gpu.projection.project import Progress, Projection, ProjectionParams, project_cached
from tessera_gpu.render.maps import MapCache, ProjectionMaps
from tessera_gpu.sampling import (
    Manifest,
    SampleRequest,
    build_manifest,
    draw_sample,
    export_filename,
    export_sample,
)
from tessera_gpu.settings import Settings

__all__ = ["ID_LENGTH", "Count", "DatasetSummary", "Episode", "Live", "Tessera"]

log = logging.getLogger("tessera.core")
ID_LENGTH = 16  # hex digits of the file's SHA-256


@dataclass(frozen=True)
class Live:
    """A dataset, loaded: its catalog entry and the validated data."""

    entry: DatasetEntry
    dataset: Dataset

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


class Count(msgspec.Struct):
    """How many episodes match a filter, out of all."""

    count: int
    total: int


class Tessera:
    """One data directory's datasets, jobs and caches. ``open()`` before use, ``close()`` after.

    ``backend`` overrides ``get_backend(settings.device)``; ``isolate`` validates files that
    come over HTTP in a child process first.
    """

    def __init__(
        self, settings: Settings, *, backend: Backend | None = None, isolate: bool = True
    ) -> None:
        self.settings = settings
        self.backend = backend or get_backend(settings.device)
        self.isolate = isolate
        self.data = DataDir(settings.data_dir)
        self.catalog = Catalog(self.data.catalog_path)
        self.cache = ProjectionCache(self.data.cache_dir)
        self.jobs = ProjectionJobs(self.backend, self.cache, listener=self._record_job)
        self.maps = MapCache(gpu=on_gpu(self.backend))
        self.uploads = UploadSlots()
        self._live: dict[str, Live] = {}
        self._lock = threading.Lock()

    # ---- life cycle -------------------------------------------------------------------------

    def open(self, files: Iterable[str | Path] = ()) -> None:
        """Start up: sweep stale temp files, import an old-layout data directory, reload every
        dataset, start the projection worker, register ``files``."""
        for stale in self.data.sweep():
            log.info("removed stale temporary file %s", stale)
        self.catalog.import_legacy(self.data.root)
        self.jobs.start()
        for entry in self.catalog.datasets():
            self._restore(entry)
        for path in files:
            try:
                self.register_path(path, check_allowed=False)
            except TesseraError as exc:  # the server still serves the others
                log.error("could not register %s: %s", path, exc.message)

    def close(self) -> None:
        self.jobs.stop()
        self.catalog.close()

    def _restore(self, entry: DatasetEntry) -> None:
        try:
            path = self._file_of(entry)
            if entry.source == "path" and _changed(entry, path):
                entry = self._rehash(entry, path)
            self._add(entry, load_dataset(path, name=entry.name), save=False)
        except Exception as exc:  # one unreadable dataset must not stop the server
            log.warning("could not reload dataset %s (%s): %s", entry.id, entry.path, exc)

    def _file_of(self, entry: DatasetEntry) -> Path:
        """Uploads are found in the data directory wherever it has moved; paths are absolute."""
        return self.data.upload_path(entry.id) if entry.source == "upload" else Path(entry.path)

    def _rehash(self, entry: DatasetEntry, path: Path) -> DatasetEntry:
        digest = file_sha256(path)
        if digest != entry.file_hash:
            log.warning("%s changed since it was registered; its samples predate it", path)
        st = path.stat()
        new = dataclasses.replace(entry, file_hash=digest, size=st.st_size, mtime_ns=st.st_mtime_ns)
        self.catalog.put_dataset(new)
        return new

    def _record_job(
        self, dataset_id: str, params: dict[str, Any], status: str, error: str | None,
        info: dict[str, Any],
    ) -> None:  # fmt: skip
        self.catalog.record_job(
            dataset_id, "projection", params=params, status=status, error=error, info=info
        )

    # ---- registration -----------------------------------------------------------------------

    def load(self, path: str | Path) -> Live:
        """A file loaded as the server would register it (same id), without registering it:
        what the CLI works on."""
        real = Path(os.path.realpath(path))
        check_file_on_disk(real, Limits())
        digest = file_sha256(real)
        dataset = load_dataset(real, name=Path(path).stem)
        return Live(_entry_for(digest, dataset, "path", real), dataset)

    def register_path(self, path: str | Path, *, check_allowed: bool = True) -> Live:
        """Register a file on the server's disk (by path, not copied)."""
        real = Path(os.path.realpath(path))
        if check_allowed:
            self._check_allowed(str(path), real)
        known = self._known_path(real)
        if known is not None:
            return known
        check_file_on_disk(real, Limits())  # missing, not a file, not HDF5: before hashing
        digest = file_sha256(real)
        found = self._find(digest[:ID_LENGTH])
        if found is not None:
            return found
        if check_allowed and self.isolate:
            validate_isolated(real)
        dataset = load_dataset(real)
        return self._add(_entry_for(digest, dataset, "path", real), dataset)

    def register_upload(self, upload: Upload) -> Live:
        """Validate a received upload and move it into place; the same bytes, the same dataset."""
        dataset_id = upload.sha256[:ID_LENGTH]
        try:
            found = self._find(dataset_id)
            if found is not None:
                return found
            limits = Limits(max_file_bytes=self.settings.max_upload_bytes)
            if self.isolate:
                validate_isolated(upload.path, limits=limits)
            dataset = load_dataset(upload.path, limits=limits, name=_stem(upload.filename))
            final = self.data.upload_path(dataset_id)
            os.replace(upload.path, final)
        finally:
            upload.discard()
        dataset = dataclasses.replace(dataset, path=final)
        return self._add(_entry_for(upload.sha256, dataset, "upload", final), dataset)

    def _check_allowed(self, asked: str, real: Path) -> None:
        roots = [os.path.realpath(r) for r in self.settings.allow_path]
        if not roots:
            raise Forbidden(
                "Registering files by path is off: start the server with --allow-path DIR "
                "(or upload the file)"
            )
        if not any(os.path.commonpath([root, real]) == root for root in roots):
            raise Forbidden(f"Path not allowed: {asked} is outside the --allow-path directories")

    def _known_path(self, real: Path) -> Live | None:
        with self._lock:
            for live in self._live.values():
                e = live.entry
                if e.source == "path" and e.path == str(real) and not _changed(e, real):
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
        if dataset.embeddings is not None:
            self.jobs.submit(entry.id, dataset, ProjectionParams(**entry.projection))
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
        with self._lock:
            self._live.pop(dataset_id, None)
            shared = any(
                v.dataset.embeddings_hash == live.dataset.embeddings_hash
                for v in self._live.values()
            )
        self.jobs.forget(dataset_id)
        self.maps.forget(dataset_id)
        self.catalog.remove_dataset(dataset_id)
        if live.entry.source == "upload":
            self.data.upload_path(dataset_id).unlink(missing_ok=True)
        if live.dataset.embeddings_hash is not None and not shared:
            self.cache.forget(live.dataset.embeddings_hash)  # every map, whatever its params

    def holds(self, dataset_id: str) -> bool:
        """Whether any memory is still held for ``dataset_id`` (after :meth:`delete`: False)."""
        with self._lock:
            loaded = dataset_id in self._live
        return loaded or self.jobs.holds(dataset_id) or self.maps.holds(dataset_id)

    # ---- projection and maps ----------------------------------------------------------------

    def project(self, dataset_id: str, params: dict[str, Any]) -> ProjectionStatus:
        """(Re)start the projection; ``params`` (n_neighbors, min_dist, seed) are remembered."""
        live = self.get(dataset_id)
        if live.dataset.embeddings is None:
            raise Conflict("This dataset is metadata-only: there are no embeddings to project")
        projection = ProjectionParams(**params)  # checks them before anything is saved
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
        jobs run the same :func:`project_cached` in their worker)."""
        if live.dataset.embeddings is None:
            raise Conflict("This dataset is metadata-only: there are no embeddings to project")
        x = self.backend.to_device(live.dataset.embeddings)
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
        return self.maps.get(dataset_id, live.dataset, self.jobs.coords(dataset_id))

    # ---- episodes, filters, samples ---------------------------------------------------------

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

    def count(self, dataset_id: str, raw_filter: Any) -> Count:
        ds = self.get(dataset_id).dataset
        coords = self.jobs.coords(dataset_id)
        mask = filter_mask(ds, parse_filter(raw_filter, ds, coords=coords), coords=coords)
        return Count(count=int(np.count_nonzero(mask)), total=ds.n_episodes)

    def draw(self, live: Live, request: SampleRequest) -> Manifest:
        """Draw a sample of a loaded dataset and describe it; nothing is saved. The CLI and
        :meth:`create_sample` both come here, so the same request gives the same manifest."""
        coords, info = self.jobs.result(live.id)
        drawn = draw_sample(
            live.dataset,
            request,
            backend=self.backend,
            device_embeddings=self.jobs.device_embeddings(live.id),
            coords=coords,
        )
        return build_manifest(
            live.dataset, request, drawn, dataset_id=live.id, dataset_hash=live.entry.file_hash,
            sample_id=secrets.token_hex(6), created_at=now(), version=__version__,
            projection=_map_used(request, live.dataset, info),
        )  # fmt: skip

    def create_sample(self, dataset_id: str, body: Any) -> Manifest:
        """Draw a sample, keep its manifest in the catalog and return it."""
        manifest = self.draw(self.get(dataset_id), SampleRequest.from_dict(body))
        self.catalog.add_sample(dataset_id, manifest.sample_id, manifest.created_at, manifest)
        return manifest

    def samples(self, dataset_id: str) -> list[Manifest]:
        self.get(dataset_id)
        stored = self.catalog.sample_manifests(dataset_id)
        return [msgspec.json.decode(m, type=Manifest) for m in stored]

    def sample(self, dataset_id: str, sample_id: str) -> Manifest:
        self.get(dataset_id)
        stored = self.catalog.sample_manifest(dataset_id, sample_id)
        return msgspec.json.decode(stored, type=Manifest)

    def export(self, dataset_id: str, sample_id: str, fmt: str) -> tuple[bytes, str, str]:
        """The sample file's bytes, media type and download name."""
        live = self.get(dataset_id)
        manifest = self.sample(dataset_id, sample_id)
        content, media_type = export_sample(live.dataset, manifest, fmt)
        return content, media_type, export_filename(manifest, fmt)


def check_episode(dataset: Dataset, index: int) -> None:
    """404 ``episode_not_found`` unless ``index`` is a row of ``dataset``."""
    if not 0 <= index < dataset.n_episodes:
        raise NotFound(
            f"Episode {index} not found: {dataset.name} has {dataset.n_episodes:,} episodes "
            f"(0 to {dataset.n_episodes - 1:,})",
            code="episode_not_found",
        )


def _entry_for(digest: str, dataset: Dataset, source: str, path: Path) -> DatasetEntry:
    st = path.stat()
    return DatasetEntry(
        id=digest[:ID_LENGTH], name=dataset.name, source=source,  # type: ignore[arg-type]
        path=str(path), file_hash=digest, size=st.st_size, mtime_ns=st.st_mtime_ns,
        added_at=now(),
    )  # fmt: skip


def _changed(entry: DatasetEntry, path: Path) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False  # load_dataset reports the missing file
    return (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns)


def _stem(filename: str) -> str:
    """A display name from a client's file name: no folders, no control characters."""
    name = Path(filename.replace("\\", "/")).name
    stem = Path(name).stem if name.lower().endswith((".h5", ".hdf5")) else name
    clean = "".join(ch for ch in stem if ch.isprintable()).strip()
    return clean[:200] or "upload"


def _map_used(
    request: SampleRequest, dataset: Dataset, info: dict[str, Any]
) -> dict[str, Any] | None:
    """The projection a ``map within`` condition refers to, for the manifest; else None."""
    if not any(isinstance(c, dict) and c.get("field") == MAP_FIELD for c in request.filter):
        return None
    keys = ("algorithm", "params", "backend", "knn", "init", "n_epochs")
    return {"embeddings_hash": dataset.embeddings_hash, **{k: info.get(k) for k in keys}}
