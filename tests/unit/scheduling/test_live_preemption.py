"""The live preemption rule (Snapshot.keep_running): only a job that outranks a running one
takes its GPUs, free GPUs first, and a running job is never moved."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpunet.core.scheduling import GpuView, JobRequest, NodeView, Snapshot, plan
from gpunet.core.scheduling.admission import outranks, rank

POLICIES = ["default", "fifo", "priority", "las"]


def fleet(n: int, model: str = "A100-80GB") -> Snapshot:
    nodes = tuple(NodeView(f"n{i}") for i in range(n))
    gpus = tuple(GpuView(f"n{i}/0", f"n{i}", model, 80_000, (8, 0)) for i in range(n))
    return Snapshot(nodes, gpus, keep_running=True)


def busy(snap: Snapshot, *ids: str) -> Snapshot:
    return replace(snap, gpus=tuple(replace(g, busy=g.id in ids) for g in snap.gpus))


def running(i: int, gpu: str, **kw: object) -> JobRequest:
    kw.setdefault("interruptible", True)
    return JobRequest(f"r{i}", "a", running_on=(gpu,), submitted_at=float(i), **kw)  # type: ignore[arg-type]


def waiting(i: int, **kw: object) -> JobRequest:
    return JobRequest(f"w{i}", "b", submitted_at=100.0 + i, **kw)  # type: ignore[arg-type]


def test_rank_puts_priority_first_then_on_demand() -> None:
    assert outranks(waiting(0), running(0, "g"))  # on-demand over interruptible
    assert not outranks(waiting(0, interruptible=True), running(0, "g"))
    assert outranks(waiting(0, interruptible=True, priority=1), running(0, "g"))
    assert not outranks(waiting(0), running(0, "g", priority=1))
    assert rank(waiting(0, priority=2)) > rank(waiting(0, priority=1, interruptible=False))


@pytest.mark.parametrize("policy", POLICIES)
def test_on_demand_job_preempts_an_interruptible_one(policy: str) -> None:
    snap = busy(fleet(1), "n0/0")
    p = plan(snap, [running(0, "n0/0"), waiting(1)], policy)
    assert p.preemptions == ["r0"]
    assert p.preempted_for == {"r0": "w1"}
    assert [(pl.job_id, pl.gpu_ids) for pl in p.placements] == [("w1", ("n0/0",))]


@pytest.mark.parametrize("policy", POLICIES)
def test_equal_or_lower_rank_does_not_preempt(policy: str) -> None:
    snap = busy(fleet(1), "n0/0")
    same = plan(snap, [running(0, "n0/0"), waiting(1, interruptible=True)], policy)
    assert same.preemptions == [] and [pl.job_id for pl in same.placements] == ["r0"]
    low = plan(snap, [running(0, "n0/0", priority=3), waiting(1, priority=2)], policy)
    assert low.preemptions == []
    assert "busy" in low.explanations["w1"].summary()


@pytest.mark.parametrize("policy", POLICIES)
def test_free_gpus_are_used_before_preempting(policy: str) -> None:
    snap = busy(fleet(2), "n0/0")
    p = plan(snap, [running(0, "n0/0"), waiting(1)], policy)
    assert p.preemptions == []
    assert {pl.job_id: pl.gpu_ids for pl in p.placements} == {"r0": ("n0/0",), "w1": ("n1/0",)}


def test_lowest_rank_is_preempted_first() -> None:
    snap = busy(fleet(2), "n0/0", "n1/0")
    pending = [
        running(0, "n0/0", priority=1),
        running(1, "n1/0", priority=0),
        waiting(2, priority=2),
    ]
    p = plan(snap, pending, "default")
    assert p.preemptions == ["r1"] and p.preempted_for == {"r1": "w2"}


def test_a_running_job_is_never_moved_to_a_better_gpu() -> None:
    nodes = (NodeView("slow"), NodeView("fast"))
    gpus = (
        GpuView("slow/0", "slow", "K80", 12_000, (3, 7), busy=True),
        GpuView("fast/0", "fast", "V100", 16_000, (7, 0)),
    )
    snap = Snapshot(nodes, gpus, throughputs={"c": {"K80": 1.0, "V100": 4.0}}, keep_running=True)
    p = plan(snap, [running(0, "slow/0", job_class="c")], "default")
    assert p.preemptions == []
    assert [(pl.job_id, pl.gpu_ids) for pl in p.placements] == [("r0", ("slow/0",))]


@settings(max_examples=80, deadline=None)
@given(
    run=st.lists(st.tuples(st.integers(0, 2), st.booleans()), min_size=0, max_size=4),
    wait=st.lists(st.tuples(st.integers(0, 2), st.booleans()), min_size=0, max_size=5),
    free=st.integers(0, 2),
    policy=st.sampled_from(POLICIES),
)
def test_only_outranked_interruptible_jobs_lose_gpus(
    run: list[tuple[int, bool]], wait: list[tuple[int, bool]], free: int, policy: str
) -> None:
    n = len(run) + free
    if n == 0:
        return
    snap = busy(fleet(n), *(f"n{i}/0" for i in range(len(run))))
    rjobs = [running(i, f"n{i}/0", priority=p, interruptible=True) for i, (p, _) in enumerate(run)]
    wjobs = [waiting(i, priority=p, interruptible=intr) for i, (p, intr) in enumerate(wait)]
    p = plan(snap, rjobs + wjobs, policy)
    by_id = {j.id: j for j in rjobs + wjobs}
    gpus_used = [g for pl in p.placements for g in pl.gpu_ids]
    assert len(gpus_used) == len(set(gpus_used))  # no GPU given twice
    for victim in p.preemptions:
        taker = p.preempted_for[victim]
        assert outranks(by_id[taker], by_id[victim])
    kept = {pl.job_id: pl.gpu_ids for pl in p.placements}
    for r in rjobs:
        assert r.id in p.preemptions or kept[r.id] == r.running_on  # kept in place or stopped
    # a preemption happens only when no free GPU was left for the taker
    if p.preemptions:
        free_ids = {f"n{i}/0" for i in range(len(run), n)}
        assert free_ids <= set(gpus_used)
