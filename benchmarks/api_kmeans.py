"""K-means diversity sample over HTTP vs the library call: n=5,000 from 35,000 x 512.

    python benchmarks/api_kmeans.py [--repeats 3]

The compute target is for ``diversity_sample`` itself; the API target is that target plus
1 s. Both are timed here in one process, on the same data, and the difference is the HTTP,
manifest and coverage-stats overhead. Writes ``results/api_kmeans.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from litestar.testing import TestClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tessera_app.main import create_app  # noqa: E402

from benchmarks.data import clustered_embeddings  # noqa: E402
from tessera_gpu.backends import get_backend  # noqa: E402
from tessera_gpu.clustering import diversity_sample  # noqa: E402
from tessera_gpu.io.writer import write_dataset  # noqa: E402
from tessera_gpu.settings import Settings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/api_kmeans.json")
    args = parser.parse_args()
    emb = clustered_embeddings(35_000, 512, seed=0)
    backend = get_backend("cpu")
    x = backend.to_device(emb)
    diversity_sample(x[:5000], 500, backend=backend, seed=0)  # JIT warm-up
    library = []
    for seed in range(args.repeats):
        start = time.perf_counter()
        diversity_sample(x, 5000, backend=backend, seed=seed)
        library.append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.h5"
        rng = np.random.default_rng(0)
        write_dataset(
            path,
            embeddings=emb,
            episode_ids=[f"e{i}" for i in range(35_000)],
            metadata={"success": rng.random(35_000) < 0.7},
        )
        settings = Settings(
            device="cpu", data_dir=Path(tmp) / "data", allowed_host=("testserver.local",)
        )
        with TestClient(create_app(settings, files=[path])) as client:
            dataset = client.get("/api/datasets").json()[0]["id"]
            while client.get(f"/api/datasets/{dataset}/projection").json()["status"] != "done":
                time.sleep(0.5)  # let the projection job finish: it would compete for the CPU
            http = []
            for seed in range(args.repeats):
                start = time.perf_counter()
                r = client.post(
                    f"/api/datasets/{dataset}/samples",
                    json={"method": "kmeans", "n": 5000, "seed": seed},
                )
                http.append(time.perf_counter() - start)
                assert r.status_code == 201, r.text
    report = {
        "library_median_s": round(statistics.median(library), 2),
        "http_median_s": round(statistics.median(http), 2),
        "overhead_s": round(statistics.median(http) - statistics.median(library), 2),
        "library_s": [round(v, 2) for v in library],
        "http_s": [round(v, 2) for v in http],
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
