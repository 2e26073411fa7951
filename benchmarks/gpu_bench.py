"""GPU benchmark at 200,000 x 2,048 (run by benchmarks/gpu_check.sh on a GPU machine).

    python -m benchmarks.gpu_bench [--n 200000] [--dim 2048] [--data x.npy] [--json runs.jsonl]
    python -m benchmarks.gpu_bench --table runs.jsonl

Times, on the best GPU backend (cuML, else CuPy), with a device synchronise around each:
host-to-device copy, exact kNN (k=15), the full projection (kNN + graph + init + layout),
Lloyd's K-means (k=5,000, 25 iterations at most) and the diversity sample (n=5,000).
Set ``CUPY_TF32=1`` before starting to let cuBLAS use TF32 tensor cores for float32 GEMMs
(the kNN re-ranks its candidates in exact fp32 either way).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGETS = {"knn_k15_s": 2.0, "projection_s": 10.0, "kmeans_k5000_s": 3.0}


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    import cupy as cp

    cp.cuda.Device().synchronize()
    start = time.perf_counter()
    out = fn()
    cp.cuda.Device().synchronize()
    return time.perf_counter() - start, out


def run(x: np.ndarray) -> dict[str, Any]:
    """Every timing of the module docstring, on ``x`` (float32)."""
    from tessera_gpu.backends import get_backend
    from tessera_gpu.backends.cupy_knn import exact_search
    from tessera_gpu.clustering import diversity_sample
    from tessera_gpu.projection.project import project

    backend = get_backend("gpu")
    warm = backend.to_device(x[:4000])  # compile kernels, warm cuBLAS, numba's layout
    exact_search(warm, warm, 15)
    project(warm, backend=backend)
    backend.kmeans(warm, 50, rows=None, seed=0, n_iter=2)
    out: dict[str, Any] = {"backend": backend.describe(), "tf32": os.environ.get("CUPY_TF32", "0")}
    out["to_device_s"], dev = _timed(lambda: backend.to_device(x))
    out["knn_k15_s"], _ = _timed(lambda: exact_search(dev, dev, 15))
    out["projection_s"], proj = _timed(lambda: project(dev, backend=backend))
    out["projection_stages"] = proj.info.get("timings")
    out["kmeans_k5000_s"], fit = _timed(
        lambda: backend.kmeans(dev, 5000, rows=None, seed=0, n_iter=25)
    )
    out["kmeans_inertia"] = fit[2]
    out["diversity_n5000_s"], _ = _timed(lambda: diversity_sample(dev, 5000, backend=backend))
    return out


def table(results: list[dict[str, Any]]) -> str:
    """A plain-text table: one column per run (fp32 / tf32), a target column."""
    keys = ["to_device_s", "knn_k15_s", "projection_s", "kmeans_k5000_s", "diversity_n5000_s"]
    head = (
        "metric".ljust(20)
        + "target".rjust(8)
        + "".join(f"tf32={r['tf32']}".rjust(12) for r in results)
    )
    rows = [head]
    for key in keys:
        target = f"<={TARGETS[key]:g}" if key in TARGETS else "-"
        cells = "".join(f"{r[key]:12.2f}" for r in results)
        rows.append(key.ljust(20) + target.rjust(8) + cells)
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--data", type=Path, default=None, help=".npy to use (made if missing)")
    p.add_argument("--json", type=Path, default=None, help="Append this run's JSON here.")
    p.add_argument("--table", type=Path, default=None, help="Print the table of a --json file.")
    args = p.parse_args(argv)
    if args.table is not None:
        runs = [json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]
        print(table(runs))
        return
    from benchmarks.data import clustered_embeddings

    if args.data is not None and args.data.exists():
        x = np.load(args.data)
    else:
        x = clustered_embeddings(args.n, args.dim, seed=0)
        if args.data is not None:
            np.save(args.data, x)
    result = run(x)
    print(json.dumps(result, default=str))
    if args.json is not None:
        with args.json.open("a") as fh:
            fh.write(json.dumps(result, default=str) + "\n")


if __name__ == "__main__":
    main()
