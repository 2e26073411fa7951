"""The data directory: where the catalog, uploaded files and cached maps live.

Layout (``~/.tessera`` by default)::

    catalog.sqlite               datasets, samples, jobs, selections (:mod:`.catalog`)
    uploads/<dataset_id>.h5      uploaded files, named by content hash
    ingested/<key>/<name>.h5     LeRobot and robomimic sources ingested (tessera_gpu.ingest)
    cache/                       cached maps and similarity graphs, keyed by content
    backups/                     copies of the catalog (:mod:`.backups`)
    .lock                        held (shared) by every process using the folder

Every file written here appears whole or not at all (:mod:`tessera_gpu.io.files`); at start,
:meth:`DataDir.sweep` removes the temporary files a crash left behind.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import weakref
from pathlib import Path
from typing import IO

from tessera_gpu.errors import Conflict
from tessera_gpu.io.files import TEMP_SUFFIX, sweep_temporary

__all__ = ["DataDir", "Hold"]


class DataDir:
    """The folders of one data directory: the root is created if missing, the others when
    something is first written there (a CLI command that only reads makes none of them)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uploads_dir = self.root / "uploads"
        self.cache_dir = self.root / "cache"
        self.backups_dir = self.root / "backups"
        self.ingested_dir = self.root / "ingested"
        self.catalog_path = self.root / "catalog.sqlite"
        self.root.mkdir(parents=True, exist_ok=True)

    def sweep(self) -> list[Path]:
        """Remove the temporary files a crash left behind; return what was removed."""
        ingests = [p for p in self.ingested_dir.glob("*") if p.is_dir()]
        folders = [self.root, self.uploads_dir, self.cache_dir, self.backups_dir, *ingests]
        return sweep_temporary(folders)

    def holdings(self) -> str | None:
        """What the folder holds that only a catalog explains, in words ("2 uploaded files and
        3 cached files"), or None when it holds none of it."""
        counts = [
            (sum(1 for _ in self.uploads_dir.glob("*.h5")), "uploaded file"),
            (sum(1 for p in self.cache_dir.glob("[!.]*")), "cached file"),
            (sum(1 for _ in self.backups_dir.glob("catalog-*.sqlite")), "catalog backup"),
        ]
        words = [f"{n:,} {what}{'s' * (n != 1)}" for n, what in counts if n]
        if not words:
            return None
        return ", ".join(words[:-1]) + (" and " if len(words) > 1 else "") + words[-1]

    def upload_path(self, dataset_id: str) -> Path:
        return self.uploads_dir / f"{dataset_id}.h5"

    def new_upload(self) -> tuple[Path, IO[bytes]]:
        """A fresh temporary file in the uploads folder (same disk, so the rename is atomic)."""
        self.uploads_dir.mkdir(exist_ok=True)
        path = self.uploads_dir / f".upload-{secrets.token_hex(8)}{TEMP_SUFFIX}"
        return path, open(path, "xb")

    def share(self) -> Hold:
        """A shared hold on the folder until :meth:`Hold.close`: a server and CLI commands may
        share it; :meth:`hold_alone` waits for nobody."""
        return Hold(self.root / ".lock", fcntl.LOCK_SH)

    def hold_alone(self) -> Hold:
        """The folder to this process alone (restoring the catalog), or a 409 when a server or
        another command is using it."""
        try:
            return Hold(self.root / ".lock", fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Conflict(
                f"A Tessera server or command is using {self.root}: stop it first",
                code="data_dir_in_use",
            ) from None


class Hold:
    """An ``flock`` on a file, released by :meth:`close` (or when the object is collected: a
    core that was never closed does not keep the folder)."""

    def __init__(self, path: Path, operation: int) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, operation)
        except BaseException:
            os.close(fd)
            raise
        self._release = weakref.finalize(self, os.close, fd)

    def close(self) -> None:
        self._release()

    def __enter__(self) -> Hold:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
