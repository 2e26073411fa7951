"""write_dataset: what producers hold goes in, a file that passes validation comes out."""

from __future__ import annotations

import io
import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tessera_gpu.errors import InvalidRequest
from tessera_gpu.io import files, writer
from tessera_gpu.io.dataset import load_dataset
from tessera_gpu.io.writer import encode_gif, encode_thumbnail, write_dataset

N = 6


def ids(n: int = N) -> list[str]:
    return [f"ep_{i:05d}" for i in range(n)]


def unit_embeddings(n: int = N, dim: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, dim))
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def frames(count: int, size: int = 32) -> list[np.ndarray]:
    """Uniform grey frames whose shade is 4 * their index, so decoded frames name their source."""
    return [np.full((size, size, 3), 4 * i, dtype=np.uint8) for i in range(count)]


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_the_spec_example_arrays_round_trip(tmp_path: Path) -> None:
    """The spec's np.random.choice string arrays (<U5) make h5py raise; the writer takes them."""
    rng = np.random.default_rng(0)
    task = rng.choice(["pick", "place", "stack"], size=N)
    path = write_dataset(
        tmp_path / "spec.h5",
        embeddings=unit_embeddings().astype(np.float32),
        episode_ids=ids(),
        metadata={
            "success": rng.choice([True, False], size=N, p=[0.7, 0.3]),
            "episode_length": rng.integers(50, 200, size=N),
            "task": task,
        },
    )
    ds = load_dataset(path)
    assert ds.n_episodes == N
    assert ds.fields["task"].kind == "category"
    assert [ds.fields["task"].value_at(i) for i in range(N)] == task.tolist()
    assert ds.fields["success"].kind == "bool"
    assert ds.fields["episode_length"].kind == "int"


def test_strings_from_lists_numpy_pandas_and_bytes_round_trip(tmp_path: Path) -> None:
    labels = ["pick", "place", "stäck", "pick", "拾う", "place"]
    frame = pd.DataFrame({"str": labels, "cat": pd.Categorical(labels)})
    path = write_dataset(
        tmp_path / "s.h5",
        episode_ids=pd.Series([s.encode() for s in ids()]),
        metadata={
            "from_list": labels,
            "from_unicode": np.array(labels),
            "from_bytes": np.array([s.encode() for s in labels], dtype=object),
            "from_series": frame["str"],
            "from_categorical": frame["cat"],
        },
    )
    with h5py.File(path) as f:
        assert f["episode_ids"].asstr()[()].tolist() == ids()
        for name, dset in f["metadata"].items():
            assert h5py.check_string_dtype(dset.dtype).encoding == "utf-8", name
            assert dset.asstr()[()].tolist() == labels, name
    ds = load_dataset(path)
    assert ds.mode == "metadata-only"
    assert {f.kind for f in ds.fields.values()} == {"category"}


def test_numbers_and_bools_keep_their_kind(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "ok": [True, False] * 3,
            "steps": np.arange(N, dtype=np.int16),
            "reward": np.linspace(0, 1, N),
            "score": np.linspace(0, 1, N, dtype=np.float32),
        }
    )
    path = write_dataset(
        tmp_path / "n.h5",
        embeddings=unit_embeddings().tolist(),
        episode_ids=ids(),
        metadata={**{name: frame[name] for name in frame}, "pose": np.zeros((N, 3))},
    )
    with h5py.File(path) as f:
        assert f["embeddings"].dtype == np.float32
        meta = f["metadata"]
        assert meta["ok"].dtype == np.bool_
        assert meta["steps"].dtype == np.int64
        assert meta["reward"].dtype == np.float64
        assert meta["score"].dtype == np.float32
        np.testing.assert_allclose(f["embeddings"][()], unit_embeddings(), rtol=1e-6)
    kinds = {name: field.kind for name, field in load_dataset(path).fields.items()}
    assert kinds == {
        "ok": "bool",
        "steps": "int",
        "reward": "float",
        "score": "float",
        "pose": "array",
    }


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00")),
        min_size=1,
        max_size=5,
    )
)
def test_any_text_round_trips(tmp_path_factory: pytest.TempPathFactory, texts: list[str]) -> None:
    path = tmp_path_factory.mktemp("text") / "t.h5"
    write_dataset(path, episode_ids=ids(len(texts)), metadata={"note": texts})
    with h5py.File(path) as f:
        assert f["metadata/note"].asstr()[()].tolist() == texts


def test_images_become_128px_jpeg_thumbnails(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    already = encode_thumbnail(Image.new("RGB", (60, 40), "red"))
    entries = [
        Image.new("RGB", (300, 200), "blue"),
        Image.new("RGBA", (64, 64)),
        rng.integers(0, 256, (40, 50, 3), dtype=np.uint8),
        rng.integers(0, 256, (90, 70), dtype=np.uint8),
        already,
        None,
    ]
    ds = load_dataset(write_dataset(tmp_path / "t.h5", episode_ids=ids(), thumbnails=entries))
    for i in range(4):
        data = ds.thumbnail(i)
        assert isinstance(data, bytes)
        assert data[:3] == b"\xff\xd8\xff"
        assert decode(data).format == "JPEG"
        assert decode(data).size == (128, 128)
    assert ds.thumbnail(4) == already  # encoded bytes are stored as-is
    assert ds.thumbnail(5) is None  # an empty entry means "no preview"


def test_frame_lists_become_animated_gifs(tmp_path: Path) -> None:
    clips = [frames(40), frames(10), np.stack(frames(12)), None, frames(3)]
    stored = write_dataset(tmp_path / "g.h5", episode_ids=ids(5), gifs=clips)
    ds = load_dataset(stored)
    counts = []
    for i in (0, 1, 2):
        gif = decode(ds.gif(i))
        assert gif.format == "GIF"
        assert gif.size == (128, 128)
        assert gif.info["loop"] == 0
        assert 110 <= gif.info["duration"] <= 130
        counts.append(gif.n_frames)
    assert counts == [16, 10, 12]
    assert ds.gif(3) is None
    assert decode(ds.gif(4)).n_frames == 3  # too short to sample 8: every frame is kept


def test_gif_frames_are_sampled_evenly_from_first_to_last() -> None:
    gif = decode(encode_gif(frames(61), size=(16, 16), max_frames=8))
    shades = []
    for k in range(gif.n_frames):
        gif.seek(k)
        shades.append(int(np.asarray(gif.convert("L"))[8, 8]))
    expected = 4 * np.linspace(0, 60, 8, dtype=int)
    assert shades == expected.tolist()


def test_encoded_previews_of_any_allowed_type_are_kept() -> None:
    png, webp = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    Image.new("RGB", (8, 8)).save(webp, format="WEBP")
    for data in (png.getvalue(), webp.getvalue(), encode_gif(frames(9))):
        assert writer._preview_bytes(np.frombuffer(data, np.uint8), encode_thumbnail) == data


def test_a_successful_write_leaves_only_the_target(tmp_path: Path) -> None:
    target = tmp_path / "out.h5"
    target.write_bytes(b"an older file")
    assert write_dataset(target, episode_ids=ids()) == target
    assert files_in(tmp_path) == ["out.h5"]
    assert load_dataset(target).n_episodes == N


@pytest.mark.parametrize("error", [RuntimeError("boom"), OSError(28, "No space left on device")])
def test_a_failed_write_leaves_no_temp_file_and_keeps_the_old_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    target = write_dataset(tmp_path / "out.h5", episode_ids=ids(3))

    def fail(path: Path, *flags: int) -> None:
        assert path.name.startswith(".out.h5.")
        assert path.name.endswith(".tmp")
        assert path.exists()
        raise error

    monkeypatch.setattr(files, "_fsync_path", fail)
    expected = InvalidRequest if isinstance(error, OSError) else RuntimeError
    with pytest.raises(expected):
        write_dataset(target, episode_ids=ids(), embeddings=unit_embeddings())
    assert files_in(tmp_path) == ["out.h5"]
    assert load_dataset(target).n_episodes == 3


def test_invalid_input_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest):
        write_dataset(tmp_path / "x.h5", episode_ids=ids(), metadata={"task": ["pick"]})
    assert files_in(tmp_path) == []


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="does not exist"):
        write_dataset(tmp_path / "nope" / "x.h5", episode_ids=ids())
    with pytest.raises(InvalidRequest, match="is a directory"):
        write_dataset(tmp_path, episode_ids=ids())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"embeddings": unit_embeddings(n=4)},
            "episode_ids length doesn't match: 6 ids for 4 embeddings",
        ),
        (
            {"metadata": {"task": ["pick"] * 5}},
            "metadata/task length doesn't match: 5 values for 6 episodes",
        ),
        (
            {"metadata": {"task": "pick"}},
            "metadata/task needs one value per episode, got a single str",
        ),
        ({"thumbnails": [None] * 7}, "thumbnails length doesn't match: 7 for 6 episodes"),
        ({"gifs": [None] * 2}, "gifs length doesn't match: 2 for 6 episodes"),
    ],
)
def test_wrong_lengths_are_rejected(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        write_dataset(tmp_path / "x.h5", episode_ids=ids(), **kwargs)
    assert message in info.value.message
    assert info.value.status == 400


def with_bad(values: np.ndarray, row: int, value: float) -> np.ndarray:
    out = values.copy()
    out[row, 1] = value
    return out


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"embeddings": with_bad(unit_embeddings(), 2, np.nan)},
            "Embeddings contain NaN or Inf values in 1 rows (first: row 2)",
        ),
        ({"embeddings": with_bad(unit_embeddings(), 4, np.inf)}, "(first: row 4)"),
        ({"embeddings": with_bad(unit_embeddings(), 0, 1e300)}, "NaN or Inf"),  # float32 overflow
        ({"embeddings": np.zeros(N)}, "embeddings must be 2D array (N, D), got shape (6,)"),
        ({"embeddings": np.zeros((N, 2049))}, "embedding dimension must be 1 to 2048"),
        ({"embeddings": np.full((N, 2), "a")}, "embeddings must be real numbers"),
        ({"metadata": {"when": pd.date_range("2024", periods=N)}}, "unsupported type"),
        ({"metadata": {"z": np.ones(N, dtype=complex)}}, "unsupported type"),
        (
            {"metadata": {"task": ["pick", None, "place", "pick", "pick", "pick"]}},
            "metadata/task mixes types or holds missing values (NoneType, str)",
        ),
        (
            {"metadata": {"task": pd.Series(["a", np.nan, "b", "a", "b", "a"])}},
            "holds missing values (float, str)",
        ),
        ({"metadata": {"a/b": [1] * N}}, "metadata field names must be non-empty strings"),
        ({"metadata": {"note": ["a\x00b"] * N}}, "metadata/note[0] contains a NUL character"),
        ({"metadata": {"note": [b"\xff"] * N}}, "metadata/note[0] is not valid UTF-8 text"),
        ({"thumbnails": [b"not an image"] * N}, "thumbnails[0] is not a JPEG, PNG, GIF or WebP"),
        ({"thumbnails": [np.zeros((8, 8, 3))] * N}, "got float64 (8, 8, 3); convert with"),
        ({"thumbnails": [np.zeros((8, 8, 2), np.uint8)] * N}, "uint8 HxW, HxWx3 or HxWx4"),
        ({"gifs": [[]] * N}, "a GIF needs at least one frame"),
    ],
)
def test_bad_values_are_rejected(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        write_dataset(tmp_path / "x.h5", episode_ids=ids(), **kwargs)
    assert message in info.value.message
    assert files_in(tmp_path) == []


@pytest.mark.parametrize(
    ("episode_ids", "message"),
    [
        ([], "episode_ids is empty"),
        (["a", "b", "a", "a"], "episode_ids must be unique: 'a' appears 3 times"),
        (["a", "", "c"], "episode_ids must be non-empty: row 1 is empty"),
        ([1, 2, 3], "episode_ids must be strings or UTF-8 bytes"),
        (np.array([["a", "b"]]), "episode_ids must be strings or UTF-8 bytes"),
        ("abc", "episode_ids needs one value per episode, got a single str"),
        (
            ["ep_b", "ep_a\nep_b"],
            "episode_ids must be printable text: row 1 ('ep_a\\nep_b') holds U+000A",
        ),
        (["\u202eevil"], "episode_ids must be printable text: row 0 ('\\u202eevil') holds U+202E"),
    ],
)
def test_bad_episode_ids_are_rejected(tmp_path: Path, episode_ids: object, message: str) -> None:
    with pytest.raises(InvalidRequest, match="^" + re.escape(message)):
        write_dataset(tmp_path / "x.h5", episode_ids=episode_ids)


def test_encode_gif_checks_its_options() -> None:
    with pytest.raises(InvalidRequest, match="fps must be > 0"):
        encode_gif(frames(2), fps=0)
