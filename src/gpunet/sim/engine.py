"""Trace-driven simulation on a simulated clock, with the live scheduler's ``plan()``.

Two loops:

- gpunet's loop (every policy): time-sharing in rounds. At each round boundary (and, by
  default, when a job arrives) every active job is offered to ``plan()`` (jobs holding GPUs
  with ``running_on``), so a policy may keep, move or preempt them; a stopped job that resumes
  pays ``preemption_cost_s`` of lost progress. Between these, GPUs freed by finishing jobs are
  filled at once (``plan()`` over waiting jobs only), as the live coordinator's tick does.
- Gavel's loop (``gavel-compat``): a replica of Gavel's ``simulate()`` running gpunet's
  ``fifo_perf`` policy, to check the simulator against Gavel's published numbers. Rounds end
  when the last job in them ends; a job runs ``int(steps/s x round)`` steps per round; the
  allocation is recomputed only after an arrival or completion and at least 1920 s after the
  previous recompute.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from gpunet.core.scheduling import GpuView, JobRequest, Snapshot, never_fits, plan
from gpunet.core.scheduling.policies import get_policy
from gpunet.errors import ValidationFailed
from gpunet.sim.fleet import Fleet, class_key
from gpunet.sim.traces import TraceJob

GAVEL_COMPAT = "gavel-compat"
GAVEL_MIN_RECOMPUTE_S = 1920.0  # Gavel's minimum_time_between_allocation_resets
_EPS = 1e-6

Progress = Callable[[int, int], None]  # (measured jobs finished, measured jobs)


@dataclass(frozen=True, slots=True)
class SimConfig:
    policy: str = "default"
    round_s: float = 360.0
    preemption_cost_s: float = 0.0
    window: tuple[int, int] | None = None  # inclusive job indexes (arrival order) to measure
    seed: int = 0
    # re-plan every job when one arrives, not only at the next round boundary
    replan_on_arrival: bool = True


@dataclass(frozen=True, slots=True)
class JobOutcome:
    id: str
    arrival_s: float
    finish_s: float
    jct_s: float
    floor_s: float  # runtime alone on the fastest GPU type of the fleet
    preemptions: int


@dataclass(slots=True)
class SimResult:
    policy: str
    outcomes: list[JobOutcome]
    unfinished: int
    start_s: float
    end_s: float
    gpu_count: int
    busy_gpu_s: float
    preemptions: int
    decision_times_s: list[float]
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (time, busy GPUs)


@dataclass(slots=True)
class _Job:
    trace: TraceJob
    index: int
    cls: str
    total: float
    rate: dict[str, float]  # work per second on each model of the fleet it can run on
    best: float
    allowed: tuple[str, ...]  # models it may use; empty: all of the fleet's
    nodes: int = 1  # a gang of `nodes` nodes x per_node GPUs when its GPUs exceed a node's
    per_node: int = 1
    done: float = 0.0
    attained_s: float = 0.0  # GPU-seconds held
    work_s: float = 0.0  # done / best
    gpus: tuple[str, ...] = ()
    model: str = ""
    seg_start: float = 0.0
    finish_at: float = float("inf")
    preemptions: int = 0
    finished_at: float | None = None

    def advance(self, a: float, b: float) -> None:
        if b <= a:
            return
        self.attained_s += (b - a) * self.trace.gpu_count
        run = b - max(a, self.seg_start)
        if run > 0:
            self.done += run * self.rate[self.model]
            self.work_s = self.done / self.best

    def request(self, running: bool) -> JobRequest:
        t = self.trace
        return JobRequest(
            id=t.id,
            account=t.account,
            gpu_count=self.per_node,
            node_count=self.nodes,
            priority=t.priority,
            submitted_at=t.arrival_s,
            job_class=self.cls,
            gpu_models=self.allowed,
            attained_service_s=self.attained_s,
            attained_work_s=self.work_s,
            running_on=self.gpus if running else (),
        )


def split(gpu_count: int, node_sizes: list[int]) -> tuple[int, int]:
    """(nodes, GPUs per node) for a job of ``gpu_count`` GPUs on nodes of ``node_sizes``
    GPUs: one node where a node is large enough, else a gang of the largest node size that
    divides the count (8 GPUs on nodes of 4: 2 nodes x 4), else one node (which never fits)."""
    if not node_sizes or gpu_count <= max(node_sizes):
        return 1, gpu_count
    for size in sorted(set(node_sizes), reverse=True):
        if gpu_count % size == 0:
            return gpu_count // size, size
    return 1, gpu_count


def _prepare(trace: list[TraceJob], fleet: Fleet, table: dict[str, dict[str, float]]) -> list[_Job]:
    if not trace:
        raise ValidationFailed("trace", "the trace has no jobs")
    models = fleet.models
    probe = Snapshot(fleet.nodes, fleet.gpus)
    sizes: dict[str, dict[str, int]] = {}  # model -> node -> GPUs of that model
    for g in fleet.gpus:
        per = sizes.setdefault(g.model, {})
        per[g.node_id] = per.get(g.node_id, 0) + 1
    jobs = []
    for i, t in enumerate(sorted(trace, key=lambda j: j.arrival_s)):
        cls = class_key(t.job_class, t.gpu_count)
        row = table.get(cls)
        if not row:
            raise ValidationFailed(f"trace job {t.id}", f"no throughputs for job class {cls!r}")
        rate = {m: row[m] for m in models if row.get(m, 0) > 0}
        if not rate:
            known = sorted({m for r in table.values() for m, v in r.items() if v > 0})
            raise ValidationFailed(
                f"trace job {t.id}",
                f"no GPU model of the fleet ({', '.join(models)}) has a throughput for {cls!r} "
                f"(the table covers {', '.join(known) or 'no models'}); pass --throughputs FILE "
                f"with this class's throughput on your models",
            )
        nodes, per_node = split(t.gpu_count, [k for m in rate for k in sizes[m].values()])
        req = JobRequest(t.id, t.account, per_node, gpu_models=tuple(rate), node_count=nodes)
        why = never_fits(probe, req)
        if why:
            raise ValidationFailed(f"trace job {t.id}", why)
        total = (
            t.total_steps if t.total_steps is not None else (t.duration_s or 0) * max(row.values())
        )
        if total <= 0:
            raise ValidationFailed(f"trace job {t.id}", "work must be positive")
        allowed = tuple(sorted(rate)) if len(rate) < len(models) else ()
        jobs.append(_Job(t, i, cls, total, rate, max(rate.values()), allowed, nodes, per_node))
    return jobs


def _measured(jobs: list[_Job], window: tuple[int, int] | None) -> set[str]:
    if window is None:
        return {j.trace.id for j in jobs}
    lo, hi = window
    if lo < 0 or hi < lo or lo >= len(jobs):
        raise ValidationFailed("window", f"{lo}:{hi} is outside the trace's {len(jobs)} jobs")
    return {j.trace.id for j in jobs if lo <= j.index <= hi}


def simulate(
    trace: list[TraceJob],
    fleet: Fleet,
    throughputs: dict[str, dict[str, float]],
    config: SimConfig,
    progress: Progress | None = None,
) -> SimResult:
    """Replay ``trace`` on ``fleet``; see the module docstring for the two loops."""
    if config.round_s <= 0:
        raise ValidationFailed("round", "must be positive")
    if config.preemption_cost_s < 0:
        raise ValidationFailed("preemption_cost", "must not be negative")
    if config.policy == GAVEL_COMPAT:
        return _simulate_gavel(trace, fleet, throughputs, config, progress)
    get_policy(config.policy)
    return _Sim(trace, fleet, throughputs, config, progress).run()


class _Sim:
    def __init__(
        self,
        trace: list[TraceJob],
        fleet: Fleet,
        table: dict[str, dict[str, float]],
        cfg: SimConfig,
        progress: Progress | None,
    ) -> None:
        self.jobs = _prepare(trace, fleet, table)
        self.measured = _measured(self.jobs, cfg.window)
        self.fleet, self.table, self.cfg, self.progress = fleet, table, cfg, progress
        self.gpu_model = {g.id: g.model for g in fleet.gpus}
        self.held: dict[str, str] = {}
        self.running: dict[str, _Job] = {}
        self.waiting: dict[str, _Job] = {}
        self.decisions: list[float] = []
        self.preemptions = 0
        self.busy_gpu_s = 0.0
        self.timeline: list[tuple[float, int]] = []

    def snapshot(self, now: float) -> Snapshot:
        gpus = tuple(g if g.id not in self.held else _busy(g) for g in self.fleet.gpus)
        return Snapshot(
            self.fleet.nodes,
            gpus,
            throughputs=self.table,
            now=now,
            preemption_cost_s=self.cfg.preemption_cost_s,
        )

    def decide(self, now: float, full: bool) -> None:
        if full:
            pending = [j.request(True) for j in self.running.values()]
            pending += [j.request(False) for j in self.waiting.values()]
        else:
            pending = [j.request(False) for j in self.waiting.values()]
        snap = self.snapshot(now)
        t0 = time.perf_counter()
        result = plan(snap, pending, self.cfg.policy, seed=self.cfg.seed)
        self.decisions.append(time.perf_counter() - t0)
        for job_id in result.preemptions:
            job = self.running.pop(job_id)
            for g in job.gpus:
                del self.held[g]
            job.gpus, job.finish_at = (), float("inf")
            job.preemptions += 1
            self.preemptions += 1
            self.waiting[job_id] = job
        for p in result.placements:
            if p.job_id not in self.waiting:
                continue  # kept where it runs
            job = self.waiting.pop(p.job_id)
            cost = self.cfg.preemption_cost_s if job.done > 0 else 0.0
            job.gpus = p.all_gpu_ids
            job.model = _slowest(job, p.all_gpu_ids, self.gpu_model)
            job.seg_start = now + cost
            job.finish_at = job.seg_start + (job.total - job.done) / job.rate[job.model]
            for g in job.gpus:
                self.held[g] = job.trace.id
            self.running[job.trace.id] = job

    def run(self) -> SimResult:
        arrivals = deque(self.jobs)
        left = len(self.measured)
        t = arrivals[0].trace.arrival_s
        start, last, next_round = t, t, t
        while True:
            for job in self.running.values():
                job.advance(last, t)
            self.busy_gpu_s += len(self.held) * (t - last)
            last = t
            changed = False
            for job in [j for j in self.running.values() if j.finish_at <= t + _EPS]:
                job.finished_at = job.finish_at
                for g in job.gpus:
                    del self.held[g]
                del self.running[job.trace.id]
                changed = True
                if job.trace.id in self.measured:
                    left -= 1
                    if self.progress:
                        self.progress(len(self.measured) - left, len(self.measured))
            arrived = False
            while arrivals and arrivals[0].trace.arrival_s <= t + _EPS:
                job = arrivals.popleft()
                self.waiting[job.trace.id] = job
                changed = arrived = True
            if left == 0:
                break
            if not self.running and not self.waiting:
                t = next_round = arrivals[0].trace.arrival_s
                continue
            if t >= next_round - _EPS or (arrived and self.cfg.replan_on_arrival):
                self.decide(t, full=True)
                next_round = t + self.cfg.round_s
            elif changed and self.waiting and len(self.held) < len(self.fleet.gpus):
                self.decide(t, full=False)
            self.timeline.append((t, len(self.held)))
            if not self.running and not arrivals:
                break  # waiting jobs that nothing can run
            nxt = [next_round, *(j.finish_at for j in self.running.values())]
            if arrivals:
                nxt.append(arrivals[0].trace.arrival_s)
            t = min(nxt)
        return self._result(start, t)

    def _result(self, start: float, end: float) -> SimResult:
        return _collect(
            self.cfg.policy,
            self.jobs,
            self.measured,
            start,
            end,
            len(self.fleet.gpus),
            self.busy_gpu_s,
            self.preemptions,
            self.decisions,
            self.timeline,
        )


def _busy(g: GpuView) -> GpuView:
    return replace(g, busy=True)


def _slowest(job: _Job, gpu_ids: tuple[str, ...], gpu_model: dict[str, str]) -> str:
    """The model a job's GPUs run it at: a gang's members step together, at the pace of the
    slowest (the planner prefers gangs of one model)."""
    return min({gpu_model[g] for g in gpu_ids}, key=lambda m: (job.rate[m], m))


def _collect(
    policy: str,
    jobs: list[_Job],
    measured: set[str],
    start: float,
    end: float,
    n_gpus: int,
    busy_gpu_s: float,
    preemptions: int,
    decisions: list[float],
    timeline: list[tuple[float, int]],
) -> SimResult:
    outcomes = []
    unfinished = 0
    for j in jobs:
        if j.trace.id not in measured:
            continue
        if j.finished_at is None:
            unfinished += 1
            continue
        outcomes.append(
            JobOutcome(
                j.trace.id,
                j.trace.arrival_s,
                j.finished_at,
                j.finished_at - j.trace.arrival_s,
                j.total / j.best,
                j.preemptions,
            )
        )
    return SimResult(
        policy,
        outcomes,
        unfinished,
        start,
        end,
        n_gpus,
        busy_gpu_s,
        preemptions,
        decisions,
        timeline,
    )


def _simulate_gavel(
    trace: list[TraceJob],
    fleet: Fleet,
    table: dict[str, dict[str, float]],
    cfg: SimConfig,
    progress: Progress | None,
) -> SimResult:
    """Gavel's ``simulate()`` loop around gpunet's ``fifo_perf`` placement."""
    jobs = _prepare(trace, fleet, table)
    measured = _measured(jobs, cfg.window)
    by_id = {j.trace.id: j for j in jobs}
    gpu_model = {g.id: g.model for g in fleet.gpus}
    all_free = Snapshot(fleet.nodes, fleet.gpus, throughputs=table)
    for j in jobs:
        j.total = float(int(j.total))  # Gavel counts whole steps
    arrivals = deque(jobs)
    active: dict[str, _Job] = {}
    allocation: dict[str, tuple[str, ...]] = {}
    need_update, last_reset = False, 0.0
    running: list[tuple[float, _Job, float]] = []  # (finish time, job, steps this round)
    decisions: list[float] = []
    timeline: list[tuple[float, int]] = []
    busy_gpu_s = 0.0
    left = len(measured)
    t = start = arrivals[0].trace.arrival_s
    while left > 0:
        if not arrivals and not running:
            last_reset = 0.0  # Gavel forces a recompute once the trace is exhausted
        if running:
            t = max(f for f, _, _ in running)
        elif arrivals:
            t = arrivals[0].trace.arrival_s
        for finish, job, steps in running:
            job.done += steps
            busy_gpu_s += (finish - job.seg_start) * job.trace.gpu_count
            if job.total - job.done <= 0:
                job.finished_at = finish
                del active[job.trace.id]
                need_update = True
                if job.trace.id in measured:
                    left -= 1
                    if progress:
                        progress(len(measured) - left, len(measured))
        running = []
        while arrivals and arrivals[0].trace.arrival_s <= t:
            job = arrivals.popleft()
            active[job.trace.id] = job
            need_update = True
        if left == 0:
            break
        if need_update and (t - last_reset >= GAVEL_MIN_RECOMPUTE_S or last_reset == 0):
            last_reset, need_update = t, False
            pending = [j.request(False) for j in active.values()]
            t0 = time.perf_counter()
            result = plan(all_free, pending, "fifo_perf", seed=cfg.seed)
            decisions.append(time.perf_counter() - t0)
            allocation = {p.job_id: p.all_gpu_ids for p in result.placements}
        busy = 0
        for job_id, gpus in allocation.items():
            job = by_id[job_id]
            if job_id not in active:
                continue
            model = _slowest(job, gpus, gpu_model)
            rate = job.rate[model]
            steps = min(float(int(rate * cfg.round_s)), job.total - job.done)
            job.seg_start = t
            job.attained_s += steps / rate * job.trace.gpu_count
            running.append((t + steps / rate, job, steps))
            busy += len(gpus)
        timeline.append((t, busy))
        if not running and not arrivals and not need_update:
            break  # jobs left that nothing can run
    for j in jobs:
        j.work_s = j.done / j.best
    return _collect(
        GAVEL_COMPAT, jobs, measured, start, t, len(fleet.gpus), busy_gpu_s, 0, decisions, timeline
    )
