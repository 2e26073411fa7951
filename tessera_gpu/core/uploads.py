"""Uploads as the core sees them: a received file waiting to be validated, and the limit on
how many are received at once (the HTTP layer streams the bytes, :mod:`tessera_app.uploads`)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tessera_gpu.errors import Unavailable

__all__ = ["MAX_CONCURRENT_UPLOADS", "Upload", "UploadSlots"]

#: Uploads received at once; one more is a 503 with Retry-After.
MAX_CONCURRENT_UPLOADS = 4


@dataclass
class Upload:
    """A received file: its temporary path, the client's file name, its SHA-256 and size."""

    path: Path
    filename: str
    sha256: str
    size: int

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


class UploadSlots:
    """At most ``limit`` uploads in flight; one more is refused at once, not queued."""

    def __init__(self, limit: int = MAX_CONCURRENT_UPLOADS) -> None:
        self.limit = limit
        self._active = 0
        self._lock = threading.Lock()

    @property
    def active(self) -> int:
        return self._active

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one slot for the block; 503 ``too_many_uploads`` when none is free."""
        with self._lock:
            if self._active >= self.limit:
                raise Unavailable(
                    f"Too many uploads at once ({self.limit}); try again shortly",
                    code="too_many_uploads",
                    retry_after=10,
                )
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
