"""Filters: every op per field kind, one exact message per bad condition, the map selection,
and the ``--where`` parser."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tessera_gpu.errors import InvalidRequest
from tessera_gpu.filters import (
    MAX_CONDITIONS,
    MAX_IN_VALUES,
    Condition,
    filter_mask,
    filter_rows,
    parse_filter,
    parse_where,
    points_in_polygon,
)
from tessera_gpu.io.dataset import Dataset, Field, load_dataset

N = 12
TASKS = ("pick", "place", "stack")


def make_dataset(extra: dict[str, Field] | None = None) -> Dataset:
    """12 episodes with one field of every kind; row i has length 10*i and task i % 3."""
    fields = {
        "success": Field("success", "bool", np.arange(N) % 2 == 0),
        "episode_length": Field("episode_length", "int", np.arange(N, dtype=np.int64) * 10),
        "task": Field("task", "category", (np.arange(N) % 3).astype(np.int32), TASKS),
        "score": Field("score", "float", np.r_[np.linspace(0.0, 1.0, N - 1), np.nan]),
        "note": Field("note", "string", np.array([f"n{i}" for i in range(N)], dtype=object)),
        "joints": Field("joints", "array", np.zeros((N, 3))),
        **(extra or {}),
    }
    return Dataset(
        path=Path("synthetic.h5"),
        name="synthetic",
        episode_ids=np.array([f"ep{i}" for i in range(N)], dtype=object),
        resident=None,
        embeddings_hash=None,
        fields=fields,
        has_thumbnails=False,
        has_gifs=False,
        file_size=0,
    )


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return make_dataset()


def rows_of(ds: Dataset, *conds: dict[str, Any], coords: np.ndarray | None = None) -> list[int]:
    return filter_rows(ds, parse_filter(list(conds), ds, coords=coords), coords=coords).tolist()


def c(field: str, op: str, value: Any) -> dict[str, Any]:
    return {"field": field, "op": op, "value": value}


EVERY = list(range(N))


@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        (c("success", "eq", True), [0, 2, 4, 6, 8, 10]),
        (c("success", "eq", "false"), [1, 3, 5, 7, 9, 11]),
        (c("success", "ne", True), [1, 3, 5, 7, 9, 11]),
        (c("success", "in", [True, False]), EVERY),
        (c("success", "not_in", [True]), [1, 3, 5, 7, 9, 11]),
        (c("episode_length", "eq", 30), [3]),
        (c("episode_length", "ne", 30), [i for i in EVERY if i != 3]),
        (c("episode_length", "lt", 30), [0, 1, 2]),
        (c("episode_length", "le", 30), [0, 1, 2, 3]),
        (c("episode_length", "gt", 95.5), [10, 11]),
        (c("episode_length", "ge", 100), [10, 11]),
        (c("episode_length", "between", [20, 40]), [2, 3, 4]),
        (c("episode_length", "in", [10, 25, 110]), [1, 11]),
        (c("episode_length", "in", [20.5]), []),
        (c("episode_length", "not_in", [0, 10]), list(range(2, N))),
        (c("episode_length", "in", []), []),
        (c("episode_length", "lt", 2**70), EVERY),
        (c("score", "ge", 0.95), [10]),  # the NaN row matches no comparison
        (c("score", "ne", 0.0), list(range(1, N))),  # ... but NaN != 0.0
        (c("task", "eq", "place"), [1, 4, 7, 10]),
        (c("task", "ne", "place"), [0, 2, 3, 5, 6, 8, 9, 11]),
        (c("task", "in", ["pick", "stack"]), [0, 2, 3, 5, 6, 8, 9, 11]),
        (c("task", "not_in", ["pick", "stack"]), [1, 4, 7, 10]),
        (c("task", "eq", "push"), []),  # an unknown category value matches nothing
        (c("task", "ne", "push"), EVERY),
        (c("task", "in", ["push", "pick"]), [0, 3, 6, 9]),
        (c("note", "eq", "n5"), [5]),
        (c("note", "in", ["n1", "n2", "zzz"]), [1, 2]),
        (c("note", "not_in", ["n1"]), [i for i in EVERY if i != 1]),
    ],
)
def test_every_op_per_kind(ds: Dataset, cond: dict[str, Any], expected: list[int]) -> None:
    assert rows_of(ds, cond) == expected


def test_conditions_are_anded_and_empty_filter_matches_all(ds: Dataset) -> None:
    assert rows_of(ds) == EVERY
    assert parse_filter(None, ds) == []
    got = rows_of(ds, c("success", "eq", True), c("task", "in", ["pick", "place"]),
                  c("episode_length", "ge", 30))  # fmt: skip
    assert got == [4, 6, 10]
    rows = filter_rows(ds, [])
    assert rows.dtype == np.int64


def test_parse_filter_normalises_values(ds: Dataset) -> None:
    conds = parse_filter(
        [c("success", "eq", "true"), c("task", "in", ["pick"]), c("score", "between", [0, 1])],
        ds,
    )
    assert conds == [
        Condition("success", "eq", True),
        Condition("task", "in", ("pick",)),
        Condition("score", "between", (0, 1)),
    ]


FIELDS = "fields: success, episode_length, task, score, note"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"field": "task"}, "filter must be a list of conditions, got dict"),
        (["task"], 'filter condition 1 must be an object {"field": ..., "op": ..., "value": ...}'),
        ([{"field": "task", "op": "eq"}],
         "filter condition 1 is missing 'value'; expected field, op and value"),
        ([{**c("task", "eq", "pick"), "neg": True}],
         "filter condition 1 has an unknown key 'neg'; expected field, op and value"),
        ([c(3, "eq", 1)], "filter condition 1: field must be a string"),
        ([c("foo", "eq", 1)], f"unknown field 'foo' in filter; {FIELDS}"),
        ([c("joints", "eq", 1)], "filter on 'joints' (array): array fields are not filterable"),
        ([c("task", "like", "p%")],
         "filter on 'task' (category): unknown op 'like'; use eq, ne, in or not_in"),
        ([c("task", "lt", "pick")],
         "filter on 'task' (category): op 'lt' is not allowed; use eq, ne, in or not_in"),
        ([c("success", "between", [0, 1])],
         "filter on 'success' (bool): op 'between' is not allowed; use eq, ne, in or not_in"),
        ([c("note", "ge", "a")],
         "filter on 'note' (string): op 'ge' is not allowed; use eq, ne, in or not_in"),
        ([c("episode_length", "within", [[0, 0]])],
         "filter on 'episode_length' (int): unknown op 'within'; "
         "use eq, ne, lt, le, gt, ge, in, not_in or between"),
        ([c("episode_length", "between", 50)],
         "filter on 'episode_length' (int): 'between' needs [low, high]"),
        ([c("episode_length", "between", [1, 2, 3])],
         "filter on 'episode_length' (int): 'between' needs [low, high]"),
        ([c("episode_length", "between", [120, 50])],
         "filter on 'episode_length' (int): 'between' needs [low, high] with low <= high"),
        ([c("episode_length", "gt", True)],
         "filter on 'episode_length' (int): op 'gt' needs numbers, got True"),
        ([c("episode_length", "gt", "50")],
         "filter on 'episode_length' (int): op 'gt' needs numbers, got '50'"),
        ([c("score", "lt", float("nan"))],
         "filter on 'score' (float): op 'lt' needs finite numbers, got nan"),
        ([c("episode_length", "in", 5)],
         "filter on 'episode_length' (int): 'in' needs a list of values"),
        ([c("task", "not_in", "pick")],
         "filter on 'task' (category): 'not_in' needs a list of values"),
        ([c("task", "eq", 1)], "filter on 'task' (category): op 'eq' needs string values, got 1"),
        ([c("task", "in", ["pick", None])],
         "filter on 'task' (category): op 'in' needs string values, got None"),
        ([c("success", "eq", 1)], "filter on 'success' (bool): op 'eq' needs true or false, got 1"),
        ([c("success", "eq", "yes")],
         "filter on 'success' (bool): op 'eq' needs true or false, got 'yes'"),
        ([c("task", "in", ["pick"] * (MAX_IN_VALUES + 1))],
         "filter on 'task' (category): 'in' list has 10,001 values; at most 10,000"),
        ([c("task", "eq", "pick")] * (MAX_CONDITIONS + 1),
         "filter has 65 conditions; at most 64 are allowed"),
        ([c("map", "eq", 1)],
         "filter on 'map' (map selection): op 'eq' is not allowed; use within"),
        ([c("map", "within", [[0, 0], [1, 1], [1, 0]])],
         "map selection needs a finished projection"),
    ],
)  # fmt: skip
def test_bad_filter_names_field_and_op(ds: Dataset, raw: Any, message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_filter(raw, ds)
    assert info.value.message == message
    assert info.value.status == 400


# An L-shaped (concave) polygon: the unit square [0, 2] x [0, 2] minus its top-right quarter.
L_SHAPE = [[0, 0], [2, 0], [2, 1], [1, 1], [1, 2], [0, 2]]
POINTS = np.array(
    [[0.5, 0.5], [1.5, 0.5], [0.5, 1.5], [1.5, 1.5], [3, 3], [-1, 0.5], [1.5, 1.01], [0.99, 1.9],
     [0.5, 0.5], [1.9, 0.1], [2.5, 0.5], [0.5, -0.1]]
)  # fmt: skip
INSIDE_L = [0, 1, 2, 7, 8, 9]


def test_map_within_polygon(ds: Dataset) -> None:
    assert rows_of(ds, c("map", "within", L_SHAPE), coords=POINTS) == INSIDE_L
    box = [[1, 0], [3, 0], [3, 2], [1, 2]]
    assert rows_of(ds, c("map", "within", box), coords=POINTS) == [1, 3, 6, 9, 10]
    both = rows_of(ds, c("map", "within", L_SHAPE), c("success", "eq", True), coords=POINTS)
    assert both == [0, 2, 8]


def test_points_in_polygon_matches_a_dense_grid_area() -> None:
    """Quality, not coordinates: the inside fraction of a uniform grid is the polygon's area."""
    g = (np.arange(200) + 0.5) / 100  # cell centres on [0, 2]^2
    grid = np.stack(np.meshgrid(g, g), axis=-1).reshape(-1, 2)
    inside = points_in_polygon(grid, np.array(L_SHAPE, dtype=float))
    assert inside.mean() == pytest.approx(3 / 4, abs=1e-3)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([[0, 0], [1, 1]], "'within' needs a polygon [[x, y], ...] of 3 to 2,000 points"),
        ("box", "'within' needs a polygon [[x, y], ...] of 3 to 2,000 points"),
        ([[0, 0], [1, 1], [1]], "polygon points must be [x, y] finite numbers"),
        ([[0, 0], [1, 1], [1, float("inf")]], "polygon points must be [x, y] finite numbers"),
        ([[0, 0], [1, 1], [1, True]], "polygon points must be [x, y] finite numbers"),
    ],
)
def test_bad_polygon(ds: Dataset, value: Any, message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_filter([c("map", "within", value)], ds, coords=POINTS)
    assert info.value.message == f"filter on 'map' (map selection): {message}"


def test_a_real_field_named_map_wins() -> None:
    ds = make_dataset({"map": Field("map", "category", np.zeros(N, np.int32), ("kitchen",))})
    assert rows_of(ds, c("map", "eq", "kitchen"), coords=POINTS) == EVERY
    with pytest.raises(InvalidRequest, match=r"^filter on 'map' \(category\): unknown op 'within'"):
        parse_filter([c("map", "within", L_SHAPE)], ds, coords=POINTS)


def test_filters_a_loaded_file(episode_file: Path) -> None:
    ds = load_dataset(episode_file)
    mask = filter_mask(ds, parse_filter([c("success", "eq", True), c("task", "eq", "pick")], ds))
    task = ds.fields["task"]
    expected = ds.fields["success"].values & (task.values == task.categories.index("pick"))
    assert np.array_equal(mask, expected)
    assert 0 < mask.sum() < ds.n_episodes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("success == true", c("success", "eq", True)),
        ("success==False", c("success", "eq", False)),
        ("episode_length > 50", c("episode_length", "gt", 50)),
        ("episode_length >= 50", c("episode_length", "ge", 50)),
        ("episode_length<50", c("episode_length", "lt", 50)),
        ("episode_length <= -5", c("episode_length", "le", -5)),
        ("score > 0.25", c("score", "gt", 0.25)),
        ("score > 1e-3", c("score", "gt", 0.001)),
        ("task != place", c("task", "ne", "place")),
        ("task == 'pick up cup'", c("task", "eq", "pick up cup")),
        ('task == "true"', c("task", "eq", "true")),
        ("task == pick up cup", c("task", "eq", "pick up cup")),
        ("task in pick,place", c("task", "in", ["pick", "place"])),
        ("task IN pick, place", c("task", "in", ["pick", "place"])),
        ("task in 'a,b',\"c\"", c("task", "in", ["a,b", "c"])),
        ("task not in pick,place", c("task", "not_in", ["pick", "place"])),
        ("task not_in pick", c("task", "not_in", ["pick"])),
        ("index in 1,2", c("index", "in", [1, 2])),
        ("episode_length between 50,120", c("episode_length", "between", [50, 120])),
        ("  episode_length between 0.5 , 2  ", c("episode_length", "between", [0.5, 2])),
    ],
)
def test_parse_where(text: str, expected: dict[str, Any]) -> None:
    assert parse_where(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "success", "success ==", "== true", "task = pick", "task like p%", "task in a,,b",
     "task == 'pick", "episode_length between 50", "episode_length between 1,2,3",
     "task in 'a'b"],
)  # fmt: skip
def test_parse_where_rejects_bad_syntax(text: str) -> None:
    with pytest.raises(InvalidRequest, match=r"^cannot parse --where ") as info:
        parse_where(text)
    assert any(hint in info.value.message for hint in ("FIELD OP VALUE", "between", "empty"))


def test_parse_where_never_evaluates(ds: Dataset) -> None:
    raw = parse_where("__import__('os').getcwd() == 1")
    assert raw == c("__import__('os').getcwd()", "eq", 1)
    with pytest.raises(InvalidRequest, match=r"^unknown field \"__import__"):
        parse_filter([raw], ds)
