"""The ``tessera`` command line: one small module per command, all on the library.

Importing this package imports nothing else (``tessera doctor`` and the GPU check import
:mod:`.doctor` on machines without the web stack); :func:`main` loads the commands.
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    """The ``tessera`` console script."""
    from tessera_gpu.cli.main import main as run

    run(argv)
