"""Globs: Tessera's bounded glob against what ``expand_paths`` did before it (Python's
``glob.glob(recursive=True)``, then each match resolved and the count checked), on the same
trees, in one run.

    python benchmarks/globs.py [--files 100000] [--runs 3] [--cap 20]

Cases: a flat folder of ``--files`` files (``*.h5``: "Too many files"), the same number spread
over 100 folders (``**/*.h5``), and a folder with two symlink loops (``ln -s . a; ln -s . b``,
``loop2/**/*.h5``). Each side runs in a child process killed after ``--cap`` seconds (the
baseline never returns on the loops). Prints a table of medians and writes
``benchmarks/results/globs.json``. Everything is made in a temporary folder and removed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tessera_gpu.io.files import write_atomic  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"

CHILD = {
    "tessera": """
import sys, time
sys.path.insert(0, {root!r})
from tessera_gpu.errors import TesseraError
from tessera_gpu.io.shards import expand_paths
start = time.perf_counter()
try:
    n = len(expand_paths([sys.argv[1]]))
    answer = f"{{n}} file{{'s' * (n != 1)}}"
except TesseraError as exc:
    answer = exc.code
print(time.perf_counter() - start, answer)
""",
    "glob.glob": """
import glob, os, sys, time
start = time.perf_counter()
matches = sorted(glob.glob(sys.argv[1], recursive=True))
seen = set()
for match in matches:
    seen.add(os.path.realpath(match))
answer = f"{{len(seen)}} files" if len(seen) <= 1000 else "too many files"
print(time.perf_counter() - start, answer)
""",
}


def make_trees(root: Path, files: int) -> dict[str, str]:
    flat = root / "flat"
    flat.mkdir()
    for i in range(files):
        (flat / f"s{i:06d}.h5").touch()
    nested = root / "nested"
    for i in range(files):
        folder = nested / f"d{i % 100:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"s{i:06d}.h5").touch()
    loop = root / "loop2"
    loop.mkdir()
    (loop / "x.h5").touch()
    (loop / "a").symlink_to(".")
    (loop / "b").symlink_to(".")
    return {
        f"{files:,} files, *.h5": str(flat / "*.h5"),
        f"{files:,} files in 100 folders, **/*.h5": str(nested / "**" / "*.h5"),
        "two symlink loops, loop2/**/*.h5": str(loop / "**" / "*.h5"),
    }


def run_once(side: str, pattern: str, cap: float) -> tuple[float | None, str]:
    code = CHILD[side].format(root=str(ROOT))
    try:
        done = subprocess.run([sys.executable, "-c", code, pattern], capture_output=True,
                              text=True, timeout=cap, check=True)  # fmt: skip
    except subprocess.TimeoutExpired:
        return None, f"no answer in {cap:g} s (killed)"
    seconds, answer = done.stdout.split(maxsplit=1)
    return float(seconds), answer.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cap", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "globs.json")
    args = parser.parse_args()
    load = os.getloadavg()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = make_trees(Path(tmp), args.files)
        for case, pattern in cases.items():
            row: dict[str, Any] = {"case": case}
            for side in ("tessera", "glob.glob"):
                runs = [run_once(side, pattern, args.cap) for _ in range(args.runs)]
                times = [t for t, _ in runs if t is not None]
                row[side] = {
                    "median_s": statistics.median(times) if len(times) == len(runs) else None,
                    "runs_s": [t for t, _ in runs],
                    "answer": runs[-1][1],
                }
                if side == "glob.glob" and times and len(times) < len(runs):
                    break  # a baseline that hangs once hangs every time: spare the machine
            rows.append(row)
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"| case | Tessera s | answer | glob.glob s | answer | speed-up |\n|{'---|' * 6}")
    for row in rows:
        t, g = row["tessera"], row["glob.glob"]
        speedup = (f"{g['median_s'] / t['median_s']:.0f}x" if g["median_s"] and t["median_s"]
                   else "-")  # fmt: skip
        g_s = f"{g['median_s']:.3f}" if g["median_s"] is not None else f"> {args.cap:g}"
        print(f"| {row['case']} | {t['median_s']:.3f} | {t['answer']} | {g_s} | {g['answer']} "
              f"| {speedup} |")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"files": args.files, "runs": args.runs, "cap_s": args.cap,
           "load_average_at_start": load, "rows": rows}  # fmt: skip
    write_atomic(args.out, (json.dumps(doc, indent=2) + "\n").encode())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
