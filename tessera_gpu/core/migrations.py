"""The catalog's schema: its versioned migrations, oldest first.

The schema version is SQLite's ``user_version``; :class:`~.catalog.Catalog` runs every step
above it at open, each in its own transaction, after a backup of the catalog as it was. A step
is SQL, or a function run inside the transaction.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable

import msgspec

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Migration"]

log = logging.getLogger("tessera.catalog")

Migration = str | Callable[[sqlite3.Connection], None]


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
