"""The process-wide settings Tessera relies on, made once by :func:`configure_process`.

Importing the package changes nothing in the process. A program that opens untrusted files,
or runs the parallel kernels from several threads, calls :func:`configure_process` once, early
(``create_app`` and the ``tessera`` command do). A module whose settings need a library that
is slow to import (numba) registers them with :func:`when_configured`: they apply when it is
first imported in a configured process, so a command that never runs a kernel never imports
numba.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

__all__ = ["configure_process", "when_configured"]

_LOCK = threading.Lock()
_configured = False
_hooks: list[Callable[[], object]] = []


def configure_process() -> None:
    """Make the process-wide settings; idempotent.

    * HDF5 never loads filter plugins from disk: an untrusted file must not trigger loading
      code (``HDF5_PLUGIN_PRELOAD="::"`` for HDF5 libraries opened later, and the plugin
      search path of the one already loaded emptied).
    * numba's parallel kernels run on a thread-safe threading layer when one loads, so the
      projection and request threads can launch them at once (set by
      :mod:`tessera_gpu.projection.parallel` when it loads, through :func:`when_configured`).
    """
    from tessera_gpu.io.safety import disable_filter_plugins

    global _configured
    os.environ.setdefault("HDF5_PLUGIN_PRELOAD", "::")
    disable_filter_plugins()
    with _LOCK:
        _configured = True
        hooks = list(_hooks)
    for hook in hooks:
        hook()


def when_configured(hook: Callable[[], object]) -> None:
    """Run ``hook`` at :func:`configure_process`, or now if that has run already."""
    with _LOCK:
        _hooks.append(hook)
        now = _configured
    if now:
        hook()
