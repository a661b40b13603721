"""Node reputation: an open, explainable score in [0, 1] from a node's recent history.

Five components, each a value in [0, 1] with a weight and a one-line explanation:

- ``uptime``: the share of the window the node was online.
- ``host_faults``: the share of the node's attempts that were *not* lost to the host (a lost
  attempt is one the node dropped: lease lapse, agent restart, a GPU failing under it).
- ``benchmark``: how consistent each GPU's benchmark scores are over its runs (1 - the mean
  coefficient of variation, scaled so that a spread of ``CV_ZERO`` or more scores 0).
- ``incidents``: health events to degraded or failed in the window, per GPU.
- ``availability``: the share of the node's attempts its owner did *not* take back (an owner
  reclaiming a GPU is the deal owners are offered, not a fault: a reclaimed attempt is
  re-queued, billed for the time it ran and never counts as lost; but a node whose owner
  reclaims often is a worse place to run, so this component falls, with a smaller weight).

Every component is smoothed with a neutral prior worth a few observations, so a node without
history starts at the prior (and its explanation says so) and one event moves it by a bounded
step. The score is the weighted mean of the components. Pure: the caller gathers the history.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import sqrt

WINDOW_S = 7 * 24 * 3600.0  # the history a score looks at
PRIOR = 0.9  # what a node with no history is assumed to deliver, per component
PRIOR_UPTIME_S = 3600.0  # the prior counts as this much observed time
PRIOR_ATTEMPTS = 5.0  # ... as this many attempts
PRIOR_RUNS = 2.0  # ... as this many GPUs with repeated benchmarks
CV_ZERO = 0.25  # a benchmark spread (stdev / mean) at which consistency scores 0
INCIDENT_HALF = 1.0  # incidents per GPU in the window that halve the incidents component

WEIGHTS: dict[str, float] = {
    "uptime": 0.3,
    "host_faults": 0.35,
    "benchmark": 0.15,
    "incidents": 0.2,
    "availability": 0.1,
}


@dataclass(frozen=True, slots=True)
class BenchStats:
    """One GPU's benchmark scores over its runs in the window: count, mean, stdev."""

    runs: int
    mean: float
    stdev: float

    @property
    def cv(self) -> float:
        return self.stdev / self.mean if self.mean > 0 else 0.0


@dataclass(frozen=True, slots=True)
class NodeHistory:
    """What the store knows about a node over the window, in plain numbers.

    ``observed_s``: the part of the window the node has existed (now - registration, at most
    the window). ``downtime_s``: how much of it the node was offline (the caller's estimate).
    """

    observed_s: float
    downtime_s: float = 0.0
    attempts: int = 0
    lost: int = 0
    gpus: int = 0
    incidents: int = 0
    benchmarks: tuple[BenchStats, ...] = ()
    reclaimed: int = 0  # attempts stopped because the owner took the GPU back


@dataclass(frozen=True, slots=True)
class Component:
    name: str
    value: float
    weight: float
    explanation: str


@dataclass(frozen=True, slots=True)
class Reputation:
    score: float
    components: tuple[Component, ...]

    def explanation(self) -> str:
        return "; ".join(f"{c.name} {c.value:.2f}: {c.explanation}" for c in self.components)


def _clip(x: float) -> float:
    return min(1.0, max(0.0, x))


def _uptime(h: NodeHistory) -> Component:
    seen = max(h.observed_s, 0.0)
    down = min(max(h.downtime_s, 0.0), seen)
    value = _clip((seen - down + PRIOR * PRIOR_UPTIME_S) / (seen + PRIOR_UPTIME_S))
    if seen < 60.0:
        why = f"new node: neutral prior {PRIOR:.2f} (observed {seen:.0f}s)"
    else:
        why = f"online {100 * (seen - down) / seen:.1f}% of the last {seen / 3600:.1f}h"
    return Component("uptime", value, WEIGHTS["uptime"], why)


def _host_faults(h: NodeHistory) -> Component:
    n = max(h.attempts, 0)
    lost = min(max(h.lost, 0), n)
    value = _clip((n - lost + PRIOR * PRIOR_ATTEMPTS) / (n + PRIOR_ATTEMPTS))
    if n == 0:
        why = f"no attempts yet: neutral prior {PRIOR:.2f}"
    else:
        why = f"{lost} of {n} attempts lost to host faults"
    return Component("host_faults", value, WEIGHTS["host_faults"], why)


def _benchmark(h: NodeHistory) -> Component:
    repeated = [b for b in h.benchmarks if b.runs >= 2]
    consistency = [_clip(1.0 - b.cv / CV_ZERO) for b in repeated]
    k = len(consistency)
    value = _clip((sum(consistency) + PRIOR * PRIOR_RUNS) / (k + PRIOR_RUNS))
    if k == 0:
        why = f"no GPU benchmarked twice yet: neutral prior {PRIOR:.2f}"
    else:
        worst = max(b.cv for b in repeated)
        why = f"{k} GPU(s) with repeated benchmarks, worst spread {100 * worst:.1f}% of the mean"
    return Component("benchmark", value, WEIGHTS["benchmark"], why)


def _incidents(h: NodeHistory) -> Component:
    n = max(h.incidents, 0)
    per_gpu = n / max(h.gpus, 1)
    value = _clip(1.0 / (1.0 + per_gpu / INCIDENT_HALF))
    why = f"{n} health incident(s) (to degraded or failed) on {max(h.gpus, 0)} GPU(s)"
    return Component("incidents", value, WEIGHTS["incidents"], why)


def _availability(h: NodeHistory) -> Component:
    n = max(h.attempts, 0)
    taken = min(max(h.reclaimed, 0), n)
    # the prior is full availability: no node is marked down for reclaims it never made
    value = _clip((n - taken + PRIOR_ATTEMPTS) / (n + PRIOR_ATTEMPTS))
    if n == 0:
        why = "no attempts yet: nothing reclaimed"
    else:
        why = f"{taken} of {n} attempts reclaimed by the GPU's owner (not counted as faults)"
    return Component("availability", value, WEIGHTS["availability"], why)


def reputation(h: NodeHistory) -> Reputation:
    """The node's score and its explained components."""
    parts = (_uptime(h), _host_faults(h), _benchmark(h), _incidents(h), _availability(h))
    total_w = sum(c.weight for c in parts)
    score = _clip(sum(c.value * c.weight for c in parts) / total_w)
    return Reputation(score, parts)


def bench_stats(runs: int, total: float, total_sq: float) -> BenchStats:
    """Stats from a count, a sum and a sum of squares (what one grouped SQL query gives)."""
    if runs <= 0:
        return BenchStats(0, 0.0, 0.0)
    mean = total / runs
    var = max(total_sq / runs - mean * mean, 0.0)
    return BenchStats(runs, mean, sqrt(var))
