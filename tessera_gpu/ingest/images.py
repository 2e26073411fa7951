"""Image embeddings: a vision model the user has, as ONNX, run by ONNX Runtime.

ONNX Runtime is the optional extra ``onnx`` (``pip install 'tessera-gpu[onnx]'``, or
``onnxruntime-gpu`` on a CUDA machine: then its CUDA provider is used). It is imported only
here, when ``--embed image|both`` asks for it.

Preprocessing (``tessera ingest --help`` and the README say the same):

* the model's input is ``(N, 3, H, W)`` float32 (``(N, H, W, 3)`` also works); ``H x W`` comes
  from the model when fixed, else ``--image-size`` (default 224);
* each frame is resized to ``H x W`` whole (bicubic, no crop: the whole scene counts),
  scaled to [0, 1] and normalised per channel with ``(x - mean) / std``: the mean and std come
  from ``--image-mean`` / ``--image-std``, else the model's metadata (``image_mean`` and
  ``image_std`` entries, JSON lists or comma-separated), else ImageNet's;
* the embedding of a frame is the output named ``image_embeds`` or ``pooler_output`` when the
  model has one, else its first output: ``(N, D)`` as is, ``(N, T, D)`` its first token (the
  CLS token of a ViT such as DINOv2), ``(N, C, h, w)`` averaged over ``h x w``;
* an episode's embedding is the mean of its frames' unit embeddings (``--image-frames``
  evenly spaced frames of ``--camera``, default 4), normalised to unit length; wider than
  2,048, it is reduced by a fixed random projection.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tessera_gpu.errors import InvalidRequest, NotFound, Unavailable
from tessera_gpu.ingest.trajectory import Reducer, unit

__all__ = ["DEFAULT_SIZE", "IMAGENET_MEAN", "IMAGENET_STD", "ImageEncoder", "ImageSettings"]

DEFAULT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_PREFERRED_OUTPUTS = ("image_embeds", "pooler_output")


@dataclass(frozen=True)
class ImageSettings:
    """What the user can set (None: from the model, else the defaults)."""

    model: Path
    size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    frames: int = 4
    threads: int | None = None  # ONNX Runtime intra-op threads per call


class ImageEncoder:
    """One ONNX Runtime session; :meth:`embed_episode` is safe to call from several threads."""

    def __init__(self, settings: ImageSettings) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise Unavailable(
                "image embeddings need ONNX Runtime: pip install 'tessera-gpu[onnx]' "
                "(or onnxruntime-gpu on a CUDA machine)",
                code="onnxruntime_missing",
            ) from None
        if not settings.model.is_file():
            raise NotFound(f"No such model file: {settings.model}", code="file_not_found")
        options = ort.SessionOptions()
        if settings.threads:
            options.intra_op_num_threads = settings.threads
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(str(settings.model), options, providers=providers)
        except Exception as exc:  # ONNX Runtime's own errors: not an ONNX model, bad graph
            raise InvalidRequest(
                f"cannot load {settings.model} as an ONNX model: {exc}", code="bad_model"
            ) from None
        self.provider = self.session.get_providers()[0]
        self.frames = settings.frames
        self._input = self.session.get_inputs()[0]
        shape = list(self._input.shape)
        if len(shape) != 4 or 3 not in (shape[1], shape[3]):
            raise InvalidRequest(
                f"{settings.model.name}: its input {self._input.name} has shape "
                f"{shape}; an image model takes (N, 3, H, W)",
                code="bad_model",
            )
        self.channels_first = shape[1] == 3
        spatial = shape[2:] if self.channels_first else shape[1:3]
        fixed = [s for s in spatial if isinstance(s, int) and s > 0]
        size = settings.size or DEFAULT_SIZE
        self.height: int = int(spatial[0]) if len(fixed) == 2 else size
        self.width: int = int(spatial[1]) if len(fixed) == 2 else size
        meta = self.session.get_modelmeta().custom_metadata_map
        self.mean = np.asarray(
            settings.mean or _triple(meta, "image_mean") or IMAGENET_MEAN, dtype=np.float32
        )
        self.std = np.asarray(
            settings.std or _triple(meta, "image_std") or IMAGENET_STD, dtype=np.float32
        )
        names = [o.name for o in self.session.get_outputs()]
        self._output = next((n for n in _PREFERRED_OUTPUTS if n in names), names[0])
        probe = self._features([np.zeros((self.height, self.width, 3), np.uint8)])
        self.native_dim = int(probe.shape[1])
        self.reducer = Reducer.to_fit(self.native_dim)

    @property
    def dim(self) -> int:
        return self.reducer.n_out

    def prepare(self, frame: np.ndarray) -> np.ndarray:
        """One ``(H, W, 3)`` uint8 frame as the model's normalised float32 input."""
        picture = Image.fromarray(frame).convert("RGB")
        if picture.size != (self.width, self.height):
            picture = picture.resize((self.width, self.height), Image.Resampling.BICUBIC)
        pixels = np.asarray(picture, dtype=np.float32) / 255.0
        pixels = (pixels - self.mean) / self.std
        return pixels.transpose(2, 0, 1) if self.channels_first else pixels

    def _features(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        batch = np.stack([self.prepare(f) for f in frames]).astype(np.float32)
        (out,) = self.session.run([self._output], {self._input.name: batch})
        out = np.asarray(out, dtype=np.float32)
        if out.ndim == 3:
            out = out[:, 0]
        elif out.ndim == 4:
            out = out.mean(axis=(2, 3))
        if out.ndim != 2:
            raise InvalidRequest(
                f"the model's output {self._output} has shape {out.shape}; "
                "expected (N, D), (N, T, D) or (N, C, h, w)",
                code="bad_model",
            )
        return out

    def embed_episode(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """The episode's unit embedding from its frames (the mean of their unit features)."""
        features = self._features(frames)
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        mean = (features / np.maximum(norms, 1e-12)).mean(axis=0)
        return self.reducer(unit(mean))


def _triple(meta: dict[str, str], key: str) -> tuple[float, ...] | None:
    raw = meta.get(key)
    if raw is None:
        return None
    try:
        values = json.loads(raw) if raw.strip().startswith("[") else raw.split(",")
        out = tuple(float(v) for v in values)
    except (ValueError, TypeError):
        raise InvalidRequest(
            f"the model's metadata {key}={raw!r} is not 3 numbers", code="bad_model"
        ) from None
    if len(out) != 3:
        raise InvalidRequest(
            f"the model's metadata {key} needs 3 numbers, got {len(out)}", code="bad_model"
        )
    return out


def default_threads(workers: int) -> int:
    """ONNX Runtime threads per call when ``workers`` threads call it at once."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))
