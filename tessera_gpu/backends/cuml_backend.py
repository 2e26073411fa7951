"""The cuML backend: the CuPy backend, with RAPIDS ``cuml.UMAP`` and ``cuml.KMeans``.

cuml is imported lazily, inside the methods (and by :func:`cuml_importable`), never when
this module is imported; kNN and distance queries are inherited from the CuPy backend.
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any

import cupy as cp
import numpy as np

from tessera_gpu.backends.cupy_backend import CupyBackend

__all__ = ["NN_DESCENT_ABOVE", "CumlBackend", "cuml_importable"]

NN_DESCENT_ABOVE = 50_000  # rows; below, cuML builds the kNN graph by brute force


def cuml_importable() -> bool:
    """True when RAPIDS cuML is installed and imports."""
    if importlib.util.find_spec("cuml") is None:
        return False
    try:
        import cuml  # noqa: F401
    except Exception:  # a broken RAPIDS install is as good as none
        return False
    return True


def _host(a: Any) -> np.ndarray:
    return cp.asnumpy(cp.asarray(a))


class CumlBackend(CupyBackend):
    """GPU backend on RAPIDS cuML (UMAP, KMeans) plus CuPy for the rest."""

    name = "cuml"

    def describe(self) -> dict[str, Any]:
        import cuml

        return {**super().describe(), "cuml": cuml.__version__}

    def umap(
        self, x: cp.ndarray, *, params: Any, progress: Any = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """``cuml.UMAP`` on the device array; the kNN build algorithm is chosen and recorded."""
        import cuml

        n = len(x)
        build_algo = "nn_descent" if n > NN_DESCENT_ABOVE else "brute_force_knn"
        if progress is not None:
            progress("knn", 0.0)
        start = time.perf_counter()
        model = cuml.UMAP(
            n_neighbors=min(params.n_neighbors, n - 1),
            n_components=2,
            min_dist=params.min_dist,
            spread=params.spread,
            n_epochs=params.n_epochs,
            negative_sample_rate=params.negative_sample_rate,
            init="spectral",
            random_state=params.seed,
            build_algo=build_algo,
        )
        coords = _host(model.fit_transform(x)).astype(np.float32)
        elapsed = round(time.perf_counter() - start, 3)
        if progress is not None:
            progress("done", 1.0)
        info = {
            "backend": self.name,
            "device": self.device,
            "algorithm": "cuml.UMAP",
            "knn": build_algo,
            "n": n,
            "cuml": cuml.__version__,
            "timings": {"umap": elapsed, "total": elapsed},
        }
        return coords, info

    def kmeans(
        self, x: cp.ndarray, k: int, *, rows: np.ndarray | None, seed: int, n_iter: int
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """``cuml.KMeans`` (k-means|| seeding, one init) over ``rows``."""
        import cuml

        data, _ = self._subset(x, rows)
        model = cuml.KMeans(
            n_clusters=k,
            max_iter=max(1, n_iter),
            init="scalable-k-means++",
            n_init=1,
            random_state=seed,
        )
        model.fit(data)
        return (
            _host(model.cluster_centers_).astype(np.float32),
            _host(model.labels_).astype(np.int64),
            float(model.inertia_),
        )
