"""Find similar, near-duplicate groups and uniqueness, checked against brute force."""

from __future__ import annotations

from pathlib import Path

import numba
import numpy as np
import pytest

from benchmarks.data import heldout_mixture
from tessera_gpu.backends import cpu_cosine, get_backend
from tessera_gpu.errors import InvalidRequest
from tessera_gpu.io.artifacts import ArtifactStore
from tessera_gpu.similarity import (
    GRAPH_K,
    SimilarityIndex,
    build_index,
    check_threshold,
    derived_fields,
    load_or_build,
)

from .backend_params import backend_for, clustered


def planted(n: int = 2000, dim: int = 96, *, groups: int = 40, seed: int = 0):  # type: ignore[no-untyped-def]
    """Clustered rows plus near-copies: ``groups`` originals get 1 to 3 copies each, at a
    cosine distance well under 0.01. Returns ``(x, planted pairs as a set of (i, j))``."""
    rng = np.random.default_rng(seed)
    x, _ = clustered(n, dim, centres=12, spread=1.0, seed=seed)
    originals = rng.choice(n, groups, replace=False)
    copies, pairs = [], set()
    next_row = n
    for o in originals:
        members = [int(o)]
        for _ in range(int(rng.integers(1, 4))):
            copies.append(x[o] + rng.normal(0, 0.002 * np.linalg.norm(x[o]) / np.sqrt(dim), dim))
            members.append(next_row)
            next_row += 1
        pairs |= {(a, b) for a in members for b in members if a < b}
    return np.vstack([x, np.asarray(copies, dtype=np.float32)]).astype(np.float32), pairs


def brute_cosine(x: np.ndarray) -> np.ndarray:
    u = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    return np.clip(1.0 - u @ u.T, 0.0, 2.0)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, set[tuple[int, int]]]:
    return planted()


@pytest.fixture(scope="module")
def index(data: tuple[np.ndarray, set[tuple[int, int]]]) -> SimilarityIndex:
    x, _ = data
    return build_index(x, x, get_backend("cpu"))


def test_graph_distances_are_exact_and_sorted(data, index: SimilarityIndex) -> None:  # type: ignore[no-untyped-def]
    x, _ = data
    d = brute_cosine(x)
    rows = np.arange(len(x))[:, None]
    assert (index.indices[:, 0] == np.arange(len(x))).all()  # itself first
    np.testing.assert_allclose(index.distances, d[rows, index.indices], atol=2e-5)
    assert (np.diff(index.distances[:, 1:], axis=1) >= 0).all()
    exact = np.argsort(d + np.eye(len(x)) * 9, axis=1, kind="stable")[:, :10]
    recall = np.mean(
        [len(set(a) & set(b[1:11])) / 10 for a, b in zip(exact, index.indices, strict=False)]
    )
    assert recall >= 0.98


def test_similar_is_exact_with_and_without_a_filter(data, index: SimilarityIndex) -> None:  # type: ignore[no-untyped-def]
    x, _ = data
    d = brute_cosine(x)
    mask = np.arange(len(x)) % 3 != 0
    for row in (0, 17, 1999, len(x) - 1):
        for k, m in ((10, None), (200, None), (25, mask)):
            rows, dist = index.similar(x, row, k, m)
            allowed = np.ones(len(x), bool) if m is None else m.copy()
            allowed[row] = False
            cand = np.flatnonzero(allowed)
            want = cand[np.lexsort((cand, d[row, cand]))][:k]
            assert rows.tolist() == want.tolist()
            np.testing.assert_allclose(dist, d[row, want], atol=2e-5)


def test_similar_asks_for_more_than_there_are(data, index: SimilarityIndex) -> None:  # type: ignore[no-untyped-def]
    x, _ = data
    mask = np.zeros(len(x), bool)
    mask[[3, 4, 5]] = True
    rows, _ = index.similar(x, 4, 10, mask)
    assert sorted(rows.tolist()) == [3, 5]


def test_groups_find_every_planted_pair_with_precision_1(data, index: SimilarityIndex) -> None:  # type: ignore[no-untyped-def]
    x, pairs = data
    d = brute_cosine(x)
    groups = index.groups(x, 0.01)
    in_groups = {(a, b) for g in groups.groups for a in g for b in g if a < b}
    assert pairs <= in_groups  # recall of the planted pairs: 1.0
    found = {(int(i), int(j)) for i, j in zip(*np.nonzero(np.triu(d <= 0.01, 1)), strict=False)}
    assert found == pairs  # nothing else is that close in this data
    for g in groups.groups:  # precision: every pair the graph links is within the threshold
        assert max(d[a, b] for a in g for b in g) <= 0.01 + 1e-6


def test_group_order_and_keepers(data, index: SimilarityIndex) -> None:  # type: ignore[no-untyped-def]
    x, _ = data
    groups = index.groups(x, 0.01).groups
    sizes = [len(g) for g in groups]
    assert sizes == sorted(sizes, reverse=True)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    for g in groups:
        assert g[1:].tolist() == sorted(g[1:].tolist())  # the others in index order
        scores = u[g] @ u[g].mean(axis=0)
        assert scores[0] == pytest.approx(scores.max(), abs=1e-6)  # the keeper is first


def test_keep_mask_cuts_each_group_to_its_keeper(data, index: SimilarityIndex) -> None:  # type: ignore[no-untyped-def]
    x, pairs = data
    kept, removed = index.keep_mask(x, 0.01)
    members = {r for p in pairs for r in p}
    n_groups = len(index.groups(x, 0.01).groups)
    assert removed == len(members) - n_groups == int((~kept).sum())
    within = np.arange(len(x)) % 2 == 0  # a filter: groups only among its matches
    kept_f, removed_f = index.keep_mask(x, 0.01, within)
    assert not kept_f[~within].any()
    # every planted group is a clique within 0.01: its members in the filter stay one group
    planted_groups = [set(g.tolist()) for g in index.groups(x, 0.01).groups]
    assert removed_f == sum(max(0, sum(r % 2 == 0 for r in g) - 1) for g in planted_groups)


def test_uniqueness_is_the_distance_to_the_10th_neighbour(data, index: SimilarityIndex) -> None:  # type: ignore[no-untyped-def]
    x, _ = data
    d = brute_cosine(x)
    np.fill_diagonal(d, np.inf)
    tenth = np.sort(d, axis=1)[:, 9]
    u = index.uniqueness()
    assert np.mean(np.abs(u - tenth) < 1e-4) >= 0.98
    fields = derived_fields(index, x)
    assert fields["uniqueness"].kind == "float"
    assert fields["duplicate_group"].kind == "int"
    groups = index.groups(x, 0.05).groups
    labels = fields["duplicate_group"].values
    assert labels[groups[0]].tolist() == [1] * len(groups[0])
    assert int((labels > 0).sum()) == sum(len(g) for g in groups)


def test_the_cells_path_finds_every_planted_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_cosine, "EXACT_WORK", 0)  # take the large-data path at 3,000
    x, pairs = planted(3000, 160, groups=30, seed=2)
    idx, dist, method = cpu_cosine.cosine_knn(x, 16)
    assert "cells" in method
    assert "pca64" in method
    d = brute_cosine(x)
    np.testing.assert_allclose(dist, d[np.arange(len(x))[:, None], idx], atol=2e-5)
    found = {(min(i, int(j)), max(i, int(j))) for i in range(len(x)) for j in idx[i, 1:]
             if d[i, j] <= 0.01}  # fmt: skip
    assert len(found & pairs) / len(pairs) >= 0.99


def recall_at(idx: np.ndarray, d: np.ndarray, k: int) -> float:
    """Share of each row's ``k`` true nearest others (by ``d``) found in ``idx[:, 1:k+1]``."""
    d = d.copy()
    np.fill_diagonal(d, np.inf)
    truth = np.argsort(d, axis=1, kind="stable")[:, :k]
    return float(
        np.mean([len(set(t) & set(f)) / k for t, f in zip(truth, idx[:, 1 : k + 1], strict=True)])
    )


def test_the_graph_finds_the_true_neighbours_of_held_out_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hierarchical mixture with background noise whose clusters are locally 96-dimensional:
    PCA-64 candidates re-ranked exactly found about 0.91 of the 15 nearest here (and 0.55 at
    200k x 2048); comparing cells on the full vectors finds about 0.95."""
    monkeypatch.setattr(cpu_cosine, "EXACT_WORK", 0)  # the cells path, as above 10k rows
    x = heldout_mixture(8000, 512, seed=0)
    idx, dist, method = cpu_cosine.cosine_knn(x, GRAPH_K)
    assert "cells" in method
    d = brute_cosine(x)
    np.testing.assert_allclose(dist, d[np.arange(len(x))[:, None], idx], atol=2e-5)
    assert (idx[:, 0] == np.arange(len(x))).all()
    assert recall_at(idx, d, 15) >= 0.94
    tenth = np.sort(d + np.eye(len(x)) * 9, axis=1)[:, 9]
    assert np.mean(np.abs(dist[:, 10] - tenth)) < 0.004  # uniqueness, as users see it


def test_small_inputs_compare_every_pair(data) -> None:  # type: ignore[no-untyped-def]
    x, _ = data
    idx, _dist, method = cpu_cosine.cosine_knn(x, GRAPH_K)
    assert method == "exact-cosine"
    d = brute_cosine(x)
    assert recall_at(idx, d, GRAPH_K - 1) == 1.0


def test_the_graph_is_the_same_for_a_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run to run and on any number of numba threads: the same graph, bit for bit. BLAS on
    another thread count rounds the float32 GEMMs (and the PCA) differently: distances agree
    to float32 rounding and near-ties may swap, nothing more."""
    from threadpoolctl import threadpool_limits

    monkeypatch.setattr(cpu_cosine, "EXACT_WORK", 0)
    x = heldout_mixture(3000, 160, seed=4)
    first = cpu_cosine.cosine_knn(x, GRAPH_K, seed=1)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        alone = cpu_cosine.cosine_knn(x, GRAPH_K, seed=1)
    finally:
        numba.set_num_threads(threads)
    again = cpu_cosine.cosine_knn(x, GRAPH_K, seed=1)
    for other in (alone, again):
        np.testing.assert_array_equal(other[0], first[0])
        np.testing.assert_array_equal(other[1], first[1])
    with threadpool_limits(limits=1):
        serial_blas = cpu_cosine.cosine_knn(x, GRAPH_K, seed=1)
    same = np.mean(
        [len(set(a) & set(b)) / GRAPH_K for a, b in zip(first[0], serial_blas[0], strict=True)]
    )
    assert same >= 0.98
    np.testing.assert_allclose(serial_blas[1], first[1], atol=2e-4)  # sorted distances


@pytest.mark.parametrize("name", ["cpu", pytest.param("cupy", marks=pytest.mark.gpu)])
def test_every_backend_builds_the_same_graph(name: str, data) -> None:  # type: ignore[no-untyped-def]
    x, _ = data
    backend = backend_for(name)
    built = build_index(x, backend.to_device(x), backend)
    d = brute_cosine(x)
    np.testing.assert_allclose(built.distances, d[np.arange(len(x))[:, None], built.indices],
                               atol=3e-5)  # fmt: skip
    assert built.indices.shape == (len(x), GRAPH_K)
    assert (built.indices[:, 0] == np.arange(len(x))).all()


def test_the_index_is_cached_by_content(tmp_path: Path, data) -> None:  # type: ignore[no-untyped-def]
    x, _ = data
    store = ArtifactStore(tmp_path, ".knn")
    cpu = get_backend("cpu")
    first = load_or_build(store, "abc", x, x, cpu)
    again = load_or_build(store, "abc", x, x, cpu)
    assert (first.info["cache"], again.info["cache"]) == ("stored", "hit")
    np.testing.assert_array_equal(first.indices, again.indices)
    path = next(tmp_path.glob("*.knn"))
    path.write_bytes(path.read_bytes()[:-10])  # truncated: recomputed, not served
    assert load_or_build(store, "abc", x, x, cpu).info["cache"] == "stored"
    assert store.forget("abc") == 1


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, "0.1", True, None])
def test_threshold_must_be_in_0_1(bad: object) -> None:
    with pytest.raises(InvalidRequest, match="threshold"):
        check_threshold(bad)
    assert check_threshold(1) == 1.0
