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
from tessera_gpu.process import configure_process

__version__ = "0.1.0"


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
