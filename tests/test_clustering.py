"""K-means quality against scikit-learn, and the diversity sample's set semantics."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans

from tessera_gpu.backends import Backend, get_backend
from tessera_gpu.backends.cpu_kmeans import kmeans as cpu_kmeans
from tessera_gpu.clustering import diversity_sample, kmeans, nearest_sample_distances
from tessera_gpu.errors import InvalidRequest

from .backend_params import BACKEND_PARAMS, backend_for, brute_knn, clustered


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request: pytest.FixtureRequest) -> Backend:
    return backend_for(request.param)


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return clustered(3000, 32, centres=12, seed=21, latent=10)[0]


def _sklearn_inertia(x: np.ndarray, k: int) -> float:
    return float(KMeans(n_clusters=k, n_init=1, random_state=0).fit(x).inertia_)


# ---- K-means ----------------------------------------------------------------------------------


def test_inertia_close_to_sklearn(backend: Backend, data: np.ndarray) -> None:
    result = kmeans(backend.to_device(data), 60, backend=backend, seed=0)
    assert result.centroids.shape == (60, 32)
    assert result.labels.shape == (3000,)
    assert set(np.unique(result.labels)) <= set(range(60))
    assert result.inertia <= 1.05 * _sklearn_inertia(data, 60)
    recomputed = ((data - result.centroids[result.labels]) ** 2).sum(dtype=np.float64)
    assert result.inertia == pytest.approx(recomputed, rel=1e-3)


def test_reduced_space_kmeans_keeps_inertia() -> None:
    """Wide data clustered through the 64-dim PCA path, centroids/inertia in the full space."""
    x = clustered(1500, 300, centres=15, seed=22, latent=12)[0]
    fit = cpu_kmeans(x, 60, seed=0, reduce_above=0)
    assert fit.centroids.shape == (60, 300)
    assert fit.inertia <= 1.05 * _sklearn_inertia(x, 60)


def test_kmeans_over_a_subset(data: np.ndarray) -> None:
    b = get_backend("cpu")
    rows = np.arange(0, 3000, 2)
    result = kmeans(b.to_device(data), 10, backend=b, rows=rows, seed=0)
    assert result.labels.shape == (1500,)
    direct = kmeans(b.to_device(data[rows]), 10, backend=b, seed=0)
    np.testing.assert_array_equal(result.labels, direct.labels)


@pytest.mark.parametrize("k", [0, 3001])
def test_kmeans_refuses_bad_k(data: np.ndarray, k: int) -> None:
    b = get_backend("cpu")
    with pytest.raises(InvalidRequest, match="1 <= k <= 3,000"):
        kmeans(b.to_device(data), k, backend=b)


# ---- diversity sample -------------------------------------------------------------------------


def test_sample_is_distinct_global_rows(backend: Backend, data: np.ndarray) -> None:
    rows = np.arange(500, 2500)
    picked = diversity_sample(backend.to_device(data), 120, backend=backend, rows=rows, seed=3)
    assert picked.dtype == np.int64
    assert picked.shape == (120,)
    assert len(set(picked.tolist())) == 120
    assert set(picked.tolist()) <= set(rows.tolist())


def test_same_seed_same_sample(data: np.ndarray) -> None:
    b = get_backend("cpu")
    x = b.to_device(data)
    first = diversity_sample(x, 50, backend=b, seed=7)
    np.testing.assert_array_equal(diversity_sample(x, 50, backend=b, seed=7), first)
    assert set(diversity_sample(x, 50, backend=b, seed=8).tolist()) != set(first.tolist())


def test_each_pick_is_nearest_its_centroid() -> None:
    """On well-separated blobs, k = #blobs picks one member per blob: the one nearest its
    centroid."""
    x, labels = clustered(800, 8, centres=5, spread=0.2, seed=23)
    b = get_backend("cpu")
    picked = diversity_sample(b.to_device(x), 5, backend=b, seed=0)
    assert sorted(labels[picked].tolist()) == [0, 1, 2, 3, 4]
    for row in picked:
        members = np.flatnonzero(labels == labels[row])
        centre = x[members].mean(axis=0)
        nearest = members[np.argmin(((x[members] - centre) ** 2).sum(1))]
        assert row == nearest


def test_shared_nearest_episode_goes_to_the_next_nearest() -> None:
    """40 rows but only 4 distinct points: 10 centroids must still get 10 distinct rows."""
    x = np.repeat(np.eye(4, 3, dtype=np.float32) * 5, 10, axis=0)
    b = get_backend("cpu")
    picked = diversity_sample(b.to_device(x), 10, backend=b, seed=0)
    assert len(set(picked.tolist())) == 10


def test_sample_of_every_row_is_every_row(data: np.ndarray) -> None:
    b = get_backend("cpu")
    rows = np.array([3, 99, 7, 1500, 42])
    picked = diversity_sample(b.to_device(data), 5, backend=b, rows=rows)
    assert sorted(picked.tolist()) == sorted(rows.tolist())


@pytest.mark.parametrize("n", [0, -1, 6])
def test_sample_size_must_fit_the_rows(data: np.ndarray, n: int) -> None:
    b = get_backend("cpu")
    with pytest.raises(InvalidRequest, match=r"1 <= n <= 5 \(the matching episodes\)"):
        diversity_sample(b.to_device(data), n, backend=b, rows=np.arange(5))


# ---- coverage distances -----------------------------------------------------------------------


def test_nearest_sample_distances(backend: Backend, data: np.ndarray) -> None:
    x = backend.to_device(data)
    sample = diversity_sample(x, 40, backend=backend, seed=0)
    queries = np.arange(0, 3000, 3)
    got = nearest_sample_distances(x, queries, sample, backend=backend)
    _, ref = brute_knn(data[sample], data[queries], 1)
    np.testing.assert_allclose(got, ref[:, 0], rtol=1e-4, atol=1e-4)
    random = np.random.default_rng(0).choice(3000, 40, replace=False)
    baseline = nearest_sample_distances(x, queries, random, backend=backend)
    assert got.mean() < baseline.mean()  # the point of a diversity sample


def test_nearest_sample_distances_refuses_bad_input(data: np.ndarray) -> None:
    b = get_backend("cpu")
    x = b.to_device(data)
    with pytest.raises(InvalidRequest, match="sample is empty"):
        nearest_sample_distances(x, np.arange(5), np.array([], dtype=np.int64), backend=b)
    with pytest.raises(InvalidRequest, match="out of range"):
        nearest_sample_distances(x, np.array([3000]), np.arange(5), backend=b)
    empty = nearest_sample_distances(x, np.array([], dtype=np.int64), np.arange(5), backend=b)
    assert empty.shape == (0,)
