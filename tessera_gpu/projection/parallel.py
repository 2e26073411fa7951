"""numba's parallel kernels, safe to launch from several threads at once.

The server projects in a worker thread while requests render tiles and draw K-means samples in
others, so parallel kernels start concurrently.  numba's TBB and OpenMP threading layers allow
that; its fallback ``workqueue`` layer aborts the process when it happens.  Unless the user
chose a layer (``NUMBA_THREADING_LAYER``), we ask for a thread-safe one when one loads, and
where none does (e.g. macOS without libomp or tbb) :func:`kernel` serialises our launches
with one process-wide lock, and :func:`serial_section` lets other callers of numba-parallel
code (datashader) take the same lock.
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

__all__ = ["THREAD_SAFE", "kernel", "serial_section"]

F = TypeVar("F", bound=Callable[..., Any])

_SAFE_LAYERS = {"tbb", "omp", "threadsafe"}


def _loads(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # ImportError, or OSError when the shared library is missing
        return False
    return True


def _choose_layer() -> bool:
    """Pick a thread-safe layer if the user did not pick one; True when launches are safe."""
    chosen = os.environ.get("NUMBA_THREADING_LAYER", "").strip().lower()
    if chosen and chosen != "default":
        return chosen in _SAFE_LAYERS
    if any(_loads(f"numba.np.ufunc.{lib}") for lib in ("tbbpool", "omppool")):
        numba.config.THREADING_LAYER = "threadsafe"  # type: ignore[attr-defined]
        return True
    return False


#: Whether concurrent parallel launches are safe; when False, they take :data:`_LOCK`.
THREAD_SAFE = _choose_layer()
_LOCK = threading.RLock()


@contextlib.contextmanager
def serial_section() -> Iterator[None]:
    """Hold the kernel lock (a no-op where the threading layer is thread-safe)."""
    if THREAD_SAFE:
        yield
        return
    with _LOCK:
        yield


def kernel(fn: F) -> F:
    """``numba.njit(parallel=True, fastmath=True, cache=True)``, launched thread-safely.

    The result is called from Python only (a locked wrapper is not callable from other
    jitted code); ``.dispatcher`` is the numba dispatcher itself.
    """
    dispatcher = numba.njit(parallel=True, fastmath=True, error_model="numpy", cache=True)(fn)
    if THREAD_SAFE:
        return dispatcher  # type: ignore[return-value]

    @functools.wraps(fn)
    def launch(*args: Any) -> Any:
        with serial_section():
            return dispatcher(*args)

    launch.dispatcher = dispatcher  # type: ignore[attr-defined]
    return launch  # type: ignore[return-value]
