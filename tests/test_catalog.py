"""The catalog (SQLite), the data directory, atomic writes and streamed uploads."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import anyio
import pytest
from tessera_app.uploads import receive_upload

from tessera_gpu.core import Catalog, DataDir, DatasetEntry
from tessera_gpu.core.catalog import SCHEMA_VERSION
from tessera_gpu.core.registry import _stem
from tessera_gpu.errors import InvalidRequest, NotFound, PayloadTooLarge
from tessera_gpu.io.files import write_atomic

BOUNDARY = "b0undary42"


@pytest.fixture
def data(tmp_path: Path) -> DataDir:
    return DataDir(tmp_path / "data")


@pytest.fixture
def catalog(data: DataDir) -> Iterable[Catalog]:
    c = Catalog(data.catalog_path)
    yield c
    c.close()


def entry(dataset_id: str, **kw: object) -> DatasetEntry:
    base: dict[str, object] = {
        "id": dataset_id, "name": dataset_id, "source": "upload", "path": f"/x/{dataset_id}.h5",
        "file_hash": dataset_id * 4, "size": 10, "mtime_ns": 1, "added_at": "2025-01-01T00:00:00",
    }  # fmt: skip
    return DatasetEntry(**{**base, **kw})  # type: ignore[arg-type]


# ---- atomic writes ----------------------------------------------------------------------------


def test_write_atomic_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a.json"
    write_atomic(target, b"old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_sweep_removes_only_stale_temp_files(data: DataDir) -> None:
    stale = [
        data.root / ".catalog.export.1234.tmp",
        data.uploads_dir / ".upload-abc.tmp",
        data.cache_dir / ".x.proj.99ab.tmp",
    ]
    kept = [data.uploads_dir / "abc.h5", data.cache_dir / "x.proj"]
    for p in stale + kept:
        p.parent.mkdir(exist_ok=True)  # made by the first write there
        p.write_bytes(b"x")
    assert sorted(data.sweep()) == sorted(stale)
    assert all(p.exists() for p in kept)
    assert not any(p.exists() for p in stale)


# ---- the catalog ------------------------------------------------------------------------------


def test_datasets_survive_a_new_connection(catalog: Catalog) -> None:
    catalog.datasets.put(entry("aaaa"))
    catalog.datasets.put(entry("bbbb", source="path", projection={"seed": 3}))
    catalog.datasets.remove("aaaa")
    again = Catalog(catalog.path)
    assert again.datasets.all() == [entry("bbbb", source="path", projection={"seed": 3})]
    assert again.version == SCHEMA_VERSION
    again.close()


def test_the_database_is_wal_and_durable(catalog: Catalog) -> None:
    db = sqlite3.connect(catalog.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()


def test_updating_a_dataset_keeps_its_samples(catalog: Catalog) -> None:
    catalog.datasets.put(entry("d1"))
    catalog.samples.add("d1", "s1", "2025-01-01T00:00:00", {"sample_id": "s1"})
    catalog.datasets.put(entry("d1", projection={"seed": 9}))  # an upsert, not delete + insert
    assert catalog.datasets.get("d1") == entry("d1", projection={"seed": 9})
    assert [json.loads(m) for m in catalog.samples.manifests("d1")] == [{"sample_id": "s1"}]


def test_samples_round_trip_oldest_first_and_go_with_their_dataset(catalog: Catalog) -> None:
    catalog.datasets.put(entry("d1"))
    late = {"sample_id": "s2", "created_at": "2025-01-02T00:00:00", "episode_ids": ["b"]}
    early = {"sample_id": "s1", "created_at": "2025-01-01T00:00:00", "episode_ids": ["a"]}
    catalog.samples.add("d1", "s2", late["created_at"], late)
    catalog.samples.add("d1", "s1", early["created_at"], early)
    assert [json.loads(m) for m in catalog.samples.manifests("d1")] == [early, late]
    assert json.loads(catalog.samples.manifest("d1", "s2")) == late
    assert catalog.samples.manifests("other") == []
    catalog.jobs.record("d1", "projection", params={"seed": 0}, status="done", info={"n": 3})
    assert [(j.kind, j.status, j.info) for j in catalog.jobs.of("d1")] == [
        ("projection", "done", {"n": 3})
    ]
    catalog.datasets.remove("d1")
    assert catalog.samples.manifests("d1") == []
    assert catalog.jobs.of("d1") == []


def test_a_job_of_an_unknown_dataset_is_not_recorded(catalog: Catalog) -> None:
    catalog.jobs.record("gone", "projection", params={}, status="done")
    assert catalog.jobs.of("gone") == []


def test_the_same_job_again_writes_nothing(catalog: Catalog) -> None:
    """A restart finds each map in the cache and tells the catalog the same job again: nothing
    is written (no wait for the disk), and ``updated_at`` stays when the job last changed."""
    catalog.datasets.put(entry("d1"))
    catalog.jobs.record("d1", "projection", params={"seed": 0}, status="done", info={"k": 1})
    (first,) = catalog.jobs.of("d1")
    changes = catalog.transaction  # the connection's count of changed rows, before and after
    with changes() as db:
        before = db.total_changes
    catalog.jobs.record("d1", "projection", params={"seed": 0}, status="done", info={"k": 1})
    with changes() as db:
        assert db.total_changes == before
    assert catalog.jobs.of("d1") == [first]
    catalog.jobs.record("d1", "projection", params={"seed": 0}, status="failed", error="x")
    (changed,) = catalog.jobs.of("d1")
    assert (changed.status, changed.error, changed.info) == ("failed", "x", {})
    assert changed.updated_at >= first.updated_at


@pytest.mark.parametrize("sample_id", ["../../registry", "nope", "a/b", ".s1", ""])
def test_unknown_sample_ids_are_404(catalog: Catalog, sample_id: str) -> None:
    catalog.datasets.put(entry("d1"))
    catalog.samples.add("d1", "s1", "2025-01-01T00:00:00", {"sample_id": "s1"})
    with pytest.raises(NotFound):
        catalog.samples.manifest("d1", sample_id)


def test_the_old_layout_is_imported_once(data: DataDir) -> None:
    old = [{**vars(entry("aaaa")), "projection": {"seed": 2}}, vars(entry("bbbb"))]
    (data.root / "registry.json").write_text(json.dumps({"version": 1, "datasets": old}))
    manifest = {"sample_id": "s1", "created_at": "2025-01-01T00:00:00", "episode_ids": ["x"]}
    (data.root / "samples" / "aaaa").mkdir(parents=True)
    (data.root / "samples" / "aaaa" / "s1.json").write_text(json.dumps(manifest))
    (data.root / "samples" / "aaaa" / ".s2.json.1.tmp").write_text("{half")  # a crash's leftover
    catalog = Catalog(data.catalog_path)
    assert catalog.import_legacy(data.root) == (2, 1)
    assert [e.id for e in catalog.datasets.all()] == ["aaaa", "bbbb"]
    assert catalog.datasets.get("aaaa") == entry("aaaa", projection={"seed": 2})
    assert [json.loads(m) for m in catalog.samples.manifests("aaaa")] == [manifest]
    assert sorted(p.name for p in data.root.iterdir() if "imported" in p.name) == [
        "registry.json.imported", "samples.imported"
    ]  # fmt: skip
    assert catalog.import_legacy(data.root) is None  # nothing left to import
    catalog.close()


def test_an_import_interrupted_after_its_commit_is_not_done_twice(data: DataDir) -> None:
    (data.root / "registry.json").write_text(json.dumps({"datasets": [vars(entry("aaaa"))]}))
    catalog = Catalog(data.catalog_path)
    catalog.import_legacy(data.root)
    (data.root / "registry.json.imported").rename(data.root / "registry.json")  # as if killed
    catalog.datasets.remove("aaaa")
    assert catalog.import_legacy(data.root) is None  # renamed again, not re-imported
    assert catalog.datasets.all() == []
    assert (data.root / "registry.json.imported").exists()
    catalog.close()


def test_an_older_schema_is_migrated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A version-1 database (written as version 1 wrote it) is brought up to date at open:
    its datasets stay, and the later columns get their defaults."""
    import sqlite3

    from tessera_gpu.core import catalog as module

    path = tmp_path / "c.sqlite"
    monkeypatch.setattr(module, "MIGRATIONS", module.MIGRATIONS[:1])
    module.Catalog(path).close()
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO datasets (id, name, source, path, file_hash, size, mtime_ns, added_at) "
            "VALUES ('aaaa', 'old', 'path', '/data/old.h5', 'aaaa', 1, 2, '2026-01-01')"
        )
    db.close()
    monkeypatch.undo()
    new = module.Catalog(path)
    assert new.version == SCHEMA_VERSION
    (old,) = new.datasets.all()
    assert (old.id, old.name, old.shards, old.projection) == ("aaaa", "old", [], {})
    new.close()


ODD_IDS = ["ep_a\nep_b", "ep_a", "", "x\r\n", "\u202e\u2028\x00", 'comma,"quote"', "ep_b"]


def test_selection_ids_keep_every_byte(catalog: Catalog) -> None:
    """The catalog stores whatever ids it is given (validation is at the door): no byte of
    an id can split it or join it to another."""
    catalog.datasets.put(entry("d1"))
    catalog.selections.add("d1", "odd", {"kind": "episode_ids"}, ODD_IDS)
    catalog.close()  # a new connection, as after a restart
    record = catalog.selections.get("d1", "odd")
    assert (record.count, record.episode_ids) == (len(ODD_IDS), tuple(ODD_IDS))


def test_a_version_3_catalog_gets_its_selection_ids_as_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Version 3 kept a selection's ids joined by newlines; migration 4 turns each into a JSON
    array, and names in the log a selection an id with a newline had already split."""
    from tessera_gpu.core import catalog as module

    path = tmp_path / "c.sqlite"
    monkeypatch.setattr(module, "MIGRATIONS", module.MIGRATIONS[:3])
    module.Catalog(path).close()
    monkeypatch.undo()
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO datasets (id, name, source, path, file_hash, size, mtime_ns, added_at) "
            "VALUES ('d1', 'old', 'path', '/data/old.h5', 'd1', 1, 2, '2026-01-01')"
        )
        rows = [("keep", 3, b"ep_1\nep_2\nep_3"), ("empty", 0, b""), ("split", 1, b"ep_a\nep_b")]
        for name, count, blob in rows:
            db.execute(
                "INSERT INTO selections VALUES ('d1', ?, '2026-01-01', '{}', ?, ?)",
                (name, count, blob),
            )
    db.close()
    new = module.Catalog(path)
    assert new.version == SCHEMA_VERSION
    assert new.selections.get("d1", "keep").episode_ids == ("ep_1", "ep_2", "ep_3")
    assert new.selections.get("d1", "empty").episode_ids == ()
    assert new.selections.get("d1", "split").episode_ids == ("ep_a", "ep_b")
    assert "selection 'split' of dataset d1 held 1 ids, but 2 were stored" in caplog.text
    new.close()


# ---- streamed uploads -------------------------------------------------------------------------


def multipart(payload: bytes, *, field: str = "file", extra: bool = True) -> bytes:
    parts = []
    if extra:
        parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="note"\r\n\r\nhi\r\n')
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="d.h5"\r\n'
    head += "Content-Type: application/x-hdf5\r\n\r\n"
    return "".join(parts).encode() + head.encode() + payload + f"\r\n--{BOUNDARY}--\r\n".encode()


class Chunks:
    """An async body that counts how much of it was pulled."""

    def __init__(self, body: bytes, size: int) -> None:
        self.pieces = [body[i : i + size] for i in range(0, len(body), size)] + [b""]
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            self.pulled += 1
            yield piece


def receive(data: DataDir, chunks: Iterable[bytes] | Chunks, limit: int = 10_000):  # type: ignore[no-untyped-def]
    source = chunks if isinstance(chunks, Chunks) else _iterate(list(chunks))
    return anyio.run(lambda: receive_upload(source, BOUNDARY, data, limit=limit))


async def _iterate(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for p in pieces:
        yield p


@pytest.mark.parametrize("chunk_size", [1, 7, 4096])
def test_upload_streams_to_a_temp_file(data: DataDir, chunk_size: int) -> None:
    payload = bytes(range(256)) * 20
    upload = receive(data, Chunks(multipart(payload), chunk_size))
    assert upload.path.parent == data.uploads_dir
    assert upload.path.name.startswith(".upload-")
    assert upload.path.read_bytes() == payload
    assert (upload.sha256, upload.size, upload.filename) == (
        hashlib.sha256(payload).hexdigest(),
        len(payload),
        "d.h5",
    )
    upload.discard()
    assert list(data.uploads_dir.iterdir()) == []


def test_the_limit_applies_while_streaming(data: DataDir) -> None:
    chunks = Chunks(multipart(b"x" * 50_000), 1000)
    with pytest.raises(PayloadTooLarge) as info:
        receive(data, chunks, limit=10_000)
    assert info.value.status == 413
    assert info.value.code == "file_too_large"
    assert chunks.pulled < 15  # stopped reading soon after the limit, not at the end
    assert list(data.uploads_dir.iterdir()) == []


def test_bad_multipart_leaves_nothing(data: DataDir) -> None:
    with pytest.raises(InvalidRequest) as info:
        receive(data, [multipart(b"abc")[:-30], b""])
    assert info.value.code == "bad_multipart"
    with pytest.raises(InvalidRequest) as info:
        receive(data, [multipart(b"abc", field="upload"), b""])
    assert info.value.code == "missing_file"
    assert list(data.uploads_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("filename", "name"),
    [("droid_v2.h5", "droid_v2"), ("C:\\data\\x.hdf5", "x"), ("../../etc/passwd", "passwd"),
     ("\x00\x1b.h5", "upload"), ("notes.txt", "notes.txt")],
)  # fmt: skip
def test_upload_names(filename: str, name: str) -> None:
    assert _stem(filename) == name
