"""Filters: lists of ``{"field", "op", "value"}`` conditions, all ANDed, checked against a dataset.

Ops by field kind:

=================  ===================================================
bool, category,    ``eq ne in not_in``
string
int, float         ``eq ne lt le gt ge in not_in between`` (``between`` is inclusive)
array              not filterable
``map``            ``within`` a polygon ``[[x, y], ...]`` on the 2-D projection
=================  ===================================================

Values: bools are JSON ``true``/``false`` (or the strings ``"true"``/``"false"``); numbers are
finite ints or floats (never bools); category and string values are strings. A category value
that the dataset does not hold is allowed and matches no episode (so ``ne`` matches every
episode): a saved filter stays valid across datasets, exactly as for free-text string fields.
A row with no value for a field (one of a joined dataset's files lacks it: ``Field.missing``)
matches no condition on that field, ``ne`` and ``not_in`` included.

Pseudo-fields (a real metadata field of the same name wins):

=================  ===================================================================
``map``            ``within`` a polygon ``[[x, y], ...]`` on the 2-D projection
``episode_id``     ``eq ne in not_in`` the episodes' ids
``selection``      ``in not_in`` a list of named selections (the union of their episodes)
``duplicates``     ``keep_one`` a cosine-distance threshold: every near-duplicate group among
                   the episodes the *other* conditions match is cut to its keeper
=================  ===================================================================

What the pseudo-fields refer to (the map, the selections, the similarity graph) comes in a
:class:`FilterContext`; a condition whose context is missing is a clear error.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tessera_gpu.errors import InvalidRequest
from tessera_gpu.io.dataset import Dataset, Field

__all__ = [
    "DUPLICATES_FIELD",
    "EPISODE_ID_FIELD",
    "MAP_FIELD",
    "MAX_CONDITIONS",
    "MAX_FILTER_CHARS",
    "MAX_IN_VALUES",
    "MAX_POLYGON_POINTS",
    "OPS",
    "SELECTION_FIELD",
    "Condition",
    "FilterContext",
    "filter_mask",
    "filter_rows",
    "parse_filter",
    "parse_filter_param",
    "parse_where",
    "points_in_polygon",
]

OPS = ("eq", "ne", "lt", "le", "gt", "ge", "in", "not_in", "between")
MAP_FIELD = "map"
EPISODE_ID_FIELD = "episode_id"
SELECTION_FIELD = "selection"
DUPLICATES_FIELD = "duplicates"
PSEUDO_FIELDS = (MAP_FIELD, EPISODE_ID_FIELD, SELECTION_FIELD, DUPLICATES_FIELD)
#: Bounds on one filter, so a request cannot make the server do unbounded work.
MAX_CONDITIONS = 64
MAX_IN_VALUES = 10_000
MAX_POLYGON_POINTS = 2_000

_EQUALITY_OPS = ("eq", "ne", "in", "not_in")
_OPS_BY_KIND = {
    "bool": _EQUALITY_OPS,
    "category": _EQUALITY_OPS,
    "string": _EQUALITY_OPS,
    "int": OPS,
    "float": OPS,
}
_COMPARE = {"eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal,
            "gt": np.greater, "ge": np.greater_equal}  # fmt: skip


@dataclass(frozen=True)
class FilterContext:
    """What pseudo-field conditions refer to; each part may be absent.

    * ``coords``: the finished ``(N, 2)`` projection (``map within``).
    * ``selections(names)``: the union mask of named selections; raises
      :class:`~tessera_gpu.errors.InvalidRequest` naming unknown ones.
    * ``keep_one(threshold, mask)``: ``mask`` with every near-duplicate group cut to its
      keeper; raises when the similarity graph is not ready.
    * ``version``: changes whenever what the parts answer changes (a new selection, a new
      graph), so cached masks are keyed by it.
    """

    coords: np.ndarray | None = None
    selections: Callable[[Sequence[str]], np.ndarray] | None = None
    keep_one: Callable[[float, np.ndarray], np.ndarray] | None = None
    version: str = ""


@dataclass(frozen=True)
class Condition:
    """One checked condition. ``value`` is normalised: a scalar, a tuple for ``in``/``not_in``,
    ``(low, high)`` for ``between``, and a tuple of ``(x, y)`` points for ``within``."""

    field: str
    op: str
    value: Any


def parse_filter(
    raw: Any,
    dataset: Dataset,
    *,
    coords: np.ndarray | None = None,
    context: FilterContext | None = None,
) -> list[Condition]:
    """Check a raw filter (a list of condition dicts, or None) against ``dataset``.

    ``context`` says what pseudo-fields refer to (``coords`` alone is a shortcut for the map);
    without its part, such a condition is refused. Raises :class:`InvalidRequest` naming the
    field and the op on any mistake.
    """
    ctx = context or FilterContext(coords=coords)
    if raw is None:
        return []
    if not isinstance(raw, list | tuple):
        raise InvalidRequest(f"filter must be a list of conditions, got {type(raw).__name__}")
    if len(raw) > MAX_CONDITIONS:
        raise InvalidRequest(
            f"filter has {len(raw):,} conditions; at most {MAX_CONDITIONS} are allowed"
        )
    return [_parse_condition(item, i, dataset, ctx) for i, item in enumerate(raw, 1)]


def _parse_condition(item: Any, position: int, dataset: Dataset, ctx: FilterContext) -> Condition:
    if not isinstance(item, dict):
        raise InvalidRequest(
            f"filter condition {position} must be an object "
            '{"field": ..., "op": ..., "value": ...}'
        )
    missing = [k for k in ("field", "op", "value") if k not in item]
    extra = sorted(str(k) for k in item if k not in ("field", "op", "value"))
    if missing or extra:
        what = f"is missing {missing[0]!r}" if missing else f"has an unknown key {extra[0]!r}"
        raise InvalidRequest(f"filter condition {position} {what}; expected field, op and value")
    name, op, value = item["field"], item["op"], item["value"]
    if not isinstance(name, str):
        raise InvalidRequest(f"filter condition {position}: field must be a string")
    if name not in dataset.fields and name in PSEUDO_FIELDS:
        return _parse_pseudo_condition(name, op, value, ctx)
    fld = dataset.fields.get(name)
    if fld is None:
        names = ", ".join(f.name for f in dataset.fields.values() if f.filterable)
        raise InvalidRequest(f"unknown field {name!r} in filter; fields: {names or '(none)'}")
    where = f"filter on {name!r} ({fld.kind})"
    if not fld.filterable:
        raise InvalidRequest(f"{where}: array fields are not filterable")
    allowed = _OPS_BY_KIND[fld.kind]
    if not isinstance(op, str) or op not in OPS:
        raise InvalidRequest(f"{where}: unknown op {op!r}; use {_or_list(allowed)}")
    if op not in allowed:
        raise InvalidRequest(f"{where}: op {op!r} is not allowed; use {_or_list(allowed)}")
    return Condition(name, op, _parse_value(fld, op, value, where))


def _or_list(ops: Sequence[str]) -> str:
    return ", ".join(ops[:-1]) + f" or {ops[-1]}"


def _parse_value(fld: Field, op: str, value: Any, where: str) -> Any:
    """Normalise the value of one condition for ``fld``'s kind and ``op``."""
    if op == "between":
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise InvalidRequest(f"{where}: 'between' needs [low, high]")
        low, high = (_scalar(fld, v, op, where) for v in value)
        if low > high:
            raise InvalidRequest(f"{where}: 'between' needs [low, high] with low <= high")
        return (low, high)
    if op in ("in", "not_in"):
        if not isinstance(value, list | tuple):
            raise InvalidRequest(f"{where}: {op!r} needs a list of values")
        if len(value) > MAX_IN_VALUES:
            raise InvalidRequest(
                f"{where}: {op!r} list has {len(value):,} values; at most {MAX_IN_VALUES:,}"
            )
        return tuple(_scalar(fld, v, op, where) for v in value)
    return _scalar(fld, value, op, where)


def _scalar(fld: Field, value: Any, op: str, where: str) -> Any:
    """One value checked against the field's kind."""
    if fld.kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value in ("true", "false"):
            return value == "true"
        raise InvalidRequest(f"{where}: op {op!r} needs true or false, got {value!r}")
    if fld.kind in ("category", "string"):
        if not isinstance(value, str):
            raise InvalidRequest(f"{where}: op {op!r} needs string values, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"{where}: op {op!r} needs numbers, got {value!r}")
    if not _finite(value):
        raise InvalidRequest(f"{where}: op {op!r} needs finite numbers, got {value!r:.40}")
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        return float(value)  # compare as float rather than overflow int64
    return value


def _parse_pseudo_condition(name: str, op: Any, value: Any, ctx: FilterContext) -> Condition:
    if name == MAP_FIELD:
        return _parse_map_condition(op, value, ctx.coords)
    if name == EPISODE_ID_FIELD:
        fake = Field(EPISODE_ID_FIELD, "string", np.zeros(0, dtype=object))
        where = f"filter on {name!r} (episode ids)"
        if not isinstance(op, str) or op not in _EQUALITY_OPS:
            ops = _or_list(_EQUALITY_OPS)
            raise InvalidRequest(f"{where}: op {op!r} is not allowed; use {ops}")
        return Condition(name, op, _parse_value(fake, op, value, where))
    if name == SELECTION_FIELD:
        where = f"filter on {name!r} (named selections)"
        if op not in ("in", "not_in"):
            raise InvalidRequest(f"{where}: op {op!r} is not allowed; use in or not_in")
        names = value if isinstance(value, list | tuple) else None
        if not names or not all(isinstance(v, str) for v in names):
            raise InvalidRequest(f"{where}: {op!r} needs a list of selection names")
        if ctx.selections is None:
            raise InvalidRequest("selection conditions need a registered dataset's selections")
        return Condition(name, op, ctx.selections(list(names)))
    where = f"filter on {name!r} (near-duplicates)"
    if op != "keep_one":
        raise InvalidRequest(f"{where}: op {op!r} is not allowed; use keep_one")
    from tessera_gpu.similarity import check_threshold  # similarity imports this module

    threshold = check_threshold(value, f"{name} threshold")
    if ctx.keep_one is None:
        raise InvalidRequest("keep_one needs the dataset's similarity graph (embeddings)")
    return Condition(name, op, threshold)


def _parse_map_condition(op: Any, value: Any, coords: np.ndarray | None) -> Condition:
    where = f"filter on {MAP_FIELD!r} (map selection)"
    if op != "within":
        raise InvalidRequest(f"{where}: op {op!r} is not allowed; use within")
    if coords is None:
        raise InvalidRequest("map selection needs a finished projection")
    if not isinstance(value, list | tuple) or not 3 <= len(value) <= MAX_POLYGON_POINTS:
        raise InvalidRequest(
            f"{where}: 'within' needs a polygon [[x, y], ...] of 3 to {MAX_POLYGON_POINTS:,} points"
        )
    if not all(isinstance(p, list | tuple) and len(p) == 2 and all(map(_finite, p)) for p in value):
        raise InvalidRequest(f"{where}: polygon points must be [x, y] finite numbers")
    return Condition(MAP_FIELD, "within", tuple((float(x), float(y)) for x, y in value))


def _finite(value: Any) -> bool:
    """A real number usable as a float (no bool, NaN, inf, or int beyond float range)."""
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) <= 1e300


def filter_mask(
    dataset: Dataset,
    conditions: Sequence[Condition],
    *,
    coords: np.ndarray | None = None,
    context: FilterContext | None = None,
) -> np.ndarray:
    """A boolean mask of length N: the episodes matching every condition (all when none).
    ``keep_one`` conditions apply last, to what the others match."""
    ctx = context or FilterContext(coords=coords)
    mask = np.ones(dataset.n_episodes, dtype=bool)
    for cond in conditions:
        if cond.op == "keep_one":
            continue
        if cond.op == "within":
            if ctx.coords is None:
                raise InvalidRequest("map selection needs a finished projection")
            mask &= points_in_polygon(np.asarray(ctx.coords), np.asarray(cond.value, dtype=float))
        elif cond.field == SELECTION_FIELD and cond.field not in dataset.fields:
            mask &= cond.value if cond.op == "in" else ~cond.value
        elif cond.field == EPISODE_ID_FIELD and cond.field not in dataset.fields:
            ids = Field(EPISODE_ID_FIELD, "string", dataset.episode_ids)
            mask &= _field_mask(ids, cond.op, cond.value)
        else:
            fld = dataset.fields[cond.field]
            mask &= _field_mask(fld, cond.op, cond.value)
            if fld.missing is not None:
                mask &= ~fld.missing
    for cond in conditions:
        if cond.op == "keep_one":
            assert ctx.keep_one is not None  # parse_filter refused it otherwise
            mask = ctx.keep_one(float(cond.value), mask)
    return mask


def filter_rows(
    dataset: Dataset,
    conditions: Sequence[Condition],
    *,
    coords: np.ndarray | None = None,
    context: FilterContext | None = None,
) -> np.ndarray:
    """The ascending int64 row indices of the matching episodes."""
    mask = filter_mask(dataset, conditions, coords=coords, context=context)
    return np.flatnonzero(mask).astype(np.int64)


def _field_mask(fld: Field, op: str, value: Any) -> np.ndarray:
    values = fld.values
    if fld.kind == "category":
        return _category_mask(fld, op, value)
    if op == "between":
        return (values >= value[0]) & (values <= value[1])
    if op in ("in", "not_in"):
        wanted = np.array(value, dtype=object if fld.kind == "string" else None)
        hit = np.isin(values, wanted) if wanted.size else np.zeros(values.shape[0], dtype=bool)
        return hit if op == "in" else ~hit
    return _COMPARE[op](values, value)


def _category_mask(fld: Field, op: str, value: Any) -> np.ndarray:
    """Compare int32 codes through a per-category lookup table (unknown values match nothing)."""
    table = np.zeros(len(fld.categories) + 1, dtype=bool)
    index = {c: i for i, c in enumerate(fld.categories)}
    wanted = value if op in ("in", "not_in") else (value,)
    table[[index[v] for v in wanted if v in index]] = True
    if op in ("ne", "not_in"):
        table = ~table
    return table[fld.values]


def points_in_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd ray casting: which of the ``(N, 2)`` points lie inside the ``(P, 2)`` polygon.

    Points are cut to the polygon's bounding box and sorted by y, so each edge tests only the
    points in its own y band (a slice): a 2,000-point lasso costs about as much as a box.
    """
    inside = np.zeros(points.shape[0], dtype=bool)
    lo, hi = polygon.min(axis=0), polygon.max(axis=0)
    box = np.flatnonzero(np.all((points >= lo) & (points <= hi), axis=1))
    if box.size == 0:
        return inside
    box = box[np.argsort(points[box, 1], kind="stable")]
    x, y = points[box, 0], points[box, 1]
    odd = np.zeros(box.size, dtype=bool)
    for (x1, y1), (x2, y2) in zip(polygon, np.roll(polygon, -1, axis=0), strict=True):
        # the ray from a point towards +x crosses this edge iff min(y1, y2) <= y < max(y1, y2)
        a, b = np.searchsorted(y, (min(y1, y2), max(y1, y2)), side="left")
        if a == b:
            continue
        x_cross = x1 + (y[a:b] - y1) * (x2 - x1) / (y2 - y1)
        odd[a:b] ^= x[a:b] < x_cross
    inside[box] = odd
    return inside


_WHERE_FORMS = (
    "expected FIELD OP VALUE, e.g. 'success == true', 'episode_length > 50', "
    "'task != place', 'task in pick,place', 'task not in pick,place', "
    "'episode_length between 50,120' (ops: == != < <= > >= in, not in, between)"
)
_WHERE = re.compile(
    r"^\s*(?P<field>[^\s=!<>]+?)"
    r"(?:\s*(?P<sym>==|!=|<=|>=|<|>)\s*|\s+(?P<word>not\s+in|not_in|in|between)\s+)"
    r"(?P<value>\S.*?)\s*$",
    re.IGNORECASE | re.DOTALL,
)
_SYMBOL_OPS = {"==": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}
_LIST_ITEM = re.compile(r"""\s*(?:"([^"]*)"|'([^']*)'|([^,"']*?))\s*(?:,|$)""")
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$")


def parse_where(text: str) -> dict[str, Any]:
    """Parse one ``--where`` expression into a raw condition dict (types are checked later).

    Values: ``true``/``false``, ints, floats, and bare or quoted strings; ``in``, ``not in``
    and ``between`` take comma-separated values. Never evaluates anything.
    """
    match = _WHERE.match(text)
    if match is None:
        raise InvalidRequest(f"cannot parse --where {text!r}: {_WHERE_FORMS}")
    word = match["word"]
    op = _SYMBOL_OPS[match["sym"]] if word is None else "_".join(word.lower().split())
    raw = match["value"]
    if op in ("in", "not_in", "between"):
        value: Any = _where_list(raw, text)
        if op == "between" and len(value) != 2:
            raise InvalidRequest(f"cannot parse --where {text!r}: 'between' needs low,high")
    else:
        value = _where_scalar(raw, text)
    return {"field": match["field"], "op": op, "value": value}


def _where_list(raw: str, text: str) -> list[Any]:
    items: list[Any] = []
    pos = 0
    while pos < len(raw):
        m = _LIST_ITEM.match(raw, pos)
        if m is None or m.end() == pos:
            raise InvalidRequest(f"cannot parse --where {text!r}: {_WHERE_FORMS}")
        quoted = m[1] if m[1] is not None else m[2]
        if quoted is None and not m[3]:
            raise InvalidRequest(f"cannot parse --where {text!r}: empty value in the list")
        items.append(quoted if quoted is not None else _where_scalar(m[3], text))
        pos = m.end()
    return items


def _where_scalar(raw: str, text: str) -> Any:
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        return raw[1:-1]
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    if _INT.match(raw):
        return int(raw)
    if _FLOAT.match(raw):
        return float(raw)
    if not raw or any(c in raw for c in "\"'"):
        raise InvalidRequest(f"cannot parse --where {text!r}: {_WHERE_FORMS}")
    return raw


MAX_FILTER_CHARS = 200_000


def parse_filter_param(raw: str | None) -> Any:
    """The ``filter`` query parameter: URL-decoded JSON (a list of conditions) or absent."""
    if raw in (None, ""):
        return None
    if len(raw) > MAX_FILTER_CHARS:
        raise InvalidRequest(f"filter is too long: {len(raw):,} characters > {MAX_FILTER_CHARS:,}")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise InvalidRequest(f"filter must be JSON (a list of conditions): {exc}") from None
