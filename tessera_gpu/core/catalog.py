"""The catalog: one SQLite database in the data directory (``catalog.sqlite``).

It holds what Tessera must never lose: the registered datasets, the sample manifests, the last
job of each kind per dataset, and the named selections (their provenance and episode ids).
Uploaded files and cached maps stay files beside it (:mod:`.datadir`).

* stdlib :mod:`sqlite3` in WAL mode with ``synchronous=FULL``: a write that returned is on disk,
  and a ``kill -9`` at any moment loses nothing that was committed.
* The schema version is SQLite's ``user_version``; :data:`MIGRATIONS` (:mod:`.migrations`)
  brings any older database up to date at open, each step in its own transaction, after a
  backup (:mod:`.backups`).
* It is checked at open (``PRAGMA quick_check``): damage that still reads gives a *degraded*
  catalog (reads go on, writes are 503 ``catalog_damaged``); one that does not read, or a
  missing catalog beside a data directory's files (:func:`open_catalog`), stops the start with
  one line saying how to restore a backup.
* A data directory of the old layout (``registry.json`` and ``samples/<id>/<id>.json``) is
  imported once, in one transaction; the old files are then renamed ``*.imported``.

One connection serves every thread, behind a lock: Tessera's writes are small and rare. After
:meth:`Catalog.close` the next call opens a new one. :class:`Catalog` keeps the database; its
tables (``catalog.datasets``, ``.samples``, ``.jobs``, ``.selections``) are :mod:`.tables`.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

from tessera_gpu.core.backups import Backups, integrity_problem, is_damage
from tessera_gpu.core.datadir import DataDir
from tessera_gpu.core.migrations import MIGRATIONS, SCHEMA_VERSION
from tessera_gpu.core.tables import (
    DatasetEntry,
    Datasets,
    JobRecord,
    Jobs,
    Samples,
    SelectionRecord,
    Selections,
    now,
    upsert_dataset,
)
from tessera_gpu.errors import Unavailable

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Catalog",
    "DatasetEntry",
    "JobRecord",
    "SelectionRecord",
    "now",
    "open_catalog",
]

log = logging.getLogger("tessera.catalog")


LEGACY_IMPORTED = "legacy_import"


def open_catalog(data: DataDir) -> Catalog:
    """The data directory's catalog, checked and migrated, with its backups folder. A missing or
    empty catalog beside uploads, cached maps or backups is a 503 ``catalog_missing``: starting
    afresh there would silently forget every dataset, sample and selection they belong to."""
    path = data.catalog_path
    held = data.holdings()
    legacy = (data.root / "registry.json").exists()  # the old layout: imported at start
    if held and not legacy and (not path.exists() or path.stat().st_size == 0):
        state = "missing" if not path.exists() else "empty (0 bytes)"
        fix = "There is no backup to restore"
        if Backups(data.backups_dir).all():
            fix = f"Run `tessera restore-catalog --data-dir {data.root}` to put back a backup"
        raise Unavailable(
            f"The catalog {path} is {state}, but {data.root} holds {held}: starting would forget "
            f"every dataset, sample and selection. {fix}; or, to start afresh, move the data "
            "directory aside (or use another --data-dir)",
            code="catalog_missing",
        )
    return Catalog(path, backups=Backups(data.backups_dir))


class Catalog:
    """The catalog database at ``path`` (created and migrated on open).

    Opening checks it (``PRAGMA quick_check``). A file SQLite cannot read at all, or a damaged
    one of an older schema, is a 503 ``catalog_unreadable`` naming it. A damaged one that still
    reads opens *degraded*: ``problem`` says why, reads that work go on, and every write is a
    503 ``catalog_damaged`` (so nothing more is written into it) until it is restored. A read
    that meets damage later marks it degraded the same way. ``backups`` (when given) receives a
    copy before each migration and from :meth:`backup`.
    """

    def __init__(self, path: Path, *, backups: Backups | None = None) -> None:
        self.path = Path(path)
        self.backups = backups
        self.problem: str | None = None
        self._lock = threading.RLock()
        self._connection: sqlite3.Connection | None = None
        self._checked = time.monotonic()
        self._backed_up_at = -1  # the connection's total_changes at the last backup
        self.datasets = Datasets(self)
        self.samples = Samples(self)
        self.jobs = Jobs(self)
        self.selections = Selections(self)
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise Unavailable(
                f"The catalog {self.path} cannot be read ({exc}): {self.restore_hint}",
                code="catalog_unreadable",
            ) from None

    def _open(self) -> None:
        if self.path.exists() and self.path.stat().st_size > 0:
            self.problem = integrity_problem(self.path)
        if self.problem is not None:
            log.error("the catalog %s is damaged: %s", self.path, self.problem)
            if self.version < len(MIGRATIONS):
                raise sqlite3.DatabaseError(f"damaged, and too old to migrate: {self.problem}")
        else:
            if 0 < self.version < len(MIGRATIONS) and self.backups is not None:
                self.backups.take(self._db, f"before-v{len(MIGRATIONS)}")
            self._migrate()
        self._db.execute("SELECT id FROM datasets").fetchall()  # what a start cannot do without

    @property
    def restore_hint(self) -> str:
        return (
            "stop the server and run `tessera restore-catalog --data-dir "
            f"{self.path.parent}` to put back the newest sound backup (README: Restoring the "
            "catalog)"
        )

    def damaged(self, what: str) -> Unavailable:
        """The 503 for a write refused, or a read failed, in a damaged catalog."""
        return Unavailable(
            f"The catalog {self.path.name} is damaged ({self.problem}): {what}; "
            + self.restore_hint,
            code="catalog_damaged",
        )

    def check_writable(self) -> None:
        """A 503 ``catalog_damaged`` when writes would be refused: callers ask first, before
        work whose result only a write would keep (an upload moved into place, a sample)."""
        if self.problem is not None:
            raise self.damaged("writes are refused so that nothing more is lost")

    @contextmanager
    def guarded(self, what: str, *, reading: bool = True) -> Iterator[None]:
        """Damage met as a 503 that marks the catalog degraded: SQLite's corruption errors and,
        ``reading``, stored values that no longer decode (SQLite keeps no checksums of what it
        stores, so changed bytes surface as undecodable text or JSON)."""
        caught = (sqlite3.DatabaseError, ValueError) if reading else sqlite3.DatabaseError
        try:
            yield
        except caught as exc:
            undecodable = reading and str(exc).startswith("Could not decode to UTF-8")
            if isinstance(exc, sqlite3.DatabaseError) and not (is_damage(exc) or undecodable):
                raise
            self.problem = self.problem or str(exc)
            log.error("the catalog %s is damaged: %s", self.path, exc)
            raise self.damaged(f"{what} failed") from None

    def check(self, max_age: float = 60.0) -> str | None:
        """The damage found so far, the check run again when the last is older than
        ``max_age`` seconds (a health probe's view of the file on disk)."""
        with self._lock:
            if self.problem is None and time.monotonic() - self._checked > max_age:
                self._checked = time.monotonic()
                try:
                    self.problem = integrity_problem(self.path)
                except sqlite3.DatabaseError as exc:
                    self.problem = str(exc)
            return self.problem

    def backed_up(self) -> list[Path]:
        """The catalog's backups, newest first."""
        return self.backups.all() if self.backups is not None else []

    def backup(self, reason: str) -> Path | None:
        """A copy of a sound, non-empty catalog into the backups (None: not taken). A failed
        copy is logged, never raised: it must not stop a start or a shutdown."""
        with self._lock:
            if self.backups is None or self.problem is not None:
                return None
            if self._db.total_changes == self._backed_up_at or not self.rows(
                "SELECT id FROM datasets LIMIT 1"
            ):
                return None
            try:
                path = self.backups.take(self._db, reason)
            except (OSError, sqlite3.Error) as exc:
                log.warning("could not back up the catalog: %s", exc)
                return None
            self._backed_up_at = self._db.total_changes
            return path

    @property
    def _db(self) -> sqlite3.Connection:
        with self._lock:
            if self._connection is None:
                db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.execute("PRAGMA foreign_keys=ON")
                db.execute("PRAGMA busy_timeout=10000")
                self._connection = db
            return self._connection

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed into the database file)."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    # ---- schema -----------------------------------------------------------------------------

    @property
    def version(self) -> int:
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        for number, step in enumerate(MIGRATIONS, 1):
            if self.version >= number:
                continue
            with self._lock:
                if callable(step):
                    with self.transaction() as db:
                        step(db)
                        db.execute(f"PRAGMA user_version = {number}")
                else:
                    self._script(step, number)
            log.info("catalog schema migrated to version %d", number)

    def _script(self, script: str, number: int) -> None:
        """Run one SQL migration in its own transaction (executescript would commit ours)."""
        try:
            self._db.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;"
            )
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed whole when the block ends, else rolled back.
        Refused (503) while the catalog is damaged."""
        with self._lock, self.guarded("this write", reading=False):
            self.check_writable()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def rows(
        self, sql: str, *args: Any, each: Callable[[dict[str, Any]], Any] | None = None
    ) -> list[Any]:
        """The rows of a query as dicts, or as ``each`` makes them of those (the decoding of
        what was stored is part of reading it: a value that no longer decodes is damage)."""
        with self._lock, self.guarded("reading it"):
            cursor = self._db.execute(sql, args)
            names = [d[0] for d in cursor.description]
            rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
            return rows if each is None else [each(r) for r in rows]

    def meta(self, key: str) -> str | None:
        rows = self.rows("SELECT value FROM meta WHERE key = ?", key)
        return str(rows[0]["value"]) if rows else None

    # ---- the old layout ---------------------------------------------------------------------

    def import_legacy(self, root: Path) -> tuple[int, int] | None:
        """Import ``registry.json`` and ``samples/`` of the old layout, once. Returns
        ``(datasets, samples)`` imported, or None when there was nothing to import."""
        registry, samples_dir = root / "registry.json", root / "samples"
        if not registry.exists() and not samples_dir.is_dir():
            return None
        counts = None
        if self.meta(LEGACY_IMPORTED) is None:
            counts = self._import(registry, samples_dir)
        for old in (registry, samples_dir):  # after the commit: a crash here just redoes this
            if old.exists():
                old.rename(old.with_name(old.name + ".imported"))
        return counts

    def _import(self, registry: Path, samples_dir: Path) -> tuple[int, int]:
        entries = []
        if registry.exists():
            doc = json.loads(registry.read_text())
            entries = [DatasetEntry.from_dict(e) for e in doc.get("datasets", [])]
        known = {e.id for e in entries}
        manifests = []
        for path in sorted(samples_dir.glob("*/[!.]*.json")) if samples_dir.is_dir() else []:
            if path.parent.name in known:
                manifests.append((path.parent.name, json.loads(path.read_bytes())))
        with self.transaction() as db:
            for e in entries:
                upsert_dataset(db, e)
            for dataset_id, m in manifests:
                db.execute(
                    "INSERT OR IGNORE INTO samples (dataset_id, sample_id, created_at, manifest) "
                    "VALUES (?, ?, ?, ?)",
                    (dataset_id, str(m.get("sample_id")), str(m.get("created_at", "")),
                     msgspec.json.encode(m)),
                )  # fmt: skip
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (LEGACY_IMPORTED, now()))
        log.info("imported %d datasets and %d samples from the old layout", len(entries),
                 len(manifests))  # fmt: skip
        return len(entries), len(manifests)
