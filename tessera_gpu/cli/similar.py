"""``tessera similar``: the episodes nearest one episode, by cosine distance in the full space.

The same similarity index the server builds (and the same disk cache), computed here in the
foreground with a progress bar the first time.
"""

from __future__ import annotations

from pathlib import Path

import click
import msgspec

from tessera_gpu.cli.options import device_option
from tessera_gpu.cli.output import write_output
from tessera_gpu.core import Tessera
from tessera_gpu.core.similar import SimilarEpisodes
from tessera_gpu.errors import NotFound
from tessera_gpu.filters import parse_where
from tessera_gpu.settings import Settings
from tessera_gpu.similarity import MAX_SIMILAR, SimilarityIndex

__all__ = ["similar"]


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.argument("episode_id")
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1, MAX_SIMILAR),
              help="How many similar episodes.")  # fmt: skip
@click.option("--where", multiple=True, metavar="COND",
              help="Only among episodes matching this condition (repeatable, ANDed).")  # fmt: skip
@device_option("The backend that builds the kNN graph")
@click.option("--format", "fmt", default="txt", show_default=True,
              type=click.Choice(["txt", "json"]),
              help="txt: id and distance a line; json: the HTTP route's answer.")  # fmt: skip
@click.option("-o", "--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write here (atomically) instead of to stdout.")  # fmt: skip
def similar(
    file: Path,
    episode_id: str,
    k: int,
    where: tuple[str, ...],
    device: str,
    fmt: str,
    out: Path | None,
) -> None:
    """The K episodes of FILE most similar to EPISODE_ID (cosine, full embedding space)."""
    from tessera_gpu.cli.project import progress_bar

    with Tessera(Settings.load({"device": device})) as core:
        live = core.registry.load(file)
        row = live.dataset.index_of(episode_id)
        if row is None:
            raise NotFound(f"Episode not found: {episode_id!r} is not in {file.name}",
                           code="episode_not_found")  # fmt: skip
        with progress_bar() as bar:
            task = bar.add_task("similarity", total=1.0)
            index = core.graphs.index(
                live, wait=True, progress=lambda stage, fraction: bar.update(
                    task, description=stage, completed=fraction),
            )  # fmt: skip
        assert isinstance(index, SimilarityIndex)  # built here, not a job
        answer = core.similar.similar(live, row, k, [parse_where(w) for w in where],
                                      similarity=index)  # fmt: skip
        assert isinstance(answer, SimilarEpisodes)  # the index was given: never a job
    if fmt == "json":
        content = msgspec.json.format(msgspec.json.encode(answer), indent=2) + b"\n"
    else:
        content = "".join(f"{n.episode_id}\t{n.distance:.6f}\n" for n in answer.neighbors).encode()
    write_output(out, content)
