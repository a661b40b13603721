"""When the agent stops its attempts after failing to renew its lease: a safety margin before
the coordinator reaps them.

The coordinator reaps a node's attempts ``lease_timeout_s`` after its last heartbeat arrived
and may start them elsewhere at once; two copies must never run. The agent counts from the
last heartbeat *answer* it received (later than the arrival, so its count is behind the
coordinator's), so it must finish stopping with room to spare:

- at ``STOP_AT`` (70 %) of the lease without a renewal it sends SIGTERM,
- it waits ``GRACE`` (15 %) of the lease for the job to exit, then kills what is left,

so every process is gone by 85 % of the lease: 15 % of the lease (4.5 s of the default 30 s)
before the coordinator can hand the work to another node. The agent's watchdog
(``agent.watchdog``) keeps the same schedule when the agent is frozen or dead.
"""

from __future__ import annotations

STOP_AT = 0.70
GRACE = 0.15


def stop_after(lease_timeout_s: float) -> float:
    """Seconds without a renewal after which the agent starts stopping its attempts."""
    return lease_timeout_s * STOP_AT


def stop_grace(lease_timeout_s: float) -> float:
    """Seconds between SIGTERM and SIGKILL when the lease is lapsing."""
    return lease_timeout_s * GRACE


def margin(lease_timeout_s: float) -> float:
    """Seconds between the last process killed and the coordinator's reaping."""
    return lease_timeout_s - stop_after(lease_timeout_s) - stop_grace(lease_timeout_s)
