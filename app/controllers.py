"""The HTTP API, one controller per resource. Handlers parse, call the core, and serialize.

Slow calls (loading, hashing, filtering, sampling) run in a worker thread
(``sync_to_thread=True``), so the event loop keeps answering while they work.
"""

from __future__ import annotations

import functools
import os
import shutil
from typing import Annotated, Any

import anyio.to_thread
import h5py
import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body, PathParameter

from tessera_gpu import __version__
from tessera_gpu.backends import Backend, backend_summary
from tessera_gpu.core import Count, DatasetSummary, Episode, Live, ProjectionStatus, Tessera
from tessera_gpu.core.curation import CountRequest, FacetsRequest
from tessera_gpu.errors import (
    InsufficientStorage,
    InvalidRequest,
    TesseraError,
    UnsupportedMediaType,
)
from tessera_gpu.facets import Facets
from tessera_gpu.io.shards import MAX_SHARDS
from tessera_gpu.sampling import Manifest, SampleRequest

from .openapi_docs import DatasetRegistration
from .params import (
    DatasetId,
    EpisodeIndex,
    JsonBody,
    LiveDep,
    TesseraDep,
    body_or_empty,
    decode_body,
)
from .selections import ExportBy, ExportComplement, ExportFormat, ExportTau, download
from .uploads import MULTIPART_OVERHEAD, receive_upload, too_large

__all__ = [
    "MAX_JSON_BYTES",
    "DatasetController",
    "EpisodeController",
    "HealthController",
    "ProjectionController",
    "SampleController",
]

#: Largest JSON body (filters, sample requests); uploads have their own limit.
MAX_JSON_BYTES = 8_000_000
MAX_PATH_BODY = 256 * 1024
#: Free disk kept beyond an upload's size (the registry, caches and samples need room too).
DISK_MARGIN = 64 * 1024 * 1024
SampleId = Annotated[str, PathParameter(description="The sample's id.", max_length=64)]
FILTER_DOC = (
    'A filter: {"filter": [{"field": "task", "op": "eq", "value": "pick"}, ...]}; all '
    "conditions must hold. Ops: eq ne in not_in (every field), lt le gt ge between (numbers), "
    "within (the map pseudo-field, a polygon on the finished projection); the episode_id "
    'pseudo-field; {"field": "duplicates", "op": "keep_one", "value": 0.05} keeps one '
    'episode per near-duplicate group. Optional "dedup_threshold": the same cut, counted.'
)
SAMPLE_DOC = (
    '{"method": "kmeans"|"stratified"|"random", "n": int, "seed": int, "filter": [...], '
    '"stratify_by": a category, bool or number field (numbers: quantile bins; stratified, or '
    'kmeans within strata), "allocation": "proportional"|"equal", "dedup_threshold": cosine '
    "distance in (0, 1]: near-duplicate groups cut to their keepers before sampling}"
)


class BackendInfo(msgspec.Struct, omit_defaults=True):
    """The compute backend: its name (cpu, cupy, cuml), device, and GPU memory in GiB;
    ``standin`` when the numpy stand-in runs the GPU tier (tests and rehearsals only), and
    ``gpu_fallback`` when ``auto`` found no usable GPU (with the reason)."""

    name: str
    device: str
    gpu_memory_free_gib: float | msgspec.UnsetType = msgspec.UNSET
    gpu_memory_total_gib: float | msgspec.UnsetType = msgspec.UNSET
    standin: str | msgspec.UnsetType = msgspec.UNSET
    gpu_fallback: str | msgspec.UnsetType = msgspec.UNSET


class HostMemory(msgspec.Struct):
    """This process's resident memory and the host's total and available memory, in GiB
    (null where the platform does not say)."""

    process_rss_gib: float | None = None
    host_total_gib: float | None = None
    host_available_gib: float | None = None


class DaskInfo(msgspec.Struct, omit_defaults=True):
    """The Dask cluster (``--dask``): its scheduler, workers, threads, memory (bytes), GPUs,
    and whether K-means and kNN go to ``cuml.dask``; ``error`` when it cannot be reached."""

    scheduler: str
    workers: int = 0
    threads: int = 0
    memory_limit: int = 0
    gpus: int = 0
    cuml_dask: bool = False
    error: str | msgspec.UnsetType = msgspec.UNSET


class CatalogHealth(msgspec.Struct, omit_defaults=True):
    """The catalog (datasets, samples, selections): ``ok``, or ``damaged`` with ``error`` (what
    the integrity check or a failed read found; writes are then refused); ``backups`` is how
    many copies of it the data directory keeps."""

    status: str
    backups: int
    error: str | msgspec.UnsetType = msgspec.UNSET


class Health(msgspec.Struct, omit_defaults=True):
    status: str
    version: str
    backend: BackendInfo
    hdf5_version: str
    datasets: int
    memory: HostMemory
    catalog: CatalogHealth
    dask: DaskInfo | msgspec.UnsetType = msgspec.UNSET


class HealthController(Controller):
    """Is the server up, and what is it running on."""

    path = "/api/health"
    tags = ("health",)

    @get("/", operation_id="getHealth", summary="Server health", sync_to_thread=True)
    def health(self, tessera: TesseraDep) -> Health:
        """Version, compute backend (name, device, GPU memory; ``standin`` when the numpy stand-in
        runs the GPU tier, ``gpu_fallback`` when no GPU was usable), host memory, HDF5 version,
        the catalog (status ``degraded`` when it is damaged, with the reason); with ``--dask``,
        the cluster (status ``degraded`` when it cannot be reached)."""
        problem = tessera.catalog.check()
        catalog = CatalogHealth(status="ok", backups=len(tessera.catalog.backed_up()))
        if problem is not None:
            catalog.status, catalog.error = "damaged", problem
        out = Health(
            status="ok" if problem is None else "degraded",
            version=__version__,
            backend=_backend_info(tessera.backend),
            hdf5_version=h5py.version.hdf5_version,
            datasets=len(tessera.registry.all()),
            memory=_host_memory(),
            catalog=catalog,
        )
        if tessera.engine is not None:
            try:
                out.dask = msgspec.convert(tessera.engine.describe(), DaskInfo)
            except TesseraError as exc:
                out.dask = DaskInfo(scheduler=tessera.engine.address, error=exc.message)
                out.status = "degraded"
        return out


def _backend_info(backend: Backend) -> BackendInfo:
    return msgspec.convert(backend_summary(backend), BackendInfo)


def _host_memory() -> HostMemory:
    out = HostMemory()
    try:
        with open("/proc/self/statm") as f:
            out.process_rss_gib = round(
                int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30, 3
            )
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) for line in f}
        out.host_total_gib = round(info["MemTotal"] / 2**20, 2)
        out.host_available_gib = round(info["MemAvailable"] / 2**20, 2)
    except (OSError, KeyError, ValueError, IndexError):
        pass  # not Linux: leave them null
    return out


class DatasetController(Controller):
    """Registered datasets: list, add (upload or path), read, remove."""

    path = "/api/datasets"
    tags = ("datasets",)

    @get("/", operation_id="listDatasets", summary="List datasets", sync_to_thread=True)
    def list_datasets(self, tessera: TesseraDep) -> list[DatasetSummary]:
        """A summary of every registered dataset, oldest first."""
        return [tessera.summary(live) for live in tessera.registry.all()]

    @post(
        "/",
        operation_id="addDataset",
        summary="Add a dataset (upload, or a path on the server)",
        status_code=201,
        operation_class=DatasetRegistration,
        request_max_body_size=None,  # the upload limit is enforced while streaming
    )
    async def add_dataset(
        self, request: Request[Any, Any, Any], tessera: TesseraDep
    ) -> DatasetSummary:
        """Upload an HDF5 file as the multipart field ``file``, or register files on the
        server's disk (only under an ``--allow-path`` directory) with JSON ``{"path": ...}``,
        or ``{"paths": [...], "name": ...}`` to join several into one dataset (one map; each
        episode's file in the ``source`` field). A glob such as ``shards/*.h5`` joins its
        matches.

        Each file is validated before it is kept; the same bytes always give the same dataset.
        Answers 413 (over the upload limit), 415 (not HDF5), 422 (breaks the format, or files
        that do not join: a different D, embeddings in some only, an episode id in two; the
        message names the files), 403 (a path outside the allowed directories), 404 (a glob
        matching nothing) or 507 (embeddings too large for memory without ``--dask``).
        """
        content_type, options = request.content_type
        if content_type == RequestEncodingType.MULTI_PART:
            live = await _receive(request, tessera, options.get("boundary"))
        elif content_type == "application/json":
            asked = _paths_from(await _small_body(request))
            live = await anyio.to_thread.run_sync(
                functools.partial(tessera.register_paths, asked.paths or [], name=asked.name)
            )
        else:
            raise UnsupportedMediaType(
                "Send the file as multipart/form-data (field 'file'), or JSON {\"path\": ...}; "
                f"got Content-Type {content_type or '(none)'!r}",
                code="unsupported_media_type",
            )
        return tessera.summary(live)

    @get("/{dataset_id:str}", operation_id="getDataset", summary="One dataset", sync_to_thread=True)
    def get_dataset(self, tessera: TesseraDep, live: LiveDep) -> DatasetSummary:
        """The dataset's size, mode, previews, fields (with values or ranges) and projection."""
        return tessera.summary(live)

    @delete(
        "/{dataset_id:str}",
        operation_id="deleteDataset",
        summary="Remove a dataset",
        sync_to_thread=True,
    )
    def delete_dataset(self, tessera: TesseraDep, dataset_id: DatasetId) -> None:
        """Forget the dataset, release its memory, and remove its uploaded file, samples and
        projection cache. A file registered by path is never deleted from the disk.
        """
        tessera.delete(dataset_id)


async def _receive(request: Request[Any, Any, Any], tessera: Tessera, boundary: str | None) -> Live:
    if not boundary:
        raise InvalidRequest("multipart/form-data without a boundary", code="bad_multipart")
    limit = tessera.settings.max_upload_bytes
    announced = request.headers.get("content-length")
    size = int(announced) if announced is not None and announced.isdigit() else None
    if size is not None and size > limit + MULTIPART_OVERHEAD:
        raise too_large(limit)
    with tessera.uploads.slot():
        _check_free_space(tessera, size if size is not None else limit)
        upload = await receive_upload(request.stream(), boundary, tessera.data, limit=limit)
        return await anyio.to_thread.run_sync(tessera.register_upload, upload)


def _check_free_space(tessera: Tessera, size: int) -> None:
    """507 unless the data directory has room for the upload (its declared size, or the
    upload limit when it declares none) and :data:`DISK_MARGIN` to spare."""
    free = shutil.disk_usage(tessera.data.root).free
    if free < size + DISK_MARGIN:
        raise InsufficientStorage(
            f"Not enough free disk for this upload: {free / 1e6:.0f} MB free in the data "
            f"directory, {(size + DISK_MARGIN) / 1e6:.0f} MB needed",
        )


async def _small_body(request: Request[Any, Any, Any]) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_PATH_BODY:
            raise InvalidRequest(f"The JSON body is too long: more than {MAX_PATH_BODY:,} bytes")
    return bytes(body)


class PathsRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``{"path": ...}`` or ``{"paths": [...], "name": ...}``."""

    path: str | None = None
    paths: list[str] | None = None
    name: str | None = None


def _paths_from(body: bytes) -> PathsRequest:
    """The files to register (``paths`` filled either way); the core checks the name."""
    usage = 'The JSON body must be {"path": "/path/to/file.h5"} or {"paths": [...], "name": ...}'
    try:
        asked = decode_body(body, PathsRequest)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{usage}: {exc.message}") from None
    if (asked.path is None) == (asked.paths is None):
        raise InvalidRequest(usage)
    paths = [asked.path] if asked.path is not None else list(asked.paths or [])
    if not paths or not all(paths):
        raise InvalidRequest(f"{usage}: a path is empty")
    if len(paths) > MAX_SHARDS:
        raise InvalidRequest(f"Too many paths: {len(paths):,} > {MAX_SHARDS:,}")
    if any("\x00" in p for p in paths):
        raise InvalidRequest("The path contains a NUL byte")
    asked.paths = paths
    return asked


class ProjectionRequest(msgspec.Struct, forbid_unknown_fields=True):
    """UMAP parameters; each is optional (the default is used)."""

    n_neighbors: Annotated[int, msgspec.Meta(ge=2, le=200)] | None = None
    min_dist: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None
    seed: Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)] | None = None

    def given(self) -> dict[str, Any]:
        return {k: v for k in self.__struct_fields__ if (v := getattr(self, k)) is not None}


class ProjectionController(Controller):
    """A dataset's 2-D map: its status, and (re)starting it."""

    path = "/api/datasets/{dataset_id:str}/projection"
    tags = ("projection",)

    @get("/", operation_id="getProjection", summary="Projection status", sync_to_thread=False)
    def status(self, tessera: TesseraDep, live: LiveDep) -> ProjectionStatus:
        """absent, queued, running (with stage and progress 0..1), done (with bounds
        [x0, y0, x1, y1]) or failed (with the error)."""
        return tessera.projections.status(live)

    @post(
        "/",
        operation_id="startProjection",
        summary="(Re)start the projection",
        status_code=202,
        sync_to_thread=True,
        dto=JsonBody[ProjectionRequest],
        return_dto=None,
    )
    def start(
        self,
        tessera: TesseraDep,
        live: LiveDep,
        data: Annotated[
            ProjectionRequest | None,
            Body(description="Optional UMAP parameters: n_neighbors, min_dist, seed."),
        ] = None,
    ) -> ProjectionStatus:
        """Queue a new projection with these parameters (remembered across restarts); a
        running one for this dataset is dropped. 409 for a metadata-only dataset."""
        return tessera.projections.project(live, body_or_empty(data, ProjectionRequest).given())


class EpisodeController(Controller):
    """Episodes of a dataset: one episode's details, and how many match a filter."""

    path = "/api/datasets/{dataset_id:str}"
    tags = ("episodes",)

    @get(
        "/episodes/{index:int}",
        operation_id="getEpisode",
        summary="One episode",
        sync_to_thread=True,
    )
    def episode(
        self,
        tessera: TesseraDep,
        live: LiveDep,
        index: EpisodeIndex,
    ) -> Episode:
        """The episode's id, its metadata, and whether it has a thumbnail and a GIF."""
        return tessera.curation.episode(live, index)

    @post(
        "/count",
        operation_id="countEpisodes",
        summary="Count matching episodes",
        status_code=200,
        sync_to_thread=True,
        dto=JsonBody[CountRequest],
        return_dto=None,
    )
    def count(
        self,
        tessera: TesseraDep,
        live: LiveDep,
        data: Annotated[CountRequest | None, Body(description=FILTER_DOC)] = None,
    ) -> Count:
        """How many episodes match the filter (``count``) out of all (``total``); no body or
        no filter counts every episode. With ``dedup_threshold`` (a cosine distance in
        (0, 1]), near-duplicate groups among the matches are first cut to their keepers and
        ``removed`` says how many that dropped (503 while the similarity graph is built)."""
        return tessera.curation.count(live, body_or_empty(data, CountRequest))

    @post(
        "/facets",
        operation_id="countFacets",
        summary="Cross-filter counts of each value",
        status_code=200,
        sync_to_thread=True,
        dto=JsonBody[FacetsRequest],
        return_dto=None,
    )
    def facets(
        self,
        tessera: TesseraDep,
        live: LiveDep,
        data: Annotated[FacetsRequest | None, Body(description=FILTER_DOC)] = None,
    ) -> Facets:
        """For each category and bool field, how many episodes hold each value among those
        matching every condition *except* the field's own (what the filter panel shows next
        to each value); ``matched`` of ``total`` match the whole filter."""
        return tessera.curation.facets(live, body_or_empty(data, FacetsRequest))


class SampleController(Controller):
    """Training subsets of a dataset: draw, list, read, export."""

    path = "/api/datasets/{dataset_id:str}/samples"
    tags = ("samples",)

    @post("/", operation_id="createSample", summary="Draw a sample", sync_to_thread=True,
          dto=JsonBody[SampleRequest], return_dto=None)  # fmt: skip
    def create(
        self,
        tessera: TesseraDep,
        live: LiveDep,
        data: Annotated[SampleRequest | None, Body(description=SAMPLE_DOC)] = None,
    ) -> Manifest:
        """Draw n episodes among those matching the filter and save the manifest. K-means
        needs embeddings (409 in metadata-only mode), not the projection."""
        return tessera.samples.draw(live, body_or_empty(data, SampleRequest))

    @get("/", operation_id="listSamples", summary="List samples", sync_to_thread=True)
    def list_samples(self, tessera: TesseraDep, live: LiveDep) -> list[Manifest]:
        """Every sample manifest of the dataset, oldest first."""
        return tessera.samples.all(live)

    @get("/{sample_id:str}", operation_id="getSample", summary="One sample", sync_to_thread=True)
    def get_sample(self, tessera: TesseraDep, live: LiveDep, sample_id: SampleId) -> Manifest:
        """The sample's manifest: request, seed, dataset hash, episode ids and stats."""
        return tessera.samples.get(live, sample_id)

    @get(
        "/{sample_id:str}/export",
        operation_id="exportSample",
        summary="Download a sample",
        sync_to_thread=True,
        media_type="text/plain",  # documented as text; csv and json set their own type
    )
    def export(
        self,
        tessera: TesseraDep,
        live: LiveDep,
        sample_id: SampleId,
        format: ExportFormat = "txt",
        by: ExportBy = None,
        tau: ExportTau = None,
        complement: ExportComplement = False,
    ) -> Response[bytes]:
        """The sample as a file download: txt, csv, json (the manifest), lerobot (episode
        indices for LeRobot) or weights (mixture weights by field ``by``, exponent ``tau``);
        with ``complement``, the dataset's episodes not in the sample."""
        content, media_type, filename = tessera.samples.export(
            live, sample_id, format, by=by, tau=tau, complement=complement
        )
        return download(content, media_type, filename)
