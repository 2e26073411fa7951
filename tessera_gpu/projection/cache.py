"""The projection cache on disk: one file per (embeddings content, params, backend, version).

A map is a pure function of the embeddings, the UMAP parameters, the backend that made it
(CPU, CuPy or cuML maps differ) and :data:`ALGORITHM_VERSION`, so it is stored once under
that key in an :class:`~tessera_gpu.io.artifacts.ArtifactStore` (checksummed, written
atomically; a truncated or corrupt file is deleted and the map recomputed) and found again
after a restart.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from tessera_gpu.backends import Backend, chosen, standin_name
from tessera_gpu.io.artifacts import ArtifactStore
from tessera_gpu.progress import Progress
from tessera_gpu.projection.params import Projection, ProjectionParams
from tessera_gpu.projection.project import project

__all__ = [
    "ALGORITHM_VERSION",
    "ProjectionCache",
    "backend_tag",
    "cached_projection",
    "project_cached",
]

# Bump whenever the same inputs would give a different map (kNN, graph, init or layout).
ALGORITHM_VERSION = "tessera-umap-1"
SUFFIX = ".proj"


class ProjectionCache:
    """Finished projections kept under ``directory`` (created if missing)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.artifacts = ArtifactStore(directory, SUFFIX)
        self.directory = Path(directory)

    @staticmethod
    def key(content_hash: str, params: ProjectionParams, *, backend: str) -> str:
        """``<content>-<rest>``: digests of the embeddings' content hash, and of every param,
        the backend (:func:`backend_tag`) and ALGORITHM_VERSION. The content part lets
        :meth:`forget` find every map of one dataset, whatever made it."""
        return ArtifactStore.key(
            content_hash, {"params": asdict(params), "backend": backend}, ALGORITHM_VERSION
        )

    def path(self, key: str) -> Path:
        return self.artifacts.path(key)

    def forget(self, content_hash: str) -> int:
        """Remove every cached map of these embeddings; return how many were removed."""
        return self.artifacts.forget(content_hash)

    def load(self, key: str) -> Projection | None:
        """The cached projection, or None when absent, truncated or corrupt (then removed)."""
        found = self.artifacts.load(key)
        if found is None:
            return None
        arrays, info = found
        coords = arrays.get("coords")
        if coords is None or coords.ndim != 2 or coords.shape[1] != 2:
            self.path(key).unlink(missing_ok=True)
            return None
        return Projection(np.asarray(coords, dtype=np.float32), info)

    def store(self, key: str, projection: Projection) -> bool:
        """Write atomically; return False (and log) if the disk refuses, never raise."""
        coords = np.ascontiguousarray(projection.coords, dtype=np.float32)
        return self.artifacts.store(key, {"coords": coords}, projection.info)


def backend_tag(backend: Any) -> str:
    """The backend's part of a cache key: its name, plus the stand-in's when one is on."""
    standin = getattr(backend, "standin", None)
    return f"{backend.name}+{standin}-standin" if standin else str(backend.name)


def device_tag(mode: str | None) -> str:
    """:func:`backend_tag` of the backend ``get_backend(mode)`` would make, without making it
    (a cache look-up then imports no kernel)."""
    name, _ = chosen(mode)
    standin = standin_name() if name == "cupy" else None
    return f"{name}+{standin}-standin" if standin else name


def project_cached(
    x: Any,
    *,
    backend: Backend,
    params: ProjectionParams = ProjectionParams(),
    cache: ProjectionCache | None = None,
    content_hash: str | None = None,
    progress: Progress | None = None,
) -> Projection:
    """:func:`project`, served from / stored to ``cache`` (a ProjectionCache) when both
    ``cache`` and ``content_hash`` (the Dataset's ``embeddings_hash``) are given.

    ``info["cache"]`` says ``"hit"``, ``"stored"`` or ``"off"``.
    """
    return cached_projection(
        lambda: project(x, backend=backend, params=params, progress=progress),
        cache=cache, content_hash=content_hash, params=params, tag=backend_tag(backend),
        progress=progress,
    )  # fmt: skip


def cached_projection(
    compute: Callable[[], Projection],
    *,
    cache: ProjectionCache | None,
    content_hash: str | None,
    params: ProjectionParams,
    tag: str,
    progress: Progress | None = None,
) -> Projection:
    """``compute()`` served from / stored to ``cache`` under ``(content_hash, params, tag)``
    (``tag`` names what computed it: a backend, or a Dask cluster's landmark projection)."""
    if cache is None or not content_hash:
        result = compute()
        return Projection(result.coords, {**result.info, "cache": "off"})
    key = cache.key(content_hash, params, backend=tag)
    hit = cache.load(key)
    if hit is not None:
        if progress is not None:
            progress("done", 1.0)
        return Projection(hit.coords, {**hit.info, "cache": "hit"})
    result = compute()
    stored = cache.store(key, result)
    return Projection(result.coords, {**result.info, "cache": "stored" if stored else "off"})
