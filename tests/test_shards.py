"""Sharded datasets: several spec files joined into one Dataset, their 422s with exact
messages, missing fields that no filter matches, previews read from the right file, and the
in-process memory limit (507)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from tessera_gpu.errors import InsufficientStorage, InvalidDataset, InvalidRequest, NotFound
from tessera_gpu.filters import filter_rows, parse_filter
from tessera_gpu.io.dataset import load_dataset, read_embedding_rows
from tessera_gpu.io.safety import Limits
from tessera_gpu.io.shards import (
    MISSING_LABEL,
    check_fits_in_memory,
    expand_paths,
    load_shards,
)
from tessera_gpu.io.writer import write_dataset
from tessera_gpu.render.colors import color_by
from tessera_gpu.sampling import strata_of
from tessera_gpu.settings import Settings

from .conftest import gif_bytes, jpeg_bytes


def shard(
    path: Path,
    n: int,
    *,
    prefix: str,
    dim: int | None = 8,
    seed: int = 0,
    metadata: dict[str, Any] | None = None,
    previews: int | None = None,
) -> Path:
    """A shard of ``n`` episodes ``{prefix}{i}``; ``previews`` seeds its own images."""
    rng = np.random.default_rng(seed)
    emb = None if dim is None else rng.normal(size=(n, dim)).astype(np.float32)
    thumbs = gifs = None
    if previews is not None:
        thumbs = [jpeg_bytes(previews + i % 3).tobytes() for i in range(n)]
        gifs = [gif_bytes(previews + i % 3).tobytes() for i in range(n)]
    write_dataset(path, embeddings=emb, episode_ids=[f"{prefix}{i}" for i in range(n)],
                  metadata=metadata, thumbnails=thumbs, gifs=gifs)  # fmt: skip
    return path


@pytest.fixture
def two(tmp_path: Path) -> tuple[Path, Path]:
    """a.h5 (4 rows: length int, score float, ok bool, task category, note text) and b.h5
    (3 rows: task and a float ``speed`` only)."""
    a = shard(tmp_path / "a.h5", 4, prefix="a", seed=1, previews=10, metadata={
        "length": np.array([10, 20, 30, 40]), "score": np.array([0.1, 0.2, 0.3, 0.4]),
        "ok": np.array([True, False, True, False]), "task": ["pick", "place", "pick", "stack"],
        "note": ["w", "x", "y", "z"],
    })  # fmt: skip
    b = shard(tmp_path / "b.h5", 3, prefix="b", seed=2, metadata={
        "task": ["push", "pick", "push"], "speed": np.array([1.5, 2.5, 3.5]),
    })  # fmt: skip
    return a, b


def rows(ds: Any, *conds: dict[str, Any]) -> list[int]:
    return filter_rows(ds, parse_filter(list(conds), ds)).tolist()


# ---- joining ----------------------------------------------------------------------------------


def test_shards_join_in_order_with_a_source_field(two: tuple[Path, Path]) -> None:
    a, b = two
    ds = load_shards([a, b], name="both")
    one_a, one_b = load_dataset(a), load_dataset(b)
    assert (ds.name, ds.n_episodes, ds.dim, ds.mode) == ("both", 7, 8, "full")
    assert ds.episode_ids.tolist() == ["a0", "a1", "a2", "a3", "b0", "b1", "b2"]
    assert ds.embeddings is not None
    assert ds.embeddings.flags.c_contiguous
    assert ds.embeddings.dtype == np.float32
    assert np.array_equal(ds.embeddings, np.vstack([one_a.embeddings, one_b.embeddings]))
    assert ds.fields["source"].json_values(np.arange(7)) == ["a.h5"] * 4 + ["b.h5"] * 3
    assert [(p.path, p.start, p.stop, p.dim) for p in ds.parts] == [(a, 0, 4, 8), (b, 4, 7, 8)]
    assert ds.file_size == a.stat().st_size + b.stat().st_size
    assert ds.path == a
    assert list(ds.fields) == ["source", "length", "note", "ok", "score", "task", "speed"]


def test_the_hash_is_that_of_one_file_holding_the_same_embeddings(
    two: tuple[Path, Path], tmp_path: Path
) -> None:
    a, b = two
    joined = load_shards([a, b])
    assert joined.embeddings is not None
    whole = tmp_path / "whole.h5"
    write_dataset(whole, embeddings=joined.embeddings, episode_ids=joined.episode_ids.tolist())
    assert joined.embeddings_hash == load_dataset(whole).embeddings_hash
    assert load_shards([a]).embeddings_hash == load_dataset(a).embeddings_hash


def test_one_path_is_one_shard(two: tuple[Path, Path]) -> None:
    ds = load_shards([two[0]])
    assert (ds.name, ds.n_episodes, len(ds.parts)) == ("a", 4, 1)
    assert ds.fields["source"].categories == ("a.h5",)


def test_globs_expand_sorted_and_each_file_once(tmp_path: Path) -> None:
    for name in ("s2.h5", "s10.h5", "s1.h5"):
        shard(tmp_path / name, 2, prefix=name)
    found = expand_paths([str(tmp_path / "s*.h5"), tmp_path / "s1.h5"])
    assert [p.name for p in found] == ["s1.h5", "s10.h5", "s2.h5"]
    ds = load_shards([str(tmp_path / "*.h5")])
    assert ds.fields["source"].categories == ("s1.h5", "s10.h5", "s2.h5")


def test_a_glob_matching_nothing_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as info:
        expand_paths([str(tmp_path / "none" / "*.h5")])
    assert info.value.message == f"No file matches {tmp_path}/none/*.h5"
    assert info.value.code == "no_match"


def test_a_file_whose_name_looks_like_a_glob_is_itself(tmp_path: Path) -> None:
    odd = shard(tmp_path / "run[1].h5", 3, prefix="r")
    shard(tmp_path / "run1.h5", 3, prefix="s")  # what run[1].h5 would match as a glob
    assert expand_paths([str(odd)]) == [odd]
    assert expand_paths([str(tmp_path / "run[0-9].h5")]) == [tmp_path / "run1.h5"]


GLOB_IN_CHILD = """
import sys, time
from tessera_gpu.errors import TesseraError
from tessera_gpu.io.shards import expand_paths
start = time.monotonic()
try:
    found = [str(p) for p in expand_paths([sys.argv[1]])]
except TesseraError as exc:
    found = [exc.code]
print(repr((found, time.monotonic() - start)))
"""


def glob_in_a_child(pattern: str, timeout: float = 20) -> tuple[list[str], float]:
    """``expand_paths([pattern])`` in a child process that is killed after ``timeout`` seconds
    (a glob that never returns must fail this test, not hang the suite)."""
    import ast
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", GLOB_IN_CHILD, pattern], capture_output=True,
                          text=True, timeout=timeout, check=True)  # fmt: skip
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_a_glob_never_enters_a_symlinked_folder_so_loops_end(tmp_path: Path) -> None:
    """``ln -s . a; ln -s . b``: Python's glob follows both forever (2^depth paths)."""
    loop = tmp_path / "loop2"
    loop.mkdir()
    shard(loop / "x.h5", 2, prefix="x")
    (loop / "a").symlink_to(".")
    (loop / "b").symlink_to(".")
    (tmp_path / "elsewhere").mkdir()
    shard(tmp_path / "elsewhere" / "y.h5", 2, prefix="y")
    (loop / "out").symlink_to(tmp_path / "elsewhere")  # a folder link: not entered either
    (loop / "y-link.h5").symlink_to(tmp_path / "elsewhere" / "y.h5")  # a file link: matched
    found, seconds = glob_in_a_child(f"{loop}/**/*.h5")
    assert found == [f"{loop}/x.h5", f"{loop}/y-link.h5"]
    assert seconds < 5, seconds


def test_a_glob_stops_at_the_first_match_over_the_limit(tmp_path: Path) -> None:
    for i in range(1_500):
        (tmp_path / f"s{i:04d}.h5").touch()
    with pytest.raises(InvalidRequest) as info:
        expand_paths([str(tmp_path / "*.h5")])
    assert (info.value.code, info.value.message) == (
        "too_many_files",
        f"Too many files: {tmp_path}/*.h5 matches more than 1,000 (at most 1,000 shards)",
    )
    listed = []
    real_scandir = os.scandir

    def counting(path: Any) -> Any:
        listing = real_scandir(path)
        inner = iter(listing)

        class Counted:
            def __enter__(self) -> Any:
                return self

            def __exit__(self, *exc: object) -> None:
                listing.close()

            def __iter__(self) -> Any:
                for entry in inner:
                    listed.append(entry.name)
                    yield entry

        return Counted()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "scandir", counting)
        with pytest.raises(InvalidRequest):
            expand_paths([str(tmp_path / "*.h5")])
    assert len(listed) == 1_001  # not the 1,500 in the folder


def test_a_glob_is_bounded_in_depth_and_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tessera_gpu.io.shards as shards

    deep = tmp_path.joinpath(*[f"d{i}" for i in range(shards.GLOB_DEPTH + 1)])
    deep.mkdir(parents=True)
    shard(deep / "x.h5", 2, prefix="x")
    with pytest.raises(InvalidRequest) as info:
        expand_paths([str(tmp_path / "**" / "*.h5")])
    assert info.value.code == "glob_too_deep"
    assert "goes more than 32 folders deep under **" in info.value.message
    assert expand_paths([str(deep.parent / "**" / "*.h5")]) == [deep / "x.h5"]  # within bounds
    for i in range(600):
        (tmp_path / f"n{i}.txt").touch()
    monkeypatch.setattr(shards, "GLOB_SECONDS", 0.0)
    with pytest.raises(InvalidRequest) as info:
        expand_paths([str(tmp_path / "*.h5")])
    assert info.value.code == "glob_too_slow"
    assert info.value.message.startswith(f"The glob {tmp_path}/*.h5 took more than 0 s to list")


def test_a_file_named_twice_is_read_once(two: tuple[Path, Path]) -> None:
    a, b = two
    ds = load_shards([a, b, a.parent / "." / "a.h5"])
    assert ds.fields["source"].categories == ("a.h5", "b.h5")


def test_shards_sharing_a_name_are_told_apart_by_their_folder(tmp_path: Path) -> None:
    (tmp_path / "droid").mkdir()
    (tmp_path / "bridge").mkdir()
    shard(tmp_path / "droid" / "part.h5", 2, prefix="d")
    shard(tmp_path / "bridge" / "part.h5", 2, prefix="b")
    ds = load_shards([tmp_path / "droid" / "part.h5", tmp_path / "bridge" / "part.h5"])
    assert ds.fields["source"].categories == ("droid/part.h5", "bridge/part.h5")


def test_a_shards_own_source_field_is_kept_under_another_name(tmp_path: Path) -> None:
    a = shard(tmp_path / "a.h5", 2, prefix="a", metadata={"source": ["sim", "real"]})
    b = shard(tmp_path / "b.h5", 2, prefix="b")
    ds = load_shards([a, b])
    assert ds.fields["source"].json_values(np.arange(4)) == ["a.h5", "a.h5", "b.h5", "b.h5"]
    assert ds.fields["source_in_file"].json_values(np.arange(4)) == ["sim", "real", None, None]


def test_metadata_only_shards_join(tmp_path: Path) -> None:
    a = shard(tmp_path / "a.h5", 2, prefix="a", dim=None)
    b = shard(tmp_path / "b.h5", 3, prefix="b", dim=None)
    ds = load_shards([a, b])
    assert (ds.mode, ds.dim, ds.embeddings, ds.n_episodes) == ("metadata-only", None, None, 5)


def test_embeddings_can_stay_on_disk_for_the_workers(two: tuple[Path, Path]) -> None:
    ds = load_shards(list(two), load_embeddings=False)
    assert (ds.embeddings, ds.embeddings_hash, ds.dim, ds.mode) == (None, None, 8, "full")
    assert [p.n_rows for p in ds.parts] == [4, 3]
    single = load_dataset(two[0], read_embeddings=False)
    assert (single.embeddings, single.dim, single.parts[0].stop) == (None, 8, 4)


def test_the_total_is_capped(two: tuple[Path, Path]) -> None:
    with pytest.raises(InvalidDataset) as info:
        load_shards(list(two), max_episodes=5)
    assert info.value.message == (
        "Too many episodes: more than 5 in the first 2 of 2 shards (the limit is a setting: "
        "--max-episodes-dask)"
    )


# ---- the 422s ---------------------------------------------------------------------------------


def test_an_episode_id_in_two_shards_names_both_files_and_the_id(tmp_path: Path) -> None:
    a = shard(tmp_path / "a.h5", 3, prefix="ep")
    b = shard(tmp_path / "b.h5", 4, prefix="x")
    c = shard(tmp_path / "c.h5", 3, prefix="ep", seed=3)  # ep0..ep2 again
    with pytest.raises(InvalidDataset) as info:
        load_shards([a, b, c])
    assert info.value.message == (
        "episode_ids must be unique across shards: 'ep0' is in both a.h5 (row 0) and c.h5 (row 0)"
    )
    assert info.value.code == "duplicate_episode_ids"


def test_different_dimensions_say_which_files(tmp_path: Path) -> None:
    paths = [shard(tmp_path / f"{n}.h5", 2, prefix=n, dim=d)
             for n, d in (("a", 8), ("b", 16), ("c", 8))]  # fmt: skip
    with pytest.raises(InvalidDataset) as info:
        load_shards(paths)
    assert info.value.message == (
        "Shards must have the same embedding dimension: D=8 in a.h5, c.h5; D=16 in b.h5"
    )
    assert info.value.code == "dim_mismatch"


def test_embeddings_in_some_shards_only_say_which(tmp_path: Path) -> None:
    paths = [shard(tmp_path / f"{n}.h5", 2, prefix=n, dim=d)
             for n, d in (("a", 8), ("b", None), ("c", 8))]  # fmt: skip
    with pytest.raises(InvalidDataset) as info:
        load_shards(paths)
    assert info.value.message == (
        "Shards must all have embeddings or all be metadata-only: a.h5, c.h5 have embeddings, "
        "b.h5 has none"
    )
    assert info.value.code == "mixed_embeddings"


def test_each_shard_is_validated_on_its_own_and_named(tmp_path: Path) -> None:
    a = shard(tmp_path / "a.h5", 3, prefix="a")
    b = shard(tmp_path / "b.h5", 5, prefix="b")
    with h5py.File(b, "a") as f:
        f["embeddings"][3, 2] = np.nan
    with pytest.raises(InvalidDataset) as info:
        load_shards([a, b])
    assert info.value.message == "b.h5: Embeddings contain NaN values (first at row 3)"
    assert info.value.code == "non_finite"
    with pytest.raises(InvalidDataset) as info:
        load_shards([a, b], limits=Limits(max_episodes=4))
    assert info.value.message == "b.h5: Too many episodes: 5 > 4"


def test_a_field_of_different_kinds_names_the_files(tmp_path: Path) -> None:
    a = shard(tmp_path / "a.h5", 2, prefix="a", metadata={"robot": ["ur5", "franka"]})
    b = shard(tmp_path / "b.h5", 2, prefix="b", metadata={"robot": np.array([1, 2])})
    with pytest.raises(InvalidDataset) as info:
        load_shards([a, b])
    assert info.value.message == (
        "metadata/robot has different kinds across shards: category in a.h5, int in b.h5"
    )
    assert info.value.code == "field_kind_mismatch"


# ---- missing fields ---------------------------------------------------------------------------


def test_missing_fields_take_values_that_say_so(two: tuple[Path, Path]) -> None:
    ds = load_shards(list(two))
    everything = np.arange(7)
    assert ds.fields["length"].kind == "int"  # still int where one file lacks it
    assert ds.fields["length"].json_values(everything) == [10, 20, 30, 40, None, None, None]
    assert all(type(v) is int for v in ds.fields["length"].json_values(everything)[:4])
    assert ds.fields["speed"].json_values(everything) == [None] * 4 + [1.5, 2.5, 3.5]
    assert ds.fields["ok"].json_values(everything) == [True, False, True, False, None, None, None]
    assert ds.fields["note"].json_values(everything) == ["w", "x", "y", "z", None, None, None]
    assert ds.fields["task"].json_values(everything) == [
        "pick", "place", "pick", "stack", "push", "pick", "push",
    ]  # fmt: skip
    assert ds.fields["task"].missing is None  # every shard has it
    summary = {f.name: f for f in ds.summary().fields}
    assert summary["ok"].values == {"true": 2, "false": 2}
    assert (summary["length"].kind, summary["length"].min, summary["length"].max) == ("int", 10, 40)
    assert type(summary["length"].min) is int
    assert summary["note"].values == {"w": 1, "x": 1, "y": 1, "z": 1}  # not "(missing)"


def test_an_int_field_one_file_lacks_stays_int_and_missing_everywhere(
    two: tuple[Path, Path],
) -> None:
    """It used to turn into a float field: a filter's values, the page's range and the
    exports then showed 10.0 for 10."""
    ds = load_shards(list(two))
    assert rows(ds, {"field": "length", "op": "ge", "value": 20}) == [1, 2, 3]
    assert rows(ds, {"field": "length", "op": "ne", "value": 20}) == [0, 2, 3]  # not missing
    assert rows(ds, {"field": "length", "op": "in", "value": [10, 40]}) == [0, 3]
    assert (ds.fields["length"].kind, ds.metadata_at(1)["length"]) == ("int", 20)
    assert type(ds.metadata_at(1)["length"]) is int  # 20, not 20.0 (hover card, CSV)
    assert ds.metadata_at(5)["length"] is None
    colour = color_by(ds, "length")  # a number: the missing rows are NaN (drawn grey)
    assert colour.span == (10.0, 40.0)
    assert np.isnan(colour.values[4:]).all()
    strata = strata_of(ds, "length")
    assert strata is not None
    assert strata.labels[-1] == "missing"
    assert (strata.codes[4:] == len(strata.labels) - 1).all()


@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        ({"field": "length", "op": "ne", "value": 10}, [1, 2, 3]),
        ({"field": "length", "op": "not_in", "value": [10, 20]}, [2, 3]),
        ({"field": "length", "op": "lt", "value": 100}, [0, 1, 2, 3]),
        ({"field": "speed", "op": "ne", "value": 2.5}, [4, 6]),
        ({"field": "speed", "op": "between", "value": [0, 9]}, [4, 5, 6]),
        ({"field": "ok", "op": "eq", "value": False}, [1, 3]),
        ({"field": "ok", "op": "ne", "value": True}, [1, 3]),
        ({"field": "note", "op": "ne", "value": "w"}, [1, 2, 3]),
        ({"field": "note", "op": "not_in", "value": ["x"]}, [0, 2, 3]),
        ({"field": "source", "op": "eq", "value": "b.h5"}, [4, 5, 6]),
        ({"field": "task", "op": "ne", "value": "pick"}, [1, 3, 4, 6]),
    ],
)
def test_no_filter_matches_a_missing_value(
    two: tuple[Path, Path], cond: dict[str, Any], expected: list[int]
) -> None:
    assert rows(load_shards(list(two)), cond) == expected


def test_a_category_missing_somewhere_is_its_own_value_that_no_filter_matches(
    tmp_path: Path,
) -> None:
    a = shard(tmp_path / "a.h5", 2, prefix="a", metadata={"robot": ["ur5", "franka"]})
    b = shard(tmp_path / "b.h5", 2, prefix="b")
    ds = load_shards([a, b])
    robot = ds.fields["robot"]
    assert robot.categories == (MISSING_LABEL, "franka", "ur5")
    assert robot.json_values(np.arange(4)) == ["ur5", "franka", None, None]
    assert {f.name: f for f in ds.summary().fields}["robot"].values == {"franka": 1, "ur5": 1}
    for op, value in (("ne", "ur5"), ("not_in", ["ur5"]), ("eq", MISSING_LABEL)):
        assert rows(ds, {"field": "robot", "op": op, "value": value}) == ([1] if op != "eq" else [])
    colour = color_by(ds, "robot")
    assert colour.codes is not None
    assert [colour.labels[c] for c in colour.codes] == ["ur5", "franka"] + [MISSING_LABEL] * 2


def test_a_bool_missing_somewhere_is_coloured_and_stratified_as_missing(
    two: tuple[Path, Path],
) -> None:
    ds = load_shards(list(two))
    colour = color_by(ds, "ok")
    assert colour.codes is not None
    assert [colour.labels[c] for c in colour.codes] == (
        ["true", "false", "true", "false"] + ["missing"] * 3
    )
    strata = strata_of(ds, "ok")
    assert strata is not None
    assert [strata.labels[c] for c in strata.codes] == (
        ["true", "false", "true", "false"] + ["missing"] * 3
    )
    assert strata_of(ds, "speed") is not None  # numbers: NaN is already the "missing" stratum


def test_kinds_are_widened_across_shards(tmp_path: Path) -> None:
    a = shard(tmp_path / "a.h5", 2, prefix="a", metadata={
        "flag": np.array([True, False]), "count": np.array([1, 2]), "label": ["x", "y"],
    })  # fmt: skip
    many = [f"t{i}" for i in range(1_001)]
    b = shard(tmp_path / "b.h5", 1_001, prefix="b", metadata={
        "flag": np.arange(1_001), "count": np.linspace(0, 1, 1_001), "label": many,
    })  # fmt: skip
    ds = load_shards([a, b])
    assert (ds.fields["flag"].kind, ds.fields["flag"].values[:3].tolist()) == ("int", [1, 0, 0])
    assert ds.fields["count"].kind == "float"
    assert ds.fields["label"].kind == "string"  # 1,003 distinct values: free text
    assert ds.fields["label"].json_values(np.array([0, 2])) == ["x", "t0"]


# ---- previews ---------------------------------------------------------------------------------


def test_previews_come_from_each_rows_own_file(tmp_path: Path) -> None:
    a = shard(tmp_path / "a.h5", 3, prefix="a", previews=0)
    b = shard(tmp_path / "b.h5", 2, prefix="b")  # no previews
    c = shard(tmp_path / "c.h5", 4, prefix="c", previews=5)
    ds = load_shards([a, b, c])
    assert (ds.has_thumbnails, ds.has_gifs) == (True, True)
    assert ds.thumbnail(1) == jpeg_bytes(1).tobytes()
    assert ds.gif(2) == gif_bytes(2).tobytes()
    assert ds.thumbnail(3) is None
    assert ds.gif(4) is None
    assert ds.thumbnail(5 + 2) == jpeg_bytes(5 + 2).tobytes()  # c's row 2
    assert ds.gif(8) == gif_bytes(5 + 0).tobytes()  # c's row 3: seed 5 + 3 % 3
    with pytest.raises(IndexError):
        ds.thumbnail(9)


# ---- reads for workers, memory ----------------------------------------------------------------


def test_read_embedding_rows_checks_the_file_again(two: tuple[Path, Path]) -> None:
    a, _ = two
    whole = load_dataset(a).embeddings
    assert whole is not None
    assert np.array_equal(read_embedding_rows(a, 1, 3, shape=(4, 8)), whole[1:3])
    with pytest.raises(InvalidDataset) as info:
        read_embedding_rows(a, 0, 2, shape=(5, 8))
    assert info.value.message == (
        "a.h5 changed since it was registered: it now holds 4 x 8 embeddings, not 5 x 8; "
        "register it again"
    )


def test_embeddings_that_do_not_fit_are_a_507_that_names_the_way_out() -> None:
    check_fits_in_memory(1_000, 64, host_free_bytes=10**9)
    with pytest.raises(InsufficientStorage) as info:
        check_fits_in_memory(2_000_000, 2_048, host_free_bytes=8 * 10**9)
    assert info.value.status == 507
    assert info.value.code == "insufficient_memory"
    assert info.value.message == (
        "Embeddings of 2,000,000 x 2,048 (16.4 GB) need about 28.7 GB of host memory with "
        "headroom, but only 8.0 GB is free. Start Tessera with --dask ADDRESS (or TESSERA_DASK) "
        "to spread them over a Dask cluster"
    )
    with pytest.raises(InsufficientStorage, match=r"of GPU memory with headroom, but only 2\.0 GB"):
        check_fits_in_memory(1_000_000, 512, host_free_bytes=10**12, device_free_bytes=2 * 10**9)


def test_the_dask_settings_come_from_the_environment() -> None:
    env = {"TESSERA_DASK": " tcp://scheduler:8786 ", "TESSERA_MAX_EPISODES_DASK": "2000000"}
    s = Settings.load({}, environ=env)
    assert (s.dask, s.max_episodes_dask) == ("tcp://scheduler:8786", 2_000_000)
    assert (Settings().dask, Settings().max_episodes_dask) == (None, 10_000_000)
    with pytest.raises(InvalidRequest) as info:
        Settings.load({}, environ={"TESSERA_MAX_EPISODES_DASK": "0"})
    assert info.value.message == "max_episodes_dask must be at least 1: got 0"
