"""The power the scheduler plans with, apart from the live reading.

A GPU's measured draw changes at nearly every reading (load phases, clocks, temperature). The
scheduler groups GPUs into classes by power and scores work per joule with it, and a pass
re-reads every GPU row whose planned power changed; so it plans with a figure that moves only
when the draw moves materially: the readings smoothed (an exponential average over
``SMOOTHING_S``) and held in buckets of ``step_w`` (5 % of the GPU's rated TDP, at least
10 W), changing bucket only once the smoothed draw is a whole step away from the planned
value (so a draw hovering at a bucket's edge does not flip between two).
"""

from __future__ import annotations

import math

# time constant of the smoothing: per-second jitter and load phases of a few seconds average
# out; a lasting change is followed within about half a minute
SMOOTHING_S = 10.0
STEP_FRACTION = 0.05  # of the rated TDP
MIN_STEP_W = 10.0


def step_w(tdp_w: float | None) -> float:
    """The width of a planning bucket: 5 % of the rated TDP, at least 10 W (the draw of
    a GPU whose TDP is unknown moves in 10 W steps)."""
    return max(MIN_STEP_W, STEP_FRACTION * (tdp_w or 0.0))


def smoothed(previous: float | None, reading: float | None, dt_s: float) -> float | None:
    """The exponential average of the readings, ``dt_s`` seconds after ``previous``."""
    if previous is None or reading is None:
        return reading if previous is None else previous
    weight = 1.0 - math.exp(-max(dt_s, 0.0) / SMOOTHING_S)
    return previous + weight * (reading - previous)


def planning_power(current: float | None, draw: float | None, tdp_w: float | None) -> float | None:
    """The planned power given the ``current`` planned value and the smoothed ``draw``:
    unchanged while the draw stays within one step of it (or is unknown), else the draw
    rounded to a multiple of the step (one step at least: a draw is never planned as 0 W)."""
    if draw is None:
        return current
    step = step_w(tdp_w)
    if current is not None and abs(draw - current) < step:
        return current
    return round(max(1, math.floor(draw / step + 0.5)) * step, 1)  # (halves up)
