"""The ``cuml.dask`` branch (tessera_gpu/distributed/rapids.py) against a fake cuML that keeps
the shapes of cuML 25.12: no GPU and no RAPIDS needed."""

from __future__ import annotations

import importlib.machinery
import itertools
import sys
import types
from typing import Any

import numpy as np
import pytest

da = pytest.importorskip("dask.array", reason="the dask extra is not installed")

from tessera_gpu.distributed import rapids  # noqa: E402

pytestmark = pytest.mark.gpu

CENTRES = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=np.float32)


def _nearest(block: np.ndarray) -> np.ndarray:
    d2 = ((block[:, None, :] - CENTRES[None, :, :]) ** 2).sum(axis=2)
    return d2.argmin(axis=1).astype(np.int32)


class FakeDaskKMeans:
    """cuml.dask.cluster.KMeans as 25.12 has it: ``fit`` hands the partitions to the workers
    (here two, alternately), and ``labels_`` is a plain CuPy array of the workers' labels one
    worker after the other; ``predict`` maps over the partitions, so it keeps their order."""

    def __init__(self, *, client: Any, n_clusters: int, random_state: int, max_iter: int) -> None:
        self.n_clusters = n_clusters

    def fit(self, x: Any) -> FakeDaskKMeans:
        parts = [x.blocks[i].compute() for i in range(x.numblocks[0])]
        workers = [parts[0::2], parts[1::2]]
        self.labels_ = np.concatenate([_nearest(p) for w in workers for p in w])
        self.cluster_centers_ = CENTRES.copy()
        self.inertia_ = 1.5
        return self

    def predict(self, x: Any, delayed: bool = True) -> Any:
        return x.map_blocks(_nearest, drop_axis=1, dtype=np.int32)


def _module(monkeypatch: pytest.MonkeyPatch, name: str, **attrs: Any) -> None:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    for key, value in attrs.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)


def test_rapids_kmeans_labels_come_back_in_row_order(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    x = (CENTRES[rng.integers(0, 3, 900)] + rng.normal(size=(900, 2))).astype(np.float32)
    bounds = [0, 100, 350, 400, 700, 900]  # five partitions of unequal sizes
    chunks = [x[a:b] for a, b in itertools.pairwise(bounds)]
    monkeypatch.setattr(rapids, "_dask_array", lambda *a, **k: da.concatenate(
        [da.from_array(c, chunks=c.shape) for c in chunks]))  # fmt: skip
    _module(monkeypatch, "cupy", asnumpy=np.asarray, asarray=np.asarray, zeros=np.zeros)
    _module(monkeypatch, "cuml")
    _module(monkeypatch, "cuml.dask")
    _module(monkeypatch, "cuml.dask.cluster", KMeans=FakeDaskKMeans)
    engine = types.SimpleNamespace(client=None)
    result = rapids.rapids_kmeans(engine, [], 3, locals_=[], seed=0, n_iter=5)  # type: ignore[arg-type]
    np.testing.assert_array_equal(result.labels, _nearest(x))
    assert result.labels.dtype == np.int64
    np.testing.assert_array_equal(result.centroids, CENTRES)
    assert result.inertia == 1.5
