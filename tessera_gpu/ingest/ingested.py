"""Sources ingested into the data directory: what ``tessera serve ROOT`` (and registering a
source's path over HTTP) serves, made once per source content and reused.

Layout::

    <data dir>/ingested/<key>/<name>.h5     the Tessera file of one source
    <data dir>/ingested/hashes.json         (path, size, mtime) -> SHA-256 of each source file

``key`` is the SHA-256 of the ingest's version, its options and every source file's relative
path and content hash, so a changed source gets a new file and an unchanged one is found
again; ``hashes.json`` only spares re-reading files whose size and modification time have not
changed since they were hashed. ``name`` is the source's name, which becomes the dataset's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tessera_gpu.ingest.pipeline import EpisodesDone, IngestOptions, ingest
from tessera_gpu.ingest.sources import is_source, open_source
from tessera_gpu.io.files import file_sha256, write_atomic

__all__ = ["INGEST_VERSION", "ingested_file", "ingested_files"]

log = logging.getLogger("tessera.ingest")
#: Part of every key: bump it when the same source and options would give a different file.
INGEST_VERSION = "tessera-ingest-1"
_LOCK = threading.Lock()  # one ingest of a source at a time in this process


def ingested_files(
    paths: Sequence[Path],
    data_dir: Path,
    *,
    progress: EpisodesDone | None = None,
    joined: bool | None = None,
) -> list[Path]:
    """``paths`` with every source replaced by its ingested file (ingested now if needed).

    Files to be joined (``joined``; default: more than one path) get their source's name in
    their episode ids (``pusht/ep_000012``), so ids stay unique across them."""
    joined = len(paths) > 1 if joined is None else joined
    out = []
    for path in paths:
        if not is_source(path):
            out.append(path)
            continue
        prefix = f"{_name(path)}/ep_" if joined else "ep_"
        out.append(
            ingested_file(
                path, data_dir, options=IngestOptions(id_prefix=prefix), progress=progress
            )
        )
    return out


def ingested_file(
    source: Path,
    data_dir: Path,
    *,
    options: IngestOptions | None = None,
    progress: EpisodesDone | None = None,
) -> Path:
    """The Tessera file of ``source`` in ``data_dir``, ingested with ``options`` unless a
    previous run made it from the same content."""
    options = options or IngestOptions()
    folder = Path(data_dir).expanduser() / "ingested"
    folder.mkdir(parents=True, exist_ok=True)
    with _LOCK:
        reader = open_source(source, fps=options.fps)
        try:
            files = reader.content_files()
            name = options.name or reader.name
        finally:
            reader.close()
        key = _content_key(Path(source), files, folder / "hashes.json", options)
        target = folder / key[:16] / f"{name}.h5"
        if target.is_file():
            return target
        target.parent.mkdir(exist_ok=True)
        log.info("ingesting %s into %s", source, target)
        result = ingest(source, target, options, progress=progress)
        log.info("ingested %s: %d episodes in %.1f s", source, result.n_episodes, result.seconds)
        return target


def _content_key(root: Path, files: list[Path], memo_path: Path, options: IngestOptions) -> str:
    memo = _read_memo(memo_path)
    settings = dataclasses.replace(options, workers=None)  # the output does not depend on it
    digest = hashlib.sha256(f"{INGEST_VERSION}\n{settings!r}\n".encode())
    changed = False
    base = root if root.is_dir() else root.parent
    for file in files:
        st = file.stat()
        real = os.path.realpath(file)
        stamp = [st.st_size, st.st_mtime_ns]
        known = memo.get(real)
        if known is None or known[:2] != stamp:
            memo[real] = [*stamp, file_sha256(file)]
            changed = True
        digest.update(f"{file.relative_to(base)}\0{memo[real][2]}\n".encode())
    if changed:
        write_atomic(memo_path, json.dumps(memo).encode())
    return digest.hexdigest()


def _read_memo(path: Path) -> dict[str, Any]:
    try:
        memo = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def _name(path: Path) -> str:
    return Path(path).resolve().name if Path(path).is_dir() else Path(path).stem
