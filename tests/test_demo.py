"""build_demo: rendered tabletop episodes whose embeddings come from what they look like."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tessera_gpu.errors import InvalidRequest
from tessera_gpu.io import demo
from tessera_gpu.io.dataset import Dataset, load_dataset
from tessera_gpu.io.demo import build_demo

EPISODES, DIM = 60, 64
FIELDS = {
    "success": "bool",
    "task": "category",
    "episode_length": "int",
    "dataset": "category",
    "robot_type": "category",
    "environment": "category",
}


@pytest.fixture(scope="module")
def demo_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo(tmp_path_factory.mktemp("demo") / "demo.h5", episodes=EPISODES, dim=DIM)


@pytest.fixture(scope="module")
def ds(demo_file: Path) -> Dataset:
    return load_dataset(demo_file)


def labels(ds: Dataset, name: str) -> list:
    return [ds.fields[name].value_at(i) for i in range(ds.n_episodes)]


def test_it_loads_with_unit_float32_embeddings(ds: Dataset) -> None:
    assert ds.n_episodes == EPISODES
    assert ds.dim == DIM
    assert ds.mode == "full"
    assert ds.embeddings is not None
    assert ds.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ds.embeddings, axis=1), 1.0, rtol=1e-5)


def test_it_has_every_metadata_field_with_realistic_values(ds: Dataset) -> None:
    assert {name: field.kind for name, field in ds.fields.items()} == FIELDS
    assert set(labels(ds, "success")) == {True, False}
    assert len(set(labels(ds, "task"))) >= 4
    assert len(set(labels(ds, "robot_type"))) >= 2
    assert len(set(labels(ds, "environment"))) >= 2
    assert set(labels(ds, "task")) <= set(demo.TASKS)
    assert min(labels(ds, "episode_length")) >= 20


def test_episode_ids_are_unique_and_name_their_dataset(ds: Dataset) -> None:
    ids = ds.episode_ids.tolist()
    assert len(set(ids)) == len(ids)
    for episode_id, dataset in zip(ids, labels(ds, "dataset"), strict=True):
        assert re.fullmatch(rf"{dataset}_\d{{6}}", episode_id)


def test_marginals_look_like_a_real_collection() -> None:
    plans = [demo._plan(np.random.default_rng([0, i])) for i in range(2000)]
    success = np.array([plan.success for plan in plans])
    assert 0.62 < success.mean() < 0.78
    by_task = {task: success[[plan.task == task for plan in plans]].mean() for task in demo.TASKS}
    assert by_task["pick"] > by_task["stack"] + 0.15  # stacking is harder
    failed_length = np.mean([plan.episode_length for plan in plans if not plan.success])
    succeeded_length = np.mean([plan.episode_length for plan in plans if plan.success])
    assert failed_length > succeeded_length  # failures run into the time limit


def test_previews_decode_as_128px_jpegs_and_animated_gifs(ds: Dataset) -> None:
    for i in range(0, EPISODES, 7):
        thumbnail = ds.thumbnail(i)
        assert thumbnail is not None
        assert thumbnail[:3] == b"\xff\xd8\xff"
        assert Image.open(io.BytesIO(thumbnail)).size == (128, 128)
        gif = ds.gif(i)
        assert gif is not None
        animation = Image.open(io.BytesIO(gif))
        assert animation.format == "GIF"
        assert animation.size == (128, 128)
        assert 8 <= animation.n_frames <= 16
        assert animation.info["loop"] == 0


def test_no_previews_when_asked(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    path = build_demo(
        tmp_path / "bare.h5", episodes=5, dim=8, previews=False, progress=lambda *a: calls.append(a)
    )
    ds = load_dataset(path)
    assert not ds.has_thumbnails
    assert not ds.has_gifs
    assert ds.thumbnail(0) is None
    assert calls == [(i, 5) for i in range(1, 6)]


def test_the_same_seed_gives_the_same_arrays(ds: Dataset, tmp_path: Path) -> None:
    again = load_dataset(build_demo(tmp_path / "again.h5", episodes=EPISODES, dim=DIM))
    other = load_dataset(build_demo(tmp_path / "other.h5", episodes=EPISODES, dim=DIM, seed=1))
    assert ds.embeddings is not None
    assert again.embeddings is not None
    assert ds.embeddings.tobytes() == again.embeddings.tobytes()
    assert ds.episode_ids.tolist() == again.episode_ids.tolist()
    for name in FIELDS:
        assert labels(ds, name) == labels(again, name)
    assert ds.thumbnail(3) == again.thumbnail(3)
    assert ds.gif(3) == again.gif(3)
    assert other.embeddings is not None
    assert not np.array_equal(ds.embeddings, other.embeddings)
    assert labels(ds, "task") != labels(other, "task")


@pytest.mark.parametrize("field", ["task", "robot_type", "environment"])
def test_episodes_that_look_alike_sit_together(ds: Dataset, field: str) -> None:
    assert ds.embeddings is not None
    cosine = ds.embeddings @ ds.embeddings.T
    codes = ds.fields[field].values
    same = codes[:, None] == codes[None, :]
    np.fill_diagonal(same, False)
    different = codes[:, None] != codes[None, :]
    assert cosine[same].mean() > cosine[different].mean() + 0.03
    np.fill_diagonal(cosine, -np.inf)
    nearest = np.argsort(-cosine, axis=1)[:, :5]
    agreement = (codes[nearest] == codes[:, None]).mean()
    chance = np.mean(same[~np.eye(len(codes), dtype=bool)])
    assert agreement > chance + 0.2


@pytest.mark.parametrize("kwargs", [{"episodes": 0}, {"dim": 0}, {"dim": 4096}, {"seed": -1}])
def test_bad_options_are_rejected(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(InvalidRequest, match="need episodes >= 1"):
        build_demo(tmp_path / "x.h5", **kwargs)
    assert not list(tmp_path.iterdir())


def test_a_missing_directory_fails_before_rendering(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    with pytest.raises(InvalidRequest, match="does not exist"):
        build_demo(tmp_path / "no" / "x.h5", episodes=3, progress=lambda *a: calls.append(a))
    assert calls == []
