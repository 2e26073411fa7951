"""The ``tessera`` command line. Each command parses, calls the library, and prints.

Every :class:`~.errors.TesseraError` becomes one line, ``error: <message>``, and exit code 1.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator, MutableMapping
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


class LazyCommands(MutableMapping[str, click.Command]):
    """The group's commands by name; a command's module is imported when it is first looked
    up, so ``tessera ingest --help`` loads neither the web app nor the map stack."""

    def __init__(self, loaded: dict[str, click.Command], lazy: dict[str, str]) -> None:
        self._loaded = dict(loaded)
        self._lazy = dict(lazy)  # name -> "module:attribute"

    def __getitem__(self, name: str) -> click.Command:
        if name not in self._loaded and name in self._lazy:
            module, _, attribute = self._lazy.pop(name).partition(":")
            self._loaded[name] = getattr(importlib.import_module(module), attribute)
        return self._loaded[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._lazy.pop(name, None)
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        self._lazy.pop(name, None)
        self._loaded.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter([*self._loaded, *self._lazy])

    def __len__(self) -> int:
        return len(self._loaded) + len(self._lazy)


cli.commands = LazyCommands(  # type: ignore[assignment]
    dict(cli.commands),
    {
        name: f"tessera_gpu.cli.{module}:{attribute}"
        for name, module, attribute in (
            ("sample", "sample", "sample"),
            ("serve", "serve", "serve"),
            ("project", "project", "project"),
            ("doctor", "doctor", "doctor"),
            ("similar", "similar", "similar"),
            ("export", "export", "export"),
            ("ingest", "ingest", "ingest"),
            ("restore-catalog", "restore", "restore"),
        )
    },
)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="tessera")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
