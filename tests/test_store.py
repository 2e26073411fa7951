"""The data directory (registry, samples, atomic writes) and streamed uploads."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import anyio
import pytest
from tessera_app.catalog import _stem
from tessera_app.store import DatasetEntry, Store, write_atomic
from tessera_app.uploads import receive_upload

from tessera_gpu.errors import InvalidRequest, NotFound, PayloadTooLarge

BOUNDARY = "b0undary42"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "data")


def entry(dataset_id: str, **kw: object) -> DatasetEntry:
    base: dict[str, object] = {
        "id": dataset_id, "name": dataset_id, "source": "upload", "path": f"/x/{dataset_id}.h5",
        "file_hash": dataset_id * 4, "size": 10, "mtime_ns": 1, "added_at": "2025-01-01T00:00:00",
    }  # fmt: skip
    return DatasetEntry(**{**base, **kw})  # type: ignore[arg-type]


# ---- atomic writes and the registry -----------------------------------------------------------


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


def test_registry_survives_a_new_store(store: Store) -> None:
    store.put_entry(entry("aaaa"))
    store.put_entry(entry("bbbb", source="path", projection={"seed": 3}))
    store.remove_entry("aaaa")
    again = Store(store.root)
    assert again.entries() == [entry("bbbb", source="path", projection={"seed": 3})]
    doc = json.loads((store.root / "registry.json").read_text())
    assert doc["version"] == 1 and [d["id"] for d in doc["datasets"]] == ["bbbb"]


def test_sweep_removes_only_stale_temp_files(store: Store) -> None:
    (store.samples_dir / "d1").mkdir()
    stale = [
        store.root / ".registry.json.1234.tmp",
        store.uploads_dir / ".upload-abc.tmp",
        store.samples_dir / "d1" / ".s1.json.99.tmp",
    ]
    kept = [store.uploads_dir / "abc.h5", store.samples_dir / "d1" / "s1.json"]
    for p in stale + kept:
        p.write_bytes(b"x")
    assert sorted(store.sweep()) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)


# ---- samples ----------------------------------------------------------------------------------


def test_samples_round_trip_oldest_first(store: Store) -> None:
    late = {"sample_id": "s2", "created_at": "2025-01-02T00:00:00", "episode_ids": ["b"]}
    early = {"sample_id": "s1", "created_at": "2025-01-01T00:00:00", "episode_ids": ["a"]}
    store.save_sample("d1", "s2", late)
    store.save_sample("d1", "s1", early)
    assert store.samples("d1") == [early, late]
    assert store.sample("d1", "s2") == late
    assert store.samples("other") == []
    store.remove_samples("d1")
    assert store.samples("d1") == []


@pytest.mark.parametrize("sample_id", ["../../registry", "nope", "a/b", ".s1", ""])
def test_sample_ids_never_leave_the_folder(store: Store, sample_id: str) -> None:
    store.save_sample("d1", "s1", {"sample_id": "s1"})
    with pytest.raises(NotFound):
        store.sample("d1", sample_id)


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


def receive(store: Store, chunks: Iterable[bytes] | Chunks, limit: int = 10_000):  # type: ignore[no-untyped-def]
    source = chunks if isinstance(chunks, Chunks) else _iterate(list(chunks))
    return anyio.run(lambda: receive_upload(source, BOUNDARY, store, limit=limit))


async def _iterate(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for p in pieces:
        yield p


@pytest.mark.parametrize("chunk_size", [1, 7, 4096])
def test_upload_streams_to_a_temp_file(store: Store, chunk_size: int) -> None:
    payload = bytes(range(256)) * 20
    upload = receive(store, Chunks(multipart(payload), chunk_size))
    assert upload.path.parent == store.uploads_dir and upload.path.name.startswith(".upload-")
    assert upload.path.read_bytes() == payload
    assert (upload.sha256, upload.size, upload.filename) == (
        hashlib.sha256(payload).hexdigest(),
        len(payload),
        "d.h5",
    )
    upload.discard()
    assert list(store.uploads_dir.iterdir()) == []


def test_the_limit_applies_while_streaming(store: Store) -> None:
    chunks = Chunks(multipart(b"x" * 50_000), 1000)
    with pytest.raises(PayloadTooLarge) as info:
        receive(store, chunks, limit=10_000)
    assert info.value.status == 413 and info.value.code == "file_too_large"
    assert chunks.pulled < 15  # stopped reading soon after the limit, not at the end
    assert list(store.uploads_dir.iterdir()) == []


def test_bad_multipart_leaves_nothing(store: Store) -> None:
    with pytest.raises(InvalidRequest) as info:
        receive(store, [multipart(b"abc")[:-30], b""])
    assert info.value.code == "bad_multipart"
    with pytest.raises(InvalidRequest) as info:
        receive(store, [multipart(b"abc", field="upload"), b""])
    assert info.value.code == "missing_file"
    assert list(store.uploads_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("filename", "name"),
    [("droid_v2.h5", "droid_v2"), ("C:\\data\\x.hdf5", "x"), ("../../etc/passwd", "passwd"),
     ("\x00\x1b.h5", "upload"), ("notes.txt", "notes.txt")],
)  # fmt: skip
def test_upload_names(filename: str, name: str) -> None:
    assert _stem(filename) == name
