"""Plain data the scheduler works on: a snapshot of the fleet, pending jobs, and the plan.

Everything here is immutable, holds no I/O handles and no clock: the live coordinator and
the simulator both build these from their own state and call :func:`plan`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from gpunet.core.isolation import Isolation


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
    # the planned board power (core.power: measured, smoothed, bucketed); None: the catalog TDP
    power_w: float | None = None
    tier: str | None = None  # duty tier (training | inference | secondary); None: unassigned
    reliability: float | None = None  # the node's reputation, 0..1 (core/reputation.py)
    owner_busy: bool = False  # its owner is using it (agent/owner.py): no tenant work
    # the owner's price per GPU-hour for interruptible work; None: the on-demand price
    interruptible_price: Decimal | None = None

    def rate_for(self, interruptible: bool) -> Decimal | None:
        """What a job pays per hour here: interruptible work pays the interruptible price
        where the owner set one, else the on-demand price (None: free)."""
        if interruptible and self.interruptible_price is not None:
            return self.interruptible_price
        return self.price_per_hour


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node (a machine running an agent)."""

    id: str
    online: bool = True
    site: str | None = None
    # The account that owns the node (same kind of key as JobRequest.account); None: unknown,
    # and then the node takes anyone's jobs (the simulator's fleets have no owners).
    owner: str | None = None
    isolation: Isolation = Isolation.NONE
    runtimes: tuple[str, ...] = ()  # container runtimes the agent can use, e.g. ("podman",)
    # An unisolated node runs only its owner's jobs unless the owner accepts the risk.
    accepts_unisolated: bool = False

    @property
    def private(self) -> bool:
        """Runs only its owner's jobs: unisolated, with an owner who does not accept others'."""
        return (
            self.owner is not None
            and self.isolation is Isolation.NONE
            and not self.accepts_unisolated
        )


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
    # Work already done in seconds of the job's fastest GPU type (work / best throughput);
    # None: use attained_service_s. Lets heterogeneity-aware policies compare jobs fairly.
    attained_work_s: float | None = None
    # GPUs the job holds right now. A job listed in ``pending`` with running_on set may keep,
    # move or lose them: round-based policies use this, and losing them is a preemption.
    running_on: tuple[str, ...] = ()
    # (model, relative throughput) pairs the user measured or guessed; used when the
    # snapshot's throughput table has no entry for the job's class.
    throughput_hint: tuple[tuple[str, float], ...] = ()
    # Lowest node reputation (0..1) the job accepts; GPUs of unrated nodes pass.
    min_reliability: float | None = None
    isolation: Isolation = Isolation.NONE  # the least isolation the job accepts
    owners: tuple[str, ...] = ()  # run only on nodes of these accounts; empty: any
    needs_runtime: bool = False  # the job names a container image: the node needs a runtime
    # may be stopped for other work (and pays the interruptible price); see admission.rank
    interruptible: bool = False
    # A gang: node_count nodes with gpu_count GPUs each, started together or not at all,
    # all in one site (``site`` when the job names one, else the planner's pick).
    node_count: int = 1
    site: str | None = None
    # A spread group (a service's replicas): prefer nodes that run no other member of it
    # (Snapshot.spread_nodes and this pass's placements); a soft preference, never a filter.
    spread: str | None = None


@dataclass(frozen=True, slots=True)
class AccountView:
    """An account's money and limits when the snapshot was taken, for admission.

    ``balance`` None: credits are not checked (free fleets, the simulator)."""

    id: str
    balance: Decimal | None = None  # wallet credits
    max_gpus: int | None = None  # quota: concurrent GPUs
    gpus_in_use: int = 0  # GPUs held by the account's active attempts
    monthly_budget: Decimal | None = None
    month_spend: Decimal = Decimal(0)  # charged this calendar month plus still held


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The fleet at one instant."""

    nodes: tuple[NodeView, ...]
    gpus: tuple[GpuView, ...]
    # throughputs[job_class][gpu_model] = relative work per second; missing entries are unknown
    throughputs: dict[str, dict[str, float]] = field(default_factory=dict)
    # The caller's clock (same unit as JobRequest.submitted_at); None disables aging.
    now: float | None = None
    # GPU-seconds (or any consistent share unit) each account used recently, for fair share.
    account_usage: dict[str, float] = field(default_factory=dict)
    # Public distribution of job sizes in seconds of work on the job's fastest GPU type
    # (samples); empty: gpunet's built-in prior. Used by the default policy, never per job.
    size_samples: tuple[float, ...] = ()
    # Seconds of progress a job loses when stopped and restarted (checkpoint and reload).
    # Round-based policies weigh it before preempting a job listed with running_on.
    preemption_cost_s: float = 0.0
    # Admission: accounts whose credits, quota and budget are checked (others are not), and
    # the hours of an attempt's rate held when it starts (core/ledger.hold_amount).
    accounts: dict[str, AccountView] = field(default_factory=dict)
    hold_hours: Decimal = Decimal(1)
    # Live rule: a job listed with running_on keeps its GPUs unless a job that outranks it
    # (admission.rank: priority, then on-demand over interruptible) needs them; it is never
    # moved. The simulator leaves this off and lets its policy move and preempt freely.
    keep_running: bool = False
    # spread group (JobRequest.spread) -> nodes running a member of it now
    spread_nodes: dict[str, frozenset[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a job starts. ``node_id``/``gpu_ids`` are rank 0's; a gang (JobRequest.node_count
    > 1) also lists every member, rank order, rank 0 first, in ``members``."""

    job_id: str
    node_id: str
    gpu_ids: tuple[str, ...]
    score: float = 0.0
    members: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (node_id, gpu_ids) per rank

    def ranks(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """(node_id, gpu_ids) for each rank: the members, or the one node of a plain job."""
        return self.members or ((self.node_id, self.gpu_ids),)

    @property
    def all_gpu_ids(self) -> tuple[str, ...]:
        return tuple(g for _, gpus in self.ranks() for g in gpus)


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
    # A gang (or a job that names a site): what it needs and what each site has free, e.g.
    # "needs 2 nodes × 4 A100-80GB in one site: site eu-west has 1 such node free, ...".
    gang: str = ""

    def summary(self) -> str:
        """One line a user reads, e.g. '0/36 GPUs fit: 24 wrong model, 12 busy' (a gang's
        feasibility follows after a semicolon)."""
        ranked = sorted(self.rejections.items(), key=lambda kv: (-kv[1], kv[0]))
        parts = ", ".join(f"{n} {reason}" for reason, n in ranked)
        line = f"{self.fitting_gpus}/{self.total_gpus} GPUs fit"
        line = f"{line}: {parts}" if parts else line
        return f"{line}; {self.gang}" if self.gang else line


@dataclass(slots=True)
class Plan:
    """What to start (placements), what to stop (preemptions) and why (explanations)."""

    placements: list[Placement] = field(default_factory=list)
    preemptions: list[str] = field(default_factory=list)  # job ids to stop and re-queue
    # preempted job id -> the job placed on (some of) the GPUs it held, where one is
    preempted_for: dict[str, str] = field(default_factory=dict)
    explanations: dict[str, Explanation] = field(default_factory=dict)
    # ``plan(max_starts=...)`` left jobs that could have been considered for a later plan
    capped: bool = False
