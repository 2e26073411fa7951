"""The format contract: every validation rule and safety rejection, with its message and code."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import msgspec
import numpy as np
import pytest

from tessera_gpu import InvalidDataset, Limits, TesseraError, load_dataset
from tessera_gpu.errors import NotFound, PayloadTooLarge, UnsupportedMediaType

from .conftest import write_episode_file


def bad(tmp_path: Path, edit, **kwargs) -> Path:
    return write_episode_file(tmp_path / "bad.h5", n=40, previews=False, edit=edit, **kwargs)


def replace(name: str, **create):
    def edit(f: h5py.File) -> None:
        del f[name]
        f.create_dataset(name, **create)

    return edit


# --- files that must load -------------------------------------------------------------------


def test_full_file_loads_with_every_part(episode_file: Path) -> None:
    ds = load_dataset(episode_file)
    assert (ds.n_episodes, ds.dim, ds.mode) == (300, 16, "full")
    assert ds.embeddings is not None
    assert ds.embeddings.dtype == np.float32
    assert ds.embeddings.flags.c_contiguous
    assert ds.episode_ids[0] == "ep_00000"
    assert ds.index_of("ep_00299") == 299
    kinds = {name: f.kind for name, f in ds.fields.items()}
    assert kinds == {
        "success": "bool",
        "episode_length": "int",
        "task": "category",
        "dataset": "category",
        "gripper_force": "float",
    }
    assert ds.thumbnail(3)[:3] == b"\xff\xd8\xff"
    assert ds.gif(3)[:6] == b"GIF89a"
    assert len(ds.embeddings_hash) == 32


def test_metadata_only_file_loads(metadata_only_file: Path) -> None:
    ds = load_dataset(metadata_only_file)
    assert ds.mode == "metadata-only"
    assert ds.dim is None
    assert ds.embeddings is None
    assert ds.embeddings_hash is None
    assert msgspec.to_builtins(ds.summary())["dim"] is None


def test_summary_counts_and_ranges(episode_file: Path) -> None:
    ds = load_dataset(episode_file)
    fields = {f["name"]: f for f in msgspec.to_builtins(ds.summary())["fields"]}
    assert sum(fields["task"]["values"].values()) == 300
    assert set(fields["success"]["values"]) == {"true", "false"}
    assert 50 <= fields["episode_length"]["min"] <= fields["episode_length"]["max"] < 200
    assert ds.metadata_at(0).keys() == fields.keys()


def test_float64_embeddings_become_float32_with_same_values(tmp_path: Path) -> None:
    emb = np.random.default_rng(1).normal(size=(40, 8))
    path = bad(tmp_path, replace("embeddings", data=emb))
    ds = load_dataset(path)
    assert ds.embeddings.dtype == np.float32
    np.testing.assert_allclose(ds.embeddings, emb.astype(np.float32))


@pytest.mark.parametrize(
    "ids",
    [
        pytest.param(
            {"data": [f"e{i}" for i in range(40)], "dtype": h5py.string_dtype()}, id="vlen-str"
        ),
        pytest.param(
            {
                "data": np.array([f"e{i}" for i in range(40)], dtype=object),
                "dtype": h5py.string_dtype(),
            },
            id="object",
        ),
        pytest.param({"data": np.array([f"e{i}".encode() for i in range(40)])}, id="fixed-bytes"),
        pytest.param(
            {"data": [f"e{i}".encode() for i in range(40)], "dtype": h5py.string_dtype("ascii")},
            id="vlen-bytes",
        ),
    ],
)
def test_episode_id_encodings(tmp_path: Path, ids: dict) -> None:
    ds = load_dataset(bad(tmp_path, replace("episode_ids", **ids)))
    assert ds.episode_ids.tolist() == [f"e{i}" for i in range(40)]


def test_multidimensional_metadata_is_kept_but_not_filterable(tmp_path: Path) -> None:
    path = bad(tmp_path, lambda f: f["metadata"].create_dataset("pose", data=np.zeros((40, 7))))
    pose = load_dataset(path).fields["pose"]
    assert pose.kind == "array"
    assert not pose.filterable
    assert pose.value_at(0) == [0.0] * 7


def test_identical_embeddings_hash_identically(tmp_path: Path, episode_file: Path) -> None:
    copy = write_episode_file(tmp_path / "copy.h5")
    assert load_dataset(copy).embeddings_hash == load_dataset(episode_file).embeddings_hash


# --- the spec's nine rules --------------------------------------------------------------------


def expect(path: Path, code: str, message: str, *, limits: Limits | None = None) -> None:
    with pytest.raises(TesseraError) as info:
        load_dataset(path, limits=limits)
    assert (info.value.code, info.value.message) == (code, message)


def test_rule1_not_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "notes.h5"
    path.write_text("just some text, not HDF5\n" * 100)
    with pytest.raises(UnsupportedMediaType) as info:
        load_dataset(path)
    assert info.value.code == "not_hdf5"
    assert info.value.message == "Not an HDF5 file: notes.h5 has no HDF5 signature"


def test_rule2_embeddings_must_be_2d(tmp_path: Path) -> None:
    path = bad(tmp_path, replace("embeddings", data=np.zeros(40, np.float32)))
    expect(path, "embeddings_not_2d", "embeddings must be 2D array: got shape (40,)")


def test_rule2_embeddings_must_be_float(tmp_path: Path) -> None:
    path = bad(tmp_path, replace("embeddings", data=np.zeros((40, 4), np.int64)))
    expect(path, "bad_dtype", "embeddings must be float32 or float64: got int64")


def test_rule3_episode_ids_required(tmp_path: Path) -> None:
    path = bad(tmp_path, lambda f: f.__delitem__("episode_ids"))
    expect(path, "missing_episode_ids", "episode_ids dataset is missing")


def test_rule4_ids_match_embeddings(tmp_path: Path) -> None:
    path = bad(tmp_path, replace("episode_ids", data=[f"e{i}" for i in range(39)]))
    expect(path, "length_mismatch", "episode_ids length doesn't match: 39 ids for 40 embeddings")


def test_rule5_metadata_lengths_match(tmp_path: Path) -> None:
    path = bad(tmp_path, lambda f: f["metadata"].create_dataset("robot_id", data=np.arange(41)))
    expect(
        path,
        "metadata_length_mismatch",
        "metadata/robot_id length doesn't match: 41 values for 40 episodes",
    )


@pytest.mark.parametrize(("value", "kind"), [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "Inf")])
def test_rule6_non_finite_names_first_row(tmp_path: Path, value: float, kind: str) -> None:
    emb = np.ones((40, 4), np.float32)
    emb[17, 2] = value
    emb[30, 0] = value
    path = bad(tmp_path, replace("embeddings", data=emb))
    expect(path, "non_finite", f"Embeddings contain {kind} values (first at row 17)")


def test_rule6_checks_every_row_across_blocks(tmp_path: Path) -> None:
    emb = np.ones((20_000, 2), np.float64)
    emb[19_999, 1] = np.nan
    ids = [f"e{i}" for i in range(20_000)]

    def edit(f: h5py.File) -> None:
        for name in ("embeddings", "episode_ids", "metadata"):
            del f[name]
        f.create_dataset("embeddings", data=emb)
        f.create_dataset("episode_ids", data=ids)

    expect(bad(tmp_path, edit), "non_finite", "Embeddings contain NaN values (first at row 19999)")


def test_rule7_file_size_limit(episode_file: Path) -> None:
    size = episode_file.stat().st_size
    with pytest.raises(PayloadTooLarge) as info:
        load_dataset(episode_file, limits=Limits(max_file_bytes=1_000_000))
    assert info.value.code == "file_too_large"
    assert info.value.status == 413
    assert info.value.message == f"File too large: {size / 1e6:.1f} MB > 1.0 MB"


def test_rule8_episode_count_limit_from_declared_shape(tmp_path: Path) -> None:
    def edit(f: h5py.File) -> None:
        for name in ("embeddings", "episode_ids", "metadata"):
            del f[name]
        f.create_dataset("embeddings", shape=(200_001, 4), dtype=np.float32)
        f.create_dataset("episode_ids", shape=(200_001,), dtype=h5py.string_dtype())

    expect(bad(tmp_path, edit), "too_many_episodes", "Too many episodes: 200,001 > 200,000")


def test_rule9_dimension_limit(tmp_path: Path) -> None:
    path = bad(tmp_path, replace("embeddings", shape=(40, 2049), dtype=np.float32))
    expect(path, "dim_too_large", "Embedding dimension too large: 2,049 > 2,048")


# --- episode ids ------------------------------------------------------------------------------


def test_duplicate_ids_are_named(tmp_path: Path) -> None:
    ids = [f"e{i}" for i in range(40)]
    ids[9] = "e3"
    expect(
        bad(tmp_path, replace("episode_ids", data=ids)),
        "duplicate_episode_ids",
        "episode_ids must be unique: 'e3' appears 2 times (rows 3 and 9)",
    )


def test_empty_id_is_named(tmp_path: Path) -> None:
    ids = [f"e{i}" for i in range(40)]
    ids[5] = ""
    expect(
        bad(tmp_path, replace("episode_ids", data=ids)),
        "empty_episode_id",
        "episode_ids must be non-empty: row 5 is empty",
    )


@pytest.mark.parametrize(
    ("bad_id", "holds"),
    [
        ("ep_a\nep_b", "U+000A"),  # would split a line-based export, or a newline-joined list
        ("ep\rx", "U+000D"),
        ("ep\tx", "U+0009"),
        ("\u202eevil", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),  # reverses what a reader sees
        ("ep\u200bx", "U+200B (ZERO WIDTH SPACE)"),  # looks the same as "epx"
        ("ep\u2028x", "U+2028 (LINE SEPARATOR)"),
        ("ep\x85x", "U+0085"),
    ],
)
def test_ids_with_control_or_format_characters_are_refused(
    tmp_path: Path, bad_id: str, holds: str
) -> None:
    ids = [f"e{i}" for i in range(40)]
    ids[6] = bad_id
    expect(
        bad(tmp_path, replace("episode_ids", data=ids, dtype=h5py.string_dtype())),
        "unprintable_episode_id",
        f"episode_ids must be printable text: row 6 ({bad_id!r}) holds {holds}, a control, "
        "format or line-break character",
    )


def test_ids_in_any_script_with_spaces_and_accents_load(tmp_path: Path) -> None:
    ids = [f"épisode {i} · 試行 ✓" for i in range(40)]
    path = bad(tmp_path, replace("episode_ids", data=ids, dtype=h5py.string_dtype()))
    assert load_dataset(path).episode_ids.tolist() == ids


def test_non_utf8_id_is_named(tmp_path: Path) -> None:
    ids = np.array([f"e{i}".encode() for i in range(40)])
    ids[7] = b"\xff\xfe"
    expect(
        bad(tmp_path, replace("episode_ids", data=ids)),
        "bad_encoding",
        "episode_ids must be UTF-8 text: row 7 is not",
    )


# --- untrusted-file safety --------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as info:
        load_dataset(tmp_path / "nope.h5")
    assert info.value.code == "file_not_found"


def test_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)
    expect(
        fifo,
        "not_regular_file",
        f"Not a regular file: {fifo} (directories, FIFOs and devices are refused)",
    )


def test_directory_is_refused(tmp_path: Path) -> None:
    expect(
        tmp_path,
        "not_regular_file",
        f"Not a regular file: {tmp_path} (directories, FIFOs and devices are refused)",
    )


def test_truncated_file(tmp_path: Path, episode_file: Path) -> None:
    data = episode_file.read_bytes()
    path = tmp_path / "half.h5"
    path.write_bytes(data[: len(data) // 2])
    expect(path, "truncated", "File is truncated: half.h5 is shorter than its HDF5 header says")


def test_external_link(tmp_path: Path) -> None:
    path = bad(tmp_path, lambda f: f.__setitem__("extra", h5py.ExternalLink("/etc/other.h5", "/x")))
    expect(path, "external_link", "External link not allowed: /extra -> /etc/other.h5:/x")


def test_external_link_in_metadata(tmp_path: Path) -> None:
    path = bad(tmp_path, lambda f: f["metadata"].__setitem__("x", h5py.ExternalLink("o.h5", "/y")))
    expect(path, "external_link", "External link not allowed: /metadata/x -> o.h5:/y")


def test_soft_link_leaving_schema(tmp_path: Path) -> None:
    def edit(f: h5py.File) -> None:
        f.create_group("private").create_dataset("data", data=np.zeros(40))
        f["metadata"]["leak"] = h5py.SoftLink("/private/data")

    expect(
        bad(tmp_path, edit),
        "soft_link",
        "Soft link leaves the expected schema: /metadata/leak -> /private/data",
    )


def test_soft_link_within_schema_is_followed(tmp_path: Path) -> None:
    path = bad(
        tmp_path, lambda f: f["metadata"].__setitem__("ok", h5py.SoftLink("/metadata/success"))
    )
    assert load_dataset(path).fields["ok"].kind == "bool"


def test_virtual_dataset(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    with h5py.File(src, "w") as f:
        f.create_dataset("data", data=np.zeros((40, 16), np.float32))

    def edit(f: h5py.File) -> None:
        del f["embeddings"]
        layout = h5py.VirtualLayout(shape=(40, 16), dtype=np.float32)
        layout[:] = h5py.VirtualSource(str(src), "data", shape=(40, 16))
        f.create_virtual_dataset("embeddings", layout)

    expect(bad(tmp_path, edit), "virtual_dataset", "Virtual dataset not allowed: /embeddings")


def test_external_raw_storage(tmp_path: Path) -> None:
    raw = tmp_path / "raw.bin"
    raw.write_bytes(np.zeros(40 * 16, np.float32).tobytes())
    path = bad(
        tmp_path,
        replace(
            "embeddings",
            shape=(40, 16),
            dtype=np.float32,
            external=[(str(raw), 0, h5py.h5f.UNLIMITED)],
        ),
    )
    expect(
        path,
        "external_storage",
        "External raw storage not allowed: /embeddings stores its data in another file",
    )


def test_filter_outside_allowlist(tmp_path: Path) -> None:
    def edit(f: h5py.File) -> None:
        del f["embeddings"]
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((40, 16))
        dcpl.set_filter(307, h5py.h5z.FLAG_OPTIONAL, ())  # bzip2, as a plugin would register it
        space = h5py.h5s.create_simple((40, 16))
        h5py.h5d.create(f.id, b"embeddings", h5py.h5t.NATIVE_FLOAT, space, dcpl=dcpl)

    expect(
        bad(tmp_path, edit),
        "filter_not_allowed",
        "Compression filter not allowed: /embeddings uses filter 307; allowed: deflate, shuffle, fletcher32, lzf",
    )


@pytest.mark.parametrize("compression", ["gzip", "lzf"])
def test_allowed_filters_load(tmp_path: Path, compression: str) -> None:
    emb = np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32)
    path = bad(tmp_path, replace("embeddings", data=emb, compression=compression, shuffle=True))
    np.testing.assert_array_equal(load_dataset(path).embeddings, emb)


def test_chunk_too_large(tmp_path: Path) -> None:
    path = bad(
        tmp_path, replace("embeddings", shape=(40, 2048), dtype=np.float32, chunks=(40, 2048))
    )
    load_dataset(path)  # 320 KB chunks are fine
    big = bad(
        tmp_path,
        lambda f: f["metadata"].create_dataset(
            "blob", shape=(40, 500_000), dtype=np.float32, chunks=(40, 500_000)
        ),
    )
    expect(
        big,
        "chunk_too_large",
        "Chunk too large: /metadata/blob uses 80.0 MB chunks (limit 67.1 MB)",
    )


def test_compression_bomb(tmp_path: Path) -> None:
    path = bad(
        tmp_path,
        lambda f: f["metadata"].create_dataset(
            "zeros", data=np.zeros((40, 65_536), np.float32), compression="gzip", compression_opts=9
        ),
    )
    with pytest.raises(InvalidDataset) as info:
        load_dataset(path)
    assert info.value.code == "compression_ratio"
    assert info.value.message.startswith("Compression ratio too high: /metadata/zeros expands ")


def test_reference_dtype(tmp_path: Path) -> None:
    def edit(f: h5py.File) -> None:
        refs = f["metadata"].create_dataset("refs", shape=(40,), dtype=h5py.ref_dtype)
        refs[0] = f["episode_ids"].ref

    expect(bad(tmp_path, edit), "reference_dtype", "References are not allowed: /metadata/refs")


def test_compound_dtype(tmp_path: Path) -> None:
    dt = np.dtype([("a", np.int32), ("b", np.float32)])
    path = bad(tmp_path, lambda f: f["metadata"].create_dataset("pair", shape=(40,), dtype=dt))
    expect(path, "unsupported_dtype", "Compound dtype not allowed: /metadata/pair")


def test_opaque_dtype(tmp_path: Path) -> None:
    path = bad(
        tmp_path, lambda f: f["metadata"].create_dataset("blob", shape=(40,), dtype=np.dtype("V8"))
    )
    expect(path, "unsupported_dtype", "Opaque dtype not allowed: /metadata/blob")


def test_too_many_root_objects(tmp_path: Path) -> None:
    def edit(f: h5py.File) -> None:
        for i in range(70):
            f.create_group(f"g{i}")

    expect(bad(tmp_path, edit), "too_many_objects", "Too many objects in /: 73 > 64")


def test_nested_group_in_metadata(tmp_path: Path) -> None:
    path = bad(tmp_path, lambda f: f["metadata"].create_group("deeper").create_group("deeper"))
    expect(path, "nested_group", "metadata/deeper is a group: metadata fields must be arrays")


def test_bad_preview_dtype(tmp_path: Path) -> None:
    path = bad(tmp_path, lambda f: f.create_dataset("thumbnails", data=np.zeros(40, np.int32)))
    expect(
        path,
        "bad_previews",
        "thumbnails must be a 1D array of variable-length bytes (h5py.vlen_dtype(np.uint8))",
    )


def test_declared_but_unwritten_array_is_refused(tmp_path: Path) -> None:
    path = bad(
        tmp_path,
        lambda f: f["metadata"].create_dataset("blob", shape=(40, 10_000), dtype=np.float32),
    )
    expect(path, "no_data", "/metadata/blob declares 1.6 MB but stores no data")
