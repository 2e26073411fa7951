"""A set of episodes (a sample or a selection) as a file for a training pipeline.

==========  ==================================================================================
``txt``     one episode id a line
``csv``     the ids with every filterable field
``json``    the sample's manifest, or the selection's record
``lerobot`` ``{"episodes": [int, ...]}`` for ``lerobot-train --dataset.episodes=...`` and
            ``LeRobotDataset(repo_id, episodes=[...])``; when the dataset holds several LeRobot
            datasets, one list per dataset: ``{"datasets": {name: [int, ...]}}``, named by the
            ``dataset`` field, else by the ``source`` file of a joined dataset
``weights`` ``episode_id,weight`` for mixture training: each group of field ``by`` gets a total
            weight proportional to ``n_k ** tau`` (its size to the power tau), shared equally by
            its episodes; the weights sum to 1. ``tau = 1`` keeps the natural mix, ``tau = 0``
            makes the groups equal.
==========  ==================================================================================

LeRobot episode indices come from an integer ``episode_index`` field when there is one, else
from episode ids that are integers or end in one (``ep_000123`` -> 123); otherwise the export
is refused (409) with what to add. An empty list (LeRobot refuses it: "corresponds to no
data"), or an index twice in one list (LeRobot would count it twice and load it once), is a
409 too.

``complement`` exports every episode of the dataset *not* in the set instead: the episodes to
drop, e.g. for ``lerobot-edit-dataset --operation.type delete_episodes``.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from tessera_gpu.errors import Conflict, InvalidRequest
from tessera_gpu.io.dataset import Dataset, Field

__all__ = [
    "FORMATS",
    "complement_of",
    "export_ids",
    "lerobot_document",
    "mixture_weights",
    "rows_of",
]

FORMATS = {
    "txt": "text/plain; charset=utf-8",
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
    "lerobot": "application/json",
    "weights": "text/csv; charset=utf-8",
}
_TRAILING_INT = re.compile(r"(\d+)$")


def rows_of(dataset: Dataset, ids: Sequence[str]) -> np.ndarray:
    """The dataset rows of ``ids`` (int64, in their order); 400 for an id it does not hold."""
    rows = []
    for eid in ids:
        index = dataset.index_of(eid)
        if index is None:
            raise InvalidRequest(f"episode {eid!r} is not in {dataset.name}")
        rows.append(index)
    return np.asarray(rows, dtype=np.int64)


def complement_of(dataset: Dataset, ids: Sequence[str]) -> list[str]:
    """The dataset's episode ids that are not in ``ids``, in dataset order."""
    keep = np.ones(dataset.n_episodes, dtype=bool)
    keep[rows_of(dataset, ids)] = False
    return [str(i) for i in dataset.episode_ids[keep]]


def export_ids(
    dataset: Dataset,
    ids: Sequence[str],
    fmt: str,
    *,
    document: bytes | None = None,
    by: str | None = None,
    tau: float | None = None,
    complement: bool = False,
) -> tuple[bytes, str]:
    """``ids`` of ``dataset`` as ``fmt`` (see the module docstring): ``(bytes, media type)``.
    ``document`` is the ``json`` format's body (the manifest or the selection's record);
    ``complement`` exports the dataset's other episodes instead (not as ``json``)."""
    if fmt not in FORMATS:
        raise InvalidRequest(f"format must be {', '.join(FORMATS)}: got {fmt!r}")
    if complement:
        if fmt == "json":
            raise InvalidRequest(
                "complement exports txt, csv, lerobot or weights, not json "
                "(the record describes the set itself)"
            )
        ids = complement_of(dataset, ids)
    if fmt == "txt":
        body = "".join(f"{i}\n" for i in ids).encode("utf-8")
    elif fmt == "json":
        body = document if document is not None else json.dumps(list(ids)).encode()
    elif fmt == "csv":
        body = _csv_text(dataset, ids).encode("utf-8")
    elif fmt == "lerobot":
        body = json.dumps(lerobot_document(dataset, ids, complement=complement)).encode() + b"\n"
    else:
        if by is None:
            raise InvalidRequest("the weights export needs by=FIELD (the groups to balance)")
        weights = mixture_weights(dataset, ids, by=by, tau=1.0 if tau is None else tau)
        rows = "".join(f"{eid},{float(w)!r}\n" for eid, w in zip(ids, weights, strict=True))
        body = ("episode_id,weight\n" + rows).encode("utf-8")
    return body, FORMATS[fmt]


# ---- csv --------------------------------------------------------------------------------------


def _csv_text(dataset: Dataset, ids: Sequence[str]) -> str:
    rows = rows_of(dataset, ids)
    columns = [f for f in dataset.fields.values() if f.filterable]
    cells = [[_csv_cell(v) for v in f.json_values(rows)] for f in columns]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["episode_id", *(f.name for f in columns)])
    writer.writerows(zip(ids, *cells, strict=True))
    return buf.getvalue()


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


# ---- lerobot ----------------------------------------------------------------------------------


def lerobot_document(
    dataset: Dataset, ids: Sequence[str], *, complement: bool = False
) -> dict[str, Any]:
    """The LeRobot episode list(s) of ``ids`` (see the module docstring), sorted.
    ``complement``: ``ids`` are already the complement (only the empty message differs)."""
    if not ids:
        what = "the set is empty"
        if complement:
            what = (
                "the complement is empty: the set holds every episode, so there is nothing to drop"
            )
        raise Conflict(
            f"{what}; LeRobot refuses an empty episode list ('corresponds to no data')",
            code="empty_export",
        )
    rows = rows_of(dataset, ids)
    indices = _episode_indices(dataset, rows, ids)
    names = _lerobot_datasets(dataset)
    if names is None:
        return {"episodes": _unique_sorted(indices.tolist(), None)}
    out: dict[str, list[int]] = {}
    for name, index in zip(names[rows].tolist(), indices.tolist(), strict=True):
        out.setdefault(str(name), []).append(int(index))
    return {"datasets": {k: _unique_sorted(v, k) for k, v in sorted(out.items())}}


def _lerobot_datasets(dataset: Dataset) -> np.ndarray | None:
    """Each row's LeRobot dataset name (the ``dataset`` field, else a joined dataset's
    ``source``), or None when the whole dataset is one LeRobot dataset."""
    names: np.ndarray | None = None
    for key in ("source", "dataset"):  # dataset last: it wins where a row has it
        field = dataset.fields.get(key)
        if field is None or field.kind != "category":
            continue
        values = np.asarray(field.categories, dtype=object)[field.values]
        if field.missing is not None and names is not None:
            values = np.where(field.missing, names, values)
        names = values
    if names is None or len(set(names.tolist())) < 2:
        return None
    return names


def _unique_sorted(indices: list[int], name: str | None) -> list[int]:
    ordered = sorted(indices)
    twice = next((a for a, b in itertools.pairwise(ordered) if a == b), None)
    if twice is not None:
        where = f" of dataset {name!r}" if name is not None else ""
        raise Conflict(
            f"episode index {twice} appears more than once in the LeRobot list{where}: the "
            "episodes come from several LeRobot datasets; give them a 'dataset' field (their "
            "names) to export one list per dataset",
            code="duplicate_episode_index",
        )
    return ordered


def _episode_indices(dataset: Dataset, rows: np.ndarray, ids: Sequence[str]) -> np.ndarray:
    field = dataset.fields.get("episode_index")
    if field is not None and field.kind == "int":
        lacking = (
            np.zeros(0, np.int64) if field.missing is None else np.flatnonzero(field.missing[rows])
        )
        if len(lacking):
            row = int(rows[lacking[0]])
            source = dataset.fields.get("source")
            where = (
                ""
                if source is None
                else f" (its file {source.json_values(np.array([row]))[0]} has none)"
            )
            raise Conflict(
                f"cannot make LeRobot episode indices: episode {ids[lacking[0]]!r} has no "
                f"episode_index{where}. Leave such episodes out of the export, or add the field "
                "to that file",
                code="no_episode_index",
            )
        return field.values[rows].astype(np.int64)
    numbers = []
    for eid in ids:
        match = _TRAILING_INT.search(eid)
        if match is None:
            raise Conflict(
                f"cannot make LeRobot episode indices: episode id {eid!r} does not end in a "
                "number. Add an integer metadata field 'episode_index' (the episode's index in "
                "the LeRobot dataset), or use ids such as 'ep_000123'",
                code="no_episode_index",
            )
        numbers.append(int(match.group(1)))
    return np.asarray(numbers, dtype=np.int64)


# ---- mixture weights --------------------------------------------------------------------------


def mixture_weights(dataset: Dataset, ids: Sequence[str], *, by: str, tau: float) -> np.ndarray:
    """Per-episode weights: group k of ``by`` gets ``n_k**tau / sum_j n_j**tau``, shared
    equally by its episodes; they sum to 1 (float64, in the order of ``ids``)."""
    if isinstance(tau, bool) or not isinstance(tau, int | float) or not 0.0 <= tau <= 1.0:
        raise InvalidRequest(f"tau must be a number in [0, 1]: got {tau!r}")
    field = _group_field(dataset, by)
    rows = rows_of(dataset, ids)
    if rows.size == 0:
        return np.zeros(0)
    codes = field.values[rows].astype(np.int64) if field.kind != "category" else field.values[rows]
    _, inverse, sizes = np.unique(codes, return_inverse=True, return_counts=True)
    group_weight = sizes.astype(np.float64) ** float(tau)
    group_weight /= group_weight.sum()
    weights = group_weight[inverse] / sizes[inverse]
    return np.asarray(weights / weights.sum(), dtype=np.float64)


def _group_field(dataset: Dataset, by: str) -> Field:
    field = dataset.fields.get(by)
    if field is None or field.kind not in ("category", "bool", "int"):
        usable = [f.name for f in dataset.fields.values() if f.kind in ("category", "bool", "int")]
        raise InvalidRequest(
            f"cannot weigh by {by!r}: by needs a category, bool or int field "
            f"({', '.join(usable) or 'none here'})"
        )
    return field
