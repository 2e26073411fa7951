"""The numpy stand-in for CuPy: the CuPy tier's own code, run on the CPU for tests and rehearsals.

Why an array namespace and not a fake ``cupy`` package: the CuPy tier's kernels
(:mod:`.cupy_knn`, :mod:`.cupy_kmeans`) are written once against ``dev.xp``, the way
scikit-learn's array-API support writes them against ``get_namespace(...)``.  ``xp`` is
``cupy`` on a GPU and ``numpy`` here, and the functions the two share (``argsort``,
``cumsum``, ``searchsorted``, ``take_along_axis``, ``linalg.eigh``, ...) behave alike.  What
has no array-API equivalent lives on the device object instead, so that exactly those few
pieces differ between the two:

* ``topk``: on a GPU a warp-per-row CUDA kernel (:mod:`.cupy_device`); here
  :func:`topk_emulated`, which runs the same algorithm -- a strided per-lane sorted list,
  then a 32-way merge that breaks ties by lane -- step for step in numpy, with the same
  float32 arithmetic (the kernel is compiled with ``--fmad=false``, and CuPy adds
  ``-ftz=true``: subnormals read and written as zero, :func:`flush_subnormals`), so both give
  the same bits and the emulation can be tested against a full sort, ties included.
* ``matmul``: cuBLAS on a GPU.  With ``CUPY_TF32=1`` cuBLAS rounds float32 inputs to TF32
  (10-bit mantissa); the stand-in rounds them the same way, so the claim that distances and
  inertia stay exact fp32 under TF32 is tested on the CPU too.

A fake ``cupy`` package would have to imitate CuPy's whole surface and would still leave the
kernel's algorithm untested.  ``TESSERA_GPU_STANDIN=numpy`` selects this device; it is read
when a backend is chosen (:func:`tessera_gpu.backends.get_backend`), never at import.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["LANES", "NumpyDevice", "flush_subnormals", "round_to_tf32", "topk_emulated"]

LANES = 32  # threads of a CUDA warp: the kernel gives each lane every 32nd column


def topk_emulated(
    gram: np.ndarray, qn: np.ndarray, dn: np.ndarray, kk: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the ``kk`` smallest ``qn[r] + dn[c] - 2 gram[r, c]`` and their columns.

    The top-k kernel's algorithm in numpy.  Lane ``l`` of the row's warp visits columns
    ``l, l + 32, ...`` and keeps the first ``kk`` of them in the stable order of their values
    (a strict ``<`` admits a value, so an equal later column never displaces an earlier one);
    the warp then merges its 32 lists, taking the smallest head each round and the lowest
    lane among equal heads.  Equal values therefore come out ordered by ``(lane, column)``.
    Slots a lane never fills hold ``inf`` and column ``-1``, as in the kernel.
    """
    rows, cols = gram.shape
    twice = flush_subnormals(np.float32(2.0) * flush_subnormals(gram))  # the kernel's steps
    near = flush_subnormals(flush_subnormals(qn)[:, None] + flush_subnormals(dn)[None, :])
    d2 = flush_subnormals(near - twice)
    d2[np.isnan(d2)] = np.inf  # the kernel's `d < worst` never admits a NaN
    width = -(-cols // LANES) * LANES
    padded = np.full((rows, width), np.inf, dtype=np.float32)
    padded[:, :cols] = d2
    per_lane = padded.reshape(rows, width // LANES, LANES).transpose(0, 2, 1)  # (r, lane, j)
    take = min(kk, per_lane.shape[2])
    order = _stable_smallest(per_lane, take)
    lane_d = np.take_along_axis(per_lane, order, 2)
    lane_c = order * LANES + np.arange(LANES)[None, :, None]
    lane_c = np.where(lane_c < cols, lane_c, -1)
    if take < kk:  # a lane with fewer than kk columns: the kernel's unfilled slots
        fill = ((0, 0), (0, 0), (0, kk - take))
        lane_d = np.pad(lane_d, fill, constant_values=np.inf)
        lane_c = np.pad(lane_c, fill, constant_values=-1)
    flat_d = lane_d.reshape(rows, LANES * kk)  # lane-major: stable order = ties by lane
    merged = _stable_smallest(flat_d, kk)
    out_d = np.take_along_axis(flat_d, merged, 1)
    out_i = np.take_along_axis(lane_c.reshape(rows, LANES * kk), merged, 1).astype(np.int64)
    out_i[~np.isfinite(out_d)] = -1
    return out_d, out_i


def flush_subnormals(a: np.ndarray) -> np.ndarray:
    """float32 values with every subnormal replaced by a zero of its sign: what a kernel
    compiled with ``-ftz=true`` (CuPy 14 adds it to every compile, after our own options,
    so it wins) reads for a subnormal operand and writes for a subnormal result."""
    a = np.asarray(a, dtype=np.float32)
    return np.where(np.abs(a) < np.finfo(np.float32).tiny, np.copysign(np.float32(0), a), a)


def _stable_smallest(v: np.ndarray, kk: int) -> np.ndarray:
    """Positions of the ``kk`` smallest along the last axis, in the order of a stable sort
    (equal values by position) -- without sorting all of them."""
    m = v.shape[-1]
    if kk >= m:
        return np.argsort(v, axis=-1, kind="stable")
    kth = np.partition(v, kk - 1, axis=-1)[..., kk - 1 : kk]
    below, tied = v < kth, v == kth
    need = kk - below.sum(axis=-1, keepdims=True)
    keep = below | tied
    if (tied.sum(axis=-1, keepdims=True) > need).any():  # more ties than places: first ones
        keep = below | (tied & (np.cumsum(tied, axis=-1, dtype=np.int32) <= need))
    pos = np.nonzero(keep)[-1].reshape(*v.shape[:-1], kk)  # exactly kk per row, ascending
    order = np.argsort(np.take_along_axis(v, pos, -1), axis=-1, kind="stable")
    return np.take_along_axis(pos, order, -1)


def round_to_tf32(a: np.ndarray) -> np.ndarray:
    """float32 values rounded to TF32's 10-bit mantissa (round to nearest), as cuBLAS does."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


class NumpyDevice:
    """The CuPy tier's device on the CPU: ``xp`` is numpy.  For tests and rehearsals only."""

    name = "numpy"
    standin: str | None = "numpy"
    max_topk = 256  # as the GPU kernel's (KMAX_STEPS[-1]): wider searches take the same path
    # Smaller GEMM blocks than on a GPU: the host has far less memory to spare, and tests
    # then cross block boundaries on small data.
    block_bytes = 64 << 20

    def __init__(self) -> None:
        self.xp: Any = np

    @property
    def label(self) -> str:
        return "numpy stand-in for CuPy (CPU; for tests and rehearsals only)"

    def describe(self) -> dict[str, Any]:
        return {"standin": "numpy", "numpy": np.__version__}

    def asarray(self, a: np.ndarray) -> np.ndarray:
        return np.asarray(a)

    def to_host(self, a: Any) -> np.ndarray:
        return np.asarray(a)

    def synchronize(self) -> None:
        """Nothing to wait for: numpy returns when it is done."""

    def matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``a @ b`` in float32; inputs rounded to TF32 when ``CUPY_TF32=1``, like cuBLAS."""
        if os.environ.get("CUPY_TF32") == "1" and a.dtype == np.float32 == b.dtype:
            return round_to_tf32(a) @ round_to_tf32(b)
        return a @ b

    def topk(
        self, gram: np.ndarray, qn: np.ndarray, dn: np.ndarray, kk: int
    ) -> tuple[np.ndarray, np.ndarray]:
        return topk_emulated(gram, qn, dn, kk)
