"""The catalog: one SQLite database in the data directory (``catalog.sqlite``).

It holds what Tessera must never lose: the registered datasets, the sample manifests, the last
job of each kind per dataset, and the named selections (their provenance and episode ids).
Uploaded files and cached maps stay files beside it (:mod:`.datadir`).

* stdlib :mod:`sqlite3` in WAL mode with ``synchronous=FULL``: a write that returned is on disk,
  and a ``kill -9`` at any moment loses nothing that was committed.
* The schema version is SQLite's ``user_version``; :data:`MIGRATIONS` brings any older
  database up to date at open, each step in its own transaction.
* A data directory of the old layout (``registry.json`` and ``samples/<id>/<id>.json``) is
  imported once, in one transaction; the old files are then renamed ``*.imported``.

One connection serves every thread, behind a lock: Tessera's writes are small and rare. After
:meth:`Catalog.close` the next call opens a new one.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import msgspec

from tessera_gpu.errors import Conflict, NotFound

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Catalog",
    "DatasetEntry",
    "JobRecord",
    "SelectionRecord",
    "now",
]

log = logging.getLogger("tessera.catalog")


def _ids_as_json(db: sqlite3.Connection) -> None:
    """Migration 4: newline-joined selection ids become a JSON array. A selection whose
    stored count disagrees with its split blob held an id with a newline: it is kept as it
    was read, and named in the log."""
    rows = db.execute("SELECT dataset_id, name, count, episode_ids FROM selections").fetchall()
    for dataset_id, name, count, blob in rows:
        ids = bytes(blob).decode("utf-8").split("\n") if blob else []
        if len(ids) != count:
            log.warning(
                "selection %r of dataset %s held %d ids, but %d were stored: an id held a "
                "newline (such files are now refused); make the selection again",
                name, dataset_id, count, len(ids),
            )  # fmt: skip
        db.execute(
            "UPDATE selections SET episode_ids = ? WHERE dataset_id = ? AND name = ?",
            (msgspec.json.encode(ids), dataset_id, name),
        )


Migration = str | Callable[[sqlite3.Connection], None]  # SQL, or a step run in the transaction

MIGRATIONS: tuple[Migration, ...] = (
    # 1: datasets, samples, jobs
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE datasets (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        source TEXT NOT NULL CHECK (source IN ('upload', 'path')),
        path TEXT NOT NULL,
        file_hash TEXT NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        added_at TEXT NOT NULL,
        projection TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE samples (
        dataset_id TEXT NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
        sample_id TEXT NOT NULL,
        created_at TEXT NOT NULL,
        manifest BLOB NOT NULL,
        PRIMARY KEY (dataset_id, sample_id)
    );
    CREATE TABLE jobs (
        dataset_id TEXT NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        params TEXT NOT NULL,
        status TEXT NOT NULL,
        error TEXT,
        info TEXT NOT NULL DEFAULT '{}',
        updated_at TEXT NOT NULL,
        PRIMARY KEY (dataset_id, kind)
    );
    """,
    # 2: named selections (their episode ids are stored, not their filter)
    """
    CREATE TABLE selections (
        dataset_id TEXT NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        created_at TEXT NOT NULL,
        source TEXT NOT NULL,
        count INTEGER NOT NULL,
        episode_ids BLOB NOT NULL,
        PRIMARY KEY (dataset_id, name)
    );
    """,
    # 3: a dataset joined from several files lists them: [{path, file_hash, size, mtime_ns}]
    """
    ALTER TABLE datasets ADD COLUMN shards TEXT NOT NULL DEFAULT '[]';
    """,
    # 4: a selection's ids as a JSON array (they were joined by newlines, which an id holding
    # one split)
    _ids_as_json,
)
SCHEMA_VERSION = len(MIGRATIONS)
LEGACY_IMPORTED = "legacy_import"


def now() -> str:
    """The catalog's timestamps: UTC ISO 8601 to the millisecond."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class DatasetEntry:
    """One registered dataset as the catalog keeps it."""

    id: str
    name: str
    source: Literal["upload", "path"]
    path: str
    file_hash: str
    size: int
    mtime_ns: int
    added_at: str
    projection: dict[str, Any] = field(default_factory=dict)  # parameters asked for, if any
    #: The files of a dataset joined from several (each ``{path, file_hash, size, mtime_ns}``,
    #: in row order); empty for one file. ``path`` is then the first, ``file_hash`` the hash of
    #: the files' hashes, ``size`` their sum.
    shards: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DatasetEntry:
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        return cls(**known)


@dataclass(frozen=True)
class JobRecord:
    """The last job of one kind for one dataset."""

    dataset_id: str
    kind: str
    params: dict[str, Any]
    status: str
    error: str | None
    info: dict[str, Any]
    updated_at: str


@dataclass(frozen=True)
class SelectionRecord:
    """A named selection: its provenance (``source``), size, and (when read whole) its ids."""

    dataset_id: str
    name: str
    created_at: str
    source: dict[str, Any]
    count: int
    episode_ids: tuple[str, ...] | None = None


class Catalog:
    """The catalog database at ``path`` (created and migrated on open)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._connection: sqlite3.Connection | None = None
        self._migrate()

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
                    with self._transaction() as db:
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
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed whole when the block ends, else rolled back."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _rows(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        with self._lock:
            cursor = self._db.execute(sql, args)
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def meta(self, key: str) -> str | None:
        rows = self._rows("SELECT value FROM meta WHERE key = ?", key)
        return str(rows[0]["value"]) if rows else None

    # ---- datasets ---------------------------------------------------------------------------

    def datasets(self) -> list[DatasetEntry]:
        """Every registered dataset, oldest first."""
        rows = self._rows("SELECT * FROM datasets ORDER BY added_at, id")
        return [_entry(r) for r in rows]

    def dataset(self, dataset_id: str) -> DatasetEntry | None:
        rows = self._rows("SELECT * FROM datasets WHERE id = ?", dataset_id)
        return _entry(rows[0]) if rows else None

    def put_dataset(self, entry: DatasetEntry) -> None:
        """Add a dataset, or update it in place (its samples and selections stay)."""
        with self._transaction() as db:
            _upsert_dataset(db, entry)

    def remove_dataset(self, dataset_id: str) -> None:
        """Forget a dataset with its samples, jobs and selections."""
        with self._transaction() as db:
            db.execute("DELETE FROM datasets WHERE id = ?", (dataset_id,))

    # ---- samples ----------------------------------------------------------------------------

    def add_sample(self, dataset_id: str, sample_id: str, created_at: str, manifest: Any) -> None:
        """Keep a sample's manifest (any msgspec-encodable object)."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO samples (dataset_id, sample_id, created_at, manifest) "
                "VALUES (?, ?, ?, ?)",
                (dataset_id, sample_id, created_at, msgspec.json.encode(manifest)),
            )

    def sample_manifests(self, dataset_id: str) -> list[bytes]:
        """Every manifest of a dataset as stored JSON, oldest first."""
        rows = self._rows(
            "SELECT manifest FROM samples WHERE dataset_id = ? ORDER BY created_at, sample_id",
            dataset_id,
        )
        return [bytes(r["manifest"]) for r in rows]

    def sample_manifest(self, dataset_id: str, sample_id: str) -> bytes:
        rows = self._rows(
            "SELECT manifest FROM samples WHERE dataset_id = ? AND sample_id = ?",
            dataset_id,
            sample_id,
        )
        if not rows:
            raise NotFound(f"Sample not found: {sample_id!r}", code="sample_not_found")
        return bytes(rows[0]["manifest"])

    # ---- jobs -------------------------------------------------------------------------------

    def record_job(
        self,
        dataset_id: str,
        kind: str,
        *,
        params: dict[str, Any],
        status: str,
        error: str | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        """Remember the last job of ``kind`` for a dataset (a no-op for an unknown dataset)."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO jobs (dataset_id, kind, params, status, error, info, updated_at) "
                "SELECT ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM datasets WHERE id = ?) "
                "ON CONFLICT (dataset_id, kind) DO UPDATE SET params = excluded.params, "
                "status = excluded.status, error = excluded.error, info = excluded.info, "
                "updated_at = excluded.updated_at",
                (dataset_id, kind, _json(params), status, error, _json(info or {}), now(),
                 dataset_id),
            )  # fmt: skip

    def jobs(self, dataset_id: str) -> list[JobRecord]:
        rows = self._rows("SELECT * FROM jobs WHERE dataset_id = ? ORDER BY kind", dataset_id)
        return [
            JobRecord(
                dataset_id=r["dataset_id"],
                kind=r["kind"],
                params=json.loads(r["params"]),
                status=r["status"],
                error=r["error"],
                info=json.loads(r["info"]),
                updated_at=r["updated_at"],
            )
            for r in rows
        ]

    # ---- selections -------------------------------------------------------------------------

    def add_selection(
        self, dataset_id: str, name: str, source: dict[str, Any], episode_ids: list[str]
    ) -> SelectionRecord:
        """Keep a new selection; 409 when the dataset already has one of that name."""
        created = now()
        blob = msgspec.json.encode(episode_ids)
        try:
            with self._transaction() as db:
                db.execute(
                    "INSERT INTO selections (dataset_id, name, created_at, source, count, "
                    "episode_ids) VALUES (?, ?, ?, ?, ?, ?)",
                    (dataset_id, name, created, _json(source), len(episode_ids), blob),
                )
        except sqlite3.IntegrityError:
            raise Conflict(
                f"A selection named {name!r} already exists: delete it first, or pick another name",
                code="selection_exists",
            ) from None
        return SelectionRecord(dataset_id, name, created, source, len(episode_ids))

    def selections(self, dataset_id: str) -> list[SelectionRecord]:
        """A dataset's selections (without their ids), oldest first."""
        rows = self._rows(
            "SELECT dataset_id, name, created_at, source, count FROM selections "
            "WHERE dataset_id = ? ORDER BY created_at, name",
            dataset_id,
        )
        return [SelectionRecord(**{**r, "source": json.loads(r["source"])}) for r in rows]

    def selection(self, dataset_id: str, name: str) -> SelectionRecord:
        """One selection with its episode ids; 404 when there is none of that name."""
        rows = self._rows(
            "SELECT * FROM selections WHERE dataset_id = ? AND name = ?", dataset_id, name
        )
        if not rows:
            raise NotFound(f"Selection not found: {name!r}", code="selection_not_found")
        r = rows[0]
        ids = tuple(msgspec.json.decode(r.pop("episode_ids"), type=list[str]))
        return SelectionRecord(**{**r, "source": json.loads(r["source"])}, episode_ids=ids)

    def remove_selection(self, dataset_id: str, name: str) -> None:
        with self._transaction() as db:
            gone = db.execute(
                "DELETE FROM selections WHERE dataset_id = ? AND name = ?", (dataset_id, name)
            ).rowcount
        if not gone:
            raise NotFound(f"Selection not found: {name!r}", code="selection_not_found")

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
        with self._transaction() as db:
            for e in entries:
                _upsert_dataset(db, e)
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


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _entry(row: dict[str, Any]) -> DatasetEntry:
    return DatasetEntry(**{**row, "projection": json.loads(row["projection"]),
                           "shards": json.loads(row["shards"])})  # fmt: skip


def _upsert_dataset(db: sqlite3.Connection, entry: DatasetEntry) -> None:
    values = {**asdict(entry), "projection": _json(entry.projection),
              "shards": _json(entry.shards)}  # fmt: skip
    names = list(values)
    updates = ", ".join(f"{n} = excluded.{n}" for n in names if n != "id")
    # The column names are DatasetEntry's own fields; every value is bound.
    columns, marks = ", ".join(names), ", ".join("?" * len(names))
    sql = f"INSERT INTO datasets ({columns}) VALUES ({marks}) ON CONFLICT (id) DO UPDATE SET "  # noqa: S608
    sql += updates
    db.execute(sql, tuple(values.values()))
