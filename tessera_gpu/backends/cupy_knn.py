"""Exact k-nearest-neighbour search for the CuPy tier, written once against ``dev.xp``.

``dev`` is a :class:`~.cupy_device.CupyDevice` (cupy on a GPU) or a
:class:`~.standin.NumpyDevice` (numpy, for tests and rehearsals).  For a block of queries:
one GEMM ``Q @ X.T`` (``dev.matmul``: cuBLAS, TF32 when ``CUPY_TF32=1``), then ``dev.topk``
keeps each row's ``k + MARGIN`` smallest ``|q|^2 + |x|^2 - 2 q.x`` without sorting the block.
The candidates are re-ranked with exact fp32 differences (elementwise products and sums, never
a contraction, which cuBLAS could run in TF32), so the answer and its distances are exact
unless a true neighbour is pushed out of the candidate list by GEMM rounding, which needs
``MARGIN`` near-ties.  Equal distances are ordered by row number.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MARGIN", "exact_search", "sq_norms", "topk_candidates"]

MARGIN = 16  # extra candidates re-ranked exactly
RERANK_BYTES = 256 << 20  # gathered candidate rows per re-rank block


def sq_norms(dev: Any, a: Any) -> Any:
    """``|row|^2`` of every row, in exact float32 (multiply, then sum; no cuBLAS)."""
    xp = dev.xp
    out = xp.empty(len(a), dtype=xp.float32)
    step = max(1, RERANK_BYTES // (4 * max(1, a.shape[1])))
    for start in range(0, len(a), step):
        block = a[start : start + step]
        out[start : start + step] = (block * block).sum(axis=1)
    return out


def topk_candidates(dev: Any, data: Any, queries: Any, kk: int) -> Any:
    """Indices ``(q, kk)`` of the ``kk`` rows of ``data`` with the smallest GEMM distances.

    Beyond the kernel's longest list (``dev.max_topk``, 256) -- a wide search, as when a
    diversity sample's centroids compete for the same episodes and it widens its candidates
    8, 32, 128, 512, ... -- each block is partitioned instead (``argpartition``: a sort on a
    GPU; slower, rare, and exact the same, since the candidates are re-ranked anyway)."""
    xp = dev.xp
    dn = sq_norms(dev, data)
    qn = dn if queries is data else sq_norms(dev, queries)  # a graph asks about its own rows
    step = max(1, min(len(queries), dev.block_bytes // (4 * max(1, len(data)))))
    out = xp.empty((len(queries), kk), dtype=xp.int64)
    for start in range(0, len(queries), step):
        gram = dev.matmul(queries[start : start + step], data.T)
        if kk > dev.max_topk:
            d2 = (qn[start : start + step, None] + dn[None, :]) - 2 * gram
            idx = xp.argpartition(d2, kk - 1, axis=1)[:, :kk]
        else:
            _, idx = dev.topk(gram, qn[start : start + step], dn, kk)
        out[start : start + step] = idx
    return out


def _exact_rerank(dev: Any, data: Any, queries: Any, cand: Any, k: int) -> tuple[Any, Any]:
    """Exact distances to the candidates, sorted (ties by row number); the first ``k``."""
    xp = dev.xp
    cand = xp.sort(cand, axis=1)  # row order first, so the stable sort below breaks ties by it
    dist = xp.empty(cand.shape, dtype=xp.float32)
    step = max(1, RERANK_BYTES // (4 * cand.shape[1] * data.shape[1]))
    for start in range(0, len(queries), step):
        diff = data[cand[start : start + step]] - queries[start : start + step, None, :]
        dist[start : start + step] = xp.sqrt((diff * diff).sum(axis=2))
    order = xp.argsort(dist, axis=1, kind="stable")[:, :k]
    return xp.take_along_axis(cand, order, 1), xp.take_along_axis(dist, order, 1)


def exact_search(dev: Any, data: Any, queries: Any, k: int) -> tuple[Any, Any]:
    """``(indices, distances)`` of the ``k`` nearest rows of ``data`` per query, on ``dev``."""
    k = min(k, len(data))
    kk = min(len(data), k + MARGIN)
    cand = topk_candidates(dev, data, queries, kk)
    return _exact_rerank(dev, data, queries, cand, k)
