"""One timed job in a fresh process, so its peak RSS is its own: ``python -m benchmarks.worker``.

Jobs: ``tessera`` / ``umap`` projection of a ``.npy`` (coords written to ``--coords``), and
``tessera-kmeans`` / ``sklearn-kmeans`` / ``faiss-kmeans`` K-means and the sample of the rows
nearest its centres (centroids and picks written to ``--coords`` as ``.npz``).  Each job
first runs once on the first 5,000 rows (30,000 for inputs over 25,000 rows; K-means: 2,000
rows, k <= 500), so that JIT compilation -- numba, for both Tessera and
umap-learn -- of the code paths the timed run takes is excluded from the timing; then it
runs ``--repeat`` times and prints one JSON line: the runs (seconds + extras) and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

WARMUP_ROWS = 5000  # > 4096: umap-learn switches to NN-descent there, so that gets compiled
WARMUP_ROWS_LARGE = 30_000  # > 25,000: Tessera's cell-probe kNN and coarse initialisation


def _tessera_projection(x: np.ndarray, args: argparse.Namespace) -> tuple[np.ndarray, dict]:
    from tessera_gpu.backends import get_backend
    from tessera_gpu.projection.project import ProjectionParams, project

    backend = get_backend(args.device)
    result = project(backend.to_device(x), backend=backend, params=ProjectionParams(seed=0))
    return result.coords, {k: result.info.get(k) for k in ("knn", "init", "n_epochs", "timings")}


def _umap_projection(x: np.ndarray, args: argparse.Namespace) -> tuple[np.ndarray, dict]:
    import umap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coords = umap.UMAP().fit_transform(x)  # the defaults: unseeded, parallel
    return np.asarray(coords, dtype=np.float32), {}


def _tessera_kmeans(x: np.ndarray, args: argparse.Namespace) -> tuple[dict, dict]:
    """Tessera's K-means, then (timed on its own) its diversity sample."""
    from tessera_gpu.backends import get_backend
    from tessera_gpu.clustering import diversity_sample, kmeans

    backend = get_backend(args.device)
    dev = backend.to_device(x)
    start = time.perf_counter()
    fit = kmeans(dev, args.k, backend=backend, seed=0)
    kmeans_s = time.perf_counter() - start
    start = time.perf_counter()
    picked = diversity_sample(dev, args.k, backend=backend, seed=0)
    sample_s = time.perf_counter() - start
    assert len(set(picked.tolist())) == args.k
    arrays = {"centroids": fit.centroids, "picked": picked}
    return arrays, {"kmeans_seconds": kmeans_s, "sample_seconds": sample_s}


def _sklearn_kmeans(x: np.ndarray, args: argparse.Namespace) -> tuple[dict, dict]:
    """scikit-learn's defaults (greedy k-means++, Lloyd to tol 1e-4), then the row nearest
    each centre."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import pairwise_distances_argmin

    start = time.perf_counter()
    fit = KMeans(n_clusters=args.k, n_init=1, random_state=0).fit(x)
    kmeans_s = time.perf_counter() - start
    picked = pairwise_distances_argmin(fit.cluster_centers_, x)
    sample_s = time.perf_counter() - start
    arrays = {"centroids": fit.cluster_centers_.astype(np.float32), "picked": picked}
    return arrays, {"kmeans_seconds": kmeans_s, "sample_seconds": sample_s,
                    "n_iter": int(fit.n_iter_)}  # fmt: skip


def _faiss_kmeans(x: np.ndarray, args: argparse.Namespace) -> tuple[dict, dict]:
    """``faiss.Kmeans`` (random init, 25 iterations) on every core, then the row nearest each
    centre by a flat index."""
    import faiss

    faiss.omp_set_num_threads(len(os.sched_getaffinity(0)))
    start = time.perf_counter()
    fit = faiss.Kmeans(x.shape[1], args.k, niter=25, seed=1234)
    fit.train(x)
    kmeans_s = time.perf_counter() - start
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    _, nearest = index.search(fit.centroids, 1)
    sample_s = time.perf_counter() - start
    arrays = {"centroids": np.asarray(fit.centroids, np.float32), "picked": nearest[:, 0]}
    return arrays, {"kmeans_seconds": kmeans_s, "sample_seconds": sample_s}


JOBS: dict[str, Callable[[np.ndarray, argparse.Namespace], tuple[Any, dict]]] = {
    "tessera": _tessera_projection,
    "umap": _umap_projection,
    "tessera-kmeans": _tessera_kmeans,
    "sklearn-kmeans": _sklearn_kmeans,
    "faiss-kmeans": _faiss_kmeans,
}


def _peak_rss() -> int:
    """This process's peak RSS in bytes: ``VmHWM``, which starts afresh at exec.

    (``getrusage().ru_maxrss`` survives fork+exec on Linux, so a child would report its
    parent's peak if that was higher.)
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("job", choices=sorted(JOBS))
    p.add_argument("data")
    p.add_argument("--coords", default=None)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("-k", type=int, default=5000)
    args = p.parse_args(argv)
    job = JOBS[args.job]
    x = np.load(args.data, mmap_mode="r")
    rows = WARMUP_ROWS_LARGE if len(x) > 25_000 else WARMUP_ROWS
    warm = np.ascontiguousarray(x[:rows], dtype=np.float32)
    if args.job in ("tessera", "umap"):  # K-means has no size-dependent code paths to warm
        job(warm, args)
    else:
        job(warm[:2000], argparse.Namespace(**{**vars(args), "k": min(args.k, 500)}))
    x = np.ascontiguousarray(x, dtype=np.float32)
    runs, coords = [], None
    for _ in range(args.repeat):
        start = time.perf_counter()
        coords, extra = job(x, args)
        runs.append({"seconds": time.perf_counter() - start, **extra})
    if args.coords and isinstance(coords, dict):
        np.savez(args.coords, **coords)
    elif args.coords and coords is not None:
        np.save(args.coords, coords)
    rss = _peak_rss()
    print(json.dumps({"runs": runs, "peak_rss_bytes": rss, "data_bytes": x.nbytes}))


if __name__ == "__main__":
    main(sys.argv[1:])
