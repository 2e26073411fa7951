"""The core that the CLI and the web app share: :class:`Tessera`, its catalog and its jobs."""

from tessera_gpu.core.catalog import Catalog, DatasetEntry
from tessera_gpu.core.curation import Count, Episode
from tessera_gpu.core.datadir import DataDir
from tessera_gpu.core.jobs import ProjectionJobs, ProjectionStatus
from tessera_gpu.core.registry import Live
from tessera_gpu.core.tasks import Tasks, TaskStatus
from tessera_gpu.core.tessera import DatasetSummary, Tessera
from tessera_gpu.core.uploads import Upload, UploadSlots

__all__ = [
    "Catalog",
    "Count",
    "DataDir",
    "DatasetEntry",
    "DatasetSummary",
    "Episode",
    "Live",
    "ProjectionJobs",
    "ProjectionStatus",
    "TaskStatus",
    "Tasks",
    "Tessera",
    "Upload",
    "UploadSlots",
]
