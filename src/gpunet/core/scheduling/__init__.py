"""The scheduler's pure core: ``plan(snapshot, pending, policy) -> Plan``."""

from gpunet.core.scheduling.model import (
    Explanation,
    GpuView,
    JobRequest,
    NodeView,
    Placement,
    Plan,
    Snapshot,
)
from gpunet.core.scheduling.planner import explain, never_fits, plan

__all__ = [
    "Explanation",
    "GpuView",
    "JobRequest",
    "NodeView",
    "Placement",
    "Plan",
    "Snapshot",
    "explain",
    "never_fits",
    "plan",
]
