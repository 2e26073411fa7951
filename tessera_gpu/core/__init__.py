"""The core that the CLI and the web app share: :class:`Tessera`, its catalog and its jobs.

The names below load on first use (PEP 562): importing one small part of the core, such as
:mod:`.known` for a cached ``tessera project``, does not import every service and its kernels.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tessera_gpu.core.catalog import Catalog, DatasetEntry
    from tessera_gpu.core.curation import Count, Episode
    from tessera_gpu.core.datadir import DataDir
    from tessera_gpu.core.jobs import ProjectionJobs, ProjectionStatus
    from tessera_gpu.core.registry import Live
    from tessera_gpu.core.tasks import Tasks, TaskStatus
    from tessera_gpu.core.tessera import DatasetSummary, Tessera
    from tessera_gpu.core.uploads import Upload, UploadSlots

_WHERE = {
    "Catalog": "catalog",
    "Count": "curation",
    "DataDir": "datadir",
    "DatasetEntry": "catalog",
    "DatasetSummary": "tessera",
    "Episode": "curation",
    "Live": "registry",
    "ProjectionJobs": "jobs",
    "ProjectionStatus": "jobs",
    "TaskStatus": "tasks",
    "Tasks": "tasks",
    "Tessera": "tessera",
    "Upload": "uploads",
    "UploadSlots": "uploads",
}

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


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
