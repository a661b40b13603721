"""Placement: filters, then first fit. (A minimal correct planner; policies grow here.)"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from gpunet.core.scheduling.model import (
    Explanation,
    GpuView,
    JobRequest,
    NodeView,
    Placement,
    Plan,
    Snapshot,
)


def _static_reason(job: JobRequest, gpu: GpuView) -> str | None:
    """Reasons that do not change while the fleet stays the same."""
    if job.gpu_models and gpu.model not in job.gpu_models:
        return "wrong model"
    if gpu.memory_mb < job.min_memory_mb:
        return "too little memory"
    if job.min_compute_capability and gpu.compute_capability < job.min_compute_capability:
        return "compute capability too low"
    if job.max_price is not None and gpu.price_per_hour is not None:
        if gpu.price_per_hour > job.max_price:
            return "over price cap"
    return None


def _reason(job: JobRequest, gpu: GpuView, node: NodeView | None, taken: set[str]) -> str | None:
    if node is None or not node.online:
        return "node offline"
    if not gpu.healthy:
        return "unhealthy"
    if gpu.drained:
        return "drained"
    static = _static_reason(job, gpu)
    if static:
        return static
    if gpu.busy or gpu.id in taken:
        return "busy"
    return None


def _place_one(
    snapshot: Snapshot, nodes: dict[str, NodeView], job: JobRequest, taken: set[str]
) -> Explanation:
    rejections: dict[str, int] = defaultdict(int)
    fitting: dict[str, list[GpuView]] = defaultdict(list)
    for gpu in snapshot.gpus:
        why = _reason(job, gpu, nodes.get(gpu.node_id), taken)
        if why:
            rejections[why] += 1
        else:
            fitting[gpu.node_id].append(gpu)
    n_fit = sum(len(v) for v in fitting.values())
    exp = Explanation(job.id, len(snapshot.gpus), n_fit, dict(rejections))
    for node_id in sorted(fitting):
        gpus = sorted(fitting[node_id], key=lambda g: g.id)
        if len(gpus) >= job.gpu_count:
            chosen = tuple(g.id for g in gpus[: job.gpu_count])
            exp.placed = Placement(job.id, node_id, chosen)
            return exp
    if n_fit:
        exp.note = f"no single node has {job.gpu_count} fitting GPUs free"
    return exp


def plan(
    snapshot: Snapshot, pending: Sequence[JobRequest], policy: str = "fifo", *, seed: int = 0
) -> Plan:
    """Place pending jobs on free GPUs, in FIFO order, first fit."""
    nodes = {n.id: n for n in snapshot.nodes}
    order = sorted(pending, key=lambda j: (-j.priority, j.submitted_at, j.id))
    taken: set[str] = set()
    result = Plan()
    for job in order:
        exp = _place_one(snapshot, nodes, job, taken)
        result.explanations[job.id] = exp
        if exp.placed:
            taken.update(exp.placed.gpu_ids)
            result.placements.append(exp.placed)
    return result


def explain(snapshot: Snapshot, job: JobRequest) -> Explanation:
    """Why ``job`` would or would not be placed on ``snapshot`` right now."""
    return _place_one(snapshot, {n.id: n for n in snapshot.nodes}, job, set())


def never_fits(snapshot: Snapshot, job: JobRequest) -> str | None:
    """The reason no node of the fleet could ever run ``job`` (all GPUs free), or None."""
    if not snapshot.gpus:
        return "the fleet has no GPUs"
    per_node: dict[str, int] = defaultdict(int)
    rejections: dict[str, int] = defaultdict(int)
    for gpu in snapshot.gpus:
        why = _static_reason(job, gpu)
        if why:
            rejections[why] += 1
        else:
            per_node[gpu.node_id] += 1
    best = max(per_node.values(), default=0)
    if best >= job.gpu_count:
        return None
    parts = ", ".join(f"{n} {r}" for r, n in sorted(rejections.items()))
    detail = f" ({parts})" if parts else ""
    return (
        f"no node in the fleet has {job.gpu_count} GPU(s) that fit this job; "
        f"the best node has {best}{detail}"
    )
