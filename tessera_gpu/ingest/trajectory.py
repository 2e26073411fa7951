"""Trajectory embeddings: an episode's state and action as one unit vector, no model needed.

For an episode with ``T`` frames and ``F`` state + action features:

1. standardise each feature with the dataset's mean and standard deviation (LeRobot's
   ``meta/stats.json`` when present, else a first pass over the columns);
2. resample the ``(T, F)`` trajectory to ``L`` points evenly spaced in time (linear
   interpolation; ``L`` = 32, fewer when ``F`` is wide), so episodes of any length compare;
3. make two blocks: *where* (the ``L x F`` resampled trajectory) and *how it moves* (its
   ``(L - 1) x F`` differences), each flattened and L2-normalised, then joined and scaled by
   ``1/sqrt(2)``: the result has unit norm, and its cosine distance to another episode's is
   the mean of the two blocks' cosine distances;
4. above 2,048 dimensions, a fixed seeded Gaussian random projection takes it to 2,048, and
   it is normalised again.

The motion block is what keeps an episode that idles at some point apart from one that moves
through it (with positions alone the two are almost parallel), while a replay of an episode
with a tiny perturbation stays at a cosine distance near 0 in both blocks: replays fall into
one near-duplicate group at Tessera's default threshold (0.05).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tessera_gpu.errors import InvalidRequest
from tessera_gpu.ingest.episodes import Episode, FeatureStats

__all__ = ["MAX_DIM", "POINTS", "Reducer", "TrajectoryEmbedder", "combine", "unit"]

MAX_DIM = 2_048
POINTS = 32
_SEED = 20_240_618  # fixed: the same source always gives the same embeddings


def unit(vector: np.ndarray) -> np.ndarray:
    """``vector / ||vector||``; a zero vector stays zero."""
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 1e-12 else np.zeros_like(vector)


@dataclass(frozen=True)
class Reducer:
    """A fixed Gaussian random projection from ``n_in`` to ``n_out`` dimensions (Johnson-
    Lindenstrauss: cosine distances kept up to a small distortion), or nothing when it fits."""

    n_in: int
    n_out: int
    matrix: np.ndarray | None

    @classmethod
    def to_fit(cls, n_in: int, limit: int = MAX_DIM) -> Reducer:
        if n_in <= limit:
            return cls(n_in, n_in, None)
        rng = np.random.default_rng(_SEED)
        matrix = rng.standard_normal((n_in, limit), dtype=np.float32) / np.float32(limit**0.5)
        return cls(n_in, limit, matrix)

    def __call__(self, vector: np.ndarray) -> np.ndarray:
        if self.matrix is None:
            return vector.astype(np.float32)
        return unit(vector.astype(np.float32) @ self.matrix)


@dataclass(frozen=True)
class TrajectoryEmbedder:
    """Turns an :class:`Episode`'s state and action into its trajectory embedding."""

    state: FeatureStats | None
    action: FeatureStats | None
    points: int
    width: int
    reducer: Reducer

    @classmethod
    def for_source(
        cls, state: FeatureStats | None, action: FeatureStats | None
    ) -> TrajectoryEmbedder:
        width = sum(len(s.mean) for s in (state, action) if s is not None)
        if width == 0:
            raise InvalidRequest(
                "this dataset has no state or action features to embed: use --embed image "
                "(with --image-encoder)",
                code="nothing_to_embed",
            )
        points = POINTS
        if (2 * points - 1) * width > MAX_DIM:
            points = max(2, (MAX_DIM // width + 1) // 2)
        return cls(state, action, points, width, Reducer.to_fit((2 * points - 1) * width))

    @property
    def dim(self) -> int:
        return self.reducer.n_out

    def standardised(self, episode: Episode) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The episode's state and action in units of the dataset's standard deviations."""
        state = (
            None
            if self.state is None or episode.state is None
            else self.state.standardise(episode.state)
        )
        action = (
            None
            if self.action is None or episode.action is None
            else self.action.standardise(episode.action)
        )
        return state, action

    def embed(self, state: np.ndarray | None, action: np.ndarray | None) -> np.ndarray:
        """The unit-norm float32 embedding of standardised ``state`` and ``action``."""
        columns = np.hstack([x for x in (state, action) if x is not None])
        path = resample(columns, self.points)
        where, how = unit(path.ravel()), unit(np.diff(path, axis=0).ravel())
        return self.reducer(np.concatenate([where, how]) / math.sqrt(2.0))


def resample(values: np.ndarray, points: int) -> np.ndarray:
    """``(T, F)`` values at ``points`` instants evenly spaced over the episode (linear)."""
    n = len(values)
    if n == 1:
        return np.repeat(values, points, axis=0)
    position = np.linspace(0.0, n - 1.0, points)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, n - 1)
    frac = (position - low)[:, None]
    return values[low] * (1.0 - frac) + values[high] * frac


def combine(trajectory: np.ndarray, image: np.ndarray, reducer: Reducer) -> np.ndarray:
    """``--embed both``: the two unit vectors side by side, each weighted ``1/sqrt(2)`` (equal
    say in the cosine distance), reduced to 2,048 dimensions when wider."""
    return reducer(np.concatenate([trajectory, image]) / math.sqrt(2.0))
