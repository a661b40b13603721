"""How many seconds an attempt is billed: the agent's measurement, bounded by the coordinator's.

Two clocks see an attempt run. The agent measures it on its own monotonic clock, from the
moment its first process was spawned to the moment that process was reaped: the true running
time, unaffected by when reports arrive. The coordinator sees only report arrivals, which lag
whenever it restarts, stalls or the network drops. Neither is trusted alone:

- **ceiling** (the agent cannot inflate it): the coordinator's wall time from assigning the
  attempt to receiving the report that ends it. The process cannot have started before it
  was assigned, nor ended after its report arrived.
- **floor** (the coordinator cannot be argued below what it already settled): the seconds
  already billed by interim settlements. Those only cover time the coordinator saw the attempt
  running (from its started report to the node's last heartbeat), and credits paid out are
  never taken back.

The bill is ``max(floor, min(measured, ceiling))`` rounded to whole seconds; an agent that
sends no measurement (an older agent) is billed the coordinator's own running time, from the
started report's arrival to the finish report's arrival, within the same ceiling and floor.
A coordinator restart or a late report therefore bills nothing extra: the measurement does
not grow while the report waits.
"""

from __future__ import annotations

import math

from gpunet.core.ledger import metered_seconds


def billable_seconds(
    measured_s: float | None,
    *,
    ceiling_s: float,
    observed_s: float,
    floor_s: int = 0,
) -> int:
    """Whole seconds to bill for an ended attempt.

    ``measured_s``: the agent's monotonic running time (None: not reported).
    ``ceiling_s``: coordinator seconds from assignment to the final report's arrival.
    ``observed_s``: coordinator seconds from the started report to the final report (used
    when nothing was measured). ``floor_s``: seconds already billed by interim settlements."""
    ceiling = ceiling_s if math.isfinite(ceiling_s) else 0.0
    if measured_s is None or not math.isfinite(measured_s):
        raw = observed_s if math.isfinite(observed_s) else 0.0
    else:
        raw = measured_s
    bounded = min(max(raw, 0.0), max(ceiling, 0.0))
    return max(floor_s, metered_seconds(bounded))


def interim_seconds(started_to_now_s: float, started_to_last_seen_s: float | None) -> float:
    """Running seconds an interim settlement may bill: only up to the node's last heartbeat,
    the latest moment the coordinator knows the attempt's node was alive (None: unknown, so
    up to now)."""
    if started_to_last_seen_s is None:
        return max(0.0, started_to_now_s)
    return max(0.0, min(started_to_now_s, started_to_last_seen_s))
