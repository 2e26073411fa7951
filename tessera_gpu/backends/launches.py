"""The launch counter: how many device operations the CuPy tier asks for, counted on the stand-in.

Launch overhead (~5-10 us each through CuPy) is what sequential GPU code pays for, so it is
worth counting where no GPU is.  On the numpy stand-in, ``xp`` is :data:`COUNTING_NUMPY` and
the device's arrays are :class:`StandinArray`: every numpy call made through ``xp``, every
ufunc or array function applied to a device array (operators and ``.sum()`` included), every
gather (``a[rows]``) and every write (``a[i] = v``) counts as one operation, which CuPy would
run as at least one kernel; views, allocations (``empty``) and host transfers count nothing.
The device's own kernels count themselves (``matmul``, ``topk_rows``, ``kmeanspp_step``).
Nested calls count once: a function's own inner operations are its implementation.

:data:`LAUNCHES` keeps the counts by name, for the whole process (tests read differences).
On a GPU, :class:`~.cupy_device.CupyDevice` counts only the kernels it launches itself.
"""

from __future__ import annotations

import threading
import types
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = ["COUNTING_NUMPY", "LAUNCHES", "LaunchCounter", "StandinArray", "on_device"]


class LaunchCounter:
    """Device operations by name; ``total`` is their sum."""

    def __init__(self) -> None:
        self.by_name: Counter[str] = Counter()
        self._local = threading.local()

    @property
    def total(self) -> int:
        return sum(self.by_name.values())

    @contextmanager
    def launch(self, name: str) -> Iterator[None]:
        """Count ``name`` once, unless inside another counted operation; the body's own
        operations are not counted."""
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            self.by_name[name] += 1
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth


LAUNCHES = LaunchCounter()


def _plain(a: Any) -> Any:
    return a.view(np.ndarray) if isinstance(a, StandinArray) else a


def on_device(value: Any) -> Any:
    """Arrays in ``value`` (an array or a tuple of them) as :class:`StandinArray` views."""
    if isinstance(value, tuple):
        return tuple(on_device(v) for v in value)
    if type(value) is np.ndarray:
        return value.view(StandinArray)
    return value


def _gathers(key: Any) -> bool:
    parts = key if isinstance(key, tuple) else (key,)
    return any(isinstance(p, (np.ndarray, list)) for p in parts)


class StandinArray(np.ndarray):
    """A numpy array that counts the operations applied to it (see the module docstring)."""

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        name = ufunc.__name__ if method == "__call__" else f"{ufunc.__name__}.{method}"
        out = kwargs.get("out")
        with LAUNCHES.launch(name):
            if out is not None:
                kwargs["out"] = tuple(_plain(o) for o in out)
            result = getattr(ufunc, method)(*(_plain(a) for a in inputs), **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return on_device(result)

    def __array_function__(self, func: Any, types_: Any, args: Any, kwargs: Any) -> Any:
        with LAUNCHES.launch(func.__name__):
            result = super().__array_function__(func, types_, args, kwargs)
        return on_device(result)

    def __getitem__(self, key: Any) -> Any:
        if not _gathers(key):
            return super().__getitem__(key)
        with LAUNCHES.launch("take"):
            return on_device(super().__getitem__(key))

    def __setitem__(self, key: Any, value: Any) -> None:
        with LAUNCHES.launch("copy"):
            super().__setitem__(key, value)

    def astype(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        with LAUNCHES.launch("astype"):
            return on_device(self.view(np.ndarray).astype(*args, **kwargs))

    def copy(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        with LAUNCHES.launch("copy"):
            return on_device(self.view(np.ndarray).copy(*args, **kwargs))


FREE = frozenset({"empty", "empty_like", "asarray"})  # allocations and transfers: no kernel


class _CountingNamespace:
    """A numpy module whose functions count one launch per call and return device arrays."""

    def __init__(self, module: types.ModuleType) -> None:
        self._module = module

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._module, name)
        if isinstance(value, types.ModuleType):
            return _CountingNamespace(value)
        if isinstance(value, type) or not callable(value):
            return value
        return _counted(name, value)


def _counted(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        if name in FREE:
            return on_device(fn(*args, **kwargs))
        with LAUNCHES.launch(name):
            return on_device(fn(*args, **kwargs))

    return call


COUNTING_NUMPY: Any = _CountingNamespace(np)
