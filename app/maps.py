"""The map's HTTP routes: tiles, legend, nearest episode, point overlays, and previews.

Handlers parse, call :mod:`tessera_gpu.render` through the core's per-projection caches
(:meth:`tessera_gpu.core.Tessera.map`), and serialize. Everything CPU-bound runs in a worker
thread.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from litestar import Controller, Request, Response, get
from litestar.params import PathParameter, QueryParameter

from tessera_gpu.core.registry import Live, check_episode
from tessera_gpu.errors import InvalidRequest, NotFound
from tessera_gpu.filters import parse_filter_param
from tessera_gpu.io.dataset import Dataset
from tessera_gpu.render.colors import Legend, legend
from tessera_gpu.render.maps import (
    EpisodePoint,
    Points,
    episode_point,
    points_payload,
)
from tessera_gpu.render.previews import check_preview
from tessera_gpu.render.tiles import render_tile

from .params import ColorByParam, DatasetId, EpisodeIndex, FilterParam, LiveDep, TesseraDep

__all__ = ["MAX_POINTS", "MapController", "PreviewController"]

#: Most points ``GET .../points`` returns; more matches are thinned evenly (``truncated``).
MAX_POINTS = 20_000
PREVIEW_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
    # A dataset id is its file's content hash, so a preview URL's bytes never change.
    "Cache-Control": "public, max-age=31536000, immutable",
}


class MapController(Controller):
    """The density map of a dataset's projection and what sits on it."""

    path = "/api/datasets/{dataset_id:str}"
    tags = ("map",)

    @get("/tiles/{z:int}/{x:int}/{tile:str}", operation_id="getTile", summary="One map tile",
         sync_to_thread=True, media_type="image/png")  # fmt: skip
    def tile(
        self,
        tessera: TesseraDep,
        live: LiveDep,
        z: Annotated[int, PathParameter(description="Zoom level, 0 (whole map) to 12.")],
        x: Annotated[int, PathParameter(description="Column, 0 to 2**z - 1, from the left.")],
        tile: Annotated[
            str,
            PathParameter(
                description="Row and extension: '{y}.png', y from "
                "0 (bottom) to 2**z - 1 (TMS order).",
                max_length=16,
            ),
        ],
        color_by: ColorByParam = None,
        filter_: FilterParam = None,
    ) -> Response[bytes]:
        """A 256x256 PNG drawn by datashader: density (eq_hist) or ``color_by`` a field;
        episodes outside the filter are hidden; transparent where there are none. The
        pyramid is a square around the projection (``GET .../map`` gives its numbers).
        400 for a tile outside the pyramid; 503 while the projection runs."""
        y = _tile_row(tile)
        pm = tessera.projections.map(live)
        pm.tiles.pyramid.check(z, x, y)
        spec = pm.color_by(color_by)
        key, mask = pm.mask(parse_filter_param(filter_))
        cache_key = (z, x, y, spec.key, key)
        png = pm.cached_tile(cache_key)
        if png is None:
            png = render_tile(pm.tiles.view(key, mask), spec, z, x, y)
            pm.keep_tile(cache_key, png)
        return Response(png, media_type="image/png",
                        headers={"Cache-Control": "private, max-age=3600"})  # fmt: skip

    @get("/legend", operation_id="getLegend", summary="The map's legend", sync_to_thread=True)
    def map_legend(
        self,
        tessera: TesseraDep,
        live: LiveDep,
        color_by: ColorByParam = None,
        filter_: FilterParam = None,
    ) -> Legend:
        """The colours the tiles use: per value with its count under the filter (category),
        or the colormap and span (number, density)."""
        pm = tessera.projections.map(live)
        _, mask = pm.mask(parse_filter_param(filter_))
        return legend(pm.color_by(color_by), mask)

    @get("/points/nearest", operation_id="getNearestEpisode", summary="Episode under the cursor",
         sync_to_thread=True)  # fmt: skip
    def nearest(
        self,
        tessera: TesseraDep,
        live: LiveDep,
        dataset_id: DatasetId,
        x: Annotated[float, QueryParameter(description="Map x, in data units.")],
        y: Annotated[float, QueryParameter(description="Map y, in data units.")],
        radius: Annotated[
            float | None,
            QueryParameter(
                ge=0, description="Search radius in data units; any distance when absent."
            ),
        ] = None,
        filter_: FilterParam = None,
    ) -> EpisodePoint:
        """The nearest episode (among the filter's matches) to ``(x, y)``: index, id,
        position, metadata and preview URLs (null when the dataset has none). 404 when no
        episode is within ``radius``."""
        if not (np.isfinite(x) and np.isfinite(y)):
            raise InvalidRequest("x and y must be finite numbers")
        pm = tessera.projections.map(live)
        key, mask = pm.mask(parse_filter_param(filter_))
        row = pm.nearest.nearest(x, y, radius=radius, mask=mask, key=key)
        if row is None:
            raise NotFound("No episode within the radius", code="no_episode_near")
        return episode_point(pm.dataset, dataset_id, row, pm.coords)

    @get("/points", operation_id="getPoints", summary="Points for an overlay",
         sync_to_thread=True)  # fmt: skip
    def points(
        self,
        tessera: TesseraDep,
        live: LiveDep,
        fields: Annotated[
            str | None,
            QueryParameter(
                description="Comma-separated metadata fields to include.", max_length=4_096
            ),
        ] = None,
        sample_id: Annotated[
            str | None, QueryParameter(description="A sample's id: its episodes.", max_length=64)
        ] = None,
        filter_: FilterParam = None,
        limit: Annotated[
            int,
            QueryParameter(
                ge=1, le=MAX_POINTS, description=f"At most this many points (max {MAX_POINTS:,})."
            ),
        ] = MAX_POINTS,
    ) -> Points:
        """Map positions of a filter's matches, or of a sample's episodes (``sample_id``;
        with a filter, those of them it matches: the page's sample markers follow its
        filter), with the chosen fields. Over ``limit``, an evenly spaced subset is returned
        and ``truncated`` is true; ``count`` is always the full number."""
        pm = tessera.projections.map(live)
        names = _field_names(pm.dataset, fields)
        _, mask = pm.mask(parse_filter_param(filter_))
        if sample_id is not None:
            ids = tessera.samples.get(live, sample_id).episode_ids
            rows = _rows_of(pm.dataset, ids)
            rows = rows if mask is None else rows[mask[rows]]
        else:
            rows = np.arange(pm.dataset.n_episodes) if mask is None else np.flatnonzero(mask)
        return points_payload(pm, rows, names, limit)


def _tile_row(tile: str) -> int:
    stem, dot, ext = tile.partition(".")
    if ext != "png" or not dot or not stem.isdigit():
        raise InvalidRequest(
            f"tile must be '{{y}}.png' with a non-negative integer y, got {tile!r}",
            code="tile_out_of_range",
        )
    return int(stem)


def _field_names(dataset: Dataset, fields: str | None) -> list[str]:
    names = [n.strip() for n in (fields or "").split(",") if n.strip()]
    for name in names:
        if name not in dataset.fields:
            raise InvalidRequest(
                f"unknown field {name!r}; fields: {', '.join(dataset.fields) or '(none)'}"
            )
    return names


def _rows_of(dataset: Dataset, episode_ids: list[str]) -> np.ndarray:
    rows = [dataset.index_of(eid) for eid in episode_ids]
    return np.array(sorted(r for r in rows if r is not None), dtype=np.int64)


class PreviewController(Controller):
    """An episode's stored preview images, served only when they really are images."""

    path = "/api/datasets/{dataset_id:str}/episodes/{index:int}"
    tags = ("episodes",)

    @get("/thumbnail", operation_id="getThumbnail", summary="Episode thumbnail",
         sync_to_thread=True, media_type="image/jpeg")  # fmt: skip
    def thumbnail(
        self, request: Request[Any, Any, Any], live: LiveDep, index: EpisodeIndex,
    ) -> Response[bytes]:  # fmt: skip
        """The stored thumbnail. Its type comes from its magic bytes (JPEG, GIF, PNG, WebP);
        anything else is 415. 404 when the episode has none."""
        return _preview(request, live, index, "thumbnail")

    @get("/gif", operation_id="getGif", summary="Episode GIF", sync_to_thread=True,
         media_type="image/gif")  # fmt: skip
    def gif(
        self, request: Request[Any, Any, Any], live: LiveDep, index: EpisodeIndex,
    ) -> Response[bytes]:  # fmt: skip
        """The stored animated GIF, checked like the thumbnail. 404 when there is none."""
        return _preview(request, live, index, "gif")


def _preview(request: Request[Any, Any, Any], live: Live, index: int, kind: str) -> Response[bytes]:
    dataset = live.dataset
    check_episode(dataset, index)
    etag = f'"{live.id}-{index}-{kind}"'
    headers = {**PREVIEW_HEADERS, "ETag": etag}
    if request.headers.get("if-none-match") == etag:  # only ever sent for bytes we served
        return Response(b"", status_code=304, headers=headers)
    data = dataset.thumbnail(index) if kind == "thumbnail" else dataset.gif(index)
    if data is None:
        raise NotFound(f"Episode {index} has no {kind}", code="preview_not_found")
    return Response(data, media_type=check_preview(data), headers=headers)
