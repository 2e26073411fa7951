"""What every source yields: one :class:`Episode` record per episode, and the statistics that
standardise its features.

A source (a LeRobot root, a robomimic file) is read episode by episode, in the source's own
order, into the same record: its index, task, length and frame rate, its state and action
``(T, F)`` arrays, its rewards and success flags where the source has them, and where its
camera frames are (:class:`VideoClip` for a span of an MP4, :class:`StoredFrames` for an
array in an HDF5 file). Nothing here reads pixels.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tessera_gpu.errors import InvalidDataset

__all__ = [
    "Episode",
    "FeatureStats",
    "RunningStats",
    "Source",
    "StoredFrames",
    "VideoClip",
]


@dataclass(frozen=True)
class VideoClip:
    """An episode's frames in a video file: frame ``i`` is the frame PyAV decodes at
    ``timestamps[i]`` seconds of ``path`` (LeRobot v3.0: ``from_timestamp + timestamp``)."""

    path: Path
    timestamps: np.ndarray  # float64, seconds in the file


@dataclass(frozen=True)
class StoredFrames:
    """An episode's frames as a ``(T, H, W, 3)`` uint8 array in an HDF5 file."""

    path: Path
    member: str  # e.g. "data/demo_3/obs/agentview_image"


@dataclass(frozen=True)
class Episode:
    """One episode of a source, as every reader yields it."""

    index: int  # the source's own episode index
    task: str
    length: int
    fps: float
    where: str  # "episode 12 of <source>": how error messages name it
    state: np.ndarray | None = None  # (T, S) float64
    action: np.ndarray | None = None  # (T, A) float64
    reward: np.ndarray | None = None  # (T,) float64
    success: np.ndarray | None = None  # (T,) bool
    frames: VideoClip | StoredFrames | None = None


@dataclass(frozen=True)
class FeatureStats:
    """Per-feature mean and standard deviation of a ``(T, F)`` column over the dataset."""

    mean: np.ndarray
    std: np.ndarray

    def standardise(self, values: np.ndarray) -> np.ndarray:
        """``(values - mean) / std``; a constant feature (std ~ 0) is only centred."""
        scale = np.where(self.std > 1e-8, self.std, 1.0)
        return (values - self.mean) / scale

    @classmethod
    def from_lerobot(cls, stats: Any, width: int, where: str) -> FeatureStats | None:
        """From a LeRobot stats entry ``{"mean": [...], "std": [...], ...}``; None when it lacks
        them; a wrong width is an error naming ``where``."""
        if not isinstance(stats, dict) or "mean" not in stats or "std" not in stats:
            return None
        mean = np.asarray(stats["mean"], dtype=np.float64).ravel()
        std = np.asarray(stats["std"], dtype=np.float64).ravel()
        if mean.shape != (width,) or std.shape != (width,) or not np.isfinite(mean).all():
            raise InvalidDataset(
                f"{where}: its mean/std have {mean.size} values for a feature of width {width}",
                code="bad_stats",
            )
        return cls(mean, std)


@dataclass
class RunningStats:
    """Mean and variance per feature, merged batch by batch (Chan et al.'s parallel form of
    Welford's update), so a first pass over a dataset's columns needs no more memory than a
    batch. Also merges LeRobot's per-episode statistics exactly."""

    count: float = 0.0
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    m2: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def add(self, values: np.ndarray) -> None:
        """Add the rows of a ``(T, F)`` batch."""
        values = np.asarray(values, dtype=np.float64)
        if len(values):
            self.merge(len(values), values.mean(0), values.var(0) * len(values))

    def merge(self, count: float, mean: np.ndarray, m2: np.ndarray) -> None:
        """Add a batch given by its count, mean and sum of squared deviations."""
        if count <= 0:
            return
        if self.count == 0:
            self.count, self.mean, self.m2 = (
                float(count),
                np.array(mean, float),
                np.array(m2, float),
            )
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * count / total)
        self.count = total

    def result(self) -> FeatureStats | None:
        if self.count == 0:
            return None
        return FeatureStats(self.mean.copy(), np.sqrt(self.m2 / self.count))


class Source(Protocol):
    """A dataset Tessera can ingest, read without its own library installed."""

    path: Path
    name: str
    n_episodes: int
    cameras: tuple[str, ...]
    signals: frozenset[str]  # which of "success" and "reward" its episodes carry

    def statistics(self) -> tuple[FeatureStats | None, FeatureStats | None]:
        """The (state, action) statistics: from the source's own files when it has them,
        else from a first pass over its columns (no pixels)."""
        ...

    def episodes(self, camera: str | None) -> Iterator[Episode]:
        """Every episode in the source's order, with the frames of ``camera`` (or none)."""
        ...

    def content_files(self) -> list[Path]:
        """Every file the output depends on (the key of a cached ingest)."""
        ...

    def unknown_camera(self, camera: str | None) -> str:
        """Why ``camera`` (None: any camera) cannot be read from this source."""
        ...

    def close(self) -> None: ...
