"""Keeping the catalog safe: its integrity check, its backups, and restoring one.

* :func:`integrity_problem` runs SQLite's ``PRAGMA quick_check`` on a fresh connection (so
  it reads the disk, not a page cache) and says what is wrong, or None.
* :class:`Backups` copies the catalog with SQLite's online backup API into
  ``<data dir>/backups/catalog-<UTC time>-<reason>.sqlite``, whole or not at all: before a
  schema migration (kept for good), and at each start and clean shutdown (the newest
  :data:`KEEP` of those are kept). A damaged catalog is never copied over a sound backup.
* :func:`restore_catalog` puts a backup back (``tessera restore-catalog``): the damaged
  catalog and its WAL are moved aside into ``backups/``, never deleted.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tessera_gpu.errors import NotFound, Unavailable
from tessera_gpu.io.files import replacing

__all__ = [
    "KEEP",
    "Backups",
    "Restored",
    "integrity_problem",
    "is_damage",
    "restore_catalog",
]

log = logging.getLogger("tessera.catalog")

SQLITE_CORRUPT, SQLITE_NOTADB = 11, 26  # the result codes of a damaged or foreign file
KEEP = 5  # routine backups kept (start, shutdown); those made before a migration all stay
ROUTINE = ("start", "shutdown")
#: The files SQLite keeps for one database in WAL mode.
SIDE_FILES = ("-wal", "-shm")


def integrity_problem(path: Path) -> str | None:
    """What ``PRAGMA quick_check`` finds wrong with the database at ``path`` (its first lines),
    or None when it is sound. A file SQLite cannot read at all raises ``sqlite3.DatabaseError``.
    (Read-write, as the server's own connection is: a read-only one cannot recover a WAL that
    a killed process left; nothing is written.)"""
    db = sqlite3.connect(path)
    try:
        rows = [str(r[0]) for r in db.execute("PRAGMA quick_check(5)").fetchall()]
    except sqlite3.DatabaseError as exc:
        if not is_damage(exc, SQLITE_CORRUPT):
            raise
        return f"quick_check stopped: {exc}"
    finally:
        db.close()
    return None if rows == ["ok"] else "; ".join(rows)


def is_damage(exc: sqlite3.DatabaseError, *codes: int) -> bool:
    """Whether SQLite's error says the file is damaged (or not a database at all)."""
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF in (codes or (SQLITE_CORRUPT, SQLITE_NOTADB))


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


class Backups:
    """The catalog backups in ``folder``, newest first by name (the name starts with the time)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def all(self) -> list[Path]:
        return sorted(self.folder.glob("catalog-*.sqlite"), reverse=True)

    def take(self, source: sqlite3.Connection, reason: str) -> Path:
        """Copy the database behind ``source`` (consistent, while others may write) into a new
        backup, atomically; then drop routine backups beyond the newest :data:`KEEP`."""
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / f"catalog-{_stamp()}-{reason}.sqlite"
        with replacing(target) as temp:
            copy = sqlite3.connect(temp)
            try:
                source.backup(copy)
            finally:
                copy.close()
        routine = [p for p in self.all() if p.stem.rsplit("-", 1)[-1] in ROUTINE]
        for old in routine[KEEP:]:
            old.unlink(missing_ok=True)
        log.info("catalog backed up to %s", target)
        return target

    def newest_sound(self) -> Path | None:
        """The newest backup that passes the integrity check, or None."""
        for path in self.all():
            with contextlib.suppress(sqlite3.DatabaseError):
                if integrity_problem(path) is None:
                    return path
        return None


@dataclass(frozen=True)
class Restored:
    """What :func:`restore_catalog` did: the backup put back, its contents, and where the
    catalog it replaced was moved (None when there was none)."""

    backup: Path
    datasets: int
    samples: int
    selections: int
    moved_aside: Path | None


def restore_catalog(catalog: Path, backups: Backups, backup: Path | None = None) -> Restored:
    """Put ``backup`` (default: the newest sound one) back as ``catalog``. The catalog there
    (with its WAL, which belongs to it alone) is moved into ``backups/replaced-<time>/`` first.
    The server must be stopped (the caller holds the data directory's lock)."""
    chosen = backup or backups.newest_sound()
    if chosen is None:
        raise NotFound(
            f"No sound catalog backup in {backups.folder}: nothing to restore. To start "
            "afresh, move the data directory aside (or use another --data-dir)",
            code="no_backup",
        )
    chosen = Path(chosen)
    try:
        problem = integrity_problem(chosen)
        counts = _counts(chosen)
    except sqlite3.DatabaseError as exc:
        problem = str(exc)
    if problem is not None:
        raise Unavailable(
            f"{chosen} is not a sound catalog ({problem}): pick another backup", code="bad_backup"
        )
    aside = _move_aside(catalog, backups.folder / f"replaced-{_stamp()}")
    with replacing(catalog) as temp, _connected(chosen) as src:
        copy = sqlite3.connect(temp)
        try:
            src.backup(copy)
        finally:
            copy.close()
    return Restored(chosen, *counts, moved_aside=aside)


@contextlib.contextmanager
def _connected(path: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(path)  # reads only (see integrity_problem)
    try:
        yield db
    finally:
        db.close()


def _counts(path: Path) -> tuple[int, int, int]:
    """Datasets, samples and selections in a catalog (0 for a table an old schema lacks)."""
    with _connected(path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return tuple(  # type: ignore[return-value]
            int(db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) if t in tables else 0  # noqa: S608
            for t in ("datasets", "samples", "selections")
        )


def _move_aside(catalog: Path, folder: Path) -> Path | None:
    present = [catalog.with_name(catalog.name + s) for s in ("", *SIDE_FILES)]
    present = [p for p in present if p.exists()]
    if not present:
        return None
    folder.mkdir(parents=True)
    for p in present:
        p.rename(folder / p.name)
    return folder
