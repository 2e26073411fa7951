"""Projections and maps: the 2-D map of each dataset (a job in the server, computed in this
thread for the CLI, cached on disk by content) and the map indexes built on it for tiles."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Literal, overload

from tessera_gpu.backends import Backend
from tessera_gpu.core.catalog import Catalog
from tessera_gpu.core.contexts import FilterContexts
from tessera_gpu.core.jobs import ProjectionJobs, ProjectionStatus
from tessera_gpu.core.registry import Live, Registry
from tessera_gpu.errors import needs_embeddings
from tessera_gpu.progress import Progress
from tessera_gpu.projection.cache import ProjectionCache, project_cached
from tessera_gpu.projection.params import Projection, ProjectionParams
from tessera_gpu.render.mapcache import MapCache

if TYPE_CHECKING:
    from tessera_gpu.render.maps import ProjectionMaps

__all__ = ["Projections"]

NEEDS_EMBEDDINGS = "This dataset is metadata-only: there are no embeddings to project"


@dataclasses.dataclass(eq=False)
class Projections:
    """The projection of each loaded dataset, and its map indexes."""

    registry: Registry
    catalog: Catalog
    jobs: ProjectionJobs
    maps: MapCache
    contexts: FilterContexts
    backend: Backend

    @overload
    def project(
        self, live: Live, params: dict[str, Any], *, wait: Literal[False] = False,
        cache: ProjectionCache | None = None, progress: Progress | None = None,
    ) -> ProjectionStatus: ...  # fmt: skip

    @overload
    def project(
        self, live: Live, params: dict[str, Any], *, wait: Literal[True],
        cache: ProjectionCache | None = None, progress: Progress | None = None,
    ) -> Projection: ...  # fmt: skip

    def project(
        self,
        live: Live,
        params: dict[str, Any],
        *,
        wait: bool = False,
        cache: ProjectionCache | None = None,
        progress: Progress | None = None,
    ) -> ProjectionStatus | Projection:
        """Project ``live`` with ``params`` (n_neighbors, min_dist, seed...). Without ``wait``:
        (re)start its projection job, the params remembered in the catalog; its status. With
        ``wait``: the map computed in this thread, served from / stored to ``cache`` (what
        ``tessera project`` does; the jobs run the same :func:`project_cached`, or on the Dask
        cluster)."""
        needs_embeddings(live.dataset.dim, NEEDS_EMBEDDINGS)
        projection = ProjectionParams(**params)  # checks them before anything is saved
        if wait:
            dataset = live.dataset
            if dataset.embeddings is None:  # on the Dask cluster, as the server's jobs do
                return self.jobs.project_on_cluster(dataset, projection, cache=cache,
                                                    progress=progress)  # fmt: skip
            return project_cached(
                self.backend.to_device(dataset.embeddings), backend=self.backend,
                params=projection, cache=cache, content_hash=dataset.embeddings_hash,
                progress=progress,
            )  # fmt: skip
        self.catalog.check_writable()
        self.jobs.check_room()
        entry = dataclasses.replace(live.entry, projection=dict(params))
        self.registry.replace(dataclasses.replace(live, entry=entry))
        self.catalog.datasets.put(entry)
        self.jobs.submit(live.id, live.dataset, projection)
        return self.jobs.status(live.id)

    def status(self, live: Live) -> ProjectionStatus:
        return self.jobs.status(live.id)

    def map(self, live: Live) -> ProjectionMaps:
        """The map indexes of the finished projection (409 metadata-only, 503 not yet)."""
        coords = self.jobs.coords(live.id)
        return self.maps.get(live.id, live.dataset, coords,
                             self.contexts.context(live, coords=coords))  # fmt: skip
