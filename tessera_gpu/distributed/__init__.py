"""Scale-out on Dask: ``--dask ADDRESS`` hands the embedding-space work to a cluster.

The only package that imports dask (``distributed``, and on GPU workers ``dask_cuda`` and
``cuml.dask``), lazily: a CPU install without ``--dask`` never needs them.

* :mod:`.engine` -- :class:`~.engine.DaskEngine`, what the core calls, and the data flow;
* :mod:`.refs` -- shard references and the checked reads a worker makes of them;
* :mod:`.knn` -- the kNN graph of every row (cells, groups of cells, exact re-rank);
* :mod:`.kmeans` -- Lloyd's K-means and the diversity sample, partition-local;
* :mod:`.landmarks` -- the map: landmarks fitted on one worker, the rest placed on all;
* :mod:`.rapids` -- the ``cuml.dask`` branch for GPU workers with RAPIDS.
"""

from tessera_gpu.distributed.engine import DaskEngine

__all__ = ["DaskEngine"]
