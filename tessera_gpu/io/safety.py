"""Checks on an untrusted HDF5 file, made before any of its data is read.

The file is opened read-only and only the names the format defines are looked at:
``/embeddings``, ``/episode_ids``, ``/thumbnails``, ``/gifs`` and the direct members of
``/metadata``. Nothing is walked recursively and no link is followed except a soft link
that points at another of those names.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from tessera_gpu.errors import InvalidDataset, NotFound, PayloadTooLarge, UnsupportedMediaType

__all__ = [
    "ALLOWED_FILTERS",
    "Limits",
    "check_dataset_object",
    "check_file_on_disk",
    "check_link_count",
    "check_storage",
    "disable_filter_plugins",
    "open_hdf5",
    "resolve_member",
]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

#: HDF5 filter id -> name. Anything else (bzip2, blosc, szip, user plugins) is refused.
ALLOWED_FILTERS = {
    h5py.h5z.FILTER_DEFLATE: "deflate",
    h5py.h5z.FILTER_SHUFFLE: "shuffle",
    h5py.h5z.FILTER_FLETCHER32: "fletcher32",
    32000: "lzf",
}

SCHEMA_ROOT = ("embeddings", "episode_ids", "thumbnails", "gifs", "metadata")


@dataclass(frozen=True)
class Limits:
    """Bounds applied to every file. Defaults follow the format spec."""

    max_episodes: int = 200_000
    max_dim: int = 2_048
    max_file_bytes: int | None = None  # uploads: 100 MB; files on the server's disk: no limit
    max_chunk_bytes: int = 64 * 2**20
    max_compression_ratio: float = 200.0
    max_root_links: int = 64
    max_metadata_fields: int = 512


def disable_filter_plugins() -> None:
    """Stop HDF5 from loading filter plugins from disk: only built-in filters are used."""
    while h5py.h5pl.size() > 0:
        h5py.h5pl.remove(0)


def _mb(n_bytes: float) -> str:
    return f"{n_bytes / 1e6:.1f} MB"


def check_file_on_disk(path: Path, limits: Limits) -> int:
    """Refuse missing, non-regular, oversized and non-HDF5 paths; return the size in bytes."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotFound(f"No such file: {path}", code="file_not_found") from None
    except OSError as exc:
        raise InvalidDataset(f"Cannot read {path}: {exc.strerror}", code="unreadable") from None
    if not stat.S_ISREG(st.st_mode):
        raise InvalidDataset(
            f"Not a regular file: {path} (directories, FIFOs and devices are refused)",
            code="not_regular_file",
        )
    if limits.max_file_bytes is not None and st.st_size > limits.max_file_bytes:
        raise PayloadTooLarge(
            f"File too large: {_mb(st.st_size)} > {_mb(limits.max_file_bytes)}",
            code="file_too_large",
        )
    if not _has_signature(path, st.st_size):
        raise UnsupportedMediaType(
            f"Not an HDF5 file: {path.name} has no HDF5 signature", code="not_hdf5"
        )
    return st.st_size


def _has_signature(path: Path, size: int) -> bool:
    """The superblock sits at byte 0, 512, 1024, 2048, ... (HDF5 spec, 'Format Signature')."""
    # O_NONBLOCK: a path swapped for a FIFO after the stat must not hang the open.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        offset = 0
        while offset + len(HDF5_SIGNATURE) <= size:
            if os.pread(fd, len(HDF5_SIGNATURE), offset) == HDF5_SIGNATURE:
                return True
            offset = 512 if offset == 0 else offset * 2
        return False
    finally:
        os.close(fd)


def open_hdf5(path: Path) -> h5py.File:
    """Open read-only; a truncated or corrupt file becomes a clear InvalidDataset."""
    try:
        return h5py.File(path, "r", locking=False)
    except OSError as exc:
        text = str(exc)
        if "truncated" in text:
            raise InvalidDataset(
                f"File is truncated: {path.name} is shorter than its HDF5 header says",
                code="truncated",
            ) from None
        raise InvalidDataset(
            f"File is corrupt: HDF5 could not open {path.name} ({text})", code="corrupt_file"
        ) from None


def resolve_member(group: h5py.Group, name: str, *, where: str) -> h5py.HLObject | None:
    """Return ``group[name]`` if it is a hard link, or a soft link to a schema path.

    External links are refused without being followed; so are soft links that point
    anywhere else in the file.
    """
    link = group.get(name, getlink=True)
    if link is None:
        return None
    path = f"{where.rstrip('/')}/{name}"
    if isinstance(link, h5py.ExternalLink):
        raise InvalidDataset(
            f"External link not allowed: {path} -> {link.filename}:{link.path}",
            code="external_link",
        )
    if isinstance(link, h5py.SoftLink):
        target = link.path if link.path.startswith("/") else f"{where.rstrip('/')}/{link.path}"
        if not _is_schema_path(target):
            raise InvalidDataset(
                f"Soft link leaves the expected schema: {path} -> {link.path}", code="soft_link"
            )
        if isinstance(group.file.get(target, getlink=True), h5py.SoftLink | h5py.ExternalLink):
            raise InvalidDataset(f"Chained link not allowed: {path} -> {target}", code="soft_link")
    try:
        return group[name]
    except (KeyError, OSError) as exc:
        raise InvalidDataset(f"Cannot open {path}: {exc}", code="corrupt_file") from None


def _is_schema_path(target: str) -> bool:
    parts = [p for p in target.split("/") if p]
    if len(parts) == 1:
        return parts[0] in SCHEMA_ROOT and parts[0] != "metadata"
    return len(parts) == 2 and parts[0] == "metadata"


def check_link_count(group: h5py.Group, limit: int, *, where: str) -> None:
    n = len(group)
    if n > limit:
        raise InvalidDataset(
            f"Too many objects in {where}: {n:,} > {limit:,}", code="too_many_objects"
        )


def check_dataset_object(obj: h5py.HLObject, path: str, limits: Limits) -> h5py.Dataset:
    """Refuse storage and types Tessera will not read: VDS, external raw data, plugins, bombs."""
    if isinstance(obj, h5py.Group):
        raise InvalidDataset(f"{path} is a group, expected an array", code="unexpected_group")
    if not isinstance(obj, h5py.Dataset):
        raise InvalidDataset(f"{path} is not an array", code="unsupported_object")
    _check_dtype(obj.dtype, path)
    dcpl = obj.id.get_create_plist()
    if dcpl.get_layout() == h5py.h5d.VIRTUAL:
        raise InvalidDataset(f"Virtual dataset not allowed: {path}", code="virtual_dataset")
    if dcpl.get_external_count() > 0:
        raise InvalidDataset(
            f"External raw storage not allowed: {path} stores its data in another file",
            code="external_storage",
        )
    for i in range(dcpl.get_nfilters()):
        code = dcpl.get_filter(i)[0]
        if code not in ALLOWED_FILTERS:
            allowed = ", ".join(ALLOWED_FILTERS.values())
            raise InvalidDataset(
                f"Compression filter not allowed: {path} uses filter {code}; allowed: {allowed}",
                code="filter_not_allowed",
            )
    _check_chunks(obj, path, limits)
    return obj


def _check_dtype(dtype: np.dtype, path: str) -> None:
    if h5py.check_dtype(ref=dtype) is not None:
        raise InvalidDataset(f"References are not allowed: {path}", code="reference_dtype")
    if dtype.names is not None:
        raise InvalidDataset(f"Compound dtype not allowed: {path}", code="unsupported_dtype")
    if dtype.kind == "V":
        raise InvalidDataset(f"Opaque dtype not allowed: {path}", code="unsupported_dtype")
    vlen = h5py.check_vlen_dtype(dtype)
    if vlen is not None and h5py.check_string_dtype(dtype) is None and vlen != np.uint8:
        raise InvalidDataset(
            f"Unsupported variable-length dtype in {path}: {vlen}", code="unsupported_dtype"
        )


def _check_chunks(dset: h5py.Dataset, path: str, limits: Limits) -> None:
    if dset.chunks is not None:
        chunk_bytes = int(np.prod(dset.chunks, dtype=np.int64)) * dset.dtype.itemsize
        if chunk_bytes > limits.max_chunk_bytes:
            raise InvalidDataset(
                f"Chunk too large: {path} uses {_mb(chunk_bytes)} chunks "
                f"(limit {_mb(limits.max_chunk_bytes)})",
                code="chunk_too_large",
            )


def check_storage(dset: h5py.Dataset, path: str, limits: Limits) -> None:
    """Refuse arrays that would expand far beyond their bytes on disk (decompression bombs).

    Tiny arrays (a constant bool column) compress enormously and harmlessly; bombs are big.
    An array that declares megabytes but stores nothing at all is refused the same way.
    """
    if h5py.check_vlen_dtype(dset.dtype) is not None:
        return
    logical = dset.size * dset.dtype.itemsize
    if logical <= 2**20:
        return
    stored = dset.id.get_storage_size()
    if stored == 0:
        raise InvalidDataset(f"{path} declares {_mb(logical)} but stores no data", code="no_data")
    if logical / stored > limits.max_compression_ratio:
        raise InvalidDataset(
            f"Compression ratio too high: {path} expands {logical / stored:.0f}x "
            f"(limit {limits.max_compression_ratio:.0f}x)",
            code="compression_ratio",
        )
