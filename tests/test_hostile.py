"""A corpus of hostile or broken inputs, files and requests alike.

Each case names the status and code it must get; after each one ``/api/health`` is still 200
(the server neither crashed nor wedged). Files go through the real HTTP paths (upload, or
registration by ``{"path": ...}`` under the allow root), which validate in a child process.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import h5py
import numpy as np
import pytest

from .api_calls import Client, add, upload, wait_for_projection
from .conftest import jpeg_bytes, write_episode_file

pytestmark = pytest.mark.anyio
pytest_plugins = ("tests.api_fixtures",)
N = 40


async def healthy(client: Client) -> None:
    assert (await client.get("/api/health")).status_code == 200


def small(path: Path, edit: Callable[[h5py.File], None] | None = None, **kw: Any) -> Path:
    return write_episode_file(path, n=N, previews=False, edit=edit, **kw)


def _replace(name: str, **create: Any) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        del f[name]
        f.create_dataset(name, **create)

    return edit


# ---- files: built in the allow root, then uploaded or registered by path -----------------------


def external_link(d: Path) -> Path:
    return small(d / "f.h5", lambda f: f.__setitem__("x", h5py.ExternalLink("/etc/o.h5", "/x")))


def virtual(d: Path) -> Path:
    src = d.parent / "src.h5"
    with h5py.File(src, "w") as f:
        f.create_dataset("data", data=np.zeros((N, 16), np.float32))

    def edit(f: h5py.File) -> None:
        del f["embeddings"]
        layout = h5py.VirtualLayout(shape=(N, 16), dtype=np.float32)
        layout[:] = h5py.VirtualSource(str(src), "data", shape=(N, 16))
        f.create_virtual_dataset("embeddings", layout)

    return small(d / "f.h5", edit)


def bad_filter(d: Path) -> Path:
    def edit(f: h5py.File) -> None:
        del f["embeddings"]
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((N, 16))
        dcpl.set_filter(307, h5py.h5z.FLAG_OPTIONAL, ())
        space = h5py.h5s.create_simple((N, 16))
        h5py.h5d.create(f.id, b"embeddings", h5py.h5t.NATIVE_FLOAT, space, dcpl=dcpl)

    return small(d / "f.h5", edit)


def bomb(d: Path) -> Path:
    zeros = np.zeros((N, 65_536), np.float32)
    return small(d / "f.h5", lambda f: f["metadata"].create_dataset(
        "zeros", data=zeros, compression="gzip", compression_opts=9))  # fmt: skip


def truncated(d: Path) -> Path:
    data = small(d / "whole.h5").read_bytes()
    (d / "f.h5").write_bytes(data[: len(data) // 2])
    return d / "f.h5"


def bit_flipped(d: Path) -> Path:
    data = bytearray(small(d / "whole.h5").read_bytes())
    for i in range(8, 48):  # the superblock after the signature: versions, sizes, addresses
        data[i] ^= 0xFF
    (d / "f.h5").write_bytes(bytes(data))
    return d / "f.h5"


def not_hdf5(d: Path) -> Path:
    (d / "f.h5").write_bytes(b"<html><script>alert(1)</script></html>\n" * 50)
    return d / "f.h5"


def empty(d: Path) -> Path:
    (d / "f.h5").write_bytes(b"")
    return d / "f.h5"


def nan(d: Path) -> Path:
    emb = np.ones((N, 4), np.float32)
    emb[7, 1] = np.nan
    return small(d / "f.h5", _replace("embeddings", data=emb))


def mismatched(d: Path) -> Path:
    return small(d / "f.h5", lambda f: f["metadata"].create_dataset("r", data=np.arange(N + 1)))


def ids_mismatched(d: Path) -> Path:
    return small(d / "f.h5", _replace("episode_ids", data=[f"e{i}" for i in range(N - 1)]))


def duplicate_ids(d: Path) -> Path:
    return small(d / "f.h5", _replace("episode_ids", data=["same"] * N))


FILE_CASES = [
    # (builder, status, code)
    (external_link, 422, "external_link"),
    (virtual, 422, "virtual_dataset"),
    (bad_filter, 422, "filter_not_allowed"),
    (bomb, 422, "compression_ratio"),
    (truncated, 422, "truncated"),
    (bit_flipped, 422, "corrupt_file"),
    (not_hdf5, 415, "not_hdf5"),
    (empty, 415, "not_hdf5"),
    (nan, 422, "non_finite"),
    (mismatched, 422, "metadata_length_mismatch"),
    (ids_mismatched, 422, "length_mismatch"),
    (duplicate_ids, 422, "duplicate_episode_ids"),
]


@pytest.mark.parametrize("how", ["upload", "path"])
@pytest.mark.parametrize(
    ("build", "status", "code"), FILE_CASES, ids=[c[0].__name__ for c in FILE_CASES]
)
async def test_broken_files_are_refused(
    client: Client, allowed: Path, build: Callable[[Path], Path], status: int, code: str, how: str
) -> None:  # fmt: skip
    path = build(allowed)
    if how == "upload":
        r = await upload(client, path)
    else:
        r = await client.post("/api/datasets", json={"path": str(path)})
    assert (r.status_code, r.json()["code"], r.json()["status"]) == (status, code, status), r.text
    assert (await client.get("/api/datasets")).json() == []
    await healthy(client)


# ---- paths: traversal, symlinks, special files --------------------------------------------------


def traversal(allowed: Path) -> str:
    small(allowed.parent / "outside.h5")
    return f"{allowed}/../outside.h5"


def symlink_out(allowed: Path) -> str:
    (allowed / "link.h5").symlink_to(small(allowed.parent / "outside.h5"))
    return str(allowed / "link.h5")


def dir_symlink_out(allowed: Path) -> str:
    small(allowed.parent / "outside.h5")
    (allowed / "up").symlink_to(allowed.parent)
    return str(allowed / "up" / "outside.h5")


def fifo(allowed: Path) -> str:
    os.mkfifo(allowed / "pipe.h5")
    return str(allowed / "pipe.h5")


def directory(allowed: Path) -> str:
    return str(allowed)


def etc_passwd(allowed: Path) -> str:
    return "/etc/passwd"


def relative(allowed: Path) -> str:
    return "../../../../etc/passwd"


def missing(allowed: Path) -> str:
    return str(allowed / "nothing.h5")


def nul_byte(allowed: Path) -> str:
    return str(allowed / "a.h5\x00.txt")


def symlink_loops(allowed: Path) -> str:
    """``ln -s . a; ln -s . b``: a glob that follows folder links never returns."""
    loop = allowed / "loop2"
    loop.mkdir()
    (loop / "a").symlink_to(".")
    (loop / "b").symlink_to(".")
    return str(loop / "**" / "*.h5")


def many_files(allowed: Path) -> str:
    for i in range(1_100):
        (allowed / f"s{i:04d}.h5").touch()
    return str(allowed / "*.h5")


PATH_CASES = [
    (traversal, 403, "forbidden"),
    (symlink_out, 403, "forbidden"),
    (dir_symlink_out, 403, "forbidden"),
    (fifo, 422, "not_regular_file"),
    (directory, 422, "not_regular_file"),
    (etc_passwd, 403, "forbidden"),
    (relative, 403, "forbidden"),
    (missing, 404, "file_not_found"),
    (nul_byte, 400, "invalid_request"),
    (symlink_loops, 404, "no_match"),
    (many_files, 400, "too_many_files"),
]


@pytest.mark.parametrize(
    ("where", "status", "code"), PATH_CASES, ids=[c[0].__name__ for c in PATH_CASES]
)
async def test_hostile_paths_are_refused(
    client: Client, allowed: Path, where: Callable[[Path], str], status: int, code: str
) -> None:  # fmt: skip
    with anyio.fail_after(20):  # a FIFO must not block the server
        r = await client.post("/api/datasets", json={"path": where(allowed)})
    assert (r.status_code, r.json()["code"]) == (status, code), r.text
    await healthy(client)


# ---- previews: stored bytes that are not what they claim ----------------------------------------


def png_bomb() -> bytes:
    """A PNG whose header declares 100,000 x 100,000 pixels (the data is never decoded)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def with_thumbnails(path: Path, thumb: bytes) -> Path:
    def edit(f: h5py.File) -> None:
        data = np.empty(N, dtype=object)
        data[:] = [np.frombuffer(thumb, np.uint8)] * N
        f.create_dataset("thumbnails", data=data, dtype=h5py.vlen_dtype(np.uint8))

    return small(path, edit)


HTML = b"<html><body><script>alert(document.cookie)</script></body></html>"
POLYGLOT = bytes(jpeg_bytes(0)) + HTML


@pytest.mark.parametrize(
    ("thumb", "status"),
    [(HTML, 415), (b"GIF89a" + HTML, 415), (png_bomb(), 415), (POLYGLOT, 200)],
    ids=["html", "gif_magic_then_html", "png_bomb", "jpeg_polyglot"],
)
async def test_hostile_thumbnails(
    client: Client, tmp_path: Path, thumb: bytes, status: int
) -> None:
    dataset_id = await add(client, with_thumbnails(tmp_path / "t.h5", thumb))
    r = await client.get(f"/api/datasets/{dataset_id}/episodes/3/thumbnail")
    assert r.status_code == status, r.text
    if status == 200:  # served only as an image the browser will not sniff or run
        assert r.headers["content-type"] == "image/jpeg"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "sandbox" in r.headers["content-security-policy"]
        assert "default-src 'none'" in r.headers["content-security-policy"]
    else:
        assert r.json()["code"] == "unsupported_media_type"
        assert r.headers["content-type"] == "application/json"
    await healthy(client)


# ---- requests: malformed bodies, parameters and ids ----------------------------------------------

NESTED = "[" * 10_000 + "]" * 10_000
MANY = [{"field": "episode_length", "op": "gt", "value": 1}] * 10_000
GT = {"field": "episode_length", "op": "gt"}

REQUEST_CASES: list[tuple[str, str, str, Any, int, str]] = [
    # (name, method, path under the dataset ("" = the dataset), body, status, code)
    ("filter_not_a_list", "POST", "/count", {"filter": "task=pick"}, 400, "invalid_request"),
    (
        "filter_wrong_value_type",
        "POST",
        "/count",
        {"filter": [{**GT, "value": "big"}]},
        400,
        "invalid_request",
    ),
    (
        "filter_unknown_op",
        "POST",
        "/count",
        {"filter": [{**GT, "op": "regex", "value": ".*"}]},
        400,
        "invalid_request",
    ),
    (
        "filter_unknown_field",
        "POST",
        "/count",
        {"filter": [{**GT, "field": "nope", "value": 1}]},
        400,
        "invalid_request",
    ),
    (
        "filter_nan_value",
        "POST",
        "/count",
        '{"filter": [{"field": "episode_length", "op": "gt", "value": NaN}]}',
        400,
        "invalid_request",
    ),
    ("filter_10k_conditions", "POST", "/count", {"filter": MANY}, 400, "invalid_request"),
    (
        "filter_deeply_nested",
        "POST",
        "/count",
        '{"filter": ' + NESTED + "}",
        400,
        "invalid_request",
    ),
    (
        "count_unknown_key",
        "POST",
        "/count",
        {"filter": [], "drop": "table"},
        400,
        "invalid_request",
    ),
    ("count_not_json", "POST", "/count", "{not json", 400, "invalid_request"),
    ("count_array_body", "POST", "/count", [1, 2, 3], 400, "invalid_request"),
    (
        "sample_n_huge",
        "POST",
        "/samples",
        {"method": "random", "n": 10**15},
        400,
        "invalid_request",
    ),
    (
        "sample_n_negative",
        "POST",
        "/samples",
        {"method": "random", "n": -5},
        400,
        "invalid_request",
    ),
    (
        "sample_n_string",
        "POST",
        "/samples",
        {"method": "random", "n": "ten"},
        400,
        "invalid_request",
    ),
    (
        "sample_unknown_method",
        "POST",
        "/samples",
        {"method": "rm -rf", "n": 5},
        400,
        "invalid_request",
    ),
    ("unknown_sample", "GET", "/samples/ffffffffffff", None, 404, "sample_not_found"),
    ("sample_id_traversal", "GET", "/samples/..%2F..%2Fregistry", None, 404, "not_found"),
    ("export_bad_format", "GET", "/samples/x/export?format=exe", None, 400, "invalid_request"),
    ("episode_negative", "GET", "/episodes/-1", None, 400, "invalid_request"),
    ("episode_huge", "GET", "/episodes/99999999999999999999", None, 404, "episode_not_found"),
    ("episode_past_end", "GET", f"/episodes/{N}", None, 404, "episode_not_found"),
    ("thumbnail_negative", "GET", "/episodes/-3/thumbnail", None, 400, "invalid_request"),
    (
        "projection_n_neighbors_huge",
        "POST",
        "/projection",
        {"n_neighbors": 10**9},
        400,
        "invalid_request",
    ),
    ("projection_unknown_key", "POST", "/projection", {"evil": 1}, 400, "invalid_request"),
    ("points_bad_filter_json", "GET", "/points?filter=%5B%7B", None, 400, "invalid_request"),
    ("nearest_nan", "GET", "/points/nearest?x=nan&y=0", None, 400, "invalid_request"),
    ("tile_huge_z", "GET", "/tiles/1000000/0/0.png", None, 400, "tile_out_of_range"),
    ("tile_negative_z", "GET", "/tiles/-1/0/0.png", None, 400, "tile_out_of_range"),
    ("tile_traversal", "GET", "/tiles/0/0/..%2F..%2Fx.png", None, 404, "not_found"),
    ("tile_bad_row", "GET", "/tiles/0/0/abc.png", None, 400, "tile_out_of_range"),
    ("tile_huge_x", "GET", "/tiles/2/99999999999999999999/0.png", None, 400, "tile_out_of_range"),
    ("map_bad_view", "GET", "/map?view=1,2,3", None, 400, "invalid_request"),
]

DATASET_CASES: list[tuple[str, str, str, Any, int, str]] = [
    # (name, method, absolute path, body, status, code)
    ("unknown_dataset", "GET", "/api/datasets/0123456789abcdef", None, 404, "dataset_not_found"),
    ("dataset_id_too_long", "GET", "/api/datasets/" + "a" * 65, None, 400, "invalid_request"),
    (
        "delete_unknown_dataset",
        "DELETE",
        "/api/datasets/0123456789abcdef",
        None,
        404,
        "dataset_not_found",
    ),
    (
        "register_text_plain",
        "POST",
        "/api/datasets",
        b"path=/etc/passwd",
        415,
        "unsupported_media_type",
    ),
    (
        "register_path_not_string",
        "POST",
        "/api/datasets",
        {"path": ["/etc/passwd"]},
        400,
        "invalid_request",
    ),
    (
        "register_body_too_long",
        "POST",
        "/api/datasets",
        {"path": "a" * 270_000},
        400,
        "invalid_request",
    ),
    ("multipart_without_file", "POST", "/api/datasets", "multipart", 400, "missing_file"),
]


@pytest.fixture
async def projected(client: Client, tmp_path: Path) -> str:
    dataset_id = await add(client, write_episode_file(tmp_path / "ok.h5", n=N, previews=False))
    assert (await wait_for_projection(client, dataset_id)).json()["status"] == "done"
    return dataset_id


async def send(client: Client, method: str, url: str, body: Any) -> Any:
    if body is None:
        return await client.request(method, url)
    if body == "multipart":
        return await client.post(url, files={"other": ("x.txt", b"hello", "text/plain")})
    if isinstance(body, bytes):
        return await client.post(url, content=body, headers={"Content-Type": "text/plain"})
    content = body if isinstance(body, str) else json.dumps(body)
    return await client.request(method, url, content=content,
                                headers={"Content-Type": "application/json"})  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [c[1:] for c in REQUEST_CASES],
    ids=[c[0] for c in REQUEST_CASES],
)
async def test_hostile_requests_on_a_dataset(
    client: Client, projected: str, method: str, path: str, body: Any, status: int, code: str
) -> None:
    r = await send(client, method, f"/api/datasets/{projected}{path}", body)
    assert (r.status_code, r.json()["code"], r.json()["status"]) == (status, code, status), r.text
    assert set(r.json()) == {"error", "code", "status"}
    await healthy(client)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [c[1:] for c in DATASET_CASES],
    ids=[c[0] for c in DATASET_CASES],
)
async def test_hostile_requests(
    client: Client, method: str, path: str, body: Any, status: int, code: str
) -> None:
    r = await send(client, method, path, body)
    assert (r.status_code, r.json()["code"], r.json()["status"]) == (status, code, status), r.text
    await healthy(client)


def test_the_corpus_is_large_enough() -> None:
    cases = len(FILE_CASES) + len(PATH_CASES) + 4 + len(REQUEST_CASES) + len(DATASET_CASES)
    assert cases >= 30
