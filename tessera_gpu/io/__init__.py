"""Files in and out: the validated :class:`Dataset`, the safety checks on untrusted HDF5,
validation in a child process, the writer for producers, and the rendered demo."""

from tessera_gpu.io.dataset import Dataset, Field, load_dataset
from tessera_gpu.io.safety import Limits
from tessera_gpu.io.writer import write_dataset

__all__ = ["Dataset", "Field", "Limits", "load_dataset", "write_dataset"]
