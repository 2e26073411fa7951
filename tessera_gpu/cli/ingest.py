"""``tessera ingest``: a LeRobot root or robomimic file to a Tessera file, with a progress bar.

Ctrl-C (or SIGTERM) stops it and leaves no partial file: the output appears whole or not at
all (:mod:`tessera_gpu.ingest.output`).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import click

from tessera_gpu.errors import InvalidRequest

__all__ = ["ingest", "progress_bar"]

EMBED_MODES = ("trajectory", "image", "both")  # tessera_gpu.ingest.pipeline's, without its imports


def _triple(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in value.split(","))
    except ValueError:
        numbers = ()
    if len(numbers) != 3:
        raise click.BadParameter(f"give 3 numbers, one per channel, e.g. 0.5,0.5,0.5: {value!r}")
    return numbers


@click.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--out",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The Tessera file to write, atomically. Above --shard-size episodes: "
    "OUT-000.h5, OUT-001.h5, ... and the line that serves them as one.",
)
@click.option(
    "--embed",
    type=click.Choice(EMBED_MODES),
    default="trajectory",
    show_default=True,
    help="trajectory: state and action, no model; image: --image-encoder on frames "
    "of --camera; both: the two side by side.",
)
@click.option(
    "--camera",
    default=None,
    help="The camera for previews and image embeddings: a video feature of a LeRobot "
    "root, an image array of a robomimic obs/ [default: the first].",
)
@click.option(
    "--image-encoder",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="An ONNX vision model (e.g. DINOv2 or SigLIP exported to ONNX), for --embed "
    "image|both; needs the onnx extra.",
)
@click.option(
    "--image-size",
    type=click.IntRange(16, 2048),
    default=None,
    help="The model's input size when it is not fixed in the model [default: 224].",
)
@click.option(
    "--image-mean",
    callback=_triple,
    default=None,
    metavar="R,G,B",
    help="Normalisation mean [default: the model's image_mean metadata, else ImageNet's].",
)
@click.option(
    "--image-std",
    callback=_triple,
    default=None,
    metavar="R,G,B",
    help="Normalisation std [default: the model's image_std metadata, else ImageNet's].",
)
@click.option(
    "--image-frames",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Frames per episode, evenly spaced, whose embeddings are averaged.",
)
@click.option("--no-gifs", is_flag=True, help="Thumbnails only (faster, smaller).")
@click.option(
    "--no-previews", is_flag=True, help="No thumbnails and no GIFs: no video is decoded (fastest)."
)
@click.option(
    "--name",
    default=None,
    help="The dataset field's value [default: the root's folder name or file stem].",
)
@click.option(
    "--fps",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="A robomimic file's frame rate [default: its control_freq, else 20].",
)
@click.option(
    "--id-prefix",
    default="ep_",
    show_default=True,
    help="Episode ids are this prefix and the source's index on 6 digits.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=None,
    help="Worker threads [default: one per CPU].",
)
@click.option(
    "--shard-size",
    type=click.IntRange(1, 200_000),
    default=200_000,
    show_default=True,
    help="Most episodes in one output file.",
)
def ingest(
    source: Path,
    out: Path,
    embed: str,
    camera: str | None,
    image_encoder: Path | None,
    image_size: int | None,
    image_mean: tuple[float, ...] | None,
    image_std: tuple[float, ...] | None,
    image_frames: int,
    no_gifs: bool,
    no_previews: bool,
    name: str | None,
    fps: float | None,
    id_prefix: str,
    workers: int | None,
    shard_size: int,
) -> None:
    """Turn SOURCE (a LeRobot v3.0 or v2.1 root, or a robomimic HDF5) into a Tessera file."""
    from tessera_gpu.ingest.images import ImageSettings
    from tessera_gpu.ingest.pipeline import IngestOptions, join_line
    from tessera_gpu.ingest.pipeline import ingest as run

    if image_encoder is not None and embed == "trajectory":
        raise InvalidRequest("--image-encoder is for --embed image or --embed both")
    image = None
    if image_encoder is not None:
        image = ImageSettings(image_encoder, image_size, image_mean, image_std, image_frames)
    options = IngestOptions(
        embed=embed,  # type: ignore[arg-type]
        camera=camera,
        thumbnails=not no_previews,
        gifs=not (no_gifs or no_previews),
        image=image,
        workers=workers,
        shard_size=shard_size,
        name=name,
        fps=fps,
        id_prefix=id_prefix,
    )
    with stopped_by_sigterm(), progress_bar("Ingesting") as progress:
        result = run(source, out, options, progress=progress)
    rate = result.n_episodes / max(result.seconds, 1e-9)
    what = f"{result.dim}-d {embed} embeddings" if result.dim else "no embeddings"
    previews = (
        "no previews"
        if result.camera is None or no_previews
        else (f"thumbnails{'' if no_gifs else ' and GIFs'} of {result.camera}")
    )
    names = ", ".join(str(p) for p in result.paths)
    click.echo(
        f"wrote {names}: {result.n_episodes:,} episodes, {what}, {previews}, "
        f"{len(result.fields)} fields ({result.seconds:.1f} s, {rate:,.1f} episodes/s)"
    )
    if result.note:
        click.echo(result.note)
    if len(result.paths) > 1:
        click.echo(f"serve them as one dataset: {join_line(result.paths, out.stem)}")


@contextlib.contextmanager
def progress_bar(label: str) -> Iterator[Any]:
    """A rich progress bar on stderr when it is a terminal (gone when done); yields
    ``update(done, total)``."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("episodes"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    console = Console(stderr=True)
    if not console.is_terminal:  # a log or a pipe gets the result line only
        yield lambda done, total: None
        return
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


@contextlib.contextmanager
def stopped_by_sigterm() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the temporary files are removed on the way out."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (a test runner): nothing to install
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
