"""``tessera export``: a selection or a sample of a file, in the formats of the HTTP exports.

Selections and samples live in the data directory's catalog (made by ``tessera serve``); the
file is identified by its content, as the server identifies it.
"""

from __future__ import annotations

from pathlib import Path

import click

from tessera_gpu.cli.output import write_output
from tessera_gpu.core import Tessera
from tessera_gpu.errors import InvalidRequest
from tessera_gpu.exports import FORMATS
from tessera_gpu.settings import Settings

__all__ = ["export"]


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--selection", default=None, help="A named selection of FILE.")
@click.option("--sample", "sample_id", default=None, help="A sample's id instead.")
@click.option(
    "--format",
    "fmt",
    default="txt",
    show_default=True,
    type=click.Choice(list(FORMATS)),
    help="lerobot: episode indices for LeRobot; weights: mixture weights (--by).",
)
@click.option("--by", default=None, help="weights: the field whose groups are balanced.")
@click.option(
    "--tau",
    default=None,
    type=click.FloatRange(0, 1),
    help="weights: 1 keeps the natural mix, 0 makes the groups equal [default: 1].",
)
@click.option("--complement", is_flag=True,
              help="The episodes NOT in the selection or sample (to drop, e.g. with "
              "lerobot-edit-dataset --operation.type delete_episodes).")  # fmt: skip
@click.option("-o", "--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write here (atomically) instead of to stdout.")  # fmt: skip
def export(
    file: Path,
    selection: str | None,
    sample_id: str | None,
    fmt: str,
    by: str | None,
    tau: float | None,
    complement: bool,
    out: Path | None,
) -> None:
    """Write a selection (or a sample) of FILE, e.g. for lerobot-train --dataset.episodes."""
    if (selection is None) == (sample_id is None):
        raise InvalidRequest("give --selection NAME or --sample ID (one of them)")
    with Tessera(Settings.load()) as core:
        live = core.registry.load(file)
        if selection is not None:
            content, _, _ = core.curation.export_selection(live, selection, fmt, by=by, tau=tau,
                                                           complement=complement)  # fmt: skip
        else:
            content, _, _ = core.samples.export(live, str(sample_id), fmt, by=by, tau=tau,
                                                complement=complement)  # fmt: skip
    write_output(out, content)
