"""The built-in demo dataset: scripted tabletop robot episodes, rendered and embedded.

Each episode is a short scene drawn with Pillow at 128x128: a table in one of four
environments, a robot arm whose colour and gripper depend on the robot type, and a task
(pick, place, stack, push, open_drawer) that succeeds or fails visibly. Embeddings are computed
from the rendered frames (background-subtracted pixels through a fixed random projection), so
episodes that look alike sit together on the map.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from tessera_gpu.errors import InvalidRequest
from tessera_gpu.io.writer import encode_gif, encode_thumbnail, write_dataset

__all__ = ["build_demo"]

FRAMES = 12  # rendered per episode; all go into the GIF
SIZE = 128
_EMBED_FRAMES = np.linspace(0, FRAMES - 1, 6).astype(int)
_POOL = 8  # pixel block size for frame features: 128 px -> 16x16 cells
_ENV_WEIGHT = 1.0  # how much the coarse scene layout counts next to the foreground
_PROJECTION_SEED = 20_240_611  # fixed, so one look maps to one place whatever the seed

# dataset -> (share, robot probabilities, environment probabilities)
DATASETS = {
    "droid": (0.45, {"franka": 1.0}, {"real_lab": 0.65, "real_kitchen": 0.35}),
    "bridge": (0.30, {"widowx": 1.0}, {"real_kitchen": 0.75, "real_lab": 0.25}),
    "sim_suite": (0.25, {"ur5": 0.6, "franka": 0.4}, {"sim_tabletop": 0.6, "sim_kitchen": 0.4}),
}
# task -> (share, success rate, mean episode length, failure modes)
TASKS = {
    "pick": (0.26, 0.84, 110, ("missed", "dropped")),
    "place": (0.24, 0.72, 170, ("missed", "dropped", "misplaced")),
    "stack": (0.14, 0.55, 230, ("missed", "dropped", "knocked")),
    "push": (0.20, 0.78, 95, ("veered", "overshot")),
    "open_drawer": (0.16, 0.66, 140, ("slipped", "stuck")),
}
# task -> start and goal boxes (u0, u1, v0, v1) on the table: each task has its own set-up
_LAYOUT = {
    "pick": ((0.35, 0.6, 0.55, 0.8), (0.0, 1.0, 0.0, 1.0)),
    "place": ((0.15, 0.35, 0.45, 0.75), (0.65, 0.85, 0.45, 0.75)),
    "stack": ((0.6, 0.8, 0.6, 0.8), (0.25, 0.45, 0.45, 0.65)),
    "push": ((0.15, 0.3, 0.25, 0.45), (0.6, 0.75, 0.0, 1.0)),
    "open_drawer": ((0.3, 0.5, 0.0, 1.0), (0.0, 1.0, 0.0, 1.0)),
}

# environment -> wall, wall detail (tiles, window, cupboards), table top, table edge
_ENV_COLORS = {
    "sim_kitchen": ((170, 210, 205), (200, 230, 225), (225, 205, 165), (160, 130, 90)),
    "sim_tabletop": ((55, 65, 80), (75, 85, 100), (150, 155, 160), (95, 100, 105)),
    "real_lab": ((225, 222, 212), (170, 200, 225), (205, 205, 200), (120, 120, 118)),
    "real_kitchen": ((235, 220, 185), (140, 95, 60), (120, 80, 50), (70, 45, 30)),
}
# robot -> (link, joint, hand colours), shoulder x, link width, success bonus, pace
ROBOTS = {
    "franka": (((240, 240, 236), (60, 60, 64), (90, 90, 95)), 20, 7, 0.05, 1.0),
    "ur5": (((160, 180, 200), (30, 90, 170), (50, 55, 60)), 64, 6, 0.0, 0.9),
    "widowx": (((35, 35, 38), (190, 45, 45), (110, 110, 115)), 108, 4, -0.10, 1.25),
}
# fmt: off
_OBJECTS = {  # colour -> side, top
    "red": ((200, 45, 45), (235, 110, 110)),      "blue": ((40, 80, 200), (110, 140, 235)),
    "yellow": ((220, 180, 30), (245, 220, 110)),  "green": ((40, 150, 70), (110, 200, 130)),
    "purple": ((130, 60, 170), (185, 130, 215)),  "orange": ((230, 120, 30), (250, 170, 100)),
}
_SCENE_COLORS = {
    "ink": (25, 25, 30), "shadow": (70, 66, 60), "bar": (60, 60, 70), "bar_fill": (235, 200, 60),
    "goal": (150, 215, 150), "goal_edge": (40, 140, 60), "cabinet": (235, 235, 240),
    "drawer": (200, 200, 210), "interior": (60, 55, 50),
}
# fmt: on
FIELDS = ("success", "task", "episode_length", "dataset", "robot_type", "environment")


def _palette() -> dict[str, tuple[int, int, int]]:
    """Every colour a frame uses, by name; frames are palette images indexing this table."""
    colors = dict(_SCENE_COLORS)
    for env, rgbs in _ENV_COLORS.items():
        names = [f"{part}_{env}" for part in ("wall", "tile", "table", "edge")]
        colors.update(zip(names, rgbs, strict=True))
    for robot, (looks, *_) in ROBOTS.items():
        names = [f"{part}_{robot}" for part in ("link", "joint", "hand")]
        colors.update(zip(names, looks, strict=True))
    for name, (side, top) in _OBJECTS.items():
        colors[name], colors[f"{name}_top"] = side, top
    return colors


_COLORS = _palette()
_INDEX = {name: i for i, name in enumerate(_COLORS)}
_CUBE = 11  # cube edge in pixels


@dataclass(frozen=True)
class Episode:
    """One scripted episode: its metadata (``FIELDS``) and what happens in it."""

    dataset: str
    robot_type: str
    environment: str
    task: str
    success: bool
    failure: str
    episode_length: int
    color: str
    start: tuple[float, float]
    goal: tuple[float, float]
    home: tuple[float, float]


def build_demo(
    path: str | os.PathLike[str],
    *,
    episodes: int = 2000,
    dim: int = 512,
    seed: int = 0,
    previews: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Render ``episodes`` (default 2000) demo episodes and write them to ``path``.

    Embeddings have ``dim`` (default 512) dimensions; ``seed`` (default 0) fixes every array;
    ``previews`` (default True) stores a JPEG thumbnail and an animated GIF per episode;
    ``progress(done, total)`` is called after each episode is rendered.
    """
    if episodes < 1 or not 1 <= dim <= 2048 or seed < 0:
        raise InvalidRequest(
            f"need episodes >= 1, dim 1 to 2048 and seed >= 0; got {episodes}, {dim}, {seed}"
        )
    if not Path(path).parent.is_dir():  # say so now, not after a minute of rendering
        raise InvalidRequest(f"cannot write {path}: directory {Path(path).parent} does not exist")
    plans = [_plan(np.random.default_rng([seed, i])) for i in range(episodes)]
    features, thumbnails, gifs = [], [], []
    for i, plan in enumerate(plans):
        frames = _render_episode(plan, np.random.default_rng([seed, i, 1]))
        features.append(_frame_features(frames, plan.environment))
        if previews:
            thumbnails.append(encode_thumbnail(frames[0]))
            gifs.append(encode_gif(frames))
        if progress is not None:
            progress(i + 1, episodes)
    return write_dataset(
        path,
        embeddings=_embed(np.stack(features), dim),
        episode_ids=_episode_ids(plans),
        metadata={name: np.array([getattr(p, name) for p in plans]) for name in FIELDS},
        thumbnails=thumbnails if previews else None,
        gifs=gifs if previews else None,
    )


def _pick(rng: np.random.Generator, table: dict[str, float]) -> str:
    names = list(table)
    weights = np.array(list(table.values()))
    return names[rng.choice(len(names), p=weights / weights.sum())]


def _plan(rng: np.random.Generator) -> Episode:
    dataset = _pick(rng, {name: spec[0] for name, spec in DATASETS.items()})
    _, robots, environments = DATASETS[dataset]
    robot, env = _pick(rng, robots), _pick(rng, environments)
    task = _pick(rng, {name: spec[0] for name, spec in TASKS.items()})
    _, rate, mean_length, failures = TASKS[task]
    rate += ROBOTS[robot][3] + (0.06 if env.startswith("sim") else 0.0)
    success = bool(rng.random() < rate)
    failure = "" if success else str(rng.choice(failures))
    stretch = 1.0 if success else rng.uniform(1.1, 1.6)  # failures often run to the time limit
    length = max(20, int(mean_length * ROBOTS[robot][4] * stretch * rng.lognormal(0.0, 0.2)))
    start, goal = ((rng.uniform(*box[:2]), rng.uniform(*box[2:])) for box in _LAYOUT[task])
    if task == "push":  # straight along the table, at most 0.45 of its width
        goal = (min(goal[0], start[0] + 0.45), start[1])
    color, home = str(rng.choice(list(_OBJECTS))), (rng.uniform(0.4, 0.6), 0.1)
    return Episode(dataset, robot, env, task, success, failure, length, color, start, goal, home)


def _episode_ids(plans: list[Episode]) -> list[str]:
    """``droid_000000``-style ids, numbered within each source dataset."""
    counters = {name: itertools.count() for name in DATASETS}
    return [f"{plan.dataset}_{next(counters[plan.dataset]):06d}" for plan in plans]


# A script gives, per frame, the gripper (u, v, height, closed) and objects (u, v, height, tipped).
def _carry_script(plan: Episode, t: np.ndarray, rng: np.random.Generator) -> list[dict]:
    (su, sv), (gu, gv), (hu, hv) = plan.start, plan.goal, plan.home
    miss = 0.09 if plan.failure == "missed" else 0.0
    rest = float(_CUBE) if plan.task == "stack" else 0.0  # the top cube rests on the base cube
    if plan.task == "pick":
        gu, gv = su + 0.05, sv - 0.05
    elif plan.failure == "misplaced":
        gu, gv = gu - rng.uniform(0.18, 0.3), gv + rng.uniform(-0.15, 0.15)
    final = 30.0 if plan.task == "pick" else rest
    keys = [0, 0.22, 0.32, 0.42, 0.8, 0.9, 1.0]
    u = np.interp(t, keys, [hu, su + miss, su + miss, su + miss, gu, gu, gu])
    v = np.interp(t, keys, [hv, sv, sv, sv, gv, gv, gv - 0.04])
    h = np.interp(t, keys, [30, 16, 0, 24, 24 + rest, final, final + 12])
    holding = (t >= 0.32) & ((t < 0.9) | (plan.task == "pick")) & (miss == 0)
    drop_t = rng.uniform(0.5, 0.75) if plan.failure == "dropped" else 2.0
    states, obj = [], (su, sv, 0.0, False)
    for k in range(FRAMES):
        if holding[k] and t[k] < drop_t:
            obj = (u[k], v[k], h[k], False)
        elif obj[2] > rest or (obj[2] > 0 and plan.failure != "knocked"):
            fell = plan.failure in ("dropped", "knocked")
            obj = (obj[0] + 0.08 * fell, obj[1] + 0.03 * fell, rest * (not fell), fell)
        held = bool(holding[k] and t[k] < drop_t)
        closed = bool(t[k] >= 0.32 and (t[k] < 0.9 or plan.task == "pick"))
        objects = [obj] if plan.task != "stack" else [(*plan.goal, 0.0, False), obj]
        states.append({"grip": (u[k], v[k], h[k], closed), "objects": objects, "held": held})
    return states


def _push_script(plan: Episode, t: np.ndarray, rng: np.random.Generator) -> list[dict]:
    (su, sv), (gu, gv), (hu, hv) = plan.start, plan.goal, plan.home
    end_u = gu + (rng.uniform(0.15, 0.25) if plan.failure == "overshot" else 0.0)
    veer = rng.choice([-1, 1]) * rng.uniform(0.2, 0.3) if plan.failure == "veered" else 0.0
    end_v = float(np.clip(gv + veer, 0.05, 0.98))
    keys = [0, 0.25, 0.35, 0.85, 1.0]
    u = np.interp(t, keys, [hu, su - 0.08, su - 0.08, gu - 0.08, gu - 0.1])
    v = np.interp(t, keys, [hv, sv, sv, gv, gv])
    h = np.interp(t, keys, [30, 8, 0, 0, 18])
    pushed = np.clip((t - 0.35) / 0.5, 0.0, 1.0)
    pucks = zip(su + (end_u - su) * pushed, sv + (end_v - sv) * pushed**2, strict=True)
    return [
        {"grip": (u[k], v[k], h[k], True), "objects": [(*puck, 0.0, False)]}
        for k, puck in enumerate(pucks)
    ]


def _drawer_script(plan: Episode, t: np.ndarray, rng: np.random.Generator) -> list[dict]:
    cu, (hu, hv) = plan.start[0] + 0.1, plan.home
    keys = [0, 0.3, 0.38, 0.85, 1.0]
    u = np.interp(t, keys, [hu, cu, cu, cu, cu + 0.05])
    v = np.interp(t, keys, [hv, 0.3, 0.3, 0.65, 0.6])
    h = np.interp(t, keys, [30, 12, 12, 12, 30])
    limit = {"slipped": rng.uniform(0.15, 0.35), "stuck": 0.0}.get(plan.failure, 1.0)
    opened = np.minimum(np.clip((t - 0.38) / 0.47, 0.0, 1.0), limit)
    return [
        {"grip": (u[k], v[k], h[k], bool(t[k] >= 0.38)), "objects": [], "drawer": (cu, opened[k])}
        for k in range(FRAMES)
    ]


def _px(u: float, v: float) -> tuple[float, float]:
    """Table-plane coordinates (0..1 left-right, back-front) to pixels, in perspective."""
    half = 50 + 12 * v
    return 64 + (u - 0.5) * 2 * half, 54 + v * 62


@functools.cache
def _backdrop(environment: str) -> Image.Image:
    """The empty scene of one environment, drawn once and copied for every frame."""
    image = Image.new("P", (SIZE, SIZE), _INDEX[f"wall_{environment}"])
    image.putpalette([c for rgb in _COLORS.values() for c in rgb])
    draw = ImageDraw.Draw(image)
    tile = _INDEX[f"tile_{environment}"]
    if environment.startswith("sim"):
        for x in range(0, SIZE, 10):
            draw.line([(x, 0), (x, 54)], fill=tile)
        for y in range(0, 54, 10):
            draw.line([(0, y), (SIZE, y)], fill=tile)
    elif environment == "real_lab":
        draw.rectangle([70, 8, 112, 40], fill=tile, outline=_INDEX["edge_real_lab"], width=2)
    else:
        for x in (6, 46, 86):
            draw.rectangle([x, 0, x + 36, 34], fill=tile, outline=_INDEX["ink"])
    table = [_px(0, 0), _px(1, 0), _px(1, 1), _px(0, 1)]
    draw.polygon(table, fill=_INDEX[f"table_{environment}"])
    draw.rectangle([0, 116, SIZE, 123], fill=_INDEX[f"edge_{environment}"])
    if environment == "sim_tabletop":
        for u in np.linspace(0, 1, 6):
            draw.line([_px(u, 0), _px(u, 1)], fill=_INDEX["edge_sim_tabletop"])
    draw.rectangle([0, 124, SIZE, SIZE], fill=_INDEX["bar"])
    return image


def _cube(draw: ImageDraw.ImageDraw, state: tuple, color: str, size: float = _CUBE) -> None:
    u, v, h, tipped = state
    x, y = _px(u, v)
    if h > 0:
        draw.ellipse([x - size * 0.6, y - 2, x + size * 0.6, y + 2], fill=_INDEX["shadow"])
    w, tall = (size * 0.75, size * 0.55) if tipped else (size / 2, size)
    bottom = y - h
    draw.rectangle([x - w, bottom - tall, x + w, bottom], fill=_INDEX[color])
    top = [(x - w, bottom - tall), (x + w, bottom - tall), (x + w + 3, bottom - tall - 3)]
    draw.polygon([*top, (x - w + 3, bottom - tall - 3)], fill=_INDEX[color + "_top"])


def _puck(draw: ImageDraw.ImageDraw, state: tuple, color: str) -> None:
    x, y = _px(state[0], state[1])
    draw.ellipse([x - 7, y - 3, x + 7, y + 4], fill=_INDEX[color])
    draw.ellipse([x - 7, y - 5, x + 7, y + 1], fill=_INDEX[color + "_top"])


def _drawer(draw: ImageDraw.ImageDraw, drawer: tuple[float, float]) -> None:
    x, y = _px(drawer[0], 0.15)
    draw.rectangle([x - 16, y - 26, x + 16, y], fill=_INDEX["cabinet"], outline=_INDEX["ink"])
    pull = drawer[1] * 16
    if pull > 0:
        draw.rectangle([x - 14, y - 12, x + 14, y - 12 + pull], fill=_INDEX["interior"])
    front = [x - 15, y - 12 + pull, x + 15, y + pull]
    draw.rectangle(front, fill=_INDEX["drawer"], outline=_INDEX["ink"])
    draw.rectangle([x - 5, y - 7 + pull, x + 5, y - 5 + pull], fill=_INDEX["ink"])


def _arm(draw: ImageDraw.ImageDraw, robot: str, grip: tuple, holding: bool) -> None:
    u, v, h, closed = grip
    x, y = _px(u, v)
    tip_y = y - h - 6
    wrist = (x, tip_y - 10)
    _, shoulder, width, *_ = ROBOTS[robot]
    base = (shoulder, -6)
    elbow = ((base[0] + wrist[0]) / 2 + (18 if base[0] > wrist[0] else -18), wrist[1] / 2 - 4)
    link, joint, hand = (_INDEX[f"{part}_{robot}"] for part in ("link", "joint", "hand"))
    draw.line([base, elbow, wrist], fill=link, width=width, joint="curve")
    for jx, jy in (elbow, wrist):
        r = width / 2 + 1
        draw.ellipse([jx - r, jy - r, jx + r, jy + r], fill=joint)
    gap = 7 if holding else (2 if closed else 9)
    if robot == "ur5":
        for dx in (-gap, 0, gap):
            draw.line([wrist, (x + dx, tip_y + 4)], fill=hand, width=2)
    elif robot == "widowx":
        draw.line([wrist, (x - gap, tip_y), (x - gap + 2, tip_y + 5)], fill=hand, width=2)
        draw.line([wrist, (x + gap, tip_y), (x + gap - 2, tip_y + 5)], fill=hand, width=2)
    else:
        draw.rectangle([x - gap - 3, wrist[1] - 2, x + gap + 3, wrist[1] + 2], fill=link)
        for side in (-1, 1):
            fx = x + side * gap
            draw.rectangle([fx - 1, wrist[1], fx + 1, tip_y + 5], fill=hand)


def _stage(plan: Episode) -> Image.Image:
    """What stays put during the episode: the environment and the goal's marking."""
    image = _backdrop(plan.environment).copy()
    draw = ImageDraw.Draw(image)
    gx, gy = _px(*plan.goal)
    if plan.task == "place":
        area = [gx - 13, gy - 6, gx + 13, gy + 6]
        draw.ellipse(area, fill=_INDEX["goal"], outline=_INDEX["goal_edge"])
    elif plan.task == "push":
        draw.ellipse([gx - 9, gy - 4, gx + 9, gy + 4], outline=_INDEX["goal_edge"], width=2)
    return image


def _render_episode(plan: Episode, rng: np.random.Generator) -> list[Image.Image]:
    """The episode's ``FRAMES`` frames, 128x128 palette images, first to last."""
    stage = _stage(plan)
    base = "blue" if plan.color != "blue" else "orange"  # the stack task's bottom cube
    draw_object = _puck if plan.task == "push" else _cube
    frames = []
    script = {"push": _push_script, "open_drawer": _drawer_script}.get(plan.task, _carry_script)
    for k, state in enumerate(script(plan, np.linspace(0.0, 1.0, FRAMES), rng)):
        image = stage.copy()
        draw = ImageDraw.Draw(image)
        if "drawer" in state:
            _drawer(draw, state["drawer"])
        *below, moved = state["objects"] or [None]
        for obj in below:
            draw_object(draw, obj, base)
        if moved is not None:
            draw_object(draw, moved, plan.color)
        _arm(draw, plan.robot_type, state["grip"], state.get("held", False))
        # a video-style scrub bar, so no two frames are identical (GIF encoders merge those)
        draw.rectangle([2, 125, 2 + (SIZE - 4) * (k + 1) // FRAMES, 126], fill=_INDEX["bar_fill"])
        frames.append(image)
    return frames


def _pooled(image: Image.Image) -> np.ndarray:
    """An image as 16x16 mean RGB cells in 0..1."""
    return np.asarray(image.convert("RGB").reduce(_POOL), dtype=np.float32) / 255.0


def _frame_features(frames: list[Image.Image], environment: str) -> np.ndarray:
    """What changed against the empty scene, plus the scene's coarse layout and colours."""
    background = _pooled(_backdrop(environment))
    foreground = [_pooled(frames[k]) - background for k in _EMBED_FRAMES]
    layout = _pooled(frames[0]).reshape(4, 4, 4, 4, 3).mean(axis=(1, 3)) - 0.5
    return np.concatenate([np.ravel(foreground), _ENV_WEIGHT * layout.ravel()])


def _embed(features: np.ndarray, dim: int) -> np.ndarray:
    """A fixed random projection to ``dim``, L2-normalised, float32."""
    rng = np.random.default_rng(_PROJECTION_SEED)
    projection = rng.standard_normal((features.shape[1], dim)) / np.sqrt(dim)
    embedded = features.astype(np.float64) @ projection
    embedded /= np.linalg.norm(embedded, axis=1, keepdims=True)
    return embedded.astype(np.float32)
