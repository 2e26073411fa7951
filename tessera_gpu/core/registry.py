"""The registry: which datasets a data directory holds, loaded (:class:`Live`).

It loads and validates files (one, or several joined), registers them by path (under the
``--allow-path`` policy) or from an upload, restores the catalog's datasets at start (a file
that changed since is hashed again), and keeps the loaded datasets, their derived fields and
the version their filters are cached under. It starts no job: the root does, for what it adds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tessera_gpu.backends import Backend, on_gpu
from tessera_gpu.core.catalog import Catalog, DatasetEntry, now
from tessera_gpu.core.datadir import DataDir
from tessera_gpu.core.known import KnownFiles
from tessera_gpu.core.uploads import Upload
from tessera_gpu.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    TesseraError,
    Unavailable,
)
from tessera_gpu.io.dataset import Dataset, Field, load_dataset
from tessera_gpu.io.files import file_sha256
from tessera_gpu.io.isolation import validate_isolated
from tessera_gpu.io.safety import Limits, check_file_on_disk
from tessera_gpu.io.shards import check_fits_in_memory, expand_paths, glob_root, load_shards
from tessera_gpu.names import MAX_DATASET_NAME, check_dataset_name, without_unprintable
from tessera_gpu.settings import Settings

if TYPE_CHECKING:
    from tessera_gpu.distributed import DaskEngine

__all__ = ["ID_LENGTH", "Live", "Registry", "check_episode"]

log = logging.getLogger("tessera.core")
ID_LENGTH = 16  # hex digits of the file's SHA-256


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


class Registry:
    """The loaded datasets of one data directory (thread-safe)."""

    def __init__(
        self,
        settings: Settings,
        data: DataDir,
        catalog: Catalog,
        backend: Backend,
        *,
        isolate: bool = True,
        engine: DaskEngine | None = None,
    ) -> None:
        self.settings = settings
        self.data = data
        self.catalog = catalog
        self.backend = backend
        self.isolate = isolate
        self.engine = engine
        self.known = KnownFiles(data.cache_dir)
        self._live: dict[str, Live] = {}
        self._versions: dict[str, int] = {}
        self._lock = threading.Lock()

    # ---- loading and registering -------------------------------------------------------------

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
        if len(files) == 1 and dataset.embeddings is not None and dataset.embeddings_hash:
            self.known.put(files[0], hashes[0], dataset.embeddings_hash)
        return Live(_entry_for(files, hashes, dataset, "path"), dataset)

    def register_paths(
        self,
        patterns: Sequence[str | Path],
        *,
        name: str | None = None,
        check_allowed: bool = True,
    ) -> tuple[Live, bool]:
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
        # A LeRobot root or robomimic file is served as its ingested file (made once); here,
        # not at the top: the readers it imports are not needed to load a Tessera file
        from tessera_gpu.ingest.ingested import ingested_files

        files = ingested_files(files, self.data.root)
        known = self._known_files(files)
        if known is not None:
            return _named_as(known, name), False
        self.catalog.check_writable()
        for real in files:  # missing, not a file, not HDF5: before hashing
            check_file_on_disk(real, Limits())
        hashes = self._hash_files(files)
        found = self.find(_dataset_hash(hashes)[:ID_LENGTH])
        if found is not None:
            return _named_as(found, name), False
        if check_allowed and self.isolate:
            for real in files:
                validate_isolated(real)
        dataset = self._load_files(files, name)
        return self._add(_entry_for(files, hashes, dataset, "path"), dataset)

    def register_upload(self, upload: Upload) -> tuple[Live, bool]:
        """Validate a received upload and move it into place; the same bytes, the same dataset."""
        dataset_id = upload.sha256[:ID_LENGTH]
        try:
            found = self.find(dataset_id)
            if found is not None:
                return found, False
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

    def restore(self, entry: DatasetEntry) -> Live | None:
        """Load a catalog entry again (at start); None, logged, when it cannot be: one
        unreadable dataset must not stop the server. A file unchanged since its embeddings
        were last read here (same path, size and mtime: :class:`.KnownFiles`) is validated
        and its metadata read, but its embeddings are left on disk until first needed
        (:class:`~tessera_gpu.io.dataset.DeferredEmbeddings`)."""
        try:
            if entry.shards:
                entry = self._rehash_shards(entry)
                files = [Path(s["path"]) for s in entry.shards]
                return self._add(entry, self._load_files(files, entry.name), save=False)[0]
            path = self._file_of(entry)
            if entry.source == "path" and _changed(entry, path):
                entry = self._rehash(entry, path)
            digest = self._known_digest(path, entry.file_hash)
            if digest is not None:  # unchanged since its embeddings were read: read on first use
                dataset = load_dataset(path, name=entry.name, check_memory=self._check_memory,
                                       known_digest=digest)  # fmt: skip
            elif entry.source == "path":
                dataset = self._load_files([path], entry.name)
            else:
                dataset = load_dataset(path, name=entry.name, check_memory=self._check_memory)
            return self._add(entry, dataset, save=False)[0]
        except Exception as exc:
            log.warning("could not reload dataset %s (%s): %s", entry.id, entry.path, exc)
            return None

    def keep(self, live: Live) -> None:
        """Record a dataset loaded here (the CLI's) in the catalog, unless it is there
        already, so that what is drawn from it is kept like a registered dataset's; a server
        on this data directory registers it at its next start. Starts no job."""
        if self.catalog.datasets.get(live.id) is None:
            self.catalog.check_writable()
            self.catalog.datasets.put(live.entry)

    # ---- the loaded datasets -----------------------------------------------------------------

    def get(self, dataset_id: str) -> Live:
        live = self.find(dataset_id)
        if live is None:
            raise NotFound(f"Dataset not found: {dataset_id!r}", code="dataset_not_found")
        return live

    def all(self) -> list[Live]:
        with self._lock:
            return sorted(self._live.values(), key=lambda v: (v.entry.added_at, v.entry.id))

    def find(self, dataset_id: str) -> Live | None:
        with self._lock:
            return self._live.get(dataset_id)

    def replace(self, live: Live) -> None:
        """Keep a new version of a loaded dataset (its entry changed)."""
        with self._lock:
            if live.id in self._live:
                self._live[live.id] = live

    def remove(self, dataset_id: str) -> tuple[Live, bool]:
        """Forget a loaded dataset: it, and whether another still shares its embeddings."""
        live = self.get(dataset_id)
        if not live.entry.shards:
            self.known.forget(Path(os.path.realpath(self._file_of(live.entry))))
        with self._lock:
            self._live.pop(dataset_id, None)
            self._versions.pop(dataset_id, None)
            shared = any(
                v.dataset.embeddings_hash == live.dataset.embeddings_hash
                for v in self._live.values()
            )
        return live, shared

    def holds(self, dataset_id: str) -> bool:
        with self._lock:
            return dataset_id in self._live

    def version(self, dataset_id: str) -> int:
        """Bumped whenever what the dataset's filters refer to changes (cached masks key)."""
        with self._lock:
            return self._versions.get(dataset_id, 0)

    def bump(self, dataset_id: str) -> None:
        """What filters refer to changed (a selection, a derived field): drop cached masks."""
        with self._lock:
            self._versions[dataset_id] = self._versions.get(dataset_id, 0) + 1

    def set_derived(self, dataset_id: str, fields: dict[str, Field]) -> None:
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

    # ---- files ------------------------------------------------------------------------

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

    def _known_digest(self, path: Path, file_hash: str) -> str | None:
        """The digest of ``path``'s embeddings when they were last read here, if the file has
        not changed since (by path, size and mtime) and hashed to ``file_hash``; else None
        (and always None with ``--dask``, whose embeddings stay on the workers' disks)."""
        if self.engine is not None:
            return None
        known = self.known.get(Path(os.path.realpath(path)))
        return known.embeddings_hash if known is not None and known.file_hash == file_hash else None

    def _remember(self, entry: DatasetEntry, dataset: Dataset) -> None:
        """Remember the digest of a file's embeddings just read, so that the next start finds
        the file unchanged without reading them."""
        if entry.shards or dataset.resident is None or not dataset.embeddings_hash:
            return
        path = Path(os.path.realpath(self._file_of(entry)))
        self.known.put(path, entry.file_hash, dataset.embeddings_hash)

    def _save_quietly(self, entry: DatasetEntry) -> None:
        """Keep a reloaded dataset's new hash; a damaged catalog keeps the old one (logged)."""
        try:
            self.catalog.datasets.put(entry)
        except Unavailable as exc:
            log.warning("%s: %s", entry.id, exc.message)

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

    def _add(
        self, entry: DatasetEntry, dataset: Dataset, *, save: bool = True
    ) -> tuple[Live, bool]:
        """The dataset kept (and saved to the catalog), and whether it is new here."""
        with self._lock:
            if entry.id in self._live:
                return self._live[entry.id], False
            live = self._live[entry.id] = Live(entry, dataset)
        self._remember(entry, dataset)
        if save:
            self.catalog.datasets.put(entry)
        return live, True


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
