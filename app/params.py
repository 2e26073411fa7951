"""The parameter types every controller shares, and the one dependency that resolves a
dataset: a handler that names ``live: LiveDep`` gets the loaded dataset of its path's
``dataset_id`` (404 ``dataset_not_found`` before the handler runs)."""

from __future__ import annotations

from typing import Annotated

from litestar.di import NamedDependency
from litestar.params import PathParameter, QueryParameter

from tessera_gpu.core import Live, Tessera

__all__ = [
    "ColorByParam",
    "DatasetId",
    "EpisodeIndex",
    "FilterParam",
    "LiveDep",
    "TesseraDep",
    "provide_live",
]

TesseraDep = NamedDependency[Tessera]
LiveDep = NamedDependency[Live]

DatasetId = Annotated[
    str,
    PathParameter(description="The dataset's id (from its files' content hash).", max_length=64),
]
EpisodeIndex = Annotated[int, PathParameter(ge=0, description="Row of the episode, from 0.")]
FilterParam = Annotated[
    str | None,
    QueryParameter(
        name="filter",
        description='URL-encoded JSON list of conditions, e.g. [{"field":"task","op":"eq",'
        '"value":"pick"}]; the same filters as POST .../count, including map "within".',
        max_length=200_000,
    ),
]
ColorByParam = Annotated[
    str | None,
    QueryParameter(
        description="density (default), a category or bool field (one glasbey colour per "
        "value), or a number field (its mean per pixel on viridis, from its blue up).",
        max_length=256,
    ),
]


def provide_live(tessera: TesseraDep, dataset_id: DatasetId) -> Live:
    """The loaded dataset of the path's ``dataset_id``."""
    return tessera.registry.get(dataset_id)
