"""Seeded synthetic robot datasets in the exact layouts Tessera ingests (tests and benchmarks).

- :func:`write_lerobot_v30`: a LeRobot codebase v3.0 root as LeRobot 0.6.1 writes it
  (``meta/info.json``, ``meta/stats.json``, ``meta/tasks.parquet``,
  ``meta/episodes/chunk-000/file-000.parquet``, ``data/chunk-000/file-NNN.parquet`` with one row
  group per episode, ``videos/<camera>/chunk-000/file-NNN.mp4`` holding several episodes, each at
  ``[from_timestamp, to_timestamp)``);
- :func:`write_lerobot_v21`: a v2.1 root (``meta/episodes.jsonl``, ``meta/tasks.jsonl``,
  ``meta/episodes_stats.jsonl``, one parquet and one mp4 per episode, timestamps from 0);
- :func:`write_robomimic`: a robomimic-style HDF5 (``data/demo_N/{actions, rewards, dones,
  states, obs/*}``, ``mask/``), images as uint8 ``(T, H, W, 3)`` arrays.

Every frame carries its own identity: the top row of the image is 16 black or white blocks
spelling ``episode_index`` (high byte) and ``frame_index`` (low byte), which survive lossy
video codecs, so a test can tell which frame of which episode it was handed
(:func:`frame_code`). The agent (a bright square) sits at the episode's state.

Behaviours make quality metrics and near-duplicates testable: ``"idle"`` (barely moves),
``"jerky"`` (high-frequency noise on its actions) and ``("replay", k)`` (episode k with a
perturbation of 1e-3).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

TASKS = (
    "Push the T-shaped block onto the green target.",
    "Move the agent to the top-left corner.",
    "Circle the agent around the T-shaped block.",
)
WORLD = 512.0  # state units: a PushT-like 512 x 512 table

Behaviour = str | tuple[str, int]


@dataclass(frozen=True)
class SyntheticEpisode:
    index: int
    task_index: int
    state: np.ndarray  # (T, 2) float32
    action: np.ndarray  # (T, 2) float32
    reward: np.ndarray  # (T,) float32
    success: np.ndarray  # (T,) bool

    @property
    def length(self) -> int:
        return len(self.state)


def synthetic_episodes(
    n: int,
    frames: int | tuple[int, int] = (20, 40),
    *,
    seed: int = 0,
    behaviours: Mapping[int, Behaviour] | None = None,
    tasks: Sequence[str] = TASKS,
) -> list[SyntheticEpisode]:
    """``n`` seeded episodes: an agent moving from a random start to a random goal."""
    rng = np.random.default_rng(seed)
    behaviours = dict(behaviours or {})
    out: list[SyntheticEpisode] = []
    for i in range(n):
        length = frames if isinstance(frames, int) else int(rng.integers(frames[0], frames[1] + 1))
        start, goal = rng.uniform(40, WORLD - 40, size=(2, 2))
        how = behaviours.get(i, "normal")
        if isinstance(how, tuple):
            src = out[how[1]]
            wiggle = rng.normal(0, 1e-3, size=src.state.shape).astype(np.float32)
            out.append(
                SyntheticEpisode(
                    i,
                    src.task_index,
                    src.state + wiggle,
                    src.action + wiggle,
                    src.reward,
                    src.success,
                )
            )
            continue
        t = np.linspace(0.0, 1.0, length)[:, None]
        ease = 3 * t**2 - 2 * t**3
        if how == "idle":
            goal = start + rng.normal(0, 0.5, size=2)
        path = start + (goal - start) * ease + rng.normal(0, 0.3, size=(length, 2)).cumsum(0)
        action = np.vstack([path[1:], path[-1:]])
        if how == "jerky":
            action = action + rng.normal(0, 25.0, size=action.shape)
        reward = np.clip(1 - np.linalg.norm(path - goal, axis=1) / WORLD, 0, 1) ** 4
        success = np.zeros(length, dtype=bool)
        success[-1] = bool(rng.random() < 0.5)
        out.append(
            SyntheticEpisode(
                i,
                int(rng.integers(len(tasks))),
                path.astype(np.float32),
                action.astype(np.float32),
                reward.astype(np.float32),
                success,
            )
        )
    return out


def frame_code(frame: np.ndarray) -> tuple[int, int]:
    """``(episode_index % 256, frame_index % 256)`` read back from a rendered frame."""
    width = frame.shape[1] // 16
    bits = [
        int(frame[: width - 1, k * width : (k + 1) * width - 1].mean() > 127) for k in range(16)
    ]
    value = int("".join(map(str, bits)), 2)
    return value >> 8, value & 0xFF


def render(episode: SyntheticEpisode, size: int) -> np.ndarray:
    """The episode's frames, ``(T, size, size, 3)`` uint8: background by task, the agent at the
    state, the identity code on the top row."""
    frames = np.empty((episode.length, size, size, 3), dtype=np.uint8)
    frames[:] = np.array(
        [[60, 70, 90], [90, 60, 70], [70, 90, 60]][episode.task_index % 3], dtype=np.uint8
    )
    width = size // 16
    half = max(2, size // 24)
    for f, (x, y) in enumerate(episode.state):
        px, py = int(x / WORLD * (size - 1)), int(y / WORLD * (size - 1))
        py = max(py, width + half)
        frames[f, py - half : py + half, max(px - half, 0) : px + half] = (240, 200, 40)
        code = ((episode.index & 0xFF) << 8) | (f & 0xFF)
        for k in range(16):
            bit = (code >> (15 - k)) & 1
            frames[f, :width, k * width : (k + 1) * width] = 255 if bit else 0
    return frames


def encode_video(path: Path, clips: Sequence[np.ndarray], fps: int, codec: str = "libx264") -> None:
    """Encode frames (clips one after the other) as an MP4, GOP 2 as LeRobot does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = clips[0].shape[1:3]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"g": "2", "crf": "18", "preset": "ultrafast", "bf": "0"}
        elif codec == "libsvtav1":
            stream.options = {"g": "2", "crf": "30", "preset": "12"}
        pts = 0
        for clip in clips:
            for image in clip:
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = pts
                pts += 1
                container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _features(size: int, camera: str | None, fps: int, codec: str) -> dict[str, Any]:
    features: dict[str, Any] = {}
    if camera is not None:
        features[camera] = {
            "dtype": "video",
            "shape": [size, size, 3],
            "names": ["height", "width", "channels"],
            "info": {
                "video.height": size,
                "video.width": size,
                "video.codec": codec,
                "video.pix_fmt": "yuv420p",
                "video.fps": fps,
                "video.channels": 3,
                "has_audio": False,
            },
        }
    features["observation.state"] = {"dtype": "float32", "shape": [2], "names": ["x", "y"]}
    features["action"] = {"dtype": "float32", "shape": [2], "names": ["x", "y"]}
    features["next.reward"] = {"dtype": "float32", "shape": [1], "names": None}
    features["next.success"] = {"dtype": "bool", "shape": [1], "names": None}
    features["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
    for name in ("frame_index", "episode_index", "index", "task_index"):
        features[name] = {"dtype": "int64", "shape": [1], "names": None}
    return features


def _frame_table(episodes: Sequence[SyntheticEpisode], fps: int, first_index: int) -> pa.Table:
    state = np.concatenate([e.state for e in episodes])
    action = np.concatenate([e.action for e in episodes])
    frame_index = np.concatenate([np.arange(e.length) for e in episodes])
    return pa.table(
        {
            "observation.state": pa.FixedSizeListArray.from_arrays(pa.array(state.ravel()), 2),
            "action": pa.FixedSizeListArray.from_arrays(pa.array(action.ravel()), 2),
            "next.reward": pa.array(np.concatenate([e.reward for e in episodes])),
            "next.success": pa.array(np.concatenate([e.success for e in episodes])),
            "timestamp": pa.array((frame_index / fps).astype(np.float32)),
            "frame_index": pa.array(frame_index.astype(np.int64)),
            "episode_index": pa.array(
                np.concatenate([np.full(e.length, e.index) for e in episodes])
            ),
            "index": pa.array(np.arange(first_index, first_index + len(state), dtype=np.int64)),
            "task_index": pa.array(
                np.concatenate([np.full(e.length, e.task_index) for e in episodes])
            ),
        }
    )


def _write_row_group_per_episode(table: pa.Table, lengths: Sequence[int], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, table.schema, compression="snappy") as writer:
        start = 0
        for length in lengths:
            writer.write_table(table.slice(start, length))
            start += length


def _stats(episodes: Sequence[SyntheticEpisode]) -> dict[str, dict[str, list[float]]]:
    out = {}
    for key, attr in (("observation.state", "state"), ("action", "action")):
        values = np.concatenate([getattr(e, attr) for e in episodes]).astype(np.float64)
        out[key] = {
            "mean": values.mean(0).tolist(),
            "std": values.std(0).tolist(),
            "min": values.min(0).tolist(),
            "max": values.max(0).tolist(),
            "count": [len(values)],
        }
    return out


def _info(
    version: str,
    fps: int,
    episodes: Sequence[SyntheticEpisode],
    size: int,
    camera: str | None,
    codec: str,
    tasks: Sequence[str],
) -> dict[str, Any]:
    return {
        "codebase_version": version,
        "robot_type": "synthetic",
        "fps": fps,
        "features": _features(size, camera, fps, codec),
        "total_episodes": len(episodes),
        "total_frames": sum(e.length for e in episodes),
        "total_tasks": len(tasks),
        "chunks_size": 1000,
        "splits": {"train": f"0:{len(episodes)}"},
    }


def write_lerobot_v30(
    root: Path,
    episodes: Sequence[SyntheticEpisode],
    *,
    fps: int = 10,
    size: int = 96,
    camera: str | None = "observation.image",
    codec: str = "libx264",
    episodes_per_video: int = 25,
    episodes_per_data_file: int = 40,
    stats: bool = True,
    tasks: Sequence[str] = TASKS,
) -> Path:
    """A LeRobot v3.0 root at ``root`` with ``episodes`` (see the module docstring)."""
    root = Path(root)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    info = _info("v3.0", fps, episodes, size, camera, codec, tasks)
    info.update(
        data_files_size_in_mb=100,
        video_files_size_in_mb=200,
        data_path="data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        video_path="videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
        if camera
        else None,
    )
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    if stats:
        (root / "meta" / "stats.json").write_text(json.dumps(_stats(episodes), indent=4))
    frame = pd.DataFrame(
        {"task_index": range(len(tasks))}, index=pd.Index(list(tasks), name="task")
    )
    frame.to_parquet(root / "meta" / "tasks.parquet")
    rows: dict[str, list[Any]] = {
        k: []
        for k in (
            "episode_index",
            "tasks",
            "length",
            "data/chunk_index",
            "data/file_index",
            "dataset_from_index",
            "dataset_to_index",
        )
    }
    offset = 0
    for file_index, start in enumerate(range(0, len(episodes), episodes_per_data_file)):
        group = episodes[start : start + episodes_per_data_file]
        path = root / f"data/chunk-000/file-{file_index:03d}.parquet"
        _write_row_group_per_episode(
            _frame_table(group, fps, offset), [e.length for e in group], path
        )
        for e in group:
            rows["episode_index"].append(e.index)
            rows["tasks"].append([tasks[e.task_index]])
            rows["length"].append(e.length)
            rows["data/chunk_index"].append(0)
            rows["data/file_index"].append(file_index)
            rows["dataset_from_index"].append(offset)
            rows["dataset_to_index"].append(offset + e.length)
            offset += e.length
    if camera is not None:
        rows.update(_write_v30_videos(root, episodes, fps, size, camera, codec, episodes_per_video))
    rows["meta/episodes/chunk_index"] = [0] * len(episodes)
    rows["meta/episodes/file_index"] = [0] * len(episodes)
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), path)
    return root


def _write_v30_videos(
    root: Path,
    episodes: Sequence[SyntheticEpisode],
    fps: int,
    size: int,
    camera: str,
    codec: str,
    per_file: int,
) -> dict[str, list[Any]]:
    key = f"videos/{camera}"
    rows: dict[str, list[Any]] = {
        f"{key}/{k}": [] for k in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")
    }
    for file_index, start in enumerate(range(0, len(episodes), per_file)):
        group = episodes[start : start + per_file]
        path = root / f"videos/{camera}/chunk-000/file-{file_index:03d}.mp4"
        encode_video(path, [render(e, size) for e in group], fps, codec)
        frames_before = 0
        for e in group:
            rows[f"{key}/chunk_index"].append(0)
            rows[f"{key}/file_index"].append(file_index)
            rows[f"{key}/from_timestamp"].append(frames_before / fps)
            frames_before += e.length
            rows[f"{key}/to_timestamp"].append(frames_before / fps)
    return rows


def write_lerobot_v21(
    root: Path,
    episodes: Sequence[SyntheticEpisode],
    *,
    fps: int = 10,
    size: int = 96,
    camera: str | None = "observation.image",
    codec: str = "libx264",
    tasks: Sequence[str] = TASKS,
) -> Path:
    """A LeRobot v2.1 root at ``root``: one parquet and one mp4 per episode, JSON-lines meta."""
    root = Path(root)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    info = _info("v2.1", fps, episodes, size, camera, codec, tasks)
    info.update(
        total_chunks=1,
        total_videos=len(episodes) if camera else 0,
        data_path="data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        video_path="videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
        if camera
        else None,
    )
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    _write_jsonl(
        root / "meta/tasks.jsonl", [{"task_index": i, "task": t} for i, t in enumerate(tasks)]
    )
    _write_jsonl(
        root / "meta/episodes.jsonl",
        [
            {"episode_index": e.index, "tasks": [tasks[e.task_index]], "length": e.length}
            for e in episodes
        ],
    )
    _write_jsonl(
        root / "meta/episodes_stats.jsonl",
        [{"episode_index": e.index, "stats": _stats([e])} for e in episodes],
    )
    offset = 0
    for e in episodes:
        path = root / f"data/chunk-000/episode_{e.index:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_frame_table([e], fps, offset), path)
        offset += e.length
        if camera is not None:
            video = root / f"videos/chunk-000/{camera}/episode_{e.index:06d}.mp4"
            encode_video(video, [render(e, size)], fps, codec)
    return root


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_robomimic(
    path: Path,
    episodes: Sequence[SyntheticEpisode],
    *,
    size: int = 84,
    camera: str | None = "agentview_image",
    env_name: str = "PushT",
    first_demo: int = 0,
    problem_info: str | None = None,
) -> Path:
    """A robomimic-style HDF5 at ``path``: ``data/demo_N`` (N from ``first_demo``), low-dim obs
    ``robot0_eef_pos`` (the state) and ``object`` (a constant), ``mask/train`` and
    ``mask/valid``; LIBERO's ``problem_info`` attribute when given (its language instruction)."""
    path = Path(path)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps(
            {"env_name": env_name, "env_type": 1, "env_kwargs": {"control_freq": 20}}
        )
        if problem_info is not None:
            data.attrs["problem_info"] = json.dumps({"language_instruction": problem_info})
        names = []
        for e in episodes:
            name = f"demo_{e.index + first_demo}"
            names.append(name)
            demo = data.create_group(name)
            demo.attrs["num_samples"] = e.length
            demo["actions"] = np.clip(e.action / WORLD * 2 - 1, -1, 1)
            demo["rewards"] = e.reward.astype(np.float64)
            dones = np.zeros(e.length, dtype=np.int64)
            dones[-1] = 1
            demo["dones"] = dones
            demo["states"] = np.hstack([e.state, e.action]).astype(np.float64)
            demo["obs/robot0_eef_pos"] = e.state.astype(np.float64)
            demo["obs/object"] = np.ones((e.length, 3))
            if camera is not None:
                demo.create_dataset(f"obs/{camera}", data=render(e, size), compression="gzip")
        data.attrs["total"] = sum(e.length for e in episodes)
        cut = max(1, len(names) // 10)
        f["mask/valid"] = np.array(names[:cut], dtype="S")
        f["mask/train"] = np.array(names[cut:], dtype="S")
    return path


def seek_and_decode(
    path: Path,
    timestamps: Sequence[float],
    tolerance_s: float = 1e-4,
    *,
    convert_every_frame: bool = False,
) -> np.ndarray:
    """The frames at ``timestamps`` of one episode, read the way LeRobot's PyAV loader reads
    them: seek to the keyframe at or before the first, decode forward to the last, take the
    decoded frame nearest each timestamp (within ``tolerance_s``). The reference that
    ``tessera ingest``'s one-pass decoding must equal bit for bit, and the benchmark's baseline
    (``convert_every_frame``: every decoded frame made RGB, as LeRobot's loader does)."""
    first, last = min(timestamps), max(timestamps)
    decoded: list[Any] = []
    stamps: list[float] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        container.seek(
            round(first / stream.time_base) - 1, backward=True, any_frame=False, stream=stream
        )
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            stamps.append(float(frame.pts * stream.time_base))
            decoded.append(frame.to_ndarray(format="rgb24") if convert_every_frame else frame)
            if stamps[-1] >= last:
                break
    distance = np.abs(np.asarray(timestamps)[:, None] - np.asarray(stamps)[None, :])
    nearest = distance.argmin(1)
    if (distance[np.arange(len(timestamps)), nearest] >= tolerance_s).any():
        raise ValueError(f"{path}: a timestamp has no frame within {tolerance_s} s")
    if convert_every_frame:
        return np.stack([decoded[k] for k in nearest])
    return np.stack([decoded[k].to_ndarray(format="rgb24") for k in nearest])
