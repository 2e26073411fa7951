"""``tessera sample``: the same filter + sample + export functions the HTTP API calls."""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from tessera_gpu import __version__
from tessera_gpu.errors import InvalidRequest
from tessera_gpu.filters import parse_where
from tessera_gpu.io.dataset import load_dataset
from tessera_gpu.sampling import SampleRequest, build_manifest, draw_sample, export_sample
from tessera_gpu.settings import DEVICES, env_var

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
    "--device",
    default="auto",
    show_default=True,
    envvar=env_var("device"),
    type=click.Choice(DEVICES),
    help="Backend for K-means: auto (the GPU if one works), gpu or cpu.",
)
@click.option("-o", "--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write here (atomically) instead of to stdout.")  # fmt: skip
@click.option("--format", "fmt", default="txt", show_default=True,
              type=click.Choice(["txt", "csv", "json"]))  # fmt: skip
def sample(
    file: Path,
    method: str,
    n: int,
    where: tuple[str, ...],
    stratify_by: str | None,
    allocation: str,
    seed: int,
    device: str,
    out: Path | None,
    fmt: str,
) -> None:
    """Pick N episodes of FILE (kmeans, stratified or random) and write their ids."""
    ds = load_dataset(file)
    request = SampleRequest.from_dict(
        {
            "method": method,
            "n": n,
            "seed": seed,
            "filter": [parse_where(w) for w in where],
            "stratify_by": stratify_by,
            "allocation": allocation,
        }
    )
    backend = _backend(device) if method == "kmeans" and ds.embeddings is not None else None
    drawn = draw_sample(ds, request, backend=backend)
    manifest = build_manifest(
        ds,
        request,
        drawn,
        dataset_id=ds.name,
        dataset_hash=file_hash(ds.path),
        sample_id=uuid.uuid4().hex,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        version=__version__,
    )
    content, _ = export_sample(ds, manifest, fmt)
    if out is None:
        click.echo(content, nl=False)  # bytes go to the binary stream unchanged
    else:
        write_atomically(out, content)
    click.echo(
        f"sampled {len(drawn.episode_ids):,} of {drawn.matched:,} matching episodes "
        f"({method}, seed {seed}) -> {out if out is not None else 'stdout'}",
        err=True,
    )


def _backend(device: str) -> Any:
    from tessera_gpu.backends import get_backend

    return get_backend(device)


def file_hash(path: Path) -> str:
    """The SHA-256 of the file's bytes: the same dataset hash the HTTP API records."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(2**20):
            digest.update(block)
    return digest.hexdigest()


def write_atomically(path: Path, content: bytes) -> None:
    """Write to a temporary file beside ``path``, then rename it over ``path``."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise InvalidRequest(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise InvalidRequest(f"cannot write {path}: {exc.strerror}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
