"""Write a Tessera HDF5 file from what producers actually hold.

``write_dataset`` takes embeddings, ids, metadata columns and previews in the shapes they come
in (lists, numpy unicode arrays, pandas columns, PIL images, raw frames) and writes a file that
follows the embedding-format spec: float32 embeddings, vlen UTF-8 strings, bool / int64 / float
metadata, and JPEG thumbnails and animated GIFs as ``vlen uint8``. Everything is checked before
the first byte is written, and the file appears atomically or not at all.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image

from tessera_gpu.errors import InvalidRequest
from tessera_gpu.io.files import replacing
from tessera_gpu.io.safety import Limits
from tessera_gpu.names import unprintable_id
from tessera_gpu.render.previews import sniff_image

__all__ = ["encode_gif", "encode_thumbnail", "write_dataset"]

PREVIEW_SIZE = (128, 128)
_LIMITS = Limits()


def write_dataset(
    path: str | os.PathLike[str],
    *,
    embeddings: Any = None,
    episode_ids: Any,
    metadata: Mapping[str, Any] | None = None,
    thumbnails: Sequence[Any] | None = None,
    gifs: Sequence[Any] | None = None,
) -> Path:
    """Validate the inputs and write them atomically to ``path``; return the path written.

    - ``embeddings``: ``(N, D)`` array-like of real numbers, stored as float32 (default ``None``:
      a metadata-only file).
    - ``episode_ids``: N unique strings (list, numpy, pandas, or UTF-8 bytes).
    - ``metadata``: name -> N values (default ``None``); strings become vlen UTF-8, bools stay
      bool, integers become int64, floats stay float32 or become float64.
    - ``thumbnails`` / ``gifs``: N entries (default ``None``); each is encoded bytes (stored
      as-is), ``None`` (no preview), or pixels: an image for thumbnails, a list of frames for
      GIFs, encoded at 128x128.

    Raises ``InvalidRequest`` naming the first problem found; nothing is written then.
    """
    ids = _coerce_ids(episode_ids)
    n = len(ids)
    arrays: dict[str, np.ndarray] = {"episode_ids": ids}
    if embeddings is not None:
        arrays["embeddings"] = _coerce_embeddings(embeddings, n)
    metadata = metadata or {}
    if len(metadata) > _LIMITS.max_metadata_fields:
        raise InvalidRequest(
            f"Too many metadata fields: {len(metadata)} > {_LIMITS.max_metadata_fields}"
        )
    for name, values in metadata.items():
        arrays[f"metadata/{_field_name(name)}"] = _coerce_field(name, values, n)
    if thumbnails is not None:
        arrays["thumbnails"] = _coerce_previews("thumbnails", thumbnails, n, encode_thumbnail)
    if gifs is not None:
        arrays["gifs"] = _coerce_previews("gifs", gifs, n, encode_gif)
    return _write_atomic(Path(path), arrays)


def encode_thumbnail(
    image: Any, *, size: tuple[int, int] = PREVIEW_SIZE, quality: int = 80
) -> bytes:
    """Encode a PIL image or a uint8 ``HxW`` / ``HxWx3`` / ``HxWx4`` array as JPEG bytes.

    The image is resized to ``size`` (default 128x128, LANCZOS) and saved at JPEG ``quality``
    (default 80), as the format contract recommends.
    """
    picture = _to_rgb(image, size=size)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def encode_gif(
    frames: Any,
    *,
    size: tuple[int, int] = PREVIEW_SIZE,
    fps: float = 8,
    max_frames: int = 16,
) -> bytes:
    """Encode frames (PIL images or uint8 arrays) as a looping animated GIF.

    At most ``max_frames`` (default 16) frames are kept, sampled evenly across the episode with
    ``np.linspace``; each is resized to ``size`` (default 128x128) and shown ``1/fps`` seconds
    (default 8 fps). Palette (``P`` mode) frames of the right size are stored without re-quantizing.
    """
    frames = list(frames)
    if not frames:
        raise InvalidRequest("a GIF needs at least one frame")
    if fps <= 0 or max_frames < 1:
        raise InvalidRequest(f"fps must be > 0 and max_frames >= 1, got {fps} and {max_frames}")
    if len(frames) > max_frames:
        frames = [frames[i] for i in np.linspace(0, len(frames) - 1, max_frames, dtype=int)]
    pictures = [_to_gif_frame(frame, size=size) for frame in frames]
    buffer = io.BytesIO()
    pictures[0].save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=pictures[1:],
        duration=round(1000 / fps),
        loop=0,
    )
    return buffer.getvalue()


def _to_gif_frame(frame: Any, *, size: tuple[int, int]) -> Image.Image:
    if isinstance(frame, Image.Image) and frame.mode == "P" and frame.size == tuple(size):
        return frame
    # Fast octree to 256 colours (dithered): ~8x faster than the median cut Pillow's GIF
    # writer applies to RGB frames, and smaller files; see benchmarks/ingest.py.
    return _to_rgb(frame, size=size).quantize(256, method=Image.Quantize.FASTOCTREE)


def _to_rgb(image: Any, *, size: tuple[int, int]) -> Image.Image:
    """A PIL image or uint8 pixel array as an RGB image of ``size``."""
    if not isinstance(image, Image.Image):
        pixels = np.asarray(image)
        if pixels.dtype != np.uint8 or not _is_pixel_shape(pixels.shape):
            raise InvalidRequest(
                f"an image must be a PIL image or a uint8 HxW, HxWx3 or HxWx4 array, "
                f"got {pixels.dtype} {pixels.shape}; convert with .astype(np.uint8)"
            )
        image = Image.fromarray(np.ascontiguousarray(pixels))
    picture = image.convert("RGB")
    if picture.size != tuple(size):
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    return picture


def _is_pixel_shape(shape: tuple[int, ...]) -> bool:
    if len(shape) == 2:
        return min(shape) > 0
    return len(shape) == 3 and min(shape[:2]) > 0 and shape[2] in (3, 4)


def _coerce_ids(values: Any) -> np.ndarray:
    ids = _as_strings("episode_ids", _as_array("episode_ids", values))
    if ids is None:
        raise InvalidRequest(
            "episode_ids must be strings or UTF-8 bytes, e.g. [f'ep_{i:05d}', ...]"
        )
    if len(ids) == 0:
        raise InvalidRequest("episode_ids is empty: a dataset needs at least one episode")
    if len(ids) > _LIMITS.max_episodes:
        raise InvalidRequest(f"Too many episodes: {len(ids):,} > {_LIMITS.max_episodes:,}")
    empty = np.flatnonzero(ids == "")
    if len(empty):
        raise InvalidRequest(f"episode_ids must be non-empty: row {empty[0]} is empty")
    problem = unprintable_id(ids.tolist())
    if problem is not None:
        raise InvalidRequest(problem, code="unprintable_episode_id")
    unique, counts = np.unique(ids.astype(str), return_counts=True)
    if len(unique) != len(ids):
        worst = np.argmax(counts)
        raise InvalidRequest(
            f"episode_ids must be unique: {str(unique[worst])!r} appears {counts[worst]} times"
        )
    return ids


def _coerce_embeddings(values: Any, n: int) -> np.ndarray:
    array = _as_array("embeddings", values)
    if array.ndim != 2:
        raise InvalidRequest(f"embeddings must be 2D array (N, D), got shape {array.shape}")
    if array.dtype.kind not in "iuf":
        raise InvalidRequest(f"embeddings must be real numbers, got dtype {array.dtype}")
    if array.shape[0] != n:
        raise InvalidRequest(
            f"episode_ids length doesn't match: {n} ids for {array.shape[0]} embeddings"
        )
    if not 1 <= array.shape[1] <= _LIMITS.max_dim:
        raise InvalidRequest(
            f"embedding dimension must be 1 to {_LIMITS.max_dim}, got {array.shape[1]}"
        )
    with np.errstate(over="ignore"):
        stored = np.ascontiguousarray(array, dtype=np.float32)
    bad_rows = np.flatnonzero(~np.isfinite(stored).all(axis=1))
    if len(bad_rows):
        raise InvalidRequest(
            f"Embeddings contain NaN or Inf values in {len(bad_rows)} rows (first: row "
            f"{bad_rows[0]}); check your embedding generation - some frames may have failed "
            "to encode"
        )
    return stored


def _field_name(name: Any) -> str:
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise InvalidRequest(
            f"metadata field names must be non-empty strings without '/': {name!r}"
        )
    return name


def _coerce_field(name: str, values: Any, n: int) -> np.ndarray:
    array = _as_array(f"metadata/{name}", values)
    if array.ndim == 0 or array.shape[0] != n:
        length = "a scalar" if array.ndim == 0 else f"{array.shape[0]} values"
        raise InvalidRequest(f"metadata/{name} length doesn't match: {length} for {n} episodes")
    if array.dtype.kind == "O":
        array = _infer_object_column(name, array)
    kind = array.dtype.kind
    if kind in "USO":
        strings = _as_strings(f"metadata/{name}", array) if array.ndim == 1 else None
        if strings is None:
            raise InvalidRequest(f"metadata/{name}: string fields must be 1-D strings")
        return strings
    if kind == "b":
        return array
    if kind in "iu":
        if kind == "u" and array.size and array.max() > np.iinfo(np.int64).max:
            raise InvalidRequest(f"metadata/{name} has integers too large for int64")
        return array.astype(np.int64)
    if kind == "f":
        return array if array.dtype == np.float32 else array.astype(np.float64)
    raise InvalidRequest(
        f"metadata/{name} has unsupported type {array.dtype}: use bool, int, float or str values"
    )


def _infer_object_column(name: str, array: np.ndarray) -> np.ndarray:
    """An object column (e.g. from pandas) as a bool, int, float or string array."""
    items = array.ravel().tolist()
    if all(isinstance(item, str | bytes) for item in items):
        return array
    if all(isinstance(item, bool | np.bool_) for item in items):
        return array.astype(bool)
    if all(isinstance(item, int | np.integer) and not isinstance(item, bool) for item in items):
        return array.astype(np.int64)
    if all(isinstance(item, int | float | np.number) for item in items):
        return array.astype(np.float64)
    kinds = ", ".join(sorted({type(item).__name__ for item in items}))
    raise InvalidRequest(
        f"metadata/{name} mixes types or holds missing values ({kinds}); "
        "fill missing values and convert the column to one of bool, int, float or str"
    )


def _as_array(label: str, values: Any) -> np.ndarray:
    """numpy view of a list, numpy array or pandas Series / Categorical (pandas not imported)."""
    if hasattr(values, "to_numpy"):
        values = values.to_numpy()
    elif isinstance(values, bytes | str):
        raise InvalidRequest(
            f"{label} needs one value per episode, got a single {type(values).__name__}"
        )
    try:
        return np.asarray(values)
    except ValueError as exc:
        raise InvalidRequest(f"{label} must be a rectangular array: {exc}") from exc


def _as_strings(label: str, array: np.ndarray) -> np.ndarray | None:
    """A 1-D str / bytes array as an object array of str, or ``None`` if it holds other types."""
    if array.ndim != 1:
        return None
    out = np.empty(len(array), dtype=object)
    for i, item in enumerate(array.tolist()):
        if not isinstance(item, str | bytes):
            return None
        out[i] = _utf8_text(label, i, item)
    return out


def _utf8_text(label: str, row: int, item: str | bytes) -> str:
    """``item`` as text HDF5 can store: valid UTF-8 (no lone surrogates) without NUL."""
    try:
        text = item.decode("utf-8") if isinstance(item, bytes) else item
        text.encode("utf-8")
    except UnicodeError as exc:
        raise InvalidRequest(f"{label}[{row}] is not valid UTF-8 text") from exc
    if "\x00" in text:
        raise InvalidRequest(f"{label}[{row}] contains a NUL character, which HDF5 cannot store")
    return text


def _coerce_previews(
    label: str, entries: Sequence[Any], n: int, encode: Callable[[Any], bytes]
) -> np.ndarray:
    if isinstance(entries, bytes | str) or not hasattr(entries, "__len__"):
        raise InvalidRequest(f"{label} must be a sequence with one entry per episode")
    if len(entries) != n:
        raise InvalidRequest(f"{label} length doesn't match: {len(entries)} for {n} episodes")
    out = np.empty(n, dtype=object)
    for i, entry in enumerate(entries):
        data = _preview_bytes(entry, encode)
        if data and sniff_image(data) is None:
            raise InvalidRequest(f"{label}[{i}] is not a JPEG, PNG, GIF or WebP image")
        out[i] = np.frombuffer(data, dtype=np.uint8)
    return out


def _preview_bytes(entry: Any, encode: Callable[[Any], bytes]) -> bytes:
    """Encoded bytes as-is (a 1-D uint8 array counts as bytes), ``b""`` for none, else encode."""
    if entry is None:
        return b""
    if isinstance(entry, bytes | bytearray | memoryview):
        return bytes(entry)
    if isinstance(entry, np.ndarray) and entry.ndim == 1 and entry.dtype == np.uint8:
        return entry.tobytes()
    return encode(entry)


def _write_atomic(path: Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write the arrays to an HDF5 file that appears at ``path`` whole, or not at all."""
    if path.is_dir():
        raise InvalidRequest(f"cannot write {path}: it is a directory")
    if not path.parent.is_dir():
        raise InvalidRequest(f"cannot write {path}: directory {path.parent} does not exist")
    try:
        with replacing(path) as temp, h5py.File(temp, "w") as handle:
            for name, array in arrays.items():
                handle.create_dataset(name, data=array, dtype=_storage_dtype(name, array))
    except OSError as exc:
        raise InvalidRequest(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path


def _storage_dtype(name: str, array: np.ndarray) -> Any:
    if name in ("thumbnails", "gifs"):
        return h5py.vlen_dtype(np.uint8)
    if array.dtype == object:
        return h5py.string_dtype()
    return array.dtype
