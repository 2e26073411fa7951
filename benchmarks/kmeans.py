"""K-means, diversity samples and the projection's neighbours on held-out data, against peers.

Used by :mod:`benchmarks.run` (its "kmeans", "samples" and "recall" sections).  Every input is
:func:`benchmarks.data.hierarchical_mixture` (L2-normalised rows), never data Tessera was tuned
on.  Each method runs in its own process (:mod:`benchmarks.worker`) and hands back centroids
and picks; everything is then scored here by the same code:

* **inertia**: the sum of squared distances of every row to its nearest centroid, in the full
  space (scikit-learn's ``inertia_``);
* **coverage** of a sample: the mean cosine distance of every row to its nearest sampled row
  (lower is better), exact; beside it, a random sample of the same size from the same rows;
* **recall@15** of the projection's kNN table against exact neighbours of 1,000 rows, beside
  the map's trustworthiness.

Peers: scikit-learn ``KMeans(n_clusters=k, n_init=1)`` (greedy k-means++, Lloyd to tol 1e-4;
the quality reference) and ``faiss.Kmeans(d, k, niter=25)`` on every core (the speed
reference); each sample is the row nearest each centre.  Tessera's sample is
``diversity_sample`` (its K-means, then the nearest rows, distinct).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"tessera": "tessera-kmeans", "sklearn": "sklearn-kmeans", "faiss": "faiss-kmeans"}
RECALL_QUERIES = 1000
RECALL_K = 15


def _run(job: str, data: Path, k: int, out: Path, device: str) -> dict[str, Any]:
    import json

    cmd = [sys.executable, "-m", "benchmarks.worker", job, str(data), "-k", str(k),
           "--device", device, "--coords", str(out)]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{job} on {data.name} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result["runs"][-1]


def inertia(x: np.ndarray, centroids: np.ndarray) -> float:
    """Sum over rows of the squared distance to the nearest centroid (exact differences)."""
    from tessera_gpu.backends.cpu_knn import exact_knn

    _, dist = exact_knn(np.ascontiguousarray(centroids, np.float32), 1, queries=x)
    return float(np.square(dist[:, 0], dtype=np.float64).sum())


def coverage(x: np.ndarray, picked: np.ndarray) -> float:
    """Mean cosine distance of every (unit) row to its nearest row of ``picked``."""
    from tessera_gpu.backends.cpu_knn import exact_knn

    sample = np.ascontiguousarray(x[np.unique(picked)])
    _, dist = exact_knn(sample, 1, queries=x)
    return float((np.square(dist[:, 0], dtype=np.float64) / 2.0).mean())


def compare(label: str, path: Path, k: int, *, device: str) -> dict[str, Any]:
    """Tessera, scikit-learn and faiss K-means (k clusters) and their samples on one input."""
    x = np.load(path)
    print(f"k-means {label} {x.shape[0]:,}x{x.shape[1]} k={k:,} ...", flush=True)
    row: dict[str, Any] = {"data": label, "n": x.shape[0], "d": x.shape[1], "k": k}
    with tempfile.TemporaryDirectory() as tmp:
        for name, job in METHODS.items():
            out = Path(tmp) / f"{name}.npz"
            run = _run(job, path, k, out, device if name == "tessera" else "cpu")
            arrays = np.load(out)
            row[f"{name}_kmeans_s"] = round(run["kmeans_seconds"], 2)
            row[f"{name}_sample_s"] = round(run["sample_seconds"], 2)
            row[f"{name}_inertia"] = round(inertia(x, arrays["centroids"]), 2)
            row[f"{name}_coverage"] = round(coverage(x, arrays["picked"]), 5)
            row[f"{name}_distinct"] = int(np.unique(arrays["picked"]).size)
            if "n_iter" in run:
                row[f"{name}_iterations"] = run["n_iter"]
    rng = np.random.default_rng(0)
    row["random_coverage"] = round(coverage(x, rng.choice(len(x), k, replace=False)), 5)
    for peer in ("sklearn", "faiss"):
        row[f"inertia_vs_{peer}"] = round(row["tessera_inertia"] / row[f"{peer}_inertia"], 4)
        row[f"coverage_vs_{peer}"] = round(row["tessera_coverage"] / row[f"{peer}_coverage"], 4)
        row[f"kmeans_speedup_vs_{peer}"] = round(
            row[f"{peer}_kmeans_s"] / row["tessera_kmeans_s"], 2
        )
        row[f"sample_speedup_vs_{peer}"] = round(
            row[f"{peer}_sample_s"] / row["tessera_sample_s"], 2
        )
    return row


def recall(label: str, path: Path, *, device: str) -> dict[str, Any]:
    """The projection's kNN table (what the map is built from) against exact neighbours of
    1,000 seeded rows, and the map's trustworthiness (same 5,000 rows as everywhere)."""
    from benchmarks.data import trustworthiness_at
    from tessera_gpu.backends import get_backend
    from tessera_gpu.backends.cpu_knn import exact_knn
    from tessera_gpu.projection.project import ProjectionParams, project

    x = np.load(path)
    print(f"projection kNN recall {label} {x.shape[0]:,}x{x.shape[1]} ...", flush=True)
    backend = get_backend(device)
    dev = backend.to_device(x)
    start = time.perf_counter()
    table = backend.neighbors(dev, RECALL_K + 1, seed=0)
    knn_s = time.perf_counter() - start
    queries = np.sort(np.random.default_rng(0).choice(len(x), RECALL_QUERIES, replace=False))
    truth, _ = exact_knn(x, RECALL_K + 1, queries=x[queries])
    found = table.indices[queries]
    hits = [len(set(f[1:].tolist()) & set(t[1:].tolist())) for f, t in zip(found, truth,
                                                                         strict=True)]  # fmt: skip
    start = time.perf_counter()
    coords = project(dev, backend=backend, params=ProjectionParams(seed=0)).coords
    project_s = time.perf_counter() - start
    return {
        "data": label,
        "n": x.shape[0],
        "d": x.shape[1],
        "knn": table.method,
        "knn_s": round(knn_s, 2),
        "recall_at_15": round(float(np.mean(hits)) / RECALL_K, 4),
        "projection_s": round(project_s, 2),
        "trustworthiness": round(trustworthiness_at(x, coords), 4),
    }
