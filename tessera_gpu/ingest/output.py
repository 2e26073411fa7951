"""The ingest's output: episodes streamed into spec files that appear whole or not at all.

Rows arrive batch by batch and go straight to disk, so memory does not grow with the dataset.
Each output file is written under a temporary name beside its target (the one atomic writer,
:func:`~tessera_gpu.io.files.replacing`) and renamed only when every episode is in; an error or
Ctrl-C removes the temporary files and leaves any older output untouched. Above
``shard_size`` episodes (the spec's 200,000 at most), the episodes are split evenly into
``OUT-000.h5``, ``OUT-001.h5``, ...: one dataset again with ``tessera serve --join``.

The arrays have the spec's types (:mod:`tessera_gpu.io.writer`): float32 embeddings, vlen
UTF-8 strings, int64 / float64 / bool metadata, JPEG thumbnails and GIFs as ``vlen uint8``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import h5py
import numpy as np

from tessera_gpu.errors import InvalidDataset, InvalidRequest
from tessera_gpu.io.files import replacing
from tessera_gpu.io.safety import Limits

__all__ = ["MAX_SHARD", "EpisodeFiles", "Row", "shard_paths"]

MAX_SHARD = Limits().max_episodes
FieldType = Literal["int", "float", "bool", "str"]
_DTYPES: dict[str, Any] = {
    "int": np.int64,
    "float": np.float64,
    "bool": np.bool_,
    "str": h5py.string_dtype(),
}
_PREVIEW = h5py.vlen_dtype(np.uint8)
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Row:
    """One episode as it is written."""

    episode_id: str
    embedding: np.ndarray | None
    metadata: dict[str, Any]
    thumbnail: bytes | None = None
    gif: bytes | None = None


def shard_paths(out: Path, n: int, shard_size: int = MAX_SHARD) -> list[Path]:
    """``[out]``, or ``out-000.h5, out-001.h5, ...`` when ``n`` needs more than one file."""
    count = math.ceil(n / shard_size)
    if count <= 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i:03d}{out.suffix or '.h5'}") for i in range(count)]


class EpisodeFiles:
    """A context manager writing ``n`` episodes to ``out`` (or its shards), atomically."""

    def __init__(
        self,
        out: Path,
        n: int,
        *,
        dim: int | None,
        fields: dict[str, FieldType],
        thumbnails: bool,
        gifs: bool,
        shard_size: int = MAX_SHARD,
    ) -> None:
        if not 1 <= shard_size <= MAX_SHARD:
            raise InvalidRequest(f"shard size must be 1 to {MAX_SHARD:,}, got {shard_size:,}")
        if out.is_dir():
            raise InvalidRequest(f"cannot write {out}: it is a directory")
        if not out.parent.is_dir():
            raise InvalidRequest(f"cannot write {out}: directory {out.parent} does not exist")
        self.paths = shard_paths(out, n, shard_size)
        per = math.ceil(n / len(self.paths))
        self.sizes = [min(per, n - i * per) for i in range(len(self.paths))]
        self.n, self.dim, self.fields = n, dim, fields
        self.previews = [p for p, on in (("thumbnails", thumbnails), ("gifs", gifs)) if on]
        self.written = 0
        self._stack = contextlib.ExitStack()
        self._temps: list[Path] = []
        self._shard = -1
        self._file: h5py.File | None = None
        self._arrays: dict[str, h5py.Dataset] = {}  # this shard's arrays by name

    def __enter__(self) -> EpisodeFiles:
        try:
            self._temps = [self._stack.enter_context(replacing(p)) for p in self.paths]
        except BaseException:
            self._stack.close()
            raise
        return self

    def write(self, rows: Sequence[Row]) -> None:
        """Append ``rows`` (in order) to the file(s)."""
        start = 0
        while start < len(rows):
            if self._file is None or self._offset >= self.sizes[self._shard]:
                self._open_next()
            take = min(len(rows) - start, self.sizes[self._shard] - self._offset)
            self._put(rows[start : start + take])
            start += take

    def _open_next(self) -> None:
        if self._file is not None:
            self._file.close()
        self._shard += 1
        if self._shard >= len(self.paths):
            raise InvalidDataset(
                f"the source yielded more than the {self.n:,} episodes it lists",
                code="length_mismatch",
            )
        size = self.sizes[self._shard]
        f = self._file = h5py.File(self._temps[self._shard], "w")
        self._offset = 0
        made = self._arrays = {}
        made["episode_ids"] = f.create_dataset(
            "episode_ids", (size,), dtype=_DTYPES["str"], chunks=(min(size, 8192),)
        )
        if self.dim is not None:
            rows = max(1, min(size, _CHUNK_BYTES // (4 * self.dim)))
            made["embeddings"] = f.create_dataset(
                "embeddings", (size, self.dim), dtype=np.float32, chunks=(rows, self.dim)
            )
        for name, kind in self.fields.items():
            made[f"metadata/{name}"] = f.create_dataset(
                f"metadata/{name}", (size,), dtype=_DTYPES[kind], chunks=(min(size, 8192),)
            )
        for name in self.previews:
            made[name] = f.create_dataset(name, (size,), dtype=_PREVIEW, chunks=(min(size, 1024),))

    def _put(self, rows: Sequence[Row]) -> None:
        f, lo = self._arrays, self._offset
        hi = lo + len(rows)
        f["episode_ids"][lo:hi] = [r.episode_id for r in rows]
        if self.dim is not None:
            vectors = [r.embedding for r in rows if r.embedding is not None]
            f["embeddings"][lo:hi] = np.stack(vectors).astype(np.float32)
        for name, kind in self.fields.items():
            lacking = next((r.episode_id for r in rows if r.metadata.get(name) is None), None)
            if lacking is not None:
                raise InvalidDataset(
                    f"episode {lacking} has no {name}, which the others have", code="missing_field"
                )
            values = [r.metadata[name] for r in rows]
            f[f"metadata/{name}"][lo:hi] = (
                values if kind == "str" else np.asarray(values, dtype=_DTYPES[kind])
            )
        for name, attr in (("thumbnails", "thumbnail"), ("gifs", "gif")):
            if name in self.previews:
                column = np.empty(len(rows), dtype=object)
                column[:] = [np.frombuffer(getattr(r, attr) or b"", np.uint8) for r in rows]
                f[name][lo:hi] = column
        self._offset = hi
        self.written += len(rows)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        try:
            if self._file is not None:
                self._file.close()
            if kind is None and self.written != self.n:
                raise InvalidDataset(
                    f"the source yielded {self.written:,} of the {self.n:,} episodes it lists",
                    code="length_mismatch",
                )
        except BaseException as error:
            self._stack.__exit__(type(error), error, error.__traceback__)
            raise
        return self._stack.__exit__(kind, exc, tb)
