"""Tessera: episode embeddings as density maps, and training subsets picked from them.

The flow, one group of modules per step::

    load_dataset(path)            validated Dataset                 (io/)
    get_backend(mode)             cpu | cupy | cuml                 (backends/)
    project_cached(...)           2-D UMAP map, cached on disk      (projection/)
    draw_sample(...)              random | stratified | kmeans      (sampling.py, clustering.py)
    render_tile(...)              datashader tiles, previews        (render/)
    Tessera(settings)             the core the CLI and the server share (core/)

Importing the package changes nothing in the process. A program that opens untrusted files,
or runs the parallel kernels from several threads, calls :func:`configure_process` once, early
(``create_app`` and the ``tessera`` command do).
"""

from __future__ import annotations

import os as _os

from tessera_gpu.errors import (
    Conflict,
    Forbidden,
    InvalidDataset,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    TesseraError,
    Unavailable,
    UnsupportedMediaType,
)
from tessera_gpu.io.dataset import Dataset, Field, load_dataset
from tessera_gpu.io.safety import Limits
from tessera_gpu.io.writer import write_dataset

__version__ = "0.1.0"


def configure_process() -> None:
    """The process-wide settings Tessera relies on; idempotent.

    * HDF5 never loads filter plugins from disk: an untrusted file must not trigger loading
      code (``HDF5_PLUGIN_PRELOAD="::"`` for HDF5 libraries opened later, and the plugin
      search path of the one already loaded emptied).
    * numba's parallel kernels run on a thread-safe threading layer when one loads, so the
      projection and request threads can launch them at once.
    """
    from tessera_gpu.io.safety import disable_filter_plugins
    from tessera_gpu.projection.parallel import configure_threading

    _os.environ.setdefault("HDF5_PLUGIN_PRELOAD", "::")
    disable_filter_plugins()
    configure_threading()


__all__ = [
    "Conflict",
    "Dataset",
    "Field",
    "Forbidden",
    "InvalidDataset",
    "InvalidRequest",
    "Limits",
    "NotFound",
    "PayloadTooLarge",
    "TesseraError",
    "Unavailable",
    "UnsupportedMediaType",
    "__version__",
    "configure_process",
    "load_dataset",
    "write_dataset",
]
