"""CuPy on a CUDA GPU: the device the CuPy tier runs on, its probe and its top-k kernel.

This is the one module that imports ``cupy``, and only when a device is made or probed (the
module itself imports nothing of CUDA, so its probe can be tested with a fake module).  What
lives here is what has no array-API equivalent (see :mod:`.standin` for the numpy side):

* :data:`TOPK_SOURCE`, a warp-per-row top-k kernel, compiled with NVRTC per list length
  (32, 64, 128 or 256: any ``k + margin`` up to 256 without sorting a distance block);
* :func:`probe`: compiles and runs that kernel, a matmul and a small ``eigh`` before the tier
  is chosen, and names the cause when one fails (no driver, no toolkit, unsupported GPU, or
  ``kernel_error`` with the compiler's log when NVRTC refuses our own source);
* the allocator: RAPIDS' RMM when ``rmm`` imports (cuML and cuDF then share one pool with
  CuPy), else CuPy's own pool, whose cached blocks the memory report counts as free.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

import numpy as np

from tessera_gpu.backends.launches import LaunchCounter
from tessera_gpu.backends.seeding import (
    MAX_TRIALS,
    SEED_SOURCE,
    THREADS,
    run_steps,
    seed_arguments,
)
from tessera_gpu.backends.standin import topk_emulated

__all__ = [
    "CUPY_ADDS",
    "KMAX_STEPS",
    "TOPK_SOURCE",
    "CupyDevice",
    "Probe",
    "kernel_builds",
    "probe",
    "use_rmm",
]

KMAX_STEPS = (32, 64, 128, 256)  # compiled list lengths; the smallest that holds kk is used
# What CuPy 14 appends to every NVRTC compile, after our options (so it wins over ours): the
# emulations flush subnormals for it (:func:`.standin.flush_subnormals`).
CUPY_ADDS = ("-ftz=true",)
WARPS_PER_BLOCK = 4
TOPK_UNROLL = 4  # columns a lane loads at once in the top-k kernel
# The GEMM block of one query block: a fraction of the free device memory (on an H200 with
# the embeddings loaded, 4-8 GiB: 5,000-10,000 queries against 200,000 rows, enough warps to
# fill 132 SMs); the partition path for wide searches holds a few such blocks at once.
BLOCK_SHARE = 16
BLOCK_BYTES_RANGE = (128 << 20, 8 << 30)

TOPK_SOURCE = r"""
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
    float worst = bd[kk - 1];
#define TOPK_CONSIDER(D, C) do { const float d_ = (D);                                     \
        if (d_ < worst) {                                                                   \
            int p = kk - 1;                                                                 \
            while (p > 0 && bd[p - 1] > d_) { bd[p] = bd[p - 1]; bi[p] = bi[p - 1]; --p; } \
            bd[p] = d_;                                                                     \
            bi[p] = (C);                                                                    \
            worst = bd[kk - 1];                                                             \
        } } while (0)
    int c = lane;
    // UNROLL columns per lane per round, all loaded before the first is compared: the loads
    // are in flight together instead of one g[c] / dn[c] pair per data-dependent insert.
    for (; c + 32 * (UNROLL - 1) < n_cols; c += 32 * UNROLL) {
        float gv[UNROLL], dv[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) { gv[u] = g[c + 32 * u]; dv[u] = dn[c + 32 * u]; }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) TOPK_CONSIDER(q + dv[u] - 2.0f * gv[u], c + 32 * u);
    }
    for (; c < n_cols; c += 32) TOPK_CONSIDER(q + dn[c] - 2.0f * g[c], c);
#undef TOPK_CONSIDER
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
            out_i[(size_t)row * kk + r] = v < __int_as_float(0x7f800000) ? col : -1;
        }
        if (lane == who) ++head;
    }
}
"""


@dataclass(frozen=True)
class Probe:
    """What the GPU probe found: ``ok``, a ``cause`` code when not, and a sentence."""

    ok: bool
    cause: str  # "ok" | "no_cupy" | "no_driver" | "no_device" | "no_toolkit" | "kernel_error" | ...
    reason: str


def _cause(exc: BaseException) -> str:
    """Sort a CUDA failure into no driver / no toolkit / unsupported GPU, from its message."""
    if type(exc).__name__ == "CompileException":  # NVRTC ran and refused our source
        return "kernel_error"
    text = f"{type(exc).__name__} {exc}".lower()
    if any(s in text for s in ("libcuda.", "insufficientdriver", "driver version", "nodriver")):
        return "no_driver"
    if any(s in text for s in ("nvrtc", "cublas", "cusolver", "curand", "cusparse", "libcudart",
                               "cannot open shared object")):  # fmt: skip
        return "no_toolkit"
    if any(s in text for s in ("no kernel image", "ptx", "unsupported", "architecture")):
        return "unsupported_gpu"
    if "nodevice" in text or "no cuda-capable device" in text:
        return "no_device"
    return "probe_failed"


_WORDS = {
    "no_driver": "no usable NVIDIA driver",
    "no_device": "no CUDA device found",
    "no_toolkit": "CUDA toolkit libraries missing (pip install 'cupy-cuda13x[ctk]')",
    "unsupported_gpu": "unsupported GPU",
    "probe_failed": "the GPU probe failed",
    "kernel_error": "a Tessera GPU kernel failed to compile (a bug to report, not your setup)",
}


def _failed(exc: BaseException) -> Probe:
    cause = _cause(exc)
    if cause == "kernel_error":  # CuPy's CompileException: its text is the compiler's log
        kernel, options = getattr(exc, "name", "?"), " ".join(getattr(exc, "options", ()))
        return Probe(False, cause, f"{_WORDS[cause]}: {kernel} with {options}: {exc}")
    return Probe(False, cause, f"{_WORDS[cause]} ({type(exc).__name__}: {exc})")


def _min_capability(cp: Any) -> int:
    """Oldest compute capability (x10) the CUDA runtime still builds for: 7.5 from CUDA 13."""
    return 75 if cp.cuda.runtime.runtimeGetVersion() >= 13000 else 50


def probe(cp: Any = None) -> Probe:
    """Count devices, check the compute capability, then compile and run the top-k kernel
    (checked against its emulation), a matmul (cuBLAS) and a small ``eigh`` (cuSOLVER)."""
    try:
        if cp is None:
            import cupy as cp  # type: ignore[no-redef]
        if cp.cuda.runtime.getDeviceCount() < 1:
            return Probe(False, "no_device", _WORDS["no_device"])
        capability = int(cp.cuda.Device(0).compute_capability)
        if capability < _min_capability(cp):
            return Probe(False, "unsupported_gpu", (
                f"unsupported GPU: compute capability {capability // 10}.{capability % 10}; "
                f"this CUDA runtime needs {_min_capability(cp) / 10:.1f} or newer"))  # fmt: skip
        device = CupyDevice(cp)
        _check_kernel(device)
        a = np.arange(12, dtype=np.float32).reshape(3, 4)
        if not np.allclose(cp.asnumpy(device.matmul(cp.asarray(a), cp.asarray(a.T))), a @ a.T):
            return Probe(False, "probe_failed", "the GPU probe failed: a matmul gave wrong values")
        sym = np.diag(np.arange(1.0, 5.0))
        vals, _ = cp.linalg.eigh(cp.asarray(sym))
        if not np.allclose(cp.asnumpy(vals), np.arange(1.0, 5.0)):
            return Probe(False, "probe_failed", "the GPU probe failed: eigh gave wrong values")
        name = device.label
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name == "cupy":
            return Probe(False, "no_cupy", "CuPy is not installed (pip install 'tessera-gpu[gpu]')")
        return _failed(exc)
    except Warning:  # pytest turns warnings into errors: a bug to see, not a missing GPU
        raise
    except Exception as exc:  # CUDARuntimeError, CompileException, missing libraries, ...
        return _failed(exc)
    return Probe(True, "ok", f"{name}: a kernel, a matmul and eigh ran")


def _check_kernel(device: CupyDevice) -> None:
    rng = np.random.default_rng(0)
    gram = rng.normal(size=(5, 70)).astype(np.float32)
    gram[:, 40:] = gram[:, :30]  # ties
    qn, dn = np.ones(5, np.float32), np.ones(70, np.float32)
    to = device.cp.asarray
    got_d, got_i = device.topk(to(gram), to(qn), to(dn), 9)
    want_d, want_i = topk_emulated(gram, qn, dn, 9)
    if not (np.array_equal(device.cp.asnumpy(got_i), want_i)
            and np.array_equal(device.cp.asnumpy(got_d), want_d)):  # fmt: skip
        raise RuntimeError("the top-k kernel disagrees with its numpy emulation")


def _topk_options(kmax: int) -> tuple[str, ...]:
    # No fused multiply-add: the emulation's rounding.  A lane's columns stay in their order,
    # so the unrolling changes no result.
    return (f"-DKMAX={kmax}", f"-DUNROLL={TOPK_UNROLL}", "--fmad=false")


SEED_OPTIONS = (f"-DTMAX={MAX_TRIALS}", "--fmad=false")


def kernel_builds() -> list[tuple[str, str, tuple[str, ...]]]:
    """``(name, source, options)`` of every kernel this module compiles."""
    topk = [(f"topk_rows_{kmax}", TOPK_SOURCE, _topk_options(kmax)) for kmax in KMAX_STEPS]
    return [*topk, ("kmeanspp_step", SEED_SOURCE, SEED_OPTIONS)]


def use_rmm(cp: Any) -> str:
    """Route CuPy's allocations through RAPIDS' RMM when ``rmm`` imports; say which is used."""
    if importlib.util.find_spec("rmm") is None:
        return "cupy-pool"
    try:
        from rmm.allocators.cupy import rmm_cupy_allocator  # type: ignore[import-not-found]
    except ImportError:  # an rmm too old or broken to offer the CuPy allocator
        return "cupy-pool"
    cp.cuda.set_allocator(rmm_cupy_allocator)
    return "rmm"


class CupyDevice:
    """The CuPy tier's device on a GPU: ``xp`` is cupy."""

    name = "cupy"
    standin: str | None = None
    max_topk = KMAX_STEPS[-1]  # the kernel's longest list; wider searches partition instead

    def __init__(self, cp: Any = None) -> None:
        if cp is None:
            import cupy as cp  # type: ignore[no-redef]
        self.cp = cp
        self.xp: Any = self.cp
        self.allocator = use_rmm(self.cp)
        self._kernels: dict[Any, Any] = {}
        self.launches = LaunchCounter()  # the kernels launched here (CuPy's own not counted)
        self.graph_fallback: str | None = None  # why seeding could not use a CUDA graph

    @property
    def label(self) -> str:
        props = self.cp.cuda.runtime.getDeviceProperties(self.cp.cuda.Device().id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)

    def _memory(self) -> tuple[int, int]:
        """Free and total device memory in bytes (blocks cached by CuPy's pool count as free)."""
        free, total = self.cp.cuda.runtime.memGetInfo()
        if self.allocator == "cupy-pool":
            free += self.cp.get_default_memory_pool().free_bytes()
        return int(free), int(total)

    @property
    def block_bytes(self) -> int:
        """GEMM output per query block: 1/16 of free memory, between 128 MiB and 8 GiB."""
        low, high = BLOCK_BYTES_RANGE
        return max(low, min(high, self._memory()[0] // BLOCK_SHARE))

    def describe(self) -> dict[str, Any]:
        """Free/total GPU memory in GiB (blocks cached by CuPy's pool count as free)."""
        free, total = self._memory()
        return {
            "gpu_memory_free_gib": round(free / 2**30, 2),
            "gpu_memory_total_gib": round(total / 2**30, 2),
            "cuda_runtime": self.cp.cuda.runtime.runtimeGetVersion(),
            "cupy": self.cp.__version__,
            "allocator": self.allocator,
            **({"graph_fallback": self.graph_fallback} if self.graph_fallback else {}),
        }

    def asarray(self, a: np.ndarray) -> Any:
        return self.cp.asarray(a)

    def to_host(self, a: Any) -> np.ndarray:
        return self.cp.asnumpy(a) if isinstance(a, self.cp.ndarray) else np.asarray(a)

    def synchronize(self) -> None:
        self.cp.cuda.Device().synchronize()

    def matmul(self, a: Any, b: Any) -> Any:
        """``a @ b`` through cuBLAS (TF32 when ``CUPY_TF32=1``: never used for final values)."""
        return a @ b

    def _kernel(self, kmax: int) -> Any:
        if kmax not in self._kernels:
            options = _topk_options(kmax)
            self._kernels[kmax] = self.cp.RawKernel(TOPK_SOURCE, "topk_rows", options=options)
        return self._kernels[kmax]

    def topk(self, gram: Any, qn: Any, dn: Any, kk: int) -> tuple[Any, Any]:
        """The kernel's ``(distances, columns)``: see :func:`.standin.topk_emulated`."""
        kmax = next((m for m in KMAX_STEPS if kk <= m), None)
        if kmax is None:
            raise ValueError(f"top-k holds at most {KMAX_STEPS[-1]} per row: got {kk}")
        rows, cols = gram.shape
        out_d = self.cp.empty((rows, kk), dtype=self.cp.float32)
        out_i = self.cp.empty((rows, kk), dtype=self.cp.int64)
        grid = (-(-rows // WARPS_PER_BLOCK),)
        args = (gram, qn, dn, np.int32(rows), np.int32(cols), np.int32(kk), out_d, out_i)
        with self.launches.launch("topk_rows"):
            self._kernel(kmax)(grid, (32 * WARPS_PER_BLOCK,), args)
        return out_d, out_i

    def kmeanspp(
        self, reduced: Any, k: int, *, first: int, draws: np.ndarray, n_trials: int
    ) -> Any:
        """Greedy k-means++ seeds (rows, device int64): ``k`` steps of one kernel with the same
        arguments, replayed 64 at a time as a CUDA graph on a stream of their own
        (:mod:`.seeding`)."""
        if "seed" not in self._kernels:
            self._kernels["seed"] = self.cp.RawKernel(
                SEED_SOURCE, "kmeanspp_step", options=SEED_OPTIONS
            )
        kernel = self._kernels["seed"]
        self.synchronize()  # ``reduced`` comes from the default stream
        stream = self.cp.cuda.Stream(non_blocking=True)  # graphs are captured off the default
        with stream:
            args, blocks = seed_arguments(
                self.cp, reduced, k, first=first, draws=draws, n_trials=n_trials
            )

            def launch() -> None:
                kernel((blocks,), (THREADS,), args)

            run_steps(k, launch, lambda steps: self._captured(stream, launch, steps), self.launches)
        stream.synchronize()
        return args[11]

    def _captured(self, stream: Any, launch: Any, steps: int) -> Any:
        """``steps`` launches recorded as one CUDA graph (a replay function), or None when the
        capture fails here: the steps then run one launch each, and ``describe()`` says why."""
        try:
            stream.begin_capture()
            try:
                for _ in range(steps):
                    launch()
            finally:
                graph = stream.end_capture()
        except Warning:
            raise
        except Exception as exc:  # a slower path with the same result, not a missing GPU
            self.graph_fallback = f"{type(exc).__name__}: {exc}"
            return None
        return lambda: graph.launch(stream)
