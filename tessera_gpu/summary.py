"""Groups of episodes side by side: size, success rate, episode length and top values per group.

``summarize(dataset, mask, group_by)`` splits the matching episodes by a category or bool
field (or a number field, cut at its quantiles, or into ``bins`` equal-width bins) and
describes each group: its ``count``, its ``success_rate`` (where a bool ``success`` field
exists), the quartiles of ``episode_length`` (where it exists), and the ``top`` values of
every other category field. Everything is a bincount over integer codes: one pass per field.
"""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
import numpy as np

from tessera_gpu.errors import InvalidRequest
from tessera_gpu.io.dataset import Dataset
from tessera_gpu.sampling import Strata, strata_of

__all__ = ["TOP_VALUES", "GroupSummary", "LengthStats", "Summary", "summarize"]

TOP_VALUES = 5
MAX_BINS = 200


class LengthStats(msgspec.Struct):
    """Mean and quartiles of a group's episode lengths (null when it has none)."""

    mean: float | None
    q1: float | None
    median: float | None
    q3: float | None


class GroupSummary(msgspec.Struct, omit_defaults=True):
    """One group: its value, size, success rate and episode-length quartiles (where those
    fields exist), and the most frequent values of the other category fields."""

    value: str
    count: int
    top: dict[str, list[tuple[str, int]]]
    success_rate: float | msgspec.UnsetType = msgspec.UNSET
    episode_length: LengthStats | msgspec.UnsetType = msgspec.UNSET


class Summary(msgspec.Struct):
    """The matching episodes (``matched``) split ``group_by`` a field, largest group first."""

    group_by: str
    matched: int
    groups: list[GroupSummary]


def summarize(
    dataset: Dataset, mask: np.ndarray | None, group_by: Any, *, bins: int | None = None
) -> Summary:
    """The groups of the episodes in ``mask`` (all when None) by field ``group_by``."""
    if not isinstance(group_by, str):
        raise InvalidRequest("group_by must be a field name")
    strata = _strata(dataset, group_by, bins)
    rows = np.arange(dataset.n_episodes) if mask is None else np.flatnonzero(mask)
    codes = strata.codes[rows].astype(np.int64)
    n_groups = len(strata.labels)
    counts = np.bincount(codes, minlength=n_groups)
    present = [g for g in np.argsort(-counts, kind="stable").tolist() if counts[g] > 0]
    success = _success_rates(dataset, rows, codes, n_groups)
    lengths = _length_stats(dataset, rows, codes, n_groups)
    tops = _tops(dataset, rows, codes, n_groups, skip=group_by)
    groups = []
    for g in present:
        item = GroupSummary(
            value=strata.labels[g],
            count=int(counts[g]),
            top={name: top[g] for name, top in tops.items()},
        )
        if success is not None:
            item.success_rate = float(success[g])
        if lengths is not None:
            item.episode_length = lengths[g]
        groups.append(item)
    return Summary(group_by=group_by, matched=int(rows.size), groups=groups)


def _strata(dataset: Dataset, name: str, bins: int | None) -> Strata:
    field = dataset.fields.get(name)
    if field is None or field.kind in ("string", "array"):  # said here: strata_of says stratify_by
        usable = [f.name for f in dataset.fields.values() if f.kind not in ("string", "array")]
        problem = f"unknown field {name!r}" if field is None else f"{name!r} is {field.kind}"
        raise InvalidRequest(
            f"{problem}: group_by needs a category, bool or number field; fields: "
            f"{', '.join(usable) or '(none)'}"
        )
    if bins is None:
        found = strata_of(dataset, name)
        assert found is not None
        return found
    field = dataset.fields.get(name)
    if field is None or field.kind not in ("int", "float"):
        raise InvalidRequest(f"bins needs a number field: {name!r} is not one")
    if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= MAX_BINS:
        raise InvalidRequest(f"bins must be an integer from 1 to {MAX_BINS}: got {bins!r}")
    values = field.values.astype(np.float64)
    finite = np.isfinite(values)
    lo, hi = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0, 1)
    edges = np.linspace(lo, hi, bins + 1) if hi > lo else np.array([lo, lo + 1.0])
    codes = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
    fmt = (lambda v: f"{v:.0f}") if field.kind == "int" else (lambda v: f"{v:.4g}")
    labels = [f"[{fmt(a)}, {fmt(b)})" for a, b in itertools.pairwise(edges)]
    codes = codes.astype(np.int32)
    if not finite.all():
        codes[~finite] = len(labels)
        labels.append("missing")
    return Strata(name, codes, tuple(labels))


def _success_rates(
    dataset: Dataset, rows: np.ndarray, codes: np.ndarray, n_groups: int
) -> np.ndarray | None:
    field = dataset.fields.get("success")
    if field is None or field.kind != "bool":
        return None
    wins = np.bincount(codes, weights=field.values[rows].astype(np.float64), minlength=n_groups)
    counts = np.bincount(codes, minlength=n_groups)
    return np.divide(wins, counts, out=np.zeros(n_groups), where=counts > 0)


def _length_stats(
    dataset: Dataset, rows: np.ndarray, codes: np.ndarray, n_groups: int
) -> list[LengthStats] | None:
    field = dataset.fields.get("episode_length")
    if field is None or field.kind not in ("int", "float"):
        return None
    values = field.values[rows].astype(np.float64)
    keep = np.isfinite(values)
    values, codes = values[keep], codes[keep]
    order = np.lexsort((values, codes))
    values, codes = values[order], codes[order]
    starts = np.searchsorted(codes, np.arange(n_groups + 1))
    out = []
    for g in range(n_groups):
        group = values[starts[g] : starts[g + 1]]  # sorted
        if group.size == 0:
            out.append(LengthStats(None, None, None, None))
            continue
        q1, median, q3 = np.quantile(group, [0.25, 0.5, 0.75])
        out.append(LengthStats(float(group.mean()), float(q1), float(median), float(q3)))
    return out


def _tops(
    dataset: Dataset, rows: np.ndarray, codes: np.ndarray, n_groups: int, *, skip: str
) -> dict[str, list[list[tuple[str, int]]]]:
    """For each category field: per group, its most frequent values with their counts."""
    out = {}
    for name, field in dataset.fields.items():
        if name == skip or field.kind != "category":
            continue
        n_values = len(field.categories)
        table = np.bincount(codes * n_values + field.values[rows].astype(np.int64),
                            minlength=n_groups * n_values).reshape(n_groups, n_values)  # fmt: skip
        best = np.argsort(-table, axis=1, kind="stable")[:, :TOP_VALUES]
        out[name] = [
            [(field.categories[v], int(table[g, v])) for v in best[g] if table[g, v] > 0]
            for g in range(n_groups)
        ]
    return out
