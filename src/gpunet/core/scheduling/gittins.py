"""Gittins index of a job from the public size distribution and the job's attained service.

For a job that has received ``a`` seconds of work, the index is the best ratio, over a further
quantum ``d``, of the chance of finishing within ``d`` to the expected work spent trying:
``G(a) = max_d P(S <= a + d | S > a) / E[min(S - a, d) | S > a]``. Serving the highest index
first minimises mean completion time on one server when sizes are unknown but their
distribution is (Gittins; Aalto et al.). Only the distribution and attained service are used,
never a job's own size.
"""

from __future__ import annotations

import bisect
import math
from functools import lru_cache

# gpunet's built-in prior when the caller passes no size samples: the mixture that Gavel's
# workload generator draws durations from (80%: 10^1.5..10^3 min, 20%: 10^3..10^4 min,
# log-uniform), a heavy tail typical of shared training clusters.
_PRIOR_PARTS = ((0.8, 10**1.5 * 60, 10**3 * 60), (0.2, 10**3 * 60, 10**4 * 60))
_PRIOR_POINTS = 1600
_GRID_POINTS = 240
MIN_QUANTUM_S = 360.0


def prior_samples() -> tuple[float, ...]:
    """Evenly spaced quantiles of the built-in prior (deterministic, no randomness)."""
    out: list[float] = []
    for weight, lo, hi in _PRIOR_PARTS:
        n = round(_PRIOR_POINTS * weight)
        for i in range(n):
            u = (i + 0.5) / n
            out.append(math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))))
    return tuple(sorted(out))


class GittinsTable:
    """Index values on a log grid of attained service, for fast lookups."""

    def __init__(self, samples: tuple[float, ...]) -> None:
        xs = sorted(s for s in samples if s > 0)
        if not xs:
            xs = list(prior_samples())
        lo = max(xs[0] / 10, 1.0)
        hi = xs[-1]
        step = (math.log(hi) - math.log(lo)) / (_GRID_POINTS - 1)
        self.grid = [0.0] + [math.exp(math.log(lo) + i * step) for i in range(_GRID_POINTS)]
        self.values = [_index_at(xs, a) for a in self.grid]

    def index(self, attained: float) -> float:
        """G(attained), using the grid point at or below ``attained``."""
        i = bisect.bisect_right(self.grid, max(attained, 0.0)) - 1
        return self.values[max(i, 0)]


def _index_at(xs: list[float], a: float) -> float:
    start = bisect.bisect_right(xs, a)
    rest = xs[start:]
    n = len(rest)
    if n == 0:
        # longer than every known size: treat as a job of about its own age again
        return 1.0 / max(a, 1.0)
    best = 0.0
    acc = 0.0
    for k, x in enumerate(rest, start=1):
        y = x - a
        acc += y
        # quanta shorter than MIN_QUANTUM_S are not offered: a job is served for at least a
        # round, and tiny quanta would make the index spike just below each sample
        if y < MIN_QUANTUM_S and k < n:
            continue
        spent = acc + (n - k) * y  # n * E[min(S - a, y) | S > a]
        if spent > 0:
            best = max(best, k / spent)
    return best


@lru_cache(maxsize=8)
def gittins_table(samples: tuple[float, ...]) -> GittinsTable:
    """The (cached) table for a sample set; the empty tuple means the built-in prior."""
    return GittinsTable(samples)
