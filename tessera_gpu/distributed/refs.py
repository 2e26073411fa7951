"""Shard references and the reads a Dask worker makes of them; nothing here imports dask.

A :class:`ShardRef` names rows of one file on shared storage: global rows
``start..start + n_rows`` are the file's rows ``offset..offset + n_rows``. The engine cuts a
dataset's :class:`~tessera_gpu.io.dataset.Part` s into refs of at most ``max_bytes`` of
embeddings (:func:`partitions`); a worker reads one with :func:`read_block`, which goes through
the loader's own checks (:func:`~tessera_gpu.io.dataset.read_embedding_rows`: safety, shapes,
every row finite), since the paths come from users.

:func:`on_worker` wraps every function a worker runs: it makes the process safe for untrusted
files first (:func:`tessera_gpu.configure_process`), and turns an unexpected exception into
:class:`TaskFailed`, which names the function and the worker.
"""

from __future__ import annotations

import functools
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import xxhash

from tessera_gpu.backends import Backend, get_backend
from tessera_gpu.errors import TesseraError
from tessera_gpu.io.dataset import Part, read_embedding_rows
from tessera_gpu.io.files import file_sha256
from tessera_gpu.io.safety import Limits

__all__ = [
    "PARTITION_BYTES",
    "Block",
    "ShardRef",
    "TaskFailed",
    "digest_block",
    "file_digest",
    "on_worker",
    "partitions",
    "read_block",
    "split_rows",
    "take_rows",
    "worker_backend",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Embedding bytes per partition: a task's share of a file (a file holds up to 1.6 GB).
PARTITION_BYTES = 128 * 2**20


@dataclass(frozen=True)
class ShardRef:
    """Rows of one file: global ``start..start + n_rows`` are the file's ``offset..``.
    ``shape`` is the file's ``(N, D)`` when it was registered (a changed file is refused)."""

    path: str
    start: int
    offset: int
    n_rows: int
    shape: tuple[int, int]

    @property
    def stop(self) -> int:
        return self.start + self.n_rows

    @property
    def dim(self) -> int:
        return self.shape[1]


@dataclass(frozen=True, eq=False)
class Block:
    """Rows of the embeddings held by a worker: global row numbers and their vectors."""

    rows: np.ndarray
    x: np.ndarray


class TaskFailed(Exception):
    """A task failed for a reason other than a Tessera error; the message names it and where."""


def partitions(parts: Sequence[Part], max_bytes: int = PARTITION_BYTES) -> list[ShardRef]:
    """The refs of ``parts`` (with embeddings), each at most ``max_bytes`` of float32 rows."""
    out = []
    for part in parts:
        if part.dim is None:
            raise ValueError(f"{part.path.name} has no embeddings")
        step = max(1, max_bytes // (4 * part.dim))
        shape = (part.n_rows, part.dim)
        for lo in range(0, part.n_rows, step):
            n = min(step, part.n_rows - lo)
            out.append(ShardRef(str(part.path), part.start + lo, lo, n, shape))
    return out


def split_rows(refs: Sequence[ShardRef], rows: np.ndarray) -> list[np.ndarray]:
    """Sorted global ``rows`` cut by ref: the file-local rows of each (relative to its start)."""
    starts = np.array([r.start for r in refs], dtype=np.int64)
    cuts = np.searchsorted(rows, np.append(starts, refs[-1].stop if refs else 0))
    return [rows[cuts[i] : cuts[i + 1]] - refs[i].start for i in range(len(refs))]


_configured = threading.Lock()
_done = False


def _configure_once() -> None:
    global _done
    with _configured:
        if not _done:
            from tessera_gpu import configure_process

            configure_process()  # before any file is opened: no HDF5 filter plugins
            _done = True


def _where() -> str:
    try:
        from dask.distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return socket.gethostname()


def on_worker(fn: F) -> F:
    """Run ``fn`` as a worker task: process configured once; surprises become TaskFailed."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        _configure_once()
        try:
            return fn(*args, **kwargs)
        except TesseraError:
            raise
        except Exception as exc:
            raise TaskFailed(
                f"{fn.__name__} failed on worker {_where()}: {type(exc).__name__}: {exc}"
            ) from None

    return run  # type: ignore[return-value]


@functools.cache
def worker_backend() -> Backend:
    """The worker's compute backend, chosen once per process as ``get_backend`` would:
    ``TESSERA_DEVICE`` (default ``auto``: cuML, else the CuPy tier, else the CPU)."""
    return get_backend(None)


def _read(ref: ShardRef, limits: Limits, hasher: Any = None) -> np.ndarray:
    """The ref's rows through the loader's checks; an error names the file."""
    try:
        return read_embedding_rows(
            ref.path, ref.offset, ref.offset + ref.n_rows, limits=limits, shape=ref.shape,
            hasher=hasher,
        )  # fmt: skip
    except TesseraError as exc:
        name = Path(ref.path).name
        if name in exc.message:
            raise
        raise type(exc)(f"{name}: {exc.message}", code=exc.code) from None


@on_worker
def read_block(ref: ShardRef, limits: Limits, local: np.ndarray | None = None) -> Block:
    """The ref's rows (or only ``local`` ones, relative to its start), read and checked."""
    x = _read(ref, limits)
    rows = np.arange(ref.start, ref.stop, dtype=np.int64)
    if local is not None:
        x, rows = np.ascontiguousarray(x[local]), rows[local]
    return Block(rows, x)


@on_worker
def take_rows(ref: ShardRef, limits: Limits, local: np.ndarray) -> np.ndarray:
    """Only the vectors of ``local`` rows of the ref (a small gather)."""
    return read_block(ref, limits, local).x


@on_worker
def digest_block(ref: ShardRef, limits: Limits) -> str:
    """Read the ref's rows with every check (finite values) and return their xxh3 digest."""
    hasher = xxhash.xxh3_128()
    _read(ref, limits, hasher)
    return str(hasher.hexdigest())


@on_worker
def file_digest(path: str) -> str:
    """The SHA-256 of a whole file, read where it lies: a dataset's id comes from it."""
    return file_sha256(path)
