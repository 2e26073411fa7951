"""Episode previews (thumbnails and GIFs): what type of image the stored bytes really are.

The type comes from the bytes' magic numbers only, never from a name or a declared type, and
only four image types pass: JPEG, GIF, PNG and WebP. Anything else (HTML posing as a thumbnail,
an SVG, a script) is refused, and so is an image whose declared size would decompress into
more than ``max_pixels`` pixels.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image

from tessera_gpu.errors import UnsupportedMediaType

__all__ = ["MAX_PREVIEW_PIXELS", "MEDIA_TYPES", "check_preview", "sniff_image"]

#: Largest width x height x frames a preview may declare (about 64 frames of 512x512).
MAX_PREVIEW_PIXELS = 16_000_000
MEDIA_TYPES = {"jpeg": "image/jpeg", "gif": "image/gif", "png": "image/png", "webp": "image/webp"}
_PIL_FORMATS = {"jpeg": "JPEG", "gif": "GIF", "png": "PNG", "webp": "WEBP"}


def sniff_image(data: bytes) -> str | None:
    """``jpeg``, ``gif``, ``png`` or ``webp`` from the leading magic bytes, else None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def check_preview(data: bytes, *, max_pixels: int = MAX_PREVIEW_PIXELS) -> str:
    """The media type of a stored preview; :class:`UnsupportedMediaType` if it is not a
    JPEG, GIF, PNG or WebP that Pillow opens as the same type within ``max_pixels``."""
    kind = sniff_image(data)
    if kind is None:
        raise UnsupportedMediaType(
            "preview is not a JPEG, GIF, PNG or WebP image (checked by its magic bytes)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[kind]]) as img:
                _check_pixels(img.width * img.height, max_pixels)  # before any frame decodes
                _check_pixels(img.width * img.height * _frames(img), max_pixels)
    except UnsupportedMediaType:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UnsupportedMediaType(
            "preview is too large to decode safely (Pillow's decompression bomb limit)"
        ) from None
    except Exception:  # any decoder failure (or bomb warning) means "not a valid image"
        raise UnsupportedMediaType(
            f"preview starts like a {kind.upper()} image but Pillow cannot open it"
        ) from None
    return MEDIA_TYPES[kind]


def _frames(img: Image.Image) -> int:
    return max(int(getattr(img, "n_frames", 1)), 1)


def _check_pixels(pixels: int, max_pixels: int) -> None:
    if pixels > max_pixels:
        raise UnsupportedMediaType(
            f"preview is too large to decode safely: {pixels:,} pixels > {max_pixels:,}"
        )
