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

from tessera_gpu.backends import Backend
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
    from tessera_gpu.core import Tessera
    from tessera_gpu.projection import ProjectionCache

    settings = Settings.load({"device": device, "dask": dask})
    file = files[0]
    with Tessera(settings) as core:
        cache = None if no_cache else ProjectionCache(cache_dir) if cache_dir else core.cache
        start = time.perf_counter()
        # an unchanged file whose map is cached: found without reading (or hashing) the file
        found = None if cache is None or len(files) > 1 else core.projections.cached(
            file, {"seed": seed}, cache
        )  # fmt: skip
        if found is not None:
            _write_map(found, len(found.coords), settings, core.backend, start, output, file)
            return
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
    _write_map(result, live.dataset.n_episodes, settings, core.backend, start, output, file)


def _write_map(
    result: Projection, n: int, settings: Settings, backend: Backend, start: float,
    output: Path | None, file: Path,
) -> None:  # fmt: skip
    out = output or _default_output(file)
    write_output(out, _npy_bytes(result.coords))
    where = f"Dask at {settings.dask}" if settings.dask else backend.device
    how = result.info.get("algorithm", "umap") if settings.dask else backend.name
    click.echo(
        f"projected {n:,} episodes on {where} ({how}, "
        f"kNN {result.info.get('knn', '-')}, cache {result.info.get('cache', 'off')}) "
        f"in {time.perf_counter() - start:.1f} s -> {out}",
        err=True,
    )
