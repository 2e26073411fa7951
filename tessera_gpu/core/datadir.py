"""The data directory: where the catalog, uploaded files and cached maps live.

Layout (``~/.tessera`` by default)::

    catalog.sqlite               datasets, samples, jobs, selections (:mod:`.catalog`)
    uploads/<dataset_id>.h5      uploaded files, named by content hash
    ingested/<key>/<name>.h5     LeRobot and robomimic sources ingested (tessera_gpu.ingest)
    cache/                       cached maps and similarity graphs, keyed by content

Every file written here appears whole or not at all (:mod:`tessera_gpu.io.files`); at start,
:meth:`DataDir.sweep` removes the temporary files a crash left behind.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import IO

from tessera_gpu.io.files import TEMP_SUFFIX, sweep_temporary

__all__ = ["DataDir"]


class DataDir:
    """The folders of one data directory (created if missing)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uploads_dir = self.root / "uploads"
        self.cache_dir = self.root / "cache"
        self.ingested_dir = self.root / "ingested"
        self.catalog_path = self.root / "catalog.sqlite"
        for d in (self.root, self.uploads_dir, self.cache_dir):
            d.mkdir(parents=True, exist_ok=True)

    def sweep(self) -> list[Path]:
        """Remove the temporary files a crash left behind; return what was removed."""
        ingests = [p for p in self.ingested_dir.glob("*") if p.is_dir()]
        return sweep_temporary([self.root, self.uploads_dir, self.cache_dir, *ingests])

    def upload_path(self, dataset_id: str) -> Path:
        return self.uploads_dir / f"{dataset_id}.h5"

    def new_upload(self) -> tuple[Path, IO[bytes]]:
        """A fresh temporary file in the uploads folder (same disk, so the rename is atomic)."""
        path = self.uploads_dir / f".upload-{secrets.token_hex(8)}{TEMP_SUFFIX}"
        return path, open(path, "xb")
