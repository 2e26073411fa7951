"""Compute backends: where the embeddings live and how kNN, K-means and distances run.

``get_backend(mode)`` picks one, once:

==========  ===============================================================================
``auto``    cuML if it imports and a GPU is present, else CuPy if a GPU is present, else CPU
``gpu``     a GPU backend (cuML, else CuPy), or :class:`~tessera_gpu.errors.Unavailable`
``cpu``     numpy + BLAS + numba (and faiss-free: see :mod:`.cpu_knn`)
``None``    the ``TESSERA_DEVICE`` environment variable, default ``auto``
==========  ===============================================================================

cupy and cuml are imported only inside :mod:`.cupy_backend` / :mod:`.cuml_backend`, and only
when a GPU is asked for or probed, so a CPU install never needs them.

Every backend offers the same surface (:class:`Backend`): ``to_device`` once, then ``take``,
``knn``, ``neighbors``, ``kmeans``, ``nearest_rows`` and ``nearest_sample_distances`` on the
device array.  Row indices going in and out are always *global* row numbers of the
embeddings (``int64`` numpy), whatever subset ``rows`` selects.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from tessera_gpu.errors import InvalidRequest, Unavailable

__all__ = [
    "COARSE_ABOVE",
    "MODES",
    "NAMES",
    "Backend",
    "Neighbors",
    "get_backend",
    "gpu_status",
    "make_backend",
]

MODES = ("auto", "gpu", "cpu")
NAMES = ("cpu", "cupy", "cuml")
ENV_VAR = "TESSERA_DEVICE"
# Above this many rows, ``neighbors`` also returns a coarse cell partition of the rows, which
# the projection uses for a cheap spectral initialisation and a cache-friendly row order.
COARSE_ABOVE = 25_000


@dataclass(frozen=True)
class Neighbors:
    """A kNN table: row ``i`` lists its ``k`` nearest rows (itself first), nearest first.

    ``method`` says how it was built (e.g. ``"exact"``, ``"pca64+cell-probe(447x8)"``);
    ``cells`` is a coarse partition of the rows found on the way (or None), which the
    projection reuses for its initialisation and memory layout.
    """

    indices: np.ndarray
    distances: np.ndarray
    method: str
    cells: np.ndarray | None = None


@runtime_checkable
class Backend(Protocol):
    """What projection, clustering and sampling need from a compute backend."""

    name: str
    device: str

    def describe(self) -> dict[str, Any]: ...

    def to_device(self, embeddings: np.ndarray) -> Any: ...

    def take(self, x: Any, rows: np.ndarray) -> Any: ...

    def to_host(self, x: Any) -> np.ndarray: ...

    def n_rows(self, x: Any) -> int: ...

    def knn(
        self, x: Any, k: int, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def neighbors(self, x: Any, k: int, *, seed: int = 0) -> Neighbors: ...

    def kmeans(
        self, x: Any, k: int, *, rows: np.ndarray | None, seed: int, n_iter: int
    ) -> tuple[np.ndarray, np.ndarray, float]: ...

    def nearest_rows(
        self, x: Any, points: np.ndarray, count: int, *, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def nearest_sample_distances(
        self, x: Any, query_rows: np.ndarray, sample_rows: np.ndarray
    ) -> np.ndarray: ...


@functools.lru_cache(maxsize=1)
def gpu_status() -> tuple[str | None, str]:
    """``(best GPU backend name or None, reason)``: probes cuML, then CuPy, once per process."""
    try:
        from tessera_gpu.backends import cupy_backend
    except ModuleNotFoundError:
        return None, "CuPy is not installed (pip install 'tessera-gpu[gpu]')"
    except Exception as exc:  # CUDA libraries missing or broken at import
        return None, f"CuPy failed to load ({type(exc).__name__}: {exc})"
    present, reason = cupy_backend.gpu_present()
    if not present:
        return None, reason
    from tessera_gpu.backends import cuml_backend

    return ("cuml" if cuml_backend.cuml_importable() else "cupy"), reason


def make_backend(name: str) -> Backend:
    """The backend called ``name`` ("cpu" | "cupy" | "cuml"), without the auto fallbacks.

    Raises :class:`Unavailable` when that backend cannot run here.
    """
    if name not in NAMES:
        raise InvalidRequest(f"unknown backend {name!r}: use one of {', '.join(NAMES)}")
    if name != "cpu":
        gpu, reason = gpu_status()
        if gpu is None:
            raise Unavailable(f"the {name} backend needs a GPU: {reason}", code="gpu_unavailable")
        if name == "cuml" and gpu != "cuml":
            raise Unavailable(
                "the cuml backend needs RAPIDS cuML, which does not import here",
                code="gpu_unavailable",
            )
    return _make(name)


def _make(name: str) -> Backend:
    if name == "cpu":
        from tessera_gpu.backends.cpu import CpuBackend

        return CpuBackend()
    if name == "cuml":
        from tessera_gpu.backends.cuml_backend import CumlBackend

        return CumlBackend()
    from tessera_gpu.backends.cupy_backend import CupyBackend

    return CupyBackend()


def get_backend(mode: str | None = "auto") -> Backend:
    """The backend for ``mode`` (``auto`` | ``gpu`` | ``cpu``; None reads ``TESSERA_DEVICE``).

    Raises :class:`InvalidRequest` for an unknown mode and :class:`Unavailable` when ``gpu``
    is asked for on a machine without a usable GPU.
    """
    if mode is None:
        mode = os.environ.get(ENV_VAR) or "auto"
    mode = str(mode).strip().lower()
    if mode not in MODES:
        raise InvalidRequest(
            f"unknown device {mode!r}: use one of {', '.join(MODES)}", code="bad_device"
        )
    if mode == "cpu":
        return _make("cpu")
    gpu, reason = gpu_status()
    if gpu is not None:
        return _make(gpu)
    if mode == "gpu":
        raise Unavailable(
            f"GPU asked for but not available: {reason}. Use --device cpu (or auto) instead",
            code="gpu_unavailable",
        )
    return _make("cpu")
