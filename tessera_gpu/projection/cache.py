"""The projection cache on disk: one file per (embeddings content, params, backend, version).

Maps from different backends are never interchangeable: cuML's UMAP is another algorithm, and
the CuPy tier's exact kNN is not the CPU tier's PCA-64 search, so the key names the backend
(and a stand-in, whose maps are for tests only).

File layout (little-endian)::

    b"TSRPROJ1"                      8-byte magic
    u64 header length H              8 bytes
    header                           H bytes of JSON: shape, dtype, sha256 of the payload, info
    payload                          the float32 (N, 2) coordinates, C order

A file is served only if the magic, the header, the payload length and the payload's SHA-256
all check out; a truncated or corrupt file is deleted and reported as a miss, so the map is
recomputed.  Writes go through :func:`tessera_gpu.io.files.write_atomic`: readers see the old
file or the new one, never half.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from tessera_gpu.io.files import write_atomic
from tessera_gpu.projection.project import Projection, ProjectionParams

__all__ = ["ALGORITHM_VERSION", "ProjectionCache", "backend_tag"]

log = logging.getLogger(__name__)

# Bump whenever the same inputs would give a different map (kNN, graph, init or layout).
ALGORITHM_VERSION = "tessera-umap-1"
MAGIC = b"TSRPROJ1"
SUFFIX = ".proj"
_MAX_HEADER = 1 << 20


class ProjectionCache:
    """Finished projections kept under ``directory`` (created if missing)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(content_hash: str, params: ProjectionParams, *, backend: str) -> str:
        """``<content>-<rest>``: hex digests of the embeddings' content hash, and of every
        param, the backend (:func:`backend_tag`) and ALGORITHM_VERSION. The content part lets
        :meth:`forget` find every map of one dataset, whatever made it."""
        blob = json.dumps(
            {"params": asdict(params), "backend": backend, "version": ALGORITHM_VERSION},
            sort_keys=True,
        )
        return f"{_content_part(content_hash)}-{hashlib.sha256(blob.encode()).hexdigest()[:32]}"

    def path(self, key: str) -> Path:
        return self.directory / f"{key}{SUFFIX}"

    def forget(self, content_hash: str) -> int:
        """Remove every cached map of these embeddings; return how many were removed."""
        removed = 0
        for path in self.directory.glob(f"{_content_part(content_hash)}-*{SUFFIX}"):
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    def load(self, key: str) -> Projection | None:
        """The cached projection, or None when absent, truncated or corrupt (then removed)."""
        path = self.path(key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("projection cache: cannot read %s: %s", path, exc)
            return None
        projection = _decode(raw)
        if projection is None:
            log.warning("projection cache: %s is truncated or corrupt; recomputing", path)
            path.unlink(missing_ok=True)
        return projection

    def store(self, key: str, projection: Projection) -> bool:
        """Write atomically; return False (and log) if the disk refuses, never raise."""
        try:
            write_atomic(self.path(key), _encode(projection))
        except OSError as exc:
            log.warning("projection cache: cannot write %s: %s", self.path(key), exc)
            return False
        return True


def backend_tag(backend: Any) -> str:
    """The backend's part of a cache key: its name, plus the stand-in's when one is on."""
    standin = getattr(backend, "standin", None)
    return f"{backend.name}+{standin}-standin" if standin else str(backend.name)


def _content_part(content_hash: str) -> str:
    return hashlib.sha256(content_hash.encode()).hexdigest()[:32]


def _encode(projection: Projection) -> bytes:
    payload = np.ascontiguousarray(projection.coords, dtype="<f4").tobytes()
    header = json.dumps(
        {
            "shape": list(projection.coords.shape),
            "dtype": "<f4",
            "sha256": hashlib.sha256(payload).hexdigest(),
            "info": projection.info,
            "version": ALGORITHM_VERSION,
        },
        default=str,
    ).encode()
    return MAGIC + struct.pack("<Q", len(header)) + header + payload


def _decode(raw: bytes) -> Projection | None:
    """Parse and verify a cache file's bytes; None on any inconsistency."""
    if len(raw) < 16 or raw[:8] != MAGIC:
        return None
    (size,) = struct.unpack("<Q", raw[8:16])
    if size > _MAX_HEADER or len(raw) < 16 + size:
        return None
    try:
        header: dict[str, Any] = json.loads(raw[16 : 16 + size])
        shape = tuple(int(v) for v in header["shape"])
        digest = str(header["sha256"])
        info = dict(header.get("info") or {})
    except (ValueError, KeyError, TypeError):
        return None
    payload = raw[16 + size :]
    if len(shape) != 2 or shape[1] != 2 or len(payload) != shape[0] * 8:
        return None
    if hashlib.sha256(payload).hexdigest() != digest:
        return None
    coords = np.frombuffer(payload, dtype="<f4").reshape(shape).astype(np.float32)
    return Projection(coords, info)
