"""Checks shared by every backend: embeddings handed to ``to_device`` and row-index arrays."""

from __future__ import annotations

from typing import Any

import numpy as np

from tessera_gpu.errors import InvalidRequest

__all__ = ["as_rows", "check_embeddings", "self_first"]


def check_embeddings(embeddings: Any) -> None:
    """Refuse anything but a non-empty 2-D float array (the Dataset validated the rest)."""
    if embeddings is None:
        raise InvalidRequest("this dataset has no embeddings (metadata-only mode)")
    shape = getattr(embeddings, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise InvalidRequest(f"embeddings must be a non-empty (N, D) array: got shape {shape}")
    if np.dtype(embeddings.dtype).kind != "f":
        raise InvalidRequest(f"embeddings must be floating point: got {embeddings.dtype}")


def as_rows(rows: Any, n_total: int) -> np.ndarray:
    """``rows`` as an int64 array of valid row numbers of an ``n_total``-row array.

    Raises :class:`InvalidRequest` for a non-integer array or an index out of range.
    """
    arr = np.asarray(rows)
    if arr.ndim != 1:
        raise InvalidRequest(f"row indices must be a 1-D array: got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise InvalidRequest(f"row indices must be integers: got {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= n_total):
        bad = int(arr.min() if arr.min() < 0 else arr.max())
        raise InvalidRequest(f"row index {bad} out of range for {n_total:,} rows")
    return arr


def self_first(cand: np.ndarray) -> np.ndarray:
    """Each row's candidate list with the row itself in column 0 (duplicates may have pushed it
    elsewhere, or out)."""
    n, c = cand.shape
    rows = np.arange(n, dtype=np.int64)
    is_self = cand == rows[:, None]
    out = np.empty_like(cand)
    out[:, 0] = rows
    for i in np.flatnonzero(~is_self[:, 0] | (is_self.sum(axis=1) != 1)):
        others = [int(v) for v in cand[i] if v != i]
        out[i, 1:] = (others + [-1] * c)[: c - 1]
    fine = is_self[:, 0] & (is_self.sum(axis=1) == 1)
    out[fine, 1:] = cand[fine, 1:]
    return out
