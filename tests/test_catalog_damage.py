"""A missing, unreadable or damaged catalog: the start refused with one line, a degraded server
(reads go on, writes refused, health says why), backups, and putting one back."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from litestar.testing import AsyncTestClient
from tessera_app.main import create_app

from tessera_gpu.cli.main import cli
from tessera_gpu.core import Catalog, DataDir, DatasetEntry, Tessera
from tessera_gpu.core.backups import KEEP, Backups
from tessera_gpu.core.catalog import SCHEMA_VERSION, open_catalog
from tessera_gpu.errors import Unavailable
from tessera_gpu.sampling import SampleRequest
from tessera_gpu.selections import SelectionRequest
from tessera_gpu.settings import Settings

from .api_calls import TEST_HOSTS
from .conftest import write_episode_file

pytest_plugins = ("tests.api_fixtures",)

IDS = [f"ep_{i:05d}" for i in range(300)]
#: The start of a selection of every episode as the catalog stores it (a JSON array).
SELECTION_BYTES = b'["ep_00000","ep_00001","ep_00002"'


def entry(dataset_id: str = "d1") -> DatasetEntry:
    return DatasetEntry(id=dataset_id, name=dataset_id, source="path", path="/x.h5",
                        file_hash=dataset_id * 8, size=1, mtime_ns=1, added_at="2026-01-01")  # fmt: skip


def filled(path: Path, backups: Backups | None = None) -> Catalog:
    catalog = Catalog(path, backups=backups)
    catalog.datasets.put(entry())
    catalog.samples.add("d1", "s1", "2026-01-01", {"sample_id": "s1", "episode_ids": ["ep_00007"]})
    catalog.selections.add("d1", "all", {"kind": "filter"}, IDS)
    return catalog


def damage_page_holding(path: Path, needle: bytes) -> int:
    """Overwrite the header of the database page that holds ``needle`` (the file closed, its WAL
    checkpointed): SQLite then finds that b-tree page malformed. Returns the page number."""
    raw = bytearray(path.read_bytes())
    page_size = int.from_bytes(raw[16:18], "big")
    offset = raw.find(needle)
    assert offset > page_size, "the needle must lie beyond the schema page"
    start = offset - offset % page_size
    raw[start : start + 12] = b"\xee" * 12
    path.write_bytes(bytes(raw))
    return start // page_size + 1


# ---- a start that must not go on ---------------------------------------------------------------


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_a_missing_or_empty_catalog_beside_uploads_refuses_to_start(
    tmp_path: Path, state: str
) -> None:
    data = DataDir(tmp_path / "data")
    data.uploads_dir.mkdir()
    data.cache_dir.mkdir()
    (data.uploads_dir / "0123456789abcdef.h5").write_bytes(b"x")
    (data.cache_dir / "a.proj").write_bytes(b"x")
    if state == "empty":
        data.catalog_path.write_bytes(b"")  # truncated to 0 bytes
    with pytest.raises(Unavailable) as info:
        open_catalog(data)
    words = "missing" if state == "missing" else "empty (0 bytes)"
    assert (info.value.code, info.value.message) == ("catalog_missing", (
        f"The catalog {data.catalog_path} is {words}, but {data.root} holds 1 uploaded file and "
        "1 cached file: starting would forget every dataset, sample and selection. There is no "
        "backup to restore; or, to start afresh, move the data directory aside (or use another "
        "--data-dir)"
    ))  # fmt: skip
    assert data.catalog_path.exists() == (state == "empty")  # nothing was created
    with pytest.raises(Unavailable) as again:  # the core, as the CLI and the server build it
        Tessera(Settings(device="cpu", data_dir=data.root))
    assert again.value.message == info.value.message


def test_the_refusal_points_to_a_backup_when_there_is_one(tmp_path: Path) -> None:
    data = DataDir(tmp_path / "data")
    filled(data.catalog_path, Backups(data.backups_dir)).backup("shutdown")
    for name in ("catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm"):
        (data.root / name).unlink(missing_ok=True)
    with pytest.raises(Unavailable) as info:
        open_catalog(data)
    assert "holds 1 catalog backup: starting would" in info.value.message
    assert f"Run `tessera restore-catalog --data-dir {data.root}` to put back" in info.value.message


def test_a_fresh_or_old_layout_data_dir_starts(tmp_path: Path) -> None:
    open_catalog(DataDir(tmp_path / "fresh")).close()
    old = DataDir(tmp_path / "old")
    (old.root / "registry.json").write_text('{"datasets": []}')
    old.cache_dir.mkdir(exist_ok=True)
    (old.cache_dir / "a.proj").write_bytes(b"x")
    open_catalog(old).close()  # the old layout is imported at start, not refused


def test_a_file_sqlite_cannot_read_is_one_line_naming_it(tmp_path: Path) -> None:
    data = DataDir(tmp_path / "data")
    data.catalog_path.write_bytes(b"not a database, just bytes\n" * 400)
    with pytest.raises(Unavailable) as info:
        open_catalog(data)
    assert (info.value.code, info.value.message) == ("catalog_unreadable", (
        f"The catalog {data.catalog_path} cannot be read (file is not a database): stop the "
        f"server and run `tessera restore-catalog --data-dir {data.root}` to put back the newest "
        "sound backup (README: Restoring the catalog)"
    ))  # fmt: skip


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_tessera_serve_says_it_in_one_line(tmp_path: Path, damage: str) -> None:
    data = DataDir(tmp_path / "data")
    filled(data.catalog_path).close()
    data.uploads_dir.mkdir(exist_ok=True)
    (data.uploads_dir / "0123456789abcdef.h5").write_bytes(b"x")
    if damage == "truncate":
        data.catalog_path.write_bytes(b"")
    else:
        data.catalog_path.write_bytes(b"\x00garbage" * 1000)
    result = CliRunner().invoke(cli, ["serve", "--data-dir", str(data.root), "--port", "0"])
    assert result.exit_code == 1, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: The catalog {data.catalog_path} ")
    assert "restore-catalog" in line or "no backup" in line


# ---- damage that still reads: degraded ---------------------------------------------------------


def test_damage_in_the_middle_degrades_the_catalog(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    filled(path).close()
    damage_page_holding(path, SELECTION_BYTES)
    catalog = Catalog(path)
    assert catalog.problem == "quick_check stopped: database disk image is malformed"
    assert [e.id for e in catalog.datasets.all()] == ["d1"]  # what still reads, reads
    assert len(catalog.samples.manifests("d1")) == 1
    with pytest.raises(Unavailable) as info:
        catalog.selections.of("d1")
    assert info.value.code == "catalog_damaged"
    assert info.value.message.startswith("The catalog catalog.sqlite is damaged (")
    assert "): reading it failed; stop the server and run `tessera restore-catalog" in (
        info.value.message
    )
    for write in (lambda: catalog.datasets.put(entry("d2")),
                  lambda: catalog.samples.add("d1", "s2", "2026-01-02", {}),
                  lambda: catalog.selections.remove("d1", "all")):  # fmt: skip
        with pytest.raises(Unavailable, match="writes are refused so that nothing more is lost"):
            write()
    catalog.close()


def test_damage_found_while_running_marks_the_catalog(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    filled(path).close()
    catalog = Catalog(path)
    assert catalog.check(max_age=0) is None
    catalog.close()  # the damage happens under a running server, between two of its reads
    damage_page_holding(path, SELECTION_BYTES)
    assert catalog.check(max_age=3600) is None  # checked a moment ago: not again yet
    assert catalog.check(max_age=0) is not None
    with pytest.raises(Unavailable, match="writes are refused"):
        catalog.datasets.put(entry("d2"))
    catalog.close()


@pytest.fixture
def damaged_server(tmp_path: Path, metadata_only_file: Path) -> Settings:
    """A data directory whose catalog holds a dataset, a sample and a selection, with the page
    of the selection's ids damaged."""
    settings = Settings(device="cpu", data_dir=tmp_path / "data", allowed_host=TEST_HOSTS)
    with Tessera(settings) as core:
        core.open()
        live = core.register_path(metadata_only_file, check_allowed=False)
        core.samples.draw(live, SampleRequest("random", 5))
        core.curation.create_selection(live, SelectionRequest("all", filter=[]))
    assert (settings.data_dir / "catalog.sqlite").exists()
    damage_page_holding(settings.data_dir / "catalog.sqlite", b'["ep_00000","ep_00001"')
    return settings


@pytest.fixture
async def degraded(damaged_server: Settings) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    async with AsyncTestClient(create_app(damaged_server)) as c:
        yield c


@pytest.mark.anyio
async def test_a_degraded_server_reads_what_it_can_and_refuses_writes(
    degraded: AsyncTestClient,  # type: ignore[type-arg]
    tmp_path: Path,
) -> None:
    health = (await degraded.get("/api/health")).json()
    assert health["status"] == "degraded"
    assert health["catalog"]["status"] == "damaged"
    assert health["catalog"]["error"] == "quick_check stopped: database disk image is malformed"
    (dataset,) = (await degraded.get("/api/datasets")).json()  # reloaded from the catalog
    samples = await degraded.get(f"/api/datasets/{dataset['id']}/samples")
    assert (samples.status_code, len(samples.json())) == (200, 1)
    count = await degraded.post(f"/api/datasets/{dataset['id']}/count", json={})
    assert count.json()["count"] == dataset["n_episodes"]
    for method, path, body in (
        ("GET", "selections", None),
        ("POST", "count", {"filter": [{"field": "selection", "op": "in", "value": ["all"]}]}),
        ("POST", "samples", {"method": "random", "n": 3}),
        ("POST", "selections", {"name": "more", "filter": []}),
        ("DELETE", "", None),
    ):
        r = await degraded.request(method, f"/api/datasets/{dataset['id']}/{path}".rstrip("/"),
                                   json=body)  # fmt: skip
        assert (r.status_code, r.json()["code"]) == (503, "catalog_damaged"), (method, path)
        assert "restore-catalog" in r.json()["error"]
    other = write_episode_file(tmp_path / "other.h5", n=40, embeddings=False, previews=False)
    files = {"file": ("other.h5", other.read_bytes(), "application/x-hdf5")}
    r = await degraded.post("/api/datasets", files=files)
    assert (r.status_code, r.json()["code"]) == (503, "catalog_damaged")
    assert len((await degraded.get("/api/datasets")).json()) == 1
    uploads = degraded.app.state.tessera.data.uploads_dir
    assert [p.name for p in uploads.iterdir()] == []  # nothing kept that the catalog lacks


# ---- backups and restoring one -----------------------------------------------------------------


def test_a_migration_is_preceded_by_a_backup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tessera_gpu.core import catalog as module

    data = DataDir(tmp_path / "data")
    monkeypatch.setattr(module, "MIGRATIONS", module.MIGRATIONS[:3])
    module.Catalog(data.catalog_path).datasets.put(entry())
    monkeypatch.undo()
    new = open_catalog(data)
    assert new.version == SCHEMA_VERSION
    (backup,) = Backups(data.backups_dir).all()
    assert backup.name.endswith(f"-before-v{SCHEMA_VERSION}.sqlite")
    with sqlite3.connect(backup) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (3,)
        assert db.execute("SELECT id FROM datasets").fetchall() == [("d1",)]
    db.close()
    new.close()


def test_routine_backups_are_kept_to_the_newest_few(tmp_path: Path) -> None:
    backups = Backups(tmp_path / "backups")
    catalog = filled(tmp_path / "catalog.sqlite", backups)
    taken = []
    for i in range(KEEP + 3):
        catalog.datasets.put(entry(f"x{i}"))  # a change, or the backup is skipped
        taken.append(catalog.backup("start" if i % 2 else "shutdown"))
    assert catalog.backup("shutdown") is None  # nothing changed since the last one
    assert backups.all() == sorted(taken, reverse=True)[:KEEP]
    catalog.close()


def test_restore_catalog_puts_back_the_newest_sound_backup(tmp_path: Path) -> None:
    data = DataDir(tmp_path / "data")
    catalog = filled(data.catalog_path, Backups(data.backups_dir))
    catalog.backup("shutdown")
    catalog.datasets.put(entry("after"))  # not in the backup
    catalog.close()
    damage_page_holding(data.catalog_path, SELECTION_BYTES)
    runner = CliRunner()
    with data.share():  # a server still running: refused
        busy = runner.invoke(cli, ["restore-catalog", "--data-dir", str(data.root)])
    assert (busy.exit_code, busy.output) == (
        1, f"error: A Tessera server or command is using {data.root}: stop it first\n"
    )  # fmt: skip
    result = runner.invoke(cli, ["restore-catalog", "--data-dir", str(data.root)])
    assert result.exit_code == 0, result.output
    (backup,) = Backups(data.backups_dir).all()
    assert result.output.startswith(
        f"restored {data.catalog_path} from {backup.name}: 1 datasets, 1 samples, 1 selections; "
        f"the catalog it replaced is in {data.backups_dir}/replaced-"
    )
    restored = open_catalog(data)
    assert restored.problem is None
    assert [e.id for e in restored.datasets.all()] == ["d1"]
    assert restored.selections.get("d1", "all").episode_ids == tuple(IDS)
    restored.close()
    (aside,) = data.backups_dir.glob("replaced-*")
    assert (aside / "catalog.sqlite").exists()  # the damaged one is kept, not deleted


def test_restore_catalog_without_a_backup_says_so(tmp_path: Path) -> None:
    data = DataDir(tmp_path / "data")
    result = CliRunner().invoke(cli, ["restore-catalog", "--data-dir", str(data.root)])
    assert result.exit_code == 1
    assert result.output == (
        f"error: No sound catalog backup in {data.backups_dir}: nothing to restore. To start "
        "afresh, move the data directory aside (or use another --data-dir)\n"
    )
