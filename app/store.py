"""The data directory: the dataset registry, uploaded files and sample manifests, on disk.

Layout (``~/.tessera`` by default)::

    registry.json                  every registered dataset (id, name, source, path, hash, ...)
    uploads/<dataset_id>.h5        uploaded files, named by content hash
    samples/<dataset_id>/<id>.json one manifest per sample
    cache/                         the projection cache (tessera_gpu.projection.cache)

Every write goes to a temporary file next to its target and is moved into place with
``os.replace``, so a crash leaves either the old file or the new one. Temporary files are named
``.<something>.tmp``; :meth:`Store.sweep` removes those left by a crash, at start.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import msgspec

from tessera_gpu.errors import NotFound

__all__ = ["DatasetEntry", "Store", "write_atomic"]

REGISTRY_VERSION = 1
TEMP_SUFFIX = ".tmp"
#: Sample ids come from URLs and become file names: only these characters are looked up.
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class DatasetEntry:
    """One registered dataset as the registry keeps it."""

    id: str
    name: str
    source: Literal["upload", "path"]
    path: str
    file_hash: str
    size: int
    mtime_ns: int
    added_at: str
    projection: dict[str, Any] = field(default_factory=dict)  # parameters asked for, if any

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DatasetEntry:
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        return cls(**known)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then ``os.replace``."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Store:
    """Reads and writes the data directory. Thread-safe; holds the registry in memory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uploads_dir = self.root / "uploads"
        self.samples_dir = self.root / "samples"
        self.cache_dir = self.root / "cache"
        for d in (self.root, self.uploads_dir, self.samples_dir, self.cache_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._registry_path = self.root / "registry.json"
        self._lock = threading.Lock()
        self._entries = self._read_registry()

    # ---- start-up ---------------------------------------------------------------------------

    def sweep(self) -> list[Path]:
        """Remove the temporary files a crash left behind; return what was removed."""
        dirs = [self.root, self.uploads_dir, *self.samples_dir.iterdir()]
        stale = [p for d in dirs if d.is_dir() for p in d.glob(f".*{TEMP_SUFFIX}")]
        stale += self.cache_dir.glob(".tmp-*")  # tessera_gpu.projection.cache's temporary files
        for p in stale:
            p.unlink(missing_ok=True)
        return stale

    def _read_registry(self) -> dict[str, DatasetEntry]:
        try:
            raw = json.loads(self._registry_path.read_text())
        except FileNotFoundError:
            return {}
        return {e["id"]: DatasetEntry.from_dict(e) for e in raw.get("datasets", [])}

    # ---- the registry -----------------------------------------------------------------------

    def entries(self) -> list[DatasetEntry]:
        with self._lock:
            return list(self._entries.values())

    def entry(self, dataset_id: str) -> DatasetEntry | None:
        with self._lock:
            return self._entries.get(dataset_id)

    def put_entry(self, entry: DatasetEntry) -> None:
        with self._lock:
            self._entries[entry.id] = entry
            self._write_registry()

    def remove_entry(self, dataset_id: str) -> None:
        with self._lock:
            if self._entries.pop(dataset_id, None) is not None:
                self._write_registry()

    def _write_registry(self) -> None:
        doc = {
            "version": REGISTRY_VERSION,
            "datasets": [asdict(e) for e in self._entries.values()],
        }
        write_atomic(self._registry_path, json.dumps(doc, indent=1).encode())

    # ---- uploads ----------------------------------------------------------------------------

    def upload_path(self, dataset_id: str) -> Path:
        return self.uploads_dir / f"{dataset_id}.h5"

    def new_upload(self) -> tuple[Path, IO[bytes]]:
        """A fresh temporary file in the uploads folder (same disk, so the rename is atomic)."""
        path = self.uploads_dir / f".upload-{secrets.token_hex(8)}{TEMP_SUFFIX}"
        return path, open(path, "xb")  # noqa: SIM115 - the caller closes it

    # ---- samples ----------------------------------------------------------------------------

    def save_sample(self, dataset_id: str, sample_id: str, manifest: dict[str, Any]) -> None:
        folder = self.samples_dir / dataset_id
        folder.mkdir(exist_ok=True)
        write_atomic(folder / f"{sample_id}.json", msgspec.json.encode(manifest))

    def samples(self, dataset_id: str) -> list[dict[str, Any]]:
        """Every manifest of a dataset, oldest first."""
        folder = self.samples_dir / dataset_id
        if not folder.is_dir():
            return []
        manifests = [msgspec.json.decode(p.read_bytes()) for p in folder.glob("[!.]*.json")]
        return sorted(manifests, key=lambda m: (m.get("created_at", ""), m.get("sample_id", "")))

    def sample(self, dataset_id: str, sample_id: str) -> dict[str, Any]:
        path = self.samples_dir / dataset_id / f"{sample_id}.json"
        if not _SAFE_ID.match(sample_id) or not path.is_file():
            raise NotFound(f"Sample not found: {sample_id!r}", code="sample_not_found")
        result: dict[str, Any] = msgspec.json.decode(path.read_bytes())
        return result

    def remove_samples(self, dataset_id: str) -> None:
        shutil.rmtree(self.samples_dir / dataset_id, ignore_errors=True)
