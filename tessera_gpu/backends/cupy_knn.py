"""Exact k-nearest-neighbour search on the GPU with CuPy (imported only by GPU backends).

For a block of queries: one cuBLAS GEMM ``Q @ X.T`` (fp32 accumulation), then a warp-per-row
CUDA kernel keeps each row's ``k + margin`` smallest ``|q|^2 + |x|^2 - 2 q.x`` -- one strided
pass over the GEMM output, a sorted list per lane, and a 32-way warp merge.  The candidates
are then re-ranked with exact fp32 differences, so the answer and its distances are exact
even when cuBLAS runs the GEMM in TF32 (``CUPY_TF32=1``) -- unless a true neighbour is
pushed out of the candidate list by rounding, which needs ``margin`` near-ties.
"""

from __future__ import annotations

import functools

import cupy as cp
import numpy as np

__all__ = ["exact_search", "topk_candidates"]

KMAX = 32  # longest candidate list the warp kernel keeps per row
MARGIN = 16  # extra candidates re-ranked exactly
GRAM_BYTES = 1 << 30  # GEMM output per query block

_TOPK_SOURCE = r"""
extern "C" __global__ void topk_rows(
    const float* __restrict__ gram, const float* __restrict__ qn, const float* __restrict__ dn,
    const int n_rows, const int n_cols, const int kk,
    float* __restrict__ out_d, long long* __restrict__ out_i)
{
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= n_rows) return;  // uniform per warp: shuffles below see all 32 lanes
    float bd[KMAX];
    int bi[KMAX];
    for (int j = 0; j < KMAX; ++j) { bd[j] = __int_as_float(0x7f800000); bi[j] = -1; }
    const float q = qn[row];
    const float* g = gram + (size_t)row * n_cols;
    for (int c = lane; c < n_cols; c += 32) {
        const float d = q + dn[c] - 2.0f * g[c];
        if (d < bd[kk - 1]) {
            int p = kk - 1;
            while (p > 0 && bd[p - 1] > d) { bd[p] = bd[p - 1]; bi[p] = bi[p - 1]; --p; }
            bd[p] = d;
            bi[p] = c;
        }
    }
    int head = 0;
    for (int r = 0; r < kk; ++r) {
        float v = head < kk ? bd[head] : __int_as_float(0x7f800000);
        int who = lane;
        int col = head < kk ? bi[head] : -1;
        for (int off = 16; off > 0; off >>= 1) {
            const float ov = __shfl_down_sync(0xffffffffu, v, off);
            const int ow = __shfl_down_sync(0xffffffffu, who, off);
            if (ov < v || (ov == v && ow < who)) { v = ov; who = ow; }
        }
        who = __shfl_sync(0xffffffffu, who, 0);
        v = __shfl_sync(0xffffffffu, v, 0);
        col = __shfl_sync(0xffffffffu, col, who);
        if (lane == 0) {
            out_d[(size_t)row * kk + r] = v;
            out_i[(size_t)row * kk + r] = col;
        }
        if (lane == who) ++head;
    }
}
"""


@functools.lru_cache(maxsize=1)
def _kernel() -> cp.RawKernel:
    return cp.RawKernel(_TOPK_SOURCE, "topk_rows", options=(f"-DKMAX={KMAX}",))


def _sq_norms(a: cp.ndarray) -> cp.ndarray:
    return cp.einsum("ij,ij->i", a, a)


def _block_topk(gram: cp.ndarray, qn: cp.ndarray, dn: cp.ndarray, kk: int):  # type: ignore[no-untyped-def]
    """Per row of ``gram``: the ``kk`` smallest squared distances and their columns."""
    rows, cols = gram.shape
    if kk <= KMAX:
        out_d = cp.empty((rows, kk), dtype=cp.float32)
        out_i = cp.empty((rows, kk), dtype=cp.int64)
        warps = 4
        grid = ((rows + warps - 1) // warps,)
        _kernel()(
            grid,
            (32 * warps,),
            (gram, qn, dn, np.int32(rows), np.int32(cols), np.int32(kk), out_d, out_i),
        )
        return out_d, out_i
    d2 = qn[:, None] + dn[None, :] - 2.0 * gram  # rare path (kk > KMAX): sort the block
    idx = cp.argsort(d2, axis=1)[:, :kk]
    return cp.take_along_axis(d2, idx, 1), idx


def topk_candidates(data: cp.ndarray, queries: cp.ndarray, kk: int) -> cp.ndarray:
    """Indices ``(q, kk)`` of the ``kk`` rows of ``data`` with the smallest GEMM distances."""
    dn = _sq_norms(data)
    qn = _sq_norms(queries)
    step = max(1, min(len(queries), GRAM_BYTES // (4 * max(1, len(data)))))
    out = cp.empty((len(queries), kk), dtype=cp.int64)
    for start in range(0, len(queries), step):
        q = queries[start : start + step]
        gram = q @ data.T
        _, idx = _block_topk(gram, qn[start : start + step], dn, kk)
        out[start : start + step] = idx
    return out


def _exact_rerank(data: cp.ndarray, queries: cp.ndarray, cand: cp.ndarray, k: int):  # type: ignore[no-untyped-def]
    """Exact distances to the candidates, sorted; the first ``k`` per row."""
    dist = cp.empty(cand.shape, dtype=cp.float32)
    step = max(1, (256 << 20) // (4 * cand.shape[1] * data.shape[1]))
    for start in range(0, len(queries), step):
        c = cand[start : start + step]
        diff = data[c] - queries[start : start + step, None, :]
        dist[start : start + step] = cp.sqrt(cp.einsum("ijk,ijk->ij", diff, diff))
    order = cp.argsort(dist, axis=1)[:, :k]
    return cp.take_along_axis(cand, order, 1), cp.take_along_axis(dist, order, 1)


def exact_search(data: cp.ndarray, queries: cp.ndarray, k: int) -> tuple[cp.ndarray, cp.ndarray]:
    """``(indices, distances)`` of the ``k`` nearest rows of ``data`` per query, on device."""
    k = min(k, len(data))
    kk = min(len(data), k + MARGIN)
    cand = topk_candidates(data, queries, kk)
    return _exact_rerank(data, queries, cand, k)
