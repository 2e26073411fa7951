"""The ``cuml.dask`` branch: K-means and the kNN graph with RAPIDS' multi-GPU estimators.

:class:`~.engine.Cluster` takes it when every worker has a GPU with cuML (``dask cuda
worker`` in the RAPIDS environment, :meth:`.Cluster.uses_rapids`). Elsewhere the engine's own tasks
run: on a GPU worker without cuML they use the CuPy tier (:func:`.refs.worker_backend`), on a
CPU worker the numba and BLAS kernels, which CI tests.

GPU only, and run by no CI here: the workers read their partitions onto their GPUs (the
loader's checks, then ``cupy.asarray``), ``dask.array`` stitches those futures together, and

* ``cuml.dask.cluster.KMeans`` (scalable k-means++, Lloyd with NCCL all-reduce) fits it, and
  its ``predict`` gives the labels in partition order;
* ``cuml.dask.neighbors.NearestNeighbors`` (brute force, exact) searches every row against
  every row; for cosine on unit rows, where cosine distance is half the squared Euclidean one.

Results come back in the in-process shapes; the caller's order of rows is kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from tessera_gpu.backends import Neighbors
from tessera_gpu.clustering import KMeansResult
from tessera_gpu.distributed.refs import ShardRef, on_worker, read_block

if TYPE_CHECKING:
    from tessera_gpu.distributed.cluster import Cluster

__all__ = ["rapids_kmeans", "rapids_knn"]


@on_worker
def _device_rows(ref: ShardRef, limits: Any, local: np.ndarray | None, unit: bool) -> Any:
    import cupy as cp

    x = read_block(ref, limits, local).x
    if unit:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1.0)
    return cp.asarray(x, dtype=cp.float32)


def _dask_array(
    engine: Cluster, refs: list[ShardRef], locals_: list[np.ndarray | None], unit: bool
) -> Any:
    import cupy as cp
    import dask
    import dask.array as da

    pieces = []
    for ref, local in zip(refs, locals_, strict=True):
        n = ref.n_rows if local is None else len(local)
        if n == 0:
            continue
        future = engine.submit(_device_rows, ref, engine.limits, local, unit, name="rapids-read")
        meta = cp.zeros((0, ref.dim), dtype=cp.float32)
        pieces.append(da.from_delayed(dask.delayed(future), (n, ref.dim), np.float32, meta=meta))
    return da.concatenate(pieces)


def rapids_knn(engine: Cluster, refs: list[ShardRef], k: int, *, metric: str) -> Neighbors:
    """Exact kNN of every row with ``cuml.dask.neighbors.NearestNeighbors``."""
    import cupy as cp
    from cuml.dask.neighbors import NearestNeighbors

    from tessera_gpu.distributed.knn import Best

    x = _dask_array(engine, refs, [None] * len(refs), unit=metric == "cosine")
    model = NearestNeighbors(client=engine.client, n_neighbors=k).fit(x)
    dist, idx = model.kneighbors(x, n_neighbors=k)
    dist = cp.asnumpy(dist.compute()).astype(np.float32)
    if metric == "cosine":
        dist = np.clip(np.square(dist) / 2, 0.0, 2.0)
    best = Best(len(dist), k)
    best.fold(np.arange(len(dist)), cp.asnumpy(idx.compute()).astype(np.int64), dist)
    best.self_first()
    return Neighbors(best.idx, best.dist, f"dask:cuml-brute-force-{metric}")


def rapids_kmeans(
    engine: Cluster,
    refs: list[ShardRef],
    k: int,
    *,
    locals_: list[np.ndarray | None],
    seed: int,
    n_iter: int,
) -> KMeansResult:
    """K-means of the rows (``locals_`` per ref, None: all) with ``cuml.dask.cluster.KMeans``;
    labels in row order."""
    import cupy as cp
    from cuml.dask.cluster import KMeans

    x = _dask_array(engine, refs, locals_, unit=False)
    model = KMeans(client=engine.client, n_clusters=k, random_state=seed, max_iter=max(n_iter, 1))
    model.fit(x)
    # Not ``labels_``: in cuML 25.12 it is one CuPy array of the workers' labels, worker after
    # worker, out of row order when a worker holds partitions that are not neighbours.
    # ``predict`` maps over the partitions in order (one more assignment pass on the GPUs).
    labels = cp.asnumpy(model.predict(x).compute()).astype(np.int64)
    centroids = cp.asnumpy(model.cluster_centers_).astype(np.float32)
    return KMeansResult(centroids, labels, float(model.inertia_))
