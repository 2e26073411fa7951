"""Filter contexts: what a dataset's filters can refer to beyond its own fields -- the finished
map (``map within``), its named selections, and the near-duplicate cut of its similarity
graph -- and the masks they give. Selection masks are cached here, per dataset."""

from __future__ import annotations

import functools
import threading
from typing import Any

import numpy as np

from tessera_gpu.core.catalog import Catalog
from tessera_gpu.core.graphs import SimilarityGraphs
from tessera_gpu.core.jobs import ProjectionJobs
from tessera_gpu.core.registry import Live, Registry
from tessera_gpu.errors import InvalidRequest, NotFound
from tessera_gpu.filters import FilterContext, filter_mask, parse_filter
from tessera_gpu.similarity import SimilarityIndex

__all__ = ["FilterContexts"]


class FilterContexts:
    """The filter contexts and masks of loaded datasets (thread-safe)."""

    def __init__(
        self, registry: Registry, catalog: Catalog, jobs: ProjectionJobs, graphs: SimilarityGraphs
    ) -> None:
        self.registry = registry
        self.catalog = catalog
        self.jobs = jobs
        self.graphs = graphs
        self._selection_masks: dict[tuple[str, str], np.ndarray] = {}
        self._lock = threading.Lock()

    def context(
        self,
        live: Live,
        *,
        coords: np.ndarray | None = None,
        similarity: SimilarityIndex | None = None,
    ) -> FilterContext:
        """What filters on ``live`` can refer to: the map ``coords`` (default: its finished
        projection, if any), its named selections, and the near-duplicate cut of
        ``similarity`` (default: the similarity job's graph). Works for a dataset the CLI
        loaded without registering it."""
        keep_one = None
        if live.dataset.dim is not None and similarity is not None:
            vectors = self.graphs.vectors(live)
            keep_one = lambda threshold, mask: similarity.keep_mask(  # noqa: E731
                vectors, threshold, mask
            )[0]
        elif live.dataset.dim is not None:
            keep_one = functools.partial(self.graphs.keep_one, live)
        return FilterContext(
            coords=self.jobs.coords(live.id) if coords is None else coords,
            selections=functools.partial(self.selection_mask, live),
            keep_one=keep_one,
            version=str(self.registry.version(live.id)),
        )

    def mask(
        self, live: Live, raw_filter: Any, *, similarity: SimilarityIndex | None = None
    ) -> np.ndarray:
        """The rows that a request's filter matches (all, for none)."""
        ctx = self.context(live, similarity=similarity)
        ds = live.dataset
        return filter_mask(ds, parse_filter(raw_filter, ds, context=ctx), context=ctx)

    def selection_mask(self, live: Live, names: list[str]) -> np.ndarray:
        """The union of named selections as a mask; 400 naming the unknown ones, a selection
        another client deletes while this request reads it included."""
        known = {r.name for r in self.catalog.selections.of(live.id)}
        unknown = [n for n in names if n not in known]
        out = np.zeros(live.dataset.n_episodes, dtype=bool)
        for name in names:
            if name in unknown:
                continue
            with self._lock:
                mask = self._selection_masks.get((live.id, name))
            if mask is None:
                try:
                    ids = self.catalog.selections.get(live.id, name).episode_ids or ()
                except NotFound:  # deleted since the listing above
                    unknown.append(name)
                    continue
                mask = np.zeros(live.dataset.n_episodes, dtype=bool)
                rows = [r for r in map(live.dataset.index_of, ids) if r is not None]
                mask[rows] = True
                self.keep_selection(live.id, name, mask)
            out |= mask
        if unknown:
            left = sorted({r.name for r in self.catalog.selections.of(live.id)})
            raise InvalidRequest(
                f"unknown selection{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}; "
                f"selections: {', '.join(left) or '(none)'}",
                code="unknown_selection",
            )
        return out

    def keep_selection(self, dataset_id: str, name: str, mask: np.ndarray | None) -> None:
        """Cache a selection's mask (None: forget it)."""
        with self._lock:
            if mask is None:
                self._selection_masks.pop((dataset_id, name), None)
            else:
                self._selection_masks[(dataset_id, name)] = mask

    def forget(self, dataset_id: str) -> None:
        with self._lock:
            for key in [k for k in self._selection_masks if k[0] == dataset_id]:
                del self._selection_masks[key]
