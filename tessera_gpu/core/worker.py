"""One daemon thread serving a queue, in order: the shape every job runner here shares."""

from __future__ import annotations

import queue
import threading
from typing import Generic, TypeVar

__all__ = ["QueueWorker"]

Item = TypeVar("Item")


class QueueWorker(Generic[Item]):
    """Runs :meth:`_handle` on each queued item, one at a time, in one daemon thread (a long
    computation cannot be interrupted, so it never blocks the process from exiting).
    :meth:`stop` asks it to end after the item in hand; work in progress checks
    ``_stopping`` at its progress reports."""

    thread_name = "tessera-worker"

    def __init__(self) -> None:
        self._queue: queue.Queue[Item | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._serve, name=self.thread_name)
            self._thread.daemon = True
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the worker to stop (a running job ends at its next progress report)."""
        self._stopping = True
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _enqueue(self, item: Item) -> None:
        self._queue.put(item)

    def _serve(self) -> None:
        while not self._stopping:
            item = self._queue.get()
            if item is None:
                return
            self._handle(item)

    def _handle(self, item: Item) -> None:
        raise NotImplementedError
