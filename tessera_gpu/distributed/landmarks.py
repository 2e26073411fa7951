"""The map of a sharded dataset on Dask: landmarks fitted on one worker, the rest placed on all.

1. **landmarks**: ``min(landmarks, N)`` rows (200,000 by default) drawn with the projection's
   seed; each partition's worker sends its landmark rows to the worker that fits them;
2. **fit** (one task): :func:`~tessera_gpu.projection.project.project`, today's engine, on that
   worker's backend (cuML's UMAP or the CuPy tier on a GPU worker, numba on a CPU one), then an
   index of the landmarks (:func:`~tessera_gpu.projection.transform.build_landmark_index`);
3. **place** (a task per partition): every other row placed with the landmarks held fixed
   (:func:`~tessera_gpu.projection.transform.place`); the index goes once to each worker.

This is ``cuml.dask.manifold.UMAP``'s design (fit on a sample, transform the partitions).
The fit runs on a worker, not on the server: the landmarks are embeddings (200k x 2048 floats
is 1.6 GB), which never pass through the server; a GPU worker fits them on its GPU; and the
server keeps only coordinates. Up to ``landmarks`` rows, the one task is the whole in-process
projection, so the map is the in-process one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tessera_gpu.distributed.refs import (
    ShardRef,
    on_worker,
    read_block,
    split_rows,
    take_rows,
    worker_backend,
)
from tessera_gpu.projection.project import Projection, ProjectionParams, project
from tessera_gpu.projection.transform import (
    PLACE_EPOCHS,
    LandmarkIndex,
    build_landmark_index,
    place,
)

if TYPE_CHECKING:
    from tessera_gpu.distributed.cluster import Cluster

__all__ = ["LandmarkFit", "distributed_project", "fit_landmarks", "place_block"]

_SHARES = {"landmarks": (0.0, 0.05), "fit": (0.05, 0.5), "place": (0.5, 1.0)}


@dataclass(frozen=True, eq=False)
class LandmarkFit:
    """The fitted landmarks: their map, the fit's info, the index placement uses."""

    coords: np.ndarray
    info: dict[str, Any]
    index: LandmarkIndex


@on_worker
def fit_landmarks(params: ProjectionParams, *blocks: np.ndarray) -> LandmarkFit:
    """Project the landmark rows (in row order) with the worker's backend; index them."""
    x = np.ascontiguousarray(np.vstack(blocks), dtype=np.float32)
    backend = worker_backend()
    result = project(backend.to_device(x), backend=backend, params=params)
    coords = np.ascontiguousarray(result.coords, dtype=np.float32)
    return LandmarkFit(coords, result.info, build_landmark_index(x, coords, seed=params.seed))


@on_worker
def place_block(
    ref: ShardRef, limits: Any, index: LandmarkIndex, landmarks: np.ndarray, params: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Place the ref's rows but its ``landmarks`` (local rows): ``(global rows, (n, 2))``."""
    keep = np.setdiff1d(np.arange(ref.n_rows), landmarks)
    block = read_block(ref, limits, keep)
    return block.rows, place(index, block.x, block.rows, params=params)


def fit_part(fit: LandmarkFit, name: str) -> Any:
    """One part of the fit (a task, so the index alone travels to the placing workers)."""
    return getattr(fit, name)


def distributed_project(
    engine: Cluster,
    refs: list[ShardRef],
    params: ProjectionParams,
    *,
    landmarks: int,
    progress: Callable[[str, float], None] | None = None,
) -> Projection:
    """See the module docstring: ``(N, 2)`` float32 coordinates and the run's info."""

    def report(stage: str, fraction: float) -> None:
        if progress is not None:
            lo, hi = _SHARES[stage]
            progress(stage, lo + (hi - lo) * fraction)

    started = time.perf_counter()
    n = refs[-1].stop
    n_land = min(landmarks, n)
    rng = np.random.default_rng(params.seed)
    chosen = np.arange(n) if n_land == n else np.sort(rng.choice(n, n_land, replace=False))
    local = split_rows(refs, chosen.astype(np.int64))
    blocks = [
        engine.submit(take_rows, ref, engine.limits, loc, name="project-landmarks")
        for ref, loc in zip(refs, local, strict=True) if len(loc)
    ]  # fmt: skip
    fit = engine.submit(fit_landmarks, params, *blocks, name="project-fit")
    index = engine.submit(fit_part, fit, "index", name="project-index")
    placed = [
        engine.submit(place_block, ref, engine.limits, index, loc, params, name="project-place")
        for ref, loc in zip(refs, local, strict=True) if ref.n_rows > len(loc)
    ]  # fmt: skip
    report("landmarks", 1.0)
    coords_l, info = engine.gather([engine.submit(fit_part, fit, f, name="project-result")
                                    for f in ("coords", "info")])  # fmt: skip
    fitted = time.perf_counter()
    report("fit", 1.0)
    coords = np.empty((n, 2), dtype=np.float32)
    coords[chosen] = coords_l
    for done, (rows, xy) in enumerate(engine.as_completed(placed), 1):
        coords[rows] = xy
        report("place", done / len(placed))
    if progress is not None:
        progress("done", 1.0)
    return Projection(coords, _info(info, engine, n, n_land, started, fitted))


def _info(
    fit: dict[str, Any], engine: Cluster, n: int, n_land: int, started: float, fitted: float
) -> dict[str, Any]:
    now = time.perf_counter()
    out = {**fit, "n": n, "dask": engine.describe()}
    if n_land < n:
        out["algorithm"] = f"{fit.get('algorithm', 'umap')}+landmarks"
        out["landmarks"] = n_land
        out["placement"] = {"epochs": PLACE_EPOCHS, "method": "umap-transform"}
    out["timings"] = {
        **fit.get("timings", {}),
        "fit_with_landmarks": round(fitted - started, 3),
        "place": round(now - fitted, 3),
        "total_dask": round(now - started, 3),
    }
    return out
