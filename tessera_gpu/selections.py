"""Named selections: fixed sets of episodes of one dataset, made and combined by name.

A selection is made from a filter (``map within`` included), a list of episode ids, a sample,
the keepers of the near-duplicate groups (every group cut to its keeper), or a set operation
on other selections (``union``, ``intersect``, ``difference`` of the first with the rest). Its
episode ids are stored when it is made, never its filter, so it never changes afterwards; its
provenance (``source``) says how it was made. In a filter, ``{"field": "selection", "op": "in"
| "not_in", "value": [name, ...]}`` matches the union of the named selections.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import msgspec
import numpy as np

from tessera_gpu.errors import InvalidRequest
from tessera_gpu.names import check_name as check_text_name

__all__ = [
    "MAX_NAME",
    "OPS",
    "Selection",
    "SelectionRequest",
    "check_name",
    "combine",
]

MAX_NAME = 100
OPS = ("union", "intersect", "difference")
Kind = Literal["filter", "episode_ids", "sample", "duplicates", "op"]


class Selection(msgspec.Struct):
    """A named selection: its size, when it was made, and how (``source``)."""

    name: str
    count: int
    created_at: str
    source: dict[str, Any]


def check_name(name: Any) -> str:
    """A selection name: 1 to 100 characters, no ``/`` (it is a path segment), and the rule
    of :mod:`tessera_gpu.names` that dataset names follow too."""
    return check_text_name(name, "selection", max_length=MAX_NAME, forbidden="/")


class SelectionRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``POST .../selections``: a ``name`` and exactly one source."""

    name: str
    filter: list[Any] | None = None
    episode_ids: list[str] | None = None
    sample_id: str | None = None
    duplicates: dict[str, Any] | None = None  # {"threshold", "filter"}: the keeper set
    op: str | None = None
    of: list[str] | None = None

    def __post_init__(self) -> None:
        check_name(self.name)
        self._check_source()

    @property
    def kind(self) -> Kind:
        if self.op is not None or self.of is not None:
            return "op"
        if self.filter is not None:
            return "filter"
        if self.episode_ids is not None:
            return "episode_ids"
        if self.sample_id is not None:
            return "sample"
        return "duplicates"

    def _check_source(self) -> None:
        sources = ("filter", "episode_ids", "sample_id", "duplicates")
        given = [k for k in sources if getattr(self, k) is not None]
        if self.op is not None or self.of is not None:
            given.append("op")
        if len(given) != 1:
            raise InvalidRequest(
                "a selection is made from exactly one of: filter, episode_ids, sample_id, "
                f"duplicates, or op with of; got {', '.join(given) or 'none'}"
            )
        if self.kind == "op":
            if self.op not in OPS:
                raise InvalidRequest(f"op must be union, intersect or difference: got {self.op!r}")
            names = self.of or []
            least = 2 if self.op == "difference" else 1
            if len(names) < least:
                raise InvalidRequest(
                    f"{self.op} needs at least {least} selection name{'s' * (least > 1)} in "
                    f"'of': got {len(names)}"
                )

    def source(self) -> dict[str, Any]:
        """The provenance kept with the selection."""
        if self.kind == "op":
            return {"kind": "op", "op": self.op, "of": list(self.of or [])}
        if self.kind == "filter":
            return {"kind": "filter", "filter": self.filter}
        if self.kind == "episode_ids":
            return {"kind": "episode_ids"}
        if self.kind == "sample":
            return {"kind": "sample", "sample_id": self.sample_id}
        return {"kind": "duplicates", **(self.duplicates or {})}


def combine(op: str, masks: Sequence[np.ndarray]) -> np.ndarray:
    """``union``, ``intersect``, or ``difference`` (the first minus all the others)."""
    out = masks[0].copy()
    for mask in masks[1:]:
        if op == "union":
            out |= mask
        elif op == "intersect":
            out &= mask
        else:
            out &= ~mask
    return out
