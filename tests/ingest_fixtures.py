"""Small seeded robot datasets for the ingest tests, written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.robot_sources import (
    SyntheticEpisode,
    synthetic_episodes,
    write_lerobot_v21,
    write_lerobot_v30,
    write_robomimic,
)

BEHAVIOURS = {3: "idle", 4: "jerky", 7: ("replay", 2), 9: ("replay", 2)}


@pytest.fixture(scope="session")
def episodes() -> list[SyntheticEpisode]:
    return synthetic_episodes(24, seed=3, behaviours=BEHAVIOURS)


@pytest.fixture(scope="session")
def v30_root(tmp_path_factory: pytest.TempPathFactory, episodes: list[SyntheticEpisode]) -> Path:
    """24 episodes, 10 per mp4 and 7 per data file, so the files' boundaries differ."""
    root = tmp_path_factory.mktemp("v30") / "pusht_sim"
    return write_lerobot_v30(root, episodes, episodes_per_video=10, episodes_per_data_file=7)


@pytest.fixture(scope="session")
def v21_root(tmp_path_factory: pytest.TempPathFactory, episodes: list[SyntheticEpisode]) -> Path:
    return write_lerobot_v21(tmp_path_factory.mktemp("v21") / "pusht_v21", episodes[:8])


@pytest.fixture(scope="session")
def robomimic_file(tmp_path_factory: pytest.TempPathFactory,
                   episodes: list[SyntheticEpisode]) -> Path:  # fmt: skip
    path = tmp_path_factory.mktemp("robomimic") / "lift_ph.hdf5"
    return write_robomimic(path, episodes[:6], first_demo=1)
