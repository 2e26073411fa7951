"""Samples and their exports: the walk of a sample request, from the dataset to the manifest
kept in the catalog. A drawn sample is described by its :class:`~tessera_gpu.sampling.Manifest`
(request, rows, dataset hash, map used), and exported from it again at any time."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from tessera_gpu import __version__
from tessera_gpu.backends import Backend
from tessera_gpu.core.catalog import Catalog, now
from tessera_gpu.core.contexts import FilterContexts
from tessera_gpu.core.graphs import on_cluster
from tessera_gpu.core.jobs import ProjectionJobs
from tessera_gpu.core.registry import Live
from tessera_gpu.errors import needs_embeddings
from tessera_gpu.filters import MAP_FIELD
from tessera_gpu.io.dataset import Dataset
from tessera_gpu.sampling import (
    Manifest,
    SampleRequest,
    build_manifest,
    draw_sample,
    export_filename,
    export_sample,
)
from tessera_gpu.similarity import SimilarityIndex

if TYPE_CHECKING:
    from tessera_gpu.distributed import DaskEngine

__all__ = ["Samples"]


@dataclass(eq=False)
class Samples:
    """Draw, keep, list and export the samples of loaded datasets."""

    catalog: Catalog
    contexts: FilterContexts
    jobs: ProjectionJobs
    backend: Backend
    engine: DaskEngine | None

    def draw(
        self,
        live: Live,
        request: SampleRequest,
        *,
        keep: bool = True,
        similarity: SimilarityIndex | None = None,
    ) -> Manifest:
        """Draw a sample and describe it; ``keep`` it in the catalog (the HTTP API and the
        CLI both come here, so the same request gives the same manifest). ``similarity``
        serves ``dedup_threshold`` (default: the similarity job's index)."""
        if keep:
            self.catalog.check_writable()
        coords, info = self.jobs.result(live.id)
        dataset = live.dataset
        if request.dedup_threshold is not None:
            needs_embeddings(dataset.dim, "This dataset is metadata-only: dedup needs embeddings")
        diverse = None
        device = self.jobs.device_embeddings(live.id)
        if dataset.on_cluster:
            engine = on_cluster(self.engine)
            diverse = lambda rows, n, seed: engine.diversity_sample(  # noqa: E731
                dataset.parts, n, rows=rows, seed=seed
            )
        elif device is None and request.method == "kmeans" and dataset.dim is not None:
            device = self.jobs.device_array(live.id, dataset)  # read (if deferred) and kept
        drawn = draw_sample(
            dataset,
            request,
            backend=self.backend,
            device_embeddings=device,
            context=self.contexts.context(live, coords=coords, similarity=similarity),
            diverse=diverse,
        )
        manifest = build_manifest(
            dataset, request, drawn, dataset_id=live.id, dataset_hash=live.entry.file_hash,
            sample_id=secrets.token_hex(6), created_at=now(), version=__version__,
            projection=_map_used(request, dataset, info),
        )  # fmt: skip
        if keep:
            self.catalog.samples.add(live.id, manifest.sample_id, manifest.created_at, manifest)
        return manifest

    def all(self, live: Live) -> list[Manifest]:
        stored = self.catalog.samples.manifests(live.id)
        with self.catalog.guarded("reading its samples"):
            return [msgspec.json.decode(m, type=Manifest) for m in stored]

    def get(self, live: Live, sample_id: str) -> Manifest:
        """A kept sample (of a registered dataset, or of one the CLI loaded)."""
        stored = self.catalog.samples.manifest(live.id, sample_id)
        with self.catalog.guarded(f"reading sample {sample_id}"):
            return msgspec.json.decode(stored, type=Manifest)

    def export(
        self,
        live: Live,
        sample_id: str,
        fmt: str,
        *,
        by: str | None = None,
        tau: float | None = None,
        complement: bool = False,
    ) -> tuple[bytes, str, str]:
        """The sample file's bytes, media type and download name (``complement``: of the
        dataset's episodes not in the sample)."""
        manifest = self.get(live, sample_id)
        content, media_type = export_sample(live.dataset, manifest, fmt, by=by, tau=tau,
                                            complement=complement)  # fmt: skip
        return content, media_type, export_filename(manifest, fmt, complement=complement)


def _map_used(
    request: SampleRequest, dataset: Dataset, info: dict[str, Any]
) -> dict[str, Any] | None:
    """The projection a ``map within`` condition refers to, for the manifest; else None."""
    if not any(isinstance(c, dict) and c.get("field") == MAP_FIELD for c in request.filter or ()):
        return None
    keys = ("algorithm", "params", "backend", "knn", "init", "n_epochs")
    return {"embeddings_hash": dataset.embeddings_hash, **{k: info.get(k) for k in keys}}
