"""Training subsets: random, stratified and K-means diversity samples, their manifests and exports.

Every method draws from the episodes that match the request's filter, is seeded, and returns
ascending row indices, so the same request and seed always give the same episode ids.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import msgspec
import numpy as np

from tessera_gpu.backends import Backend
from tessera_gpu.errors import Conflict, InvalidRequest, needs_embeddings
from tessera_gpu.exports import export_ids
from tessera_gpu.filters import DUPLICATES_FIELD, FilterContext, filter_mask, parse_filter
from tessera_gpu.io.dataset import Dataset, Field

__all__ = [
    "COVERAGE_QUERY_ROWS",
    "MAX_SAMPLE",
    "Allocation",
    "Coverage",
    "Manifest",
    "Method",
    "Sample",
    "SampleParams",
    "SampleRequest",
    "SampleStats",
    "allocate",
    "build_manifest",
    "draw_sample",
    "export_filename",
    "export_sample",
    "random_rows",
]

Method = Literal["kmeans", "stratified", "random"]
Allocation = Literal["proportional", "equal"]
MAX_SAMPLE = 200_000
#: Coverage stats are measured from at most this many (seeded) filtered episodes.
COVERAGE_QUERY_ROWS = 5_000


class SampleRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What to sample (``POST .../samples``, ``tessera sample``): ``filter`` holds raw
    condition objects (checked by ``parse_filter`` against the dataset)."""

    method: Method
    n: int
    seed: int = 0
    filter: tuple[Any, ...] | None = ()
    stratify_by: str | None = None
    allocation: Allocation = "proportional"
    dedup_threshold: float | None = None

    #: What a wrong value of each field is told (``{value!r}``: what was sent).
    rules: ClassVar[dict[str, str]] = {
        "method": "method must be kmeans, stratified or random, got {value!r}",
        "n": f"n must be an integer from 1 to {MAX_SAMPLE:,}, got {{value!r}}",
        "seed": "seed must be a non-negative integer, got {value!r}",
        "filter": "filter must be a list of conditions",
        "stratify_by": "stratify_by must be a field name, got {value!r}",
        "allocation": "allocation must be proportional or equal, got {value!r}",
        "dedup_threshold": "dedup_threshold must be a number in (0, 1]: got {value!r}",
    }

    def __post_init__(self) -> None:
        """The checks beyond the types, whoever builds the request (a body, the CLI)."""
        if not _is_int(self.n) or not 0 < self.n <= MAX_SAMPLE:
            raise InvalidRequest(self.rules["n"].format(value=self.n))
        if not _is_int(self.seed) or not 0 <= self.seed < 2**63:
            raise InvalidRequest(self.rules["seed"].format(value=self.seed))
        if self.method == "stratified" and self.stratify_by is None:
            raise InvalidRequest("stratified sampling needs stratify_by (a category or bool field)")
        msgspec.structs.force_setattr(self, "filter", tuple(self.filter or ()))
        if self.dedup_threshold is not None:
            from tessera_gpu.similarity import check_threshold

            threshold = check_threshold(self.dedup_threshold, "dedup_threshold")
            msgspec.structs.force_setattr(self, "dedup_threshold", threshold)

    @property
    def conditions(self) -> list[Any]:
        """The filter, with the dedup step as its last condition when one is asked for."""
        out = [dict(c) if isinstance(c, dict) else c for c in self.filter or ()]
        if self.dedup_threshold is not None:
            out.append({"field": DUPLICATES_FIELD, "op": "keep_one", "value": self.dedup_threshold})
        return out

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, the inverse of decoding one."""
        out = msgspec.structs.asdict(self)
        out["filter"] = [_plain(c) for c in self.filter or ()]
        if self.dedup_threshold is None:
            del out["dedup_threshold"]
        return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class Sample:
    """A drawn sample: ascending global row indices, their ids, how many matched, and stats."""

    indices: np.ndarray
    episode_ids: list[str]
    matched: int
    stats: dict[str, Any] = field(default_factory=dict)


def draw_sample(
    dataset: Dataset,
    request: SampleRequest,
    *,
    backend: Backend | None = None,
    device_embeddings: Any = None,
    context: FilterContext | None = None,
    diverse: Diverse | None = None,
) -> Sample:
    """Draw ``request`` from ``dataset``; the same request and seed give the same ids.

    ``backend``/``device_embeddings`` are used by ``kmeans`` only (made on the CPU backend when
    absent); ``context`` is what pseudo-field conditions refer to (the finished map, the
    selections, the similarity graph that ``dedup_threshold`` needs). ``diverse`` draws the
    K-means picks elsewhere -- on a Dask cluster, where the embeddings are -- and then the
    sample reports no coverage (measuring it would bring vectors back).
    """
    if request.method == "kmeans":
        needs_embeddings(
            dataset.dim, "K-means sampling needs embeddings: this dataset is metadata-only"
        )
    strata = strata_of(dataset, request.stratify_by)
    stats: dict[str, Any] = {}
    mask = filter_mask(dataset, parse_filter(list(request.filter or ()), dataset, context=context),
                       context=context)  # fmt: skip
    if request.dedup_threshold is not None:  # the last of request.conditions, applied to mask
        (dedup,) = parse_filter(request.conditions[-1:], dataset, context=context)
        assert context is not None  # parse_filter refuses keep_one without one
        assert context.keep_one is not None
        kept = context.keep_one(float(dedup.value), mask)
        removed = int(np.count_nonzero(mask)) - int(np.count_nonzero(kept))
        stats["dedup"] = {"threshold": request.dedup_threshold, "removed": removed}
        mask = kept
    rows = np.flatnonzero(mask).astype(np.int64)
    matched = int(rows.size)
    if matched == 0:
        raise InvalidRequest("no episodes match the filter")
    if request.n > matched:
        raise InvalidRequest(
            f"n = {request.n:,} is larger than the {matched:,} episodes that match the filter"
        )
    if request.method == "random":
        indices = random_rows(rows, request.n, seed=request.seed)
    elif request.method == "stratified":
        assert strata is not None  # SampleRequest requires stratify_by for this method
        indices = np.sort(np.concatenate(_per_stratum(rows, strata, request, _random_in(request))))
    elif diverse is not None:
        indices, _ = _kmeans_sample(diverse, None, rows, strata, request)
    else:
        backend, x = _embeddings_on(dataset, backend, device_embeddings)
        indices, coverage = _kmeans_sample(
            _diverse_on(x, backend), _coverage_on(x, backend), rows, strata, request
        )
        stats.update(coverage)
    stats_field = strata or strata_of(dataset, _DEFAULT_STRATA, missing_ok=True)
    stats["per_stratum_field"] = stats_field.name if stats_field else None
    stats["per_stratum"] = stats_field.counts(rows, indices) if stats_field else None
    ids = dataset.episode_ids[indices].tolist()
    return Sample(indices=indices, episode_ids=ids, matched=matched, stats=stats)


def random_rows(rows: np.ndarray, n: int, *, seed: int) -> np.ndarray:
    """``n`` distinct rows drawn uniformly from ``rows``, ascending."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(rows, size=n, replace=False)).astype(np.int64)


_DEFAULT_STRATA = "task"
QUANTILE_BINS = 5


@dataclass(frozen=True)
class Strata:
    """A partition of the episodes: an integer code per episode and a label per code.

    Category and bool fields are their values; a number field is cut at its quantiles into
    :data:`QUANTILE_BINS` bins (``[low, high)``, the last closed), missing values apart."""

    name: str
    codes: np.ndarray
    labels: tuple[str, ...]

    def counts(self, rows: np.ndarray, indices: np.ndarray) -> dict[str, int]:
        """Sample counts per stratum present among the matching rows, in label order."""
        present = np.bincount(self.codes[rows], minlength=len(self.labels))
        counts = np.bincount(self.codes[indices], minlength=len(self.labels))
        return {self.labels[i]: int(counts[i]) for i in np.flatnonzero(present)}


def strata_of(dataset: Dataset, name: str | None, *, missing_ok: bool = False) -> Strata | None:
    """The strata of field ``name`` (None for None); 400 for an unknown or array field."""
    if name is None:
        return None
    fld = dataset.fields.get(name)
    if fld is None or fld.kind in ("string", "array"):
        if missing_ok:
            return None
        if fld is None:
            names = ", ".join(f.name for f in dataset.fields.values()
                              if f.kind not in ("string", "array"))  # fmt: skip
            raise InvalidRequest(
                f"unknown field {name!r} for stratify_by; fields: {names or '(none)'}"
            )
        raise InvalidRequest(
            f"cannot stratify by {name!r} ({fld.kind}): stratify_by needs a category, bool "
            "or number field"
        )
    if fld.kind == "category":
        return Strata(name, fld.values, fld.categories)
    if fld.kind == "bool":
        if fld.missing is not None and fld.missing.any():  # a joined file lacks the field
            codes = np.where(fld.missing, 2, fld.values).astype(np.int32)
            return Strata(name, codes, ("false", "true", "missing"))
        return Strata(name, fld.values.astype(np.int32), ("false", "true"))
    return _quantile_strata(fld)


def _quantile_strata(fld: Field) -> Strata:
    values = fld.values.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return Strata(fld.name, np.zeros(values.size, dtype=np.int32), ("missing",))
    edges = np.quantile(values[finite], np.linspace(0, 1, QUANTILE_BINS + 1))
    if fld.kind == "int":  # whole-number edges, so a label says exactly which values it holds
        edges = np.ceil(edges)
    edges = np.unique(edges)
    if edges.size == 1:
        edges = np.array([edges[0], edges[0]])
    inner = edges[1:-1]
    codes = np.searchsorted(inner, values, side="right").astype(np.int32)
    fmt = (lambda v: f"{int(v)}") if fld.kind == "int" else (lambda v: f"{v:.4g}")
    labels = [f"[{fmt(lo)}, {fmt(hi)})" for lo, hi in itertools.pairwise(edges[:-1])]
    labels.append(f"[{fmt(edges[-2])}, {fmt(edges[-1])}]")
    if not finite.all():
        codes[~finite] = len(labels)
        labels.append("missing")
    return Strata(fld.name, codes, tuple(labels))


def allocate(sizes: np.ndarray, n: int, *, allocation: Allocation) -> np.ndarray:
    """How many to draw from each stratum of ``sizes`` (all > 0, sum >= n); sums to ``n``.

    proportional: largest remainder (Hamilton); equal: ``n / k`` each, capped by a stratum's
    size, the shortfall shared again among the others until nothing is capped. Ties for a
    leftover unit go to the earlier stratum in label order.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if allocation == "proportional":
        total = int(sizes.sum())
        quota, remainder = np.divmod(n * sizes, total)
        short = n - int(quota.sum())
        order = np.argsort(-remainder, kind="stable")
        quota[order[:short]] += 1
        return quota
    out = np.zeros_like(sizes)
    active = np.ones(sizes.size, dtype=bool)
    left = n
    share = 0
    while active.any():
        share = left // int(active.sum())
        capped = active & (sizes <= share)
        if not capped.any():
            break
        out[capped] = sizes[capped]
        left -= int(sizes[capped].sum())
        active &= ~capped
    open_ = np.flatnonzero(active)
    out[open_] = share
    out[open_[: left - share * open_.size]] += 1
    return out


PickIn = Callable[[np.ndarray, int, int], np.ndarray]


def _per_stratum(
    rows: np.ndarray, strata: Strata, request: SampleRequest, pick: PickIn
) -> list[np.ndarray]:
    """Split the quota across the strata by the request's allocation, then ``pick(rows,
    quota, stratum number)`` in each; one array of picked rows per stratum with a quota."""
    groups = _strata_groups(rows, strata)
    sizes = np.array([g.size for _, g in groups])
    counts = allocate(sizes, request.n, allocation=request.allocation)
    return [pick(g, int(k), i) for i, ((_, g), k) in enumerate(zip(groups, counts, strict=True))
            if k > 0]  # fmt: skip


def _strata_groups(rows: np.ndarray, strata: Strata) -> list[tuple[int, np.ndarray]]:
    """``(code, rows)`` of every stratum present among ``rows``, in code order."""
    row_codes = strata.codes[rows]
    order = np.argsort(row_codes, kind="stable")
    present, starts = np.unique(row_codes[order], return_index=True)
    return list(zip(present.tolist(), np.split(rows[order], starts[1:]), strict=True))


def _random_in(request: SampleRequest) -> PickIn:
    rng = np.random.default_rng(request.seed)
    return lambda group, k, _: rng.choice(group, size=k, replace=False)


def _embeddings_on(
    dataset: Dataset, backend: Backend | None, device_embeddings: Any
) -> tuple[Backend, Any]:
    if backend is None:
        from tessera_gpu.backends import get_backend

        backend = get_backend("cpu")
    if device_embeddings is None:
        if dataset.embeddings is None:  # left on disk for a Dask cluster that is not here
            raise Conflict("K-means sampling of this dataset needs its Dask cluster (--dask)")
        device_embeddings = backend.to_device(dataset.embeddings)
    return backend, device_embeddings


#: ``(rows, n, seed) -> n`` rows of ``rows`` chosen by K-means diversity (any order).
Diverse = Callable[[np.ndarray, int, int], np.ndarray]
#: ``(rows, picked, request) -> `` the coverage of ``rows`` by ``picked``.
Cover = Callable[[np.ndarray, np.ndarray, "SampleRequest"], dict[str, Any]]


def _diverse_on(x: Any, backend: Backend) -> Diverse:
    from tessera_gpu.clustering import diversity_sample

    return lambda rows, n, seed: diversity_sample(x, n, backend=backend, rows=rows, seed=seed)


def _coverage_on(x: Any, backend: Backend) -> Cover:
    return lambda rows, picked, request: _coverage(x, rows, picked, request, backend)


def _kmeans_sample(
    diverse: Diverse,
    cover: Cover | None,
    rows: np.ndarray,
    strata: Strata | None,
    request: SampleRequest,
) -> tuple[np.ndarray, dict[str, Any]]:
    """A K-means diversity sample of ``rows`` (within each stratum, by the allocation, when
    ``strata`` is given), and its coverage (with ``cover``): overall, and per stratum."""
    if strata is None:
        picked = diverse(rows, request.n, request.seed)
        indices = np.sort(np.asarray(picked, dtype=np.int64))
        return indices, {} if cover is None else {"coverage": cover(rows, indices, request)}
    per: dict[str, Any] = {}

    def pick(group: np.ndarray, k: int, _: int) -> np.ndarray:
        if k == group.size:  # the whole stratum: nothing to choose
            chosen = group
        else:
            chosen = np.sort(np.asarray(diverse(group, k, request.seed), dtype=np.int64))
        if cover is not None:
            per[strata.labels[int(strata.codes[group[0]])]] = cover(group, chosen, request)
        return chosen

    indices = np.sort(np.concatenate(_per_stratum(rows, strata, request, pick)))
    if cover is None:
        return indices, {}
    return indices, {"coverage": cover(rows, indices, request), "coverage_per_stratum": per}


def _coverage(
    x: Any, rows: np.ndarray, indices: np.ndarray, request: SampleRequest, backend: Backend
) -> dict[str, Any]:
    """How close the episodes of ``rows`` are to their nearest one of ``indices`` (picked from
    ``rows``), against a random draw of as many from the same ``rows``: like with like, for
    the whole sample and for each stratum's share.  Measured on every row of ``rows`` (up to
    ``COVERAGE_QUERY_ROWS``, else on a seeded draw independent of the random baseline)."""
    from tessera_gpu.clustering import nearest_sample_distances

    query = rows
    if rows.size > COVERAGE_QUERY_ROWS:
        picked = np.random.default_rng([request.seed, 1]).choice(rows.size, COVERAGE_QUERY_ROWS,
                                                                 replace=False)  # fmt: skip
        query = np.sort(rows[picked])
    baseline = random_rows(rows, len(indices), seed=request.seed)
    ours = np.asarray(nearest_sample_distances(x, query, indices, backend=backend), float)
    theirs = np.asarray(nearest_sample_distances(x, query, baseline, backend=backend), float)
    mean, random_mean = float(ours.mean()), float(theirs.mean())
    gain = 100.0 * (random_mean - mean) / random_mean if random_mean > 0 else 0.0
    return {
        "mean": mean,
        "max": float(ours.max()),
        "random_mean": random_mean,
        "random_max": float(theirs.max()),
        "improvement_mean_pct": round(gain, 2),
        "evaluated_on": int(query.size),
    }


class Coverage(msgspec.Struct):
    """How well a K-means sample covers the filtered episodes (Euclidean distance of each to
    its nearest sampled one), against a random sample of the same size from the same
    episodes."""

    mean: float
    max: float
    random_mean: float
    random_max: float
    improvement_mean_pct: float
    evaluated_on: int


class Dedup(msgspec.Struct):
    """The near-duplicate cut made before sampling: its cosine threshold, and how many
    matching episodes it removed (every group cut to its keeper)."""

    threshold: float
    removed: int


class SampleStats(msgspec.Struct, omit_defaults=True):
    """The sample's counts per stratum; K-means samples add their coverage against a random
    sample of the same size (per stratum too when stratified); ``dedup`` when asked for."""

    per_stratum_field: str | None
    per_stratum: dict[str, int] | None
    coverage: Coverage | msgspec.UnsetType = msgspec.UNSET
    coverage_per_stratum: dict[str, Coverage] | msgspec.UnsetType = msgspec.UNSET
    dedup: Dedup | msgspec.UnsetType = msgspec.UNSET


class SampleParams(msgspec.Struct, omit_defaults=True):
    n: int
    stratify_by: str | None
    allocation: str
    dedup_threshold: float | None = None


class Manifest(msgspec.Struct):
    """Everything needed to reproduce and audit a sample (the sample routes' answer).

    ``projection`` names the map a ``map within`` condition was drawn on (its parameters,
    algorithm and embeddings hash); null when the filter does not use the map.
    """

    sample_id: str
    created_at: str
    tessera_version: str
    dataset_id: str
    dataset_name: str
    dataset_hash: str
    n_episodes: int
    filter: list[dict[str, Any]]
    projection: dict[str, Any] | None
    method: str
    params: SampleParams
    seed: int
    matched: int
    n: int
    episode_ids: list[str]
    stats: SampleStats


def build_manifest(
    dataset: Dataset,
    request: SampleRequest,
    sample: Sample,
    *,
    dataset_id: str,
    dataset_hash: str,
    sample_id: str,
    created_at: str,
    version: str,
    projection: dict[str, Any] | None = None,
) -> Manifest:
    """The manifest of a drawn sample."""
    return Manifest(
        sample_id=sample_id,
        created_at=created_at,
        tessera_version=version,
        dataset_id=dataset_id,
        dataset_name=dataset.name,
        dataset_hash=dataset_hash,
        n_episodes=dataset.n_episodes,
        filter=[_plain(c) for c in request.filter or ()],
        projection=_plain(projection),
        method=request.method,
        params=SampleParams(
            request.n, request.stratify_by, request.allocation, request.dedup_threshold
        ),
        seed=request.seed,
        matched=sample.matched,
        n=len(sample.episode_ids),
        episode_ids=list(sample.episode_ids),
        stats=msgspec.convert(_plain(sample.stats), SampleStats),
    )


def _plain(value: Any) -> Any:
    """numpy scalars/arrays and tuples -> plain JSON types, recursively."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def export_sample(
    dataset: Dataset,
    manifest: Manifest,
    fmt: str,
    *,
    by: str | None = None,
    tau: float | None = None,
    complement: bool = False,
) -> tuple[bytes, str]:
    """The sample as a file (:mod:`tessera_gpu.exports`; ``json`` is the manifest);
    ``complement``: the dataset's episodes not in it."""
    document = msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n"
    return export_ids(dataset, manifest.episode_ids, fmt, document=document, by=by, tau=tau,
                      complement=complement)  # fmt: skip


def export_filename(manifest: Manifest, fmt: str, *, complement: bool = False) -> str:
    """E.g. ``droid_v2-kmeans-5000-seed0.txt``: the dataset's name (else its id), the method
    (stratified adds the field), n and the seed."""
    label = manifest.dataset_name or manifest.dataset_id
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(label)).strip("._") or "sample"
    method = manifest.method
    if method == "stratified":
        method += f"-{manifest.params.stratify_by}"
    method = re.sub(r"[^A-Za-z0-9._-]+", "_", method)
    rest = "-complement" if complement else ""
    return f"{name}-{method}-{manifest.n}-seed{manifest.seed}{rest}.{file_extension(fmt)}"


def file_extension(fmt: str) -> str:
    """``lerobot.json`` and ``weights.csv`` for those exports; the format itself otherwise."""
    return {"lerobot": "lerobot.json", "weights": "weights.csv"}.get(fmt, fmt)
