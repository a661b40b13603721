"""The fleet as the scheduler sees it, and as users list it."""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpunet.core.isolation import Isolation
from gpunet.core.jobs import GPU_HOLDING_ATTEMPT_STATES
from gpunet.core.jobspec import JobSpec
from gpunet.core.scheduling import GpuView, JobRequest, NodeView, Snapshot
from gpunet.services.reputation import GONE_STATES, reliabilities
from gpunet.store.tables import Account, Attempt, Gpu, Job, Node
from gpunet.util import iso


def busy_gpu_ids(s: Session) -> dict[str, str]:
    """GPU id -> the attempt that holds it."""
    held = s.execute(
        select(Attempt.id, Attempt.gpu_ids).where(
            Attempt.state.in_([st.value for st in GPU_HOLDING_ATTEMPT_STATES])
        )
    )
    return {gid: att_id for att_id, gids in held for gid in gids}


@dataclass(frozen=True, slots=True)
class Holder:
    """An attempt that holds GPUs (assigned, running or stopping), with its job's account."""

    attempt_id: str
    job_id: str
    account_id: str
    node_id: str
    gpu_ids: tuple[str, ...]
    state: str
    stop_kind: str | None
    preempted_for: str | None


def holders(s: Session) -> list[Holder]:
    """Every attempt that holds GPUs, in one query."""
    q = select(*HOLDER_COLUMNS).join(Job, Job.id == Attempt.job_id)
    return [holder(r) for r in s.execute(q.where(Attempt.state.in_(HOLDING)))]


# the rows the scheduler's snapshot is built from (and the triggers' watched columns:
# migrations 0014 and 0015)
NODE_COLUMNS = (
    Node.id,
    Node.status,
    Node.site,
    Node.account_id,
    Node.isolation,
    Node.runtimes,
    Node.accepts_unisolated,
)
GPU_COLUMNS = (
    Gpu.id,
    Gpu.node_id,
    Gpu.model,
    Gpu.memory_mb,
    Gpu.cc_major,
    Gpu.cc_minor,
    Gpu.healthy,
    Gpu.drained,
    Gpu.simulated,
    Gpu.planning_power_w,
    Gpu.tier,
    Gpu.price_per_hour,
    Gpu.owner_busy,
    Gpu.min_interruptible_price,
)
HOLDER_COLUMNS = (
    Attempt.id,
    Attempt.job_id,
    Job.account_id,
    Attempt.node_id,
    Attempt.gpu_ids,
    Attempt.state,
    Attempt.stop_kind,
    Attempt.preempted_for,
)
# the GPUs that count as capacity (the all-free snapshot): not retired or recycled
IN_SERVICE = Gpu.lifecycle_state.notin_(GONE_STATES)
HOLDING = [st.value for st in GPU_HOLDING_ATTEMPT_STATES]


def _first(row: Any) -> Any:
    return row[0]


def holder(row: Any) -> Holder:
    aid, jid, acct, node, gids, st, kind, pf = row
    return Holder(aid, jid, acct, node, tuple(gids or ()), st, kind, pf)


def fleet_snapshot(
    s: Session,
    *,
    all_free: bool = False,
    now: float | None = None,
    busy: Mapping[str, str] | None = None,
    reliability: Mapping[str, float] | None = None,
    memo: ViewMemo | None = None,
    **extra: Any,
) -> Snapshot:
    """Build the scheduler's snapshot. ``all_free``: every node online and idle (the fleet's
    capacity, used to reject jobs that could never run). ``now``: the clock, for aging.
    ``busy`` (GPU id -> attempt) and ``reliability`` (node id -> score): already known, not
    read again; ``memo``: views kept from earlier calls; ``extra``: other Snapshot fields
    (accounts, account_usage...)."""
    # plain rows, not ORM objects: this runs on every submit and every scheduler pass
    nodes = s.execute(select(*NODE_COLUMNS)).all()
    cols = select(*GPU_COLUMNS)
    if all_free:
        cols = cols.where(IN_SERVICE)
    gpus = s.execute(cols).all()
    if busy is None:
        busy = {} if all_free else busy_gpu_ids(s)
    # the capacity snapshot carries no reputations: a floor never rejects a job at submit
    if reliability is None:
        reliability = {} if all_free else reliabilities(s)
    return rows_snapshot(
        nodes,
        gpus,
        all_free=all_free,
        now=now,
        busy=busy,
        reliability=reliability,
        memo=memo,
        **extra,
    )


def rows_snapshot(
    nodes: Iterable[Any],
    gpus: Iterable[Any],
    *,
    all_free: bool,
    now: float | None,
    busy: Container[str],
    reliability: Mapping[str, float],
    memo: ViewMemo | None = None,
    **extra: Any,
) -> Snapshot:
    """The scheduler's snapshot of these node and GPU rows (``NODE_COLUMNS``,
    ``GPU_COLUMNS``), as ``fleet_snapshot`` builds it from the rows it reads."""
    # in id order, the order of the incrementally kept snapshots (pass_cache)
    node_rows: Sequence[Any] = sorted(nodes, key=_first)
    gpu_rows: list[Any] = sorted(gpus, key=_first)
    # rounded to two places so that nodes of similar standing share GPU classes
    rel = rounded(reliability)
    memo = memo if memo is not None else ViewMemo()
    node_views = memo.nodes_of(node_rows, all_free)
    return Snapshot(
        nodes=node_views,
        gpus=tuple(
            memo.gpu(tuple(row), row[0] in busy, rel.get(row[1]), all_free) for row in gpu_rows
        ),
        now=now,
        **extra,
    )


class ViewMemo:
    """Views built from rows seen before are reused. Building thousands of view objects per
    submit and per scheduler pass was most of what reading the fleet cost; the rows themselves
    are read every time, so a changed row (price, drain, health, owner busy...) is a new view
    at once."""

    MAX = 200_000

    def __init__(self) -> None:
        self._gpus: dict[tuple[Any, ...], GpuView] = {}
        self._nodes: dict[tuple[Any, ...], tuple[NodeView, ...]] = {}
        self._rated: dict[tuple[int, float | None], tuple[GpuView, GpuView]] = {}

    def rated(self, g: GpuView, rel: float | None) -> GpuView:
        """``g`` with the node reputation ``rel``."""
        key = (id(g), rel)
        got = self._rated.get(key)
        if got is not None and got[0] is g:  # the same object, not one that reused its id
            return got[1]
        if len(self._rated) > self.MAX:
            self._rated.clear()
        v = replace(g, reliability=rel)
        self._rated[key] = (g, v)
        return v

    def nodes_of(self, rows: Sequence[Any], all_free: bool) -> tuple[NodeView, ...]:
        # runtimes is a JSON list: a tuple in the key
        key = (all_free, *((*r[:5], tuple(r[5] or ()), r[6]) for r in rows))
        got = self._nodes.get(key)
        if got is None:
            if len(self._nodes) > 64:
                self._nodes.clear()
            got = self._nodes[key] = tuple(node_view(r, all_free) for r in rows)
        return got

    def gpu(self, row: tuple[Any, ...], busy: bool, rel: float | None, all_free: bool) -> GpuView:
        key = (row, busy, rel, all_free)
        v = self._gpus.get(key)
        if v is None:
            if len(self._gpus) > self.MAX:
                self._gpus.clear()
            v = self._gpus[key] = _gpu_view(row, busy, rel, all_free)
        return v


def node_view(row: Any, all_free: bool) -> NodeView:
    nid, st, site, owner, isolation, runtimes, accepts = row
    return NodeView(
        nid,
        all_free or st == "online",
        site,
        owner=owner,
        isolation=Isolation(isolation or Isolation.NONE.value),
        runtimes=tuple(sorted(runtimes or ())),
        accepts_unisolated=bool(accepts),
    )


def _gpu_view(row: tuple[Any, ...], busy: bool, rel: float | None, all_free: bool) -> GpuView:
    (
        gid,
        node_id,
        model,
        mem,
        major,
        minor,
        healthy,
        drained,
        simulated,
        power,
        tier,
        price,
        owner_busy,
        interruptible,
    ) = row
    return GpuView(
        id=gid,
        node_id=node_id,
        model=model,
        memory_mb=mem,
        compute_capability=(major, minor),
        busy=busy,
        healthy=all_free or healthy,
        drained=False if all_free else drained,
        simulated=simulated,
        power_w=power,
        tier=tier,
        price_per_hour=price,
        reliability=rel,
        owner_busy=False if all_free else owner_busy,
        interruptible_price=interruptible,
    )


def rounded(reliability: Mapping[str, float]) -> dict[str, float]:
    # rounded to two places so that nodes of similar standing share GPU classes
    return {n: round(r, 2) for n, r in reliability.items()}


def with_reliability(
    snapshot: Snapshot, reliability: Mapping[str, float], memo: ViewMemo | None = None
) -> Snapshot:
    """``snapshot`` with each GPU's node reputation filled in (``memo``: views kept)."""
    rel = rounded(reliability)
    if memo is not None:
        gpus = tuple(memo.rated(g, rel.get(g.node_id)) for g in snapshot.gpus)
        return replace(snapshot, gpus=gpus)
    gpus = tuple(replace(g, reliability=rel.get(g.node_id)) for g in snapshot.gpus)
    return replace(snapshot, gpus=gpus)


def account_ids(s: Session, names: Iterable[str]) -> dict[str, str]:
    """Account name -> id, for the names that exist."""
    wanted = set(names)
    if not wanted:
        return {}
    rows = s.execute(select(Account.name, Account.id).where(Account.name.in_(wanted)))
    return {name: aid for name, aid in rows}


def job_request(
    job_id: str,
    account_id: str,
    spec: JobSpec,
    *,
    priority: int | None = None,
    submitted_at: float = 0.0,
    owner_ids: Mapping[str, str] | None = None,
) -> JobRequest:
    """The scheduler's view of a job. ``owner_ids`` maps the spec's owner names to account ids
    (nodes carry ids); a name without an id matches no node, never "any owner"."""
    r = spec.resources
    ids = owner_ids or {}
    return JobRequest(
        id=job_id,
        account=account_id,
        gpu_count=r.gpus,
        min_memory_mb=int(r.min_gpu_memory_gb * 1000),
        gpu_models=tuple(r.gpu_models),
        min_compute_capability=r.compute_capability(),
        priority=spec.priority if priority is None else priority,
        submitted_at=submitted_at,
        # a service's replicas belong on the inference tiers, spread over nodes
        job_class=spec.job_class or ("inference" if spec.service is not None else None),
        max_price=spec.max_price,
        min_reliability=spec.min_reliability,
        isolation=r.isolation,
        owners=tuple(sorted(ids.get(n, f"?{n}") for n in r.owners)),
        needs_runtime=spec.image is not None,
        interruptible=spec.interruptible,
        node_count=r.nodes,
        site=r.site,
        spread=spread_group(account_id, spec.name) if spec.service is not None else None,
    )


def spread_group(account_id: str, service_name: str) -> str:
    """The spread group of a service's replicas (JobRequest.spread)."""
    return f"{account_id}/{service_name}"


def gpu_dict(g: Gpu, holder: str | None = None) -> dict[str, Any]:
    return {
        "id": g.id,
        "node_id": g.node_id,
        "index": g.index,
        "uuid": g.uuid,
        "model": g.model,
        "name": g.name,
        "memory_mb": g.memory_mb,
        "compute_capability": f"{g.cc_major}.{g.cc_minor}",
        "simulated": g.simulated,
        "healthy": g.healthy,
        "drained": g.drained,
        "busy": holder is not None,
        "owner_busy": g.owner_busy,
        "attempt_id": holder,
        "utilization_pct": g.utilization_pct,
        "memory_used_mb": g.memory_used_mb,
        "temperature_c": g.temperature_c,
        "power_w": g.power_w,
        "telemetry_at": iso(g.telemetry_at),
        "price_per_hour": None if g.price_per_hour is None else str(g.price_per_hour),
        "lifecycle_state": g.lifecycle_state,
        "tier": g.tier,
        "health_status": g.health_status,
        "health_reasons": list(g.health_reasons or []),
    }


def list_gpus(s: Session) -> list[dict[str, Any]]:
    """Every GPU, with the name of its node's owner (listings show names, not ids)."""
    busy = busy_gpu_ids(s)
    q = select(Node.id, Account.name).join(Account, Account.id == Node.account_id)
    owners: dict[str, str] = {node_id: name for node_id, name in s.execute(q)}
    return [
        gpu_dict(g, busy.get(g.id)) | {"owner": owners.get(g.node_id)}
        for g in s.scalars(select(Gpu).order_by(Gpu.node_id, Gpu.index))
    ]


def list_nodes(s: Session, gpus: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every node with a summary of its GPUs (``gpus``: ``list_gpus(s)``, when already read)."""
    by_node: dict[str, list[dict[str, Any]]] = {}
    for g in list_gpus(s) if gpus is None else gpus:
        by_node.setdefault(g["node_id"], []).append(g)
    rel = reliabilities(s)
    names: dict[str, str] = {aid: name for aid, name in s.execute(select(Account.id, Account.name))}
    out = []
    for n in s.scalars(select(Node).order_by(Node.registered_at)):
        mine = by_node.get(n.id, [])
        out.append(
            {
                "id": n.id,
                "name": n.name,
                "account_id": n.account_id,
                "owner": names.get(n.account_id),
                "status": n.status,
                "simulated": n.simulated,
                "site": n.site,
                "agent_version": n.agent_version,
                "registered_at": iso(n.registered_at),
                "last_heartbeat_at": iso(n.last_heartbeat_at),
                "gpus": len(mine),
                "gpus_busy": sum(1 for g in mine if g["busy"]),
                "gpu_models": sorted({g["model"] for g in mine}),
                "reliability": round(rel[n.id], 4) if n.id in rel else None,
                "isolation": n.isolation,
                "runtimes": list(n.runtimes or []),
                "accepts_unisolated": n.accepts_unisolated,
                "advertise_addr": n.advertise_addr,
            }
        )
    return out
