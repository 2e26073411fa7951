"""API latency: count and sample requests over real HTTP on a 200,000-episode dataset.

    python benchmarks/api.py [--episodes 200000] [--dim 0] [--repeats 40]

Writes a seeded file (``--dim 0``: metadata-only, so no projection competes for the CPU;
``--dim N`` adds embeddings and waits for the projection first), starts ``tessera serve`` on
127.0.0.1, and times one client's requests, one at a time: the file's registration at start,
``GET`` summary and episode, ``POST .../count`` with three conditions, and random and
stratified samples of 5,000. Prints a table and writes JSON. Loopback only; bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.server import free_port  # noqa: E402

TASKS = np.array(["pick", "place", "stack", "push", "open_drawer"])
FILTER = [
    {"field": "success", "op": "eq", "value": True},
    {"field": "task", "op": "in", "value": ["pick", "place", "stack"]},
    {"field": "episode_length", "op": "between", "value": [80, 300]},
]


def make_file(path: Path, *, episodes: int, dim: int) -> None:
    from benchmarks.data import clustered_embeddings
    from tessera_gpu.io.writer import write_dataset

    rng = np.random.default_rng(0)
    write_dataset(
        path,
        embeddings=clustered_embeddings(episodes, dim, seed=0) if dim else None,
        episode_ids=[f"ep_{i:06d}" for i in range(episodes)],
        metadata={
            "success": rng.random(episodes) < 0.7,
            "task": TASKS[rng.integers(0, len(TASKS), episodes)],
            "episode_length": rng.integers(50, 400, episodes),
            "gripper_force": rng.normal(size=episodes),
            "dataset": np.array(["droid", "bridge", "sim"])[rng.integers(0, 3, episodes)],
        },
    )


def wait_ready(client: httpx.Client, timeout: float, *, projection: bool) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            datasets = client.get("/api/datasets").json()
        except httpx.TransportError:
            datasets = []
        if datasets:
            status = datasets[0]["projection"]["status"]
            if status == "failed":
                raise SystemExit(f"projection failed: {datasets[0]['projection']['error']}")
            if not projection or status == "done":
                return dict(datasets[0])
        time.sleep(0.2)
    raise SystemExit("the server was not ready in time")


def timed(call: Callable[[], httpx.Response], repeats: int) -> dict[str, float]:
    """p50 / p95 / min of ``repeats`` calls, in ms (one warm-up call first)."""
    call().raise_for_status()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call().raise_for_status()
        times.append((time.perf_counter() - start) * 1000)
    return {
        "p50_ms": round(float(np.percentile(times, 50)), 2),
        "p95_ms": round(float(np.percentile(times, 95)), 2),
        "min_ms": round(min(times), 2),
    }


def measure(client: httpx.Client, dataset_id: str, repeats: int) -> dict[str, Any]:
    base = f"/api/datasets/{dataset_id}"
    seeds = iter(range(1_000_000))

    def sample(method: str, **extra: Any) -> Callable[[], httpx.Response]:
        body = {"method": method, "n": 5_000, "filter": FILTER, **extra}
        return lambda: client.post(f"{base}/samples", json={**body, "seed": next(seeds)})

    calls = {
        "summary GET": lambda: client.get(base),
        "episode GET": lambda: client.get(f"{base}/episodes/123456"),
        "count, 3 conditions": lambda: client.post(f"{base}/count", json={"filter": FILTER}),
        "count, no filter": lambda: client.post(f"{base}/count", json={}),
        "random n=5000": sample("random"),
        "stratified n=5000": sample("stratified", stratify_by="task"),
    }
    return {name: timed(call, repeats) for name, call in calls.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=0, help="0: metadata-only")
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--ready-timeout", type=float, default=900.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "api.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "api.h5"
        make_file(data, episodes=args.episodes, dim=args.dim)
        port = free_port()
        argv = [sys.executable, "-m", "tessera_gpu.cli", "serve", str(data), "--port", str(port),
                "--data-dir", str(Path(tmp) / "data"), "--device", "cpu"]  # fmt: skip
        started = time.perf_counter()
        server = subprocess.Popen(argv, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
                dataset = wait_ready(client, args.ready_timeout, projection=args.dim > 0)
                ready_s = time.perf_counter() - started
                results = measure(client, dataset["id"], args.repeats)
        finally:
            server.terminate()
            server.wait(timeout=30)
    report = {
        "episodes": args.episodes,
        "dim": args.dim,
        "repeats": args.repeats,
        "file_mb": round(dataset["file_size"] / 1e6, 1),
        "start_to_ready_s": round(ready_s, 2),
        "cpu_count": os.cpu_count(),
        "requests": results,
    }
    print(f"{args.episodes:,} episodes, dim {args.dim}; ready after {ready_s:.1f} s")
    print(f"{'request':<22}{'p50 ms':>10}{'p95 ms':>10}{'min ms':>10}")
    for name, r in results.items():
        print(f"{name:<22}{r['p50_ms']:>10.2f}{r['p95_ms']:>10.2f}{r['min_ms']:>10.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
