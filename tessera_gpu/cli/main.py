"""The ``tessera`` command line. Each command parses, calls the library, and prints.

Every :class:`~.errors.TesseraError` becomes one line, ``error: <message>``, and exit code 1.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import msgspec

from tessera_gpu import __version__, configure_process
from tessera_gpu.errors import TesseraError
from tessera_gpu.io.dataset import Dataset, FieldSummary, load_dataset
from tessera_gpu.io.safety import Limits

__all__ = ["cli", "main"]


class TesseraGroup(click.Group):
    """A click group that turns Tessera's own errors into one clear line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TesseraError as exc:
            click.echo(f"error: {exc.message}", err=True)
            ctx.exit(1)


@click.group(cls=TesseraGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tessera")
def cli() -> None:
    """Tessera: see episode datasets as density maps and pick training subsets."""
    configure_process()


@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--max-file-mb",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Also apply the upload size limit (the server's default is 100 MB).",
)
def validate(file: Path, as_json: bool, max_file_mb: float | None) -> None:
    """Check FILE against the embedding format and print a compact report."""
    limits = Limits(max_file_bytes=None if max_file_mb is None else int(max_file_mb * 1e6))
    ds = load_dataset(file, limits=limits)
    if as_json:
        report = {"valid": True, **msgspec.structs.asdict(ds.summary())}
        click.echo(msgspec.json.format(msgspec.json.encode(report), indent=2))
    else:
        click.echo(format_report(ds))


def format_report(ds: Dataset) -> str:
    """A compact, aligned, human report of a valid dataset."""
    previews = [p for p, has in (("thumbnails", ds.has_thumbnails), ("gifs", ds.has_gifs)) if has]
    lines = [
        f"{ds.path.name}: valid",
        f"  episodes   {ds.n_episodes:,}",
        f"  dimension  {ds.dim if ds.dim is not None else '-'}",
        f"  mode       {ds.mode}",
        f"  previews   {', '.join(previews) or 'none'}",
        f"  file size  {ds.file_size / 1e6:.1f} MB",
    ]
    if ds.fields:
        width = max(len(name) for name in ds.fields)
        lines.append("  fields")
        for f in ds.fields.values():
            lines.append(f"    {f.name:<{width}}  {f.kind:<8}  {_describe_field(f.summary())}")
    return "\n".join(lines)


def _describe_field(summary: FieldSummary) -> str:
    kind = summary.kind
    if kind in ("category", "bool"):
        assert isinstance(summary.values, dict)
        items = list(summary.values.items())
        shown = " · ".join(f"{k} {v:,}" for k, v in items[:6])
        return shown + (f" · … ({len(items)} values)" if len(items) > 6 else "")
    if kind in ("int", "float"):
        return f"{summary.min} – {summary.max}"  # noqa: RUF001 - an en dash: a range
    if kind == "string":
        assert isinstance(summary.n_unique, int)
        return f"{summary.n_unique:,} distinct"
    assert isinstance(summary.shape, list)
    return f"per-episode shape {tuple(summary.shape)} (not filterable)"


@cli.command("demo-data")
@click.argument("out", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--episodes", default=2000, show_default=True, type=click.IntRange(10, 200_000))
@click.option("--dim", default=512, show_default=True, type=click.IntRange(8, 2048))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--no-previews", is_flag=True, help="Skip thumbnails and GIFs (faster, smaller).")
def demo_data(out: Path, episodes: int, dim: int, seed: int, no_previews: bool) -> None:
    """Build a realistic robot-episode dataset at OUT (rendered tabletop scenes)."""
    from rich.progress import Progress

    from tessera_gpu.io.demo import build_demo

    with Progress(transient=True) as bar:
        task = bar.add_task("Rendering episodes", total=episodes)
        build_demo(
            out,
            episodes=episodes,
            dim=dim,
            seed=seed,
            previews=not no_previews,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    click.echo(f"wrote {out} ({episodes:,} episodes, {dim}-d, {out.stat().st_size / 1e6:.1f} MB)")


from tessera_gpu.cli.sample import sample  # noqa: E402

cli.add_command(sample)

from tessera_gpu.cli.serve import serve  # noqa: E402

cli.add_command(serve)

from tessera_gpu.cli.project import project  # noqa: E402

cli.add_command(project)

from tessera_gpu.cli.doctor import doctor  # noqa: E402

cli.add_command(doctor)

from tessera_gpu.cli.similar import similar  # noqa: E402

cli.add_command(similar)

from tessera_gpu.cli.export import export  # noqa: E402

cli.add_command(export)

from tessera_gpu.cli.restore import restore  # noqa: E402

cli.add_command(restore)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="tessera")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
