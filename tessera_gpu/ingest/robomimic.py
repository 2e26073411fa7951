"""A robomimic-style HDF5 (robomimic, LIBERO, MimicGen, robocasa), read with h5py.

The structure is robomimic's (``docs/datasets/overview.md``, ``robomimic/utils/dataset.py`` at
v0.5.0)::

    data/                     attrs: total, env_args (JSON: env_name, env_type, env_kwargs)
      demo_N/                 attrs: num_samples (robocasa: ep_meta, JSON with "lang")
        actions   (T, A)      rewards (T,)   dones (T,)   states (T, D)
        obs/<key> (T, ...)    low-dim arrays (T, F) and images (T, H, W, 3) uint8
    mask/<filter key>         demo names (e.g. train, valid)

Episodes are the ``demo_N`` groups in the order of N (robomimic sorts them so), and N is the
episode index. The state is every low-dimensional float array of ``obs/`` side by side (sorted
by name: ``states`` holds simulator states, empty outside robosuite); the cameras are the
``(T, H, W, 3)`` uint8 arrays of ``obs/``. The task is the demo's ``ep_meta`` language (robocasa),
else LIBERO's ``problem_info`` language instruction, else ``env_args``'s ``env_name``. The frame
rate is ``env_kwargs.control_freq`` (robosuite's 20 Hz when absent) unless given.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from tessera_gpu.errors import InvalidDataset, InvalidRequest
from tessera_gpu.ingest.episodes import Episode, FeatureStats, RunningStats, StoredFrames
from tessera_gpu.io.safety import Limits, check_dataset_object, check_file_on_disk, open_hdf5

__all__ = ["DEFAULT_FPS", "RobomimicSource", "is_robomimic_file"]

DEFAULT_FPS = 20.0  # robosuite's default control frequency
_DEMO = re.compile(r"demo_(\d+)")
_LIMITS = Limits()


def is_robomimic_file(path: Path) -> bool:
    """An HDF5 file with a ``data`` group and no ``episode_ids`` (not a Tessera file)."""
    if not path.is_file():
        return False
    try:
        check_file_on_disk(path, _LIMITS)
        with h5py.File(path, "r", locking=False) as f:
            return "episode_ids" not in f and isinstance(f.get("data", getlink=True), h5py.HardLink)
    except Exception:  # not HDF5, unreadable: not a robomimic file
        return False


class RobomimicSource:
    """The demos of a robomimic-style HDF5 file, in the order of their number."""

    def __init__(self, path: Path, *, fps: float | None = None) -> None:
        self.path = Path(path)
        check_file_on_disk(self.path, _LIMITS)
        self._file = open_hdf5(self.path)
        self.name = self.path.stem
        data = _member(
            self._file,
            "data",
            self.path.name,
            group=True,
            missing=(
                f"{self.path} has no data/ group: not a robomimic-style HDF5 (data/demo_N/...)"
            ),
        )
        self._data = data
        demos = sorted((int(m.group(1)), k) for k in data if (m := _DEMO.fullmatch(k)))
        if not demos:
            raise InvalidDataset(f"{self.path}: data/ holds no demo_N group", code="no_episodes")
        self._demos = demos
        self.n_episodes = len(demos)
        env = _json_attr(data, "env_args", self.path)
        kwargs = env.get("env_kwargs")
        kwargs = kwargs if isinstance(kwargs, dict) else {}
        self.fps = float(fps or kwargs.get("control_freq") or DEFAULT_FPS)
        problem = _json_attr(data, "problem_info", self.path)
        self.task = str(problem.get("language_instruction") or env.get("env_name") or self.name)
        first = self._obs(demos[0][1])
        self.state_keys = sorted(k for k, d in first.items() if d.ndim == 2 and d.dtype.kind == "f")
        self.cameras = tuple(sorted(k for k, d in first.items() if _is_image(d)))
        rewards = _member(self._demo(demos[0][1]), "rewards", self.path.name, missing="")
        self.signals = frozenset({"reward"} if rewards is not None else ())

    def _demo(self, name: str) -> h5py.Group:
        return _member(self._data, name, f"{self.path.name}:data", group=True)

    def _obs(self, name: str) -> dict[str, h5py.Dataset]:
        where = f"{self.path.name}:data/{name}"
        obs = _member(self._demo(name), "obs", where, group=True, missing="")
        if obs is None:
            return {}
        return {k: _member(obs, k, f"{where}/obs") for k in obs}

    def statistics(self) -> tuple[FeatureStats | None, FeatureStats | None]:
        """A first pass over every demo's low-dim observations and actions (no images)."""
        state, action = RunningStats(), RunningStats()
        for _, name in self._demos:
            s, a, _ = self._arrays(name)
            if s is not None:
                state.add(s)
            if a is not None:
                action.add(a)
        return state.result(), action.result()

    def _arrays(self, name: str) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        demo = self._demo(name)
        where = f"{self.path.name}:data/{name}"
        obs = self._obs(name)
        missing = [k for k in self.state_keys if k not in obs]
        if missing:
            raise InvalidDataset(f"{where}/obs lacks {', '.join(missing)}", code="missing_obs")
        state = (
            np.hstack([obs[k][()].reshape(len(obs[k]), -1) for k in self.state_keys]).astype(
                np.float64
            )
            if self.state_keys
            else None
        )
        actions = _member(demo, "actions", where, missing="")
        action = None if actions is None else actions[()].reshape(len(actions), -1).astype(float)
        rewards = _member(demo, "rewards", where, missing="")
        reward = None if rewards is None else rewards[()].astype(np.float64).ravel()
        return state, action, reward

    def episodes(self, camera: str | None) -> Iterator[Episode]:
        if camera is not None and camera not in self.cameras:
            raise InvalidRequest(self.unknown_camera(camera), code="unknown_camera")
        for index, name in self._demos:
            where = f"episode {index} (data/{name}) of {self.path.name}"
            state, action, reward = self._arrays(name)
            lengths = {len(x) for x in (state, action, reward) if x is not None}
            if camera is not None:
                lengths.add(len(self._obs(name)[camera]))
            length = max(lengths, default=0)
            if length == 0:
                raise InvalidDataset(f"{where} has 0 frames", code="empty_episode")
            if len(lengths) > 1:
                raise InvalidDataset(
                    f"{where}: its arrays disagree on its length ({sorted(lengths)})",
                    code="length_mismatch",
                )
            frames = (
                None if camera is None else StoredFrames(self.path, f"data/{name}/obs/{camera}")
            )
            yield Episode(
                index=index,
                task=self._task(name),
                length=length,
                fps=self.fps,
                where=where,
                state=state,
                action=action,
                reward=reward,
                frames=frames,
            )

    def _task(self, name: str) -> str:
        meta = _json_attr(self._demo(name), "ep_meta", self.path)
        return str(meta.get("lang") or self.task)

    def content_files(self) -> list[Path]:
        return [self.path]

    def unknown_camera(self, camera: str | None) -> str:
        if camera is None:
            return f"{self.path} has no camera (no (T, H, W, 3) uint8 array in its obs/)"
        return (
            f"camera {camera!r} is not in {self.path}: its cameras are "
            f"{', '.join(self.cameras) or 'none (no (T, H, W, 3) uint8 arrays in obs/)'}"
        )

    def close(self) -> None:
        self._file.close()


def _member(
    parent: h5py.Group, name: str, where: str, *, group: bool = False, missing: str | None = None
) -> Any:
    """``parent[name]`` if it is a hard link (external and soft links are refused, never
    followed) and, for an array, one Tessera will read (no VDS, external storage, plugins).
    A missing member is an error (``missing`` is its message when given), or None when
    ``missing`` is ``""``."""
    link = parent.get(name, getlink=True)
    path = f"{where}/{name}"
    if link is None:
        if missing == "":
            return None
        raise InvalidDataset(missing or f"{path} is missing", code="not_a_source")
    if not isinstance(link, h5py.HardLink):
        raise InvalidDataset(
            f"{path} is a link; only plain groups and arrays are read", code="external_link"
        )
    obj = parent[name]
    if group != isinstance(obj, h5py.Group):
        raise InvalidDataset(f"{path} is {'not ' if group else ''}a group", code="bad_member")
    if not group:
        check_dataset_object(obj, path, _LIMITS)
    return obj


def _json_attr(obj: h5py.HLObject, name: str, path: Path) -> dict[str, Any]:
    raw = obj.attrs.get(name)
    if raw is None:
        return {}
    try:
        value = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except ValueError:
        raise InvalidDataset(
            f"{path}: attribute {name} of {obj.name} is not JSON", code="bad_json"
        ) from None
    return value if isinstance(value, dict) else {}


def _is_image(dset: h5py.Dataset) -> bool:
    return dset.ndim == 4 and dset.dtype == np.uint8 and dset.shape[-1] == 3
