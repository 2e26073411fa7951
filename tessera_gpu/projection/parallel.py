"""numba's parallel kernels, safe to launch from several threads at once.

The server projects in a worker thread while requests render tiles and draw K-means samples in
others, so parallel kernels start concurrently.  numba's TBB and OpenMP threading layers allow
that; its fallback ``workqueue`` layer aborts the process when it happens.

Nothing is changed at import in a process that did not call
:func:`tessera_gpu.configure_process` (``create_app`` and the ``tessera`` command do); in one
that did, :func:`configure_threading` runs when this module loads (or at that call, if this
module loaded first), before any kernel can launch. It asks numba for a thread-safe layer
unless the user chose one (``NUMBA_THREADING_LAYER``).
Either way, :func:`thread_safe` tells whether the layer numba will use is thread-safe; where
it is not (e.g. macOS without libomp or tbb), :func:`kernel` serialises our launches with one
process-wide lock, and :func:`serial_section` lets other callers of numba-parallel code
(datashader) take the same lock.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numba

from tessera_gpu.process import when_configured

__all__ = ["configure_threading", "kernel", "serial_section", "thread_safe"]

F = TypeVar("F", bound=Callable[..., Any])

_SAFE_LAYERS = {"tbb", "omp", "threadsafe"}
_LOCK = threading.RLock()


def _loads(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # ImportError, or OSError when the shared library is missing
        return False
    return True


@functools.cache
def _safe_layer_loads() -> bool:
    return any(_loads(f"numba.np.ufunc.{lib}") for lib in ("tbbpool", "omppool"))


def _chosen_layer() -> str:
    """The layer the user chose (environment first, then numba's config), or ''."""
    chosen = os.environ.get("NUMBA_THREADING_LAYER", "").strip().lower()
    if not chosen:
        chosen = str(getattr(numba.config, "THREADING_LAYER", "default")).lower()
    return "" if chosen == "default" else chosen


def thread_safe() -> bool:
    """Whether concurrent parallel launches are safe with the layer numba will use."""
    chosen = _chosen_layer()
    if chosen:
        return chosen in _SAFE_LAYERS
    return _safe_layer_loads()  # numba's default order tries tbb, then omp, then workqueue


def configure_threading() -> bool:
    """Ask numba for a thread-safe layer if the user did not pick one and one loads; return
    :func:`thread_safe`. Call it before the first parallel kernel runs."""
    if not _chosen_layer() and _safe_layer_loads():
        numba.config.THREADING_LAYER = "threadsafe"  # type: ignore[attr-defined]
    return thread_safe()


@contextlib.contextmanager
def serial_section() -> Iterator[None]:
    """Hold the kernel lock (a no-op where the threading layer is thread-safe)."""
    if thread_safe():
        yield
        return
    with _LOCK:
        yield


def kernel(fn: F) -> F:
    """``numba.njit(parallel=True, fastmath=True, cache=True)``, launched thread-safely.

    The result is called from Python only (the launching wrapper is not callable from other
    jitted code); ``.dispatcher`` is the numba dispatcher itself.
    """
    dispatcher = numba.njit(parallel=True, fastmath=True, error_model="numpy", cache=True)(fn)

    @functools.wraps(fn)
    def launch(*args: Any) -> Any:
        with serial_section():
            return dispatcher(*args)

    launch.dispatcher = dispatcher  # type: ignore[attr-defined]
    return launch  # type: ignore[return-value]


when_configured(configure_threading)
