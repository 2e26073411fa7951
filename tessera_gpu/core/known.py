"""What a file's content hashed to, remembered by its path, size and modification time: a
file that has not changed since it was last loaded need not be read (1.6 GB at 200k x 2,048)
to find its cached map, nor its embeddings read when a server restarts (they are read on first
need). A file whose size or mtime differs is read and hashed again. Recorded wherever a file's
embeddings are read whole: ``tessera project``, registering, restoring."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import msgspec

from tessera_gpu.io.files import write_atomic
from tessera_gpu.io.shards import expand_paths
from tessera_gpu.projection.cache import ProjectionCache
from tessera_gpu.projection.params import Projection, ProjectionParams

__all__ = ["KnownFile", "KnownFiles"]

log = logging.getLogger("tessera.core")
SUFFIX = ".known"


class KnownFile(msgspec.Struct):
    path: str
    size: int
    mtime_ns: int
    file_hash: str  # SHA-256 of the file
    embeddings_hash: str  # the loader's digest of its embeddings (the map cache's key)


class KnownFiles:
    """One small JSON file per file path under ``directory`` (written atomically)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, file: Path) -> Path:
        return self.directory / (hashlib.sha256(str(file).encode()).hexdigest()[:32] + SUFFIX)

    def get(self, file: Path) -> KnownFile | None:
        """What ``file`` (a resolved path) hashed to, if it has not changed since."""
        try:
            st = file.stat()
            known = msgspec.json.decode(self._path(file).read_bytes(), type=KnownFile)
        except (OSError, msgspec.DecodeError):
            return None
        same = (known.path, known.size, known.mtime_ns) == (str(file), st.st_size, st.st_mtime_ns)
        return known if same else None

    def find(self, path: str | Path) -> KnownFile | None:
        """What the one file ``path`` names (a glob too) hashed to, if unchanged since."""
        files = expand_paths([path])
        return self.get(Path(os.path.realpath(files[0]))) if len(files) == 1 else None

    def cached_map(
        self, path: str | Path, params: ProjectionParams, cache: ProjectionCache, backend: str
    ) -> Projection | None:
        """The cached map of the file ``path``, found without reading it (its hashes are
        remembered here), for the backend tagged ``backend``; else None."""
        known = self.find(path)
        if known is None:
            return None
        hit = cache.load(cache.key(known.embeddings_hash, params, backend=backend))
        return None if hit is None else Projection(hit.coords, {**hit.info, "cache": "hit"})

    def put(self, file: Path, file_hash: str, embeddings_hash: str) -> None:
        """Remember ``file``'s hashes; a disk that refuses only loses the shortcut (logged)."""
        try:
            st = file.stat()
            known = KnownFile(str(file), st.st_size, st.st_mtime_ns, file_hash, embeddings_hash)
            os.makedirs(self.directory, exist_ok=True)
            write_atomic(self._path(file), msgspec.json.encode(known))
        except OSError as exc:
            log.warning("cannot remember the hash of %s: %s", file, exc)

    def forget(self, file: Path) -> None:
        """Forget ``file``'s hashes (its dataset was deleted)."""
        self._path(file).unlink(missing_ok=True)
