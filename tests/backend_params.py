"""Backend parametrisation for the compute tests: ``cpu``, ``cupy`` and ``cuml``.

* ``cupy`` (marked ``gpu``) runs on a real GPU when one passes the probe, and otherwise on the
  numpy stand-in (:mod:`tessera_gpu.backends.standin`), so CI runs the CuPy tier's code too.
  With ``TESSERA_REQUIRE_GPU=1`` and no stand-in asked for, a missing GPU fails the test
  instead: that is how ``benchmarks/gpu_check.sh`` makes sure it measured a GPU.
* ``cuml`` (marked ``gpu`` and ``cuml``) skips, with the reason, where RAPIDS cuML does not
  run; the stand-in covers the CuPy tier only.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from tessera_gpu.backends import Backend, gpu_probe, make_backend, standin_name

BACKEND_PARAMS = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cupy", id="cupy", marks=pytest.mark.gpu),
    pytest.param("cuml", id="cuml", marks=[pytest.mark.gpu, pytest.mark.cuml]),
]


def require_gpu() -> bool:
    """``TESSERA_REQUIRE_GPU=1``: a GPU test that would skip (or fall back) fails."""
    return os.environ.get("TESSERA_REQUIRE_GPU") == "1"


def cupy_backend() -> Backend:
    """The CuPy tier: on the GPU if one works (or the stand-in if asked for), else the
    stand-in -- unless a real GPU is required, then a failure naming the probe's cause."""
    from tessera_gpu.backends.cupy_backend import CupyBackend
    from tessera_gpu.backends.standin import NumpyDevice

    status = gpu_probe()
    if status.best is not None:
        return make_backend("cupy")
    if require_gpu() and standin_name() is None:
        pytest.fail(f"TESSERA_REQUIRE_GPU=1 but no usable GPU: {status.reason}")
    return CupyBackend(NumpyDevice())


def backend_for(name: str) -> Backend:
    """The named backend, or a skip that says why it cannot run here."""
    if name == "cupy":
        return cupy_backend()
    if name == "cuml":
        status = gpu_probe()
        if status.best != "cuml":
            pytest.skip(f"RAPIDS cuML does not run here ({status.reason})")
    return make_backend(name)


def clustered(
    n: int,
    dim: int,
    *,
    centres: int = 8,
    spread: float = 0.3,
    seed: int = 0,
    latent: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded ``(n, dim)`` float32 blobs around ``centres`` random centres, and their labels.

    With ``latent``, the blobs live in ``latent`` dimensions, are mapped to ``dim`` by a random
    matrix and get 1%-sized isotropic noise: wide data with real local structure (like
    embeddings), rather than isotropic noise in every direction.
    """
    rng = np.random.default_rng(seed)
    inner = dim if latent is None else latent
    middles = rng.normal(0.0, 3.0, size=(centres, inner))
    labels = rng.integers(0, centres, size=n)
    points = middles[labels] + rng.normal(0.0, spread, size=(n, inner))
    if latent is not None:
        points = points @ rng.normal(size=(latent, dim)) / np.sqrt(latent)
        points += rng.normal(0.0, 0.01 * spread, size=(n, dim))
    return points.astype(np.float32), labels


def brute_knn(x: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference kNN in float64: ``(indices, distances)`` sorted, ties by index."""
    q, x = queries.astype(np.float64), x.astype(np.float64)
    d2 = np.maximum((q * q).sum(1)[:, None] + (x * x).sum(1)[None, :] - 2.0 * q @ x.T, 0.0)
    idx = np.lexsort((np.broadcast_to(np.arange(len(x)), d2.shape), d2), axis=1)[:, :k]
    return idx, np.sqrt(np.take_along_axis(d2, idx, 1))
