"""Episode quality metrics: numeric fields to colour by, filter on and sample from.

Each metric is defined once, here and in the README ("What is computed"). ``z`` is the
episode's state and ``a`` its action, each feature standardised with the dataset's mean and
standard deviation (so a metric weighs a gripper in metres and a joint in radians alike and is
comparable across episodes of one dataset); ``dz_t = z_{t+1} - z_t``; ``fps`` is the frame rate.

==================  ===========================================================================
``path_length``     ``sum_t ||dz_t||``: how far the state travelled (standard deviations)
``mean_speed``      ``path_length / duration_s``, ``duration_s = episode_length / fps``
``idle_fraction``   the share of steps with ``||dz_t|| * fps < 0.05`` (moving slower than 5% of a
                    standard deviation per second); NaN for a 1-frame episode
``action_jerk``     ``mean_t ||a_{t+3} - 3 a_{t+2} + 3 a_{t+1} - a_t|| * fps**3``: the third
                    difference of the action per second cubed; high for noisy, shaky commands;
                    NaN below 4 frames
``net_displacement`` ``||z_last - z_first||``: how far the episode ended from where it began
==================  ===========================================================================

The state metrics need a state (``observation.state``, robomimic's low-dim ``obs``), the jerk
an action; a dataset without one has no such fields.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["IDLE_SPEED", "STATE_METRICS", "quality_metrics"]

#: Slower than this (standard deviations of the state per second) counts as idle.
IDLE_SPEED = 0.05
STATE_METRICS = ("path_length", "mean_speed", "idle_fraction", "net_displacement")


def quality_metrics(
    state: np.ndarray | None, action: np.ndarray | None, fps: float
) -> dict[str, float]:
    """The metrics of one episode from its standardised ``(T, F)`` state and action."""
    out: dict[str, float] = {}
    if state is not None:
        steps = np.linalg.norm(np.diff(state, axis=0), axis=1)
        duration = len(state) / fps
        out["path_length"] = float(steps.sum())
        out["mean_speed"] = out["path_length"] / duration
        out["idle_fraction"] = float(np.mean(steps * fps < IDLE_SPEED)) if steps.size else math.nan
        out["net_displacement"] = float(np.linalg.norm(state[-1] - state[0]))
    if action is not None:
        jerk = np.linalg.norm(np.diff(action, n=3, axis=0), axis=1)
        out["action_jerk"] = float(jerk.mean() * fps**3) if jerk.size else math.nan
    return out
