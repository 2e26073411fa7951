"""Load an HDF5 episode file into a validated, read-only :class:`Dataset`.

Validation happens once, here, at the door; everything downstream trusts a ``Dataset``.
The rules are the format spec's nine (``shared/spec/embedding-format.md``), with
metadata-only mode (no ``embeddings``) allowed, plus the safety checks in :mod:`.safety`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import h5py
import msgspec
import numpy as np
import xxhash

from tessera_gpu.errors import InvalidDataset
from tessera_gpu.io.safety import (
    Limits,
    check_dataset_object,
    check_file_on_disk,
    check_link_count,
    check_storage,
    open_hdf5,
    resolve_member,
)

__all__ = ["Dataset", "DatasetFacts", "Field", "FieldKind", "FieldSummary", "load_dataset"]

FieldKind = Literal["bool", "int", "float", "category", "string", "array"]

#: A string field with at most this many distinct values is a category (filterable by value).
MAX_CATEGORIES = 1_000
#: Rows per block when copying and checking embeddings; bounds the temporary memory.
BLOCK_ROWS = 8_192


@dataclass(frozen=True, eq=False)
class Field:
    """One metadata column.

    ``values`` holds bool / int64 / float64 arrays for those kinds, int32 codes into
    ``categories`` for a category, an object array of str for a string, and the raw
    ``(N, ...)`` array for an ``array`` field (kept, not filterable).
    """

    name: str
    kind: FieldKind
    values: np.ndarray
    categories: tuple[str, ...] = ()

    @property
    def filterable(self) -> bool:
        return self.kind != "array"

    def json_values(self, rows: np.ndarray) -> list[Any]:
        """The JSON values of ``rows``: category labels, NaN as null, arrays as lists.

        The one conversion from a field to JSON: hover cards, point overlays and CSV
        exports all go through it."""
        values = self.values[rows]
        if self.kind == "category":
            return np.asarray(self.categories, dtype=object)[values].tolist() if rows.size else []
        if self.kind == "float":
            return [v if math.isfinite(v) else None for v in values.tolist()]
        if self.kind == "array":
            return [np.asarray(v).tolist() for v in values]
        return list(values.tolist())

    def value_at(self, index: int) -> Any:
        """The JSON value of one row."""
        return self.json_values(np.array([index], dtype=np.int64))[0]

    def summary(self) -> FieldSummary:
        """The field's kind plus value counts (category, bool) or min/max (numbers)."""
        out = FieldSummary(name=self.name, kind=self.kind)
        if self.kind == "category":
            counts = np.bincount(self.values, minlength=len(self.categories))
            order = np.argsort(-counts, kind="stable")
            out.values = {self.categories[i]: int(counts[i]) for i in order}
        elif self.kind == "bool":
            n_true = int(np.count_nonzero(self.values))
            out.values = {"true": n_true, "false": int(self.values.size - n_true)}
        elif self.kind in ("int", "float"):
            finite = self.values[np.isfinite(self.values)] if self.kind == "float" else self.values
            out.min = finite.min().item() if finite.size else None
            out.max = finite.max().item() if finite.size else None
        elif self.kind == "string":
            out.n_unique = len(set(self.values.tolist()))
        else:
            out.shape = list(self.values.shape[1:])
        return out


class FieldSummary(msgspec.Struct, omit_defaults=True):
    """A field as a dataset's summary lists it: ``values`` (category and bool: counts by
    value, most frequent first), ``min``/``max`` (numbers), ``n_unique`` (free text) or
    ``shape`` (per-episode arrays)."""

    name: str
    kind: str
    values: dict[str, int] | msgspec.UnsetType = msgspec.UNSET
    min: float | msgspec.UnsetType | None = msgspec.UNSET
    max: float | msgspec.UnsetType | None = msgspec.UNSET
    n_unique: int | msgspec.UnsetType = msgspec.UNSET
    shape: list[int] | msgspec.UnsetType = msgspec.UNSET


class DatasetFacts(msgspec.Struct):
    """What validation found in a file: size, mode, previews and fields."""

    name: str
    n_episodes: int
    dim: int | None
    mode: str
    has_thumbnails: bool
    has_gifs: bool
    fields: list[FieldSummary]
    file_size: int


@dataclass(eq=False)
class Dataset:
    """A validated episode file. Embeddings are in memory; previews are read lazily."""

    path: Path
    name: str
    episode_ids: np.ndarray
    embeddings: np.ndarray | None
    embeddings_hash: str | None
    fields: dict[str, Field]
    has_thumbnails: bool
    has_gifs: bool
    file_size: int
    _id_index: dict[str, int] | None = field(default=None, repr=False)

    @property
    def n_episodes(self) -> int:
        return int(self.episode_ids.shape[0])

    @property
    def dim(self) -> int | None:
        return None if self.embeddings is None else int(self.embeddings.shape[1])

    @property
    def mode(self) -> Literal["full", "metadata-only"]:
        return "full" if self.embeddings is not None else "metadata-only"

    def index_of(self, episode_id: str) -> int | None:
        if self._id_index is None:
            self._id_index = {eid: i for i, eid in enumerate(self.episode_ids.tolist())}
        return self._id_index.get(episode_id)

    def metadata_at(self, index: int) -> dict[str, Any]:
        return {name: f.value_at(index) for name, f in self.fields.items()}

    def thumbnail(self, index: int) -> bytes | None:
        """The stored thumbnail bytes of one episode, or None."""
        return self._preview("thumbnails", index) if self.has_thumbnails else None

    def gif(self, index: int) -> bytes | None:
        """The stored GIF bytes of one episode, or None."""
        return self._preview("gifs", index) if self.has_gifs else None

    def _preview(self, name: str, index: int) -> bytes | None:
        if not 0 <= index < self.n_episodes:
            raise IndexError(index)
        with _reading(self.path), open_hdf5(self.path) as f:
            data = np.asarray(f[name][index], dtype=np.uint8)
        return data.tobytes() if data.size else None

    def summary(self) -> DatasetFacts:
        return DatasetFacts(
            name=self.name,
            n_episodes=self.n_episodes,
            dim=self.dim,
            mode=self.mode,
            has_thumbnails=self.has_thumbnails,
            has_gifs=self.has_gifs,
            fields=[f.summary() for f in self.fields.values()],
            file_size=self.file_size,
        )


def load_dataset(
    path: str | Path, *, limits: Limits | None = None, name: str | None = None
) -> Dataset:
    """Validate ``path`` and load it. Raises a :class:`~.errors.TesseraError` on any problem.

    ``limits.max_file_bytes`` applies the upload size limit (none by default, since a file
    on the server's own disk is bounded by N and D alone).
    """
    path = Path(path)
    limits = limits or Limits()
    size = check_file_on_disk(path, limits)
    with _reading(path), open_hdf5(path) as f:
        members = _schema_members(f, limits)
        n, dim = _check_shapes(members, limits)
        for key, dset in _all_arrays(members):
            check_storage(dset, key, limits)
        episode_ids = _read_episode_ids(members["episode_ids"])
        fields = {k: _read_field(k, d, n) for k, d in members["metadata"].items()}
        for preview in ("thumbnails", "gifs"):
            if preview in members:
                _check_preview(members[preview], preview, n)
        embeddings, digest = (None, None)
        if dim is not None:
            embeddings, digest = _read_embeddings(members["embeddings"])
        return Dataset(
            path=path,
            name=name or path.stem,
            episode_ids=episode_ids,
            embeddings=embeddings,
            embeddings_hash=digest,
            fields=fields,
            has_thumbnails="thumbnails" in members,
            has_gifs="gifs" in members,
            file_size=size,
        )


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """HDF5 reports a corrupt structure found mid-read as OSError (or, rarely, ValueError)."""
    try:
        yield
    except (OSError, ValueError, RuntimeError) as exc:
        raise InvalidDataset(
            f"File is corrupt: reading {path.name} failed ({exc})", code="corrupt_file"
        ) from None


def _schema_members(f: h5py.File, limits: Limits) -> dict[str, Any]:
    """Resolve the schema's names (and nothing else) after the safety checks."""
    check_link_count(f, limits.max_root_links, where="/")
    out: dict[str, Any] = {"metadata": {}}
    for name in f:  # link names only; no object is opened here
        if isinstance(f.get(name, getlink=True), h5py.ExternalLink):
            resolve_member(f, name, where="/")  # raises external_link
    for name in ("embeddings", "episode_ids", "thumbnails", "gifs"):
        obj = resolve_member(f, name, where="/")
        if obj is not None:
            out[name] = check_dataset_object(obj, f"/{name}", limits)
    meta = resolve_member(f, "metadata", where="/")
    if meta is not None:
        if not isinstance(meta, h5py.Group):
            raise InvalidDataset("metadata must be a group of arrays", code="bad_metadata")
        check_link_count(meta, limits.max_metadata_fields, where="/metadata")
        for key in meta:
            obj = resolve_member(meta, key, where="/metadata")
            if isinstance(obj, h5py.Group):
                raise InvalidDataset(
                    f"metadata/{key} is a group: metadata fields must be arrays",
                    code="nested_group",
                )
            out["metadata"][key] = check_dataset_object(obj, f"/metadata/{key}", limits)
    if "episode_ids" not in out:
        raise InvalidDataset("episode_ids dataset is missing", code="missing_episode_ids")
    return out


def _all_arrays(members: dict[str, Any]) -> list[tuple[str, h5py.Dataset]]:
    top = [(f"/{k}", d) for k, d in members.items() if k != "metadata"]
    return top + [(f"/metadata/{k}", d) for k, d in members["metadata"].items()]


def _check_shapes(members: dict[str, Any], limits: Limits) -> tuple[int, int | None]:
    """Rules 2, 4, 5, 8, 9 on declared shapes, before anything is read."""
    ids = members["episode_ids"]
    if ids.ndim != 1:
        raise InvalidDataset(
            f"episode_ids must be 1D array: got shape {ids.shape}", code="episode_ids_not_1d"
        )
    n = ids.shape[0]
    if n > limits.max_episodes:
        raise InvalidDataset(
            f"Too many episodes: {n:,} > {limits.max_episodes:,}", code="too_many_episodes"
        )
    if n == 0:
        raise InvalidDataset("File has no episodes: episode_ids is empty", code="empty")
    dim = None
    emb = members.get("embeddings")
    if emb is not None:
        if emb.ndim != 2:
            raise InvalidDataset(
                f"embeddings must be 2D array: got shape {emb.shape}", code="embeddings_not_2d"
            )
        if emb.dtype not in (np.float32, np.float64):
            raise InvalidDataset(
                f"embeddings must be float32 or float64: got {emb.dtype}", code="bad_dtype"
            )
        if emb.shape[0] != n:
            raise InvalidDataset(
                f"episode_ids length doesn't match: {n:,} ids for {emb.shape[0]:,} embeddings",
                code="length_mismatch",
            )
        dim = emb.shape[1]
        if dim > limits.max_dim:
            raise InvalidDataset(
                f"Embedding dimension too large: {dim:,} > {limits.max_dim:,}",
                code="dim_too_large",
            )
        if dim == 0:
            raise InvalidDataset("embeddings have dimension 0", code="embeddings_not_2d")
    for key, d in members["metadata"].items():
        if d.ndim == 0 or d.shape[0] != n:
            got = "a scalar" if d.ndim == 0 else f"{d.shape[0]:,} values"
            raise InvalidDataset(
                f"metadata/{key} length doesn't match: {got} for {n:,} episodes",
                code="metadata_length_mismatch",
            )
    return n, dim


def _decode_strings(raw: np.ndarray, what: str) -> np.ndarray:
    """bytes / str / fixed-length bytes -> object array of str; non-UTF-8 is an error."""
    out = np.empty(raw.shape[0], dtype=object)
    for i, v in enumerate(raw.tolist()):
        if isinstance(v, bytes):
            try:
                v = v.rstrip(b"\x00").decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidDataset(
                    f"{what} must be UTF-8 text: row {i} is not", code="bad_encoding"
                ) from None
        out[i] = v
    return out


def _read_episode_ids(dset: h5py.Dataset) -> np.ndarray:
    is_text = h5py.check_string_dtype(dset.dtype) is not None or dset.dtype.kind in "SO"
    if not is_text and h5py.check_vlen_dtype(dset.dtype) != np.uint8:
        raise InvalidDataset(
            f"episode_ids must be strings: got {dset.dtype}", code="bad_episode_ids"
        )
    raw = dset[()]
    if h5py.check_vlen_dtype(dset.dtype) == np.uint8:
        raw = np.array([np.asarray(b, dtype=np.uint8).tobytes() for b in raw], dtype=object)
    ids = _decode_strings(raw, "episode_ids")
    empty = np.flatnonzero(ids == "")
    if empty.size:
        raise InvalidDataset(
            f"episode_ids must be non-empty: row {int(empty[0])} is empty", code="empty_episode_id"
        )
    if len(set(ids.tolist())) != ids.size:
        dup, count = Counter(ids.tolist()).most_common(1)[0]
        rows = np.flatnonzero(ids == dup)[:2].tolist()
        raise InvalidDataset(
            f"episode_ids must be unique: {dup!r} appears {count} times (rows {rows[0]} and "
            f"{rows[1]})",
            code="duplicate_episode_ids",
        )
    return ids


def _read_field(name: str, dset: h5py.Dataset, n: int) -> Field:
    """One metadata array -> a typed Field."""
    dtype = dset.dtype
    if dset.ndim > 1:
        return Field(name, "array", dset[()])
    if h5py.check_vlen_dtype(dtype) is not None and h5py.check_string_dtype(dtype) is None:
        return Field(name, "array", np.asarray(dset[()], dtype=object))
    if dtype == np.bool_:
        return Field(name, "bool", dset[()].astype(bool))
    if dtype.kind in "iu":
        return Field(name, "int", dset[()].astype(np.int64))
    if dtype.kind == "f":
        return Field(name, "float", dset[()].astype(np.float64))
    if h5py.check_string_dtype(dtype) is not None or dtype.kind == "S":
        return _string_field(name, _decode_strings(dset[()], f"metadata/{name}"))
    raise InvalidDataset(
        f"metadata/{name} has an unsupported dtype: {dtype}", code="unsupported_dtype"
    )


def _string_field(name: str, values: np.ndarray) -> Field:
    uniques, codes = np.unique(values.astype(str), return_inverse=True)
    if uniques.size <= MAX_CATEGORIES:
        return Field(name, "category", codes.astype(np.int32), tuple(uniques.tolist()))
    return Field(name, "string", values)


def _check_preview(dset: h5py.Dataset, name: str, n: int) -> None:
    if dset.ndim != 1 or h5py.check_vlen_dtype(dset.dtype) != np.uint8:
        raise InvalidDataset(
            f"{name} must be a 1D array of variable-length bytes (h5py.vlen_dtype(np.uint8))",
            code="bad_previews",
        )
    if dset.shape[0] != n:
        raise InvalidDataset(
            f"{name} length doesn't match: {dset.shape[0]:,} for {n:,} episodes",
            code="preview_length_mismatch",
        )


def _read_embeddings(dset: h5py.Dataset) -> tuple[np.ndarray, str]:
    """Copy into one float32 array block by block; check every row is finite; hash it."""
    n, dim = dset.shape
    out = np.empty((n, dim), dtype=np.float32)
    hasher = xxhash.xxh3_128()  # content key for the projection cache; ~8 GB/s
    hasher.update(f"{n}x{dim}".encode())
    staging = None if dset.dtype == np.float32 else np.empty((BLOCK_ROWS, dim), dset.dtype)
    for start in range(0, n, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, n)
        if staging is None:
            dset.read_direct(out, np.s_[start:stop], np.s_[start:stop])
        else:
            dset.read_direct(staging, np.s_[start:stop], np.s_[0 : stop - start])
            out[start:stop] = staging[: stop - start]
        _check_finite(out[start:stop], start)
        hasher.update(out[start:stop].data)  # the block's buffer, no copy
    return out, hasher.hexdigest()


def _check_finite(block: np.ndarray, offset: int) -> None:
    ok = np.isfinite(block).all(axis=1)
    if ok.all():
        return
    row = int(np.argmin(ok))
    kind = "NaN" if np.isnan(block[row]).any() else "Inf"
    raise InvalidDataset(
        f"Embeddings contain {kind} values (first at row {offset + row})", code="non_finite"
    )
