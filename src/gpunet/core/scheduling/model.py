"""Plain data the scheduler works on: a snapshot of the fleet, pending jobs, and the plan.

Everything here is immutable, holds no I/O handles and no clock: the live coordinator and
the simulator both build these from their own state and call :func:`plan`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class GpuView:
    """One GPU as the scheduler sees it."""

    id: str
    node_id: str
    model: str  # canonical short model name, e.g. "A100-80GB"
    memory_mb: int
    compute_capability: tuple[int, int]
    busy: bool = False  # allocated to an attempt
    healthy: bool = True
    drained: bool = False
    price_per_hour: Decimal | None = None
    simulated: bool = False


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node (a machine running an agent)."""

    id: str
    online: bool = True
    site: str | None = None


@dataclass(frozen=True, slots=True)
class JobRequest:
    """What a pending job asks for, plus what a policy may use to order it."""

    id: str
    account: str
    gpu_count: int = 1
    min_memory_mb: int = 0
    gpu_models: tuple[str, ...] = ()  # empty: any model
    min_compute_capability: tuple[int, int] | None = None
    priority: int = 0
    submitted_at: float = 0.0  # seconds on the caller's clock; only used for ordering
    job_class: str | None = None  # key into a throughput table
    max_price: Decimal | None = None  # per GPU-hour
    attained_service_s: float = 0.0  # GPU-seconds already received (for LAS / fairness)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The fleet at one instant."""

    nodes: tuple[NodeView, ...]
    gpus: tuple[GpuView, ...]
    # throughputs[job_class][gpu_model] = relative work per second; missing entries are unknown
    throughputs: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Placement:
    job_id: str
    node_id: str
    gpu_ids: tuple[str, ...]
    score: float = 0.0


@dataclass(slots=True)
class Explanation:
    """Why a job was or was not placed: rejection counts by reason, and how the choice scored."""

    job_id: str
    total_gpus: int
    fitting_gpus: int
    rejections: dict[str, int]  # reason -> number of GPUs rejected for it (first failing filter)
    placed: Placement | None = None
    scores: dict[str, float] = field(default_factory=dict)  # scorer -> weighted score of the choice
    note: str = ""

    def summary(self) -> str:
        """One line a user reads, e.g. '0/36 GPUs fit: 24 wrong model, 12 busy'."""
        parts = ", ".join(f"{n} {reason}" for reason, n in sorted(
            self.rejections.items(), key=lambda kv: (-kv[1], kv[0])))
        line = f"{self.fitting_gpus}/{self.total_gpus} GPUs fit"
        return f"{line}: {parts}" if parts else line


@dataclass(slots=True)
class Plan:
    placements: list[Placement] = field(default_factory=list)
    preemptions: list[str] = field(default_factory=list)  # job ids to stop and re-queue
    explanations: dict[str, Explanation] = field(default_factory=dict)
