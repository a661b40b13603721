"""Filters: may this job run on this kind of GPU? Each returns a reason when it may not.

Filters work on a :class:`GpuClass` (all GPUs that every filter treats alike) so a decision
checks a handful of classes, not every GPU of a large fleet. The order of ``FILTERS`` is the
order reasons are reported in: a GPU is counted once, under the first filter it fails.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from gpunet.core.isolation import Isolation
from gpunet.core.scheduling.model import JobRequest


@dataclass(frozen=True, slots=True)
class GpuClass:
    """The properties of a GPU that filters and scorers look at (not its id or node)."""

    model: str
    memory_mb: int
    compute_capability: tuple[int, int]
    price_per_hour: Decimal | None
    healthy: bool
    drained: bool
    node_online: bool
    power_w: float | None
    tier: str | None = None
    reliability: float | None = None
    # How the node isolates jobs (NodeView), reduced to what the filters look at so that
    # nodes alike share a class: whether it has any container runtime, whether it runs only
    # its owner's jobs (unisolated and not accepting strangers'), and its owner, which the
    # index fills in only where it matters (private nodes, or a job that names owners).
    isolation: Isolation = Isolation.NONE
    has_runtime: bool = False
    private: bool = False
    owner: str | None = None
    owner_busy: bool = False
    interruptible_price: Decimal | None = None  # None: interruptible work pays the price

    def rate_for(self, job: JobRequest) -> Decimal | None:
        """Per GPU-hour ``job`` pays here (GpuView.rate_for); None: free."""
        if job.interruptible and self.interruptible_price is not None:
            return self.interruptible_price
        return self.price_per_hour


Filter = Callable[[JobRequest, GpuClass], "str | None"]


def node_online(job: JobRequest, gpu: GpuClass) -> str | None:
    return None if gpu.node_online else "node offline"


def healthy(job: JobRequest, gpu: GpuClass) -> str | None:
    return None if gpu.healthy else "unhealthy"


def not_drained(job: JobRequest, gpu: GpuClass) -> str | None:
    return "drained" if gpu.drained else None


OWNER_BUSY = "owner is using it"


def owner_free(job: JobRequest, gpu: GpuClass) -> str | None:
    # the owner took the GPU back (agent/owner.py): it stays theirs until they leave it idle
    return OWNER_BUSY if gpu.owner_busy else None


def allowed_model(job: JobRequest, gpu: GpuClass) -> str | None:
    if job.gpu_models and gpu.model not in job.gpu_models:
        return "wrong model"
    return None


def enough_memory(job: JobRequest, gpu: GpuClass) -> str | None:
    return "too little memory" if gpu.memory_mb < job.min_memory_mb else None


def compute_capability(job: JobRequest, gpu: GpuClass) -> str | None:
    need = job.min_compute_capability
    if need is not None and gpu.compute_capability < need:
        return "compute capability too low"
    return None


def trusted_owner(job: JobRequest, gpu: GpuClass) -> str | None:
    if job.owners and gpu.owner not in job.owners:
        return "owner not trusted by the job"
    return None


def isolation_level(job: JobRequest, gpu: GpuClass) -> str | None:
    if gpu.isolation.rank < job.isolation.rank:
        return f"isolation {gpu.isolation.value} < required {job.isolation.value}"
    return None


def container_runtime(job: JobRequest, gpu: GpuClass) -> str | None:
    return "no container runtime" if job.needs_runtime and not gpu.has_runtime else None


def owner_only(job: JobRequest, gpu: GpuClass) -> str | None:
    # Without isolation a job can read and change the host: only the owner's own jobs run
    # there unless the owner has accepted that risk for strangers' jobs.
    if gpu.private and gpu.owner != job.account:
        return "unisolated node runs only its owner's jobs"
    return None


def price_cap(job: JobRequest, gpu: GpuClass) -> str | None:
    # A GPU without a price is free to use; a cap only rejects priced GPUs above it.
    cap, price = job.max_price, gpu.rate_for(job)
    if cap is not None and price is not None and price > cap:
        return "over price cap"
    return None


def reliability_floor(job: JobRequest, gpu: GpuClass) -> str | None:
    # A node without a reputation (unrated) passes, as an unpriced GPU passes a price cap.
    floor, rel = job.min_reliability, gpu.reliability
    if floor is not None and rel is not None and rel < floor:
        return "below reliability floor"
    return None


# Reasons that change while the fleet stays the same (health, drain, a node going away, the
# GPU's owner taking it back).
TRANSIENT_FILTERS: tuple[Filter, ...] = (node_online, healthy, not_drained, owner_free)
# Reasons that hold for as long as the fleet's hardware, node settings and prices stay the same.
# A node's isolation and runtimes change only when its agent reconnects with other settings.
# The reliability floor is listed here because it depends on the job; the fleet's capacity
# snapshot (never_fits) carries no reputations, so a job is never rejected for it at submit.
STATIC_FILTERS: tuple[Filter, ...] = (
    allowed_model,
    enough_memory,
    compute_capability,
    trusted_owner,
    isolation_level,
    container_runtime,
    owner_only,
    price_cap,
    reliability_floor,
)
FILTERS: tuple[Filter, ...] = TRANSIENT_FILTERS + STATIC_FILTERS
BUSY = "busy"  # the last check: the GPU is allocated (or taken earlier in the same plan)


def first_failure(
    job: JobRequest, gpu: GpuClass, filters: tuple[Filter, ...] = FILTERS
) -> str | None:
    """The reason of the first filter ``gpu`` fails for ``job``, or None if it passes all."""
    for f in filters:
        why = f(job, gpu)
        if why is not None:
            return why
    return None
