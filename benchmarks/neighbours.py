"""Held-out neighbours: Tessera's cosine kNN graph, pynndescent and faiss HNSW, against the exact
neighbours (run by ``benchmarks/similarity.py``; see its docstring)."""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any

import numpy as np

from benchmarks.data import CACHE_DIR, cached_heldout

KNN_K = 15  # recall@15, as issue 22 measured


def unit_rows(x: np.ndarray) -> np.ndarray:
    """``x`` scaled to unit rows (float32, a copy, made in blocks)."""
    out = np.empty_like(x, dtype=np.float32)
    for start in range(0, len(x), 20_000):
        block = x[start : start + 20_000]
        out[start : start + 20_000] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def exact_neighbours(x: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact ``k`` nearest other rows of each query by cosine distance, and the distances
    (float64 from float32 unit rows), nearest first."""
    q = x[queries] / np.linalg.norm(x[queries], axis=1, keepdims=True)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    best_d = np.zeros((len(queries), 0))
    for start in range(0, len(x), 20_000):
        block = x[start : start + 20_000]
        d = 1.0 - (q @ (block / np.linalg.norm(block, axis=1, keepdims=True)).T).astype(np.float64)
        rows = np.arange(start, start + len(block))
        d[rows[None, :] == queries[:, None]] = np.inf  # not itself
        best_i = np.hstack([best_i, np.broadcast_to(rows, d.shape)])
        best_d = np.hstack([best_d, d])
        keep = np.argsort(best_d, axis=1, kind="stable")[:, :k]
        best_i, best_d = np.take_along_axis(best_i, keep, 1), np.take_along_axis(best_d, keep, 1)
    return best_i, best_d


def heldout_truth(n: int, dim: int, n_queries: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(queries, exact neighbours, their distances)`` of the held-out data, cached."""
    path = CACHE_DIR / f"heldout-{n}x{dim}-s0-truth{n_queries}.npz"
    if path.exists():
        saved = np.load(path)
        return saved["queries"], saved["idx"], saved["dist"]
    x = cached_heldout(n, dim)
    queries = np.sort(np.random.default_rng(1).choice(n, min(n, n_queries), replace=False))
    idx, dist = exact_neighbours(x, queries, KNN_K)
    np.savez(path, queries=queries, idx=idx, dist=dist)
    return queries, idx, dist


def score(found: np.ndarray, dist: np.ndarray, truth: tuple[np.ndarray, ...]) -> dict[str, Any]:
    """Recall@15 and the ``uniqueness`` error of a graph (``found``: each row's neighbours,
    itself among them or not) at the queries."""
    queries, t_idx, t_dist = truth
    others = [(f[f != q], d[f != q]) for q, f, d in zip(queries, found[queries], dist[queries],
                                                         strict=True)]  # fmt: skip
    recall = np.mean([len(set(o[:KNN_K].tolist()) & set(t.tolist())) / KNN_K
                      for (o, _), t in zip(others, t_idx, strict=True)])  # fmt: skip
    tenth = np.array([d[9] if len(d) > 9 else np.nan for _, d in others])
    error = np.abs(tenth - t_dist[:, 9])
    return {"recall_at_15": round(float(recall), 4),
            "uniqueness_abs_error": round(float(np.nanmean(error)), 5),
            "uniqueness_rel_error": round(float(np.nanmean(error / t_dist[:, 9])), 4)}  # fmt: skip


def warm_tessera(x: np.ndarray) -> None:
    """Compile the index's kernels, those of both graph paths (every pair; cells), on a few
    rows, so that JIT compilation is not timed."""
    from tessera_gpu.backends import cpu_cosine, get_backend
    from tessera_gpu.similarity import build_index

    rows = np.ascontiguousarray(x[:4000])
    build_index(rows, rows, get_backend("cpu"))
    exact_work, cpu_cosine.EXACT_WORK = cpu_cosine.EXACT_WORK, 0
    try:
        build_index(rows, rows, get_backend("cpu"))
    finally:
        cpu_cosine.EXACT_WORK = exact_work


def tessera_graph(x: np.ndarray) -> dict[str, Any]:
    from tessera_gpu.backends import get_backend
    from tessera_gpu.similarity import build_index

    backend = get_backend("cpu")
    warm_tessera(x)
    t0 = time.perf_counter()
    index = build_index(x, x, backend)
    return {"seconds": round(time.perf_counter() - t0, 2), "method": index.info["knn"],
            "found": index.indices, "dist": index.distances}  # fmt: skip


def pynndescent_graph(x: np.ndarray) -> dict[str, Any]:
    from pynndescent import NNDescent

    _ = NNDescent(x[:5000], metric="cosine", n_jobs=2).neighbor_graph  # JIT out of the timing
    t0 = time.perf_counter()
    found, dist = NNDescent(x, metric="cosine", n_jobs=2).neighbor_graph
    return {"seconds": round(time.perf_counter() - t0, 2), "found": found, "dist": dist,
            "method": "NNDescent(metric='cosine', n_jobs=2), n_neighbors=30 (default)"}  # fmt: skip


def faiss_hnsw_graph(x: np.ndarray) -> dict[str, Any]:
    import faiss

    faiss.omp_set_num_threads(2)
    t0 = time.perf_counter()
    unit = unit_rows(x)
    index = faiss.IndexHNSWFlat(x.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.add(unit)
    t1 = time.perf_counter()
    index.hnsw.efSearch = 16
    sims, found = index.search(unit, KNN_K + 1)
    t2 = time.perf_counter()
    return {"seconds": round(t2 - t0, 2), "build_s": round(t1 - t0, 2),
            "search_s": round(t2 - t1, 2), "found": found, "dist": 1.0 - sims,
            "method": "IndexHNSWFlat(M=32, inner product of unit rows), efSearch=16"}  # fmt: skip


GRAPHS = {"tessera": tessera_graph, "pynndescent": pynndescent_graph,
          "faiss_hnsw": faiss_hnsw_graph}  # fmt: skip


def neighbours(n: int, dim: int, n_queries: int, *, repeats: int = 1) -> dict[str, Any]:
    """The held-out comparison: each graph's time (median of ``repeats``, the graphs taking
    turns so that a busy spell hits all of them; faiss once above 20,000 rows), recall@15 and
    uniqueness error (of the first run)."""
    truth = heldout_truth(n, dim, n_queries)
    x = cached_heldout(n, dim)
    out: dict[str, Any] = {"rows": n, "dim": dim, "queries": len(truth[0]), "repeats": repeats,
                           "load_average_at_start": round(os.getloadavg()[0], 2)}  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in GRAPHS}
    for turn in range(repeats):
        for name, build in GRAPHS.items():
            if turn and name == "faiss_hnsw" and n > 20_000:
                continue  # its build alone takes minutes here: one run
            graph = build(x)
            found, dist = graph.pop("found"), graph.pop("dist")
            times[name].append(graph["seconds"])
            if turn == 0:
                out[name] = {**graph, **score(found, dist, truth)}
            del found, dist
            out[name]["seconds"] = round(statistics.median(times[name]), 2)
            out[name]["runs_s"] = times[name]
            print(json.dumps({name: out[name]}), flush=True)
    out["load_average_at_end"] = round(os.getloadavg()[0], 2)
    for peer in ("pynndescent", "faiss_hnsw"):
        ratio = out["tessera"]["seconds"] / out[peer]["seconds"]
        out[f"tessera_time_over_{peer}"] = round(ratio, 3)
    return out
