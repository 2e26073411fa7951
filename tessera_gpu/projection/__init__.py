"""The 2-D map: UMAP's kNN graph, spectral initialisation and layout, and the disk cache."""

from tessera_gpu.projection.cache import ProjectionCache, project_cached
from tessera_gpu.projection.params import Projection, ProjectionParams
from tessera_gpu.projection.project import project

__all__ = ["Projection", "ProjectionCache", "ProjectionParams", "project", "project_cached"]
