"""Where a command's result goes: stdout, or a file written atomically."""

from __future__ import annotations

from pathlib import Path

import click

from tessera_gpu.errors import InvalidRequest
from tessera_gpu.io.files import write_atomic

__all__ = ["write_output"]


def write_output(path: Path | None, content: bytes) -> None:
    """Write ``content`` to ``path`` whole (or to stdout when ``path`` is None); a file that
    cannot be written is one clear error, and the old file stays."""
    if path is None:
        click.echo(content, nl=False)  # bytes go to the binary stream unchanged
        return
    try:
        write_atomic(path, content)
    except OSError as exc:
        raise InvalidRequest(f"cannot write {path}: {exc.strerror or exc}") from None
