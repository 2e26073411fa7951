"""The datasets a server knows: registration, look-up, deletion, and what is done with them.

A :class:`Catalog` ties the pieces together: the :class:`~.store.Store` (what is on disk),
the loaded :class:`~tessera_gpu.io.dataset.Dataset` objects (what is in memory) and the
:class:`~.jobs.ProjectionJobs` (what the device is doing). Its methods are synchronous and may
be slow (loading, hashing, sampling): the HTTP layer calls them in a worker thread.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tessera_gpu import __version__
from tessera_gpu.errors import Conflict, Forbidden, NotFound, TesseraError
from tessera_gpu.filters import MAP_FIELD, filter_mask, parse_filter
from tessera_gpu.io.dataset import Dataset, load_dataset
from tessera_gpu.io.isolation import validate_isolated
from tessera_gpu.io.safety import Limits, check_file_on_disk
from tessera_gpu.projection.cache import ProjectionCache
from tessera_gpu.projection.project import ProjectionParams
from tessera_gpu.sampling import (
    SampleRequest,
    build_manifest,
    draw_sample,
    export_filename,
    export_sample,
)
from tessera_gpu.settings import Settings

from .jobs import ProjectionJobs
from .store import DatasetEntry, Store
from .uploads import Upload

__all__ = ["Catalog", "Live"]

log = logging.getLogger("tessera.catalog")
ID_LENGTH = 16  # hex digits of the file's SHA-256


@dataclass(frozen=True)
class Live:
    """A registered dataset, loaded."""

    entry: DatasetEntry
    dataset: Dataset
    summary: dict[str, Any]  # Dataset.summary(), computed once


class Catalog:
    """Every registered dataset, loaded, with its projection job and samples."""

    def __init__(self, settings: Settings, backend: Any, *, isolate: bool = True) -> None:
        self.settings = settings
        self.backend = backend
        self.isolate = isolate  # validate files from HTTP in a child process first
        self.store = Store(settings.data_dir)
        self.cache = ProjectionCache(self.store.cache_dir)
        self.jobs = ProjectionJobs(backend, self.cache)
        self._live: dict[str, Live] = {}
        self._lock = threading.Lock()

    # ---- life cycle -------------------------------------------------------------------------

    def open(self, files: Iterable[Path] = ()) -> None:
        """Start up: sweep stale temp files, reload every dataset, register ``files``."""
        for stale in self.store.sweep():
            log.info("removed stale temporary file %s", stale)
        self.jobs.start()
        for entry in self.store.entries():
            self._restore(entry)
        for path in files:
            try:
                self.register_path(path, check_allowed=False)
            except TesseraError as exc:  # the server still serves the others
                log.error("could not register %s: %s", path, exc.message)

    def close(self) -> None:
        self.jobs.stop()

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
        return self.store.upload_path(entry.id) if entry.source == "upload" else Path(entry.path)

    def _rehash(self, entry: DatasetEntry, path: Path) -> DatasetEntry:
        digest = file_sha256(path)
        if digest != entry.file_hash:
            log.warning("%s changed since it was registered; its samples predate it", path)
        st = path.stat()
        new = dataclasses.replace(entry, file_hash=digest, size=st.st_size, mtime_ns=st.st_mtime_ns)
        self.store.put_entry(new)
        return new

    # ---- registration -----------------------------------------------------------------------

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
        st = real.stat()
        entry = DatasetEntry(
            id=digest[:ID_LENGTH], name=dataset.name, source="path", path=str(real),
            file_hash=digest, size=st.st_size, mtime_ns=st.st_mtime_ns, added_at=_now(),
        )  # fmt: skip
        return self._add(entry, dataset)

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
            final = self.store.upload_path(dataset_id)
            os.replace(upload.path, final)
        finally:
            upload.discard()
        st = final.stat()
        entry = DatasetEntry(
            id=dataset_id, name=dataset.name, source="upload", path=str(final),
            file_hash=upload.sha256, size=st.st_size, mtime_ns=st.st_mtime_ns, added_at=_now(),
        )  # fmt: skip
        return self._add(entry, dataclasses.replace(dataset, path=final))

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
            live = self._live[entry.id] = Live(entry, dataset, dataset.summary())
        if save:
            self.store.put_entry(entry)
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

    def summary(self, dataset_id: str) -> dict[str, Any]:
        live = self.get(dataset_id)
        return {
            "id": live.entry.id,
            **live.summary,
            "source": live.entry.source,
            "added_at": live.entry.added_at,
            "projection": self.jobs.status(dataset_id),
        }

    def delete(self, dataset_id: str) -> None:
        """Forget a dataset: its upload (never a file registered by path), samples and cache."""
        live = self.get(dataset_id)
        with self._lock:
            self._live.pop(dataset_id, None)
            shared = any(
                v.dataset.embeddings_hash == live.dataset.embeddings_hash
                for v in self._live.values()
            )
        self.jobs.forget(dataset_id)
        self.store.remove_entry(dataset_id)
        self.store.remove_samples(dataset_id)
        if live.entry.source == "upload":
            self.store.upload_path(dataset_id).unlink(missing_ok=True)
        if live.dataset.embeddings_hash is not None and not shared:
            self.cache.forget(live.dataset.embeddings_hash)  # every map, whatever its params

    # ---- projection -------------------------------------------------------------------------

    def project(self, dataset_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """(Re)start the projection; ``params`` (n_neighbors, min_dist, seed) are remembered."""
        live = self.get(dataset_id)
        if live.dataset.embeddings is None:
            raise Conflict("This dataset is metadata-only: there are no embeddings to project")
        projection = ProjectionParams(**params)  # checks them before anything is saved
        self.jobs.check_room()
        entry = dataclasses.replace(live.entry, projection=dict(params))
        with self._lock:
            self._live[dataset_id] = dataclasses.replace(live, entry=entry)
        self.store.put_entry(entry)
        self.jobs.submit(dataset_id, live.dataset, projection)
        return self.jobs.status(dataset_id)

    # ---- episodes, filters, samples ---------------------------------------------------------

    def episode(self, dataset_id: str, index: int) -> dict[str, Any]:
        ds = self.get(dataset_id).dataset
        if not 0 <= index < ds.n_episodes:
            raise NotFound(
                f"Episode {index} not found: {ds.name} has {ds.n_episodes:,} episodes "
                f"(0 to {ds.n_episodes - 1:,})",
                code="episode_not_found",
            )
        return {
            "index": index,
            "episode_id": str(ds.episode_ids[index]),
            "metadata": ds.metadata_at(index),
            "has_thumbnail": ds.thumbnail(index) is not None,
            "has_gif": ds.gif(index) is not None,
        }

    def count(self, dataset_id: str, raw_filter: Any) -> dict[str, int]:
        ds = self.get(dataset_id).dataset
        coords = self.jobs.coords(dataset_id)
        mask = filter_mask(ds, parse_filter(raw_filter, ds, coords=coords), coords=coords)
        return {"count": int(np.count_nonzero(mask)), "total": ds.n_episodes}

    def create_sample(self, dataset_id: str, body: Any) -> dict[str, Any]:
        """Draw a sample, save its manifest and return it."""
        live = self.get(dataset_id)
        request = SampleRequest.from_dict(body)
        coords, info = self.jobs.result(dataset_id)
        drawn = draw_sample(
            live.dataset,
            request,
            backend=self.backend,
            device_embeddings=self.jobs.device_embeddings(dataset_id),
            coords=coords,
        )
        sample_id = secrets.token_hex(6)
        manifest = build_manifest(
            live.dataset, request, drawn, dataset_id=dataset_id,
            dataset_hash=live.entry.file_hash, sample_id=sample_id, created_at=_now(),
            version=__version__, projection=_map_used(request, live.dataset, info),
        )  # fmt: skip
        self.store.save_sample(dataset_id, sample_id, manifest)
        return manifest

    def samples(self, dataset_id: str) -> list[dict[str, Any]]:
        self.get(dataset_id)
        return self.store.samples(dataset_id)

    def sample(self, dataset_id: str, sample_id: str) -> dict[str, Any]:
        self.get(dataset_id)
        return self.store.sample(dataset_id, sample_id)

    def export(self, dataset_id: str, sample_id: str, fmt: str) -> tuple[bytes, str, str]:
        """The sample file's bytes, media type and download name."""
        live = self.get(dataset_id)
        manifest = self.store.sample(dataset_id, sample_id)
        content, media_type = export_sample(live.dataset, manifest, fmt)
        return content, media_type, export_filename(manifest, fmt)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
