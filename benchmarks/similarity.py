"""The cosine kNN graph against pynndescent and faiss, and near-duplicates against exact search.

    python benchmarks/similarity.py [--quick] [--n 200000] [--dim 2048] [--groups 1000]
        [--baseline-n 20000] [--knn-n 200000] [--queries 1000] [--http]

Measured, in one run:

* **neighbours** on held-out data (``benchmarks.data.heldout_mixture``: a hierarchical
  mixture with background noise, ``--knn-n`` x ``--dim``): Tessera's similarity index
  (``build_index``: norms, PCA, the graph, as the similarity job builds it) vs pynndescent
  (``NNDescent(metric="cosine", n_jobs=2)``, otherwise its defaults: 30 neighbours) vs faiss
  HNSW (``IndexHNSWFlat(d, 32)`` on inner product of the unit rows, ``efSearch=16``, every
  row searched for 16 neighbours, 2 threads). Each: seconds (median of 3 runs, the three
  taking turns; faiss HNSW once above 20,000 rows: its build takes minutes), recall@15
  against the exact full-space cosine neighbours of ``--queries`` seeded rows, and the error
  of ``uniqueness`` (the distance to the 10th neighbour) against the exact one. Each side
  first runs on a few thousand rows, so JIT compilation is not timed; the exact neighbours
  are cached.
* **near-duplicates** on data with planted copies (low intrinsic dimension: a 60-cluster
  mixture in 48 latent dimensions, mapped linearly to ``--dim`` plus 5% noise, so nearest
  neighbours sit at cosine distance ~0.1; ``--groups`` originals get 1 to 3 copies each at a
  cosine distance of about 0.001): Tessera's index and the groups at 0.05, with planted-pair
  recall, and precision: every linked pair's cosine distance recomputed exactly in float64
  must be <= the threshold. At ``--baseline-n`` rows, also scikit-learn's brute
  ``radius_neighbors`` and faiss's exact range search (``IndexFlatIP.range_search`` on the
  unit rows): time, and Tessera's recall/precision of *all* pairs against scikit-learn's.
* with ``--http``: find-similar through a real ``tessera serve`` once the graph exists, p50 over
  ``--repeats`` random episodes for k=10 and for k=500.

``--quick``: 20,000 held-out rows and the planted baseline size only. Prints tables and writes
``benchmarks/results/similarity.json`` (``similarity-quick.json``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.data import CACHE_DIR  # noqa: E402
from benchmarks.neighbours import neighbours, unit_rows, warm_tessera  # noqa: E402

THRESHOLD = 0.05
PEERS = {"pynndescent": "pynndescent", "faiss": "faiss-cpu", "sklearn": "scikit-learn"}


def preflight() -> None:
    """Stop at once, with one line, when a peer is not installed."""
    absent = [dist for module, dist in PEERS.items() if importlib.util.find_spec(module) is None]
    if absent:
        raise SystemExit(f"the similarity benchmark compares against {', '.join(absent)}: "
                         "pip install -e '.[bench]'")  # fmt: skip


def planted(
    n: int, dim: int, *, groups: int, seed: int = 0
) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """``n`` clustered rows then the planted copies; the planted pairs (i < j)."""
    x = structured(n, dim, seed=seed)
    rng = np.random.default_rng(seed + 1)
    originals = rng.choice(n, groups, replace=False)
    copies, pairs, row = [], set(), n
    for o in originals:
        members = [int(o)]
        for _ in range(int(rng.integers(1, 4))):
            noise = rng.normal(0, 1, dim).astype(np.float32)
            noise *= 0.05 * np.linalg.norm(x[o]) / np.linalg.norm(noise)  # cosine ~0.001
            copies.append(x[o] + noise)
            members.append(row)
            row += 1
        pairs |= {(a, b) for a in members for b in members if a < b}
    return np.ascontiguousarray(np.vstack([x, np.asarray(copies)]), dtype=np.float32), pairs


def structured(n: int, dim: int, *, seed: int = 0, latent: int = 48) -> np.ndarray:
    """Embeddings with low intrinsic dimension (see the module docstring), cached on disk."""
    path = CACHE_DIR / f"structured-{n}x{dim}-s{seed}.npy"
    if path.exists():
        return np.load(path)
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(60, latent)) * 2.0
    z = centers[rng.integers(0, 60, n)] + rng.normal(size=(n, latent))
    w = rng.normal(size=(latent, dim)) / np.sqrt(latent)
    x = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 20_000):
        block = z[start : start + 20_000] @ w
        block += rng.normal(size=block.shape) * 0.05
        x[start : start + 20_000] = block
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    np.save(path, x)
    return x


def components(n: int, pairs: set[tuple[int, int]]) -> set[frozenset[int]]:
    """The connected components (of two or more) of a pair set."""
    import scipy.sparse
    import scipy.sparse.csgraph

    if not pairs:
        return set()
    a, b = (np.array(v) for v in zip(*pairs, strict=True))
    graph = scipy.sparse.coo_matrix((np.ones(a.size), (a, b)), shape=(n, n))
    _, labels = scipy.sparse.csgraph.connected_components(graph, directed=False)
    members = np.unique(np.concatenate([a, b]))
    out: dict[int, set[int]] = {}
    for m in members.tolist():
        out.setdefault(int(labels[m]), set()).add(m)
    return {frozenset(g) for g in out.values()}


def exact_cosine(x: np.ndarray, pairs: list[tuple[int, int]]) -> np.ndarray:
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    xa, xb = x[a].astype(np.float64), x[b].astype(np.float64)
    cos = (xa * xb).sum(1) / (np.linalg.norm(xa, axis=1) * np.linalg.norm(xb, axis=1))
    return 1.0 - cos


def tessera_groups(x: np.ndarray) -> dict[str, Any]:
    from tessera_gpu.backends import get_backend
    from tessera_gpu.similarity import build_index

    backend = get_backend("cpu")
    warm_tessera(x)
    t0 = time.perf_counter()
    index = build_index(x, x, backend)
    t1 = time.perf_counter()
    groups = index.groups(x, THRESHOLD)
    t2 = time.perf_counter()
    found = {
        (int(min(a, b)), int(max(a, b))) for g in groups.groups for a in g for b in g if a != b
    }
    lo, hi, dist = index.edges()
    within = dist <= THRESHOLD
    linked = list(zip(lo[within].tolist(), hi[within].tolist(), strict=True))
    return {"index": index, "groups": groups, "pairs": found, "linked": linked,
            "graph_s": round(t1 - t0, 2), "groups_s": round(t2 - t1, 2),
            "total_s": round(t2 - t0, 2), "knn": index.info["knn"]}  # fmt: skip


def _precision(x: np.ndarray, linked: list[tuple[int, int]]) -> float | None:
    """Share of the pairs the groups are linked by that are within the threshold, recomputed
    exactly in float64."""
    if not linked:
        return None
    return round(float(np.mean(exact_cosine(x, linked) <= THRESHOLD + 1e-6)), 4)


def sklearn_pairs(x: np.ndarray) -> tuple[set[tuple[int, int]], float]:
    from sklearn.neighbors import NearestNeighbors

    t0 = time.perf_counter()
    nn = NearestNeighbors(metric="cosine", algorithm="brute").fit(x)
    _, ind = nn.radius_neighbors(x, radius=THRESHOLD)
    elapsed = time.perf_counter() - t0
    pairs = {(i, int(j)) for i, row in enumerate(ind) for j in row if i < j}
    return pairs, elapsed


def faiss_range_pairs(x: np.ndarray) -> tuple[set[tuple[int, int]], float]:
    """faiss's exact range search at the threshold (inner product of the unit rows, 2 threads)."""
    import faiss

    faiss.omp_set_num_threads(2)
    t0 = time.perf_counter()
    unit = unit_rows(x)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(unit)
    lims, _, found = index.range_search(unit, 1.0 - THRESHOLD)
    elapsed = time.perf_counter() - t0
    pairs = {(i, int(j)) for i in range(len(x)) for j in found[lims[i] : lims[i + 1]] if i < j}
    return pairs, elapsed


def http_latency(x: np.ndarray, repeats: int) -> dict[str, Any]:
    """p50 of find-similar through a real server, once the similarity graph exists."""
    import tempfile

    from benchmarks.server import tessera_server, wait_for
    from tessera_gpu.io.writer import write_dataset

    def done(status: dict[str, Any]) -> bool:
        return status.get("status") == "done"

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "similar.h5"
        write_dataset(path, embeddings=x, episode_ids=[f"ep_{i:07d}" for i in range(len(x))])
        with tessera_server(str(path), folder=Path(tmp)) as client:
            dataset_id = wait_for(client, "/api/datasets", bool, timeout=1800)[0]["id"]
            base = f"/api/datasets/{dataset_id}"
            wait_for(client, f"{base}/similarity", done)
            wait_for(client, f"{base}/projection", done)
            rng = np.random.default_rng(0)
            out = {}
            for k in (10, 500):
                times = []
                for row in rng.integers(0, len(x), repeats):
                    t0 = time.perf_counter()
                    r = client.get(f"{base}/episodes/{int(row)}/similar", params={"k": k})
                    times.append(time.perf_counter() - t0)
                    r.raise_for_status()
                out[f"k{k}_p50_ms"] = round(1000 * statistics.median(times), 2)
            return out


def measure(
    n: int, dim: int, groups: int, baseline: bool, *, faiss_range: bool = False
) -> dict[str, Any]:
    x, planted_pairs = planted(n, dim, groups=groups)
    ours = tessera_groups(x)
    row: dict[str, Any] = {
        "rows": len(x), "dim": dim, "planted_pairs": len(planted_pairs),
        "tessera_graph_s": ours["graph_s"], "tessera_groups_s": ours["groups_s"],
        "tessera_total_s": ours["total_s"], "knn": ours["knn"],
        "n_groups": len(ours["groups"].groups), "removed": int(ours["groups"].removed().size),
        "planted_recall": round(len(planted_pairs & ours["pairs"]) / len(planted_pairs), 4),
        "linked_pairs": len(ours["linked"]),
        "precision_exact": _precision(x, ours["linked"]),
    }  # fmt: skip
    if baseline:
        truth, seconds = sklearn_pairs(x)
        linked = set(ours["linked"])
        row.update({
            "sklearn_radius_s": round(seconds, 2),
            "speedup": round(seconds / ours["total_s"], 2),
            "all_pairs_exact": len(truth),
            "recall_vs_brute": round(len(truth & linked) / len(truth), 4) if truth else None,
            "precision_vs_brute": round(len(truth & linked) / len(linked), 4) if linked else None,
            "same_groups_as_brute": components(len(x), truth) == components(len(x), linked),
        })  # fmt: skip
        if faiss_range:
            found, seconds = faiss_range_pairs(x)
            row.update({"faiss_range_s": round(seconds, 2),
                        "faiss_speedup": round(seconds / ours["total_s"], 2),
                        "faiss_pairs_same_as_brute": found == truth})  # fmt: skip
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="20,000 held-out rows, the planted baseline size only")  # fmt: skip
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--groups", type=int, default=1000)
    parser.add_argument("--baseline-n", type=int, default=20_000)
    parser.add_argument("--knn-n", type=int, default=200_000, help="held-out rows")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--http", action="store_true", help="Also time find-similar over HTTP.")
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--http-only", action="store_true",
                        help="Only the HTTP timings, added to the --out file's runs.")  # fmt: skip
    args = parser.parse_args()
    name = "similarity-quick.json" if args.quick else "similarity.json"
    out: Path = args.out or ROOT / "benchmarks" / "results" / name
    if args.quick:
        args.knn_n, args.n = 20_000, args.baseline_n
    if args.http_only:
        report: dict[str, Any] = json.loads(out.read_text())
    else:
        preflight()
        found = neighbours(args.knn_n, args.dim, args.queries, repeats=3)
        report = {"threshold": THRESHOLD, "neighbours": found}
        groups = max(10, args.groups // 10)
        rows = [measure(args.baseline_n, args.dim, groups, baseline=True, faiss_range=True)]
        print(json.dumps(rows[-1]), flush=True)
        if args.n > args.baseline_n:
            rows.append(measure(args.n, args.dim, args.groups, baseline=False))
            print(json.dumps(rows[-1]), flush=True)
        report["runs"] = rows
    if args.http or args.http_only:
        x, _ = planted(args.n, args.dim, groups=args.groups)
        x = x[:200_000]  # a file holds at most 200,000 episodes
        report["http"] = {"rows": len(x), **http_latency(x, args.repeats)}
        print(json.dumps(report["http"]), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)


def print_neighbours(nb: dict[str, Any]) -> None:
    print(
        f"\nneighbours, held-out mixture {nb['rows']:,} x {nb['dim']}, k=15, recall against "
        f"exact cosine neighbours of {nb['queries']:,} rows; median of {nb.get('repeats', 1)} "
        f"(load {nb['load_average_at_start']} at start, {nb.get('load_average_at_end')} at end)"
    )
    print(f"{'graph':>14}{'seconds':>10}{'recall@15':>11}{'uniq. abs err':>15}"
          f"{'rel err':>9}{'Tessera time / this':>21}")  # fmt: skip
    for name in ("tessera", "pynndescent", "faiss_hnsw"):
        r = nb[name]
        ratio = nb.get(f"tessera_time_over_{name}", 1.0)
        print(
            f"{name:>14}{r['seconds']:>10.1f}{r['recall_at_15']:>11.3f}"
            f"{r['uniqueness_abs_error']:>15.5f}{r['uniqueness_rel_error']:>9.4f}{ratio:>21.2f}"
        )


def print_table(report: dict[str, Any]) -> None:
    if "neighbours" in report:
        print_neighbours(report["neighbours"])
    print(f"\nnear-duplicates at cosine distance <= {report['threshold']}")
    print(f"{'rows x dim':>16}{'Tessera s':>11}{'sklearn s':>11}{'speed-up':>10}"
          f"{'planted recall':>16}{'recall/prec vs brute':>22}")  # fmt: skip
    for r in report["runs"]:
        vs = (f"{r['recall_vs_brute']}/{r['precision_vs_brute']}"
              if "recall_vs_brute" in r else "-")  # fmt: skip
        nan = float("nan")
        print(f"{r['rows']:>9,} x {r['dim']:<4}{r['tessera_total_s']:>11.2f}"
              f"{r.get('sklearn_radius_s', nan):>11.2f}{r.get('speedup', nan):>10.2f}"
              f"{r['planted_recall']:>16.4f}{vs:>22}")  # fmt: skip
        if "faiss_range_s" in r:
            print(f"{'':>16}faiss exact range search {r['faiss_range_s']:.2f} s "
                  f"({r['faiss_speedup']:.1f}x Tessera's time), same pairs as scikit-learn: "
                  f"{r['faiss_pairs_same_as_brute']}")  # fmt: skip
    if "http" in report:
        h = report["http"]
        print(f"find similar over HTTP at {h['rows']:,}: k=10 p50 {h['k10_p50_ms']} ms, "
              f"k=500 p50 {h['k500_p50_ms']} ms")  # fmt: skip


if __name__ == "__main__":
    main()
