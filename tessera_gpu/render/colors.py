"""How the map is coloured: what ``?color_by=`` means, its legend, and the shading of a
tile's aggregates into pixels.

Colours stay the same across tiles: densities go through an eq_hist transfer computed once per
zoom level over the whole map (:mod:`.tiles` hands it in), numbers use the field's global span,
and a category keeps one glasbey colour everywhere, the one :func:`legend` reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Literal

import colorcet
import msgspec
import numpy as np
from bokeh.palettes import Viridis256

from tessera_gpu.errors import InvalidRequest
from tessera_gpu.io.dataset import Dataset

__all__ = [
    "CATEGORY_PALETTE",
    "DENSITY_PALETTE",
    "NUMBER_PALETTE",
    "SELECTION_COLOR",
    "ColorBy",
    "Legend",
    "LegendEntry",
    "color_by",
    "legend",
    "membership",
    "shade",
]

CATEGORY_PALETTE = tuple(colorcet.palette["glasbey_light"])  # made for dark backgrounds
DENSITY_PALETTE = tuple(colorcet.fire[96:])  # fire without its dark start (dark background)
#: viridis without its darkest quarter: its dark purple end (L* 15) vanished into the map's
#: near-black background (L* 5); from its blue (L* 37) up it stays perceptually uniform.
NUMBER_PALETTE = tuple(Viridis256[64:])
MIN_ALPHA = 160  # alpha of the sparsest non-empty pixel when colouring by a field
MAX_COLORS = 40  # categories with their own colour; rarer ones share OTHER_COLOR
OTHER_COLOR = "#8a8a8a"
BOOL_COLORS = ("#97ff00", "#d60000")  # glasbey_light's lime and red: true, false
MEMBERSHIP_COLORS = ("#ff4fd8", "#5b6170")  # in a selection: magenta; the rest: slate
SELECTION_COLOR = "selection:"  # ?color_by=selection:NAME colours by membership


@dataclass(frozen=True, eq=False)
class ColorBy:
    """How tiles are coloured: ``density``, a ``category`` (bools too) or a ``number``.

    For a category, ``codes`` maps each episode to a slot of ``labels`` / ``colors``, slots in
    the legend's order (most frequent first; past :data:`MAX_COLORS` values, one shared
    "other" slot). For a number, ``values`` and its ``span``.
    """

    kind: Literal["density", "category", "number"]
    field: str | None = None
    codes: np.ndarray | None = None
    labels: tuple[str, ...] = ()
    colors: tuple[str, ...] = ()
    values: np.ndarray | None = None
    span: tuple[float, float] = (0.0, 1.0)

    @property
    def key(self) -> str:
        return self.field or "density"


def color_by(dataset: Dataset, name: str | None) -> ColorBy:
    """The colouring for ``?color_by=name`` (None or ``density``: plain density)."""
    if name in (None, "", "density"):
        return ColorBy("density")
    fld = dataset.fields.get(name)
    if fld is None or fld.kind in ("string", "array"):
        usable = [f.name for f in dataset.fields.values() if f.kind not in ("string", "array")]
        raise InvalidRequest(
            f"cannot colour by {name!r}: use density or one of {', '.join(usable) or '(none)'}",
            code="bad_color_by",
        )
    if fld.kind in ("int", "float"):
        values = fld.values.astype(np.float64)
        finite = values[np.isfinite(values)]
        span = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        return ColorBy("number", name, values=values, span=span)
    if fld.kind == "bool":  # true first, in green; false in red, whatever their counts
        codes = np.where(fld.values, 0, 1).astype(np.int32)
        if fld.missing is not None and fld.missing.any():  # a joined file lacks the field
            codes[fld.missing] = 2
            return ColorBy("category", name, codes=codes, labels=("true", "false", "missing"),
                           colors=(*BOOL_COLORS, OTHER_COLOR))  # fmt: skip
        return ColorBy("category", name, codes=codes, labels=("true", "false"), colors=BOOL_COLORS)
    return _category(name, fld.values, fld.categories)


def membership(selection: str, mask: np.ndarray) -> ColorBy:
    """Colour by whether an episode is in a named selection (``?color_by=selection:NAME``)."""
    codes = np.where(mask, 0, 1).astype(np.int32)
    labels = (f"in {selection}", f"not in {selection}")
    return ColorBy("category", f"{SELECTION_COLOR}{selection}", codes=codes, labels=labels,
                   colors=MEMBERSHIP_COLORS)  # fmt: skip


def _category(name: str, raw: np.ndarray, labels: tuple[str, ...]) -> ColorBy:
    """One glasbey colour per value, most frequent first; the rarest share "other"."""
    counts = np.bincount(raw, minlength=len(labels))
    order = np.argsort(-counts, kind="stable")  # rank -> raw code, most frequent first
    slot_of = np.empty(len(labels), dtype=np.int32)
    slot_of[order] = np.minimum(np.arange(len(labels)), MAX_COLORS)  # the rest share "other"
    names = [labels[i] for i in order[:MAX_COLORS]]
    colors = list(CATEGORY_PALETTE[: len(names)])
    if len(labels) > MAX_COLORS:
        names.append(f"other ({len(labels) - MAX_COLORS:,} values)")
        colors.append(OTHER_COLOR)
    return ColorBy("category", name, codes=slot_of[raw], labels=tuple(names), colors=tuple(colors))


class LegendEntry(msgspec.Struct):
    value: str
    color: str
    count: int


class Legend(msgspec.Struct, omit_defaults=True):
    """The colours the tiles use: ``density`` (a colormap on eq_hist), ``number`` (a colormap
    over ``min``..``max`` of ``field``) or ``category`` (one colour per value of ``field``,
    with its count under the filter)."""

    kind: str
    field: str | msgspec.UnsetType = msgspec.UNSET
    colormap: list[str] | msgspec.UnsetType = msgspec.UNSET
    scale: str | msgspec.UnsetType = msgspec.UNSET
    min: float | msgspec.UnsetType = msgspec.UNSET
    max: float | msgspec.UnsetType = msgspec.UNSET
    entries: list[LegendEntry] | msgspec.UnsetType = msgspec.UNSET


def legend(spec: ColorBy, mask: np.ndarray | None = None) -> Legend:
    """The legend that matches the tiles: colours per value with counts under ``mask``."""
    if spec.kind == "density":
        return Legend(kind="density", colormap=_stops(DENSITY_PALETTE), scale="eq_hist")
    assert spec.field is not None
    if spec.kind == "number":
        return Legend(kind="number", field=spec.field, colormap=_stops(NUMBER_PALETTE),
                      min=spec.span[0], max=spec.span[1])  # fmt: skip
    assert spec.codes is not None
    codes = spec.codes if mask is None else spec.codes[mask]
    counts = np.bincount(codes, minlength=len(spec.labels))
    entries = [
        LegendEntry(value=label, color=color, count=int(n))
        for label, color, n in zip(spec.labels, spec.colors, counts, strict=True)
    ]
    return Legend(kind="category", field=spec.field, entries=entries)


def _stops(palette: tuple[str, ...], n: int = 9) -> list[str]:
    return [palette[round(i * (len(palette) - 1) / (n - 1))] for i in range(n)]


def shade(
    spec: ColorBy, agg: dict[str, np.ndarray], transfer: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """Packed RGBA words (``uint32``, 0 where empty): colour from the kind, alpha from the
    level's eq_hist of counts. Only the filled pixels are computed."""
    count = agg["count"]
    filled = np.flatnonzero(count.ravel())
    level = _eq_hist(count.ravel()[filled], transfer)
    alpha = np.round(MIN_ALPHA + (255 - MIN_ALPHA) * level)
    if spec.kind == "density":  # colour carries the density; opaque, to stay bright on dark
        rgb = _lut(DENSITY_PALETTE)[np.round(level * 255).astype(np.intp)]
        alpha[:] = 255
    elif spec.kind == "number":
        rgb = _number_rgb(agg["mean"].ravel()[filled], spec.span)
    else:
        by = agg["by"].reshape(-1, agg["by"].shape[-1])[filled]
        weights = by / by.sum(axis=1, keepdims=True)
        rgb = np.clip(np.round(weights @ _rgb(spec.colors)), 0, 255).astype(np.uint32)
    rgb = rgb.astype(np.uint32)
    words = np.zeros(count.size, dtype="<u4")  # little-endian: bytes R, G, B, A
    words[filled] = rgb[:, 0] | rgb[:, 1] << 8 | rgb[:, 2] << 16 | alpha.astype(np.uint32) << 24
    return words.reshape(count.shape)


def _number_rgb(mean: np.ndarray, span: tuple[float, float]) -> np.ndarray:
    """NUMBER_PALETTE over the field's global span; grey where the mean is NaN."""
    low, high = span
    u = np.clip((mean - low) / (high - low), 0, 1) if high > low else np.full_like(mean, 0.5)
    rgb = _lut(NUMBER_PALETTE)[np.round(np.nan_to_num(u, nan=0.0) * 255).astype(np.intp)]
    rgb[~np.isfinite(mean)] = (128, 128, 128)
    return rgb


def _eq_hist(count: np.ndarray, transfer: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Counts -> [0, 1] through the level's CDF, so the sparsest pixel is 0, the densest 1.
    A level whose pixels all hold one count (a tiny dataset) is all sparse: 0, the legend's
    "sparse" end, not its "dense" one."""
    values, cdf = transfer
    at = np.clip(np.searchsorted(values, count, side="right") - 1, 0, len(values) - 1)
    low = cdf[0]
    if low >= 1.0:
        return np.zeros(count.shape, dtype=np.float64)
    return np.clip((cdf[at] - low) / (1.0 - low), 0.0, 1.0)


@cache
def _lut(palette: tuple[str, ...]) -> np.ndarray:
    """A 256-entry uint8 RGB lookup table resampled from ``palette``."""
    rgb = _rgb(palette)
    at = np.linspace(0, len(palette) - 1, 256).round().astype(np.intp)
    return rgb[at].astype(np.uint8)


@cache
def _rgb(palette: tuple[str, ...]) -> np.ndarray:
    return np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in palette], np.float32)
