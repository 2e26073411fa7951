"""Writing files so that a crash leaves the old file or the new one, never half; and hashing.

Every file Tessera writes (exports, written datasets, cached maps, the demo) goes through
:func:`replacing`: the bytes go to a hidden temporary file beside the target (same disk, so
the rename is atomic), which is fsynced and then ``os.replace``d over the target; the folder is
fsynced too, so the rename itself survives a power cut. Temporary files are named
``.<name>.<random>.tmp``: :func:`sweep_temporary` removes those a crash left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["TEMP_SUFFIX", "file_sha256", "replacing", "sweep_temporary", "write_atomic"]

TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _fsync_path(path: Path, flags: int = os.O_RDONLY) -> None:
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; once the block ends without an error, the file
    written there replaces ``path`` atomically. On any error it is removed and ``path`` is
    untouched. Raises :class:`OSError` as the disk does (callers word it for their users)."""
    target = Path(path)
    temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    try:
        yield temp
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp-like 0600 is not what a user expects
        _fsync_path(temp)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not every file system lets a folder be fsynced
        _fsync_path(target.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`replacing`."""
    with replacing(path) as temp, open(temp, "xb") as f:
        f.write(data)


def sweep_temporary(folders: Iterable[Path]) -> list[Path]:
    """Remove the temporary files a crash left in ``folders``; return what was removed."""
    stale = [p for d in folders if d.is_dir() for p in d.glob(f".*{TEMP_SUFFIX}")]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes (hex): a dataset's id comes from it."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
