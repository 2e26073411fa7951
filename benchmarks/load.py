"""Load test: concurrent clients fetch tiles and hover over a map, on loopback only.

    python benchmarks/load.py [--episodes 200000] [--dim 64] [--clients 50] [--seconds 60]

Starts ``tessera serve`` on 127.0.0.1 with a generated file, waits for its projection, then
runs ``--clients`` concurrent clients for ``--seconds``. Each client alternates a tile fetch
(random z/x/y inside the pyramid, random colour-by) and three nearest-point lookups, as a
hovering user does. Reports requests, errors and p50/p99 latency per kind, and writes JSON.
Bounded in count and time; it stops by itself and sends traffic to 127.0.0.1 alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.server import free_port  # noqa: E402

MAX_REQUESTS_PER_CLIENT = 100_000


def make_file(path: Path, *, episodes: int, dim: int) -> None:
    from benchmarks.data import clustered_embeddings  # seeded generator
    from tessera_gpu.io.writer import write_dataset

    emb = clustered_embeddings(episodes, dim, seed=0)
    rng = np.random.default_rng(0)
    write_dataset(
        path,
        embeddings=emb,
        episode_ids=[f"ep_{i:06d}" for i in range(episodes)],
        metadata={
            "success": rng.random(episodes) < 0.7,
            "task": np.array(["pick", "place", "stack", "push", "open_drawer"])[
                rng.integers(0, 5, episodes)
            ],
            "episode_length": rng.integers(50, 400, episodes),
        },
    )


async def wait_ready(client: httpx.AsyncClient, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            datasets = (await client.get("/api/datasets")).json()
            if datasets and datasets[0]["projection"]["status"] == "done":
                return datasets[0]
            if datasets and datasets[0]["projection"]["status"] == "failed":
                raise SystemExit(f"projection failed: {datasets[0]['projection']['error']}")
        except httpx.TransportError:
            pass
        await asyncio.sleep(1.0)
    raise SystemExit("server did not finish its projection in time")


async def one_client(client, dataset, stop_at, latencies, errors, rng) -> None:
    x0, y0, x1, y1 = dataset["projection"]["bounds"]
    base = f"/api/datasets/{dataset['id']}"
    for _ in range(MAX_REQUESTS_PER_CLIENT):
        if time.monotonic() >= stop_at:
            return
        z = rng.randint(0, 4)
        x, y = rng.randrange(2**z), rng.randrange(2**z)
        colour = rng.choice(["", "?color_by=task", "?color_by=episode_length"])
        await timed(client, f"{base}/tiles/{z}/{x}/{y}.png{colour}", "tile", latencies, errors)
        for _ in range(3):
            px, py = rng.uniform(x0, x1), rng.uniform(y0, y1)
            url = f"{base}/points/nearest?x={px}&y={py}&radius={(x1 - x0) / 20}"
            await timed(client, url, "nearest", latencies, errors, ok=(200, 404))


async def timed(client, url, kind, latencies, errors, ok=(200,)) -> None:
    start = time.perf_counter()
    try:
        response = await client.get(url)
        if response.status_code not in ok:
            errors[kind] = errors.get(kind, 0) + 1
    except httpx.HTTPError:
        errors[kind] = errors.get(kind, 0) + 1
        return
    latencies.setdefault(kind, []).append((time.perf_counter() - start) * 1000)


async def run_load(port: int, *, clients: int, seconds: float, ready_timeout: float) -> dict:
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30
    ) as client:
        dataset = await wait_ready(client, ready_timeout)
        latencies: dict[str, list[float]] = {}
        errors: dict[str, int] = {}
        stop_at = time.monotonic() + seconds
        await asyncio.gather(
            *(
                one_client(client, dataset, stop_at, latencies, errors, random.Random(i))
                for i in range(clients)
            )
        )
        health = (await client.get("/api/health")).status_code
    return {
        "clients": clients,
        "seconds": seconds,
        "episodes": dataset["n_episodes"],
        "health_after": health,
        "errors": errors,
        "kinds": {
            kind: {
                "requests": len(v),
                "p50_ms": round(float(np.percentile(v, 50)), 2),
                "p99_ms": round(float(np.percentile(v, 99)), 2),
            }
            for kind, v in latencies.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--ready-timeout", type=float, default=900.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "load.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "load.h5"
        make_file(data, episodes=args.episodes, dim=args.dim)
        port = free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tessera_gpu.cli",
                "serve",
                str(data),
                "--port",
                str(port),
                "--host",
                "127.0.0.1",
                "--data-dir",
                str(Path(tmp) / "data"),
            ],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            report = asyncio.run(
                run_load(
                    port,
                    clients=args.clients,
                    seconds=args.seconds,
                    ready_timeout=args.ready_timeout,
                )
            )
        finally:
            server.terminate()
            server.wait(timeout=30)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
