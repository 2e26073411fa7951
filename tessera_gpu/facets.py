"""Cross-filter counts for the filter panel, as Embedding Atlas counts them.

Each value of a category or bool field is counted among the episodes that match every
condition *except those on that field*: with ``success = true`` and ``task in [pick]``, the
``task`` counts are those of the successful episodes (so the unchecked values show what
checking them would add), and the ``success`` counts are those of the pick episodes. A field
with no condition of its own is counted among all the filter's matches. Rows a joined file
lacks the field for are not counted, as in the dataset's summary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec
import numpy as np

from tessera_gpu.filters import Condition
from tessera_gpu.io.dataset import Dataset, Field

__all__ = ["Facets", "facet_counts"]


class Facets(msgspec.Struct):
    """``matched`` of ``total`` episodes match the whole filter; ``fields`` holds, for each
    category and bool field, the count of each value (the summary's values, zeros included)
    among the episodes matching every other condition."""

    total: int
    matched: int
    fields: dict[str, dict[str, int]]


def facet_counts(
    dataset: Dataset,
    conditions: Sequence[Condition],
    mask_of: Callable[[list[Condition]], np.ndarray],
) -> Facets:
    """The cross-filter counts of ``dataset`` under ``conditions``; ``mask_of`` evaluates a
    list of conditions (the caller's filter context: map, selections, near-duplicates)."""
    matched = mask_of(list(conditions))
    fields: dict[str, dict[str, int]] = {}
    for name, field in dataset.fields.items():
        if field.kind not in ("category", "bool"):
            continue
        others = [c for c in conditions if c.field != name]
        mask = matched if len(others) == len(conditions) else mask_of(others)
        fields[name] = _value_counts(field, mask)
    return Facets(total=dataset.n_episodes, matched=int(np.count_nonzero(matched)), fields=fields)


def _value_counts(field: Field, mask: np.ndarray) -> dict[str, int]:
    """Counts under ``mask`` keyed as :meth:`Field.summary` keys them."""
    if field.missing is not None:
        mask = mask & ~field.missing
    values = field.values[mask]
    if field.kind == "bool":
        n_true = int(np.count_nonzero(values))
        return {"true": n_true, "false": int(values.size - n_true)}
    counts = np.bincount(values, minlength=len(field.categories))
    return {label: int(n) for label, n in zip(field.categories, counts, strict=True)}
