"""The GPU check's Python half (benchmarks/gpu_check.sh runs it; see that script's header).

    python -m benchmarks.gpu_bench preflight
    python -m benchmarks.gpu_bench run --n 200000 --dim 2048 --data x.npy --json runs.jsonl \
        [--kmeans-k 5000] [--sample-n 5000] [--cpu-trust]
    python -m benchmarks.gpu_bench report --runs runs.jsonl --junit tests.xml --out DIR \
        --step preflight=0 --step tests=0 ...

``preflight`` imports everything the check needs and probes the GPU (a kernel, a matmul and
``eigh``): it fails unless the GPU tier is usable (or the numpy stand-in is on, in a
rehearsal).  ``run`` times, on ``get_backend("gpu")`` with a device synchronise around each:
host-to-device copy, exact kNN (k=15), the full projection, K-means (k clusters, 25
iterations) and the diversity sample; with ``--cpu-trust`` it also projects the same rows on
the CPU tier and scores both maps' trustworthiness on a seeded 5,000-row subsample.
``report`` writes ``gpu-<date>.json`` and ``gpu-<date>.md`` (every figure against its target).
"""

from __future__ import annotations

import argparse
import datetime as dt
import faulthandler
import importlib
import json
import os
import platform
import signal
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGETS = {"knn_k15_s": 2.0, "projection_s": 10.0, "kmeans_s": 3.0}
# An H200's dense peaks (the H100 SXM datasheet's; the H200 has the same SMs): what the GEMMs
# alone cost at full speed, so a target below its floor is read as such, not as a slow kernel.
H200_TFLOPS = {"fp32": 67.0, "tf32": 495.0}
KMEANS_ITERATIONS = 25
TRUST_GAP = 0.01  # the GPU map's trustworthiness may trail the CPU tier's by this much
NEEDED = [
    "numpy",
    "scipy",
    "numba",
    "h5py",
    "pandas",
    "sklearn",
    "xxhash",
    "PIL",
    "click",
    "rich",
    "pytest",
    "pytest_timeout",
    "tessera_gpu",
    "tessera_gpu.backends.cpu",
    "tessera_gpu.backends.cupy_backend",
    "tessera_gpu.backends.cupy_device",
    "tessera_gpu.backends.standin",
    "tessera_gpu.clustering",
    "tessera_gpu.projection.project",
    "tessera_gpu.projection.cache",
    "tessera_gpu.cli.doctor",
    "benchmarks.data",
]


def preflight() -> int:
    """Import every module the check needs, probe the GPU, print the doctor's report."""
    from tessera_gpu.backends import gpu_probe

    standin = bool(os.environ.get("TESSERA_GPU_STANDIN"))
    missing = []
    for name in NEEDED + ([] if standin else ["cupy"]):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            missing.append(f"{name} ({exc})")
    from tessera_gpu.cli.doctor import diagnose

    print(json.dumps(diagnose("gpu"), indent=1, default=str))
    status = gpu_probe()
    if status.best is not None and not standin:
        _kernel_resources()
    if missing:
        print(f"preflight: cannot import {', '.join(missing)}", file=sys.stderr)
    if status.best is None:
        print(f"preflight: no usable GPU ({status.cause}): {status.reason}", file=sys.stderr)
    return 1 if missing or status.best is None else 0


def _kernel_resources() -> None:
    """Each kernel's registers, local memory (spills) and shared memory, as compiled here."""
    import cupy as cp

    from tessera_gpu.backends.cupy_device import kernel_builds

    for name, source, options in kernel_builds():
        try:
            fn = cp.RawKernel(source, name.rsplit("_", 1)[0] if name[-1].isdigit() else name,
                              options=options)  # fmt: skip
            keys = ("num_regs", "local_size_bytes", "shared_size_bytes", "max_threads_per_block")
            print(f"kernel {name}: " + ", ".join(f"{k} {fn.attributes[k]}" for k in keys))
        except Exception as exc:  # the probe has already said whether it matters
            print(f"kernel {name}: {type(exc).__name__}: {exc}", file=sys.stderr)


def _timed(backend: Any, fn: Callable[[], Any]) -> tuple[float, Any]:
    sync = getattr(getattr(backend, "dev", None), "synchronize", lambda: None)
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return round(time.perf_counter() - start, 3), out


def _trust(x: np.ndarray, maps: dict[str, np.ndarray]) -> dict[str, float]:
    from benchmarks.data import trustworthiness_at

    return {f"trust_{name}": round(trustworthiness_at(x, c), 4) for name, c in maps.items()}


def floors(n: int, dim: int, kmeans_k: int, tf32: bool) -> dict[str, float]:
    """Seconds the GEMMs need at an H200's peak: the kNN's Gram matrix (2 n^2 D FLOP) and
    K-means' assignments (2 n k D per iteration)."""
    rate = H200_TFLOPS["tf32" if tf32 else "fp32"] * 1e12
    return {
        "knn_floor_s": round(2.0 * n * n * dim / rate, 3),
        "kmeans_floor_s": round(2.0 * n * kmeans_k * dim * KMEANS_ITERATIONS / rate, 3),
    }


def _launches(backend: Any) -> int:
    counter = getattr(getattr(backend, "dev", None), "launches", None)
    return counter.total if counter is not None else 0


def run(
    x: np.ndarray,
    *,
    kmeans_k: int,
    sample_n: int,
    cpu_trust: bool,
    record: Callable[[dict[str, Any]], None] = lambda out: None,
) -> dict[str, Any]:
    """Every timing of the module docstring, on ``x`` (float32); ``record`` gets the figures
    so far after each stage, so that a run stopped by its timeout still reports them."""
    from tessera_gpu.backends import get_backend
    from tessera_gpu.backends.cupy_kmeans import REDUCE_TO, pca_reduce, seed_rows
    from tessera_gpu.clustering import diversity_sample
    from tessera_gpu.projection.project import project

    backend = get_backend("gpu")
    out: dict[str, Any] = {"backend": backend.describe(), "tf32": os.environ.get("CUPY_TF32", "0")}
    out.update(n=len(x), dim=x.shape[1], kmeans_k=kmeans_k, sample_n=sample_n, stage="warm-up")
    out.update(floors(len(x), x.shape[1], kmeans_k, out["tf32"] == "1"))
    record(out)
    warm = backend.to_device(x[: min(4000, len(x))])  # compile kernels, warm cuBLAS, numba
    backend.knn(warm, 15)
    project(warm, backend=backend)
    backend.kmeans(warm, 50, rows=None, seed=0, n_iter=2)
    out["to_device_s"], dev = _timed(backend, lambda: backend.to_device(x))
    record({**out, "stage": "kNN"})
    out["knn_k15_s"], _ = _timed(backend, lambda: backend.knn(dev, 15))
    record({**out, "stage": "projection"})
    out["projection_s"], proj = _timed(backend, lambda: project(dev, backend=backend))
    out["projection_stages"] = proj.info.get("timings")
    record({**out, "stage": "seeding"})
    if hasattr(backend, "dev"):  # the CuPy tier's own seeding (cuML seeds inside its KMeans)
        reduced = pca_reduce(backend.dev, dev, REDUCE_TO, seed=0)
        seeding = lambda: seed_rows(backend.dev, reduced, kmeans_k, seed=0)  # noqa: E731
        out["seeding_s"], _ = _timed(backend, seeding)
    record({**out, "stage": "kmeans"})
    before = _launches(backend)
    out["kmeans_s"], fit = _timed(
        backend, lambda: backend.kmeans(dev, kmeans_k, rows=None, seed=0, n_iter=KMEANS_ITERATIONS)
    )
    out["kmeans_inertia"] = fit[2]
    # the stand-in counts every device operation; a GPU only the kernels Tessera launches
    out["kmeans_launches"] = _launches(backend) - before
    record({**out, "stage": "diversity sample"})
    out["diversity_s"], _ = _timed(
        backend, lambda: diversity_sample(dev, sample_n, backend=backend)
    )
    if cpu_trust:
        record({**out, "stage": "CPU tier projection"})
        cpu = get_backend("cpu")
        out["cpu_projection_s"], cpu_map = _timed(cpu, lambda: project(x, backend=cpu))
        out.update(_trust(x, {"gpu": proj.coords, "cpu": cpu_map.coords}))
    out["stage"] = "done"
    return out


def _load(args: argparse.Namespace) -> np.ndarray:
    from benchmarks.data import clustered_embeddings

    if args.data is not None and args.data.exists():
        return np.load(args.data)
    x = clustered_embeddings(args.n, args.dim, seed=0)
    if args.data is not None:
        np.save(args.data, x)
    return x


def _tests(junit: Path | None) -> dict[str, Any] | None:
    """Counts from pytest's JUnit XML, and the tests that failed with their first line."""
    if junit is None or not junit.exists():
        return None
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    counts: dict[str, Any] = {
        key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")
    }
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["failed"] = [
        f"{case.get('classname')}::{case.get('name')}: "
        + ((bad.get("message") or "").splitlines() or [""])[0][:200]
        for case in suite.iter("testcase")
        for bad in case
        if bad.tag in ("failure", "error")
    ]
    return counts


def _cell(run: dict[str, Any] | None, key: str) -> str:
    if run is None or key not in run:
        return "failed" if run is None else "-"
    value = run[key]
    return f"{value:.4f}" if key.startswith("trust") else f"{value:.2f}"


ROWS = [  # (label, key, target)
    ("host-to-device copy, s", "to_device_s", "-"),
    ("kNN k=15, s", "knn_k15_s", "<= 2"),
    ("kNN GEMM at an H200's peak, s", "knn_floor_s", "floor"),
    ("full projection, s", "projection_s", "<= 10"),
    ("k-means++ seeding alone, s", "seeding_s", "-"),
    ("K-means 25 iterations, s", "kmeans_s", "<= 3"),
    ("K-means GEMMs at an H200's peak, s", "kmeans_floor_s", "floor"),
    ("diversity sample, s", "diversity_s", "-"),
    ("CPU tier projection, s", "cpu_projection_s", "-"),
    ("trustworthiness, GPU map", "trust_gpu", f">= CPU - {TRUST_GAP}"),
    ("trustworthiness, CPU map", "trust_cpu", "-"),
]


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: steps, tests, and one column per benchmark run."""
    runs = report["runs"]
    first = next((r for r in runs.values() if r), None) or {}
    lines = [f"# GPU check, {report['date']}", ""]
    if report["standin"]:
        lines += ["**Rehearsal on the numpy stand-in (no GPU): not GPU figures.**", ""]
    device = first.get("backend", {}).get("device", "no device")
    lines += [f"{device}; {report['n']:,} x {report['dim']:,} clustered embeddings; "
              f"K-means k={first.get('kmeans_k', '-')}, sample n={first.get('sample_n', '-')}; "
              f"{report['host']}", ""]  # fmt: skip
    lines += ["| step | status |", "|---|---|"]
    lines += [f"| {name} | {'ok' if rc == 0 else f'FAILED (exit {rc})'} |"
              for name, rc in report["steps"].items()]  # fmt: skip
    tests = report["tests"]
    if tests:
        lines += ["", f"Tests (-m gpu): {tests['passed']} passed, {tests['failures']} failed, "
                  f"{tests['errors']} errors, {tests['skipped']} skipped."]  # fmt: skip
        lines += [f"- FAILED {line}" for line in tests.get("failed", [])]
    stopped = [(name, run["stage"]) for name, run in runs.items()
               if run and run.get("stage", "done") != "done"]  # fmt: skip
    lines += [f"\n**{name} stopped during: {stage}** (the figures before it are kept)."
              for name, stage in stopped]  # fmt: skip
    heads = list(runs)
    lines += ["", "| metric | target | " + " | ".join(heads) + " |",
              "|---|---|" + "---:|" * len(heads)]  # fmt: skip
    for label, key, target in ROWS:
        lines.append(
            f"| {label} | {target} | " + " | ".join(_cell(runs[h], key) for h in heads) + " |"
        )
    return "\n".join(lines + _floor_notes(report)) + "\n"


def _floor_notes(report: dict[str, Any]) -> list[str]:
    """Say so where a target lies below what the arithmetic alone costs on an H200."""
    notes = []
    for mode in ("fp32", "tf32"):
        need = floors(report["n"], report["dim"], report.get("kmeans_k") or 0, mode == "tf32")
        for what, key, floor_key in (("kNN k=15", "knn_k15_s", "knn_floor_s"),
                                     ("K-means", "kmeans_s", "kmeans_floor_s")):  # fmt: skip
            if need[floor_key] > TARGETS[key]:
                notes.append(
                    f"{what}: the target ({TARGETS[key]:g} s) is below the {mode.upper()} floor "
                    f"at {report['n']:,} x {report['dim']:,} on an H200 ({need[floor_key]:.2f} s "
                    f"at {H200_TFLOPS[mode]:g} TFLOP/s): only a faster mode can meet it."
                )
    return ["", *notes] if notes else []


def report(args: argparse.Namespace) -> int:
    """Write gpu-<date>.json and .md under ``args.out``; print the Markdown."""
    runs: dict[str, dict[str, Any] | None] = {name: None for name in args.expect}
    if args.runs.exists():
        for line in args.runs.read_text().splitlines():
            if line.strip():
                run_ = json.loads(line)
                runs[f"tf32={run_['tf32']}"] = run_
    out = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": f"{platform.node()}, Python {platform.python_version()}",
        "n": args.n,
        "dim": args.dim,
        "kmeans_k": args.kmeans_k,
        "standin": os.environ.get("TESSERA_GPU_STANDIN") or None,
        "steps": dict(step.split("=", 1) for step in args.step),
        "tests": _tests(args.junit),
        "targets": TARGETS,
        "runs": runs,
    }
    out["steps"] = {k: int(v) for k, v in out["steps"].items()}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"gpu-{dt.date.today().isoformat()}"
    stem.with_suffix(".json").write_text(json.dumps(out, indent=1, default=str) + "\n")
    text = markdown(out)
    stem.with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {stem}.json and {stem}.md")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("preflight")
    r = sub.add_parser("run")
    r.add_argument("--n", type=int, default=200_000)
    r.add_argument("--dim", type=int, default=2048)
    r.add_argument("--kmeans-k", type=int, default=5000)
    r.add_argument("--sample-n", type=int, default=5000)
    r.add_argument("--data", type=Path, default=None, help=".npy to use (made if missing)")
    r.add_argument("--json", type=Path, required=True, help="Append this run's JSON here.")
    r.add_argument("--cpu-trust", action="store_true", help="Also score against the CPU tier.")
    o = sub.add_parser("report")
    o.add_argument("--runs", type=Path, required=True)
    o.add_argument("--junit", type=Path, default=None)
    o.add_argument("--out", type=Path, required=True)
    o.add_argument("--n", type=int, required=True)
    o.add_argument("--dim", type=int, required=True)
    o.add_argument("--kmeans-k", type=int, default=None)
    o.add_argument("--step", action="append", default=[], help="name=exit status")
    o.add_argument("--expect", action="append", default=[], help="run columns, e.g. tf32=1")
    args = p.parse_args(argv)
    if args.command == "preflight":
        return preflight()
    if args.command == "report":
        return report(args)
    # A run stopped by its step's timeout (SIGTERM) prints where it was before it dies.
    faulthandler.register(signal.SIGTERM, all_threads=True, chain=True)

    def record(figures: dict[str, Any]) -> None:
        print(json.dumps(figures, default=str), flush=True)
        with args.json.open("a") as fh:
            fh.write(json.dumps(figures, default=str) + "\n")

    x = _load(args)
    result = run(x, kmeans_k=args.kmeans_k, sample_n=args.sample_n, cpu_trust=args.cpu_trust,
                 record=record)  # fmt: skip
    record(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
