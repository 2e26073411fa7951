"""Computed arrays kept on disk, keyed by the content they were computed from.

Projections, similarity graphs and cluster labels are pure functions of a dataset's
embeddings and some parameters, so each is stored once under a key made of the embeddings'
content digest, the parameters and an algorithm version, and found again after a restart.

File layout (little-endian)::

    b"TSRARTF1"                      8-byte magic
    u64 header length H              8 bytes
    header                           H bytes of JSON: arrays (name, dtype, shape), the payload's
                                     SHA-256, and the info dict
    payload                          the arrays' bytes, C order, one after the other

A file is served only if its magic, header, payload length and SHA-256 all check out; a
truncated or corrupt one is deleted and reported as a miss. Writes go through
:func:`tessera_gpu.io.files.write_atomic`: readers see the old file or the new one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tessera_gpu.io.files import write_atomic

__all__ = ["Artifact", "ArtifactStore", "content_part"]

log = logging.getLogger(__name__)

MAGIC = b"TSRARTF1"
_MAX_HEADER = 1 << 20
_DTYPES = {"<f4", "<f8", "<i4", "<i8", "|u1", "|b1"}

Artifact = tuple[dict[str, np.ndarray], dict[str, Any]]


def content_part(content_hash: str) -> str:
    """The first part of every key: lets :meth:`ArtifactStore.forget` find a dataset's files."""
    return hashlib.sha256(content_hash.encode()).hexdigest()[:32]


class ArtifactStore:
    """Files ``<key><suffix>`` under ``directory`` (created by the first store)."""

    def __init__(self, directory: str | os.PathLike[str], suffix: str) -> None:
        self.directory = Path(directory)
        self.suffix = suffix

    @staticmethod
    def key(content_hash: str, params: Mapping[str, Any], version: str) -> str:
        """``<content>-<params>``: digests of the content, and of the params with the version."""
        blob = json.dumps({"params": dict(params), "version": version}, sort_keys=True)
        return f"{content_part(content_hash)}-{hashlib.sha256(blob.encode()).hexdigest()[:32]}"

    def path(self, key: str) -> Path:
        return self.directory / f"{key}{self.suffix}"

    def forget(self, content_hash: str) -> int:
        """Remove every file of this content, whatever its params; return how many."""
        removed = 0
        for path in self.directory.glob(f"{content_part(content_hash)}-*{self.suffix}"):
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    def load(self, key: str) -> Artifact | None:
        """The stored arrays and info, or None when absent, truncated or corrupt (removed)."""
        path = self.path(key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cache: cannot read %s: %s", path, exc)
            return None
        found = decode(raw)
        if found is None:
            log.warning("cache: %s is truncated or corrupt; recomputing", path)
            path.unlink(missing_ok=True)
        return found

    def store(self, key: str, arrays: Mapping[str, np.ndarray], info: Mapping[str, Any]) -> bool:
        """Write atomically; return False (and log) if the disk refuses, never raise."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path(key), encode(arrays, info))
        except OSError as exc:
            log.warning("cache: cannot write %s: %s", self.path(key), exc)
            return False
        return True


def encode(arrays: Mapping[str, np.ndarray], info: Mapping[str, Any]) -> bytes:
    parts, specs = [], []
    for name, array in arrays.items():
        a = np.ascontiguousarray(array)
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        specs.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape)})
        parts.append(a.tobytes())
    payload = b"".join(parts)
    header = json.dumps(
        {"arrays": specs, "sha256": hashlib.sha256(payload).hexdigest(), "info": dict(info)},
        default=str,
    ).encode()
    return MAGIC + struct.pack("<Q", len(header)) + header + payload


def decode(raw: bytes) -> Artifact | None:
    """Parse and verify a file's bytes; None on any inconsistency."""
    if len(raw) < 16 or raw[:8] != MAGIC:
        return None
    (size,) = struct.unpack("<Q", raw[8:16])
    if size > _MAX_HEADER or len(raw) < 16 + size:
        return None
    try:
        header: dict[str, Any] = json.loads(raw[16 : 16 + size])
        specs = [(str(s["name"]), str(s["dtype"]), tuple(int(v) for v in s["shape"]))
                 for s in header["arrays"]]  # fmt: skip
        digest = str(header["sha256"])
        info = dict(header.get("info") or {})
    except (ValueError, KeyError, TypeError):
        return None
    payload = raw[16 + size :]
    if hashlib.sha256(payload).hexdigest() != digest:
        return None
    arrays, offset = {}, 0
    for name, dtype, shape in specs:
        if dtype not in _DTYPES or any(v < 0 for v in shape):
            return None
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = count * np.dtype(dtype).itemsize
        if offset + nbytes > len(payload):
            return None
        arrays[name] = np.frombuffer(payload, dtype=dtype, count=count, offset=offset).reshape(
            shape
        )
        offset += nbytes
    if offset != len(payload):
        return None
    return {k: np.array(v, dtype=v.dtype.newbyteorder("=")) for k, v in arrays.items()}, info
