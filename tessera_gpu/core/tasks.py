"""Analysis jobs (the similarity graph, clusters): one worker thread, joined, not duplicated.

A task is ``(dataset_id, kind, params)`` and a function ``run(progress) -> result``. Asking
for a task that is queued, running or done with the same params joins it (the caller gets its
status); asking with other params supersedes it (the old run stops at its next progress
report). The result stays in memory until the dataset is forgotten. Requests never wait: they
read :meth:`Tasks.status` (the HTTP routes answer 202 with it until the task is done).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from tessera_gpu.core.worker import QueueWorker
from tessera_gpu.errors import TesseraError
from tessera_gpu.progress import Progress

__all__ = ["TaskStatus", "Tasks"]

log = logging.getLogger("tessera.tasks")

Run = Callable[[Progress], Any]
#: Called on every status change: ``(dataset_id, kind, params, status, error)``.
TaskListener = Callable[[str, str, dict[str, Any], str, str | None], None]


class TaskStatus(msgspec.Struct):
    """An analysis job: ``queued``, ``running`` (``stage``, ``progress`` 0..1), ``done`` or
    ``failed`` (``error``); ``absent`` when none was asked for."""

    kind: str
    status: str
    progress: float
    stage: str | None
    elapsed_s: float
    error: str | None
    params: dict[str, Any]


class _Superseded(Exception):
    pass


@dataclass
class _Task:
    kind: str
    params: dict[str, Any]
    run: Run
    generation: int
    status: str = "queued"
    stage: str | None = None
    progress: float = 0.0
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    result: Any = field(default=None, repr=False)

    def to_status(self) -> TaskStatus:
        end = self.finished if self.finished is not None else time.monotonic()
        elapsed = 0.0 if self.started is None else round(end - self.started, 3)
        return TaskStatus(
            kind=self.kind, status=self.status, progress=round(self.progress, 4),
            stage=self.stage, elapsed_s=elapsed, error=self.error, params=dict(self.params),
        )  # fmt: skip


class Tasks(QueueWorker[tuple[str, str, int]]):
    """Analysis tasks of every dataset, run one at a time by one worker thread."""

    thread_name = "tessera-analysis"

    def __init__(self, listener: TaskListener | None = None) -> None:
        super().__init__()
        self.listener = listener
        self._tasks: dict[tuple[str, str], _Task] = {}
        self._lock = threading.Lock()
        self._generations = 0

    def submit(self, dataset_id: str, kind: str, params: dict[str, Any], run: Run) -> TaskStatus:
        """Ask for a task; the same one queued, running or done is joined, not repeated."""
        with self._lock:
            task = self._tasks.get((dataset_id, kind))
            if task is not None and task.params == params and task.status != "failed":
                return task.to_status()
            self._generations += 1
            task = _Task(kind, dict(params), run, self._generations)
            self._tasks[(dataset_id, kind)] = task
            status = task.to_status()
        self._enqueue((dataset_id, kind, task.generation))
        self._tell(dataset_id, task)
        return status

    def status(self, dataset_id: str, kind: str) -> TaskStatus:
        with self._lock:
            task = self._tasks.get((dataset_id, kind))
            if task is None:
                return TaskStatus(kind, "absent", 0.0, None, 0.0, None, {})
            return task.to_status()

    def result(self, dataset_id: str, kind: str, params: dict[str, Any] | None = None) -> Any:
        """The finished result (of these ``params`` when given), or None."""
        with self._lock:
            task = self._tasks.get((dataset_id, kind))
            if task is None or task.status != "done":
                return None
            if params is not None and task.params != params:
                return None
            return task.result

    def forget(self, dataset_id: str) -> None:
        with self._lock:
            for key in [k for k in self._tasks if k[0] == dataset_id]:
                del self._tasks[key]

    def holds(self, dataset_id: str) -> bool:
        with self._lock:
            return any(k[0] == dataset_id for k in self._tasks)

    # ---- the worker -------------------------------------------------------------------------

    def _handle(self, item: tuple[str, str, int]) -> None:
        self._run(*item)

    def _current(self, dataset_id: str, kind: str, generation: int) -> _Task | None:
        task = self._tasks.get((dataset_id, kind))
        return task if task is not None and task.generation == generation else None

    def _run(self, dataset_id: str, kind: str, generation: int) -> None:
        with self._lock:
            task = self._current(dataset_id, kind, generation)
            if task is None:
                return
            task.status, task.started = "running", time.monotonic()

        def progress(stage: str, fraction: float) -> None:
            with self._lock:
                if self._current(dataset_id, kind, generation) is None or self._stopping:
                    raise _Superseded
                task.stage, task.progress = stage, min(max(float(fraction), 0.0), 1.0)

        self._tell(dataset_id, task)
        try:
            result = task.run(progress)
        except _Superseded:
            return
        except TesseraError as exc:
            self._finish(dataset_id, task, error=exc.message)
        except Exception as exc:  # kept and shown, never raised
            log.exception("%s of %s failed", kind, dataset_id)
            self._finish(dataset_id, task, error=f"{type(exc).__name__}: {exc}")
        else:
            self._finish(dataset_id, task, result=result)

    def _finish(
        self, dataset_id: str, task: _Task, *, result: Any = None, error: str | None = None
    ) -> None:
        with self._lock:
            if self._current(dataset_id, task.kind, task.generation) is None:
                return
            task.finished = time.monotonic()
            task.status = "failed" if error is not None else "done"
            task.stage, task.error, task.result = task.status, error, result
            if error is None:
                task.progress = 1.0
        log.info(
            "analysis job",
            extra={"fields": {"dataset_id": dataset_id, "kind": task.kind, "status": task.status,
                              "duration_ms": task.to_status().elapsed_s * 1000,
                              "error": error}},
        )  # fmt: skip
        self._tell(dataset_id, task)

    def _tell(self, dataset_id: str, task: _Task) -> None:
        if self.listener is None:
            return
        try:
            self.listener(dataset_id, task.kind, dict(task.params), task.status, task.error)
        except Exception:  # the record is an audit trail: a failed write must not stop jobs
            log.exception("could not record the %s job of %s", task.kind, dataset_id)
