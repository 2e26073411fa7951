"""``tessera sample``: the HTTP sampling route without a server, through the same core.

The file is loaded the way the server registers it, so the manifest is the one
``POST /api/datasets/{id}/samples`` gives for the same request: the same ``dataset_id``, hash
and episode ids (only ``sample_id`` and ``created_at`` differ). The sample is kept in the data
directory's catalog, as one drawn over HTTP is: ``tessera export FILE --sample ID`` writes it
again.
"""

from __future__ import annotations

from pathlib import Path

import click
import msgspec

from tessera_gpu.backends import get_backend
from tessera_gpu.cli.options import device_option
from tessera_gpu.cli.output import write_output
from tessera_gpu.core import Tessera
from tessera_gpu.filters import parse_where
from tessera_gpu.sampling import Allocation, Method, SampleRequest, export_sample
from tessera_gpu.settings import Settings
from tessera_gpu.similarity import SimilarityIndex

__all__ = ["sample"]


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--method", required=True, type=click.Choice(["kmeans", "stratified", "random"]))
@click.option("-n", "n", required=True, type=int, help="How many episodes to pick.")
@click.option(
    "--where",
    multiple=True,
    metavar="COND",
    help="A filter condition, e.g. 'success == true' or 'task in pick,place' (repeatable, ANDed).",
)
@click.option("--stratify-by", default=None, help="A category or bool field (stratified).")
@click.option(
    "--allocation",
    default="proportional",
    show_default=True,
    type=click.Choice(["proportional", "equal"]),
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--dedup",
    type=float,
    default=None,
    metavar="THRESHOLD",
    help="First cut every near-duplicate group (cosine distance <= THRESHOLD, e.g. 0.05) "
    "to its keeper.",
)
@device_option("The backend for K-means and the near-duplicate graph")
@click.option("-o", "--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write here (atomically) instead of to stdout.")  # fmt: skip
@click.option("--format", "fmt", default="txt", show_default=True,
              type=click.Choice(["txt", "csv", "json"]))  # fmt: skip
def sample(
    file: Path,
    method: Method,
    n: int,
    where: tuple[str, ...],
    stratify_by: str | None,
    allocation: Allocation,
    seed: int,
    dedup: float | None,
    device: str,
    out: Path | None,
    fmt: str,
) -> None:
    """Pick N episodes of FILE (kmeans, stratified or random) and write their ids."""
    request = SampleRequest(
        method,
        n,
        seed=seed,
        filter=tuple(parse_where(w) for w in where),
        stratify_by=stratify_by,
        allocation=allocation,
        dedup_threshold=dedup,
    )
    backend = get_backend(device if method == "kmeans" or dedup is not None else "cpu")
    with Tessera(Settings.load({"device": device}), backend=backend) as core:
        live = core.registry.load(file)
        index = core.graphs.index(live, wait=True) if dedup is not None else None
        assert index is None or isinstance(index, SimilarityIndex)  # built here, not a job
        core.registry.keep(live)
        manifest = core.samples.draw(live, request, similarity=index)
        content, _ = export_sample(live.dataset, manifest, fmt)
    write_output(out, content)
    dedup_cut = manifest.stats.dedup
    cut = ""
    if not isinstance(dedup_cut, msgspec.UnsetType):
        cut = f", {dedup_cut.removed:,} near-duplicates removed first"
    click.echo(
        f"sampled {manifest.n:,} of {manifest.matched:,} matching episodes{cut} "
        f"({method}, seed {seed}) -> {out if out is not None else 'stdout'}\n"
        f"kept as sample {manifest.sample_id}: tessera export {file} --sample "
        f"{manifest.sample_id}",
        err=True,
    )
