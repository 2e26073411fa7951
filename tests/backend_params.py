"""Backend parametrisation for the compute tests: ``cpu`` always, GPU ones marked ``gpu``.

GPU parameters skip, with the reason, where no usable GPU (or no cuML) is present, so the
same assertions run unchanged on a GPU machine.
"""

from __future__ import annotations

import numpy as np
import pytest

from tessera_gpu.backends import Backend, gpu_status, make_backend

BACKEND_PARAMS = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cupy", id="cupy", marks=pytest.mark.gpu),
    pytest.param("cuml", id="cuml", marks=pytest.mark.gpu),
]


def backend_for(name: str) -> Backend:
    """The named backend, or a skip that says why it cannot run here."""
    if name != "cpu":
        best, reason = gpu_status()
        if best is None:
            pytest.skip(f"no usable GPU: {reason}")
        if name == "cuml" and best != "cuml":
            pytest.skip("RAPIDS cuML is not installed")
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
