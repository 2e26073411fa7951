"""The cuML backend: the CuPy backend, with RAPIDS ``cuml.UMAP`` and ``cuml.KMeans``.

cuml is imported lazily, inside the methods (and by :func:`cuml_importable`), never when
this module is imported; kNN and distance queries are inherited from the CuPy backend.

``cuml.UMAP`` gets the CPU tier's parameters: the same ``n_neighbors``, ``min_dist``,
``spread``, ``negative_sample_rate``, a spectral init, ``n_epochs`` resolved by
:meth:`ProjectionParams.epochs_for` (cuML's own default differs) and ``random_state`` = the
seed.  Its kNN graph is always built by brute force: cuML's ``nn_descent`` (its default
above 50k rows) is not deterministic even with a ``random_state`` (cuML warns so), and the
same seed must give the same map; brute force on a GPU costs one exact kNN, about what the
CuPy tier spends anyway.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import asdict
from typing import Any

import numpy as np

from tessera_gpu.backends.cupy_backend import CupyBackend

__all__ = ["KNN_BUILD", "CumlBackend", "cuml_importable"]

KNN_BUILD = "brute_force_knn"


def cuml_importable() -> bool:
    """True when RAPIDS cuML is installed and imports."""
    if importlib.util.find_spec("cuml") is None:
        return False
    try:
        import cuml  # noqa: F401
    except Warning:  # pytest turns warnings into errors: a bug to see, not a missing cuML
        raise
    except Exception:  # a broken RAPIDS install is as good as none
        return False
    return True


class CumlBackend(CupyBackend):
    """GPU backend on RAPIDS cuML (UMAP, KMeans) plus CuPy for the rest."""

    name = "cuml"

    def describe(self) -> dict[str, Any]:
        import cuml

        return {**super().describe(), "cuml": cuml.__version__}

    def umap(
        self, x: Any, *, params: Any, progress: Any = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """``cuml.UMAP`` on the device array, with the CPU tier's parameters (module doc)."""
        import cuml

        n = len(x)
        epochs = params.epochs_for(n)
        if progress is not None:
            progress("knn", 0.0)
        start = time.perf_counter()
        model = cuml.UMAP(
            n_neighbors=min(params.n_neighbors, n - 1),
            n_components=2,
            metric=params.metric,
            min_dist=params.min_dist,
            spread=params.spread,
            n_epochs=epochs,
            negative_sample_rate=params.negative_sample_rate,
            init="spectral",
            random_state=params.seed,
            build_algo=KNN_BUILD,
        )
        coords = self.dev.to_host(model.fit_transform(x)).astype(np.float32)
        elapsed = round(time.perf_counter() - start, 3)
        if progress is not None:
            progress("done", 1.0)
        info = {
            "backend": self.name,
            "device": self.device,
            "algorithm": "cuml.UMAP",
            "knn": KNN_BUILD,
            "init": "spectral",
            "n": n,
            "n_epochs": epochs,
            "params": asdict(params),
            "cuml": cuml.__version__,
            "timings": {"umap": elapsed, "total": elapsed},
        }
        return coords, info

    def kmeans(
        self, x: Any, k: int, *, rows: np.ndarray | None, seed: int, n_iter: int
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
        host = self.dev.to_host
        return (
            host(model.cluster_centers_).astype(np.float32),
            host(model.labels_).astype(np.int64),
            float(model.inertia_),
        )
