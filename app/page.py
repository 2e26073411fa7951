"""The page: ``/`` and ``/datasets/{id}``, its Bokeh map document, and its local assets.

The HTML shell (``templates/page.html``) lays out the panels; the map inside it is a Bokeh
document (``GET /api/datasets/{id}/map``: a ``json_item``) whose ``TMSTileSource`` asks for
exactly the tiles of :class:`tessera_gpu.render.tiles.Pyramid`. BokehJS is served from the installed
``bokeh`` package and the page's own JS/CSS from ``app/static``: nothing comes from a CDN, so
the page works on an air-gapped machine.
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
from bokeh.embed import json_item
from bokeh.models import (
    BoxSelectTool,
    ColumnDataSource,
    CustomJS,
    HoverTool,
    LassoSelectTool,
    PanTool,
    Range1d,
    ResetTool,
    TMSTileSource,
    WheelZoomTool,
)
from bokeh.plotting import figure
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

__all__ = ["PAGE_HANDLERS", "PageController", "map_document"]

STATIC_DIR = Path(__file__).parent / "static"
TEMPLATE = Template((Path(__file__).parent / "templates" / "page.html").read_text())
MAP_BACKGROUND = "#0f1115"
SAMPLE_COLOR = "#3fd0ff"  # sampled episodes: light cyan, clear of the density ramp
SIMILAR_COLOR = "#ff4fd8"  # "find similar" rings: magenta, clear of the ramp and the sample
HOVER_COLOR = "#ffffff"  # the episode in the card: a white ring with a dark edge, on any colour
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


def map_document(
    pyramid: Pyramid, tile_url: str, *, view: tuple[float, float, float, float] | None = None
) -> dict[str, Any]:
    """The map's Bokeh document (as ``json_item``); the page's script finds models by name."""
    x0, y0, x1, y1 = view or (pyramid.x0, pyramid.y0,
                              pyramid.x0 + pyramid.size, pyramid.y0 + pyramid.size)  # fmt: skip
    plot = figure(
        name="map", x_range=Range1d(start=x0, end=x1, name="x_range"),
        y_range=Range1d(start=y0, end=y1, name="y_range"), sizing_mode="stretch_both", tools=[],
        toolbar_location="right", background_fill_color=MAP_BACKGROUND,
        border_fill_color=MAP_BACKGROUND, outline_line_color=None, min_border=0,
    )  # fmt: skip
    plot.axis.visible = False
    plot.grid.visible = False
    plot.toolbar.logo = None
    source = TMSTileSource(
        name="tiles", url=tile_url, tile_size=256, min_zoom=0, max_zoom=pyramid.max_zoom,
        initial_resolution=pyramid.resolution(0), x_origin_offset=-pyramid.x0,
        y_origin_offset=-pyramid.y0, wrap_around=False, snap_to_zoom=False,
        attribution="tiles: datashader",
    )  # fmt: skip
    plot.add_tile(source, name="tile_layer", smoothing=False)
    selection = ColumnDataSource({"xs": [], "ys": []}, name="selection")
    plot.patches("xs", "ys", source=selection, fill_color="#ffffff", fill_alpha=0.06,
                 line_color="#ffffff", line_dash="dashed", line_width=1.5)  # fmt: skip
    samples = ColumnDataSource({"x": [], "y": [], "episode_id": [], "stratum": []},
                               name="sample")  # fmt: skip
    dots = plot.scatter("x", "y", source=samples, size=8, fill_color=SAMPLE_COLOR,
                        line_color="#111318", line_width=1.2, name="sample_points",
                        nonselection_fill_alpha=0.25, nonselection_line_alpha=0.25)  # fmt: skip
    outline = ColumnDataSource({"x": [], "y": []}, name="outline")
    plot.scatter("x", "y", source=outline, size=5, fill_alpha=0, line_color="#ffffff",
                 line_alpha=0.8, line_width=1, name="outline_points")  # fmt: skip
    similar = ColumnDataSource({"x": [], "y": [], "episode_id": []}, name="similar")
    plot.scatter("x", "y", source=similar, size=15, fill_alpha=0, line_color=SIMILAR_COLOR,
                 line_width=2.2, name="similar_points")  # fmt: skip
    hovered = ColumnDataSource({"x": [], "y": [], "episode_id": []}, name="hovered")
    for size, color, width in ((19, "#111318", 4.0), (19, HOVER_COLOR, 2.0)):
        plot.scatter("x", "y", source=hovered, size=size, fill_alpha=0, line_color=color,
                     line_width=width, name="hovered_points")  # fmt: skip
    _add_tools(plot, dots)
    return dict(json_item(plot, target=None))


def _add_tools(plot: Any, dots: Any) -> None:
    """Pan, wheel zoom, box/lasso selection and the sample's hover; events to the page."""
    wheel = WheelZoomTool(zoom_on_axis=False)
    hover = HoverTool(renderers=[dots], tooltips=[("episode", "@episode_id"),
                                                  ("stratum", "@stratum")])  # fmt: skip
    plot.add_tools(PanTool(), wheel, BoxSelectTool(renderers=[dots]),
                   LassoSelectTool(renderers=[dots]), ResetTool(), hover)  # fmt: skip
    plot.toolbar.active_scroll = wheel
    call = "window.tessera && window.tessera.{}"
    plot.js_on_event("selectiongeometry", CustomJS(
        code=call.format("onSelection(cb_obj.geometry, cb_obj.final)")))  # fmt: skip
    plot.js_on_event("mousemove", CustomJS(code=call.format("onHover(cb_obj.x, cb_obj.y)")))
    plot.js_on_event("mouseleave", CustomJS(code=call.format("onHoverEnd()")))
    plot.js_on_event("rangesupdate", CustomJS(
        code=call.format("onView(cb_obj.x0, cb_obj.y0, cb_obj.x1, cb_obj.y1)")))  # fmt: skip
    plot.js_on_event("reset", CustomJS(code=call.format("onReset()")))


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
