"""``ingest(source, out)``: a LeRobot root or robomimic file to a spec-valid Tessera file.

The flow, streamed so that memory does not grow with the dataset:

1. open the source (:mod:`.sources`) and get its per-feature statistics (its own files, else
   a first pass over the state and action columns: no pixels);
2. read the episodes in the source's order, in batches of consecutive episodes;
3. each batch goes to a worker thread (``workers``, default one per CPU): its frames are read
   (one forward decode per video file, :mod:`.video`), and each episode gets its trajectory
   embedding (:mod:`.trajectory`), quality metrics (:mod:`.metrics`), thumbnail (first frame,
   JPEG), GIF (16 evenly spaced frames, 128 px) and image embedding (:mod:`.images`);
4. batches are written in order as they finish (:class:`.output.EpisodeFiles`): the file, or
   its shards above 200,000 episodes, appear whole when the last episode is in, or not at all.

Episode ids are ``ep_`` + the source's episode index on 6 digits (``ep_000123``); the
``episode_index`` field holds the index itself, which LeRobot exports use.
"""

from __future__ import annotations

import os
import shlex
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from tessera_gpu.errors import InvalidRequest
from tessera_gpu.ingest.episodes import Episode, Source
from tessera_gpu.ingest.images import ImageEncoder, ImageSettings, default_threads
from tessera_gpu.ingest.metrics import quality_metrics
from tessera_gpu.ingest.output import MAX_SHARD, EpisodeFiles, FieldType, Row
from tessera_gpu.ingest.sources import open_source
from tessera_gpu.ingest.trajectory import Reducer, TrajectoryEmbedder, combine
from tessera_gpu.ingest.video import FrameRequest, read_frames
from tessera_gpu.io.writer import encode_gif, encode_thumbnail

__all__ = ["EMBED_MODES", "GIF_FRAMES", "IngestOptions", "IngestResult", "ingest", "join_line"]

EMBED_MODES = ("trajectory", "image", "both")
GIF_FRAMES = 16
_BATCH_EPISODES = 16
_BATCH_FRAMES = 2_000
# ``episodes_done(done, total)``: episodes written so far, of how many
EpisodesDone = Callable[[int, int], None]


@dataclass(frozen=True)
class IngestOptions:
    """Every choice ``tessera ingest`` offers; the defaults are the command's."""

    embed: Literal["trajectory", "image", "both"] = "trajectory"
    camera: str | None = None  # default: the source's first camera
    thumbnails: bool = True
    gifs: bool = True
    image: ImageSettings | None = None  # needed by embed image / both
    workers: int | None = None  # default: one per CPU
    shard_size: int = MAX_SHARD
    name: str | None = None  # the `dataset` field; default: the source's folder or file name
    fps: float | None = None  # a robomimic file's frame rate (default: its control_freq, or 20)
    id_prefix: str = "ep_"


@dataclass(frozen=True)
class IngestResult:
    paths: list[Path]
    n_episodes: int
    dim: int | None
    camera: str | None
    fields: list[str]
    seconds: float
    image_provider: str | None = None
    note: str | None = None  # something the user should know, e.g. why there are no previews


@dataclass
class _Plan:
    """What each worker needs, decided once before the first batch."""

    source: Source
    options: IngestOptions
    camera: str | None
    trajectory: TrajectoryEmbedder | None
    images: ImageEncoder | None
    dim: int | None
    both: Reducer | None
    name: str
    note: str | None = None  # e.g. why there are no previews


def ingest(
    source: str | Path,
    out: str | Path,
    options: IngestOptions = IngestOptions(),
    *,
    progress: EpisodesDone | None = None,
) -> IngestResult:
    """Ingest ``source`` into ``out`` (see the module docstring). Raises a ``TesseraError``
    naming the file (and the episode) for bad input; nothing is written then."""
    started = time.perf_counter()
    if options.embed not in EMBED_MODES:
        raise InvalidRequest(
            f"embed must be one of {', '.join(EMBED_MODES)}: got {options.embed!r}"
        )
    reader = open_source(source, fps=options.fps)
    try:
        plan = _plan(reader, options)
        workers = options.workers or len(os.sched_getaffinity(0))
        with EpisodeFiles(
            Path(out),
            reader.n_episodes,
            dim=plan.dim,
            fields=_fields(reader, plan.trajectory),
            thumbnails=options.thumbnails and plan.camera is not None,
            gifs=options.gifs and plan.camera is not None,
            shard_size=options.shard_size,
        ) as files:
            for rows in _in_order(plan, workers):
                files.write(rows)
                if progress is not None:
                    progress(files.written, reader.n_episodes)
    finally:
        reader.close()
    return IngestResult(
        files.paths,
        reader.n_episodes,
        plan.dim,
        plan.camera,
        list(files.fields),
        time.perf_counter() - started,
        plan.images.provider if plan.images else None,
        plan.note,
    )


def _plan(reader: Source, options: IngestOptions) -> _Plan:
    wants_images = options.embed in ("image", "both")
    wants_frames = wants_images or options.thumbnails or options.gifs
    camera = options.camera or (reader.cameras[0] if reader.cameras and wants_frames else None)
    if camera is not None and camera not in reader.cameras:
        raise InvalidRequest(reader.unknown_camera(camera), code="unknown_camera")
    note = None
    if wants_frames and camera is None:
        note = f"no previews: {reader.unknown_camera(None)}"
        if wants_images:
            raise InvalidRequest(
                f"--embed {options.embed} needs a camera: {reader.unknown_camera(None)}",
                code="no_camera",
            )
    state, action = reader.statistics()
    has_features = any(s is not None for s in (state, action))
    trajectory = None
    if options.embed != "image" or has_features:
        trajectory = TrajectoryEmbedder.for_source(state, action)
    images = None
    if wants_images:
        if options.image is None:
            raise InvalidRequest(
                f"--embed {options.embed} needs --image-encoder MODEL.onnx", code="no_image_encoder"
            )
        workers = options.workers or len(os.sched_getaffinity(0))
        settings = options.image
        if settings.threads is None:
            settings = ImageSettings(
                settings.model,
                settings.size,
                settings.mean,
                settings.std,
                settings.frames,
                default_threads(workers),
            )
        images = ImageEncoder(settings)
    both = None
    if options.embed == "both":
        assert trajectory is not None
        assert images is not None
        both = Reducer.to_fit(trajectory.dim + images.dim)
        dim: int | None = both.n_out
    elif options.embed == "image":
        dim = images.dim if images else None
    else:
        dim = trajectory.dim if trajectory else None
    return _Plan(
        reader, options, camera, trajectory, images, dim, both, options.name or reader.name, note
    )


def _fields(reader: Source, trajectory: TrajectoryEmbedder | None) -> dict[str, FieldType]:
    """The metadata fields, decided from what the source has."""
    out: dict[str, FieldType] = {
        "episode_index": "int",
        "task": "str",
        "episode_length": "int",
        "duration_s": "float",
    }
    if "success" in reader.signals:
        out["success"] = "bool"
    if "reward" in reader.signals:
        out["max_reward"] = "float"
    out["dataset"] = "str"
    if trajectory is not None and trajectory.state is not None:
        out.update(path_length="float", mean_speed="float", idle_fraction="float")
    if trajectory is not None and trajectory.action is not None:
        out["action_jerk"] = "float"
    if trajectory is not None and trajectory.state is not None:
        out["net_displacement"] = "float"
    return out


def _batches(plan: _Plan) -> Iterator[list[Episode]]:
    batch: list[Episode] = []
    frames = 0
    for episode in plan.source.episodes(plan.camera):
        batch.append(episode)
        frames += episode.length
        if len(batch) >= _BATCH_EPISODES or frames >= _BATCH_FRAMES:
            yield batch
            batch, frames = [], 0
    if batch:
        yield batch


def _in_order(plan: _Plan, workers: int) -> Iterator[list[Row]]:
    """The rows of each batch, in the source's order, computed ``workers`` batches at a time."""
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="tessera-ingest")
    pending: deque[Future[list[Row]]] = deque()
    try:
        for batch in _batches(plan):
            pending.append(pool.submit(_rows, plan, batch))
            while len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _rows(plan: _Plan, batch: Sequence[Episode]) -> list[Row]:
    """Everything written for a batch of episodes (runs in a worker thread)."""
    wanted = [_frame_indices(plan, e.length) for e in batch]
    requests: list[FrameRequest] = [
        (e.frames, w.all, e.where)
        for e, w in zip(batch, wanted, strict=True)
        if e.frames is not None
    ]
    decoded = iter(read_frames(requests)) if requests else iter(())
    return [
        _row(plan, e, w, next(decoded) if e.frames is not None else [])
        for e, w in zip(batch, wanted, strict=True)
    ]


@dataclass(frozen=True)
class _Wanted:
    """Which frames of an episode each output needs (positions into ``all``)."""

    all: list[int]
    thumbnail: list[int]
    gif: list[int]
    image: list[int]


def _frame_indices(plan: _Plan, length: int) -> _Wanted:
    if plan.camera is None:
        return _Wanted([], [], [], [])
    opts = plan.options
    thumb = [0] if opts.thumbnails else []
    gif = _spread(length, GIF_FRAMES) if opts.gifs else []
    image = _spread(length, plan.images.frames) if plan.images else []
    every = sorted(set(thumb + gif + image))
    where = {k: i for i, k in enumerate(every)}
    return _Wanted(
        every, [where[k] for k in thumb], [where[k] for k in gif], [where[k] for k in image]
    )


def _spread(length: int, count: int) -> list[int]:
    """``count`` frame indices evenly spaced over the episode (all of them when fewer)."""
    if length <= count:
        return list(range(length))
    return np.linspace(0, length - 1, count).astype(int).tolist()


def _row(plan: _Plan, episode: Episode, wanted: _Wanted, frames: list[np.ndarray]) -> Row:
    metadata: dict[str, object] = {
        "episode_index": episode.index,
        "task": episode.task,
        "episode_length": episode.length,
        "duration_s": episode.length / episode.fps,
        "dataset": plan.name,
    }
    if episode.success is not None:
        metadata["success"] = bool(episode.success.any())
    if episode.reward is not None:
        metadata["max_reward"] = float(episode.reward.max())
    embedding = None
    if plan.trajectory is not None:
        state, action = plan.trajectory.standardised(episode)
        metadata.update(quality_metrics(state, action, episode.fps))
        if plan.options.embed != "image":
            embedding = plan.trajectory.embed(state, action)
    if plan.images is not None:
        image = plan.images.embed_episode([frames[i] for i in wanted.image])
        if plan.both is not None and embedding is not None:
            image = combine(embedding, image, plan.both)
        embedding = image
    return Row(
        episode_id=f"{plan.options.id_prefix}{episode.index:06d}",
        embedding=embedding if plan.dim is not None else None,
        metadata=metadata,
        thumbnail=encode_thumbnail(frames[wanted.thumbnail[0]]) if wanted.thumbnail else None,
        gif=encode_gif([frames[i] for i in wanted.gif]) if wanted.gif else None,
    )


def join_line(paths: Sequence[Path], name: str) -> str:
    """The command that serves shards as one dataset."""
    first = paths[0]
    pattern = first.with_name(first.name.replace("-000", "-*"))
    return f"tessera serve {shlex.quote(str(pattern))} --join {shlex.quote(name)}"
