"""Projection jobs: one worker thread per device projects datasets one at a time.

A job moves a dataset's embeddings to the device once (kept for K-means sampling), then runs
``project_cached``, reporting stage, progress and elapsed time. A dataset whose embeddings stay
on a Dask cluster (``Dataset.embeddings`` None, ``dim`` set) is projected there instead:
landmarks fitted on one worker, the rest placed on all (:meth:`.DaskEngine.project`); only the
coordinates come back. Requests never wait for it;
they read :meth:`ProjectionJobs.status`. Restarting a dataset's projection bumps its
generation: the old run stops at its next progress report and its result is dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from tessera_gpu.backends import Backend
from tessera_gpu.core.worker import QueueWorker
from tessera_gpu.errors import Conflict, TesseraError, Unavailable
from tessera_gpu.io.dataset import Dataset
from tessera_gpu.projection.cache import ProjectionCache, backend_tag, cached_projection
from tessera_gpu.projection.params import Projection, ProjectionParams
from tessera_gpu.projection.project import project

if TYPE_CHECKING:
    from tessera_gpu.distributed import DaskEngine

__all__ = ["JobState", "ProjectionJobs", "ProjectionStatus", "dask_required"]

log = logging.getLogger("tessera.jobs")


class _Superseded(Exception):
    """Raised from the progress callback to stop a run that is no longer wanted."""


class ProjectionStatus(msgspec.Struct, omit_defaults=True):
    """A dataset's projection: ``absent``, ``queued``, ``running`` (with ``stage`` and
    ``progress`` 0..1), ``done`` (with ``bounds`` ``[x0, y0, x1, y1]``) or ``failed`` (with
    ``error``)."""

    status: str
    progress: float
    stage: str | None
    elapsed_s: float
    error: str | None
    bounds: list[float] | msgspec.UnsetType = msgspec.UNSET


ABSENT = ProjectionStatus(status="absent", progress=0.0, stage=None, elapsed_s=0.0, error=None)
#: Called on every status change: ``(dataset_id, params, status, error, info)``.
JobListener = Callable[[str, dict[str, Any], str, str | None, dict[str, Any]], None]


@dataclass
class JobState:
    """What a dataset's projection is doing; :meth:`status` is the API's answer."""

    generation: int
    status: str = "queued"
    stage: str = "queued"
    progress: float = 0.0
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    coords: np.ndarray | None = field(default=None, repr=False)
    bounds: list[float] | None = None  # computed once: a (N, 2) min/max is not free
    info: dict[str, Any] = field(default_factory=dict)

    def to_status(self) -> ProjectionStatus:
        out = ProjectionStatus(
            status=self.status,
            progress=round(self.progress, 4),
            stage=self.stage,
            elapsed_s=self.elapsed_s(),
            error=self.error,
        )
        if self.status == "done" and self.bounds is not None:
            out.bounds = self.bounds
        return out

    def elapsed_s(self) -> float:
        if self.started is None:
            return 0.0
        end = self.finished if self.finished is not None else time.monotonic()
        return round(end - self.started, 3)


#: Projection jobs that may wait at once for an HTTP request to add one more.
MAX_QUEUED = 32


class ProjectionJobs(QueueWorker[tuple[str, int]]):
    """A queue of projection jobs served by one thread, and the results kept per dataset."""

    thread_name = "tessera-projection"

    def __init__(
        self,
        backend: Backend,
        cache: ProjectionCache,
        *,
        listener: JobListener | None = None,
        engine: DaskEngine | None = None,
        landmarks: int = 200_000,
    ) -> None:
        super().__init__()
        self.backend = backend
        self.cache = cache
        self.listener = listener
        self.engine = engine
        self.landmarks = landmarks
        self._lock = threading.Lock()
        self._states: dict[str, JobState] = {}
        self._work: dict[str, tuple[Dataset, ProjectionParams]] = {}
        self._device: dict[str, Any] = {}
        self._device_lock = threading.Lock()  # one copy to the device per dataset

    # ---- control ----------------------------------------------------------------------------

    def check_room(self) -> None:
        """503 (``queue_full``, with Retry-After) when :data:`MAX_QUEUED` jobs already wait."""
        if self._queue.qsize() >= MAX_QUEUED:
            raise Unavailable(
                f"The projection queue is full ({MAX_QUEUED} jobs waiting); try again later",
                code="queue_full",
                retry_after=30,
            )

    def submit(self, dataset_id: str, dataset: Dataset, params: ProjectionParams) -> None:
        """(Re)start the projection of ``dataset``; a run in progress for it is superseded."""
        with self._lock:
            old = self._states.get(dataset_id)
            generation = old.generation + 1 if old else 1
            self._states[dataset_id] = JobState(generation=generation)
            self._work[dataset_id] = (dataset, params)
        self._enqueue((dataset_id, generation))
        self._tell(dataset_id, params, "queued", None, {})

    def forget(self, dataset_id: str) -> None:
        """Drop a dataset: its queued or running job, its result and its device array."""
        with self._lock:
            self._states.pop(dataset_id, None)
            self._work.pop(dataset_id, None)
            self._device.pop(dataset_id, None)

    # ---- reading ----------------------------------------------------------------------------

    def status(self, dataset_id: str) -> ProjectionStatus:
        with self._lock:
            state = self._states.get(dataset_id)
            return ABSENT if state is None else state.to_status()

    def coords(self, dataset_id: str) -> np.ndarray | None:
        """The finished ``(N, 2)`` projection, or None."""
        return self.result(dataset_id)[0]

    def result(self, dataset_id: str) -> tuple[np.ndarray | None, dict[str, Any]]:
        """The finished map and its info, read together (None and {} while there is none)."""
        with self._lock:
            state = self._states.get(dataset_id)
            if state is None or state.status != "done":
                return None, {}
            return state.coords, dict(state.info)

    def info(self, dataset_id: str) -> dict[str, Any]:
        """What the finished projection reports (backend, kNN method, timings, cache hit)."""
        with self._lock:
            state = self._states.get(dataset_id)
            return dict(state.info) if state is not None else {}

    def holds(self, dataset_id: str) -> bool:
        """Whether anything of this dataset is kept here (job, map or device array)."""
        with self._lock:
            return any(dataset_id in d for d in (self._states, self._work, self._device))

    def device_array(self, dataset_id: str, dataset: Dataset) -> Any:
        """The dataset's embeddings on the device: moved there once (read first, if they
        were deferred), shared by every job."""
        with self._device_lock:
            x = self.device_embeddings(dataset_id)
            if x is None:
                embeddings = dataset.embeddings  # read now if deferred
                assert embeddings is not None  # metadata-only datasets get no job
                x = self.backend.to_device(embeddings)
                with self._lock:
                    if dataset_id in self._states:  # not forgotten meanwhile
                        self._device[dataset_id] = x
            return x

    def device_embeddings(self, dataset_id: str) -> Any:
        """The dataset's embeddings on the device, once a job has put them there; else None."""
        with self._lock:
            return self._device.get(dataset_id)

    # ---- the worker -------------------------------------------------------------------------

    def _handle(self, item: tuple[str, int]) -> None:
        self._run(*item)

    def _current(self, dataset_id: str, generation: int) -> JobState | None:
        state = self._states.get(dataset_id)
        return state if state is not None and state.generation == generation else None

    def _run(self, dataset_id: str, generation: int) -> None:
        with self._lock:
            state = self._current(dataset_id, generation)
            if state is None:
                return
            dataset, params = self._work[dataset_id]
            state.status, state.stage, state.started = "running", "to_device", time.monotonic()
        self._tell(dataset_id, params, "running", None, {})
        try:
            coords, info = self._project(dataset_id, generation, dataset, params)
        except _Superseded:
            return
        except TesseraError as exc:
            self._finish(dataset_id, generation, error=exc.message)
        except Exception as exc:  # a job failure is kept and shown, never raised
            log.exception("projection of %s failed", dataset_id)
            self._finish(dataset_id, generation, error=f"{type(exc).__name__}: {exc}")
        else:
            self._finish(dataset_id, generation, coords=coords, info=info)

    def _project(
        self, dataset_id: str, generation: int, dataset: Dataset, params: ProjectionParams
    ) -> tuple[np.ndarray, dict[str, Any]]:
        def progress(stage: str, fraction: float) -> None:
            with self._lock:
                state = self._current(dataset_id, generation)
                if state is None or self._stopping:
                    raise _Superseded
                state.stage, state.progress = stage, min(max(float(fraction), 0.0), 1.0)

        if dataset.on_cluster:  # on the Dask cluster, where the embeddings are
            result = self.project_on_cluster(dataset, params, cache=self.cache, progress=progress)
            return np.asarray(result.coords, dtype=np.float32), dict(result.info)

        def compute() -> Projection:  # a cached map needs no embeddings read, none moved
            x = self.device_array(dataset_id, dataset)
            progress("projecting", 0.0)
            return project(x, backend=self.backend, params=params, progress=progress)

        result = cached_projection(
            compute, cache=self.cache, content_hash=dataset.embeddings_hash, params=params,
            tag=backend_tag(self.backend), progress=progress,
        )  # fmt: skip
        return np.asarray(result.coords, dtype=np.float32), dict(result.info)

    def project_on_cluster(
        self,
        dataset: Dataset,
        params: ProjectionParams,
        *,
        cache: ProjectionCache | None,
        progress: Callable[[str, float], None] | None = None,
    ) -> Projection:
        """The map of a dataset whose embeddings are on the Dask cluster: ``landmarks`` rows
        fitted on one worker, the rest placed on all; cached under ``dask-landmarks-N``."""
        engine = self.engine
        if engine is None:
            raise dask_required()
        landmarks = self.landmarks
        return cached_projection(
            lambda: engine.project(dataset.parts, params, landmarks=landmarks, progress=progress),
            cache=cache, content_hash=dataset.embeddings_hash, params=params,
            tag=f"dask-landmarks-{landmarks}", progress=progress,
        )  # fmt: skip

    def _finish(
        self,
        dataset_id: str,
        generation: int,
        *,
        coords: np.ndarray | None = None,
        info: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        with self._lock:
            state = self._current(dataset_id, generation)
            if state is None:
                return
            state.finished = time.monotonic()
            state.status = "failed" if error is not None else "done"
            state.stage = state.status
            state.error, state.coords, state.info = error, coords, info or {}
            if coords is not None:
                state.bounds = _bounds(coords)
            if error is None:
                state.progress = 1.0
            _, params = self._work.get(dataset_id, (None, None))
            status = state.status
            fields = {
                "dataset_id": dataset_id,
                "status": state.status,
                "duration_ms": round(
                    (state.finished - (state.started or state.finished)) * 1000, 1
                ),
                "error": error,
                "cache": (info or {}).get("cache"),
            }
        log.info("projection job", extra={"fields": fields})
        if params is not None:
            self._tell(dataset_id, params, status, error, info or {})

    def _tell(
        self,
        dataset_id: str,
        params: ProjectionParams,
        status: str,
        error: str | None,
        info: dict[str, Any],
    ) -> None:
        if self.listener is None:
            return
        try:
            self.listener(dataset_id, asdict(params), status, error, _recorded(info))
        except Exception:  # the record is an audit trail: a failed write must not stop jobs
            log.exception("could not record the projection job of %s", dataset_id)


def dask_required() -> Conflict:
    """The answer for a dataset left on disk for a Dask cluster when there is none."""
    return Conflict("This dataset's embeddings are left on disk for a Dask cluster: start "
                    "Tessera with --dask ADDRESS", code="dask_required")  # fmt: skip


def _recorded(info: dict[str, Any]) -> dict[str, Any]:
    """What the catalog keeps of a finished job's info: plain JSON values only."""
    plain: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(info))
    return plain


def _bounds(coords: np.ndarray) -> list[float]:
    """``[x0, y0, x1, y1]`` of a ``(N, 2)`` map."""
    x, y = coords[:, 0], coords[:, 1]
    return [float(x.min()), float(y.min()), float(x.max()), float(y.max())]
