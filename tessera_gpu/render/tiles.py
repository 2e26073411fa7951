"""Map tiles: 256x256 PNGs of a finished projection, drawn by datashader.

The pyramid covers a square around the projection's bounds (plus a margin). Level ``z`` splits
it into ``2**z x 2**z`` tiles; ``y`` counts from the bottom (TMS order, as Bokeh's
``TMSTileSource`` asks for them). Points are kept sorted by ``x`` so that a tile only aggregates
its own points (``searchsorted`` on ``x``, then a cut on ``y``).

Density is eq_hist per zoom level over the whole map (:meth:`PointView.transfer`), not per
tile, which would leave seams; :mod:`.colors` turns the aggregates into pixels.

Datashader aggregates on the GPU through cuDF only for a :class:`TileIndex` made with
``gpu=True`` (the server passes that for a GPU backend) and only if cuDF works there; with
``--device cpu`` cuDF is never imported.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import msgspec
import numpy as np
import pandas as pd
from PIL import Image

from tessera_gpu.errors import InvalidRequest
from tessera_gpu.projection.parallel import serial_section
from tessera_gpu.render.colors import CATEGORY_PALETTE, ColorBy, shade

__all__ = [
    "MAX_ZOOM",
    "TILE_SIZE",
    "PointView",
    "Pyramid",
    "PyramidSpec",
    "TileIndex",
    "compile_kernels",
    "empty_tile",
    "render_tile",
]

TILE_SIZE = 256
MAX_ZOOM = 12
MARGIN = 0.05  # share of the bounds' larger side added on every side of the square
MAX_SPREAD = 3  # largest dot radius, in pixels, for sparse maps at deep zoom
VIEW_CACHE = 16  # filtered point views kept per projection


@dataclass(frozen=True)
class Pyramid:
    """The square extent the tiles cover: lower-left corner ``(x0, y0)`` and side ``size``."""

    x0: float
    y0: float
    size: float
    max_zoom: int = MAX_ZOOM

    @classmethod
    def around(
        cls, bounds: tuple[float, float, float, float], *, margin: float = MARGIN
    ) -> Pyramid:
        """The square centred on ``bounds = (x0, y0, x1, y1)``, grown by ``margin`` per side."""
        bx0, by0, bx1, by1 = (float(b) for b in bounds)
        side = max(bx1 - bx0, by1 - by0, 1e-6)
        size = side * (1 + 2 * margin)
        cx, cy = (bx0 + bx1) / 2, (by0 + by1) / 2
        return cls(cx - size / 2, cy - size / 2, size)

    def resolution(self, z: int) -> float:
        """Data units per pixel at level ``z``."""
        return self.size / (TILE_SIZE * 2**z)

    def check(self, z: int, x: int, y: int) -> None:
        """Raise :class:`InvalidRequest` unless ``z/x/y`` names a tile of this pyramid."""
        if not 0 <= z <= self.max_zoom:
            raise InvalidRequest(
                f"tile zoom {z} is outside the pyramid: use 0 to {self.max_zoom}",
                code="tile_out_of_range",
            )
        top = 2**z - 1
        if not (0 <= x <= top and 0 <= y <= top):
            raise InvalidRequest(
                f"tile {z}/{x}/{y} is outside the pyramid: x and y go from 0 to {top} at zoom {z}",
                code="tile_out_of_range",
            )

    def tile_bounds(self, z: int, x: int, y: int) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` of one tile in data units (checked first)."""
        self.check(z, x, y)
        step = self.size / 2**z
        return (self.x0 + x * step, self.y0 + y * step,
                self.x0 + (x + 1) * step, self.y0 + (y + 1) * step)  # fmt: skip

    def spec(self) -> PyramidSpec:
        """What a Bokeh ``TMSTileSource`` needs to ask for the same tiles."""
        return PyramidSpec(
            x0=self.x0,
            y0=self.y0,
            size=self.size,
            max_zoom=self.max_zoom,
            tile_size=TILE_SIZE,
            initial_resolution=self.resolution(0),
            x_origin_offset=-self.x0,
            y_origin_offset=-self.y0,
        )


class PyramidSpec(msgspec.Struct):
    """A tile pyramid in numbers: its lower-left corner and side, zoom levels and tile size."""

    x0: float
    y0: float
    size: float
    max_zoom: int
    tile_size: int
    initial_resolution: float
    x_origin_offset: float
    y_origin_offset: float


@dataclass(eq=False)
class PointView:
    """The points that pass one filter, sorted by x, with per-level density transfers."""

    xs: np.ndarray
    ys: np.ndarray
    rows: np.ndarray  # original episode index of each sorted point
    pyramid: Pyramid
    gpu: bool = False  # aggregate through cuDF (when it works) rather than pandas
    _levels: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return int(self.xs.shape[0])

    def transfer(self, z: int) -> tuple[np.ndarray, np.ndarray]:
        """eq_hist over every non-empty pixel of level ``z``: (distinct counts, their CDF)."""
        if z not in self._levels:
            self._levels[z] = _level_transfer(self.xs, self.ys, self.pyramid, z)
        return self._levels[z]

    def spread(self, z: int) -> int:
        """Dot radius in pixels: sparse views at deep zoom get bigger dots, dense ones none."""
        spacing = TILE_SIZE * 2**z / max(np.sqrt(self.n), 1.0)
        return int(np.clip(np.floor(np.log2(max(spacing, 1e-9))) - 1, 0, MAX_SPREAD))


def _level_transfer(
    xs: np.ndarray, ys: np.ndarray, pyramid: Pyramid, z: int
) -> tuple[np.ndarray, np.ndarray]:
    width = TILE_SIZE * 2**z
    res = pyramid.resolution(z)
    ix = np.clip(((xs - pyramid.x0) / res).astype(np.int64), 0, width - 1)
    iy = np.clip(((ys - pyramid.y0) / res).astype(np.int64), 0, width - 1)
    _, per_pixel = np.unique(ix * width + iy, return_counts=True)
    values, n_pixels = np.unique(per_pixel, return_counts=True)
    cdf = np.cumsum(n_pixels) / max(int(n_pixels.sum()), 1)
    return values, cdf


class TileIndex:
    """One projection's points, pre-sorted by x, and its filtered views (an LRU)."""

    def __init__(
        self, coords: np.ndarray, *, pyramid: Pyramid | None = None, gpu: bool = False
    ) -> None:
        coords = np.asarray(coords, dtype=np.float64)
        if pyramid is None:
            lo, hi = coords.min(axis=0), coords.max(axis=0)
            pyramid = Pyramid.around((lo[0], lo[1], hi[0], hi[1]))
        self.pyramid = pyramid
        self.n_total = int(coords.shape[0])
        order = np.argsort(coords[:, 0], kind="stable")
        self._all = PointView(coords[order, 0], coords[order, 1], order, pyramid, gpu)
        self._views: OrderedDict[str, PointView] = OrderedDict()
        self._lock = threading.Lock()

    def view(self, key: str = "", mask: np.ndarray | None = None) -> PointView:
        """The points passing ``mask`` (cached under ``key``; ``mask=None`` means all)."""
        if mask is None:
            return self._all
        with self._lock:
            if key in self._views:
                self._views.move_to_end(key)
                return self._views[key]
        keep = mask[self._all.rows]
        view = PointView(self._all.xs[keep], self._all.ys[keep], self._all.rows[keep],
                         self.pyramid, self._all.gpu)  # fmt: skip
        with self._lock:
            self._views[key] = view
            while len(self._views) > VIEW_CACHE:
                self._views.popitem(last=False)
        return view

    def warm(self) -> None:
        """Compute the unfiltered eq_hist transfers of every level (tens of ms at 200k)."""
        for z in range(self.pyramid.max_zoom + 1):
            self._all.transfer(z)


WARM_CATEGORIES = (2, 4, 8)  # slot counts compiled early (see _slots)
_compile_lock = threading.Lock()
_compiled: set[str] = set()  # "density", then "all"


def compile_kernels(*, first_only: bool = False) -> None:
    """Compile datashader's kernels (seconds, once per process) on a few synthetic points, so
    that a real tile does not wait for numba: the density kernel that every first tile needs,
    then (unless ``first_only``) the colour-by ones. A second caller waits for the first."""
    with _compile_lock:
        coords = np.random.default_rng(0).normal(size=(64, 2))
        order = np.argsort(coords[:, 0])
        view = PointView(coords[order, 0], coords[order, 1], order,
                         Pyramid.around((-3.0, -3.0, 3.0, 3.0)))  # fmt: skip
        if "density" not in _compiled:
            render_tile(view, ColorBy("density"), 0, 0, 0)
            _compiled.add("density")
        if first_only or "all" in _compiled:
            return
        render_tile(view, ColorBy("number", "_", values=np.zeros(64)), 0, 0, 0)
        for k in WARM_CATEGORIES:
            labels = tuple(map(str, range(k)))
            codes = np.arange(64, dtype=np.int32) % k
            spec = ColorBy("category", "_", codes=codes, labels=labels, colors=CATEGORY_PALETTE[:k])
            render_tile(view, spec, 0, 0, 0)
        _compiled.add("all")


def render_tile(view: PointView, spec: ColorBy, z: int, x: int, y: int) -> bytes:
    """The PNG of tile ``z/x/y``: transparent where no episode of ``view`` lies."""
    pyramid = view.pyramid
    x0, y0, x1, y1 = pyramid.tile_bounds(z, x, y)
    pad = view.spread(z)
    res = pyramid.resolution(z)
    lo, hi = np.searchsorted(view.xs, [x0 - (pad + 1) * res, x1 + (pad + 1) * res])
    ys = view.ys[lo:hi]
    inside = (ys >= y0 - (pad + 1) * res) & (ys <= y1 + (pad + 1) * res)
    if not inside.any():
        return empty_tile()
    sel = np.flatnonzero(inside) + lo
    rows = view.rows[sel]
    ranges = ((x0 - pad * res, x1 + pad * res), (y0 - pad * res, y1 + pad * res))
    with serial_section():  # datashader's numba-parallel kernels (see projection.parallel)
        frame = _gpu_frame if view.gpu and _cudf() is not None else _frame
        counts = _aggregate(view.xs[sel], view.ys[sel], rows, spec, ranges, TILE_SIZE + 2 * pad,
                            frame)  # fmt: skip
    words = shade(spec, counts, view.transfer(z))
    words = _spread(words, pad)
    rgba = np.ascontiguousarray(words[::-1]).view(np.uint8).reshape(TILE_SIZE, TILE_SIZE, 4)
    return _png(rgba)  # rows flipped: datashader's row 0 is the bottom, a PNG's the top


def _aggregate(
    xs: np.ndarray,
    ys: np.ndarray,
    rows: np.ndarray,
    spec: ColorBy,
    ranges: tuple[tuple[float, float], tuple[float, float]],
    width: int,
    frame: Any,
) -> dict[str, np.ndarray]:
    """Datashader aggregation of the tile's points: ``count`` (+ ``by`` or ``mean``)."""
    import datashader as ds  # 2.5 s to import: a server loads it in the background at start

    columns: dict[str, Any] = {"x": xs, "y": ys}
    canvas = ds.Canvas(plot_width=width, plot_height=width, x_range=ranges[0], y_range=ranges[1])
    if spec.kind == "category":
        assert spec.codes is not None
        k = len(spec.labels)
        columns["c"] = pd.Categorical.from_codes(spec.codes[rows], _slots(k))
        agg = canvas.points(frame(columns), "x", "y", agg=ds.by("c", ds.count()))
        by = _host(agg.data)[..., :k]
        return {"by": by, "count": by.sum(axis=2)}
    if spec.kind == "number":
        assert spec.values is not None
        columns["v"] = spec.values[rows]
        out = canvas.points(frame(columns), "x", "y",
                            agg=ds.summary(count=ds.count(), mean=ds.mean("v")))  # fmt: skip
        return {"count": _host(out["count"].data), "mean": _host(out["mean"].data)}
    agg = canvas.points(frame(columns), "x", "y", agg=ds.count())
    return {"count": _host(agg.data)}


@cache
def _slots(n: int) -> pd.Index:
    """Category slots, padded to a power of two: numba compiles one kernel per slot count,
    so 1 to 40 values need at most 7 kernels (and :func:`compile_kernels` makes 3 early)."""
    return pd.Index(np.arange(1 << max(n - 1, 0).bit_length(), dtype=np.int64))


@cache
def _cudf() -> Any:
    """cuDF if it is installed and a GPU answers (then datashader aggregates there), else None.

    Imported here, on first use, so the CPU path never loads it."""
    try:
        import cudf  # type: ignore[import-not-found]

        cudf.Series([0.0]).sum()  # a driver or device problem shows here, not mid-tile
    except Warning:  # pytest turns warnings into errors: a bug to see, not a missing cuDF
        raise
    except Exception:  # ImportError, or CUDA errors when cuDF is installed without a GPU
        return None
    return cudf


def _frame(columns: dict[str, Any]) -> Any:
    return pd.DataFrame(columns, copy=False)


def _gpu_frame(columns: dict[str, Any]) -> Any:
    return _cudf().DataFrame({k: np.asarray(v) if k != "c" else v for k, v in columns.items()})


def _host(data: Any) -> np.ndarray:
    return np.asarray(data.get() if hasattr(data, "get") else data)


def _spread(words: np.ndarray, pad: int) -> np.ndarray:
    """Fill empty pixels from filled ones within ``pad`` (nearest first); crop the margin."""
    size = words.shape[0] - 2 * pad
    out = words[pad : pad + size, pad : pad + size].copy()
    for dy, dx in _disk(pad):
        src = words[pad + dy : pad + dy + size, pad + dx : pad + dx + size]
        np.copyto(out, src, where=out == 0)
    return out


@cache
def _disk(radius: int) -> tuple[tuple[int, int], ...]:
    offsets = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
               if 0 < dy * dy + dx * dx <= radius * radius + radius]  # fmt: skip
    return tuple(sorted(offsets, key=lambda o: o[0] ** 2 + o[1] ** 2))


def _png(rgba: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


@cache
def empty_tile() -> bytes:
    """A fully transparent tile."""
    return _png(np.zeros((TILE_SIZE, TILE_SIZE, 4), dtype=np.uint8))
