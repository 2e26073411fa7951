"""The catalog's tables, one class each: what :class:`~tessera_gpu.core.catalog.Catalog` holds
(``catalog.datasets``, ``.samples``, ``.jobs``, ``.selections``), apart from how it keeps the
database itself (opening, checks, migrations, backups).

Each table reads and writes through the catalog's two doors, :meth:`Store.rows` and
:meth:`Store.transaction`: one lock, damage met as a 503, writes refused while degraded.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import msgspec

from tessera_gpu.errors import Conflict, NotFound

__all__ = [
    "DatasetEntry",
    "Datasets",
    "JobRecord",
    "Jobs",
    "Samples",
    "SelectionRecord",
    "Selections",
    "Store",
    "now",
    "upsert_dataset",
]


def now() -> str:
    """The catalog's timestamps: UTC ISO 8601 to the millisecond."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Store(Protocol):
    """What a table needs of the database: rows read, and one write transaction."""

    def rows(
        self, sql: str, *args: Any, each: Callable[[dict[str, Any]], Any] | None = None
    ) -> list[Any]: ...

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]: ...


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


@dataclass
class Datasets:
    """The registered datasets."""

    store: Store

    def all(self) -> list[DatasetEntry]:
        """Every registered dataset, oldest first."""
        return self.store.rows("SELECT * FROM datasets ORDER BY added_at, id", each=_entry)

    def get(self, dataset_id: str) -> DatasetEntry | None:
        rows = self.store.rows("SELECT * FROM datasets WHERE id = ?", dataset_id, each=_entry)
        return rows[0] if rows else None

    def put(self, entry: DatasetEntry) -> None:
        """Add a dataset, or update it in place (its samples and selections stay)."""
        with self.store.transaction() as db:
            upsert_dataset(db, entry)

    def remove(self, dataset_id: str) -> None:
        """Forget a dataset with its samples, jobs and selections."""
        with self.store.transaction() as db:
            db.execute("DELETE FROM datasets WHERE id = ?", (dataset_id,))


@dataclass
class Samples:
    """The sample manifests, kept as the JSON they were drawn with."""

    store: Store

    def add(self, dataset_id: str, sample_id: str, created_at: str, manifest: Any) -> None:
        """Keep a sample's manifest (any msgspec-encodable object)."""
        with self.store.transaction() as db:
            db.execute(
                "INSERT INTO samples (dataset_id, sample_id, created_at, manifest) "
                "VALUES (?, ?, ?, ?)",
                (dataset_id, sample_id, created_at, msgspec.json.encode(manifest)),
            )

    def manifests(self, dataset_id: str) -> list[bytes]:
        """Every manifest of a dataset as stored JSON, oldest first."""
        rows = self.store.rows(
            "SELECT manifest FROM samples WHERE dataset_id = ? ORDER BY created_at, sample_id",
            dataset_id,
        )
        return [bytes(r["manifest"]) for r in rows]

    def manifest(self, dataset_id: str, sample_id: str) -> bytes:
        rows = self.store.rows(
            "SELECT manifest FROM samples WHERE dataset_id = ? AND sample_id = ?",
            dataset_id,
            sample_id,
        )
        if not rows:
            raise NotFound(f"Sample not found: {sample_id!r}", code="sample_not_found")
        return bytes(rows[0]["manifest"])


@dataclass
class Jobs:
    """The last job of each kind per dataset."""

    store: Store

    def record(
        self,
        dataset_id: str,
        kind: str,
        *,
        params: dict[str, Any],
        status: str,
        error: str | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        """Remember the last job of ``kind`` for a dataset (a no-op for an unknown dataset, and
        for the job it already holds: ``updated_at`` is when the job last changed)."""
        with self.store.transaction() as db:
            db.execute(
                "INSERT INTO jobs (dataset_id, kind, params, status, error, info, updated_at) "
                "SELECT ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM datasets WHERE id = ?) "
                "ON CONFLICT (dataset_id, kind) DO UPDATE SET params = excluded.params, "
                "status = excluded.status, error = excluded.error, info = excluded.info, "
                "updated_at = excluded.updated_at "
                # the same job again (a restart finding its map in the cache): nothing is
                # written, so nothing waits for the disk (synchronous=FULL: ~0.2 s here)
                "WHERE jobs.params IS NOT excluded.params OR jobs.status IS NOT excluded.status "
                "OR jobs.error IS NOT excluded.error OR jobs.info IS NOT excluded.info",
                (dataset_id, kind, _json(params), status, error, _json(info or {}), now(),
                 dataset_id),
            )  # fmt: skip

    def of(self, dataset_id: str) -> list[JobRecord]:
        return self.store.rows(
            "SELECT * FROM jobs WHERE dataset_id = ? ORDER BY kind",
            dataset_id,
            each=lambda r: JobRecord(
                **{**r, "params": json.loads(r["params"]), "info": json.loads(r["info"])}
            ),
        )


@dataclass
class Selections:
    """The named selections: provenance and episode ids."""

    store: Store

    def add(
        self, dataset_id: str, name: str, source: dict[str, Any], episode_ids: list[str]
    ) -> SelectionRecord:
        """Keep a new selection; 409 when the dataset already has one of that name."""
        created = now()
        blob = msgspec.json.encode(episode_ids)
        try:
            with self.store.transaction() as db:
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

    def of(self, dataset_id: str) -> list[SelectionRecord]:
        """A dataset's selections (without their ids), oldest first."""
        return self.store.rows(
            "SELECT dataset_id, name, created_at, source, count FROM selections "
            "WHERE dataset_id = ? ORDER BY created_at, name",
            dataset_id,
            each=_selection,
        )

    def get(self, dataset_id: str, name: str) -> SelectionRecord:
        """One selection with its episode ids; 404 when there is none of that name."""
        rows = self.store.rows(
            "SELECT * FROM selections WHERE dataset_id = ? AND name = ?",
            dataset_id,
            name,
            each=_selection,
        )
        if not rows:
            raise NotFound(f"Selection not found: {name!r}", code="selection_not_found")
        return rows[0]

    def remove(self, dataset_id: str, name: str) -> None:
        with self.store.transaction() as db:
            gone = db.execute(
                "DELETE FROM selections WHERE dataset_id = ? AND name = ?", (dataset_id, name)
            ).rowcount
        if not gone:
            raise NotFound(f"Selection not found: {name!r}", code="selection_not_found")


def upsert_dataset(db: sqlite3.Connection, entry: DatasetEntry) -> None:
    """Insert ``entry``, or update the row of its id, inside the caller's transaction."""
    values = {**asdict(entry), "projection": _json(entry.projection),
              "shards": _json(entry.shards)}  # fmt: skip
    names = list(values)
    updates = ", ".join(f"{n} = excluded.{n}" for n in names if n != "id")
    # The column names are DatasetEntry's own fields; every value is bound.
    columns, marks = ", ".join(names), ", ".join("?" * len(names))
    sql = f"INSERT INTO datasets ({columns}) VALUES ({marks}) ON CONFLICT (id) DO UPDATE SET "  # noqa: S608
    sql += updates
    db.execute(sql, tuple(values.values()))


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _selection(row: dict[str, Any]) -> SelectionRecord:
    """A stored selection; its ids (a JSON array) when the row has them."""
    ids = row.pop("episode_ids", None)
    return SelectionRecord(
        **{**row, "source": json.loads(row["source"])},
        episode_ids=None if ids is None else tuple(msgspec.json.decode(ids, type=list[str])),
    )


def _entry(row: dict[str, Any]) -> DatasetEntry:
    return DatasetEntry(**{**row, "projection": json.loads(row["projection"]),
                           "shards": json.loads(row["shards"])})  # fmt: skip
