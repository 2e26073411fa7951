"""Options several commands share, declared once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from tessera_gpu.backends import MODES
from tessera_gpu.settings import env_var

__all__ = ["device_option"]


def device_option(purpose: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--device auto|gpu|cpu`` (``TESSERA_DEVICE``), with what the command uses it for."""
    return click.option(
        "--device",
        default="auto",
        show_default=True,
        envvar=env_var("device"),
        type=click.Choice(MODES),
        help=f"{purpose}: auto (the GPU if one works), gpu (fail without one) or cpu.",
    )
