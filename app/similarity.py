"""Similar episodes and near-duplicates: cosine distance in the full embedding space.

The routes need the dataset's similarity graph, which a job builds once per dataset (started
when the dataset is registered, or by the first request). Until it is done they answer
``202 Accepted`` with the job's status; then ``200`` with the result.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Response, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Body, QueryParameter

from tessera_gpu.core import TaskStatus
from tessera_gpu.core.similar import DuplicateGroups, DuplicatesRequest, SimilarEpisodes
from tessera_gpu.filters import parse_filter_param
from tessera_gpu.similarity import MAX_SIMILAR

from .params import EpisodeIndex, FilterParam, JsonBody, LiveDep, TesseraDep, body_or_empty

__all__ = ["SimilarityController"]

PENDING = {202: ResponseSpec(TaskStatus, description="The similarity graph is being built.")}
DUPLICATES_DOC = (
    '{"threshold": cosine distance in (0, 1] (default 0.05), "filter": [...], "limit": groups '
    'per page (0 to 1,000, default 100), "offset": first group (default 0)}'
)


def _answer(result: Any) -> Response[Any]:
    status = 202 if isinstance(result, TaskStatus) else 200
    return Response(result, status_code=status)


class SimilarityController(Controller):
    """Find similar episodes, near-duplicate groups, and the job that builds the graph."""

    path = "/api/datasets/{dataset_id:str}"
    tags = ("similarity",)

    @get("/similarity", operation_id="getSimilarity", summary="Similarity graph status",
         sync_to_thread=True)  # fmt: skip
    def status(self, tessera: TesseraDep, live: LiveDep) -> TaskStatus:
        """The job that builds the dataset's cosine kNN graph (and its ``uniqueness`` and
        ``duplicate_group`` fields): absent, queued, running, done or failed. 409 in
        metadata-only mode."""
        return tessera.graphs.status(live)

    @get("/episodes/{index:int}/similar", operation_id="getSimilarEpisodes",
         summary="Episodes similar to one", sync_to_thread=True,
         responses=PENDING)  # fmt: skip
    def similar(
        self,
        tessera: TesseraDep,
        live: LiveDep,
        index: EpisodeIndex,
        k: Annotated[
            int,
            QueryParameter(ge=1, le=MAX_SIMILAR, description="How many (1 to 1,000)."),
        ] = 10,
        filter_: FilterParam = None,
    ) -> Response[SimilarEpisodes]:
        """The ``k`` episodes nearest this one by cosine distance in the full embedding space,
        nearest first, itself excluded, among the filter's matches. Exact. 202 with the job's
        status while the graph is being built; 404 for an episode out of range; 409 in
        metadata-only mode."""
        raw = parse_filter_param(filter_)
        return _answer(tessera.similar.similar(live, index, k, raw))

    @post("/duplicates", operation_id="findDuplicates", summary="Near-duplicate groups",
          sync_to_thread=True, status_code=200, responses=PENDING,
          dto=JsonBody[DuplicatesRequest], return_dto=None)  # fmt: skip
    def duplicates(
        self,
        tessera: TesseraDep,
        live: LiveDep,
        data: Annotated[DuplicatesRequest | None, Body(description=DUPLICATES_DOC)] = None,
    ) -> Response[DuplicateGroups]:
        """Groups of episodes within ``threshold`` cosine distance of each other (connected
        components of such pairs, among the filter's matches), largest first, each with its
        keeper (the member nearest the group's mean) first and the others in index order.
        ``removed`` is how many episodes keeping one per group drops. 202 while the graph is
        being built; 400 for a threshold outside (0, 1]; 409 in metadata-only mode."""
        return _answer(tessera.similar.duplicates(live, body_or_empty(data, DuplicatesRequest)))
