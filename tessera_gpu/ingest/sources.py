"""Which reader a path needs: a LeRobot root (a directory with ``meta/info.json``) or a
robomimic-style HDF5 (a ``data/`` group, no ``episode_ids``)."""

from __future__ import annotations

from pathlib import Path

from tessera_gpu.errors import InvalidDataset, NotFound, UnsupportedMediaType
from tessera_gpu.ingest.episodes import Source
from tessera_gpu.ingest.lerobot import LeRobotSource, is_lerobot_root
from tessera_gpu.ingest.robomimic import RobomimicSource, is_robomimic_file
from tessera_gpu.io.safety import Limits, check_file_on_disk, open_hdf5

__all__ = ["is_source", "open_source"]


def is_source(path: str | Path) -> bool:
    """Whether ``path`` is something to ingest rather than a Tessera file."""
    path = Path(path)
    return is_lerobot_root(path) or is_robomimic_file(path)


def open_source(path: str | Path, *, fps: float | None = None) -> Source:
    """The reader for ``path``; ``fps`` sets a robomimic file's frame rate. Raises a clear
    error for anything else."""
    path = Path(path)
    if not path.exists():
        raise NotFound(f"No such file or directory: {path}", code="file_not_found")
    if path.is_dir():
        return LeRobotSource(path)
    try:
        check_file_on_disk(path, Limits())
    except UnsupportedMediaType:
        raise InvalidDataset(
            f"{path} is neither a LeRobot dataset root (a directory with meta/info.json) nor a "
            "robomimic-style HDF5 file",
            code="not_a_source",
        ) from None
    with open_hdf5(path) as f:
        if "episode_ids" in f:
            raise InvalidDataset(
                f"{path} is already a Tessera file: serve it as it is (tessera serve {path})",
                code="already_tessera",
            )
    return RobomimicSource(path, fps=fps)
