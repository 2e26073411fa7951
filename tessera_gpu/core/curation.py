"""Curation: what a user looks at and keeps -- an episode, counts and facets under a filter,
the summary of a group, K-means clusters (their ``cluster`` field added back to the dataset),
and named selections (kept in the catalog, exported as files)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec
import numpy as np

from tessera_gpu.backends import Backend
from tessera_gpu.clustering import kmeans
from tessera_gpu.core.catalog import Catalog, SelectionRecord
from tessera_gpu.core.contexts import FilterContexts
from tessera_gpu.core.graphs import SimilarityGraphs, on_cluster
from tessera_gpu.core.jobs import ProjectionJobs
from tessera_gpu.core.registry import Live, Registry, check_episode
from tessera_gpu.core.samples import Samples
from tessera_gpu.core.tasks import Tasks, TaskStatus
from tessera_gpu.errors import InvalidRequest, needs_embeddings
from tessera_gpu.exports import export_ids, rows_of
from tessera_gpu.facets import Facets, facet_counts
from tessera_gpu.filters import DUPLICATES_FIELD, filter_mask, parse_filter
from tessera_gpu.io.artifacts import ArtifactStore
from tessera_gpu.io.dataset import Field
from tessera_gpu.progress import Progress
from tessera_gpu.projection.cache import backend_tag
from tessera_gpu.sampling import file_extension
from tessera_gpu.selections import Selection, SelectionRequest, combine
from tessera_gpu.similarity import DEFAULT_THRESHOLD, check_threshold
from tessera_gpu.summary import Summary, summarize

if TYPE_CHECKING:
    from tessera_gpu.distributed import DaskEngine

__all__ = [
    "CLUSTERS",
    "ClustersRequest",
    "Count",
    "CountRequest",
    "Curation",
    "Episode",
    "FacetsRequest",
    "SummaryRequest",
    "cluster_field",
]

CLUSTERS = "clusters"  # the analysis job behind the ``cluster`` field
CLUSTER_VERSION = "tessera-kmeans-2"  # greedy k-means++, stopping on the inertia
DEFAULT_CLUSTERS = 20
MAX_CLUSTERS = 1_000


class Episode(msgspec.Struct):
    """One episode: its id, metadata, and whether it has a thumbnail and a GIF."""

    index: int
    episode_id: str
    metadata: dict[str, Any]
    has_thumbnail: bool
    has_gif: bool


class Count(msgspec.Struct, omit_defaults=True):
    """How many episodes match a filter, out of all; with ``dedup_threshold``, ``removed``
    is how many matching episodes the near-duplicate cut dropped (already left out of
    ``count``)."""

    count: int
    total: int
    removed: int | msgspec.UnsetType = msgspec.UNSET


#: What a wrong ``filter`` or ``dedup_threshold`` of a count or facets request is told.
FILTER_RULES = {
    "filter": "filter must be a list of conditions, got {value!r}",
    "dedup_threshold": "dedup_threshold must be a number in (0, 1]: got {value!r}",
}


class CountRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``POST .../count``: a filter (none counts every episode), and optionally a cosine
    distance in (0, 1] that first cuts near-duplicate groups to their keepers."""

    filter: list[Any] | None = None
    dedup_threshold: float | None = None

    rules: ClassVar[dict[str, str]] = FILTER_RULES

    def __post_init__(self) -> None:
        if self.dedup_threshold is not None:
            self.dedup_threshold = check_threshold(self.dedup_threshold, "dedup_threshold")


class FacetsRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``POST .../facets``: the filter whose cross-filter counts to give."""

    filter: list[Any] | None = None

    rules: ClassVar[dict[str, str]] = FILTER_RULES


class SummaryRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``POST .../summary``: the field to split by, a filter, and optional equal-width bins
    (number fields; the default is quantile bins)."""

    group_by: str
    filter: list[Any] | None = None
    bins: int | None = None


class ClustersRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``POST .../clusters``: how many K-means clusters (2 to 1,000), and the seed."""

    k: int = DEFAULT_CLUSTERS
    seed: int = 0

    rules: ClassVar[dict[str, str]] = {
        "k": f"k must be an integer from 2 to {MAX_CLUSTERS:,}: got {{value!r}}",
    }

    def __post_init__(self) -> None:
        if (
            isinstance(self.k, bool)
            or not isinstance(self.k, int)
            or not 2 <= self.k <= MAX_CLUSTERS
        ):
            raise InvalidRequest(self.rules["k"].format(value=self.k))


@dataclass(eq=False)
class Curation:
    """Episodes, counts, facets, group summaries, clusters and selections of loaded datasets."""

    registry: Registry
    catalog: Catalog
    contexts: FilterContexts
    graphs: SimilarityGraphs
    samples: Samples
    tasks: Tasks
    jobs: ProjectionJobs
    clusterings: ArtifactStore
    backend: Backend
    engine: DaskEngine | None

    def create_selection(self, live: Live, request: SelectionRequest) -> Selection:
        """Make a named selection (see :mod:`tessera_gpu.selections`) and keep it."""
        self.catalog.check_writable()
        ds = live.dataset
        if request.kind == "op":
            names = list(request.of or [])
            self.contexts.selection_mask(live, names)  # first, a 400 naming every unknown one
            masks = [self.contexts.selection_mask(live, [n]) for n in names]
            mask = combine(str(request.op), masks)
        elif request.kind == "filter":
            mask = self.contexts.mask(live, request.filter)
        elif request.kind == "episode_ids":
            mask = np.zeros(ds.n_episodes, dtype=bool)
            mask[rows_of(ds, request.episode_ids or [])] = True
        elif request.kind == "sample":
            mask = np.zeros(ds.n_episodes, dtype=bool)
            mask[rows_of(ds, self.samples.get(live, str(request.sample_id)).episode_ids)] = True
        else:
            spec = request.duplicates or {}
            keep_one = {"field": DUPLICATES_FIELD, "op": "keep_one",
                        "value": spec.get("threshold", DEFAULT_THRESHOLD)}  # fmt: skip
            mask = self.contexts.mask(live, [*(spec.get("filter") or []), keep_one])
        ids = ds.episode_ids[mask].tolist()
        record = self.catalog.selections.add(live.id, request.name, request.source(), ids)
        self.contexts.keep_selection(live.id, request.name, mask)
        self.registry.bump(live.id)
        return _selection(record)

    def selections(self, live: Live) -> list[Selection]:
        return [_selection(r) for r in self.catalog.selections.of(live.id)]

    def selection(self, live: Live, name: str) -> Selection:
        return _selection(self.catalog.selections.get(live.id, name))

    def delete_selection(self, live: Live, name: str) -> None:
        self.catalog.selections.remove(live.id, name)
        self.contexts.keep_selection(live.id, name, None)
        self.registry.bump(live.id)

    def export_selection(
        self,
        live: Live,
        name: str,
        fmt: str,
        *,
        by: str | None = None,
        tau: float | None = None,
        complement: bool = False,
    ) -> tuple[bytes, str, str]:
        """A selection (or, ``complement``, the episodes not in it) as a file: its bytes,
        media type and download name."""
        record = self.catalog.selections.get(live.id, name)
        document = msgspec.json.format(msgspec.json.encode(
            {**msgspec.to_builtins(_selection(record)), "dataset_id": live.id,
             "dataset_name": live.dataset.name, "episode_ids": list(record.episode_ids or ())}
        ), indent=2) + b"\n"  # fmt: skip
        content, media = export_ids(live.dataset, list(record.episode_ids or ()), fmt,
                                    document=document, by=by, tau=tau,
                                    complement=complement)  # fmt: skip
        label = f"{live.dataset.name}-{name}" + ("-complement" if complement else "")
        label = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._")
        return content, media, f"{label or 'selection'}.{file_extension(fmt)}"

    def summary(self, live: Live, request: SummaryRequest) -> Summary:
        """The matching episodes split by a field (see :mod:`tessera_gpu.summary`)."""
        mask = self.contexts.mask(live, request.filter) if request.filter else None
        return summarize(live.dataset, mask, request.group_by, bins=request.bins)

    def clusters(self, live: Live, request: ClustersRequest) -> TaskStatus:
        """Start (or join) K-means over the embeddings; its labels become the ``cluster``
        field (``c01`` the largest cluster). 409 in metadata-only mode."""
        dataset, k, seed = live.dataset, request.k, request.seed
        needs_embeddings(dataset.dim, "This dataset is metadata-only: clusters need embeddings")
        if k > dataset.n_episodes:
            raise InvalidRequest(f"k = {k:,} is more than the {dataset.n_episodes:,} episodes")
        params = {"k": k, "seed": seed}

        def run(progress: Progress) -> np.ndarray:
            progress("kmeans", 0.05)
            remote = dataset.embeddings is None  # on the Dask cluster
            tag = "dask" if remote else backend_tag(self.backend)
            key = ArtifactStore.key(str(dataset.embeddings_hash), {**params, "backend": tag},
                                    CLUSTER_VERSION)  # fmt: skip
            found = self.clusterings.load(key)
            if found is not None:
                labels = found[0]["labels"]
            else:
                if remote:
                    engine = on_cluster(self.engine)
                    result = engine.kmeans(dataset.parts, k, seed=seed, progress=progress)
                else:
                    device = self.jobs.device_array(live.id, dataset)
                    result = kmeans(device, k, backend=self.backend, seed=seed)
                labels = result.labels
                info = {"k": k, "seed": seed, "inertia": result.inertia}
                self.clusterings.store(key, {"labels": labels}, info)
            self.registry.set_derived(live.id, {"cluster": cluster_field(labels, k)})
            return labels

        return self.tasks.submit(live.id, CLUSTERS, params, run)

    def clusters_status(self, live: Live) -> TaskStatus:
        """The K-means job behind the ``cluster`` field: absent, queued, running, done, failed."""
        return self.tasks.status(live.id, CLUSTERS)

    def episode(self, live: Live, index: int) -> Episode:
        ds = live.dataset
        check_episode(ds, index)
        return Episode(
            index=index,
            episode_id=str(ds.episode_ids[index]),
            metadata=ds.metadata_at(index),
            has_thumbnail=ds.thumbnail(index) is not None,
            has_gif=ds.gif(index) is not None,
        )

    def count(self, live: Live, request: CountRequest) -> Count:
        ds, threshold = live.dataset, request.dedup_threshold
        mask = self.contexts.mask(live, request.filter)
        if threshold is None:
            return Count(count=int(np.count_nonzero(mask)), total=ds.n_episodes)
        needs_embeddings(ds.dim, "This dataset is metadata-only: dedup needs embeddings")
        kept = self.graphs.keep_one(live, threshold, mask)
        matched, count = int(np.count_nonzero(mask)), int(np.count_nonzero(kept))
        return Count(count=count, total=ds.n_episodes, removed=matched - count)

    def facets(self, live: Live, request: FacetsRequest) -> Facets:
        """Each category and bool value's count among the episodes matching every other
        condition of the filter (:mod:`tessera_gpu.facets`)."""
        ctx, ds = self.contexts.context(live), live.dataset
        conditions = parse_filter(request.filter, ds, context=ctx)
        return facet_counts(ds, conditions, lambda c: filter_mask(ds, c, context=ctx))


def cluster_field(labels: np.ndarray, k: int) -> Field:
    """K-means labels as the ``cluster`` category field: ``c01`` the largest cluster."""
    counts = np.bincount(labels, minlength=k)
    order = np.argsort(-counts, kind="stable")
    rank = np.empty(k, dtype=np.int32)
    rank[order] = np.arange(k, dtype=np.int32)
    width = len(str(k))
    names = tuple(f"c{i + 1:0{width}d}" for i in range(k))
    return Field("cluster", "category", rank[labels].astype(np.int32), names)


def _selection(record: SelectionRecord) -> Selection:
    return Selection(record.name, record.count, record.created_at, record.source)
