"""A local LeRobot dataset root, codebase v3.0 or v2.1, read with pyarrow (no LeRobot needed).

The layouts follow LeRobot 0.6.1's own code (``src/lerobot/datasets/utils.py``,
``dataset_metadata.py``, ``io_utils.py``, ``dataset_reader.py`` and
``scripts/convert_dataset_v21_to_v30.py`` at tag v0.6.1):

v3.0
    ``meta/info.json`` (``codebase_version``, ``fps``, ``features``, ``data_path``,
    ``video_path``), ``meta/stats.json``, ``meta/tasks.parquet``, ``meta/episodes/chunk-*/
    file-*.parquet`` (one row per episode: ``episode_index``, ``tasks``, ``length``,
    ``data/chunk_index``, ``data/file_index``, ``videos/<camera>/{chunk_index, file_index,
    from_timestamp, to_timestamp}``), ``data/chunk-*/file-*.parquet`` (several episodes per file)
    and ``videos/<camera>/chunk-*/file-*.mp4`` (several episodes per file). A frame's image is the
    one decoded at ``from_timestamp + timestamp`` of its episode's video file.
v2.1
    ``meta/episodes.jsonl`` (``episode_index``, ``tasks``, ``length``), ``meta/tasks.jsonl``,
    ``meta/episodes_stats.jsonl``; one parquet and one mp4 per episode, in chunk
    ``episode_index // chunks_size``; a frame's image is the one at its ``timestamp``.
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tessera_gpu.errors import InvalidDataset, InvalidRequest, NotFound
from tessera_gpu.ingest.episodes import Episode, FeatureStats, RunningStats, VideoClip

__all__ = ["SUPPORTED_VERSIONS", "LeRobotSource", "is_lerobot_root"]

SUPPORTED_VERSIONS = ("v3.0", "v2.1")
_STATE = "observation.state"
_ACTION = "action"
_REWARD = "next.reward"
_SUCCESS = "next.success"
_PLACEHOLDERS = {"chunk_index", "file_index", "video_key", "episode_chunk", "episode_index"}


def is_lerobot_root(path: Path) -> bool:
    return path.is_dir() and (path / "meta" / "info.json").is_file()


@dataclass(frozen=True, slots=True)
class _EpisodeMeta:
    """One row of the episode index; kept for every episode, so kept small (~0.2 KB)."""

    index: int
    task: str
    length: int
    data_file: Path
    video: tuple[tuple[str, Path, float], ...]  # (camera, file, from_timestamp)


class LeRobotSource:
    """A LeRobot root (v3.0 or v2.1): its episodes in index order, read file by file."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root)
        if not self.path.exists():
            raise NotFound(f"No such file or directory: {self.path}", code="file_not_found")
        if not is_lerobot_root(self.path):
            raise InvalidDataset(
                f"{self.path} is not a LeRobot dataset root: it has no meta/info.json",
                code="not_a_source",
            )
        self.name = self.path.resolve().name
        self._root = os.path.realpath(self.path)
        self._inside: set[str] = set()  # folders already checked to lie inside the root
        self._paths: dict[tuple[Any, ...], Path] = {}
        self._tasks: dict[str, str] = {}
        self.info = _read_json(self.path / "meta" / "info.json")
        self.version = str(self.info.get("codebase_version"))
        if self.version not in SUPPORTED_VERSIONS:
            raise InvalidDataset(
                f"{self.path / 'meta' / 'info.json'}: codebase_version {self.version} is not "
                f"supported (only {' and '.join(SUPPORTED_VERSIONS)}); convert it with LeRobot's "
                "lerobot.scripts.convert_dataset_v21_to_v30",
                code="unsupported_version",
            )
        self.fps = float(self.info.get("fps") or 0)
        if self.fps <= 0:
            raise InvalidDataset(f"{self.path}/meta/info.json: fps must be > 0", code="bad_info")
        features = self.info.get("features")
        if not isinstance(features, dict):
            raise InvalidDataset(f"{self.path}/meta/info.json has no features", code="bad_info")
        self.features: dict[str, dict[str, Any]] = features
        self.cameras = tuple(k for k, f in features.items() if f.get("dtype") == "video")
        #: cameras stored as PNG images in the parquet files (use_videos=False): not decoded
        self.image_cameras = tuple(k for k, f in features.items() if f.get("dtype") == "image")
        self.state_keys = _state_keys(features)
        self.action_key = _ACTION if _numeric(features.get(_ACTION)) else None
        self.signals = frozenset(
            name for name, key in (("success", _SUCCESS), ("reward", _REWARD)) if key in features
        )
        self._meta = self._read_v30_meta() if self.version == "v3.0" else self._read_v21_meta()
        self.n_episodes = len(self._meta)

    # ---- metadata ---------------------------------------------------------------------------

    def _read_v30_meta(self) -> list[_EpisodeMeta]:
        files = sorted((self.path / "meta" / "episodes").glob("*/*.parquet"))
        if not files:
            raise InvalidDataset(
                f"{self.path}/meta/episodes/ holds no parquet file (a v3.0 root lists its "
                "episodes there)",
                code="bad_episodes",
            )
        out = []
        for file in files:
            table = _read_parquet(file, None, where="episode metadata")
            columns = [c for c in table.column_names if not c.startswith("stats/")]
            for row in table.select(columns).to_pylist():
                out.append(self._v30_episode(row, file))
        return sorted(out, key=lambda m: m.index)

    def _v30_episode(self, row: dict[str, Any], file: Path) -> _EpisodeMeta:
        try:
            data = self._file(
                "data_path",
                chunk_index=int(row["data/chunk_index"]),
                file_index=int(row["data/file_index"]),
            )
            video = []
            for cam in self.cameras:
                key = f"videos/{cam}"
                if f"{key}/file_index" in row:
                    path = self._file(
                        "video_path",
                        video_key=cam,
                        chunk_index=int(row[f"{key}/chunk_index"]),
                        file_index=int(row[f"{key}/file_index"]),
                    )
                    video.append((cam, path, float(row[f"{key}/from_timestamp"])))
            task = self._task(row.get("tasks"))
            index, length = int(row["episode_index"]), int(row["length"])
            return _EpisodeMeta(index, task, length, data, tuple(video))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidDataset(
                f"{file}: an episode row lacks or garbles {exc}", code="bad_episodes"
            ) from None

    def _read_v21_meta(self) -> list[_EpisodeMeta]:
        chunks = int(self.info.get("chunks_size") or 1000)
        path = self.path / "meta" / "episodes.jsonl"
        out = []
        for row in _read_jsonl(path):
            try:
                index = int(row["episode_index"])
                names = {"episode_chunk": index // chunks, "episode_index": index}
                video = tuple(
                    (cam, self._file("video_path", video_key=cam, **names), 0.0)
                    for cam in self.cameras
                )
                data = self._file("data_path", **names)
                task = self._task(row.get("tasks"))
                out.append(_EpisodeMeta(index, task, int(row["length"]), data, video))
            except (KeyError, TypeError, ValueError) as exc:
                raise InvalidDataset(
                    f"{path}: an episode line lacks or garbles {exc}", code="bad_episodes"
                ) from None
        return sorted(out, key=lambda m: m.index)

    def _task(self, tasks: Any) -> str:
        """The episode's task string, one object per distinct task."""
        text = _task_of(tasks)
        return self._tasks.setdefault(text, text)

    def _file(self, template_key: str, **values: Any) -> Path:
        """A path from info.json's ``data_path`` / ``video_path`` template: only LeRobot's own
        placeholders, and inside the root (a template cannot point elsewhere)."""
        key = (template_key, *sorted(values.items()))
        if key in self._paths:  # episodes share files: one Path each, not one per episode
            return self._paths[key]
        template = str(self.info.get(template_key) or "")
        info = self.path / "meta" / "info.json"
        if not template:
            raise InvalidDataset(f"{info} has no {template_key}", code="bad_info")
        for _, name, _, _ in string.Formatter().parse(template):
            if name is not None and name not in _PLACEHOLDERS:
                raise InvalidDataset(
                    f"{info}: {template_key} uses {{{name}}}, which LeRobot does not define",
                    code="bad_info",
                )
        path = self.path / template.format(**values)
        folder = os.path.realpath(path.parent)
        if folder not in self._inside:
            if os.path.commonpath([self._root, folder]) != self._root:
                raise InvalidDataset(
                    f"{info}: {template_key} leads outside the dataset root ({path})",
                    code="outside_root",
                )
            self._inside.add(folder)
        self._paths[key] = path
        return path

    # ---- statistics -------------------------------------------------------------------------

    def statistics(self) -> tuple[FeatureStats | None, FeatureStats | None]:
        """From ``meta/stats.json`` (v3.0), else ``meta/episodes_stats.jsonl`` (v2.1), else a
        first pass over the parquet columns."""
        stats = self._stats_file()
        if stats is not None:
            return stats
        state, action = RunningStats(), RunningStats()
        for table in self._data_tables():
            if self.state_keys:
                state.add(_matrix(table, self.state_keys))
            if self.action_key:
                action.add(_matrix(table, [self.action_key]))
        return state.result(), action.result()

    def _stats_file(self) -> tuple[FeatureStats | None, FeatureStats | None] | None:
        path = self.path / "meta" / "stats.json"
        if path.is_file():
            stats = _read_json(path)
            found = self._from_stats(lambda key: stats.get(key), f"{path}")
            if found is not None:
                return found
        per_episode = self.path / "meta" / "episodes_stats.jsonl"
        if not per_episode.is_file():
            return None
        running = {key: RunningStats() for key in [*self.state_keys, self.action_key] if key}
        for row in _read_jsonl(per_episode):
            for key, acc in running.items():
                entry = row.get("stats", {}).get(key, {})
                if not {"mean", "std", "count"} <= set(entry):
                    return None
                count = float(np.ravel(entry["count"])[0])
                std = np.asarray(entry["std"], dtype=np.float64).ravel()
                acc.merge(count, np.asarray(entry["mean"], np.float64).ravel(), std**2 * count)
        merged = {key: acc.result() for key, acc in running.items()}
        return self._from_stats(lambda key: _as_entry(merged.get(key)), str(per_episode))

    def _from_stats(
        self, entry: Any, where: str
    ) -> tuple[FeatureStats | None, FeatureStats | None] | None:
        parts = []
        for key in self.state_keys:
            found = FeatureStats.from_lerobot(entry(key), self.width(key), f"{where} [{key}]")
            if found is None:
                return None
            parts.append(found)
        state = (
            FeatureStats(
                np.concatenate([p.mean for p in parts]), np.concatenate([p.std for p in parts])
            )
            if parts
            else None
        )
        action = None
        if self.action_key:
            key = self.action_key
            action = FeatureStats.from_lerobot(entry(key), self.width(key), f"{where} [{key}]")
            if action is None:
                return None
        return state, action

    def width(self, key: str) -> int:
        return int(np.prod(self.features[key].get("shape") or [1]))

    # ---- episodes ---------------------------------------------------------------------------

    def episodes(self, camera: str | None) -> Iterator[Episode]:
        if camera is not None and camera not in self.cameras:
            raise InvalidRequest(self.unknown_camera(camera), code="unknown_camera")
        for meta in self._meta:
            if meta.length <= 0:
                raise InvalidDataset(
                    f"episode {meta.index} of {self.path} has 0 frames", code="empty_episode"
                )
        runs: list[list[_EpisodeMeta]] = []  # consecutive episodes of one data file
        for meta in self._meta:
            if runs and runs[-1][0].data_file == meta.data_file:
                runs[-1].append(meta)
            else:
                runs.append([meta])
        for run in runs:
            file = run[0].data_file
            table = _read_parquet(file, self._columns(), where=f"episode {run[0].index}")
            yield from self._split(table, file, run, camera)

    def _columns(self) -> list[str]:
        wanted = [
            *self.state_keys,
            self.action_key,
            _REWARD,
            _SUCCESS,
            "timestamp",
            "episode_index",
        ]
        return [c for c in wanted if c and (c in self.features or c == "episode_index")]

    def _split(
        self, table: pa.Table, file: Path, metas: list[_EpisodeMeta], camera: str | None
    ) -> Iterator[Episode]:
        owner = table.column("episode_index").to_numpy()
        starts = {int(i): int(s) for i, s in zip(*np.unique(owner, return_index=True), strict=True)}
        for meta in metas:
            where = f"episode {meta.index} of {self.path.name}"
            start = starts.get(meta.index)
            rows = table.slice(start, meta.length) if start is not None else None
            if (
                rows is None
                or rows.num_rows != meta.length
                or (rows.column("episode_index").to_numpy() != meta.index).any()
            ):
                found = int(np.count_nonzero(owner == meta.index))
                raise InvalidDataset(
                    f"{file} holds {found} frames of episode {meta.index}, but its metadata "
                    f"says {meta.length}",
                    code="length_mismatch",
                )
            yield self._episode(meta, rows, camera, where)

    def _episode(
        self, meta: _EpisodeMeta, rows: pa.Table, camera: str | None, where: str
    ) -> Episode:
        frames = None
        if camera is not None:
            path, start = next(((p, s) for c, p, s in meta.video if c == camera), (None, 0.0))
            if path is None or not path.is_file():
                raise InvalidDataset(
                    f"video file {path} is missing ({where})", code="missing_video"
                )
            stamps = rows.column("timestamp").to_numpy().astype(np.float64)
            frames = VideoClip(path, start + stamps)
        names = rows.column_names
        return Episode(
            index=meta.index,
            task=meta.task,
            length=meta.length,
            fps=self.fps,
            where=where,
            state=_matrix(rows, self.state_keys) if self.state_keys else None,
            action=_matrix(rows, [self.action_key]) if self.action_key else None,
            reward=_matrix(rows, [_REWARD])[:, 0] if _REWARD in names else None,
            success=_matrix(rows, [_SUCCESS])[:, 0] > 0 if _SUCCESS in names else None,
            frames=frames,
        )

    def _data_tables(self) -> Iterator[pa.Table]:
        columns = [c for c in self._columns() if c in (*self.state_keys, self.action_key)]
        for file in dict.fromkeys(m.data_file for m in self._meta):
            yield _read_parquet(file, columns, where="statistics")

    def content_files(self) -> list[Path]:
        return sorted(p for p in self.path.rglob("*") if p.is_file() and ".cache" not in p.parts)

    def unknown_camera(self, camera: str | None) -> str:
        stored = ", ".join(self.image_cameras)
        if camera is None:
            if stored:
                return (
                    f"{self.path} stores its cameras ({stored}) as images in its parquet "
                    "files, and tessera ingest reads video cameras only (convert them with "
                    "lerobot-edit-dataset --operation.type convert_image_to_video)"
                )
            return f"{self.path} has no camera (no video feature in meta/info.json)"
        if camera in self.image_cameras:
            return (
                f"camera {camera!r} of {self.path} is stored as images in its parquet files; "
                "tessera ingest reads video cameras only (convert it with lerobot-edit-"
                "dataset --operation.type convert_image_to_video, or use --no-previews)"
            )
        return (
            f"camera {camera!r} is not in {self.path}: its cameras are "
            f"{', '.join(self.cameras) or 'none (no video features)'}"
        )

    def close(self) -> None:
        return None


# ---- reading ----------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidDataset(f"{path} is missing", code="missing_file") from None
    except (OSError, ValueError) as exc:
        raise InvalidDataset(f"{path} is not readable JSON: {exc}", code="bad_json") from None


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise InvalidDataset(f"{path} is missing", code="missing_file") from None
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                yield json.loads(line)
            except ValueError as exc:
                raise InvalidDataset(
                    f"{path}, line {number}: not JSON ({exc})", code="bad_json"
                ) from None


def _read_parquet(path: Path, columns: list[str] | None, *, where: str) -> pa.Table:
    if not path.is_file():
        raise InvalidDataset(f"parquet file {path} is missing ({where})", code="missing_data")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise InvalidDataset(
            f"{path} is not a readable parquet file ({where}): {exc}", code="corrupt_parquet"
        ) from None


def _matrix(table: pa.Table, keys: list[str]) -> np.ndarray:
    """The columns ``keys`` side by side as a ``(rows, F)`` float64 array (list columns
    flattened, scalars as one feature)."""
    parts = []
    for key in keys:
        column = table.column(key).combine_chunks()
        if (
            pa.types.is_list(column.type)
            or pa.types.is_fixed_size_list(column.type)
            or pa.types.is_large_list(column.type)
        ):
            values = column.flatten().to_numpy(zero_copy_only=False)
            parts.append(values.reshape(len(column), -1).astype(np.float64))
        else:
            parts.append(column.to_numpy(zero_copy_only=False).astype(np.float64)[:, None])
    return np.hstack(parts)


def _state_keys(features: dict[str, dict[str, Any]]) -> list[str]:
    if _numeric(features.get(_STATE)):
        return [_STATE]
    return sorted(k for k, f in features.items() if k.startswith("observation.") and _numeric(f))


def _numeric(feature: Any) -> bool:
    return isinstance(feature, dict) and feature.get("dtype") in ("float32", "float64", "float16")


def _task_of(tasks: Any) -> str:
    if isinstance(tasks, str):
        return tasks
    if isinstance(tasks, list | tuple) and tasks:
        return " | ".join(str(t) for t in tasks)
    return ""


def _as_entry(stats: FeatureStats | None) -> dict[str, Any] | None:
    return None if stats is None else {"mean": stats.mean, "std": stats.std}
