"""Curation over HTTP at 200k episodes: selections, set operations, summaries, clusters, similar.

    python benchmarks/curation.py [--episodes 200000] [--dim 2048] [--repeats 30]

Writes a seeded file (benchmarks/similarity.py's embeddings, with planted near-copies, and
task / success / episode_length / dataset metadata), starts ``tessera serve`` on 127.0.0.1 (CPU
backend), waits for the projection and the similarity graph, then times one client's requests,
one at a time (p50 and p95 over ``--repeats``):

* a selection made from a three-condition filter;
* ``union`` and ``intersect`` of two selections of ~100k episodes each;
* a group summary by ``task`` (a category field);
* find similar, k=10 and k=500;
* near-duplicate groups at 0.05 (first page);
* the ``cluster`` field, k=20: the K-means job's duration (its status' ``elapsed_s``), once.

Prints a table against the issue's targets and writes ``benchmarks/results/curation.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
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

from benchmarks.server import finished, tessera_server, wait_for  # noqa: E402
from benchmarks.similarity import planted  # noqa: E402

FILTER = [
    {"field": "success", "op": "eq", "value": True},
    {"field": "task", "op": "in", "value": ["pick", "place", "stack"]},
    {"field": "episode_length", "op": "between", "value": [80, 300]},
]
TARGETS_MS = {"selection from a filter": 30, "union of two 100k": 30, "intersect of two 100k": 30,
              "summary by task": 50, "similar k=10": 20, "similar k=500": 150}  # fmt: skip


def make_file(path: Path, n: int, dim: int) -> int:
    from tessera_gpu.io.writer import write_dataset

    x, _ = planted(n, dim, groups=max(10, n // 200))
    x = x[:200_000]  # a file holds at most 200,000 episodes: the last copies are cut
    rows = len(x)
    rng = np.random.default_rng(0)
    write_dataset(
        path,
        embeddings=x,
        episode_ids=[f"ep_{i:07d}" for i in range(rows)],
        metadata={
            "success": rng.random(rows) < 0.7,
            "task": np.array(["pick", "place", "stack", "push", "open_drawer"])[
                rng.integers(0, 5, rows)
            ],
            "episode_length": rng.integers(50, 400, rows),
            "dataset": np.array(["droid", "bridge", "sim"])[rng.integers(0, 3, rows)],
        },
    )
    return rows


def timed(call: Callable[[], httpx.Response], repeats: int) -> dict[str, float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = call()
        times.append(1000 * (time.perf_counter() - t0))
        if r.status_code >= 400:
            raise RuntimeError(f"{r.request.url}: {r.status_code} {r.text[:300]}")
    times.sort()
    return {"p50_ms": round(statistics.median(times), 2),
            "p95_ms": round(times[int(0.95 * (len(times) - 1))], 2)}  # fmt: skip


def measure(client: httpx.Client, base: str, rows: int, repeats: int) -> dict[str, Any]:
    names = iter(range(10**6))
    out: dict[str, Any] = {}

    def from_filter() -> httpx.Response:
        return client.post(f"{base}/selections", json={"name": f"f{next(names)}", "filter": FILTER})

    out["selection from a filter"] = timed(from_filter, repeats)
    half = [{"field": "episode_length", "op": "lt", "value": 225}]  # about half the rows
    other = [{"field": "episode_length", "op": "between", "value": [138, 312]}]  # the other half
    client.post(f"{base}/selections", json={"name": "A", "filter": half}).raise_for_status()
    client.post(f"{base}/selections", json={"name": "B", "filter": other}).raise_for_status()
    sizes = {s["name"]: s["count"] for s in client.get(f"{base}/selections").json()}
    out["selection sizes"] = {"A": sizes["A"], "B": sizes["B"]}
    for op in ("union", "intersect"):
        out[f"{op} of two 100k"] = timed(lambda op=op: client.post(f"{base}/selections", json={
            "name": f"{op}{next(names)}", "op": op, "of": ["A", "B"]}), repeats)  # fmt: skip
    out["summary by task"] = timed(lambda: client.post(f"{base}/summary", json={
        "group_by": "task", "filter": FILTER}), repeats)  # fmt: skip
    rng = np.random.default_rng(0)
    for k in (10, 500):
        picks = iter(rng.integers(0, rows, repeats).tolist())
        out[f"similar k={k}"] = timed(lambda k=k, picks=picks: client.get(
            f"{base}/episodes/{next(picks)}/similar", params={"k": k}), repeats)  # fmt: skip
    body = {"threshold": 0.05, "limit": 20}
    out["duplicates at 0.05"] = timed(
        lambda: client.post(f"{base}/duplicates", json=body), max(3, repeats // 5)
    )
    client.post(f"{base}/clusters", json={"k": 20}).raise_for_status()
    out["cluster k=20 job s"] = wait_for(client, f"{base}/clusters", finished)["elapsed_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "curation.json"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "curation.h5"
        rows = make_file(path, args.episodes, args.dim)
        started = time.perf_counter()
        with tessera_server(str(path), folder=Path(tmp)) as client:
            datasets = wait_for(client, "/api/datasets", bool, timeout=600)
            base = f"/api/datasets/{datasets[0]['id']}"
            similarity = wait_for(client, f"{base}/similarity", finished)
            projection = wait_for(client, f"{base}/projection", finished)
            ready_s = time.perf_counter() - started
            results = measure(client, base, rows, args.repeats)
    report = {"episodes": rows, "dim": args.dim, "repeats": args.repeats,
              "ready_s": round(ready_s, 1), "similarity_job_s": similarity["elapsed_s"],
              "projection_job_s": projection["elapsed_s"], "requests": results}  # fmt: skip
    sim_s, proj_s = similarity["elapsed_s"], projection["elapsed_s"]
    jobs = f"similarity job {sim_s:.1f} s, projection {proj_s:.1f} s"
    print(f"{rows:,} x {args.dim}: ready after {ready_s:.0f} s ({jobs})")
    print(f"{'request':<26}{'p50 ms':>10}{'p95 ms':>10}{'target':>10}")
    for name, r in results.items():
        if isinstance(r, dict) and "p50_ms" in r:
            target = TARGETS_MS.get(name)
            print(f"{name:<26}{r['p50_ms']:>10.1f}{r['p95_ms']:>10.1f}"
                  f"{('<= ' + str(target)) if target else '-':>10}")  # fmt: skip
    print(f"{'cluster k=20 job':<26}{results['cluster k=20 job s']:>9.1f}s{'':>10}{'<= 10 s':>10}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
