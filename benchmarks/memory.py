"""Memory across dataset lifetimes: register, project, browse and delete, five times, in one server.

    python benchmarks/memory.py [--episodes 100000] [--dim 512] [--cycles 5]

Writes a seeded ``episodes x dim`` file, starts ``tessera serve`` on 127.0.0.1 (CPU backend,
``--allow-path`` on the file's folder), and runs ``--cycles`` times: register the file by
path, wait for its projection, draw 48 tiles in three colourings, hover 50 times, take a
K-means sample of 200, then DELETE it. After each cycle it reads the server's current RSS
(VmRSS) and peak RSS (VmHWM) from /proc. The target: the peak after the last cycle stays
under 1.5x the peak after the first (a dataset's memory is released when it is deleted).
Prints a table and writes JSON. The baseline is the same run's first cycle.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.api import make_file  # noqa: E402
from benchmarks.server import finished, tessera_server, wait_for  # noqa: E402

TARGET_RATIO = 1.5


def proc_memory(pid: int) -> dict[str, float]:
    """Current and peak resident memory of ``pid``, in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return {"rss_mb": round(fields["VmRSS"], 1), "peak_mb": round(fields["VmHWM"], 1)}


def cycle(client: httpx.Client, path: Path, timeout: float) -> dict[str, Any]:
    """One dataset lifetime; returns its timings."""
    started = time.perf_counter()
    r = client.post("/api/datasets", json={"path": str(path)})
    r.raise_for_status()
    dataset_id = r.json()["id"]
    base = f"/api/datasets/{dataset_id}"
    status = wait_for(client, f"{base}/projection", finished, timeout=timeout)
    if status["status"] != "done":
        raise RuntimeError(f"projection failed: {status}")
    projected = time.perf_counter()
    for color in ("", "task", "episode_length"):
        for z, x, y in [(0, 0, 0), *[(2, i, j) for i in range(4) for j in range(4)][:15]]:
            client.get(f"{base}/tiles/{z}/{x}/{y}.png", params={"color_by": color} if color else {})
    x0, y0, x1, y1 = status["bounds"]
    for i in range(50):
        t = i / 50
        client.get(
            f"{base}/points/nearest", params={"x": x0 + t * (x1 - x0), "y": y0 + t * (y1 - y0)}
        )
    client.post(
        f"{base}/samples", json={"method": "kmeans", "n": 200, "seed": 0}
    ).raise_for_status()
    client.delete(base).raise_for_status()
    return {
        "projection_s": round(projected - started, 2),
        "total_s": round(time.perf_counter() - started, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--episodes", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "memory.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "files"
        folder.mkdir()
        data = folder / "memory.h5"
        make_file(data, episodes=args.episodes, dim=args.dim)
        with tessera_server("--allow-path", str(folder), folder=Path(tmp), timeout=300) as client:
            pid = client.server_pid  # type: ignore[attr-defined]
            start = proc_memory(pid)
            for i in range(1, args.cycles + 1):
                timings = cycle(client, data, args.timeout)
                rows.append({"cycle": i, **timings, **proc_memory(pid)})
                print(f"cycle {i}: {rows[-1]}", flush=True)
    ratio = rows[-1]["peak_mb"] / rows[0]["peak_mb"]
    report = {
        "episodes": args.episodes,
        "dim": args.dim,
        "embeddings_mb": round(args.episodes * args.dim * 4 / 2**20, 1),
        "server_at_start": start,
        "cycles": rows,
        "peak_last_over_first": round(ratio, 3),
        "target": f"<= {TARGET_RATIO}",
        "met": ratio <= TARGET_RATIO,
    }
    print(f"\n{args.episodes:,} x {args.dim} ({report['embeddings_mb']} MB of embeddings), "
          f"server at start: {start['rss_mb']} MB")  # fmt: skip
    print(f"{'cycle':>6}{'projection s':>14}{'cycle s':>10}{'RSS MB':>10}{'peak MB':>10}")
    for r in rows:
        print(f"{r['cycle']:>6}{r['projection_s']:>14.1f}{r['total_s']:>10.1f}"
              f"{r['rss_mb']:>10.0f}{r['peak_mb']:>10.0f}")  # fmt: skip
    print(f"peak after cycle {args.cycles} / after cycle 1: {ratio:.3f} (target <= {TARGET_RATIO})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
