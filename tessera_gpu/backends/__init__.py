"""Compute backends: where the embeddings live and how kNN, K-means and distances run.

``get_backend(mode)`` picks one, once:

==========  ===============================================================================
``auto``    cuML if it imports and a GPU is present, else CuPy if a GPU is present, else CPU
``gpu``     a GPU backend (cuML, else CuPy), or :class:`~tessera_gpu.errors.Unavailable`
``cpu``     numpy + BLAS + numba (and faiss-free: see :mod:`.cpu_knn`)
``None``    the ``TESSERA_DEVICE`` environment variable, default ``auto``
==========  ===============================================================================

A GPU counts as present only when :func:`gpu_probe` has compiled and run a kernel, a matmul
and an ``eigh`` on it; otherwise ``auto`` falls back to the CPU and says why.
``TESSERA_GPU_STANDIN=numpy`` puts the CuPy tier on a numpy stand-in instead of a GPU, for
tests and rehearsals (:mod:`.standin`).

cupy and cuml are imported only inside :mod:`.cupy_device` / :mod:`.cuml_backend`, and only
when a GPU is asked for or probed, so a CPU install never needs them.

Every backend offers the same surface (:class:`Backend`): ``to_device`` once, then ``take``,
``knn``, ``neighbors``, ``kmeans``, ``nearest_rows`` and ``nearest_sample_distances`` on the
device array.  Row indices going in and out are always *global* row numbers of the
embeddings (``int64`` numpy), whatever subset ``rows`` selects.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

from tessera_gpu.backends.protocol import (
    COARSE_ABOVE,
    KMEANS_MAX_ITER,
    KMEANS_TOL,
    Backend,
    Neighbors,
)
from tessera_gpu.errors import InvalidRequest, Unavailable

__all__ = [
    "COARSE_ABOVE",
    "KMEANS_MAX_ITER",
    "KMEANS_TOL",
    "MODES",
    "NAMES",
    "STANDIN_VAR",
    "Backend",
    "GpuStatus",
    "Neighbors",
    "backend_summary",
    "chosen",
    "get_backend",
    "gpu_probe",
    "gpu_status",
    "make_backend",
    "on_gpu",
    "standin_name",
]

MODES = ("auto", "gpu", "cpu")
NAMES = ("cpu", "cupy", "cuml")
ENV_VAR = "TESSERA_DEVICE"
STANDIN_VAR = "TESSERA_GPU_STANDIN"
STANDINS = ("numpy",)


def standin_name() -> str | None:
    """``TESSERA_GPU_STANDIN`` (``numpy``), or None: read each time a backend is chosen.

    With it, the CuPy tier runs on :class:`~.standin.NumpyDevice` in place of a GPU, for
    tests and rehearsals only: ``auto`` and ``gpu`` both pick it, and ``describe()``,
    ``tessera doctor`` and ``/api/health`` say ``"standin": "numpy"``.
    """
    value = os.environ.get(STANDIN_VAR, "").strip().lower()
    if not value:
        return None
    if value not in STANDINS:
        raise InvalidRequest(
            f"{STANDIN_VAR} must be one of {', '.join(STANDINS)} (or unset): got {value!r}",
            code="bad_standin",
        )
    return value


@dataclass(frozen=True)
class GpuStatus:
    """The probe's verdict: the best GPU backend (or None), why, and the stand-in if on."""

    best: str | None
    cause: str
    reason: str
    standin: str | None = None


def gpu_probe() -> GpuStatus:
    """Probe the GPU tier (once per process and stand-in setting): cuML, then CuPy."""
    return _probe(standin_name())


@functools.lru_cache(maxsize=4)
def _probe(standin: str | None) -> GpuStatus:
    if standin is not None:
        return GpuStatus("cupy", "standin", f"the {standin} stand-in for CuPy is on "
                         f"({STANDIN_VAR}; tests and rehearsals only)", standin)  # fmt: skip
    from tessera_gpu.backends import cupy_device

    found = cupy_device.probe()
    if not found.ok:
        return GpuStatus(None, found.cause, found.reason)
    from tessera_gpu.backends import cuml_backend

    return GpuStatus("cuml" if cuml_backend.cuml_importable() else "cupy", "ok", found.reason)


def gpu_status() -> tuple[str | None, str]:
    """``(best GPU backend name or None, reason)``; see :func:`gpu_probe`."""
    status = gpu_probe()
    return status.best, status.reason


def make_backend(name: str) -> Backend:
    """The backend called ``name`` ("cpu" | "cupy" | "cuml"), without the auto fallbacks.

    Raises :class:`Unavailable` when that backend cannot run here.
    """
    if name not in NAMES:
        raise InvalidRequest(f"unknown backend {name!r}: use one of {', '.join(NAMES)}")
    if name != "cpu":
        status = gpu_probe()
        if status.best is None:
            raise Unavailable(
                f"the {name} backend needs a GPU: {status.reason}", code="gpu_unavailable"
            )
        if name == "cuml" and status.best != "cuml":
            raise Unavailable(
                "the cuml backend needs RAPIDS cuML, which does not import here"
                + (" (the stand-in covers the CuPy tier only)" if status.standin else ""),
                code="gpu_unavailable",
            )
    return _make(name)


def _make(name: str) -> Backend:
    if name == "cpu":
        from tessera_gpu.backends.cpu import CpuBackend

        return CpuBackend()
    if name == "cuml":
        from tessera_gpu.backends.cuml_backend import CumlBackend

        return CumlBackend()
    from tessera_gpu.backends.cupy_backend import CupyBackend

    if standin_name() is not None:
        from tessera_gpu.backends.standin import NumpyDevice

        return CupyBackend(NumpyDevice())
    return CupyBackend()


def chosen(mode: str | None = "auto") -> tuple[str, str | None]:
    """The name of the backend :func:`get_backend` makes for ``mode``, and why ``auto`` fell
    back to the CPU (None when it did not), without making it: no kernel is imported."""
    if mode is None:
        mode = os.environ.get(ENV_VAR) or "auto"
    mode = str(mode).strip().lower()
    if mode not in MODES:
        raise InvalidRequest(
            f"unknown device {mode!r}: use one of {', '.join(MODES)}", code="bad_device"
        )
    if mode == "cpu":
        return "cpu", None
    status = gpu_probe()
    if status.best is not None:
        return status.best, None
    if mode == "gpu":
        raise Unavailable(
            f"GPU asked for but not available: {status.reason}. Use --device cpu (or auto) instead",
            code="gpu_unavailable",
        )
    return "cpu", status.reason


def get_backend(mode: str | None = "auto") -> Backend:
    """The backend for ``mode`` (``auto`` | ``gpu`` | ``cpu``; None reads ``TESSERA_DEVICE``).

    Raises :class:`InvalidRequest` for an unknown mode and :class:`Unavailable`, naming the
    cause (no driver, no toolkit, unsupported GPU, ...), when ``gpu`` is asked for on a
    machine without a usable GPU.  ``auto`` then falls back to the CPU, and the CPU backend's
    ``describe()`` keeps the reason as ``gpu_fallback``.
    """
    name, fallback = chosen(mode)
    if fallback is None:
        return _make(name)
    from tessera_gpu.backends.cpu import CpuBackend

    cpu = CpuBackend()
    cpu.fallback_reason = fallback
    return cpu


def backend_summary(backend: Backend) -> dict[str, Any]:
    """What ``/api/health`` shows of a backend: name, device, GPU memory, and -- only when
    they apply -- the stand-in in use and why ``auto`` fell back to the CPU."""
    out: dict[str, Any] = {"name": backend.name, "device": backend.device}
    if backend.name != "cpu" or getattr(backend, "fallback_reason", None):
        info = backend.describe()
        keep = ("standin", "gpu_fallback")
        out.update({k: v for k, v in info.items() if k.startswith("gpu_memory") or k in keep})
    return out


def on_gpu(backend: Backend) -> bool:
    """True for a GPU backend on a real GPU (not the CPU, not the stand-in)."""
    return backend.name != "cpu" and getattr(backend, "standin", None) is None
