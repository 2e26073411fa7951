"""``tessera doctor``: what is installed and usable here, and which backend Tessera will use.

Nothing heavy is imported unless it is there: package versions come from their metadata,
and the GPU is probed through :func:`~.backends.gpu_probe` (which imports CuPy only when
it is installed, and counts a GPU only once a kernel, a matmul and ``eigh`` ran on it).
When ``TESSERA_GPU_STANDIN`` is set, the report says so on its own line.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
from typing import Any

import click
import h5py

from tessera_gpu import __version__
from tessera_gpu.backends import GpuStatus, gpu_probe, make_backend

__all__ = ["diagnose", "doctor"]

PACKAGES = {
    "cuml": ("cuml", ("cuml-cu13", "cuml-cu12", "cuml")),
    "cupy": ("cupy", ("cupy-cuda13x", "cupy-cuda12x", "cupy")),
    "dask": ("dask", ("dask",)),
    "dask-cuda": ("dask_cuda", ("dask-cuda", "dask_cuda")),
    "umap-learn": ("umap", ("umap-learn",)),
    "pynndescent": ("pynndescent", ("pynndescent",)),
    "datashader": ("datashader", ("datashader",)),
    "cudf": ("cudf", ("cudf-cu13", "cudf-cu12", "cudf")),
}


def _package(module: str, distributions: tuple[str, ...]) -> str | None:
    """The installed version, or None; found without importing the module."""
    if importlib.util.find_spec(module) is None:
        return None
    for dist in distributions:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "installed"


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _kernel_layer() -> str:
    """How numba's parallel CPU kernels run when several threads launch them."""
    from tessera_gpu.projection.parallel import thread_safe

    if thread_safe():
        return "thread-safe layer (TBB or OpenMP)"
    return ("workqueue: concurrent kernels take turns (install libgomp / libomp, "
            "or `pip install tbb`, to run them side by side)")  # fmt: skip


def diagnose(device: str | None = None) -> dict[str, Any]:
    """Everything ``tessera doctor`` reports, as plain data."""
    status = gpu_probe()
    gpu, reason = status.best, status.reason
    report: dict[str, Any] = {
        "tessera": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "hdf5": h5py.version.hdf5_version,
        "cpu_kernels": _kernel_layer(),
        "packages": {name: _package(*spec) for name, spec in PACKAGES.items()},
        "gpu": None,
        "gpu_reason": reason,
        "gpu_cause": status.cause,
        "standin": status.standin,
    }
    if gpu is not None:
        report["gpu"] = make_backend("cupy").describe()
    mode = (device or os.environ.get("TESSERA_DEVICE") or "auto").lower()
    report["mode"] = mode
    report["will_use"], report["why"] = _choice(mode, status)
    return report


def _choice(mode: str, status: GpuStatus) -> tuple[str | None, str]:
    gpu, reason = status.best, status.reason
    if mode == "cpu":
        return "cpu", "--device cpu (or TESSERA_DEVICE=cpu) was asked for"
    if status.standin:
        return "cupy", f"{reason}: the CuPy tier runs on the CPU, not a GPU"
    if gpu == "cuml":
        return "cuml", "a GPU is present and RAPIDS cuML imports"
    if gpu == "cupy":
        return "cupy", "a GPU is present and CuPy works; cuML is not installed"
    if mode == "gpu":
        return None, f"--device gpu was asked for, but {reason}: `tessera serve` will refuse"
    return "cpu", f"no GPU backend: {reason}"


def _gpu_line(report: dict[str, Any]) -> str:
    gpu = report["gpu"]
    if report["standin"]:
        return f"{report['standin']} stand-in for CuPy (TESSERA_GPU_STANDIN: tests only)"
    if not gpu:
        return f"none ({report['gpu_reason']})"
    free, total = gpu["gpu_memory_free_gib"], gpu["gpu_memory_total_gib"]
    return (
        f"{gpu['device']}: {free} of {total} GiB free, CUDA runtime {gpu['cuda_runtime']}, "
        f"{gpu['allocator']} allocator"
    )


def _lines(report: dict[str, Any]) -> list[str]:
    rows = [
        ("tessera", report["tessera"]),
        ("python", f"{report['python']} on {report['platform']}"),
        ("cpu", f"{report['cpu_cores']} cores, {report['memory_gib']} GiB memory"),
        ("hdf5", report["hdf5"]),
        ("kernels", report["cpu_kernels"]),
        ("gpu", _gpu_line(report)),
    ]
    rows += [(name, version or "not installed") for name, version in report["packages"].items()]
    width = max(len(k) for k, _ in rows)
    out = [f"  {k:<{width}}  {v}" for k, v in rows]
    verdict = report["will_use"] or "nothing"
    out.append(f"\nTessera will use: {verdict} ({report['why']})")
    return out


@click.command()
@click.option(
    "--device",
    type=click.Choice(["auto", "gpu", "cpu"]),
    default=None,
    help="Explain the choice for this mode (default: TESSERA_DEVICE, else auto).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def doctor(device: str | None, as_json: bool) -> None:
    """Show what is installed and usable, and which backend Tessera will use and why."""
    report = diagnose(device)
    click.echo(json.dumps(report, indent=2) if as_json else "\n".join(_lines(report)))
