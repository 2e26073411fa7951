"""What the map routes keep between requests, per finished projection.

For each dataset whose projection is done: a :class:`~tessera_gpu.render.tiles.TileIndex` (points
sorted for tiles), a :class:`~tessera_gpu.render.nearest.NearestIndex` (k-d tree for hover), the
checked filter masks (keyed by the filter's canonical JSON) and an LRU of rendered tiles. A new
projection (a different coords array) replaces all of it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from tessera_gpu.errors import InvalidRequest
from tessera_gpu.filters import FilterContext, filter_mask, parse_filter
from tessera_gpu.io.dataset import Dataset
from tessera_gpu.render.colors import SELECTION_COLOR, ColorBy, color_by, membership
from tessera_gpu.render.nearest import NearestIndex
from tessera_gpu.render.tiles import TileIndex

__all__ = [
    "EpisodePoint",
    "Points",
    "ProjectionMaps",
    "episode_point",
    "filter_key",
    "points_payload",
]

TILE_CACHE = 4_096  # rendered PNGs kept per projection (~2-40 KB each)
MASK_CACHE = 32


def filter_key(raw: Any) -> str:
    """One string per distinct filter, so equal filters share cached masks and tiles."""
    return "" if not raw else json.dumps(raw, sort_keys=True, separators=(",", ":"))


@dataclass(eq=False)
class ProjectionMaps:
    """The indexes and caches of one finished projection of one dataset."""

    dataset: Dataset
    coords: np.ndarray
    tiles: TileIndex
    nearest: NearestIndex
    context: FilterContext = field(default_factory=FilterContext)
    _masks: OrderedDict[str, np.ndarray | None] = field(default_factory=OrderedDict)
    _rendered: OrderedDict[tuple[Any, ...], bytes] = field(default_factory=OrderedDict)
    _specs: dict[str, ColorBy] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _token: str = ""

    @property
    def token(self) -> str:
        """Names this projection in tile URLs (``v=``), so browsers never reuse old tiles."""
        if not self._token:
            digest = hashlib.blake2b(np.ascontiguousarray(self.coords).data, digest_size=6)
            self._token = digest.hexdigest()
        return self._token

    def mask(self, raw_filter: Any) -> tuple[str, np.ndarray | None]:
        """``(key, mask)`` of a raw filter (``mask`` None when the filter is empty)."""
        key = filter_key(raw_filter)
        with self._lock:
            if key in self._masks:
                self._masks.move_to_end(key)
                return key, self._masks[key]
        ctx = self.context
        conditions = parse_filter(raw_filter, self.dataset, context=ctx)
        mask = filter_mask(self.dataset, conditions, context=ctx) if conditions else None
        with self._lock:
            self._masks[key] = mask
            while len(self._masks) > MASK_CACHE:
                self._masks.popitem(last=False)
        return key, mask

    def color_by(self, name: str | None) -> ColorBy:
        """The colouring for ``name``: a field, density, or ``selection:NAME`` (membership)."""
        key = name or "density"
        with self._lock:
            spec = self._specs.get(key)
        if spec is not None:
            return spec
        if key.startswith(SELECTION_COLOR) and key not in self.dataset.fields:
            # kept like a field's: a new or deleted selection changes the context's version,
            # and that gives the dataset new ProjectionMaps
            selection = key.removeprefix(SELECTION_COLOR)
            if self.context.selections is None:
                raise InvalidRequest("colouring by a selection needs a registered dataset")
            spec = membership(selection, self.context.selections([selection]))
        else:
            spec = color_by(self.dataset, name)
        with self._lock:
            self._specs[key] = spec
        return spec

    def cached_tile(self, key: tuple[Any, ...]) -> bytes | None:
        with self._lock:
            png = self._rendered.get(key)
            if png is not None:
                self._rendered.move_to_end(key)
            return png

    def keep_tile(self, key: tuple[Any, ...], png: bytes) -> None:
        with self._lock:
            self._rendered[key] = png
            while len(self._rendered) > TILE_CACHE:
                self._rendered.popitem(last=False)


class EpisodePoint(msgspec.Struct):
    """One episode on the map, as the hover card shows it (preview URLs null when none)."""

    index: int
    episode_id: str
    x: float
    y: float
    metadata: dict[str, Any]
    thumbnail_url: str | None
    gif_url: str | None


class Points(msgspec.Struct):
    """Columns of episodes on the map: ``count`` matched, ``returned`` listed (evenly thinned,
    ``truncated``, when more matched than the limit), and the chosen ``fields``."""

    count: int
    returned: int
    truncated: bool
    index: list[int]
    episode_id: list[str]
    x: list[float]
    y: list[float]
    fields: dict[str, list[Any]]


def episode_point(dataset: Dataset, dataset_id: str, row: int, coords: np.ndarray) -> EpisodePoint:
    base = f"/api/datasets/{dataset_id}/episodes/{row}"
    return EpisodePoint(
        index=row,
        episode_id=str(dataset.episode_ids[row]),
        x=float(coords[row, 0]),
        y=float(coords[row, 1]),
        metadata=dataset.metadata_at(row),
        thumbnail_url=f"{base}/thumbnail" if dataset.has_thumbnails else None,
        gif_url=f"{base}/gif" if dataset.has_gifs else None,
    )


def points_payload(pm: ProjectionMaps, rows: np.ndarray, names: list[str], limit: int) -> Points:
    """Columns (index, episode_id, x, y, fields) of ``rows``, thinned evenly to ``limit``."""
    count = int(rows.size)
    if count > limit:
        rows = rows[np.linspace(0, count - 1, limit).round().astype(np.int64)]
    return Points(
        count=count,
        returned=int(rows.size),
        truncated=count > rows.size,
        index=rows.tolist(),
        episode_id=pm.dataset.episode_ids[rows].tolist(),
        x=pm.coords[rows, 0].astype(float).tolist(),
        y=pm.coords[rows, 1].astype(float).tolist(),
        fields={name: pm.dataset.fields[name].json_values(rows) for name in names},
    )
