"""``tessera restore-catalog``: put a backup of the catalog back (the server stopped).

The catalog keeps backups of itself in ``<data dir>/backups/`` (before each migration, at each
start and clean shutdown); this puts the newest sound one back, or the one named. The catalog
it replaces is moved aside, never deleted.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import click

from tessera_gpu.core.backups import Backups, integrity_problem, restore_catalog
from tessera_gpu.core.datadir import DataDir
from tessera_gpu.settings import Settings

__all__ = ["restore"]


@click.command("restore-catalog")
@click.argument(
    "backup", required=False, type=click.Path(path_type=Path, dir_okay=False, exists=True)
)
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="The data directory [env: TESSERA_DATA_DIR; default: ~/.tessera].")  # fmt: skip
@click.option("--list", "listing", is_flag=True, help="List the backups and restore nothing.")
def restore(backup: Path | None, data_dir: Path | None, listing: bool) -> None:
    """Put BACKUP (default: the newest sound backup) back as the data directory's catalog.
    Stop the server first: this refuses while any Tessera process uses the folder."""
    data = DataDir(Settings.load({"data_dir": data_dir}).data_dir)
    backups = Backups(data.backups_dir)
    if listing:
        for path in backups.all():
            click.echo(f"{path}  {_state(path)}")
        if not backups.all():
            click.echo(f"no backups in {data.backups_dir}")
        return
    with data.hold_alone():
        done = restore_catalog(data.catalog_path, backups, backup)
    aside = f"; the catalog it replaced is in {done.moved_aside}" if done.moved_aside else ""
    click.echo(
        f"restored {data.catalog_path} from {done.backup.name}: {done.datasets:,} datasets, "
        f"{done.samples:,} samples, {done.selections:,} selections{aside}"
    )


def _state(path: Path) -> str:
    try:
        problem = integrity_problem(path)
    except sqlite3.DatabaseError as exc:
        problem = str(exc)
    return "sound" if problem is None else f"damaged: {problem}"
