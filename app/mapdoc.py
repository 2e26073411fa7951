"""The map's Bokeh document: tile layer, sample, similar and hover overlays, and the tools
whose events the page's script handles (``GET /api/datasets/{id}/map``).

Bokeh's models take about a second to import: the server loads this module in the background
at start (:func:`tessera_app.main.create_app`), or at the first map request.
"""

from __future__ import annotations

from typing import Any

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

from tessera_gpu.render.tiles import Pyramid

__all__ = ["map_document"]

MAP_BACKGROUND = "#0f1115"
SAMPLE_COLOR = "#3fd0ff"  # sampled episodes: light cyan, clear of the density ramp
SIMILAR_COLOR = "#ff4fd8"  # "find similar" rings: magenta, clear of the ramp and the sample
HOVER_COLOR = "#ffffff"  # the episode in the card: a white ring with a dark edge, on any colour


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
