"""Restart: ``tessera serve`` on a data directory that holds ``--datasets`` registered
``--n`` x ``--dim`` files whose maps and similarity graphs are cached, against a baseline
checkout (main before the lazy restore) in the same run.

    python benchmarks/restart.py --baseline /path/to/old/checkout [--datasets 3] [--n 200000]
                                 [--dim 2048] [--runs 3]

Three moments are timed from launching the server process: *health* (``GET /api/health``
answers 200); *API ready* (``GET /api/datasets`` lists every dataset with its map done: every
request that does not draw works; target <= 5 s for 3 x 200k x 2,048); and *tiles* (``GET
/api/datasets/{id}/tiles/0/0/0.png`` answered 200 for each: the map drawn, which in a new
process first waits for datashader's import and numba compile, about 3.5 s on 2 cores
whatever the data). The process RSS that ``/api/health`` reports is read at the end.
The caches are primed cheaply, under the real keys (a stand-in map and a stand-in
graph with no near-duplicates), then the files registered by a first server that is closed;
no UMAP or kNN runs. The runs alternate between the sides; the page cache is warm.

Each side runs with its own interpreter (``--baseline``'s ``.venv`` when it has one) and its
own source tree and data directory. Prints a table of medians and writes
``benchmarks/results/restart.json``. The files are made in a temporary folder and removed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.startup import python_of, write_file  # noqa: E402
from tessera_gpu.io.files import write_atomic  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PRIME = """
import sys, time
sys.path.insert(0, {root!r})
import numpy as np
from tessera_gpu.core import Tessera
from tessera_gpu.core.graphs import SIMILARITY
from tessera_gpu.io.artifacts import ArtifactStore
from tessera_gpu.io.dataset import load_dataset
from tessera_gpu.projection.cache import ProjectionCache, backend_tag
from tessera_gpu.projection.params import Projection, ProjectionParams
from tessera_gpu.settings import Settings
from tessera_gpu.similarity import GRAPH_K, SIMILARITY_VERSION

files = {files!r}
core = Tessera(Settings(device="cpu", data_dir={data!r}), isolate=False)
rng = np.random.default_rng(0)
for file in files:
    ds = load_dataset(file)
    n, digest = ds.n_episodes, ds.embeddings_hash
    del ds
    maps = ProjectionCache(core.data.cache_dir)
    key = maps.key(digest, ProjectionParams(), backend=backend_tag(core.backend))
    maps.store(key, Projection(rng.normal(size=(n, 2)).astype(np.float32), {{"backend": "cpu"}}))
    graphs = ArtifactStore(core.data.cache_dir, ".knn")
    others = range(GRAPH_K - 1)
    indices = np.column_stack([np.arange(n)] + [rng.integers(0, n, n) for _ in others])
    distances = np.column_stack([np.zeros(n)] + [np.full(n, 0.5 + k / 100) for k in others])
    graphs.store(ArtifactStore.key(digest, {{"k": GRAPH_K, "seed": 0}}, SIMILARITY_VERSION), {{
        "indices": indices.astype(np.int32), "distances": distances.astype(np.float32),
        "reduced": rng.normal(size=(n, 8)).astype(np.float32),
        "norms": np.ones(n, dtype=np.float32)}}, {{"cache": "stand-in"}})
core.open(files)
for live in core.registry.all():
    while not (core.jobs.status(live.id).status == "done"
               and core.tasks.status(live.id, SIMILARITY).status == "done"):
        time.sleep(0.1)
    assert core.jobs.info(live.id)["cache"] == "hit", core.jobs.info(live.id)
core.close()
"""


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def restart(tree: Path, data_dir: Path, expected: int) -> dict[str, Any]:
    """Launch the server, poll until ready (see the module docstring), stop it."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1",
           "TESSERA_DATA_DIR": str(data_dir), "TESSERA_DEVICE": "cpu",
           "TESSERA_PORT": str(port)}  # fmt: skip
    base = f"http://127.0.0.1:{port}/api"
    start = time.perf_counter()
    proc = subprocess.Popen([python_of(tree), "-m", "tessera_gpu.cli", "serve"], env=env,
                            cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        ids: list[str] = []
        tiles: set[str] = set()
        up = api = None
        while True:
            if proc.poll() is not None:
                said = proc.stderr.read()[-2000:] if proc.stderr else b""
                raise SystemExit(f"server in {tree} exited: {said!r}")
            if time.perf_counter() - start > 600:
                raise SystemExit(f"server in {tree} not ready after 600 s")
            if up is None:
                if get(f"{base}/health")[0] != 200:
                    time.sleep(0.02)
                    continue
                up = time.perf_counter() - start
            if api is None:
                status, body = get(f"{base}/datasets")
                listed = json.loads(body) if status == 200 else []
                done = [d for d in listed if d["projection"]["status"] == "done"]
                if len(done) == expected:
                    api, ids = time.perf_counter() - start, [d["id"] for d in done]
            for d in set(ids) - tiles:
                if get(f"{base}/datasets/{d}/tiles/0/0/0.png")[0] == 200:
                    tiles.add(d)
            if ids and tiles == set(ids) and get(f"{base}/health")[0] == 200:
                break
            time.sleep(0.02)
        ready = time.perf_counter() - start
        health = json.loads(get(f"{base}/health")[1])
        return {"ready_s": ready, "up_s": up, "api_s": api,
                "rss_gib": health["memory"]["process_rss_gib"]}  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="an older checkout")
    parser.add_argument("--datasets", type=int, default=3)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    sides = {"tessera": ROOT, "baseline": args.baseline.resolve()}
    report: dict[str, Any] = {"datasets": args.datasets, "n": args.n, "dim": args.dim,
                              "runs": args.runs, "load": os.getloadavg()[0]}  # fmt: skip
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory(prefix="tessera-restart-") as tmp:
        files = []
        for i in range(args.datasets):
            files.append(Path(tmp) / f"big{i}.h5")
            write_file(files[-1], args.n, args.dim, seed=i)
        for side, tree in sides.items():
            prime = PRIME.format(root=str(tree), files=[str(f) for f in files],
                                 data=str(Path(tmp) / side))  # fmt: skip
            subprocess.run([python_of(tree), "-c", prime], check=True, cwd=tempfile.gettempdir(),
                           env={**os.environ, "PYTHONPATH": str(tree)})  # fmt: skip
        for _ in range(args.runs):
            for side, tree in sides.items():
                runs[side].append(restart(tree, Path(tmp) / side, args.datasets))
    report["load_after"] = os.getloadavg()[0]
    for side in sides:
        walls = [r["ready_s"] for r in runs[side]]
        report[side] = {"median_s": statistics.median(walls), "runs": [round(w, 3) for w in walls],
                        "up_s": statistics.median(r["up_s"] for r in runs[side]),
                        "api_s": statistics.median(r["api_s"] for r in runs[side]),
                        "rss_gib": statistics.median(r["rss_gib"] for r in runs[side])}  # fmt: skip
    report["ratio"] = round(report["baseline"]["median_s"] / report["tessera"]["median_s"], 2)
    print(f"restart with {args.datasets} cached {args.n:,} x {args.dim:,} datasets, medians of "
          f"{args.runs}, load {report['load']:.2f} -> {report['load_after']:.2f}")  # fmt: skip
    print(f"{'':24} {'tessera':>9} {'baseline':>9} {'speed-up':>9}")
    t, b = report["tessera"], report["baseline"]
    for key, label in (("up_s", "health answers (s)"), ("api_s", "API ready (s)")):
        print(f"{label:24} {t[key]:>9.2f} {b[key]:>9.2f} {b[key] / t[key]:>8.1f}x")
    print(f"{'tiles of each (s)':24} {t['median_s']:>9.2f} {b['median_s']:>9.2f} "
          f"{report['ratio']:>8.1f}x")  # fmt: skip
    print(f"{'server RSS at ready (GiB)':24} {t['rss_gib']:>9.2f} {b['rss_gib']:>9.2f}")
    RESULTS.mkdir(exist_ok=True)
    write_atomic(RESULTS / "restart.json", json.dumps(report, indent=2).encode())


if __name__ == "__main__":
    main()
