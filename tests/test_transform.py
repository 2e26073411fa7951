"""Placing new points on a fitted map (the Dask projection's placement), in-process."""

from __future__ import annotations

import numpy as np

from benchmarks.data import clustered_embeddings
from tessera_gpu.projection.project import ProjectionParams
from tessera_gpu.projection.transform import build_landmark_index, place


def test_a_points_place_depends_on_its_row_not_on_its_partition() -> None:
    x = clustered_embeddings(1_500, 24, seed=4)
    landmarks = np.arange(0, 1_500, 3)
    rng = np.random.default_rng(0)
    index = build_landmark_index(x[landmarks], rng.normal(size=(500, 2)).astype(np.float32))
    rest = np.setdiff1d(np.arange(1_500), landmarks)
    params = ProjectionParams(seed=3)
    whole = place(index, x[rest], rest, params=params)
    halves = np.vstack([place(index, x[rest[:400]], rest[:400], params=params),
                        place(index, x[rest[400:]], rest[400:], params=params)])  # fmt: skip
    assert np.array_equal(whole, halves)
    assert np.isfinite(whole).all()
    other_seed = place(index, x[rest], rest, params=ProjectionParams(seed=4))
    assert not np.array_equal(whole, other_seed)


def test_a_point_starts_among_its_nearest_landmarks() -> None:
    x = clustered_embeddings(600, 16, seed=1)
    coords = np.zeros((300, 2), np.float32)
    coords[:, 0] = np.arange(300)  # landmark i sits at (i, 0)
    index = build_landmark_index(x[:300], coords)
    twin = x[:1] + 1e-4  # next to landmark 0
    placed = place(index, twin, np.array([300]), n_epochs=0)
    nearest = np.argsort(np.linalg.norm(x[:300] - twin, axis=1))[:15]
    assert coords[nearest, 0].min() <= placed[0, 0] <= coords[nearest, 0].max()
    assert placed[0, 1] == 0.0
