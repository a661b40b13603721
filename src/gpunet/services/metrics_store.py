"""Series read from the store at each scrape: every GPU's telemetry and health, and the
network's running totals (jobs submitted and finished, attempts lost, credits charged).

They are derived from the store rather than counted in memory, so they are the same on every
coordinator replica and survive restarts; a total only grows because jobs, attempts and
charges are never deleted."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from gpunet.core.jobs import TERMINAL_JOB_STATES, AttemptState, JobState, LostCause, StopKind
from gpunet.services.fleet import busy_gpu_ids
from gpunet.store.db import Database
from gpunet.store.tables import Account, Attempt, AttemptCharge, AttemptEnergy, Gpu, Job, Node

_GPU_LABELS = ["gpu", "node", "index", "model", "owner"]

# (metric name, help, Gpu column, multiplier to the metric's unit)
_TELEMETRY = (
    ("gpunet_gpu_utilization_percent", "GPU utilization, percent", "utilization_pct", 1.0),
    ("gpunet_gpu_memory_used_bytes", "GPU memory in use", "memory_used_mb", 1024.0 * 1024.0),
    ("gpunet_gpu_temperature_celsius", "GPU temperature", "temperature_c", 1.0),
    ("gpunet_gpu_power_watts", "GPU board power draw", "power_w", 1.0),
)


class StoreCollector(Collector):
    """A Prometheus collector that reads the store when scraped."""

    def __init__(self, db: Database, energy_counters: Callable[[], dict[str, float]]) -> None:
        """``energy_counters``: GPU id -> its energy counter (joules since its driver loaded),
        as the last heartbeat reported it."""
        self.db = db
        self.energy_counters = energy_counters

    def collect(self) -> Iterator[Metric]:
        with self.db.sessions() as s:
            gpus = list(s.scalars(select(Gpu).order_by(Gpu.id)))
            busy = busy_gpu_ids(s)
            nodes = list(
                s.execute(
                    select(Node.id, Node.status, Account.name).join(
                        Account, Account.id == Node.account_id
                    )
                )
            )
            statuses = {nid: status for nid, status, _ in nodes}
            owners = {nid: owner for nid, _, owner in nodes}
            online = {nid for nid, status in statuses.items() if status == "online"}
            energy = dict(
                s.execute(
                    select(AttemptEnergy.gpu_id, func.sum(AttemptEnergy.joules)).group_by(
                        AttemptEnergy.gpu_id
                    )
                ).all()
            )
            jobs = dict(s.execute(select(Job.state, func.count()).group_by(Job.state)).all())
            lost = dict(
                s.execute(
                    select(Attempt.lost_cause, func.count())
                    .where(Attempt.state == AttemptState.LOST.value)
                    .group_by(Attempt.lost_cause)
                ).all()
            )
            requeued = list(
                s.execute(
                    select(Attempt.stop_kind, Attempt.reclaimed, func.count())
                    .where(Attempt.state == AttemptState.PREEMPTED.value)
                    .group_by(Attempt.stop_kind, Attempt.reclaimed)
                )
            )
            charged = s.scalar(select(func.coalesce(func.sum(AttemptCharge.charged), 0)))
        yield from _counts(jobs, statuses, gpus, busy, online)
        labels = {
            g.id: [g.id, g.node_id, str(g.index), g.model, owners.get(g.node_id, "")] for g in gpus
        }
        yield from _gpu_series(gpus, labels, busy, online, energy, self.energy_counters())
        submitted = CounterMetricFamily(
            "gpunet_jobs_submitted", "Jobs submitted since the network started"
        )
        submitted.add_metric([], float(sum(jobs.values())))
        yield submitted
        finished = CounterMetricFamily(
            "gpunet_jobs_finished", "Jobs that ended, by result", labels=["result"]
        )
        for state in sorted(TERMINAL_JOB_STATES):
            finished.add_metric([state.value], float(jobs.get(state.value, 0)))
        yield finished
        lost_c = CounterMetricFamily(
            "gpunet_attempts_lost",
            "Attempts lost, by cause (lease, agent_restart, agent, gpu_failed, rendezvous)",
            labels=["cause"],
        )
        for lost_cause in LostCause:
            lost_c.add_metric([lost_cause.value], float(lost.get(lost_cause.value, 0)))
        yield lost_c
        stopped = CounterMetricFamily(
            "gpunet_attempts_requeued",
            "Attempts the network stopped and re-queued without using a retry, by cause "
            "(preempted, reclaimed by the GPU's owner, requeue_exit: the job exited 85)",
            labels=["cause"],
        )
        by_cause = dict.fromkeys(("preempted", "reclaimed", "requeue_exit"), 0)
        for kind, reclaimed, n in requeued:
            cause = (
                "reclaimed"
                if reclaimed
                else "preempted"
                if kind == StopKind.PREEMPT.value
                else "requeue_exit"
            )
            by_cause[cause] += n
        for cause, n in by_cause.items():
            stopped.add_metric([cause], float(n))
        yield stopped
        credits = CounterMetricFamily("gpunet_credits_charged", "Credits charged for GPU time")
        credits.add_metric([], float(Decimal(charged or 0)))
        yield credits


def _counts(
    jobs: dict[str, int],
    statuses: dict[str, str],
    gpus: list[Gpu],
    busy: dict[str, str],
    online: set[str],
) -> Iterator[Metric]:
    """Jobs by state, nodes by status, GPUs by what they are doing."""
    by_state = GaugeMetricFamily("gpunet_jobs", "Jobs by state", labels=["state"])
    for st in JobState:
        by_state.add_metric([st.value], float(jobs.get(st.value, 0)))
    yield by_state
    by_status = GaugeMetricFamily("gpunet_nodes", "Nodes by status", labels=["status"])
    by_status.add_metric(["online"], float(len(online)))
    by_status.add_metric(["offline"], float(len(statuses) - len(online)))
    yield by_status
    by = dict.fromkeys(("busy", "idle", "owner_busy", "unhealthy", "drained", "offline"), 0)
    for g in gpus:
        if g.node_id not in online:
            by["offline"] += 1
        elif not g.healthy:
            by["unhealthy"] += 1
        elif g.drained:
            by["drained"] += 1
        elif g.owner_busy:  # as `gpunet gpus` says, even while a tenant's attempt stops
            by["owner_busy"] += 1
        else:
            by["busy" if g.id in busy else "idle"] += 1
    fam = GaugeMetricFamily("gpunet_gpus", "GPUs by state", labels=["state"])
    for k, v in by.items():
        fam.add_metric([k], float(v))
    yield fam


def _gpu_series(
    gpus: list[Gpu],
    labels: dict[str, list[str]],
    busy: dict[str, str],
    online: set[str],
    energy: dict[str, float],
    counters: dict[str, float],
) -> Iterator[Metric]:
    """One series per GPU and reading; a reading never reported is left out, not zero."""
    for name, doc, column, scale in _TELEMETRY:
        fam = GaugeMetricFamily(name, doc, labels=_GPU_LABELS)
        for g in gpus:
            value = getattr(g, column)
            if value is not None:
                fam.add_metric(labels[g.id], float(value) * scale)
        yield fam
    counter = CounterMetricFamily(
        "gpunet_gpu_energy_joules",
        "The GPU's energy counter (since its driver loaded), as last reported",
        labels=_GPU_LABELS,
    )
    used = CounterMetricFamily(
        "gpunet_gpu_job_energy_joules", "Energy the GPU used for jobs", labels=_GPU_LABELS
    )
    healthy = GaugeMetricFamily(
        "gpunet_gpu_healthy", "1 when the GPU's health allows work, else 0", labels=_GPU_LABELS
    )
    held = GaugeMetricFamily(
        "gpunet_gpu_busy", "1 while an attempt holds the GPU, else 0", labels=_GPU_LABELS
    )
    up = GaugeMetricFamily(
        "gpunet_gpu_online", "1 while the GPU's node is online, else 0", labels=_GPU_LABELS
    )
    owner = GaugeMetricFamily(
        "gpunet_gpu_owner_busy",
        "1 while the GPU's owner uses it (no tenant work starts there), else 0",
        labels=_GPU_LABELS,
    )
    health = GaugeMetricFamily(
        "gpunet_gpu_health_status",
        "The GPU's health status (healthy, degraded, failed): 1 for the current one",
        labels=[*_GPU_LABELS, "status"],
    )
    stage = GaugeMetricFamily(
        "gpunet_gpu_lifecycle_stage",
        "The GPU's lifecycle stage (burn_in, active, drained, ...): 1 for the current one",
        labels=[*_GPU_LABELS, "stage"],
    )
    for g in gpus:
        lab = labels[g.id]
        if g.id in counters:
            counter.add_metric(lab, counters[g.id])
        used.add_metric(lab, float(energy.get(g.id) or 0.0))
        healthy.add_metric(lab, 1.0 if g.healthy else 0.0)
        held.add_metric(lab, 1.0 if g.id in busy else 0.0)
        up.add_metric(lab, 1.0 if g.node_id in online else 0.0)
        owner.add_metric(lab, 1.0 if g.owner_busy else 0.0)
        health.add_metric([*lab, g.health_status], 1.0)
        stage.add_metric([*lab, g.lifecycle_state], 1.0)
    yield from (counter, used, healthy, held, up, owner, health, stage)
