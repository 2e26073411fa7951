"""The ``tessera`` command line: one small module per command, all on the library."""

from tessera_gpu.cli.main import cli, main

__all__ = ["cli", "main"]
