"""Tessera: episode embeddings as density maps, and training subsets picked from them.

The flow, one module per step::

    load_dataset(path)            validated Dataset (safety.py, dataset.py)
    get_backend(mode)             cpu | cupy | cuml  (backends/)
    project_cached(...)           2-D UMAP map, cached on disk (projection.py, cache.py)
    draw_sample(...)              random | stratified | kmeans subsets (sampling.py)
"""

import os as _os

# Filter plugins are code loaded from disk at HDF5's request; an untrusted file must never
# trigger that. "::" disables plugin loading; it must be set before HDF5 initialises.
_os.environ.setdefault("HDF5_PLUGIN_PRELOAD", "::")

from tessera_gpu.errors import (  # noqa: E402
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
from tessera_gpu.io.dataset import Dataset, Field, load_dataset  # noqa: E402
from tessera_gpu.io.safety import Limits, disable_filter_plugins  # noqa: E402

__version__ = "0.1.0"

disable_filter_plugins()

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
    "load_dataset",
]
