"""Policies: the order jobs are considered in, how scorers are weighed, and type matching.

- ``fifo``: oldest first.
- ``priority``: highest priority first; within a priority level accounts take turns, the
  account that used least going first (fair share).
- ``las``: heterogeneity-aware least attained service: the job with the least work done
  (in seconds of its fastest GPU type) first, then GPU types matched to relative speedups.
- ``default``: gpunet's policy for low average completion time: priority first, on-demand
  before interruptible work, then the Gittins index of attained work under the public job-size
  distribution, aged so that no job starves (jobs of k GPUs k³ times slower) and weighed by
  each account's fair share of recent use (``Snapshot.account_usage``); a job of several GPUs
  goes by that index times the speed of the GPUs it would get (``Policy.index``); then type
  matching, also across job sizes (whole nodes' contents swapped, ``Policy.match_nodes``).
- ``fifo_perf`` (alias ``gavel-compat``): FIFO on the fastest free GPU type, as Gavel's
  ``fifo_perf``; used by the simulator to check itself against Gavel's published numbers.
"""

from __future__ import annotations

import heapq
import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gpunet.core.scheduling.gittins import gittins_table
from gpunet.core.scheduling.model import JobRequest, Snapshot
from gpunet.errors import ValidationFailed

Order = Callable[[Sequence[JobRequest], Snapshot, int], list[JobRequest]]


@dataclass(frozen=True, slots=True)
class Weights:
    """How much each scorer counts; the class-level ones are summed per GPU class."""

    throughput: float = 1.0
    price: float = 0.05
    energy: float = 0.02
    packing: float = 0.1
    locality: float = 0.2
    tier: float = 0.1  # GPUs on the duty tier the job wants (core/tiers.py)
    reliability: float = 0.05  # nodes with a better reputation (core/reputation.py)


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    order: Order
    weights: Weights = field(default_factory=Weights)
    # After placing, exchange GPU types between placed jobs while that raises their summed
    # scores: gives each type to the jobs with the highest relative speedup on it.
    match_types: bool = False
    # Then exchange the whole contents of two nodes of different GPU classes (one job of
    # several GPUs against several smaller jobs, or a node's jobs against free GPUs) while
    # that raises the summed scores: type matching across job sizes, which gives the fast
    # GPUs to the jobs that gain most per job rather than to whichever job holds a whole node.
    match_nodes: bool = False
    # A placed job whose normalised throughput on its GPU is below this yields the GPU to a
    # later job that runs there at least twice as well (0: never). Trades a little order for
    # throughput when the fleet is overloaded.
    min_efficiency: float = 0.0
    # The index the order sorts by inside a priority level (higher first), when the policy
    # has one. With it, a job of several GPUs is placed in the order of its index times the
    # normalised throughput of the GPUs it would get when its turn comes (planner.py,
    # "speed-aware order"): a job whose only room is slow nodes lets jobs that would use the
    # GPUs better go first.
    index: Callable[[Sequence[JobRequest], Snapshot], dict[str, float]] | None = None


def _tiebreak(seed: int, job_id: str) -> int:
    """Order of exact ties: by id for seed 0, else a seeded shuffle stable across processes
    (crc32, unlike hash(), does not change between runs)."""
    return 0 if seed == 0 else zlib.crc32(f"{seed}:{job_id}".encode())


def order_fifo(jobs: Sequence[JobRequest], snapshot: Snapshot, seed: int) -> list[JobRequest]:
    return sorted(jobs, key=lambda j: (j.submitted_at, _tiebreak(seed, j.id), j.id))


def order_priority(jobs: Sequence[JobRequest], snapshot: Snapshot, seed: int) -> list[JobRequest]:
    """Priority levels high to low; inside a level, the least-served account goes next."""
    levels: dict[int, dict[str, list[JobRequest]]] = defaultdict(lambda: defaultdict(list))
    for job in order_fifo(jobs, snapshot, seed):
        levels[job.priority][job.account].append(job)
    usage = defaultdict(float, snapshot.account_usage)
    out: list[JobRequest] = []
    for prio in sorted(levels, reverse=True):
        queues = {acct: list(reversed(q)) for acct, q in levels[prio].items()}
        heap = [(usage[a], _tiebreak(seed, a), a) for a in queues]
        heapq.heapify(heap)
        while heap:
            _, tb, acct = heapq.heappop(heap)
            job = queues[acct].pop()
            out.append(job)
            # count the job as if it ran for one unit per GPU, so accounts alternate
            usage[acct] += job.gpu_count
            if queues[acct]:
                heapq.heappush(heap, (usage[acct], tb, acct))
    return out


def gpus_of(job: JobRequest) -> int:
    """Every GPU the job uses: a gang's GPUs per node times its nodes."""
    return max(job.gpu_count, 1) * max(job.node_count, 1)


def _work(job: JobRequest) -> float:
    if job.attained_work_s is not None:
        return job.attained_work_s
    return job.attained_service_s / gpus_of(job)


def order_las(jobs: Sequence[JobRequest], snapshot: Snapshot, seed: int) -> list[JobRequest]:
    return sorted(jobs, key=lambda j: (_work(j), j.submitted_at, _tiebreak(seed, j.id), j.id))


# Aging for the default policy: a job's index is multiplied by (1 + waited / AGING_S), where
# waited is its time in the system not spent running. Long jobs therefore keep a floor on
# their share instead of waiting behind an endless stream of new short jobs.
AGING_S = 2 * 3600.0

# Job size in the default policy's aging: a job of k GPUs (all members of a gang) ages
# k ** AGING_EXPONENT times slower. Promoting a waiting multi-GPU job pushes out up to k
# running jobs at once, and on Gavel-style multi-GPU streams (benchmarks/sim_gavel.py) the
# average JCT fell as the exponent rose up to 3 (dividing the index itself by k did worse).
# A one-GPU job ages as before.
AGING_EXPONENT = 3.0
# A running job of several GPUs keeps them unless a waiting job's index is this many times
# higher: stopping it frees whole nodes that one-GPU jobs then split, and it waits again for
# whole nodes (on the multi-GPU streams 2 did better than 1 and 4).
MULTI_GPU_STICKY = 2.0


# A job that holds GPUs keeps them unless a waiting job's index is higher by the share of a
# quantum the restart would waste: index x (1 + preemption_cost / QUANTUM_S). With no restart
# cost the comparison is plain.
QUANTUM_S = 360.0


def share_factors(jobs: Sequence[JobRequest], usage: dict[str, float]) -> dict[str, float]:
    """Fair share for the default policy: an account's jobs have their index divided by
    1 + (its recent use / the mean recent use of the accounts waiting here), so an account
    that used twice the mean has its index cut to a third; no recorded use changes nothing."""
    accts = {j.account for j in jobs}
    used = [usage.get(a, 0.0) for a in accts]
    mean = sum(used) / len(used) if used else 0.0
    if mean <= 0:
        return {}
    return {a: 1.0 + usage.get(a, 0.0) / mean for a in accts}


def default_indexes(jobs: Sequence[JobRequest], snapshot: Snapshot) -> dict[str, float]:
    """The default policy's index of each job (by id): the Gittins index of its attained work,
    aged, raised for a job that holds GPUs, and divided by its account's fair share."""
    table = gittins_table(snapshot.size_samples)
    now = snapshot.now
    sticky = 1.0 + snapshot.preemption_cost_s / QUANTUM_S
    share = share_factors(jobs, snapshot.account_usage)
    out: dict[str, float] = {}
    for job in jobs:
        index = table.index(_work(job))
        gpus = gpus_of(job)
        if now is not None:
            ran = job.attained_service_s / gpus
            waited = max(now - job.submitted_at - ran, 0.0)
            index *= 1.0 + waited / (AGING_S if gpus == 1 else AGING_S * gpus**AGING_EXPONENT)
        if job.running_on:
            index *= sticky
            if gpus > 1:
                index *= MULTI_GPU_STICKY
        out[job.id] = index / share.get(job.account, 1.0)
    return out


def order_default(jobs: Sequence[JobRequest], snapshot: Snapshot, seed: int) -> list[JobRequest]:
    """Priority high to low, then on-demand before interruptible work, then the Gittins index
    (aged, and weighed by the account's fair share)."""
    index = default_indexes(jobs, snapshot)
    return sorted(
        jobs,
        key=lambda job: (
            -job.priority,
            job.interruptible,
            -index[job.id],
            job.submitted_at,
            _tiebreak(seed, job.id),
            job.id,
        ),
    )


MIN_EFFICIENCY = 0.5

_PERF_ONLY = Weights(
    throughput=1.0, price=0.0, energy=0.0, packing=0.0, locality=0.0, reliability=0.0
)

POLICIES: dict[str, Policy] = {
    "fifo": Policy("fifo", order_fifo),
    "priority": Policy("priority", order_priority),
    "las": Policy("las", order_las, match_types=True),
    "default": Policy(
        "default",
        order_default,
        match_types=True,
        match_nodes=True,
        min_efficiency=MIN_EFFICIENCY,
        index=default_indexes,
    ),
    "fifo_perf": Policy("fifo_perf", order_fifo, weights=_PERF_ONLY),
}
ALIASES = {"gavel-compat": "fifo_perf", "hetero": "las", "gittins": "default"}


def get_policy(name: str) -> Policy:
    """The policy called ``name``; raises ValidationFailed naming the known ones."""
    key = ALIASES.get(name, name)
    if key not in POLICIES:
        known = ", ".join(sorted([*POLICIES, *ALIASES]))
        raise ValidationFailed("policy", f"unknown policy {name!r}; known policies: {known}")
    return POLICIES[key]
