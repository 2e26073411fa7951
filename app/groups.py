"""Groups of episodes: the group summary table, and the clusters that make a ``cluster`` field."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post
from litestar.params import Body

from tessera_gpu.core import TaskStatus
from tessera_gpu.core.curation import ClustersRequest, SummaryRequest
from tessera_gpu.summary import Summary

from .params import JsonBody, LiveDep, TesseraDep, body_or_empty

__all__ = ["GroupController"]

SUMMARY_DOC = (
    '{"group_by": a category, bool or number field (numbers: quantile bins, or "bins": n '
    'equal-width bins), "filter": [...]}'
)
CLUSTERS_DOC = '{"k": clusters, 2 to 1,000 (default 20), "seed": 0}'


class GroupController(Controller):
    """The matching episodes split by a field, and K-means clusters as a field."""

    path = "/api/datasets/{dataset_id:str}"
    tags = ("groups",)

    @post("/summary", operation_id="summarizeGroups", summary="Group summary", status_code=200,
          sync_to_thread=True, dto=JsonBody[SummaryRequest], return_dto=None)  # fmt: skip
    def summary(
        self,
        tessera: TesseraDep,
        live: LiveDep,
        data: Annotated[SummaryRequest, Body(description=SUMMARY_DOC)],
    ) -> Summary:
        """Per group: count, success rate (with a bool ``success`` field), episode-length
        mean and quartiles (with an ``episode_length`` field), and the top values of every
        other category field; largest group first."""
        return tessera.curation.summary(live, data)

    @post("/clusters", operation_id="startClusters", summary="Cluster the embeddings",
          status_code=202, sync_to_thread=True, dto=JsonBody[ClustersRequest],
          return_dto=None)  # fmt: skip
    def start(
        self,
        tessera: TesseraDep,
        live: LiveDep,
        data: Annotated[ClustersRequest | None, Body(description=CLUSTERS_DOC)] = None,
    ) -> TaskStatus:
        """K-means over the embeddings (cached by content, k and seed); when done, every
        episode has a ``cluster`` field (``c01`` the largest). The same k joins a running
        job. 409 in metadata-only mode."""
        return tessera.curation.clusters(live, body_or_empty(data, ClustersRequest))

    @get("/clusters", operation_id="getClusters", summary="Clusters job status",
         sync_to_thread=True)  # fmt: skip
    def status(self, tessera: TesseraDep, live: LiveDep) -> TaskStatus:
        """The K-means job behind the ``cluster`` field: absent, queued, running, done, failed."""
        return tessera.curation.clusters_status(live)
