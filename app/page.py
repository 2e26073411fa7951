"""The page: ``/`` and ``/datasets/{id}``, its Bokeh map document, and its local assets.

The HTML shell (``templates/page.html``) lays out the panels; the map inside it is a Bokeh
document (``GET /api/datasets/{id}/map``: a ``json_item``, built by :mod:`.mapdoc`) whose
``TMSTileSource`` asks for exactly the tiles of :class:`tessera_gpu.render.tiles.Pyramid`.
BokehJS is served from the installed ``bokeh`` package and the page's own JS/CSS from
``app/static``: nothing comes from a CDN, so the page works on an air-gapped machine.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from string import Template
from typing import Annotated, Any
from urllib.parse import urlencode

import bokeh
import msgspec
from bokeh.util.paths import bokehjs_path
from litestar import Controller, Response, get
from litestar.datastructures import CacheControlHeader
from litestar.params import QueryParameter
from litestar.static_files import create_static_files_router

from tessera_gpu import __version__
from tessera_gpu.errors import InvalidRequest
from tessera_gpu.filters import parse_filter_param
from tessera_gpu.render.tiles import Pyramid, PyramidSpec

from .params import ColorByParam, DatasetId, FilterParam, LiveDep, TesseraDep

__all__ = ["PAGE_HANDLERS", "PageController"]

STATIC_DIR = Path(__file__).parent / "static"
TEMPLATE = Template((Path(__file__).parent / "templates" / "page.html").read_text())
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-eval'; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'"
)  # BokehJS compiles CustomJS callbacks (eval) and injects its own styles


class PageController(Controller):
    """The single-page app and the Bokeh document of a dataset's map."""

    path = "/"
    include_in_schema = False

    @get("/", sync_to_thread=False)
    def home(self, tessera: TesseraDep) -> Response[str]:
        """The page with no dataset chosen: the script opens the newest or asks for one."""
        tessera.maps.warm_up()
        return page_response(None)

    @get("/datasets/{dataset_id:str}", sync_to_thread=False)
    def dataset_page(self, tessera: TesseraDep, dataset_id: DatasetId) -> Response[str]:
        """The page for one dataset (the URL's query holds filter, colour and view)."""
        tessera.maps.warm_up()
        return page_response(dataset_id)

    @get("/api/datasets/{dataset_id:str}/map", operation_id="getMapDocument",
         summary="The map document", include_in_schema=True, tags=["map"],
         sync_to_thread=True)  # fmt: skip
    def map_doc(
        self,
        tessera: TesseraDep,
        live: LiveDep,
        color_by: ColorByParam = None,
        filter_: FilterParam = None,
        view: Annotated[
            str | None, QueryParameter(description="Initial view 'x0,y0,x1,y1'.", max_length=200)
        ] = None,
    ) -> MapDocument:
        """The map as a Bokeh ``json_item`` (tile layer, sample overlay, selection tools),
        its tile pyramid, and ``tile_token``, the ``v`` that tile URLs carry so a browser
        never shows a cached tile of an older projection. 503 until the projection is done,
        409 in metadata-only mode."""
        pm = tessera.projections.map(live)
        pm.color_by(color_by)  # a bad colour or filter is a 400 now, not 256 broken tiles
        pm.mask(parse_filter_param(filter_))
        query = {k: v for k, v in (("color_by", color_by), ("filter", filter_)) if v}
        url = f"/api/datasets/{live.id}/tiles/{{Z}}/{{X}}/{{Y}}.png?" + urlencode(
            {**query, "v": pm.token}
        )
        from .mapdoc import map_document  # Bokeh's models: loaded by the warm-up, or here

        pyramid = pm.tiles.pyramid
        return MapDocument(
            pyramid=pyramid.spec(),
            tile_token=pm.token,
            doc=map_document(pyramid, url, view=_parse_view(view, pyramid)),
        )


class MapDocument(msgspec.Struct):
    """A dataset's map for the page: the tile pyramid, the token tile URLs carry (``v``) and
    the Bokeh document (``json_item``)."""

    pyramid: PyramidSpec
    tile_token: str
    doc: dict[str, Any]


def page_response(dataset_id: str | None) -> Response[str]:
    """The HTML shell with asset URLs that change with each release (long caching)."""
    body = TEMPLATE.substitute(
        version=html.escape(__version__),
        bokeh_version=html.escape(bokeh.__version__),
        dataset_id=html.escape(dataset_id or ""),
    )
    return Response(body, media_type="text/html; charset=utf-8",
                    headers={"Content-Security-Policy": PAGE_CSP,
                             "X-Content-Type-Options": "nosniff",
                             "Cache-Control": "no-cache"})  # fmt: skip


def _parse_view(raw: str | None, pyramid: Pyramid) -> tuple[float, float, float, float] | None:
    if not raw:
        return None
    try:
        x0, y0, x1, y1 = (float(v) for v in raw.split(","))
    except ValueError:
        raise InvalidRequest(f"view must be 'x0,y0,x1,y1' numbers, got {raw!r}") from None
    if not all(map(math.isfinite, (x0, y0, x1, y1))) or x1 <= x0 or y1 <= y0:
        raise InvalidRequest(f"view must be finite with x0 < x1 and y0 < y1, got {raw!r}")
    return x0, y0, x1, y1


#: Route handlers for ``create_app``: the page, BokehJS and the page's own assets.
PAGE_HANDLERS = (
    PageController,
    create_static_files_router(
        path="/static/bokeh",
        directories=[bokehjs_path()],
        name="bokehjs",
        cache_control=CacheControlHeader(max_age=86_400),
        include_in_schema=False,
    ),
    create_static_files_router(
        path="/static/app",
        directories=[STATIC_DIR],
        name="page_assets",
        cache_control=CacheControlHeader(no_cache=True),
        include_in_schema=False,
    ),
)
