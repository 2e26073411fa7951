"""PCA for the CPU backend: a randomized SVD fitted on a row sample, applied with one GEMM.

Fitting on a fixed-size sample keeps the cost independent of N; applying it as
``X @ W - mean @ W`` never makes a centred copy of the (possibly multi-GB) embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

__all__ = ["Pca", "fit_pca"]


@dataclass(frozen=True)
class Pca:
    """A fitted projection: ``mean (d,)``, ``basis (d, c)`` and the variance fraction kept."""

    mean: np.ndarray
    basis: np.ndarray
    explained: float

    def apply(self, data: np.ndarray) -> np.ndarray:
        """``(data - mean) @ basis`` as float32, without a centred copy of ``data``."""
        reduced = data @ self.basis
        reduced -= self.mean @ self.basis
        return np.ascontiguousarray(reduced, dtype=np.float32)


def _orth(a: np.ndarray) -> np.ndarray:
    q, _ = scipy.linalg.qr(a, mode="economic", check_finite=False)
    return q


def _basis(sample: np.ndarray, n_components: int, *, seed: int, n_power: int) -> np.ndarray:
    """Top right-singular vectors ``(d, c)`` of the centred ``sample`` (Halko et al. 2011)."""
    rng = np.random.default_rng(seed)
    width = min(n_components + 10, *sample.shape)
    omega = rng.standard_normal((sample.shape[1], width)).astype(np.float32)
    q = _orth(sample @ omega)
    for _ in range(n_power):
        q = _orth(sample @ _orth(sample.T @ q))
    _, _, vt = np.linalg.svd(q.T @ sample, full_matrices=False)
    return np.ascontiguousarray(vt[:n_components].T, dtype=np.float32)


def fit_pca(
    data: np.ndarray,
    n_components: int,
    *,
    seed: int = 0,
    sample_size: int = 10_000,
    n_power: int = 2,
) -> Pca:
    """Fit the top ``n_components`` principal axes on at most ``sample_size`` seeded rows."""
    n, d = data.shape
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, min(n, sample_size), replace=False))
    sample = data[rows].astype(np.float32, copy=True)
    mean = sample.mean(axis=0, dtype=np.float64).astype(np.float32)
    sample -= mean
    basis = _basis(sample, min(n_components, d, len(rows)), seed=seed, n_power=n_power)
    total = float(np.einsum("ij,ij->", sample, sample, dtype=np.float64))
    kept = float(np.square(sample @ basis, dtype=np.float64).sum())
    return Pca(mean, basis, kept / total if total > 0 else 1.0)
