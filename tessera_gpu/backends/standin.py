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
* ``kmeanspp``: greedy k-means++ seeding, one kernel launch per centre on a GPU
  (:mod:`.seeding`); here :func:`kmeanspp_step_emulated`, the kernel block after block, so
  both pick the same rows.
* ``matmul``: cuBLAS on a GPU.  With ``CUPY_TF32=1`` cuBLAS rounds float32 inputs to TF32
  (10-bit mantissa); the stand-in rounds them the same way, so the claim that distances and
  inertia stay exact fp32 under TF32 is tested on the CPU too.

``xp`` here counts what it is asked to do (:mod:`.launches`): ``dev.launches`` says how many
kernel launches the same code would cost on a GPU.

A fake ``cupy`` package would have to imitate CuPy's whole surface and would still leave the
kernel's algorithm untested.  ``TESSERA_GPU_STANDIN=numpy`` selects this device; it is read
when a backend is chosen (:func:`tessera_gpu.backends.get_backend`), never at import.
"""

from __future__ import annotations

import os
from typing import Any

import numba
import numpy as np

from tessera_gpu.backends.launches import COUNTING_NUMPY, LAUNCHES, LaunchCounter, on_device
from tessera_gpu.backends.seeding import (
    BLOCK_ROWS,
    MAX_TRIALS,
    ROWS_PER_THREAD,
    THREADS,
    run_steps,
    seed_arguments,
)

__all__ = [
    "LANES",
    "NumpyDevice",
    "flush_subnormals",
    "kmeanspp_step_emulated",
    "round_to_tf32",
    "topk_emulated",
]

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


_WARP = LANES
_PER_LANE = THREADS // _WARP
_TINY = np.float32(np.finfo(np.float32).tiny)


@numba.njit(cache=True)
def _flush(v: Any) -> Any:  # pragma: no cover - compiled
    return v if abs(v) >= _TINY else v * np.float32(0.0)  # a select: the loops vectorise


@numba.njit(cache=True)
def _block_scan(v: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    out = v.copy()
    off = 1
    while off < len(out):
        for t in range(len(out) - 1, off - 1, -1):  # downwards: out[t - off] is still old
            out[t] = out[t] + out[t - off]
        off <<= 1
    return out


@numba.njit(cache=True)
def _phase_a(x, n, d, nc, s, prev, mind, dist, tpart, part, cand, b):  # pragma: no cover
    """Every block's work; ``x`` row-major with subnormals flushed (as the kernel reads them)."""
    tsum = np.zeros((MAX_TRIALS, THREADS), np.float64)
    centres = np.zeros((d, MAX_TRIALS), np.float32)
    acc = np.zeros(MAX_TRIALS, np.float32)
    for i in range(nc):
        centres[:, i] = x[cand[i]]
    for t in range(THREADS):
        for j in range(ROWS_PER_THREAD):
            r = b * BLOCK_ROWS + j * THREADS + t
            if r >= n:
                break
            m = mind[r]
            if s > 0:
                m = min(m, dist[prev * n + r])
            mind[r] = m
            acc[:] = 0.0
            for u in range(d):  # each trial's sum runs over u in order, as in the kernel
                xv = x[r, u]
                for i in range(MAX_TRIALS):  # all slots, so that the loop vectorises
                    df = _flush(xv - centres[u, i])
                    acc[i] = _flush(acc[i] + _flush(df * df))
            for i in range(nc):
                dist[i * n + r] = acc[i]
                tsum[i, t] += np.float64(min(m, acc[i]))
    for i in range(nc):
        tpart[(b * MAX_TRIALS + i) * THREADS : (b * MAX_TRIALS + i + 1) * THREADS] = tsum[i]
        part[b * MAX_TRIALS + i] = _block_scan(tsum[i])[THREADS - 1]


@numba.njit(cache=True)
def _chunk_sums(part, nb, chunk, i):  # pragma: no cover - compiled
    sums = np.zeros(THREADS, np.float64)
    for t in range(THREADS):
        for q in range(t * chunk, min(nb, (t + 1) * chunk)):
            sums[t] += part[q * MAX_TRIALS + i]
    return sums


@numba.njit(cache=True)
def _first_passing(values, left):  # pragma: no cover - compiled
    """The kernel's "first running sum past ``left``": (index or -1, the sum before it,
    the last index with a positive value or -1)."""
    acc, hit, pos = 0.0, -1, -1
    for e in range(len(values)):
        if values[e] > 0.0:
            pos = e
        if hit < 0:
            nxt = acc + values[e]
            if nxt > left:
                hit = e
            else:
                acc = nxt
    return hit, acc, pos


@numba.njit(cache=True)
def _pick_thread(tp, left):  # pragma: no cover - compiled
    """The kernel's warp search over a block's 256 thread sums: ``(thread, what is left)``."""
    mine = np.zeros(_WARP, np.float64)
    for lane in range(_WARP):
        for e in range(_PER_LANE):
            mine[lane] += tp[lane * _PER_LANE + e]
    warp = _block_scan(mine)  # a warp's shuffle scan: the same Hillis-Steele steps
    l1 = -1
    for lane in range(_WARP):
        if warp[lane] > left:
            l1 = lane
            break
    if l1 < 0:
        l1 = _WARP - 1
        for lane in range(_WARP - 1, -1, -1):
            if mine[lane] > 0.0:
                l1 = lane
                break
    left -= warp[l1] - mine[l1]
    hit, acc, pos = _first_passing(tp[l1 * _PER_LANE : (l1 + 1) * _PER_LANE], left)
    e1 = hit if hit >= 0 else (pos if pos >= 0 else _PER_LANE - 1)
    return l1 * _PER_LANE + e1, left - acc


@numba.njit(cache=True)
def _sample_row(
    target, incl, sums, part, tpart, mind, dist, best, nb, chunk, n
):  # pragma: no cover
    c1, pos = THREADS, -1
    for q in range(THREADS):
        if c1 == THREADS and incl[q] > target:
            c1 = q
        if sums[q] > 0.0:
            pos = q
    if c1 == THREADS:
        c1 = pos if pos >= 0 else 0
    left = target - (incl[c1 - 1] if c1 > 0 else 0.0)
    lo, hi = c1 * chunk, min(nb, c1 * chunk + chunk)
    blocks = np.empty(max(hi - lo, 0), np.float64)
    for q in range(lo, hi):
        blocks[q - lo] = part[q * MAX_TRIALS + best]
    hit, acc, pos = _first_passing(blocks, left)
    b1 = lo + hit if hit >= 0 else (lo + pos if pos >= 0 else (hi - 1 if hi > lo else nb - 1))
    left -= acc
    tp = tpart[(b1 * MAX_TRIALS + best) * THREADS : (b1 * MAX_TRIALS + best + 1) * THREADS]
    t1, left = _pick_thread(tp, left)
    acc, r1, rpos, valid = 0.0, -1, -1, -1
    for j in range(ROWS_PER_THREAD):
        r = b1 * BLOCK_ROWS + j * THREADS + t1
        if r >= n:
            break
        valid = r
        w = np.float64(min(mind[r], dist[best * n + r]))
        if w > 0.0:
            rpos = r
        if r1 < 0:
            nxt = acc + w
            if nxt > left:
                r1 = r
            else:
                acc = nxt
    if r1 < 0:
        r1 = rpos if rpos >= 0 else (valid if valid >= 0 else n - 1)
    return r1


@numba.njit(cache=True)
def _step(
    xt, n, d, k, n_trials, mind, dist, tpart, part, draws, cand, chosen, state, nb
):  # pragma: no cover
    s, nc, prev = state[0], state[1], state[2]
    x = np.empty((n, d), np.float32)
    for u in range(d):
        for r in range(n):
            x[r, u] = _flush(xt[u * n + r])
    for b in range(nb):
        _phase_a(x, n, d, nc, s, prev, mind, dist, tpart, part, cand, b)
    chunk = (nb + THREADS - 1) // THREADS
    best, best_total = 0, np.inf
    for i in range(nc):
        total = _block_scan(_chunk_sums(part, nb, chunk, i))[THREADS - 1]
        if i == 0 or total < best_total:
            best, best_total = i, total
    chosen[s] = cand[best]
    if s + 1 < k:
        sums = _chunk_sums(part, nb, chunk, best)
        incl = _block_scan(sums)
        total = incl[THREADS - 1]
        for i in range(n_trials):
            target = draws[(s + 1) * MAX_TRIALS + i] * total
            if total > 0.0:
                cand[i] = _sample_row(
                    target, incl, sums, part, tpart, mind, dist, best, nb, chunk, n
                )
            else:
                cand[i] = n - 1
    state[0], state[1], state[2] = s + 1, n_trials, best


def kmeanspp_step_emulated(*args: Any, blocks: int) -> None:
    """One launch of :data:`.seeding.SEED_SOURCE` on numpy buffers, in place: the kernel's
    blocks one after the other, then its last block's work, with the same float32 steps
    (subnormals flushed, nothing fused) and the same double sums in the same order."""
    xt, n, d, k, n_trials, mind, dist, tpart, part, draws, cand, chosen, state, _ = (
        np.asarray(a) if isinstance(a, np.ndarray) else a for a in args
    )
    _step(xt.ravel(), int(n), int(d), int(k), int(n_trials), mind, dist, tpart, part, draws, cand,
          chosen, state, blocks)  # fmt: skip


class NumpyDevice:
    """The CuPy tier's device on the CPU: ``xp`` is numpy.  For tests and rehearsals only."""

    name = "numpy"
    standin: str | None = "numpy"
    max_topk = 256  # as the GPU kernel's (KMAX_STEPS[-1]): wider searches take the same path
    # Smaller GEMM blocks than on a GPU: the host has far less memory to spare, and tests
    # then cross block boundaries on small data.
    block_bytes = 64 << 20

    def __init__(self) -> None:
        self.xp: Any = COUNTING_NUMPY  # numpy, counting its launches (see :mod:`.launches`)

    @property
    def launches(self) -> LaunchCounter:
        """Device operations so far, by name: each would be at least one kernel on a GPU."""
        return LAUNCHES

    @property
    def label(self) -> str:
        return "numpy stand-in for CuPy (CPU; for tests and rehearsals only)"

    def describe(self) -> dict[str, Any]:
        return {"standin": "numpy", "numpy": np.__version__}

    def asarray(self, a: np.ndarray) -> np.ndarray:
        return on_device(np.asarray(a))  # a host-to-device copy: no kernel

    def to_host(self, a: Any) -> np.ndarray:
        return np.asarray(a)

    def synchronize(self) -> None:
        """Nothing to wait for: numpy returns when it is done."""

    def matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``a @ b`` in float32; inputs rounded to TF32 when ``CUPY_TF32=1``, like cuBLAS."""
        a, b = np.asarray(a), np.asarray(b)
        with LAUNCHES.launch("matmul"):
            if os.environ.get("CUPY_TF32") == "1" and a.dtype == np.float32 == b.dtype:
                return on_device(round_to_tf32(a) @ round_to_tf32(b))
            return on_device(a @ b)

    def topk(
        self, gram: np.ndarray, qn: np.ndarray, dn: np.ndarray, kk: int
    ) -> tuple[np.ndarray, np.ndarray]:
        with LAUNCHES.launch("topk_rows"):
            plain = [np.asarray(a) for a in (gram, qn, dn)]
            return on_device(topk_emulated(plain[0], plain[1], plain[2], kk))

    def kmeanspp(
        self, reduced: np.ndarray, k: int, *, first: int, draws: np.ndarray, n_trials: int
    ) -> np.ndarray:
        """Greedy k-means++ seeds (rows, int64): the seeding kernel emulated, launch by launch
        (:mod:`.seeding`)."""
        args, blocks = seed_arguments(
            self.xp, reduced, k, first=first, draws=draws, n_trials=n_trials
        )

        def launch() -> None:
            kmeanspp_step_emulated(*args, blocks=blocks)

        def capture(steps: int) -> Any:  # the graph's replay: its steps, one after the other
            def replay() -> None:
                for _ in range(steps):
                    launch()

            return replay

        run_steps(k, launch, capture, LAUNCHES)
        return args[11]  # type: ignore[no-any-return]
