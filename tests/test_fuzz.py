"""Arbitrary small files either load or raise Tessera's own error type, never anything else."""

from __future__ import annotations

import tempfile
from pathlib import Path

import h5py
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera_gpu import TesseraError, load_dataset

from .conftest import write_episode_file

DTYPES = [np.float32, np.float64, np.int8, np.int64, np.uint16, np.bool_, "S4", "str", "vlen-u8"]


def make_array(draw, shape: tuple[int, ...]) -> tuple[np.ndarray, object]:
    kind = draw(st.sampled_from(DTYPES))
    n = int(np.prod(shape))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if kind == "str":
        data = np.array(
            [
                draw(
                    st.text(
                        st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
                        max_size=4,
                    )
                )
                for _ in range(n)
            ],
            dtype=object,
        )
        return data.reshape(shape), h5py.string_dtype()
    if kind == "vlen-u8":
        data = np.empty(n, dtype=object)
        data[:] = [rng.integers(0, 255, rng.integers(0, 6), dtype=np.uint8) for _ in range(n)]
        return data.reshape(shape), h5py.vlen_dtype(np.uint8)
    if kind == "S4":
        return rng.integers(0, 255, (*shape, 4), dtype=np.uint8).view("S4").reshape(shape), None
    values = rng.normal(size=shape) * draw(st.sampled_from([1, 1e3, np.inf]))
    if np.dtype(kind).kind in "iub":
        return (np.nan_to_num(values, posinf=7, neginf=-7) > 0).astype(kind), None
    return values.astype(kind), None


@st.composite
def random_files(draw) -> dict[str, tuple[np.ndarray, object]]:
    n = draw(st.integers(0, 6))
    parts: dict[str, tuple[np.ndarray, object]] = {}
    for name in ("embeddings", "episode_ids", "thumbnails", "gifs", "metadata/a", "metadata/b"):
        if draw(st.booleans()):
            ndim = draw(st.integers(0, 3))
            shape = tuple(
                [
                    n + draw(st.integers(-1, 1)) if i == 0 else draw(st.integers(0, 3))
                    for i in range(ndim)
                ]
            )
            shape = tuple(max(0, s) for s in shape)
            parts[name] = make_array(draw, shape)
    return parts


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_files())
def test_random_files_load_or_raise_tessera_error(parts) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.h5"
        with h5py.File(path, "w") as f:
            for name, (data, dtype) in parts.items():
                f.create_dataset(name, data=data, dtype=dtype)
        try:
            ds = load_dataset(path)
        except TesseraError:
            return
        assert ds.n_episodes == len(ds.episode_ids) > 0
        ds.summary()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 255)), min_size=1, max_size=8))
def test_bit_flipped_files_load_or_raise_tessera_error(flips) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_episode_file(Path(tmp) / "f.h5", n=20, dim=4, previews=True)
        data = bytearray(path.read_bytes())
        for pos, value in flips:
            data[pos % len(data)] = value
        path.write_bytes(bytes(data))
        try:  # a flipped preview byte may only show when the preview is read: also ours
            ds = load_dataset(path)
            ds.summary()
            ds.thumbnail(0)
        except TesseraError:
            return
