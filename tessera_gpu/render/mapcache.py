"""The map indexes of every dataset in memory (:class:`MapCache`): one
:class:`~tessera_gpu.render.maps.ProjectionMaps` per dataset, rebuilt when its projection
changes. Owned by the core, which releases a dataset's maps with it."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np

from tessera_gpu.errors import Unavailable, needs_embeddings
from tessera_gpu.filters import FilterContext
from tessera_gpu.io.dataset import Dataset

if TYPE_CHECKING:
    from tessera_gpu.render.maps import ProjectionMaps

__all__ = ["MapCache"]


class MapCache:
    """:class:`ProjectionMaps` per dataset id, rebuilt when the projection changes."""

    def __init__(self, *, gpu: bool = False) -> None:
        self.gpu = gpu  # tiles aggregate through cuDF (a GPU backend's server)
        self._maps: dict[str, ProjectionMaps] = {}
        self._lock = threading.Lock()
        self._building: dict[str, threading.Lock] = {}
        self._warming: set[str] = set()  # the warm-up stages started

    def warm_up(self, *, first_only: bool = False) -> None:
        """Compile the tile kernels in the background (once), e.g. while a page loads and
        the projection runs, so the first tiles come at once: the density kernel every first
        tile needs, then (unless ``first_only``, as a server does at start, so that its
        restore is not slowed for kernels no one asked for yet) the colour-by ones."""
        from tessera_gpu.render.tiles import compile_kernels  # datashader: see get()

        stage = "first" if first_only else "all"
        with self._lock:
            if stage not in self._warming:
                self._warming.add(stage)
                name = f"tessera-tile-warm-up-{stage}"
                threading.Thread(target=compile_kernels, kwargs={"first_only": first_only},
                                 daemon=True, name=name).start()  # fmt: skip

    def get(
        self,
        dataset_id: str,
        dataset: Dataset,
        coords: np.ndarray | None,
        context: FilterContext | None = None,
    ) -> ProjectionMaps:
        """The maps of ``dataset``'s finished projection ``coords``; 503 while there is none.

        A new projection rebuilds everything; new fields or a new filter ``context`` (another
        ``version``) keep the tile index and k-d tree and drop the cached masks and tiles."""
        context = context or FilterContext(coords=coords)
        if coords is None:
            # (a Dask dataset has no embeddings here, but a map)
            needs_embeddings(
                dataset.dim, "This dataset is metadata-only: there is no map without embeddings"
            )
            raise Unavailable(
                "The map is not ready: the projection is still running (or failed)",
                code="projection_not_ready",
            )
        with self._lock:
            current = self._maps.get(dataset_id)
            if current is not None and _same(current, dataset, coords, context):
                return current
            build_lock = self._building.setdefault(dataset_id, threading.Lock())
        with build_lock:  # one build per projection, however many tiles ask at once
            with self._lock:
                current = self._maps.get(dataset_id)
            if current is not None and _same(current, dataset, coords, context):
                return current
            # here, not at the top: drawing pulls in datashader, which a process that never
            # draws a map (the CLI) should not import
            from tessera_gpu.render.maps import ProjectionMaps
            from tessera_gpu.render.nearest import NearestIndex
            from tessera_gpu.render.tiles import TileIndex

            if current is not None and current.coords is coords:
                maps = ProjectionMaps(dataset, coords, current.tiles, current.nearest, context)
            else:
                maps = ProjectionMaps(dataset, coords, TileIndex(coords, gpu=self.gpu),
                                      NearestIndex(coords), context)  # fmt: skip
                maps.tiles.warm()
            with self._lock:
                self._maps[dataset_id] = maps
            return maps

    def forget(self, dataset_id: str) -> None:
        """Drop a dataset's indexes and rendered tiles."""
        with self._lock:
            self._maps.pop(dataset_id, None)
            self._building.pop(dataset_id, None)

    def holds(self, dataset_id: str) -> bool:
        with self._lock:
            return dataset_id in self._maps


def _same(
    maps: ProjectionMaps, dataset: Dataset, coords: np.ndarray, context: FilterContext
) -> bool:
    return (
        maps.coords is coords
        and maps.dataset is dataset
        and maps.context.version == context.version
    )
