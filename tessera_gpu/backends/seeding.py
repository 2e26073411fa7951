"""Greedy k-means++ seeding for the CuPy tier: one kernel launch per centre, and its emulation.

Each step picks one centre among ``n_trials`` candidates drawn by D^2 sampling: the one that
leaves the smallest potential (the sum over rows of the squared distance to the nearest centre),
as scikit-learn's greedy k-means++ does (``n_trials = 2 + ln k`` there; ``1`` is plain
k-means++).  :data:`SEED_SOURCE` does a whole step in one launch, all trials at once:

* every block (``THREADS`` threads, ``ROWS_PER_THREAD`` rows each, rows ``b*1024 + j*256 + t``)
  first lowers its rows' ``mind`` by the previous step's chosen candidate, then writes each
  row's distance to every candidate and sums ``min(mind, d_i)`` per trial: per thread in row
  order, then across the block by a Hillis-Steele scan, in double precision;
* the block that finishes last (an integer ticket; the floats are never added atomically)
  totals the blocks per trial in a fixed order -- chunks of blocks per thread, then a scan --,
  records the best trial's candidate, and draws the next step's candidates: target
  ``u * total``, then the chunk, the block, the thread (a warp scan of its 256 partial sums)
  and the row, each the first whose running sum passes what is left of the target.

Every sum runs in one order fixed by the data's shape, never by the thread schedule, so the
same seed gives the same centres run after run (CUB's device scan, which the previous seeding
used through ``cumsum``, does not promise that for floats).  All state lives in device memory,
so every launch has the same arguments: :func:`run_steps` captures ``GRAPH_STEPS`` of them as
one CUDA graph and replays it, one launch per 64 centres.

:func:`.standin.kmeanspp_step_emulated` is the same kernel, block after block, for the stand-in:
the same float32 operations (no fused multiply-add, subnormals flushed as ``-ftz=true`` does)
and the same double sums in the same order, so both pick the same rows bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from tessera_gpu.backends.launches import LaunchCounter

__all__ = [
    "BLOCK_ROWS",
    "GRAPH_STEPS",
    "MAX_TRIALS",
    "SEED_SOURCE",
    "THREADS",
    "default_trials",
    "run_steps",
    "seed_arguments",
]

THREADS = 256
ROWS_PER_THREAD = 4
BLOCK_ROWS = THREADS * ROWS_PER_THREAD
MAX_TRIALS = 16  # candidates per step the kernel holds (scikit-learn's 2 + ln k is 14 at 200k)
GRAPH_STEPS = 64  # seeding steps one CUDA graph replays: one launch per 64 centres


def default_trials(k: int) -> int:
    """scikit-learn's number of local trials per centre: ``2 + int(ln k)``."""
    return min(MAX_TRIALS, 2 + int(math.log(max(k, 1))))


SEED_SOURCE = r"""
#define THREADS 256
#define RPT 4
#define PER_LANE (THREADS / 32)
#define FULL 0xffffffffu

__device__ double block_scan(double v, double* sh, int t) {  // inclusive, Hillis-Steele
    sh[t] = v;
    __syncthreads();
    for (int off = 1; off < THREADS; off <<= 1) {
        const double add = t >= off ? sh[t - off] : 0.0;
        __syncthreads();
        if (t >= off) sh[t] += add;
        __syncthreads();
    }
    const double out = sh[t];
    __syncthreads();
    return out;
}

__device__ long long sample_row(double target, const double* chunk_incl, const double* chunk_sum,
    const double* part, const double* tpart, const float* mind, const float* dist, int best,
    int nb, int chunk, int n, int lane)
{
    int c1 = THREADS, pos = -1;  // the chunk of blocks
    for (int q = lane; q < THREADS; q += 32) {
        if (c1 == THREADS && chunk_incl[q] > target) c1 = q;
        if (chunk_sum[q] > 0.0) pos = q;
    }
    for (int off = 16; off > 0; off >>= 1) {
        c1 = min(c1, __shfl_xor_sync(FULL, c1, off));
        pos = max(pos, __shfl_xor_sync(FULL, pos, off));
    }
    if (c1 == THREADS) c1 = pos >= 0 ? pos : 0;
    double left = target - (c1 > 0 ? chunk_incl[c1 - 1] : 0.0);
    const int lo = c1 * chunk, hi = min(nb, lo + chunk);
    double acc = 0.0;  // the block, in the chunk's order
    int b1 = -1;
    pos = -1;
    for (int q = lo; q < hi; ++q) {
        const double p = __ldcg(part + (long long)q * TMAX + best);
        if (p > 0.0) pos = q;
        if (b1 < 0) { const double next = acc + p; if (next > left) b1 = q; else acc = next; }
    }
    if (b1 < 0) b1 = pos >= 0 ? pos : (hi > lo ? hi - 1 : nb - 1);
    left -= acc;
    const double* tp = tpart + ((long long)b1 * TMAX + best) * THREADS;
    double mine = 0.0;  // the thread: a warp scan of the block's thread sums, 8 per lane
    for (int e = 0; e < PER_LANE; ++e) mine += __ldcg(tp + lane * PER_LANE + e);
    double incl = mine;
    for (int off = 1; off < 32; off <<= 1) {
        const double o = __shfl_up_sync(FULL, incl, off);
        if (lane >= off) incl += o;
    }
    const unsigned hit = __ballot_sync(FULL, incl > left), any = __ballot_sync(FULL, mine > 0.0);
    const int l1 = hit ? __ffs(hit) - 1 : (any ? 31 - __clz(any) : 31);
    const double before = __shfl_sync(FULL, incl - mine, l1);
    left -= before;
    acc = 0.0;
    int e1 = -1;
    pos = -1;
    for (int e = 0; e < PER_LANE; ++e) {
        const double v = __ldcg(tp + l1 * PER_LANE + e);
        if (v > 0.0) pos = e;
        if (e1 < 0) { const double next = acc + v; if (next > left) e1 = e; else acc = next; }
    }
    if (e1 < 0) e1 = pos >= 0 ? pos : PER_LANE - 1;
    left -= acc;
    const int t1 = l1 * PER_LANE + e1;
    acc = 0.0;  // the row, among the thread's
    long long r1 = -1, rpos = -1, valid = -1;
    for (int j = 0; j < RPT; ++j) {
        const long long r = (long long)b1 * THREADS * RPT + j * THREADS + t1;
        if (r >= n) break;
        valid = r;
        const double w = (double)fminf(__ldcg(mind + r), __ldcg(dist + (long long)best * n + r));
        if (w > 0.0) rpos = r;
        if (r1 < 0) { const double next = acc + w; if (next > left) r1 = r; else acc = next; }
    }
    if (r1 < 0) r1 = rpos >= 0 ? rpos : (valid >= 0 ? valid : n - 1);
    return r1;
}

extern "C" __global__ void __launch_bounds__(THREADS, 2) kmeanspp_step(
    const float* __restrict__ xt, const int n, const int d, const int k, const int n_trials,
    float* __restrict__ mind, float* __restrict__ dist, double* __restrict__ tpart,
    double* __restrict__ part, const double* __restrict__ draws, long long* __restrict__ cand,
    long long* __restrict__ chosen, long long* __restrict__ state, unsigned* __restrict__ ticket)
{
    __shared__ double sh[THREADS], chunk_incl[THREADS], chunk_sum[THREADS], tot[TMAX];
    __shared__ int last, best_sh;
    const int t = threadIdx.x, b = blockIdx.x, nb = gridDim.x;
    const long long s = state[0];
    const int nc = (int)state[1], prev = (int)state[2];
    double tsum[TMAX];
    float acc[TMAX];
    int ci[TMAX];  // candidate rows (n < 2**31)
#pragma unroll
    for (int i = 0; i < TMAX; ++i) { tsum[i] = 0.0; ci[i] = i < nc ? (int)cand[i] : 0; }
    for (int j = 0; j < RPT; ++j) {
        const long long r = (long long)b * THREADS * RPT + j * THREADS + t;
        if (r >= n) break;
        float m = mind[r];
        if (s > 0) m = fminf(m, dist[(long long)prev * n + r]);
        mind[r] = m;
#pragma unroll
        for (int i = 0; i < TMAX; ++i) acc[i] = 0.0f;
        for (int u = 0; u < d; ++u) {
            const float v = xt[(long long)u * n + r];
#pragma unroll
            for (int i = 0; i < TMAX; ++i) {
                if (i < nc) {
                    const float df = v - xt[(long long)u * n + ci[i]];
                    acc[i] = acc[i] + df * df;
                }
            }
        }
#pragma unroll
        for (int i = 0; i < TMAX; ++i) {
            if (i < nc) {
                dist[(long long)i * n + r] = acc[i];
                tsum[i] += (double)fminf(m, acc[i]);
            }
        }
    }
#pragma unroll
    for (int i = 0; i < TMAX; ++i) {
        if (i < nc) {
            const double incl = block_scan(tsum[i], sh, t);
            tpart[((long long)b * TMAX + i) * THREADS + t] = tsum[i];
            if (t == THREADS - 1) part[(long long)b * TMAX + i] = incl;
        }
    }
    __threadfence();
    __syncthreads();
    if (t == 0) last = atomicAdd(ticket, 1u) == (unsigned)(nb - 1);
    __syncthreads();
    if (!last) return;
    const int chunk = (nb + THREADS - 1) / THREADS;
    for (int i = 0; i < nc; ++i) {  // each trial's potential: chunks of blocks, then a scan
        double cs = 0.0;
        for (int q = t * chunk; q < min(nb, (t + 1) * chunk); ++q)
            cs += __ldcg(part + (long long)q * TMAX + i);
        const double incl = block_scan(cs, sh, t);
        if (t == THREADS - 1) tot[i] = incl;
    }
    __syncthreads();
    if (t == 0) {
        int best = 0;
        for (int i = 1; i < nc; ++i) if (tot[i] < tot[best]) best = i;
        best_sh = best;
        chosen[s] = cand[best];
    }
    __syncthreads();
    const int best = best_sh;
    if (s + 1 < k) {  // the next step's candidates, by D^2 sampling of min(mind, dist[best])
        double cs = 0.0;
        for (int q = t * chunk; q < min(nb, (t + 1) * chunk); ++q)
            cs += __ldcg(part + (long long)q * TMAX + best);
        chunk_sum[t] = cs;
        chunk_incl[t] = block_scan(cs, sh, t);
        __syncthreads();
        const double total = chunk_incl[THREADS - 1];
        for (int i = t / 32; i < n_trials; i += THREADS / 32) {
            const double target = draws[(s + 1) * TMAX + i] * total;
            const long long r = total > 0.0 ? sample_row(target, chunk_incl, chunk_sum, part,
                tpart, mind, dist, best, nb, chunk, n, t % 32) : (long long)(n - 1);
            if (t % 32 == 0) cand[i] = r;
        }
    }
    __syncthreads();
    if (t == 0) {
        state[0] = s + 1;
        state[1] = n_trials;
        state[2] = best;
        *ticket = 0u;
    }
}
"""


def run_steps(
    k: int,
    launch: Callable[[], None],
    capture: Callable[[int], Callable[[], None] | None],
    counter: LaunchCounter,
) -> None:
    """The host's whole part: ``launch`` the step ``k`` times.  Every launch has the same
    arguments, so after the first (which compiles the kernel) ``capture(GRAPH_STEPS)`` may
    record that many as one CUDA graph, replayed as one launch per ``GRAPH_STEPS`` centres;
    when it cannot (None), and for the remainder, the step is launched on its own."""
    with counter.launch("kmeanspp_step"):
        launch()
    done = 1
    replay = capture(GRAPH_STEPS) if k - done >= GRAPH_STEPS else None
    while replay is not None and k - done >= GRAPH_STEPS:
        with counter.launch("kmeanspp_graph"):
            replay()
        done += GRAPH_STEPS
    for _ in range(k - done):
        with counter.launch("kmeanspp_step"):
            launch()


def seed_arguments(
    xp: Any, reduced: Any, k: int, *, first: int, draws: np.ndarray, n_trials: int
) -> tuple[tuple[Any, ...], int]:
    """The kernel's arguments (device buffers made with ``xp``) and its number of blocks.

    ``draws`` is ``(k, MAX_TRIALS)`` uniforms in [0, 1): row ``s`` places step ``s``'s
    candidates; ``first`` is the first centre's row.
    """
    if not 1 <= n_trials <= MAX_TRIALS:
        raise ValueError(f"n_trials must be 1 to {MAX_TRIALS}: got {n_trials}")
    n, d = reduced.shape
    blocks = -(-n // BLOCK_ROWS)
    cand = np.zeros(MAX_TRIALS, np.int64)
    cand[0] = first
    args = (
        xp.ascontiguousarray(reduced.T, dtype=xp.float32),  # column-major: coalesced reads
        np.int32(n),
        np.int32(d),
        np.int32(k),
        np.int32(n_trials),
        xp.full(n, xp.inf, dtype=xp.float32),  # mind: squared distance to the nearest centre
        xp.empty(MAX_TRIALS * n, dtype=xp.float32),  # dist[i * n + r]: to candidate i
        xp.empty(blocks * MAX_TRIALS * THREADS, dtype=xp.float64),  # per-thread sums
        xp.empty(blocks * MAX_TRIALS, dtype=xp.float64),  # per-block sums
        xp.asarray(np.ascontiguousarray(draws, dtype=np.float64).ravel()),
        xp.asarray(cand),
        xp.empty(k, dtype=xp.int64),  # chosen
        xp.asarray(np.array([0, 1, 0], np.int64)),  # step, candidates, last best trial
        xp.zeros(1, dtype=xp.uint32),  # the finishing ticket
    )
    return args, blocks
