"""`ingest` on each source layout gives a spec-valid file that matches the source."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks.robot_sources import TASKS, SyntheticEpisode, write_lerobot_v30
from tessera_gpu.ingest.lerobot import LeRobotSource
from tessera_gpu.ingest.pipeline import IngestOptions, ingest
from tessera_gpu.ingest.robomimic import RobomimicSource
from tessera_gpu.io.dataset import Dataset, load_dataset

pytest_plugins = ("tests.ingest_fixtures",)

QUALITY = {"path_length", "mean_speed", "idle_fraction", "action_jerk", "net_displacement"}


def values(ds: Dataset, name: str) -> list[object]:
    return ds.fields[name].json_values(np.arange(ds.n_episodes))


def check_matches(ds: Dataset, episodes: list[SyntheticEpisode], fps: float, name: str) -> None:
    assert ds.n_episodes == len(episodes)
    assert values(ds, "episode_index") == [e.index for e in episodes]
    assert ds.episode_ids.tolist() == [f"ep_{e.index:06d}" for e in episodes]
    assert values(ds, "episode_length") == [e.length for e in episodes]
    assert values(ds, "duration_s") == pytest.approx([e.length / fps for e in episodes])
    assert values(ds, "dataset") == [name] * len(episodes)
    assert values(ds, "max_reward") == pytest.approx([float(e.reward.max()) for e in episodes])
    assert set(ds.fields) >= QUALITY
    assert ds.embeddings is not None
    assert ds.embeddings.shape == (len(episodes), 252)  # (2 x 32 - 1) x 4 features
    assert np.allclose(np.linalg.norm(ds.embeddings, axis=1), 1.0, atol=1e-5)
    assert ds.has_thumbnails
    assert ds.has_gifs


def test_a_v30_root_ingests_to_a_valid_file_that_matches_it(
    v30_root: Path, episodes: list[SyntheticEpisode], tmp_path: Path
) -> None:
    result = ingest(v30_root, tmp_path / "out.h5")
    ds = load_dataset(result.paths[0])
    check_matches(ds, episodes, 10.0, "pusht_sim")
    assert values(ds, "task") == [TASKS[e.task_index] for e in episodes]
    assert values(ds, "success") == [bool(e.success.any()) for e in episodes]
    assert result.camera == "observation.image"
    assert result.paths == [tmp_path / "out.h5"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]


def test_a_v21_root_ingests_to_a_valid_file_that_matches_it(
    v21_root: Path, episodes: list[SyntheticEpisode], tmp_path: Path
) -> None:
    ds = load_dataset(ingest(v21_root, tmp_path / "out.h5").paths[0])
    check_matches(ds, episodes[:8], 10.0, "pusht_v21")
    assert values(ds, "task") == [TASKS[e.task_index] for e in episodes[:8]]


def test_a_robomimic_file_ingests_with_its_demo_numbers_as_indices(
    robomimic_file: Path, episodes: list[SyntheticEpisode], tmp_path: Path
) -> None:
    ds = load_dataset(ingest(robomimic_file, tmp_path / "out.h5").paths[0])
    assert values(ds, "episode_index") == [1, 2, 3, 4, 5, 6]  # demo_1 ... demo_6
    assert values(ds, "episode_length") == [e.length for e in episodes[:6]]
    assert values(ds, "task") == ["PushT"] * 6  # env_args' env_name
    assert values(ds, "duration_s") == pytest.approx([e.length / 20 for e in episodes[:6]])
    assert "success" not in ds.fields  # robomimic stores no success flag
    assert values(ds, "max_reward") == pytest.approx([float(e.reward.max()) for e in episodes[:6]])
    assert set(ds.fields) >= QUALITY
    # the state is every low-dim obs side by side (object: 3, robot0_eef_pos: 2), actions 2
    assert ds.embeddings is not None
    assert ds.embeddings.shape == (6, (2 * 32 - 1) * 7)
    assert ds.has_gifs


def test_robomimic_demos_come_in_the_order_of_their_number(tmp_path: Path,
                                                          episodes: list[SyntheticEpisode]) -> None:  # fmt: skip
    from benchmarks.robot_sources import write_robomimic

    path = write_robomimic(tmp_path / "r.hdf5", [episodes[i] for i in (0, 1, 2, 10, 11)],
                           camera=None, problem_info="put the bowl on the plate")  # fmt: skip
    source = RobomimicSource(path)
    found = [(e.index, e.task) for e in source.episodes(None)]
    source.close()
    assert found == [(i, "put the bowl on the plate") for i in (0, 1, 2, 10, 11)]


def test_statistics_come_from_stats_json_or_a_first_pass_alike(
    v30_root: Path, tmp_path: Path
) -> None:
    copy = shutil.copytree(v30_root, tmp_path / "nostats")
    (copy / "meta" / "stats.json").unlink()
    given = LeRobotSource(v30_root).statistics()
    computed = LeRobotSource(copy).statistics()
    for a, b in zip(given, computed, strict=True):
        assert a is not None
        assert b is not None
        np.testing.assert_allclose(a.mean, b.mean, rtol=1e-6)
        np.testing.assert_allclose(a.std, b.std, rtol=1e-5)


def test_v21_statistics_merge_the_per_episode_stats_exactly(
    v21_root: Path, episodes: list[SyntheticEpisode]
) -> None:
    state, _ = LeRobotSource(v21_root).statistics()
    whole = np.concatenate([e.state for e in episodes[:8]]).astype(np.float64)
    assert state is not None
    np.testing.assert_allclose(state.mean, whole.mean(0), rtol=1e-9)
    np.testing.assert_allclose(state.std, whole.std(0), rtol=1e-6)


def test_the_dataset_name_and_id_prefix_can_be_set(v21_root: Path, tmp_path: Path) -> None:
    options = IngestOptions(name="sim", id_prefix="sim_", thumbnails=False, gifs=False)
    ds = load_dataset(ingest(v21_root, tmp_path / "o.h5", options).paths[0])
    assert values(ds, "dataset") == ["sim"] * 8
    assert ds.episode_ids[0] == "sim_000000"
    assert not ds.has_thumbnails
    assert not ds.has_gifs


def test_episodes_listed_out_of_order_are_written_in_index_order(
    tmp_path: Path, episodes: list[SyntheticEpisode]
) -> None:
    root = write_lerobot_v30(tmp_path / "r", episodes[:6], camera=None)
    meta = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    import pyarrow.parquet as pq

    table = pq.read_table(meta)
    pq.write_table(table.take([5, 4, 3, 2, 1, 0]), meta)
    ds = load_dataset(ingest(root, tmp_path / "o.h5").paths[0])
    assert values(ds, "episode_index") == [0, 1, 2, 3, 4, 5]
    assert not ds.has_thumbnails  # a root without cameras: no previews, no error


def test_info_json_is_read_not_guessed(v30_root: Path) -> None:
    info = json.loads((v30_root / "meta" / "info.json").read_text())
    source = LeRobotSource(v30_root)
    assert source.fps == info["fps"]
    assert source.cameras == ("observation.image",)
    assert source.n_episodes == info["total_episodes"]
