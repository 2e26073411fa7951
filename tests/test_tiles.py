"""Tiles, previews and nearest look-ups as pure functions (the HTTP side is in test_maps.py)."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import msgspec
import numpy as np
import pytest
from PIL import Image

from tessera_gpu.errors import InvalidRequest, UnsupportedMediaType
from tessera_gpu.io.dataset import Field
from tessera_gpu.render.colors import CATEGORY_PALETTE, ColorBy, color_by, legend
from tessera_gpu.render.nearest import NearestIndex
from tessera_gpu.render.previews import check_preview, sniff_image
from tessera_gpu.render.tiles import Pyramid, TileIndex, empty_tile, render_tile

from .conftest import gif_bytes, jpeg_bytes


class FakeDataset:
    """Just enough of a Dataset for ``color_by``: named fields."""

    def __init__(self, **fields: Field) -> None:
        self.fields = fields


def two_clusters(n: int = 400) -> np.ndarray:
    """Half the points near (-5, 0), half near (5, 0): a wide, well-separated map."""
    rng = np.random.default_rng(0)
    left = rng.normal((-5.0, 0.0), 0.3, size=(n // 2, 2))
    right = rng.normal((5.0, 0.0), 0.3, size=(n // 2, 2))
    return np.concatenate([left, right]).astype(np.float32)


def pixels(png: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(png))
    assert img.size == (256, 256)
    assert img.mode == "RGBA"
    return np.asarray(img)


def plain(value: object) -> Any:
    return msgspec.to_builtins(value)


def hexrgb(color: str) -> tuple[int, int, int]:
    return tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


@pytest.fixture(scope="module")
def index() -> TileIndex:
    return TileIndex(two_clusters())


@pytest.fixture(scope="module")
def side_spec(index: TileIndex) -> ColorBy:
    """A category: 'left' for the first cluster, 'right' for the second."""
    n = index.n_total
    values = np.repeat(np.array([0, 1], dtype=np.int32), n // 2)
    return color_by(FakeDataset(side=Field("side", "category", values, ("left", "right"))), "side")


# ---- the pyramid ---------------------------------------------------------------------------


def test_pyramid_is_a_square_around_the_bounds_with_a_margin() -> None:
    p = Pyramid.around((-5.0, -1.0, 5.0, 1.0))
    assert p.size == pytest.approx(11.0)  # 10 wide, 5% margin on each side
    assert (p.x0, p.y0) == pytest.approx((-5.5, -5.5))
    # y counts from the bottom
    assert p.tile_bounds(1, 1, 0) == pytest.approx((0.0, -5.5, 5.5, 0.0))
    assert p.spec().initial_resolution == pytest.approx(11.0 / 256)


@pytest.mark.parametrize(
    ("z", "x", "y"), [(-1, 0, 0), (13, 0, 0), (0, 1, 0), (0, 0, 1), (2, 4, 0), (2, 0, -1)]
)
def test_tiles_outside_the_pyramid_are_refused(z: int, x: int, y: int) -> None:
    with pytest.raises(InvalidRequest) as err:
        Pyramid(0.0, 0.0, 1.0).tile_bounds(z, x, y)
    assert err.value.status == 400
    assert err.value.code == "tile_out_of_range"


# ---- rendering -----------------------------------------------------------------------------


def test_background_is_transparent(index: TileIndex) -> None:
    rgba = pixels(render_tile(index.view(), ColorBy("density"), 0, 0, 0))
    assert rgba[0, 0, 3] == 0
    assert rgba[-1, -1, 3] == 0
    assert rgba[128, 128, 3] == 0  # the gap between the clusters
    assert (rgba[..., 3] > 0).sum() > 50  # the clusters are drawn
    assert pixels(empty_tile())[..., 3].max() == 0


def test_a_tile_with_no_points_is_fully_transparent(index: TileIndex) -> None:
    png = render_tile(index.view(), ColorBy("density"), 3, 4, 7)  # top row: empty
    assert png == empty_tile()


def test_filter_hides_episodes(index: TileIndex) -> None:
    mask = np.zeros(index.n_total, dtype=bool)
    mask[: index.n_total // 2] = True  # only the left cluster
    rgba = pixels(render_tile(index.view("left", mask), ColorBy("density"), 0, 0, 0))
    alpha = rgba[..., 3]
    assert alpha[:, :128].sum() > 0
    assert alpha[:, 128:].sum() == 0


def test_categorical_colours_match_the_legend(index: TileIndex, side_spec: ColorBy) -> None:
    entries = {e["value"]: e for e in plain(legend(side_spec))["entries"]}
    assert entries["left"]["count"] == entries["right"]["count"] == index.n_total // 2
    assert [e["color"] for e in plain(legend(side_spec))["entries"]] == list(CATEGORY_PALETTE[:2])
    rgba = pixels(render_tile(index.view(), side_spec, 0, 0, 0))
    drawn = rgba[..., 3] > 0
    left = {tuple(c) for c in rgba[:, :128][drawn[:, :128]][:, :3]}
    right = {tuple(c) for c in rgba[:, 128:][drawn[:, 128:]][:, :3]}
    assert left == {hexrgb(entries["left"]["color"])}
    assert right == {hexrgb(entries["right"]["color"])}


def test_legend_counts_follow_the_filter(side_spec: ColorBy) -> None:
    mask = np.zeros(side_spec.codes.shape[0], dtype=bool)  # type: ignore[union-attr]
    mask[:10] = True
    counts = {e["value"]: e["count"] for e in plain(legend(side_spec, mask))["entries"]}
    assert counts == {"left": 10, "right": 0}


def test_number_colour_uses_the_global_span(index: TileIndex) -> None:
    n = index.n_total
    values = np.repeat([0.0, 10.0], n // 2)
    spec = color_by(FakeDataset(force=Field("force", "float", values)), "force")
    assert plain(legend(spec))["min"] == 0.0
    assert plain(legend(spec))["max"] == 10.0
    rgba = pixels(render_tile(index.view(), spec, 0, 0, 0))
    drawn = rgba[..., 3] > 0
    low, high = plain(legend(spec))["colormap"][0], plain(legend(spec))["colormap"][-1]
    assert (low, high) == ("#3A528B", "#FDE724")  # viridis from its blue: readable on the map
    assert {tuple(c) for c in rgba[:, :128][drawn[:, :128]][:, :3]} == {hexrgb(low)}
    assert {tuple(c) for c in rgba[:, 128:][drawn[:, 128:]][:, :3]} == {hexrgb(high)}


def test_density_is_seamless_across_tiles(index: TileIndex) -> None:
    """eq_hist is per zoom level, so one pixel gets the same colour from either tile."""
    view = index.view()
    whole = pixels(render_tile(view, ColorBy("density"), 1, 0, 0))
    again = pixels(render_tile(view, ColorBy("density"), 1, 0, 0))
    assert np.array_equal(whole, again)
    assert view.transfer(1)[1][-1] == pytest.approx(1.0)


def test_a_tiny_map_is_drawn_at_the_legends_sparse_end() -> None:
    """Every pixel holding one episode used to be shaded as the densest: white points under a
    red-to-yellow legend. They are the legend's first colour, and every density colour drawn
    anywhere is on the legend's ramp."""
    view = TileIndex(np.random.default_rng(3).normal(size=(12, 2)).astype(np.float32)).view()
    spec = ColorBy("density")
    drawn = pixels(render_tile(view, spec, 0, 0, 0)).reshape(-1, 4)
    opaque = {tuple(int(v) for v in p[:3]) for p in drawn if p[3] > 0}
    assert opaque == {hexrgb(plain(legend(spec))["colormap"][0])}


def test_colouring_by_an_unknown_or_text_field_is_a_400() -> None:
    ds = FakeDataset(note=Field("note", "string", np.array(["a"], dtype=object)))
    with pytest.raises(InvalidRequest, match="cannot colour by 'note'"):
        color_by(ds, "note")
    with pytest.raises(InvalidRequest, match="cannot colour by 'nope'"):
        color_by(ds, "nope")


def test_rare_categories_share_one_other_colour() -> None:
    values = np.arange(100, dtype=np.int32)
    spec = color_by(FakeDataset(c=Field("c", "category", values, tuple(map(str, range(100))))), "c")
    assert len(spec.labels) == 41
    assert spec.labels[-1] == "other (60 values)"
    assert spec.codes is not None
    assert spec.codes.max() == 40


# ---- previews ------------------------------------------------------------------------------


def png_bytes(width: int = 4, height: int = 4) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def webp_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="WEBP")
    return buf.getvalue()


def png_header_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header is rewritten to declare a huge image (a decompression bomb)."""
    data = bytearray(png_bytes())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "media_type"),
    [
        (jpeg_bytes(1).tobytes(), "image/jpeg"),
        (gif_bytes(1).tobytes(), "image/gif"),
        (png_bytes(), "image/png"),
        (webp_bytes(), "image/webp"),
    ],
)
def test_preview_type_comes_from_magic_bytes(data: bytes, media_type: str) -> None:
    assert check_preview(data) == media_type


@pytest.mark.parametrize(
    "data",
    [
        b"<!doctype html><script>alert(1)</script>",
        b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>",
        b"",
        b"\xff\xd8\xff" + b"not really a jpeg",
    ],
)
def test_anything_else_is_415(data: bytes) -> None:
    with pytest.raises(UnsupportedMediaType) as err:
        check_preview(data)
    assert err.value.status == 415
    assert err.value.code == "unsupported_media_type"


def test_decompression_bombs_are_415() -> None:
    with pytest.raises(UnsupportedMediaType, match="too large"):
        check_preview(png_header_claiming(50_000, 50_000))
    with pytest.raises(UnsupportedMediaType, match="too large"):
        check_preview(png_bytes(64, 64), max_pixels=1_000)


def test_sniff_needs_the_whole_magic() -> None:
    assert sniff_image(b"GIF89a...") == "gif"
    assert sniff_image(b"GIF8") is None
    assert sniff_image(b"RIFF\x00\x00\x00\x00WAVE") is None


# ---- nearest -------------------------------------------------------------------------------


def test_nearest_episode_and_radius() -> None:
    coords = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 10.0]], dtype=np.float32)
    nn = NearestIndex(coords)
    assert nn.nearest(0.9, 0.1) == 1
    assert nn.nearest(9.0, 9.0) == 2
    assert nn.nearest(5.0, 5.0, radius=1.0) is None


def test_nearest_with_a_filter_is_the_nearest_match() -> None:
    coords = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 10.0]], dtype=np.float32)
    nn = NearestIndex(coords)
    mask = np.array([False, False, True])
    assert nn.nearest(0.0, 0.0, mask=mask, key="far") == 2
    assert nn.nearest(0.0, 0.0, mask=mask, key="far", radius=2.0) is None
    assert nn.nearest(0.0, 0.0, mask=np.zeros(3, bool), key="none") is None


def test_bools_are_true_green_then_false_red() -> None:
    values = np.array([False, False, True])
    spec = color_by(FakeDataset(ok=Field("ok", "bool", values)), "ok")
    entries = plain(legend(spec))["entries"]
    assert [(e["value"], e["count"]) for e in entries] == [("true", 1), ("false", 2)]
    assert [e["color"] for e in entries] == ["#97ff00", "#d60000"]
    assert set(CATEGORY_PALETTE) >= {e["color"] for e in entries}
