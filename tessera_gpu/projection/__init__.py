"""The 2-D map: UMAP's kNN graph, spectral initialisation and layout, and the disk cache."""

from tessera_gpu.projection.cache import ProjectionCache
from tessera_gpu.projection.project import Projection, ProjectionParams, project, project_cached

__all__ = ["Projection", "ProjectionCache", "ProjectionParams", "project", "project_cached"]
