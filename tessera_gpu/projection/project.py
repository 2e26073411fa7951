"""UMAP projection of the embeddings to 2-D, on any backend, with a progress callback.

Pipeline (CPU and CuPy backends)::

    backend.neighbors(x, k)      kNN table (CPU: 64-d PCA + exact / cell-probe search;
                                 CuPy: exact on the GPU)
    fuzzy_graph(...)             UMAP's fuzzy union graph             (graph.py)
    spectral init                whole graph, or a coarse cell graph when the backend
                                 found cells (above 25k points)       (spectral.py)
    optimize_layout(...)         UMAP's SGD, parallel and deterministic (layout.py)

The cuML backend runs ``cuml.UMAP`` instead (``backend.umap``).  Same data, params and seed
give the same map on the CPU backend, on any thread count.

``progress(stage, fraction)`` receives a stage name (``knn``, ``graph``, ``init``,
``layout``, ``done``) and the *overall* fraction done, rising from 0 to 1.  An exception
raised by the callback aborts the projection (a job runner uses that to cancel).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import numpy as np

from tessera_gpu.backends import Backend
from tessera_gpu.progress import Progress
from tessera_gpu.projection.params import Projection, ProjectionParams

__all__ = ["Projection", "ProjectionParams", "project"]

_SHARES = {"knn": (0.0, 0.35), "graph": (0.35, 0.4), "init": (0.4, 0.45), "layout": (0.45, 1.0)}


class _Reporter:
    """Maps per-stage fractions onto the overall 0..1 and times the stages."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.timings: dict[str, float] = {}
        self._start = time.perf_counter()
        self._stage_start = self._start

    def __call__(self, stage: str, fraction: float) -> None:
        if self.progress is not None:
            lo, hi = _SHARES.get(stage, (1.0, 1.0))
            self.progress(stage, lo + (hi - lo) * min(max(fraction, 0.0), 1.0))

    def done(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = round(now - self._stage_start, 3)
        self._stage_start = now
        self(stage, 1.0)


def _tiny(n: int, backend: Backend) -> Projection:
    """Maps of 1-3 points: a UMAP of them is meaningless, so place them on a line."""
    coords = np.zeros((n, 2), dtype=np.float32)
    coords[:, 0] = np.arange(n, dtype=np.float32)
    return Projection(
        coords, {"backend": backend.name, "device": backend.device, "algorithm": "trivial", "n": n}
    )


def _initial(graph: Any, cells: np.ndarray | None, seed: int) -> tuple[np.ndarray, str]:
    from tessera_gpu.projection.spectral import coarse_spectral_init, spectral_init

    if cells is not None:
        return coarse_spectral_init(graph, cells, seed=seed), "coarse-spectral"
    return spectral_init(graph, seed=seed), "spectral"


def _layout(
    graph: Any,
    init: np.ndarray,
    cells: np.ndarray | None,
    params: ProjectionParams,
    report: _Reporter,
) -> np.ndarray:
    """Run the SGD, on rows sorted by cell when cells are known (neighbours near in memory)."""
    from tessera_gpu.projection.graph import ab_params
    from tessera_gpu.projection.layout import optimize_layout

    a, b = ab_params(params.spread, params.min_dist)
    order = None if cells is None else np.argsort(cells, kind="stable")
    if order is not None:
        graph = graph[order][:, order].tocsr()
        init = init[order]
    coords = optimize_layout(
        init,
        graph,
        a=a,
        b=b,
        n_epochs=params.epochs_for(graph.shape[0]),
        seed=params.seed,
        negative_sample_rate=params.negative_sample_rate,
        progress=lambda f: report("layout", f),
    )
    if order is not None:
        restored = np.empty_like(coords)
        restored[order] = coords
        coords = restored
    return coords


def project(
    x: Any,
    *,
    backend: Backend,
    params: ProjectionParams = ProjectionParams(),
    progress: Progress | None = None,
) -> Projection:
    """Project the backend array ``x`` (``backend.to_device(embeddings)``) to 2-D."""
    n = backend.n_rows(x)
    if n <= 3:
        return _tiny(n, backend)
    umap = getattr(backend, "umap", None)
    if umap is not None:
        coords, info = umap(x, params=params, progress=progress)
        return Projection(np.ascontiguousarray(coords, dtype=np.float32), info)
    from tessera_gpu.projection.graph import fuzzy_graph

    report = _Reporter(progress)
    report("knn", 0.0)
    nb = backend.neighbors(x, min(params.n_neighbors, n), seed=params.seed)
    report.done("knn")
    graph = fuzzy_graph(nb.indices, nb.distances)
    report.done("graph")
    init, init_name = _initial(graph, nb.cells, params.seed)
    report.done("init")
    coords = _layout(graph, init, nb.cells, params, report)
    report.done("layout")
    report.timings["total"] = round(sum(report.timings.values()), 3)
    info = {
        "backend": backend.name,
        "device": backend.device,
        "algorithm": "umap",
        "knn": nb.method,
        "init": init_name,
        "n": n,
        "n_epochs": params.epochs_for(n),
        "params": asdict(params),
        "timings": report.timings,
    }
    report("done", 1.0)
    return Projection(coords, info)
