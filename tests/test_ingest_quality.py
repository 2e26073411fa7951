"""Quality metrics and trajectory embeddings on the real LeRobot dataset (60 PushT rollouts:
5 idle, 5 with noisy actions, 3 episodes each replayed twice with tiny perturbations), and
the metrics' definitions on trajectories whose answers are known."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tessera_gpu.backends import get_backend
from tessera_gpu.ingest.episodes import FeatureStats
from tessera_gpu.ingest.metrics import quality_metrics
from tessera_gpu.ingest.pipeline import IngestOptions, ingest
from tessera_gpu.ingest.trajectory import TrajectoryEmbedder, resample
from tessera_gpu.io.dataset import Dataset, load_dataset
from tessera_gpu.similarity import DEFAULT_THRESHOLD, build_index

REAL = Path("/work/shared/data/lerobot_small")  # LeRobot 0.6.1's own writer
IDLE = {31, 34, 45, 54, 58}  # the agent barely moves (found by eye in the raw states)
JERKY = {4, 8, 33, 52, 57}  # high-frequency noise on the actions
REPLAYS = [{14, 22, 39}, {20, 27, 55}, {47, 49, 50}]  # same rollout, tiny perturbations

pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason="the real LeRobot dataset is absent")


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    out = tmp_path_factory.mktemp("real") / "pusht.h5"
    ingest(REAL, out, IngestOptions(thumbnails=False, gifs=False))
    return load_dataset(out)


def by_episode(ds: Dataset, name: str) -> dict[int, float]:
    index = ds.fields["episode_index"].values
    return dict(zip(index.tolist(), ds.fields[name].values.tolist(), strict=True))


def test_the_idle_episodes_stand_out_in_idle_fraction(real: Dataset) -> None:
    idle = by_episode(real, "idle_fraction")
    assert min(idle[i] for i in IDLE) > 0.9
    assert max(v for i, v in idle.items() if i not in IDLE) < 0.5
    top = sorted(idle, key=idle.get, reverse=True)[: len(IDLE)]  # type: ignore[arg-type]
    assert set(top) == IDLE


def test_the_jerky_episodes_stand_out_in_action_jerk(real: Dataset) -> None:
    jerk = by_episode(real, "action_jerk")
    calm = max(v for i, v in jerk.items() if i not in JERKY)
    assert min(jerk[i] for i in JERKY) > 3 * calm


def test_replayed_near_copies_fall_into_one_near_duplicate_group_each(real: Dataset) -> None:
    backend = get_backend("cpu")
    assert real.embeddings is not None
    index = build_index(real.embeddings, backend.to_device(real.embeddings), backend)
    groups = index.groups(real.embeddings, DEFAULT_THRESHOLD).groups
    episode = real.fields["episode_index"].values
    found = [set(episode[g].tolist()) for g in groups]
    for replay in REPLAYS:
        assert replay in found, found  # the whole set, and nothing else with it
    for group in found:  # no idle episode is a near-duplicate of a moving one
        assert not (group & IDLE) or group <= IDLE


def test_metric_definitions_on_known_trajectories() -> None:
    fps = 10.0
    line = np.column_stack([np.arange(11.0), np.zeros(11)])  # 1 unit per step, along x
    m = quality_metrics(line, None, fps)
    assert m["path_length"] == pytest.approx(10.0)
    assert m["mean_speed"] == pytest.approx(10.0 / 1.1)  # duration 11 frames / 10 fps
    assert m["net_displacement"] == pytest.approx(10.0)
    assert m["idle_fraction"] == 0.0
    assert "action_jerk" not in m
    still = np.zeros((5, 2))
    still[3] = [0.004, 0]  # 0.04 units/s at 10 fps: below 0.05, still idle
    assert quality_metrics(still, None, fps)["idle_fraction"] == 1.0
    back_and_forth = np.column_stack([np.arange(8.0) % 2, np.zeros(8)])
    a = quality_metrics(None, back_and_forth, fps)
    assert a["action_jerk"] == pytest.approx(4.0 * fps**3)  # |1 - 3*0 + 3*1 - 0| = 4
    assert math.isnan(quality_metrics(None, back_and_forth[:3], fps)["action_jerk"])
    assert math.isnan(quality_metrics(line[:1], None, fps)["idle_fraction"])


def test_the_trajectory_embedding_is_unit_and_length_free() -> None:
    stats = FeatureStats(np.zeros(2), np.ones(2))
    embedder = TrajectoryEmbedder.for_source(stats, stats)
    assert embedder.dim == (2 * 32 - 1) * 4
    t = np.linspace(0, 1, 90)[:, None]
    slow = np.hstack([t, t**2])
    fast = slow[::3]  # the same motion sampled at a third of the rate
    a, b = embedder.embed(slow, slow), embedder.embed(fast, fast)
    assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-6)
    assert 1 - float(a @ b) < 1e-3
    np.testing.assert_allclose(resample(np.arange(5.0)[:, None], 3)[:, 0], [0, 2, 4])


def test_a_wide_state_is_resampled_to_fewer_points_or_projected_to_2048() -> None:
    wide = FeatureStats(np.zeros(100), np.ones(100))
    embedder = TrajectoryEmbedder.for_source(wide, None)
    assert embedder.points == 10  # (2 x 10 - 1) x 100 = 1,900 <= 2,048
    huge = FeatureStats(np.zeros(1500), np.ones(1500))
    embedder = TrajectoryEmbedder.for_source(huge, None)
    vector = embedder.embed(np.random.default_rng(0).normal(size=(7, 1500)), None)
    assert vector.shape == (2048,)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
