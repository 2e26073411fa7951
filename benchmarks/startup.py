"""Startup: what a command costs before it does its work, against a baseline checkout (main
before issue 19) in the same run.

    python benchmarks/startup.py --baseline /path/to/old/checkout [--n 200000] [--dim 2048]
                                 [--runs 3] [--cold]

* ``project --help``: ``python -X importtime -m tessera_gpu.cli project --help``, wall time,
  and whether datashader, bokeh or litestar appear in the import log (target: <= 1 s, none).
* cached ``tessera project``: an ``--n`` x ``--dim`` file whose map is in the cache (primed
  once with a stand-in map under the real key, in a ``--cache-dir``: only the look-up is
  measured), wall time of the
  whole command (target: <= 2 s at 200k x 2,048). This checkout runs it once first: that run
  reads the file and remembers its hashes, as a user's first ``tessera project`` does.

Each side runs in a child process with its own interpreter (``--baseline``'s ``.venv`` when it
has one) and its own source tree; the page cache is warm, or with ``--cold`` dropped before
each cached run (root only).
Prints a table of medians and writes ``benchmarks/results/startup.json``. The file is made in a
temporary folder and removed.
"""

from __future__ import annotations

import argparse
import json
import os
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

from tessera_gpu.io.files import write_atomic  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
HEAVY = ("datashader", "bokeh", "litestar")
PRIME = """
import sys
sys.path.insert(0, {root!r})
import numpy as np
from tessera_gpu.backends import get_backend
from tessera_gpu.io.dataset import load_dataset
from tessera_gpu.projection.cache import ProjectionCache, backend_tag
try:
    from tessera_gpu.projection.params import Projection, ProjectionParams
except ImportError:  # before issue 19
    from tessera_gpu.projection.project import Projection, ProjectionParams
ds = load_dataset({file!r})
cache = ProjectionCache({cache!r})
tag = backend_tag(get_backend("cpu"))
key = cache.key(ds.embeddings_hash, ProjectionParams(seed=0), backend=tag)
coords = np.random.default_rng(0).normal(size=(ds.n_episodes, 2)).astype(np.float32)
cache.store(key, Projection(coords, {{"algorithm": "umap", "backend": "cpu"}}))
"""


def python_of(tree: Path) -> str:
    venv = tree / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    env = {**env, "PYTHONDONTWRITEBYTECODE": "1"}  # nothing written into either checkout
    proc = subprocess.run(cmd, cwd=tempfile.gettempdir(), env=env, capture_output=True,
                          text=True, check=False)  # fmt: skip
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stderr[-2000:]}")
    return wall, proc.stderr


def help_time(tree: Path, runs: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [python_of(tree), "-X", "importtime", "-m", "tessera_gpu.cli", "project", "--help"]
    walls, log = [], ""
    for _ in range(runs):
        wall, log = timed(cmd, tree, env)
        walls.append(wall)
    modules = {
        line.split("|")[-1].strip().split(".")[0] for line in log.splitlines() if "|" in line
    }
    return {"median_s": statistics.median(walls), "heavy": sorted(set(HEAVY) & modules)}


def drop_page_cache() -> None:
    """``sync; echo 3 > /proc/sys/vm/drop_caches`` (needs root): every file read from disk."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def cached_project(
    tree: Path, file: Path, data_dir: Path, runs: int, *, warm_up: bool, cold: bool
) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree), "TESSERA_DATA_DIR": str(data_dir)}
    cmd = [python_of(tree), "-m", "tessera_gpu.cli", "project", str(file), "--device", "cpu",
           "--cache-dir", str(data_dir.with_suffix(".maps")),
           "-o", str(data_dir.with_suffix(".npy"))]  # fmt: skip
    if warm_up:
        timed(cmd, tree, env)
    walls, said = [], ""
    for _ in range(runs):
        if cold:
            drop_page_cache()
        wall, said = timed(cmd, tree, env)
        walls.append(wall)
    if "cache hit" not in said:
        raise SystemExit(f"no cache hit in {tree}: {said}")
    return {"median_s": statistics.median(walls), "runs": [round(w, 3) for w in walls]}


def write_file(path: Path, n: int, dim: int, *, seed: int = 0) -> None:
    from tessera_gpu.io.writer import write_dataset

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    write_dataset(path, embeddings=x, episode_ids=[f"ep_{i:07d}" for i in range(n)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="an older checkout")
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--cold",
        action="store_true",
        help="drop the page cache before each cached project (needs root)",
    )
    args = parser.parse_args()
    sides = {"tessera": ROOT, "baseline": args.baseline.resolve()}
    report: dict[str, Any] = {"n": args.n, "dim": args.dim, "runs": args.runs,
                              "load": os.getloadavg()[0],
                              "page_cache": "cold" if args.cold else "warm"}  # fmt: skip
    report["help"] = {side: help_time(tree, args.runs) for side, tree in sides.items()}
    with tempfile.TemporaryDirectory(prefix="tessera-startup-") as tmp:
        file = Path(tmp) / "big.h5"
        write_file(file, args.n, args.dim)
        report["cached_project"] = {}
        for side, tree in sides.items():
            data_dir = Path(tmp) / side
            prime = PRIME.format(
                root=str(tree), file=str(file), cache=str(data_dir.with_suffix(".maps"))
            )
            timed([python_of(tree), "-c", prime], tree, {**os.environ, "PYTHONPATH": str(tree)})
            report["cached_project"][side] = cached_project(
                tree, file, data_dir, args.runs, warm_up=side == "tessera", cold=args.cold
            )
    for what in ("help", "cached_project"):
        new, old = report[what]["tessera"]["median_s"], report[what]["baseline"]["median_s"]
        report[what]["ratio"] = round(old / new, 2)
    print(f"{args.n:,} x {args.dim:,}, medians of {args.runs}, load {report['load']:.2f}, "
          f"page cache {report['page_cache']}")  # fmt: skip
    print(f"{'':32} {'tessera s':>10} {'baseline s':>11} {'speed-up':>9}")
    for what, label in (("help", "project --help (importtime)"),
                        ("cached_project", "cached tessera project")):  # fmt: skip
        r = report[what]
        print(f"{label:32} {r['tessera']['median_s']:>10.2f} {r['baseline']['median_s']:>11.2f} "
              f"{r['ratio']:>8.1f}x")  # fmt: skip
    print("heavy imports in --help:", {s: report["help"][s]["heavy"] for s in sides})
    RESULTS.mkdir(exist_ok=True)
    name = "startup-cold.json" if args.cold else "startup.json"
    write_atomic(RESULTS / name, json.dumps(report, indent=2).encode())


if __name__ == "__main__":
    main()
