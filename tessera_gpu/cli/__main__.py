"""``python -m tessera_gpu.cli``: the ``tessera`` command."""

from tessera_gpu.cli.main import main

main()
