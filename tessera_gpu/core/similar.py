"""Find similar episodes and near-duplicate groups: the walk of a find-similar request, from
the dataset to the answer, over its similarity graph and its filter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from tessera_gpu.core.contexts import FilterContexts
from tessera_gpu.core.graphs import SimilarityGraphs, on_cluster
from tessera_gpu.core.registry import Live, check_episode
from tessera_gpu.core.tasks import TaskStatus
from tessera_gpu.errors import InvalidRequest
from tessera_gpu.similarity import DEFAULT_THRESHOLD, MAX_SIMILAR, SimilarityIndex, check_threshold

if TYPE_CHECKING:
    from tessera_gpu.distributed import DaskEngine

__all__ = [
    "MAX_GROUPS_PAGE",
    "DuplicateGroups",
    "DuplicatesRequest",
    "Neighbor",
    "SimilarEpisodes",
    "SimilarSearch",
]

MAX_GROUPS_PAGE = 1_000


class Neighbor(msgspec.Struct):
    index: int
    episode_id: str
    distance: float


class SimilarEpisodes(msgspec.Struct):
    """An episode's nearest episodes by cosine distance in the full embedding space (itself
    excluded, the filter applied), nearest first."""

    index: int
    episode_id: str
    metric: str
    neighbors: list[Neighbor]


class DuplicateGroups(msgspec.Struct):
    """Near-duplicate groups at a cosine-distance ``threshold``: connected components of the
    pairs within it, largest first; each group lists its keeper first. ``removed`` episodes
    go when every group keeps one; ``groups`` is the page ``offset``..``offset + limit``."""

    threshold: float
    metric: str
    n_groups: int
    n_in_groups: int
    removed: int
    offset: int
    limit: int
    groups: list[list[int]]


class DuplicatesRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``POST .../duplicates``: a cosine-distance threshold in (0, 1], a filter, a page."""

    threshold: float = DEFAULT_THRESHOLD
    filter: list[Any] | None = None
    limit: int = 100
    offset: int = 0

    def __post_init__(self) -> None:
        self.threshold = check_threshold(self.threshold)
        if not 0 <= self.limit <= MAX_GROUPS_PAGE:
            raise InvalidRequest(f"limit must be from 0 to {MAX_GROUPS_PAGE:,}: got {self.limit}")
        if self.offset < 0:
            raise InvalidRequest(f"offset must be 0 or more: got {self.offset}")


@dataclass(eq=False)
class SimilarSearch:
    """Similar episodes and near-duplicate groups of a loaded dataset."""

    graphs: SimilarityGraphs
    contexts: FilterContexts
    engine: DaskEngine | None

    def similar(
        self,
        live: Live,
        index: int,
        k: int,
        raw_filter: Any = None,
        *,
        similarity: SimilarityIndex | None = None,
    ) -> SimilarEpisodes | TaskStatus:
        """The ``k`` nearest episodes of episode ``index`` (cosine, full space), among the
        filter's matches; the job's status while the similarity graph is being built
        (``similarity``: an index the caller built, the CLI's). On a Dask cluster: from the
        graph when its neighbours suffice, else an exact scan there."""
        check_episode(live.dataset, index)
        if not 1 <= k <= MAX_SIMILAR:
            raise InvalidRequest(f"k must be from 1 to {MAX_SIMILAR:,}: got {k}")
        found = similarity if similarity is not None else self.graphs.index(live)
        if not isinstance(found, SimilarityIndex):
            return found
        mask = None
        if raw_filter:
            mask = self.contexts.mask(live, raw_filter, similarity=similarity)
        if live.dataset.embeddings is not None:
            rows, dist = found.similar(live.dataset.embeddings, index, k, mask)
        else:
            got = found.similar_in_graph(index, k, mask)
            rows, dist = got or on_cluster(self.engine).nearest(
                live.dataset.parts, index, k, allowed=mask
            )
        ids = live.dataset.episode_ids
        return SimilarEpisodes(
            index=index, episode_id=str(ids[index]), metric="cosine",
            neighbors=[Neighbor(int(r), str(ids[r]), float(d))
                       for r, d in zip(rows, dist, strict=True)],
        )  # fmt: skip

    def duplicates(self, live: Live, request: DuplicatesRequest) -> DuplicateGroups | TaskStatus:
        """Near-duplicate groups (see :class:`DuplicateGroups`); the job's status while the
        similarity graph is being built."""
        found = self.graphs.index(live)
        if not isinstance(found, SimilarityIndex):
            return found
        mask = self.contexts.mask(live, request.filter) if request.filter else None
        groups = found.groups(self.graphs.vectors(live), request.threshold, mask)
        page = groups.groups[request.offset : request.offset + request.limit]
        return DuplicateGroups(
            threshold=request.threshold, metric="cosine", n_groups=len(groups.groups),
            n_in_groups=groups.n_in_groups, removed=int(groups.removed().size),
            offset=request.offset, limit=request.limit, groups=[g.tolist() for g in page],
        )  # fmt: skip
