"""Map latency at 200k points: cold tiles (categorical and density) and nearest look-ups.

"Cold" means the tile was never rendered (no PNG cache), on an index that is built and warm
(datashader's kernels compiled, per-level eq_hist computed), as a server has it after its
first tile of that colouring. Tiles are drawn at random over zoom 0-8, only where points are
(an empty tile is a cached constant). Seeded; prints a table and writes
``benchmarks/results/tiles.json``.

    python -m benchmarks.tiles [--n 200000] [--tiles 400] [--lookups 2000] [--http]

``--http`` also times the same requests through the app (in-process ASGI, no socket): a file of
the same points is registered and its projection stubbed with them.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from tessera_gpu.render.colors import CATEGORY_PALETTE, ColorBy
from tessera_gpu.render.nearest import NearestIndex
from tessera_gpu.render.tiles import TileIndex, compile_kernels, render_tile

RESULTS = Path(__file__).resolve().parent / "results"


def map_points(n: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A UMAP-like map: 40 blobs of unequal size and spread, a category per blob (12 kinds)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-12, 12, size=(40, 2))
    spreads = rng.uniform(0.2, 1.2, size=40)
    blob = rng.choice(40, size=n, p=rng.dirichlet(np.full(40, 2.0)))
    coords = centres[blob] + rng.normal(size=(n, 2)) * spreads[blob, None]
    return coords.astype(np.float32), (blob % 12).astype(np.int32)


def occupied_tiles(index: TileIndex, count: int, *, seed: int = 0) -> list[tuple[int, int, int]]:
    """``count`` random (z, x, y) with points in them, z from 0 to 8, no repeats."""
    rng = np.random.default_rng(seed)
    view, pyramid = index.view(), index.pyramid
    picked: set[tuple[int, int, int]] = set()
    while len(picked) < count:
        z = int(rng.integers(0, 9))
        i = int(rng.integers(0, view.n))
        step = pyramid.size / 2**z
        x = min(int((view.xs[i] - pyramid.x0) // step), 2**z - 1)
        y = min(int((view.ys[i] - pyramid.y0) // step), 2**z - 1)
        picked.add((z, x, y))
    return sorted(picked, key=lambda t: rng.random())


def time_tiles(index: TileIndex, spec: ColorBy, tiles: list[tuple[int, int, int]]) -> np.ndarray:
    view = index.view()
    render_tile(view, spec, 0, 0, 0)  # datashader compiles once per number of categories
    out = []
    for z, x, y in tiles:
        t0 = time.perf_counter()
        render_tile(view, spec, z, x, y)
        out.append(time.perf_counter() - t0)
    return np.array(out) * 1e3


def time_nearest(coords: np.ndarray, lookups: int) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    nn = NearestIndex(coords)
    build = time.perf_counter() - t0
    rng = np.random.default_rng(1)
    points = rng.uniform(coords.min(axis=0), coords.max(axis=0), size=(lookups, 2))
    out = []
    for x, y in points:
        t0 = time.perf_counter()
        nn.nearest(float(x), float(y))
        out.append(time.perf_counter() - t0)
    return build, np.array(out) * 1e3


def time_http(coords: np.ndarray, codes: np.ndarray, tiles: list[tuple[int, int, int]],
              lookups: int) -> dict[str, float]:  # fmt: skip
    """p50/p99 of cold categorical tiles and nearest look-ups through the HTTP app."""
    from litestar.testing import TestClient
    from tessera_app.main import create_app

    from tessera_gpu.io.writer import write_dataset
    from tessera_gpu.settings import Settings

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    with tempfile.TemporaryDirectory() as tmp:
        path = write_dataset(
            Path(tmp) / "bench.h5", embeddings=coords,
            episode_ids=[f"ep_{i:06d}" for i in range(len(coords))],
            metadata={"kind": np.array([f"k{c}" for c in range(12)])[codes]},
        )  # fmt: skip
        app = create_app(Settings(device="cpu", data_dir=Path(tmp) / "data"))
        jobs: Any = app.state.tessera.jobs
        jobs.submit = lambda *a, **k: None  # no real projection: these points are the map
        jobs.coords = lambda dataset_id: coords
        with TestClient(app) as client:
            ds = app.state.tessera.register_path(path, check_allowed=False).entry.id
            base = f"/api/datasets/{ds}"
            client.get(f"{base}/tiles/0/0/0.png?color_by=kind")  # builds the indexes
            tile_ms = _timed(client, [f"{base}/tiles/{z}/{x}/{y}.png?color_by=kind"
                                      for z, x, y in tiles if (z, x, y) != (0, 0, 0)])  # fmt: skip
            rng = np.random.default_rng(2)
            pts = rng.uniform(coords.min(axis=0), coords.max(axis=0), size=(lookups, 2))
            near_ms = _timed(client, [f"{base}/points/nearest?x={x}&y={y}" for x, y in pts])
    return {
        "HTTP cold categorical tile p50 ms": float(np.percentile(tile_ms, 50)),
        "HTTP cold categorical tile p99 ms": float(np.percentile(tile_ms, 99)),
        "HTTP nearest p50 ms": float(np.percentile(near_ms, 50)),
        "HTTP nearest p99 ms": float(np.percentile(near_ms, 99)),
    }


def _timed(client: Any, urls: list[str]) -> np.ndarray:
    out = []
    for url in urls:
        t0 = time.perf_counter()
        response = client.get(url)
        out.append(time.perf_counter() - t0)
        assert response.status_code == 200, (url, response.text[:200])
    return np.array(out) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--tiles", type=int, default=400)
    parser.add_argument("--lookups", type=int, default=2_000)
    parser.add_argument("--http", action="store_true", help="also time through the app")
    args = parser.parse_args()
    coords, codes = map_points(args.n)
    t0 = time.perf_counter()
    compile_kernels()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    index = TileIndex(coords)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    index.warm()
    warm_s = time.perf_counter() - t0
    labels = tuple(f"k{i}" for i in range(12))
    category = ColorBy("category", "kind", codes=codes, labels=labels, colors=CATEGORY_PALETTE[:12])
    tiles = occupied_tiles(index, args.tiles)
    cat_ms = time_tiles(index, category, tiles)
    dens_ms = time_tiles(index, ColorBy("density"), tiles)
    nn_build_s, nn_ms = time_nearest(coords, args.lookups)
    rows = {
        "cold categorical tile p50 ms": float(np.percentile(cat_ms, 50)),
        "cold categorical tile p99 ms": float(np.percentile(cat_ms, 99)),
        "cold density tile p50 ms": float(np.percentile(dens_ms, 50)),
        "cold density tile p99 ms": float(np.percentile(dens_ms, 99)),
        "nearest p50 ms": float(np.percentile(nn_ms, 50)),
        "nearest p99 ms": float(np.percentile(nn_ms, 99)),
        "tile index build s": build_s,
        "kernel compile s (once per process, in the background)": compile_s,
        "tile index warm s (eq_hist of 13 levels)": warm_s,
        "k-d tree build s": nn_build_s,
    }
    if args.http:
        rows.update(time_http(coords, codes, tiles, min(args.lookups, 500)))
    print(f"{args.n:,} points, {len(tiles)} tiles (zoom 0-8), {args.lookups:,} look-ups")
    for name, value in rows.items():
        print(f"  {name:<52} {value:8.2f}")
    RESULTS.mkdir(exist_ok=True)
    report = {
        "n": args.n,
        "tiles": len(tiles),
        "lookups": args.lookups,
        "machine": platform.platform(),
        "processor": platform.processor(),
        **rows,
    }
    (RESULTS / "tiles.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
