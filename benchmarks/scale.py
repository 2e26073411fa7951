"""Scale-out on Dask: 2M x 256 in 8 shards on a LocalCluster of 2 worker processes.

    python -m benchmarks.scale [--n 2000000] [--dim 256] [--shards 8] [--landmarks 200000]
                               [--no-full-fit] [--out benchmarks/results]

Seeded clustered data (:func:`benchmarks.data.clustered_embeddings`) is written as ``--shards``
spec files in a temporary folder (2M in 8 shards is 250k rows a file, over the spec's 200k: this
run raises the per-file limit with ``Limits(max_episodes=...)``, for the workers too). A
``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`` then runs, each stage timed:

1. **check** -- the workers read every shard with the loader's checks and hash it
   (``DaskEngine.load_shards``; the server reads metadata only);
2. **knn** -- the cosine kNN graph of every row, k = 32 (what near-duplicate groups need);
3. **project** -- ``--landmarks`` rows fitted on one worker, the rest placed on both.

Peak RSS of each worker process is its VmHWM from /proc, read before the cluster closes. Then,
in this process: the full in-process fit of the same data (the reference), trustworthiness of
both maps on the same fixed 5,000 rows (k = 15, as benchmarks/run.py), and tiles and hover at N
points, coloured by ``source``, with ``TileIndex`` / ``NearestIndex`` directly (as
benchmarks/tiles.py). Prints a table and writes ``scale.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.data import clustered_embeddings  # noqa: E402
from benchmarks.tiles import occupied_tiles, time_nearest, time_tiles  # noqa: E402

GRAPH_K = 32
SUBSAMPLE = 5_000


def write_shards(x: np.ndarray, folder: Path, shards: int) -> list[Path]:
    paths = []
    for i, rows in enumerate(np.array_split(np.arange(len(x)), shards)):
        path = folder / f"shard{i:02d}.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("embeddings", data=x[rows[0] : rows[-1] + 1])
            ids = np.array([f"ep{j:08d}" for j in rows], dtype=object)
            f.create_dataset("episode_ids", data=ids, dtype=h5py.string_dtype())
        paths.append(path)
    return paths


def peak_rss_gb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9
    return float("nan")


def on_cluster(paths: list[Path], n_per_file: int, landmarks: int) -> dict[str, Any]:
    """The three timed stages on a LocalCluster; the landmark map and the workers' peaks."""
    from dask.distributed import Client, LocalCluster

    from tessera_gpu.distributed import DaskEngine
    from tessera_gpu.io.safety import Limits
    from tessera_gpu.projection.project import ProjectionParams

    out: dict[str, Any] = {}
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           memory_limit="4GB", dashboard_address=":0")  # fmt: skip
    with Client(cluster) as client:
        engine = DaskEngine(client, limits=Limits(max_episodes=n_per_file), round_bytes=512 * 2**20)
        pids = client.run(os.getpid)
        t0 = time.perf_counter()
        dataset = engine.load_shards(paths)
        out["check s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        graph = engine.cosine_knn(dataset.parts, GRAPH_K)
        out["knn s"] = time.perf_counter() - t0
        out["knn method"] = graph.method
        del graph
        t0 = time.perf_counter()
        result = engine.project(dataset.parts, ProjectionParams(), landmarks=landmarks)
        out["project s"] = time.perf_counter() - t0
        out["project timings"] = result.info["timings"]
        out["coords"] = result.coords
        out["partitions"] = len(engine.refs(dataset.parts))
        out["worker peak RSS GB"] = {w: peak_rss_gb(pid) for w, pid in pids.items()}
        out["workers replaced"] = set(client.run(os.getpid).values()) != set(pids.values())
    cluster.close()
    return out


def map_latency(coords: np.ndarray, codes: np.ndarray) -> dict[str, float]:
    from tessera_gpu.render.colors import CATEGORY_PALETTE, ColorBy
    from tessera_gpu.render.tiles import TileIndex, compile_kernels

    compile_kernels()
    index = TileIndex(coords)
    index.warm()
    labels = tuple(f"shard{i:02d}" for i in range(int(codes.max()) + 1))
    source = ColorBy("category", "source", codes=codes, labels=labels,
                     colors=CATEGORY_PALETTE[: len(labels)])  # fmt: skip
    tiles = occupied_tiles(index, 300)
    cat_ms = time_tiles(index, source, tiles)
    dens_ms = time_tiles(index, ColorBy("density"), tiles)
    _, nn_ms = time_nearest(coords, 2_000)
    return {
        "tile p50 ms": float(np.percentile(cat_ms, 50)),
        "tile p99 ms": float(np.percentile(cat_ms, 99)),
        "density tile p50 ms": float(np.percentile(dens_ms, 50)),
        "nearest p50 ms": float(np.percentile(nn_ms, 50)),
        "nearest p99 ms": float(np.percentile(nn_ms, 99)),
    }


def quality(x: np.ndarray, landmark_map: np.ndarray, full_fit: bool) -> dict[str, Any]:
    from benchmarks.data import trustworthiness_at
    from tessera_gpu.backends import get_backend
    from tessera_gpu.projection.project import project

    out: dict[str, Any] = {"trust landmarks": trustworthiness_at(x, landmark_map, rows=SUBSAMPLE)}
    if full_fit:
        t0 = time.perf_counter()
        full = project(x, backend=get_backend("cpu")).coords
        out["full fit in-process s"] = time.perf_counter() - t0
        out["trust full fit"] = trustworthiness_at(x, full, rows=SUBSAMPLE)
        out["trust gap"] = out["trust full fit"] - out["trust landmarks"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--landmarks", type=int, default=200_000)
    parser.add_argument("--no-full-fit", action="store_true", help="skip the in-process fit")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    import tessera_gpu

    tessera_gpu.configure_process()
    t0 = time.perf_counter()
    x = clustered_embeddings(args.n, args.dim, seed=0)
    report: dict[str, Any] = {
        "load_average_at_start": os.getloadavg()[0],  # the machine is shared
        "n": args.n,
        "dim": args.dim,
        "shards": args.shards,
        "landmarks": min(args.landmarks, args.n),
        "data GB": x.nbytes / 1e9,
        "generate s": time.perf_counter() - t0,
    }
    with tempfile.TemporaryDirectory(prefix="tessera-scale-") as tmp:
        t0 = time.perf_counter()
        paths = write_shards(x, Path(tmp), args.shards)
        report["write s"] = time.perf_counter() - t0
        per_file = -(-args.n // args.shards)
        report.update(on_cluster(paths, per_file, args.landmarks))
    coords = report.pop("coords")
    report["end to end s"] = report["check s"] + report["knn s"] + report["project s"]
    report.update(quality(x, coords, not args.no_full_fit))
    codes = np.repeat(np.arange(args.shards), [len(r) for r in
                      np.array_split(np.arange(args.n), args.shards)]).astype(np.int32)  # fmt: skip
    report.update(map_latency(coords, codes))
    report["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print_table(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(report, indent=2, default=str) + "\n")


def print_table(r: dict[str, Any]) -> None:
    peaks = r["worker peak RSS GB"]
    rows = [
        ("data", f"{r['n']:,} x {r['dim']} float32 = {r['data GB']:.2f} GB in {r['shards']} "
                 f"shards ({r['partitions']} partitions)"),
        ("check (workers read + validate + hash)", f"{r['check s']:.1f} s"),
        (f"cosine kNN graph, k={GRAPH_K}", f"{r['knn s']:.1f} s  {r['knn method']}"),
        (f"projection ({r['landmarks']:,} landmarks + placement)", f"{r['project s']:.1f} s  "
         f"(fit {r['project timings']['fit_with_landmarks']:.1f} s, "
         f"place {r['project timings']['place']:.1f} s)"),
        ("end to end", f"{r['end to end s']:.1f} s"),
        ("peak RSS per worker (target <= 1.5 GB)",
         ", ".join(f"{v:.2f} GB" for v in peaks.values())),
        ("trustworthiness, landmarks", f"{r['trust landmarks']:.4f}"),
    ]  # fmt: skip
    if "trust full fit" in r:
        rows += [
            ("trustworthiness, full in-process fit", f"{r['trust full fit']:.4f} "
             f"({r['full fit in-process s']:.0f} s)"),
            ("gap (target <= 0.02)", f"{r['trust gap']:.4f}"),
        ]  # fmt: skip
    rows += [
        ("tile p50 / p99, by source (target p50 <= 40 ms)",
         f"{r['tile p50 ms']:.1f} / {r['tile p99 ms']:.1f} ms"),
        ("density tile p50", f"{r['density tile p50 ms']:.1f} ms"),
        ("nearest p50 / p99 (target p50 <= 5 ms)",
         f"{r['nearest p50 ms']:.2f} / {r['nearest p99 ms']:.2f} ms"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
