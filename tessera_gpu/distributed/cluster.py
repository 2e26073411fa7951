"""``Cluster``: the transport to a Dask cluster -- its workers, futures, shard references and
the translation of what a lost worker or task raises into the errors a user sees. It knows no
algorithm: :mod:`.knn`, :mod:`.kmeans`, :mod:`.landmarks` and :mod:`.rapids` take a cluster and
send it their tasks, and :class:`~.engine.DaskEngine` is their front door (see :mod:`.engine`
for the data flow).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tessera_gpu.errors import InvalidRequest, TesseraError, Unavailable
from tessera_gpu.io.dataset import Part
from tessera_gpu.io.safety import Limits
from tessera_gpu.progress import Progress

__all__ = ["DEFAULT_RETRIES", "Cluster"]

DEFAULT_RETRIES = 2


class Cluster:
    """The cluster at ``address`` (``tcp://host:8786``), or an existing ``Client``.

    ``limits`` bound every file a worker reads (as ``load_dataset``'s); ``retries`` is how
    often a task that raised runs again; ``partition_bytes`` and ``round_bytes`` bound a task's
    share of the embeddings and a kNN round's routed rows (default: a quarter of the workers'
    memory). ``rapids`` forces the ``cuml.dask`` branch on or off (default: on when every
    worker has cuML). Raises :class:`Unavailable` when the scheduler cannot be reached.
    """

    def __init__(
        self,
        address_or_client: Any,
        *,
        limits: Limits | None = None,
        retries: int = DEFAULT_RETRIES,
        timeout: float = 10.0,
        partition_bytes: int | None = None,
        round_bytes: int | None = None,
        rapids: bool | None = None,
    ) -> None:
        from tessera_gpu.distributed.refs import PARTITION_BYTES

        self.limits = limits or Limits()
        self.retries = retries
        self.timeout = timeout
        self.partition_bytes = partition_bytes or PARTITION_BYTES
        self._round_bytes = round_bytes
        self._rapids = rapids
        if isinstance(address_or_client, str):
            self.client = _connect(address_or_client, timeout)
            self._owns = True
        else:
            self.client = address_or_client
            self._owns = False
        self.address = str(self.client.scheduler.address)

    def close(self) -> None:
        if self._owns:
            self.client.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the cluster ------------------------------------------------------------------------

    def _workers(self) -> dict[str, Any]:
        try:
            workers = dict(self.client.scheduler_info(n_workers=-1)["workers"])
            if not workers:
                self.client.wait_for_workers(1, timeout=self.timeout)
                workers = dict(self.client.scheduler_info(n_workers=-1)["workers"])
        except (OSError, TimeoutError) as exc:
            raise Unavailable(
                f"The Dask scheduler at {self.address} has no workers ({exc}): start some with "
                f"`dask worker {self.address}` (or `dask cuda worker {self.address}`)",
                code="dask_no_workers",
            ) from None
        return workers

    def n_workers(self) -> int:
        return len(self._workers())

    def round_bytes(self) -> int:
        """Routed bytes one kNN round may hold across the cluster."""
        if self._round_bytes is not None:
            return self._round_bytes
        limits = [int(w.get("memory_limit") or 0) for w in self._workers().values()]
        total = sum(limits) if all(limits) else 8 * 2**30
        return max(total // 4, 64 * 2**20)

    def uses_rapids(self) -> bool:
        """Whether K-means and kNN go to ``cuml.dask`` (:mod:`.rapids`): GPU workers with cuML."""
        if self._rapids is None:
            with self.translated():
                answers = self.client.run(_worker_has_cuml)  # asked of each worker once
            self._rapids = bool(answers) and all(answers.values())
        return self._rapids

    def describe(self) -> dict[str, Any]:
        """The scheduler's address and its workers: count, threads, memory, GPUs."""
        workers = self._workers()
        return {
            "scheduler": self.address,
            "workers": len(workers),
            "threads": sum(int(w.get("nthreads", 0)) for w in workers.values()),
            "memory_limit": sum(int(w.get("memory_limit") or 0) for w in workers.values()),
            "gpus": sum(int(w.get("resources", {}).get("GPU", 0)) for w in workers.values()),
            "cuml_dask": self.uses_rapids(),
        }

    # ---- futures ----------------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], *args: Any, name: str, **kwargs: Any) -> Any:
        """``client.submit`` with retries and a key that says what the task is."""
        key = f"tessera-{name}-{uuid.uuid4().hex[:12]}"
        return self.client.submit(fn, *args, key=key, retries=self.retries, pure=False, **kwargs)

    def scatter(self, value: Any) -> Any:
        """A value (centroids, an index) placed on a worker once, for many tasks to use."""
        return self.client.scatter(value, hash=False)

    def gather(self, futures: Sequence[Any]) -> list[Any]:
        with self.translated():
            return list(self.client.gather(list(futures)))

    def as_completed(self, futures: Sequence[Any]) -> Iterator[Any]:
        """The futures' results in the order they finish (only Dask's errors are translated,
        not the caller's, raised at the ``yield``)."""
        from dask.distributed import as_completed

        with self.translated():
            finished = as_completed(list(futures), loop=self.client.loop)  # not a default client
        while True:
            with self.translated():
                future = next(finished, None)
                result = None if future is None else future.result()
            if future is None:
                return
            yield result

    def translated(self) -> Any:
        """A context in which what Dask raises becomes the error a user sees."""
        return _Translate(self)

    # ---- datasets ---------------------------------------------------------------------------

    def refs(self, parts: Sequence[Part]) -> list[Any]:
        """The partitions of a dataset's parts (``Dataset.parts``)."""
        from tessera_gpu.distributed.refs import partitions

        if not parts or parts[0].dim is None:
            raise InvalidRequest("this dataset has no embeddings (metadata-only mode)")
        return partitions(parts, self.partition_bytes)

    def check(self, parts: Sequence[Part], progress: Progress | None = None) -> str:
        """Read every row on the workers with the loader's checks (a NaN is a 422 naming the
        file and row); return the embeddings' digest (a hash of the partitions' xxh3)."""
        import xxhash

        from tessera_gpu.distributed.refs import digest_block

        refs = self.refs(parts)
        futures = [self.submit(digest_block, r, self.limits, name="check") for r in refs]
        digests = self.gather(futures)
        if progress is not None:
            progress("check", 1.0)
        hasher = xxhash.xxh3_128()
        hasher.update(f"dask:{refs[-1].stop}x{refs[0].dim}:".encode())
        for digest in digests:
            hasher.update(digest.encode())
        return str(hasher.hexdigest())

    def hash_files(self, paths: Sequence[str | Path]) -> list[str]:
        """Each file's SHA-256, computed on the workers (the files are read where they lie,
        in parallel, not through the server)."""
        from tessera_gpu.distributed.refs import file_digest

        return [str(d) for d in self.gather(
            [self.submit(file_digest, str(p), name="hash") for p in paths]
        )]  # fmt: skip

    def take(self, parts: Sequence[Part], rows: np.ndarray) -> np.ndarray:
        """The vectors of ``rows`` (any order, a few thousand at most: they come to the
        server), float32 ``(len(rows), D)`` in that order."""
        return self.take_refs(self.refs(parts), rows)

    def take_refs(self, refs: Sequence[Any], rows: np.ndarray) -> np.ndarray:
        """:meth:`take` on a dataset's partitions."""
        from tessera_gpu.distributed.refs import split_rows, take_rows

        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= refs[-1].stop):
            raise InvalidRequest(f"row index out of range for {refs[-1].stop:,} rows")
        uniq, back = np.unique(rows, return_inverse=True)
        wanted = [(r, loc) for r, loc in zip(refs, split_rows(refs, uniq), strict=True) if len(loc)]
        got = self.gather([self.submit(take_rows, r, self.limits, loc, name="take")
                           for r, loc in wanted])  # fmt: skip
        out = np.concatenate(got) if got else np.zeros((0, refs[0].dim), np.float32)
        return np.ascontiguousarray(out[back], dtype=np.float32)


def _worker_has_cuml() -> bool:
    from tessera_gpu.backends import gpu_probe

    return gpu_probe().best == "cuml"


def _connect(address: str, timeout: float) -> Any:
    from dask.distributed import Client

    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except ValueError as exc:
        raise InvalidRequest(
            f"--dask must be a scheduler address such as tcp://host:8786: got {address!r} ({exc})",
            code="bad_setting",
        ) from None
    except (OSError, TimeoutError) as exc:
        raise Unavailable(
            f"Cannot reach the Dask scheduler at {address} ({exc}). Start one with "
            f"`dask scheduler` and workers with `dask worker {address}`, or run without --dask",
            code="dask_unavailable",
        ) from None


class _Translate:
    """Turns what a gather raises into the errors a user sees (see the module docstring)."""

    def __init__(self, engine: Cluster) -> None:
        self.engine = engine

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: Any) -> None:
        if exc is not None and not isinstance(exc, TesseraError | GeneratorExit):
            raise _translate(exc, self.engine) from None


def _translate(exc: BaseException, engine: Cluster) -> TesseraError:
    from dask.distributed import CancelledError, KilledWorker

    from tessera_gpu.distributed.refs import TaskFailed

    again = "The job can be started again"
    if isinstance(exc, KilledWorker):
        return Unavailable(
            f"The Dask job lost task {exc.task!r}: every worker that ran it died "
            f"({exc.allowed_failures + 1} tries, the last on {exc.last_worker.address}). {again}",
            code="dask_worker_lost",
        )
    if isinstance(exc, TaskFailed):
        return Unavailable(
            f"The Dask job failed after {engine.retries} retries: {exc}. {again}",
            code="dask_task_failed",
        )
    if isinstance(exc, CancelledError):
        return Unavailable(
            f"The Dask job was cancelled (the scheduler at {engine.address} restarted or "
            f"lost it). {again}",
            code="dask_cancelled",
        )
    if isinstance(exc, OSError | TimeoutError):
        return Unavailable(
            f"Lost the Dask scheduler at {engine.address} ({exc}). {again} once it is back",
            code="dask_unavailable",
        )
    return Unavailable(
        f"The Dask job failed: {type(exc).__name__}: {exc}. {again}", code="dask_task_failed"
    )
