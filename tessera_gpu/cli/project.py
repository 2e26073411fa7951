"""``tessera project``: the 2-D map of a file's embeddings, written as an ``(N, 2)`` .npy.

The same ``project_cached`` the server's projection job calls, with a rich progress bar.
Errors are :class:`~.errors.TesseraError`s; the ``tessera`` group prints them as one line.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import click
import numpy as np

from tessera_gpu.cli.options import device_option
from tessera_gpu.cli.output import write_output
from tessera_gpu.errors import needs_embeddings
from tessera_gpu.projection.params import Projection
from tessera_gpu.settings import Settings

__all__ = ["project"]


def _default_output(file: Path) -> Path:
    return Path.cwd() / f"{file.stem}.coords.npy"


def progress_bar():  # type: ignore[no-untyped-def]
    """A transient rich bar on stderr: stage name, bar, percentage, elapsed time."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description:<10}"), BarColumn(), TaskProgressColumn(),
               TimeElapsedColumn())  # fmt: skip
    return Progress(*columns, console=Console(stderr=True), transient=True)


def _npy_bytes(coords: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(coords, dtype=np.float32))
    return buf.getvalue()


@click.command("project")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@device_option("The backend that projects")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Where to write the coordinates [default: ./<FILE stem>.coords.npy].",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Same seed, same map.")
@click.option("--no-cache", is_flag=True, help="Recompute, and do not store the result.")
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Projection cache [default: the data directory's, <TESSERA_DATA_DIR>/cache].",
)
@click.option(
    "--dask",
    metavar="ADDRESS",
    default=None,
    help="Project on this Dask cluster (tcp://host:8786): landmarks fitted on one worker, the "
    "rest placed on all; the workers read the files. [env: TESSERA_DASK]",
)
def project(
    files: tuple[Path, ...],
    device: str,
    output: Path | None,
    seed: int,
    no_cache: bool,
    cache_dir: Path | None,
    dask: str | None,
) -> None:
    """Project the embeddings of FILES (one file, or several joined into one map; a quoted glob
    too) to 2-D with UMAP and save the (N, 2) float32 map, rows in file order."""
    settings = Settings.load({"device": device, "dask": dask})
    file = files[0]
    start = time.perf_counter()
    if not no_cache and not settings.dask and len(files) == 1:
        # an unchanged file whose map is cached: found without reading (or hashing) the file,
        # and without making a backend or opening the catalog
        found, tag = _cached(file, seed, settings, cache_dir)
        if found is not None:
            _write_map(found, "earlier", tag, start, output, file)
            return
    from tessera_gpu.core import Tessera
    from tessera_gpu.projection import ProjectionCache

    with Tessera(settings) as core:
        cache = None if no_cache else ProjectionCache(cache_dir) if cache_dir else core.cache
        live = core.registry.load(list(files))
        needs_embeddings(
            live.dataset.dim, f"{file.name} has no embeddings (metadata-only): nothing to project"
        )
        with progress_bar() as bar:
            task = bar.add_task("to_device", total=1.0)
            result = core.projections.project(
                live,
                {"seed": seed},
                wait=True,
                cache=cache,
                progress=lambda stage, fraction: bar.update(
                    task, description=stage, completed=fraction
                ),
            )
    where = f"Dask at {settings.dask}" if settings.dask else core.backend.device
    how = result.info.get("algorithm", "umap") if settings.dask else core.backend.name
    _write_map(result, f"on {where}", how, start, output, file)


def _cached(
    file: Path, seed: int, settings: Settings, cache_dir: Path | None
) -> tuple[Projection | None, str]:
    """The cached map of an unchanged ``file`` for this device, and the backend's tag."""
    from tessera_gpu.core.datadir import DataDir
    from tessera_gpu.core.known import KnownFiles
    from tessera_gpu.projection.cache import ProjectionCache, device_tag
    from tessera_gpu.projection.params import ProjectionParams

    data = DataDir(settings.data_dir)
    tag = device_tag(settings.device)
    cache = ProjectionCache(cache_dir or data.cache_dir)
    return KnownFiles(data.cache_dir).cached_map(file, ProjectionParams(seed=seed), cache, tag), tag


def _write_map(
    result: Projection, where: str, how: str, start: float, output: Path | None, file: Path
) -> None:
    """Write the map; say where (``on CPU (2 cores)``, ``earlier``: a cached map) and how
    (the backend) it was made, and what it took."""
    out = output or _default_output(file)
    write_output(out, _npy_bytes(result.coords))
    click.echo(
        f"projected {len(result.coords):,} episodes {where} ({how}, "
        f"kNN {result.info.get('knn', '-')}, cache {result.info.get('cache', 'off')}) "
        f"in {time.perf_counter() - start:.1f} s -> {out}",
        err=True,
    )
